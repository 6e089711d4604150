//! Local-time calendars: DST-correct buckets in an IANA time zone (docs/metrics.md §4, §6) and
//! business-hours schedules (docs/metrics.md §7).

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use super::{
    Error,
    time::{Micros, Span, micros},
};

/// Time-series bucket sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granularity {
    Hour,
    Day,
    /// ISO week, starting Monday 00:00 local.
    Week,
    Month,
}

impl Granularity {
    /// Every granularity, finest first.
    pub const ALL: [Granularity; 4] = [
        Granularity::Hour,
        Granularity::Day,
        Granularity::Week,
        Granularity::Month,
    ];
}

/// The instant a local wall-clock time first happens; inside a DST gap, the first instant
/// after the gap.
pub fn local_instant(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    let mut probe = local;
    for _ in 0..8 {
        match tz.from_local_datetime(&probe) {
            LocalResult::Single(t) => return t.with_timezone(&Utc),
            LocalResult::Ambiguous(first, _) => return first.with_timezone(&Utc),
            // In a gap: move forward until the clock exists again (gaps are at most a few
            // hours; 15-minute steps land on every real offset).
            LocalResult::None => probe += Duration::minutes(15),
        }
    }
    Utc.from_utc_datetime(&local)
}

fn midnight(tz: Tz, date: NaiveDate) -> Micros {
    micros(local_instant(
        tz,
        date.and_hms_opt(0, 0, 0).expect("midnight exists"),
    ))
}

fn local(tz: Tz, t: Micros) -> DateTime<Tz> {
    super::time::to_datetime(t).with_timezone(&tz)
}

/// Start of the bucket containing `t`.
pub fn bucket_start(tz: Tz, g: Granularity, t: Micros) -> Micros {
    let l = local(tz, t);
    match g {
        Granularity::Hour => {
            let into_hour = l.minute() as i64 * 60_000_000
                + l.second() as i64 * 1_000_000
                + (l.nanosecond() as i64 / 1000).min(999_999);
            t - into_hour
        }
        Granularity::Day => midnight(tz, l.date_naive()),
        Granularity::Week => {
            let monday = l.date_naive() - Duration::days(l.weekday().num_days_from_monday() as i64);
            midnight(tz, monday)
        }
        Granularity::Month => midnight(tz, l.date_naive().with_day(1).expect("day 1 exists")),
    }
}

/// Start of the bucket after the one starting at `start`.
pub fn next_bucket(tz: Tz, g: Granularity, start: Micros) -> Micros {
    let l = local(tz, start);
    match g {
        // An hour bucket is an hour of real time: DST days have 23 or 25 of them.
        Granularity::Hour => bucket_start(tz, g, start + 3_600_000_000),
        Granularity::Day => midnight(tz, l.date_naive() + Duration::days(1)),
        Granularity::Week => midnight(tz, l.date_naive() + Duration::days(7)),
        Granularity::Month => {
            let d = l.date_naive();
            let (y, m) = if d.month() == 12 {
                (d.year() + 1, 1)
            } else {
                (d.year(), d.month() + 1)
            };
            midnight(tz, NaiveDate::from_ymd_opt(y, m, 1).expect("valid month start"))
        }
    }
}

/// Every bucket overlapping `[from, to)`, as `[start, end)` spans (the first may start before
/// `from`, the last may end after `to`).
pub fn buckets(tz: Tz, g: Granularity, from: Micros, to: Micros) -> Vec<Span> {
    let mut out = Vec::new();
    let mut start = bucket_start(tz, g, from);
    while start < to {
        let end = next_bucket(tz, g, start);
        out.push(Span { start, end });
        start = end;
    }
    out
}

/// Local hour of day, 0-23.
pub fn hour_of_day(tz: Tz, t: Micros) -> u32 {
    local(tz, t).hour()
}

/// Local ISO day of week, Monday = 1 ... Sunday = 7.
pub fn day_of_week(tz: Tz, t: Micros) -> u32 {
    local(tz, t).weekday().number_from_monday()
}

/// Seconds of a day: 0..=86400.
pub type DaySeconds = u32;

/// Most open intervals of one weekday (every half hour its own interval is already absurd).
pub const MAX_INTERVALS_PER_DAY: usize = 48;
/// Most holidays of a schedule (a century of every public holiday).
pub const MAX_HOLIDAYS: usize = 5000;

