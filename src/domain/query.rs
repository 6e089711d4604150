//! A validated KPI query: window, time zone, filters and the knobs of docs/metrics.md §5-§7.

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;

use super::{
    Error,
    calendar::Granularity,
    event::{Channel, Priority},
    kpi::Dimension,
};

/// Longest window a query may span (and the previous window for comparisons doubles the data
/// read): two years covers year-over-year dashboards.
pub const MAX_WINDOW: Duration = Duration::days(731);
/// docs/metrics.md §5 defaults.
pub const DEFAULT_REPEAT_WINDOW: Duration = Duration::days(7);
pub const DEFAULT_ATTRIBUTION_WINDOW: Duration = Duration::days(7);
/// Longest repeat or attribution window accepted.
pub const MAX_LOOKAHEAD: Duration = Duration::days(366);
/// Most values one filter list (and `conversion_kinds`) may name (docs/metrics.md §6).
pub const MAX_FILTER_VALUES: usize = 100;

/// Checks the length of a list a query names values in (a filter, the conversion kinds).
pub fn check_list_len(field: &str, len: usize) -> Result<(), Error> {
    if len > MAX_FILTER_VALUES {
        Err(Error::invalid(
            field,
            format!("at most {MAX_FILTER_VALUES} values, got {len}"),
        ))
    } else {
        Ok(())
    }
}

/// Query instants (window bounds, backlog instants) must lie in
/// `[EARLIEST_INSTANT, LATEST_INSTANT)`: every event is after 2000-01-01, and the bounds keep all
/// calendar arithmetic (previous windows, lookaheads, buckets, business hours) far from the
/// limits of the date types, so no value a client sends can overflow it.
pub fn earliest_instant() -> DateTime<Utc> {
    DateTime::from_timestamp(0, 0).expect("the epoch is a valid instant")
}

/// See [`earliest_instant`]: 2100-01-01T00:00:00Z.
pub fn latest_instant() -> DateTime<Utc> {
    DateTime::from_timestamp(4_102_444_800, 0).expect("2100-01-01 is a valid instant")
}

/// Checks that `t` is a query instant chatkpi can compute with (see [`earliest_instant`]).
pub fn check_instant(field: &str, t: DateTime<Utc>) -> Result<DateTime<Utc>, Error> {
    if t < earliest_instant() || t >= latest_instant() {
        Err(Error::invalid(
            field,
            format!("must be between 1970-01-01T00:00:00Z and 2100-01-01T00:00:00Z, got {t}"),
        ))
    } else {
        Ok(t)
    }
}

/// A half-open window `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Window {
    /// Validates the instants' range, `from < to` and the length limit.
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Self, Error> {
        check_instant("from", from)?;
        check_instant("to", to)?;
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

    /// The window of the same length ending at `from` (docs/metrics.md §6 comparisons).
    pub fn previous(&self) -> Window {
        Window {
            from: self.from - self.length(),
            to: self.from,
        }
    }
}

/// Filters of docs/metrics.md §6: each list means "any of"; lists are AND-combined; empty = all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
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
    /// Measure durations inside the tenant's business hours only (docs/metrics.md §7).
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

/// A dashboard question as it was asked: kept per tenant so that a restarted server computes
/// it, and keeps its totals, before it reports SERVING (README, "Restarts are quick").
#[derive(Debug, Clone)]
pub struct Asked {
    pub query: Query,
    pub kind: AskedKind,
}

/// Which of the dashboard's questions (the KPI RPCs whose totals are kept per day).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AskedKind {
    Overview { compare_previous: bool },
    Breakdown { dimension: Dimension, limit: usize },
    Series(Granularity),
}

impl Asked {
    /// The question without where its window lies (its length counts): a dashboard asking over
    /// a sliding window asks the same shape again and again. Equal shapes give equal values
    /// within one process.
    pub fn shape_hash(query: &Query, kind: AskedKind) -> u64 {
        use std::hash::{Hash, Hasher};
        let Query {
            window,
            time_zone,
            filters,
            business_hours,
            repeat_window,
            attribution_window,
            conversion_kinds,
        } = query;
        let mut h = std::hash::DefaultHasher::new();
        (kind, window.length(), time_zone, business_hours).hash(&mut h);
        (repeat_window, attribution_window).hash(&mut h);
        (conversion_kinds, filters).hash(&mut h);
        h.finish()
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

/// Checks a lookahead window (repeat / attribution) given as seconds and nanoseconds (the
/// protobuf `Duration` shape), before any arithmetic on it can overflow.
pub fn check_lookahead(field: &str, seconds: i64, nanos: i32) -> Result<Duration, Error> {
    let invalid = || {
        Error::invalid(
            field,
            format!("must be between 0 and {} days", MAX_LOOKAHEAD.num_days()),
        )
    };
    if !(0..=MAX_LOOKAHEAD.num_seconds()).contains(&seconds) || !(0..1_000_000_000).contains(&nanos) {
        return Err(invalid());
    }
    let d = Duration::seconds(seconds) + Duration::nanoseconds(nanos as i64);
    if d > MAX_LOOKAHEAD { Err(invalid()) } else { Ok(d) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookaheads_out_of_range_are_rejected_without_overflow() {
        assert_eq!(check_lookahead("w", 0, 0).unwrap(), Duration::zero());
        assert_eq!(check_lookahead("w", 86_400, 0).unwrap(), Duration::days(1));
        assert!(check_lookahead("w", 10_000_000_000_000_000, 0).is_err());
        assert!(check_lookahead("w", i64::MIN, 0).is_err());
        assert!(check_lookahead("w", 366 * 86_400, 1).is_err());
        assert!(check_lookahead("w", 1, -5).is_err());
    }

    #[test]
    fn windows_outside_the_supported_range_are_rejected() {
        let far = DateTime::from_timestamp(-8_000_000_000_000, 0).unwrap();
        let err = Window::new(far, earliest_instant()).unwrap_err();
        assert!(err.to_string().starts_with("from: must be between"), "{err}");
        let late = DateTime::from_timestamp(8_000_000_000_000, 0).unwrap();
        assert!(Window::new(earliest_instant(), late).is_err());
        assert!(Window::new(latest_instant() - Duration::days(1), latest_instant()).is_err());
    }
}
