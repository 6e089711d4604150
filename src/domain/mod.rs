//! Pure domain logic: validated events, derived conversation facts, tenants and errors.
//! Nothing here knows about tonic or sqlx.

pub mod error;
pub mod event;
pub mod facts;
pub mod tenant;

pub use error::Error;