/// Parses a wall-clock time "HH:MM" (00:00 to 24:00) into seconds of the day: exactly two digits,
/// a colon, two digits.
pub fn parse_hhmm(field: &str, text: &str) -> Result<DaySeconds, Error> {
    let bad = || {
        Error::invalid(
            field,
            format!("must be HH:MM between 00:00 and 24:00, got {text:?}"),
        )
    };
    let bytes = text.as_bytes();
    let digits = |a: u8, b: u8| -> Option<u32> {
        (a.is_ascii_digit() && b.is_ascii_digit()).then(|| u32::from(a - b'0') * 10 + u32::from(b - b'0'))
    };
    let [h1, h2, b':', m1, m2] = bytes else {
        return Err(bad());
    };
    let (h, m) = digits(*h1, *h2).zip(digits(*m1, *m2)).ok_or_else(bad)?;
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 3600 + m * 60)
}

/// Parses a holiday date "YYYY-MM-DD" between 1970 and 2099 (the range queries can ask about).
pub fn parse_holiday(field: &str, text: &str) -> Result<NaiveDate, Error> {
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .filter(|d| text.len() == 10 && (1970..2100).contains(&d.year()))
        .ok_or_else(|| {
            Error::invalid(
                field,
                format!("must be a date YYYY-MM-DD between 1970 and 2099, got {text:?}"),
            )
        })?;
    Ok(date)
}

/// A tenant's business hours (docs/metrics.md §7).
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub time_zone: Tz,
    /// Open intervals `[start, end)` in local seconds of day, per weekday (index 0 = Monday),
    /// sorted and non-overlapping.
    pub weekly: [Vec<(DaySeconds, DaySeconds)>; 7],
    pub holidays: BTreeSet<NaiveDate>,
    /// Open time of whole days, summed once per block of days: a span of any length costs a few
    /// lookups instead of a walk over its days.
    days: OpenDays,
}

/// First date of the [`OpenDays`] cache; every date a query can touch (1970-2099, with a day of
/// margin on each side) lies in the blocks after it.
const OPEN_DAYS_FIRST: NaiveDate = NaiveDate::from_ymd_opt(1969, 12, 1).expect("valid date");
/// Days per cached block.
const OPEN_DAYS_BLOCK: usize = 1024;
/// Blocks covering 1969-12-01 to 2100-04-16.
const OPEN_DAYS_BLOCKS: usize = 47;

/// Cumulative open microseconds of whole days, one lazily computed block of
/// [`OPEN_DAYS_BLOCK`] days at a time (`block[i]` = open time of the block's first `i` days).
#[derive(Default)]
struct OpenDays(Vec<std::sync::OnceLock<Box<[i64]>>>);

impl OpenDays {
    fn new() -> Self {
        Self(
            (0..OPEN_DAYS_BLOCKS)
                .map(|_| std::sync::OnceLock::new())
                .collect(),
        )
    }
}

impl Clone for OpenDays {
    /// A clone starts empty: the cache is derived from the schedule.
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl PartialEq for OpenDays {
    /// Two schedules are equal by their definition, whatever either has cached.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for OpenDays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpenDays")
    }
}

impl Schedule {
    /// Validates and normalises intervals: each `start < end <= 86400`, no overlaps.
    pub fn new(
        time_zone: Tz,
        mut weekly: [Vec<(DaySeconds, DaySeconds)>; 7],
        holidays: BTreeSet<NaiveDate>,
    ) -> Result<Self, Error> {
        if holidays.len() > MAX_HOLIDAYS {
            return Err(Error::invalid(
                "business_hours.holidays",
                format!("at most {MAX_HOLIDAYS} holidays, got {}", holidays.len()),
            ));
        }
        for (day, intervals) in weekly.iter_mut().enumerate() {
            if intervals.len() > MAX_INTERVALS_PER_DAY {
                return Err(Error::invalid(
                    format!("business_hours.days[{day}].intervals"),
                    format!(
                        "at most {MAX_INTERVALS_PER_DAY} intervals a day, got {}",
                        intervals.len()
                    ),
                ));
            }
            intervals.sort_unstable();
            for (i, &(start, end)) in intervals.iter().enumerate() {
                if start >= end || end > 86_400 {
                    return Err(Error::invalid(
                        format!("business_hours.days[{day}].intervals[{i}]"),
                        "must have start < end <= 24:00",
                    ));
                }
                if i > 0 && intervals[i - 1].1 > start {
                    return Err(Error::invalid(
                        format!("business_hours.days[{day}].intervals[{i}]"),
                        "overlaps the previous interval",
                    ));
                }
            }
        }
        Ok(Self {
            time_zone,
            weekly,
            holidays,
            days: OpenDays::new(),
        })
    }

