//! Pure domain logic: validated events, derived conversation facts, KPI computation over a
//! compact dataset, calendars and business hours, tenants and errors.
//! Nothing here knows about tonic or sqlx.

pub mod alert;
pub mod calendar;
pub mod codec;
pub mod error;
pub mod event;
pub mod facts;
pub mod intern;
pub mod kpi;
pub mod query;
pub mod record;
pub mod stats;
pub mod tenant;
pub mod time;

pub use error::Error;
pub mod scorecard;
pub mod segment;
pub mod settings;
pub mod sla;
pub mod whatsapp;

#[cfg(test)]
pub(crate) mod testkit;
