//! Alert rules (docs/metrics.md §12): what a rule watches and how it is validated, the value it
//! reads from a KPI answer, the episode state machine that turns evaluations into firing,
//! reminder and resolved notices, and the signature of a delivered notice. Pure.

use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{
    Error,
    event::{Channel, Priority, check_id},
    kpi::{
        Kpis,
        live::{Backlog, SlaStatus},
    },
    query::{Filters, MAX_FILTER_VALUES},
    stats::DurationStats,
};

/// Most rules per tenant.
pub const MAX_RULES: usize = 1_000;
/// Most destinations per rule.
pub const MAX_DESTINATIONS: usize = 5;
/// Longest sliding window: 7 days.
pub const MAX_WINDOW_SECONDS: u32 = 7 * 86_400;
/// Longest hold, cooldown or reminder interval: 7 days.
pub const MAX_HOLD_SECONDS: u32 = 7 * 86_400;

/// A statistic of a duration KPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stat {
    Mean,
    P50,
    P90,
    P95,
    P99,
    Max,
}

impl Stat {
    fn of(self, s: &DurationStats) -> Option<f64> {
        match self {
            Stat::Mean => s.mean,
            Stat::P50 => s.p50,
            Stat::P90 => s.p90,
            Stat::P95 => s.p95,
            Stat::P99 => s.p99,
            Stat::Max => s.max,
        }
    }

    fn parse(text: &str) -> Option<Stat> {
        Some(match text {
            "mean" => Stat::Mean,
            "p50" => Stat::P50,
            "p90" => Stat::P90,
            "p95" => Stat::P95,
            "p99" => Stat::P99,
            "max" => Stat::Max,
            _ => return None,
        })
    }
}