    fn instant(&self, date: NaiveDate, secs: DaySeconds) -> Micros {
        if secs >= 86_400 {
            return midnight(self.time_zone, date + Duration::days(1));
        }
        let time = chrono::NaiveTime::from_num_seconds_from_midnight_opt(secs, 0).expect("secs < 86400");
        micros(local_instant(self.time_zone, date.and_time(time)))
    }

    /// Open microseconds of `date`'s intervals clipped to `[from, to)`.
    fn open_micros(&self, date: NaiveDate, from: Micros, to: Micros) -> i64 {
        if self.holidays.contains(&date) {
            return 0;
        }
        self.weekly[date.weekday().num_days_from_monday() as usize]
            .iter()
            .map(|&(open, close)| {
                let start = self.instant(date, open).max(from);
                let end = self.instant(date, close).min(to);
                (end - start).max(0)
            })
            .sum()
    }

    /// Open microseconds of the whole days `first..=last`.
    fn open_micros_of_days(&self, first: NaiveDate, last: NaiveDate) -> i64 {
        if first > last {
            return 0;
        }
        let index = |d: NaiveDate| (d - OPEN_DAYS_FIRST).num_days();
        let (a, b) = (index(first), index(last));
        let limit = (OPEN_DAYS_BLOCKS * OPEN_DAYS_BLOCK) as i64;
        if a < 0 || b >= limit {
            // Outside the cached range (query validation keeps dates inside it): walk the days.
            return first
                .iter_days()
                .take_while(|d| *d <= last)
                .map(|d| self.open_micros(d, Micros::MIN, Micros::MAX))
                .sum();
        }
        let (a, b) = (a as usize, b as usize);
        let mut total = 0;
        for block in a / OPEN_DAYS_BLOCK..=b / OPEN_DAYS_BLOCK {
            let sums = self.days.0[block].get_or_init(|| self.block_sums(block));
            let lo = a.max(block * OPEN_DAYS_BLOCK) - block * OPEN_DAYS_BLOCK;
            let hi = b.min((block + 1) * OPEN_DAYS_BLOCK - 1) - block * OPEN_DAYS_BLOCK;
            total += sums[hi + 1] - sums[lo];
        }
        total
    }

    fn block_sums(&self, block: usize) -> Box<[i64]> {
        let first = OPEN_DAYS_FIRST + Duration::days((block * OPEN_DAYS_BLOCK) as i64);
        let mut sums = Vec::with_capacity(OPEN_DAYS_BLOCK + 1);
        let mut total = 0;
        sums.push(0);
        for day in first.iter_days().take(OPEN_DAYS_BLOCK) {
            total += self.open_micros(day, Micros::MIN, Micros::MAX);
            sums.push(total);
        }
        sums.into_boxed_slice()
    }

    /// Seconds of `span` that fall inside open hours (holidays closed all day).
    ///
    /// The local days strictly between the span's first and last day are open for whole days,
    /// so their time comes from cached sums; only the edge days are clipped to the span. The sum
    /// is in whole microseconds, so the result does not depend on how it was split.
    pub fn open_seconds(&self, span: Span) -> f64 {
        if span.end <= span.start {
            return 0.0;
        }
        let first = local(self.time_zone, span.start).date_naive();
        let last = local(self.time_zone, span.end).date_naive();
        // The day before the first can only matter around DST gaps; it is clipped like an edge.
        let mut total = self.open_micros(first - Duration::days(1), span.start, span.end)
            + self.open_micros(first, span.start, span.end);
        if last > first {
            total += self.open_micros_of_days(first + Duration::days(1), last - Duration::days(1));
            total += self.open_micros(last, span.start, span.end);
        }
        total as f64 / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Micros {
        micros(DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc))
    }

