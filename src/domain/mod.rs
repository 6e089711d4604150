//! The rules, pure: validated events, derived conversation facts, calendars and business hours,
//! SLA clocks, settings, scorecards, alerts, the WhatsApp mapping, the KPI answer types, tenants
//! and errors (docs/metrics.md). Nothing here knows about tonic, sqlx or the query engine.

pub mod alert;
pub mod calendar;
pub mod error;
pub mod event;
pub mod facts;
pub mod kpi;
pub mod query;
pub mod stats;
pub mod tenant;
pub mod time;

pub use error::Error;
pub mod scorecard;
pub mod settings;
pub mod sla;
pub mod whatsapp;

#[cfg(test)]
pub(crate) mod testkit;