/// What a rule watches (docs/metrics.md §12 table): a KPI of a sliding window, or a live count
/// at the evaluation instant.
#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    /// A count of the window: `conversations`, `messages_received`, `messages_sent`,
    /// `messages_failed`, `missed`, `abandoned`, `sla.breached`.
    Count(&'static str),
    /// A rate of the window: `delivery_rate`, `read_rate`, `missed_rate`, `sla.breach_rate`.
    Rate(&'static str),
    /// A duration statistic of the window, e.g. `first_response.p90`.
    Duration(&'static str, Stat),
    /// A live count: `backlog`, `unassigned`, `open_unanswered`, `sla.active`,
    /// `sla.active_breached`.
    Live(&'static str),
    /// A statistic of the live backlog's age, e.g. `backlog_age.max`.
    BacklogAge(Stat),
}

const COUNTS: [&str; 7] = [
    "conversations",
    "messages_received",
    "messages_sent",
    "messages_failed",
    "missed",
    "abandoned",
    "sla.breached",
];
const RATES: [&str; 4] = ["delivery_rate", "read_rate", "missed_rate", "sla.breach_rate"];
const DURATIONS: [&str; 7] = [
    "first_response",
    "bot_first_response",
    "human_first_response",
    "reply",
    "wait",
    "resolution",
    "sla.over_target",
];
const LIVE: [&str; 5] = [
    "backlog",
    "unassigned",
    "open_unanswered",
    "sla.active",
    "sla.active_breached",
];

impl Metric {
    /// Parses a metric name (docs/metrics.md §12).
    pub fn parse(name: &str) -> Option<Metric> {
        let find = |list: &[&'static str], n: &str| list.iter().copied().find(|m| *m == n);
        if let Some(m) = find(&COUNTS, name) {
            return Some(Metric::Count(m));
        }
        if let Some(m) = find(&RATES, name) {
            return Some(Metric::Rate(m));
        }
        if let Some(m) = find(&LIVE, name) {
            return Some(Metric::Live(m));
        }
        let (base, stat) = name.rsplit_once('.')?;
        let stat = Stat::parse(stat)?;
        if base == "backlog_age" {
            return Some(Metric::BacklogAge(stat));
        }
        find(&DURATIONS, base).map(|m| Metric::Duration(m, stat))
    }

    pub fn name(&self) -> String {
        match self {
            Metric::Count(m) | Metric::Rate(m) | Metric::Live(m) => (*m).to_owned(),
            Metric::Duration(m, s) => format!("{m}.{}", stat_name(*s)),
            Metric::BacklogAge(s) => format!("backlog_age.{}", stat_name(*s)),
        }
    }

    /// Whether the metric is read at an instant (no window) rather than over a window.
    pub fn is_live(&self) -> bool {
        matches!(self, Metric::Live(_) | Metric::BacklogAge(_))
    }

    /// The value and the number of items it was computed over, from a window's KPIs.
    pub fn of_window(&self, k: &Kpis) -> Observation {
        let (value, items) = match self {
            Metric::Count(m) => {
                let n = match *m {
                    "conversations" => k.conversations,
                    "messages_received" => k.messages_received,
                    "messages_sent" => k.messages_sent,
                    "messages_failed" => k.messages_failed,
                    "missed" => k.missed,
                    "abandoned" => k.abandoned,
                    _ => k.sla.overall.breached,
                };
                (Some(n as f64), n)
            }
            Metric::Rate(m) => match *m {
                "delivery_rate" => (k.delivery_rate, k.messages_sent),
                "read_rate" => (k.read_rate, k.messages_delivered),
                // missed / conversations with a customer message (docs/metrics.md §5): the
                // denominator is missed * 100 / rate when the rate is known.
                "missed_rate" => (k.missed_rate, rate_denominator(k.missed, k.missed_rate)),
                _ => (
                    k.sla.overall.breach_rate,
                    k.sla.overall.achieved + k.sla.overall.breached,
                ),
            },
            Metric::Duration(m, stat) => {
                let s = match *m {
                    "first_response" => &k.first_response,
                    "bot_first_response" => &k.bot_first_response,
                    "human_first_response" => &k.human_first_response,
                    "reply" => &k.reply,
                    "wait" => &k.wait,
                    "resolution" => &k.resolution,
                    _ => &k.sla.overall.over_target,
                };
                (stat.of(s), s.count)
            }
            Metric::Live(_) | Metric::BacklogAge(_) => (None, 0),
        };
        Observation { value, items }
    }

    /// The value at an instant, from the backlog and the SLA clocks running then.
    pub fn of_instant(&self, b: &Backlog, sla: &SlaStatus) -> Observation {
        let count = |n: u64| Observation {
            value: Some(n as f64),
            items: n,
        };
        match self {
            Metric::Live("backlog") => count(b.open),
            Metric::Live("unassigned") => count(b.unassigned),
            Metric::Live("open_unanswered") => count(b.unanswered),
            Metric::Live("sla.active") => count(sla.active.iter().sum()),
            Metric::Live(_) => count(sla.active_breached.iter().sum()),
            Metric::BacklogAge(stat) => Observation {
                value: stat.of(&b.age),
                items: b.age.count,
            },
            _ => Observation {
                value: None,
                items: 0,
            },
        }
    }

    /// Whether evaluating it needs the SLA clocks at the instant.
    pub fn needs_sla_status(&self) -> bool {
        matches!(self, Metric::Live(m) if m.starts_with("sla."))
    }
}

/// `n / (rate / 100)`, rounded: the denominator a rate was computed over (0 when unknown).
fn rate_denominator(n: u64, rate: Option<f64>) -> u64 {
    match rate {
        Some(r) if r > 0.0 => (n as f64 * 100.0 / r).round() as u64,
        // A rate of 0 % has a denominator we cannot recover; it is at least 1.
        Some(_) => 1,
        None => 0,
    }
}

fn stat_name(s: Stat) -> &'static str {
    match s {
        Stat::Mean => "mean",
        Stat::P50 => "p50",
        Stat::P90 => "p90",
        Stat::P95 => "p95",
        Stat::P99 => "p99",
        Stat::Max => "max",
    }
}

/// One evaluation's reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Absent when the KPI has no value (no items).
    pub value: Option<f64>,
    pub items: u64,
}

/// How the value is compared with the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    Above,
    AtLeast,
    Below,
    AtMost,
}

impl Comparison {
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::Above => value > threshold,
            Comparison::AtLeast => value >= threshold,
            Comparison::Below => value < threshold,
            Comparison::AtMost => value <= threshold,
        }
    }
}

