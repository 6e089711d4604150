//! Local-time calendars: DST-correct buckets in an IANA time zone (METRICS.md §4, §6) and
//! business-hours schedules (METRICS.md §7).

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use super::{
    Error,
    dataset::{Micros, Span, micros},
};

/// Time-series bucket sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Hour,
    Day,
    /// ISO week, starting Monday 00:00 local.
    Week,
    Month,
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
    super::dataset::to_datetime(t).with_timezone(&tz)
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

/// A tenant's business hours (METRICS.md §7).
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub time_zone: Tz,
    /// Open intervals `[start, end)` in local seconds of day, per weekday (index 0 = Monday),
    /// sorted and non-overlapping.
    pub weekly: [Vec<(DaySeconds, DaySeconds)>; 7],
    pub holidays: BTreeSet<NaiveDate>,
}

impl Schedule {
    /// Validates and normalises intervals: each `start < end <= 86400`, no overlaps.
    pub fn new(
        time_zone: Tz,
        mut weekly: [Vec<(DaySeconds, DaySeconds)>; 7],
        holidays: BTreeSet<NaiveDate>,
    ) -> Result<Self, Error> {
        for (day, intervals) in weekly.iter_mut().enumerate() {
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
        })
    }

    fn instant(&self, date: NaiveDate, secs: DaySeconds) -> Micros {
        if secs >= 86_400 {
            return midnight(self.time_zone, date + Duration::days(1));
        }
        let time = chrono::NaiveTime::from_num_seconds_from_midnight_opt(secs, 0).expect("secs < 86400");
        micros(local_instant(self.time_zone, date.and_time(time)))
    }

    /// Seconds of `span` that fall inside open hours (holidays closed all day).
    pub fn open_seconds(&self, span: Span) -> f64 {
        if span.end <= span.start {
            return 0.0;
        }
        let first = local(self.time_zone, span.start).date_naive() - Duration::days(1);
        let last = local(self.time_zone, span.end).date_naive();
        let mut total: i64 = 0;
        let mut date = first;
        while date <= last {
            if !self.holidays.contains(&date) {
                for &(open, close) in &self.weekly[date.weekday().num_days_from_monday() as usize] {
                    let start = self.instant(date, open).max(span.start);
                    let end = self.instant(date, close).min(span.end);
                    total += (end - start).max(0);
                }
            }
            date += Duration::days(1);
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
}
