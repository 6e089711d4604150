//! Pure domain logic: validated events, derived conversation facts, KPI computation over a
//! compact dataset, calendars and business hours, tenants and errors.
//! Nothing here knows about tonic or sqlx.

pub mod calendar;
pub mod dataset;
pub mod error;
pub mod event;
pub mod facts;
pub mod kpis;
pub mod query;
pub mod stats;
pub mod tenant;

pub use error::Error;
pub mod live;
pub mod scorecard;

#[cfg(test)]
pub(crate) mod testkit;