/// A rule as stored (JSON in `alert_rules.spec`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleSpec {
    pub name: String,
    /// A [`Metric`] name.
    pub metric: String,
    /// Sliding window ending at the evaluation; 0 for live metrics.
    pub window_seconds: u32,
    pub channels: Vec<Channel>,
    pub inboxes: Vec<String>,
    pub teams: Vec<String>,
    pub agents: Vec<String>,
    pub tags: Vec<String>,
    pub priorities: Vec<Priority>,
    pub business_hours: bool,
    pub comparison: Comparison,
    pub threshold: f64,
    /// Fewer items than this: the condition does not hold.
    pub min_items: u64,
    pub fire_after_seconds: u32,
    pub resolve_after_seconds: u32,
    /// After a resolved notice, no new episode fires for this long.
    pub cooldown_seconds: u32,
    /// While firing, a reminder every this long; 0 = never.
    pub remind_every_seconds: u32,
    pub destinations: Vec<String>,
}

impl RuleSpec {
    pub fn metric(&self) -> Metric {
        Metric::parse(&self.metric).expect("validated rule")
    }

    pub fn filters(&self) -> Filters {
        Filters {
            channels: self.channels.clone(),
            inboxes: self.inboxes.clone(),
            teams: self.teams.clone(),
            agents: self.agents.clone(),
            tags: self.tags.clone(),
            priorities: self.priorities.clone(),
        }
    }

    /// Checks every value, naming the field of the first bad one (docs/metrics.md §12).
    pub fn validate(&self, allow_local: bool) -> Result<(), Error> {
        check_id("name", &self.name).map_err(Error::from)?;
        let metric = Metric::parse(&self.metric).ok_or_else(|| {
            Error::invalid(
                "metric",
                format!(
                    "unknown metric {:?} (docs/metrics.md §12 lists them)",
                    self.metric
                ),
            )
        })?;
        if metric.is_live() && self.window_seconds != 0 {
            return Err(Error::invalid(
                "window_seconds",
                format!("{} is read at an instant: leave the window 0", self.metric),
            ));
        }
        if !metric.is_live() && !(60..=MAX_WINDOW_SECONDS).contains(&self.window_seconds) {
            return Err(Error::invalid(
                "window_seconds",
                format!("must be 60-{MAX_WINDOW_SECONDS} for {}", self.metric),
            ));
        }
        for (field, len) in [
            ("filters.channels", self.channels.len()),
            ("filters.inboxes", self.inboxes.len()),
            ("filters.teams", self.teams.len()),
            ("filters.agents", self.agents.len()),
            ("filters.tags", self.tags.len()),
            ("filters.priorities", self.priorities.len()),
        ] {
            if len > MAX_FILTER_VALUES {
                return Err(Error::invalid(
                    field,
                    format!("at most {MAX_FILTER_VALUES} values, got {len}"),
                ));
            }
        }
        if !self.threshold.is_finite() {
            return Err(Error::invalid("threshold", "must be a finite number"));
        }
        for (field, v) in [
            ("fire_after_seconds", self.fire_after_seconds),
            ("resolve_after_seconds", self.resolve_after_seconds),
            ("cooldown_seconds", self.cooldown_seconds),
            ("remind_every_seconds", self.remind_every_seconds),
        ] {
            if v > MAX_HOLD_SECONDS {
                return Err(Error::invalid(
                    field,
                    format!("must be at most {MAX_HOLD_SECONDS}"),
                ));
            }
        }
        if self.remind_every_seconds != 0 && self.remind_every_seconds < 60 {
            return Err(Error::invalid(
                "remind_every_seconds",
                "must be 0 (never) or at least 60",
            ));
        }
        if self.destinations.is_empty() || self.destinations.len() > MAX_DESTINATIONS {
            return Err(Error::invalid(
                "destinations",
                format!("1-{MAX_DESTINATIONS} URLs, got {}", self.destinations.len()),
            ));
        }
        for (i, url) in self.destinations.iter().enumerate() {
            check_destination(&format!("destinations[{i}]"), url, allow_local)?;
        }
        Ok(())
    }
}

/// A destination URL: `http://` or `https://`, at most 2,048 characters, and (unless allowed)
/// not a literal address of the server's own host (loopback, unspecified, link-local such as a
/// cloud metadata address) nor `localhost`. The delivery checks the resolved addresses again.
pub fn check_destination(field: &str, url: &str, allow_local: bool) -> Result<(), Error> {
    if url.len() > 2_048 {
        return Err(Error::invalid(field, "at most 2048 characters"));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|e| Error::invalid(field, format!("not a URL: {e}")))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(Error::invalid(field, "must be an http:// or https:// URL"));
    }
    let host = uri
        .host()
        .ok_or_else(|| Error::invalid(field, "must name a host"))?;
    if allow_local {
        return Ok(());
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let local = bare.eq_ignore_ascii_case("localhost")
        || bare.to_ascii_lowercase().ends_with(".localhost")
        || bare.parse::<std::net::IpAddr>().is_ok_and(is_own_host);
    if local {
        return Err(Error::invalid(
            field,
            "must not be an address of the server's own host (loopback, link-local, unspecified); \
             the server's --alert-allow-local-destinations allows it",
        ));
    }
    Ok(())
}

