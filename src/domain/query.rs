//! A validated KPI query: window, time zone, filters and the knobs of METRICS.md §5-§7.

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;

use super::{
    Error,
    event::{Channel, Priority},
};

/// Longest window a query may span (and the previous window for comparisons doubles the data
/// read): two years covers year-over-year dashboards.
pub const MAX_WINDOW: Duration = Duration::days(731);
/// METRICS.md §5 defaults.
pub const DEFAULT_REPEAT_WINDOW: Duration = Duration::days(7);
pub const DEFAULT_ATTRIBUTION_WINDOW: Duration = Duration::days(7);
/// Longest repeat or attribution window accepted.
pub const MAX_LOOKAHEAD: Duration = Duration::days(366);

/// A half-open window `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Window {
    /// Validates `from < to` and the length limit; `field` prefixes error paths.
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Self, Error> {
        if from >= to {
            return Err(Error::invalid(
                "to",
                format!("must be after from ({from} >= {to})"),
            ));
        }
        if to - from > MAX_WINDOW {
            return Err(Error::invalid(
                "to",
                format!(
                    "window of {} days exceeds the limit of {} days",
                    (to - from).num_days(),
                    MAX_WINDOW.num_days()
                ),
            ));
        }
        Ok(Self { from, to })
    }

    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.from <= t && t < self.to
    }

    pub fn length(&self) -> Duration {
        self.to - self.from
    }

    /// The window of the same length ending at `from` (METRICS.md §6 comparisons).
    pub fn previous(&self) -> Window {
        Window {
            from: self.from - self.length(),
            to: self.from,
        }
    }
}

/// Filters of METRICS.md §6: each list means "any of"; lists are AND-combined; empty = all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    pub channels: Vec<Channel>,
    pub inboxes: Vec<String>,
    pub teams: Vec<String>,
    pub agents: Vec<String>,
    pub tags: Vec<String>,
    pub priorities: Vec<Priority>,
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        *self == Filters::default()
    }
}

/// Everything a KPI computation needs to know about the question.
#[derive(Debug, Clone)]
pub struct Query {
    pub window: Window,
    pub time_zone: Tz,
    pub filters: Filters,
    /// Measure durations inside the tenant's business hours only (METRICS.md §7).
    pub business_hours: bool,
    /// FCR / repeat contact lookahead; zero disables the repeat check.
    pub repeat_window: Duration,
    /// Conversion attribution lookahead.
    pub attribution_window: Duration,
    /// Conversion kinds that count; empty = all.
    pub conversion_kinds: Vec<String>,
}

impl Query {
    /// A query over `window` with every default.
    pub fn new(window: Window) -> Self {
        Self {
            window,
            time_zone: Tz::UTC,
            filters: Filters::default(),
            business_hours: false,
            repeat_window: DEFAULT_REPEAT_WINDOW,
            attribution_window: DEFAULT_ATTRIBUTION_WINDOW,
            conversion_kinds: Vec::new(),
        }
    }
}

/// Parses an IANA time zone name; empty = UTC.
pub fn parse_time_zone(field: &str, name: &str) -> Result<Tz, Error> {
    if name.is_empty() {
        return Ok(Tz::UTC);
    }
    name.parse::<Tz>()
        .map_err(|_| Error::invalid(field, format!("unknown IANA time zone {name:?}")))
}

/// Checks a lookahead window (repeat / attribution).
pub fn check_lookahead(field: &str, d: Duration) -> Result<Duration, Error> {
    if d < Duration::zero() || d > MAX_LOOKAHEAD {
        Err(Error::invalid(
            field,
            format!("must be between 0 and {} days", MAX_LOOKAHEAD.num_days()),
        ))
    } else {
        Ok(d)
    }
}
