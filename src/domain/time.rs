//! Instants and spans as integer microseconds (the precision PostgreSQL keeps): cheap to compare
//! and subtract in hot loops, and exact when summed.

use chrono::{DateTime, Utc};

/// Microseconds since the Unix epoch.
pub type Micros = i64;

/// End of an interval that is still going.
pub const OPEN_END: Micros = i64::MAX;

pub fn micros(t: DateTime<Utc>) -> Micros {
    t.timestamp_micros()
}

pub fn to_datetime(m: Micros) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(m).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `[start, end)` in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Span {
    pub start: Micros,
    pub end: Micros,
}

impl Span {
    pub fn seconds(&self) -> f64 {
        (self.end - self.start) as f64 / 1e6
    }

    /// Whether `t` is in `[start, end)`.
    pub fn contains(&self, t: Micros) -> bool {
        self.start <= t && t < self.end
    }
}