/// Loopback, unspecified and link-local addresses (docs/metrics.md §12).
pub fn is_own_host(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_unspecified() || v4.is_link_local(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|v4| is_own_host(v4.into()))
        }
    }
}

/// Where a rule's episodes stand (stored in `alert_state`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct State {
    /// The condition's current stretch: `Some(since)` while it holds (pending or firing) or, while
    /// firing, while it does not (resolving).
    pub phase: Phase,
    /// Episodes fired so far; the current one while firing.
    pub episodes: u64,
    /// Last notice time of the current episode (firing or reminder).
    pub last_notice: Option<DateTime<Utc>>,
    /// No new episode before this.
    pub cooldown_until: Option<DateTime<Utc>>,
    /// The last evaluation's reading.
    pub value: Option<f64>,
    pub evaluated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "phase", content = "since")]
pub enum Phase {
    #[default]
    Ok,
    Pending(DateTime<Utc>),
    Firing(DateTime<Utc>),
    Resolving(DateTime<Utc>),
}

impl State {
    pub fn is_firing(&self) -> bool {
        matches!(self.phase, Phase::Firing(_) | Phase::Resolving(_))
    }
}

/// A notice to deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    Firing,
    Reminder,
    Resolved,
}

impl NoticeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Firing => "firing",
            NoticeKind::Reminder => "reminder",
            NoticeKind::Resolved => "resolved",
        }
    }
}

/// One evaluation at `now` (docs/metrics.md §12 episodes): the new state and the notice it
/// sends, if any.
pub fn step(
    rule: &RuleSpec,
    state: &State,
    now: DateTime<Utc>,
    seen: Observation,
) -> (State, Option<NoticeKind>) {
    let holds = seen.items >= rule.min_items
        && seen
            .value
            .is_some_and(|v| rule.comparison.holds(v, rule.threshold));
    let secs = |s: u32| Duration::seconds(i64::from(s));
    let mut next = State {
        value: seen.value,
        evaluated_at: Some(now),
        ..state.clone()
    };
    let cooled = state.cooldown_until.is_none_or(|until| now >= until);
    let mut notice = None;
    next.phase = match (state.phase, holds) {
        (Phase::Ok, true) | (Phase::Pending(_), true) => {
            let since = match state.phase {
                Phase::Pending(since) => since,
                _ => now,
            };
            if now - since >= secs(rule.fire_after_seconds) && cooled {
                next.episodes += 1;
                next.last_notice = Some(now);
                notice = Some(NoticeKind::Firing);
                Phase::Firing(since)
            } else {
                Phase::Pending(since)
            }
        }
        (Phase::Ok, false) | (Phase::Pending(_), false) => Phase::Ok,
        (Phase::Firing(since), true) | (Phase::Resolving(since), true) => {
            let last = state.last_notice.unwrap_or(since);
            if rule.remind_every_seconds > 0 && now - last >= secs(rule.remind_every_seconds) {
                next.last_notice = Some(now);
                notice = Some(NoticeKind::Reminder);
            }
            Phase::Firing(since)
        }
        (Phase::Firing(_), false) | (Phase::Resolving(_), false) => {
            let since = match state.phase {
                Phase::Resolving(since) => since,
                _ => now,
            };
            if now - since >= secs(rule.resolve_after_seconds) {
                next.last_notice = None;
                next.cooldown_until = Some(now + secs(rule.cooldown_seconds));
                notice = Some(NoticeKind::Resolved);
                Phase::Ok
            } else {
                Phase::Resolving(since)
            }
        }
    };
    (next, notice)
}