    #[test]
    fn berlin_days_around_dst_changes_are_23_and_25_hours() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        // 2026-03-29: clocks go 02:00 -> 03:00. 2026-10-25: 03:00 -> 02:00.
        let spring = buckets(
            tz,
            Granularity::Day,
            at("2026-03-29T00:30:00+01:00"),
            at("2026-03-29T12:00:00+02:00"),
        );
        assert_eq!(spring.len(), 1);
        assert_eq!(spring[0].start, at("2026-03-29T00:00:00+01:00"));
        assert_eq!(spring[0].seconds(), 23.0 * 3600.0);
        let autumn = buckets(
            tz,
            Granularity::Day,
            at("2026-10-25T12:00:00+01:00"),
            at("2026-10-25T13:00:00+01:00"),
        );
        assert_eq!(autumn[0].seconds(), 25.0 * 3600.0);
        let hours = buckets(tz, Granularity::Hour, autumn[0].start, autumn[0].end);
        assert_eq!(hours.len(), 25);
    }

    #[test]
    fn weeks_start_monday_and_months_on_the_first_local() {
        let tz: Tz = "America/New_York".parse().unwrap();
        // Sunday 2026-03-08 23:30 local.
        let t = at("2026-03-08T23:30:00-04:00");
        assert_eq!(
            bucket_start(tz, Granularity::Week, t),
            at("2026-03-02T00:00:00-05:00")
        );
        assert_eq!(
            bucket_start(tz, Granularity::Month, t),
            at("2026-03-01T00:00:00-05:00")
        );
        assert_eq!(day_of_week(tz, t), 7);
        assert_eq!(hour_of_day(tz, t), 23);
        let kolkata: Tz = "Asia/Kolkata".parse().unwrap();
        assert_eq!(
            bucket_start(kolkata, Granularity::Hour, at("2026-01-01T10:10:00Z")),
            at("2026-01-01T09:30:00Z")
        );
    }

    #[test]
    fn open_seconds_skip_nights_weekends_and_holidays() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let mut weekly: [Vec<(u32, u32)>; 7] = Default::default();
        for day in weekly.iter_mut().take(5) {
            day.push((9 * 3600, 18 * 3600));
        }
        let holidays = [NaiveDate::from_ymd_opt(2026, 3, 9).unwrap()]
            .into_iter()
            .collect();
        let s = Schedule::new(tz, weekly, holidays).unwrap();
        // Friday 17:00 -> Tuesday 10:00, Monday a holiday: 1 h Friday + 1 h Tuesday.
        let span = Span {
            start: at("2026-03-06T17:00:00+01:00"),
            end: at("2026-03-10T10:00:00+01:00"),
        };
        assert_eq!(s.open_seconds(span), 2.0 * 3600.0);
        // Inside one open stretch: unchanged.
        let inside = Span {
            start: at("2026-03-10T10:00:00+01:00"),
            end: at("2026-03-10T10:00:42+01:00"),
        };
        assert_eq!(s.open_seconds(inside), 42.0);
    }

    /// The definition: every local day of the span (and the one before), clipped to it.
    fn open_seconds_by_walking_days(s: &Schedule, span: Span) -> f64 {
        if span.end <= span.start {
            return 0.0;
        }
        let first = local(s.time_zone, span.start).date_naive() - Duration::days(1);
        let last = local(s.time_zone, span.end).date_naive();
        let total: i64 = first
            .iter_days()
            .take_while(|d| *d <= last)
            .map(|d| s.open_micros(d, span.start, span.end))
            .sum();
        total as f64 / 1e6
    }

    #[test]
    fn long_spans_equal_the_day_walk_across_dst_and_holidays() {
        use rand::{Rng, SeedableRng};
        let tz: Tz = "America/New_York".parse().unwrap();
        let mut weekly: [Vec<(u32, u32)>; 7] = Default::default();
        weekly[0] = vec![(0, 2 * 3600 + 1800), (9 * 3600, 17 * 3600)];
        weekly[2] = vec![(1800, 3 * 3600)];
        weekly[6] = vec![(23 * 3600, 86_400)];
        let holidays = [
            NaiveDate::from_ymd_opt(2026, 3, 9).unwrap(),
            NaiveDate::from_ymd_opt(2026, 11, 2).unwrap(),
        ]
        .into_iter()
        .collect();
        let s = Schedule::new(tz, weekly, holidays).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let base = at("2025-12-20T00:00:00Z");
        for _ in 0..300 {
            let start = base + rng.random_range(0..400 * 86_400_000_000i64);
            let end = start + rng.random_range(0..120 * 86_400_000_000i64);
            let span = Span { start, end };
            assert_eq!(
                s.open_seconds(span),
                open_seconds_by_walking_days(&s, span),
                "{span:?}"
            );
        }
        // A century (a backlog age from 2000 to 2099) against the walk over its 36,500 days.
        let century = Span {
            start: at("2000-01-01T00:00:00Z"),
            end: at("2099-12-31T00:00:00Z"),
        };
        assert_eq!(s.open_seconds(century), open_seconds_by_walking_days(&s, century));
    }
}