/// `X-Chatkpi-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` with the rule's
/// signing secret (docs/metrics.md §12): a receiver recomputes it and refuses old `t`s.
pub fn sign(secret: &[u8], at: DateTime<Utc>, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(at.timestamp().to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={},v1={}",
        at.timestamp(),
        hex::encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn rule() -> RuleSpec {
        RuleSpec {
            name: "backlog".into(),
            metric: "backlog".into(),
            window_seconds: 0,
            channels: vec![],
            inboxes: vec![],
            teams: vec![],
            agents: vec![],
            tags: vec![],
            priorities: vec![],
            business_hours: false,
            comparison: Comparison::Above,
            threshold: 50.0,
            min_items: 0,
            fire_after_seconds: 60,
            resolve_after_seconds: 60,
            cooldown_seconds: 0,
            remind_every_seconds: 0,
            destinations: vec!["https://example.com/hook".into()],
        }
    }

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    fn seen(v: f64) -> Observation {
        Observation {
            value: Some(v),
            items: v as u64,
        }
    }

    /// Runs evaluations every 30 s over `values`; returns (evaluation index, notice) pairs.
    fn run(rule: &RuleSpec, values: &[f64]) -> Vec<(usize, NoticeKind)> {
        let mut state = State::default();
        let mut out = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let (next, notice) = step(rule, &state, at(30 * i as i64), seen(*v));
            if let Some(n) = notice {
                out.push((i, n));
            }
            state = next;
        }
        out
    }

    #[test]
    fn an_episode_fires_once_after_the_hold_and_resolves_once_after_its_hold() {
        // Above 50 from evaluation 1 (30 s); held 60 s at evaluation 3; below from 5, 60 s at 7.
        let values = [10.0, 60.0, 70.0, 80.0, 90.0, 20.0, 10.0, 10.0, 10.0];
        assert_eq!(
            run(&rule(), &values),
            vec![(3, NoticeKind::Firing), (7, NoticeKind::Resolved)]
        );
    }

    #[test]
    fn a_short_spike_does_not_fire_and_a_short_dip_does_not_resolve() {
        assert!(run(&rule(), &[60.0, 10.0, 60.0, 10.0]).is_empty());
        let values = [60.0, 60.0, 60.0, 10.0, 60.0, 60.0];
        assert_eq!(run(&rule(), &values), vec![(2, NoticeKind::Firing)]);
    }

    #[test]
    fn too_few_items_never_hold() {
        let mut r = rule();
        r.min_items = 100;
        assert!(run(&r, &[60.0; 10]).is_empty());
    }

    #[test]
    fn reminders_follow_their_interval_and_cooldown_delays_the_next_episode() {
        let mut r = rule();
        r.fire_after_seconds = 0;
        r.resolve_after_seconds = 0;
        r.remind_every_seconds = 60;
        r.cooldown_seconds = 90;
        // Fires at 0, reminders at 2 and 4 (60 s apart), resolves at 5 (cooldown to 8), above
        // again at 6 and 7 (cooling), fires at 8.
        let values = [60.0, 60.0, 60.0, 60.0, 60.0, 10.0, 60.0, 60.0, 60.0];
        assert_eq!(
            run(&r, &values),
            vec![
                (0, NoticeKind::Firing),
                (2, NoticeKind::Reminder),
                (4, NoticeKind::Reminder),
                (5, NoticeKind::Resolved),
                (8, NoticeKind::Firing)
            ]
        );
    }

    #[test]
    fn metric_names_parse_and_print_back() {
        for name in [
            "first_response.p90",
            "missed_rate",
            "backlog",
            "open_unanswered",
            "sla.breach_rate",
            "sla.active_breached",
            "backlog_age.max",
        ] {
            assert_eq!(Metric::parse(name).unwrap().name(), name);
        }
        assert!(Metric::parse("first_response.p42").is_none());
        assert!(Metric::parse("nope").is_none());
    }

    #[test]
    fn destinations_on_the_servers_own_host_are_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1:9/x",
            "http://localhost/x",
            "http://[::1]/x",
            "http://169.254.169.254/latest",
            "http://0.0.0.0/",
        ] {
            assert!(check_destination("d", url, false).is_err(), "{url}");
            assert!(check_destination("d", url, true).is_ok(), "{url}");
        }
        assert!(check_destination("d", "https://hooks.example.com/T0/B0", false).is_ok());
        assert!(check_destination("d", "ftp://example.com/", true).is_err());
    }

    #[test]
    fn the_signature_is_the_hmac_of_the_timestamp_and_the_body() {
        // Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            sign(b"secret", at(0), br#"{"a":1}"#),
            "t=1700000000,v1=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }
}
