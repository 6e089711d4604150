//! Proto <-> domain conversions of the KPI API: queries in (with field paths in errors), KPIs,
//! settings and drill-down rows out.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};

use super::{chrono_to_timestamp, required_enum, timestamp_to_chrono};
use crate::{
    domain::{
        Error,
        calendar::{self, DaySeconds, Granularity, Schedule},
        event::FieldError,
        facts::SlaMetric,
        query::{self, Filters, Query, Window},
        scorecard,
        settings::Settings,
        sla,
    },
    engine::{
        kpi::{
            Ces, ConversionKpis, Csat, Dimension, Kpis, Nps, Targets,
            live::{AgentUtilization, ConversationRow, DrillDown},
        },
        stats::DurationStats,
    },
    grpc::pb,
};

fn invalid(prefix: &str, e: FieldError) -> Error {
    Error::invalid(format!("{prefix}.{}", e.field), e.reason)
}

fn prefixed(prefix: &str, e: Error) -> Error {
    match e {
        Error::InvalidArgument { field, reason } => Error::invalid(format!("{prefix}.{field}"), reason),
        other => other,
    }
}

fn required_time(field: &str, ts: &Option<pbjson_types::Timestamp>) -> Result<DateTime<Utc>, Error> {
    let ts = ts.as_ref().ok_or_else(|| Error::invalid(field, "must be set"))?;
    timestamp_to_chrono("", ts).map_err(|e| Error::invalid(field, e.reason))
}

fn lookahead(field: &str, d: &Option<pbjson_types::Duration>, default: Duration) -> Result<Duration, Error> {
    match d {
        None => Ok(default),
        Some(d) => query::check_lookahead(field, d.seconds, d.nanos),
    }
}

/// Decodes `query` (path prefix `query`). `window_required = false` lets backlog requests
/// omit from/to (the window then ends at `default_to`).
pub fn query_from_proto(
    q: Option<&pb::Query>,
    window_required: bool,
    default_to: DateTime<Utc>,
) -> Result<Query, Error> {
    let empty = pb::Query::default();
    let q = match q {
        Some(q) => q,
        None if window_required => return Err(Error::invalid("query", "must be set")),
        None => &empty,
    };
    let window = if !window_required && q.from.is_none() && q.to.is_none() {
        Window {
            from: default_to - Duration::seconds(1),
            to: default_to,
        }
    } else {
        let from = required_time("query.from", &q.from)?;
        let to = required_time("query.to", &q.to)?;
        Window::new(from, to).map_err(|e| prefixed("query", e))?
    };
    let mut out = Query::new(window);
    out.time_zone = query::parse_time_zone("query.time_zone", &q.time_zone)?;
    out.business_hours = q.business_hours;
    out.repeat_window = lookahead(
        "query.repeat_window",
        &q.repeat_window,
        query::DEFAULT_REPEAT_WINDOW,
    )?;
    out.attribution_window = lookahead(
        "query.attribution_window",
        &q.attribution_window,
        query::DEFAULT_ATTRIBUTION_WINDOW,
    )?;
    query::check_list_len("query.conversion_kinds", q.conversion_kinds.len())?;
    for (i, kind) in q.conversion_kinds.iter().enumerate() {
        crate::domain::event::check_conversion_kind(&format!("conversion_kinds[{i}]"), kind)
            .map_err(|e| invalid("query", e))?;
    }
    out.conversion_kinds = q.conversion_kinds.clone();
    if let Some(f) = &q.filters {
        out.filters = filters_from_proto("query.filters", f)?;
    }
    Ok(out)
}

/// Filters, with errors named below `at` (`query.filters`, `rule.filters`).
pub(crate) fn filters_from_proto(at: &str, f: &pb::Filters) -> Result<Filters, Error> {
    let lists: [(&str, usize); 6] = [
        ("channels", f.channels.len()),
        ("inboxes", f.inboxes.len()),
        ("teams", f.teams.len()),
        ("agents", f.agents.len()),
        ("tags", f.tags.len()),
        ("priorities", f.priorities.len()),
    ];
    for (name, len) in lists {
        query::check_list_len(&format!("{at}.{name}"), len)?;
    }
    for (name, values) in [
        ("inboxes", &f.inboxes),
        ("teams", &f.teams),
        ("agents", &f.agents),
        ("tags", &f.tags),
    ] {
        for (i, v) in values.iter().enumerate() {
            crate::domain::event::check_id(&format!("{name}[{i}]"), v).map_err(|e| invalid(at, e))?;
        }
    }
    let mut out = Filters {
        inboxes: f.inboxes.clone(),
        teams: f.teams.clone(),
        agents: f.agents.clone(),
        tags: f.tags.clone(),
        ..Filters::default()
    };
    for (i, c) in f.channels.iter().enumerate() {
        out.channels
            .push(required_enum(&format!("channels[{i}]"), *c, super::channel).map_err(|e| invalid(at, e))?);
    }
    for (i, p) in f.priorities.iter().enumerate() {
        out.priorities.push(
            required_enum(&format!("priorities[{i}]"), *p, super::priority).map_err(|e| invalid(at, e))?,
        );
    }
    Ok(out)
}

pub fn dimension_from_proto(raw: i32) -> Result<Dimension, Error> {
    use pb::Dimension as D;
    required_enum("dimension", raw, |d: D| {
        Some(match d {
            D::Unspecified => return None,
            D::Channel => Dimension::Channel,
            D::Inbox => Dimension::Inbox,
            D::Team => Dimension::Team,
            D::Agent => Dimension::Agent,
            D::Tag => Dimension::Tag,
            D::Priority => Dimension::Priority,
            D::HourOfDay => Dimension::HourOfDay,
            D::DayOfWeek => Dimension::DayOfWeek,
            D::SlaPolicy => Dimension::SlaPolicy,
        })
    })
    .map_err(Error::from)
}

pub fn granularity_from_proto(raw: i32) -> Result<Granularity, Error> {
    use pb::Granularity as G;
    required_enum("granularity", raw, |g: G| {
        Some(match g {
            G::Unspecified => return None,
            G::Hour => Granularity::Hour,
            G::Day => Granularity::Day,
            G::Week => Granularity::Week,
            G::Month => Granularity::Month,
        })
    })
    .map_err(Error::from)
}

pub fn drill_down_from_proto(raw: i32) -> Result<DrillDown, Error> {
    use pb::DrillDown as K;
    required_enum("kpi", raw, |k: K| {
        Some(match k {
            K::Unspecified => return None,
            K::Opened => DrillDown::Opened,
            K::Resolved => DrillDown::Resolved,
            K::Ended => DrillDown::Ended,
            K::Missed => DrillDown::Missed,
            K::Abandoned => DrillDown::Abandoned,
            K::Backlog => DrillDown::Backlog,
            K::NotFcr => DrillDown::NotFcr,
            K::SlaBreached => DrillDown::SlaBreached,
        })
    })
    .map_err(Error::from)
}

pub fn duration_stats(s: &DurationStats) -> pb::DurationStats {
    pb::DurationStats {
        count: s.count,
        mean: s.mean,
        p50: s.p50,
        p90: s.p90,
        p95: s.p95,
        p99: s.p99,
        min: s.min,
        max: s.max,
        within_target: s.within_target,
    }
}

pub fn kpis_to_proto(k: &Kpis) -> pb::Kpis {
    pb::Kpis {
        conversations: k.conversations,
        messages_received: k.messages_received,
        messages_sent: k.messages_sent,
        messages_delivered: k.messages_delivered,
        messages_read: k.messages_read,
        messages_failed: k.messages_failed,
        delivery_rate: k.delivery_rate,
        read_rate: k.read_rate,
        first_response: Some(duration_stats(&k.first_response)),
        bot_first_response: Some(duration_stats(&k.bot_first_response)),
        human_first_response: Some(duration_stats(&k.human_first_response)),
        reply: Some(duration_stats(&k.reply)),
        wait: Some(duration_stats(&k.wait)),
        resolution: Some(duration_stats(&k.resolution)),
        duration: Some(duration_stats(&k.duration)),
        resolved: k.resolved,
        resolutions: k.resolutions,
        fcr_rate: k.fcr_rate,
        repeat_contact_rate: k.repeat_contact_rate,
        reopen_rate: k.reopen_rate,
        missed: k.missed,
        missed_rate: k.missed_rate,
        abandoned: k.abandoned,
        ended: k.ended,
        messages_per_chat: k.messages_per_chat,
        customer_messages_per_chat: k.customer_messages_per_chat,
        agent_messages_per_chat: k.agent_messages_per_chat,
        bot_messages_per_chat: k.bot_messages_per_chat,
        csat: Some(csat_to_proto(&k.csat)),
        nps: Some(nps_to_proto(&k.nps)),
        ces: Some(ces_to_proto(&k.ces)),
        automation_rate: k.automation_rate,
        bot_resolutions: k.bot_resolutions,
        bot_handoff_rate: k.bot_handoff_rate,
        conversion: Some(conversion_to_proto(&k.conversion)),
        retention: Some(pb::Retention {
            previous_customers: k.retention.previous_customers,
            retained: k.retention.retained,
            rate: k.retention.rate,
        }),
        tags: k
            .tags
            .iter()
            .map(|(tag, n, share)| pb::ShareCount {
                value: tag.clone(),
                conversations: *n,
                share: *share,
            })
            .collect(),
        tags_omitted: k.tags_omitted,
        sla: Some(sla_to_proto(&k.sla)),
        channels: k
            .channels
            .iter()
            .map(|(c, n, share)| pb::ShareCount {
                value: c.as_str().to_owned(),
                conversations: *n,
                share: *share,
            })
            .collect(),
    }
}

fn csat_to_proto(c: &Csat) -> pb::Csat {
    pb::Csat {
        responses: c.responses,
        mean_score: c.mean_score,
        csat_percent: c.satisfied_percent,
        distribution: c
            .distribution
            .iter()
            .map(|(score, min, max, count)| pb::ScoreCount {
                score: *score,
                scale_min: *min,
                scale_max: *max,
                count: *count,
            })
            .collect(),
        sent: c.sent,
        response_rate: c.response_rate,
    }
}

fn nps_to_proto(n: &Nps) -> pb::Nps {
    pb::Nps {
        responses: n.responses,
        promoters: n.promoters,
        passives: n.passives,
        detractors: n.detractors,
        nps: n.score,
        sent: n.sent,
        response_rate: n.response_rate,
    }
}

fn ces_to_proto(c: &Ces) -> pb::Ces {
    pb::Ces {
        responses: c.responses,
        mean_score: c.mean_score,
        sent: c.sent,
        response_rate: c.response_rate,
    }
}

fn conversion_to_proto(c: &ConversionKpis) -> pb::ConversionKpis {
    pb::ConversionKpis {
        customers: c.customers,
        converted: c.converted,
        rate: c.rate,
        conversions: c.conversions,
        revenue: c
            .revenue
            .iter()
            .map(|(currency, value)| pb::Money {
                currency: currency.clone(),
                // docs/metrics.md §5: exact while it fits 64 bits; beyond, the largest value
                // and `overflow`, never a silently wrong sum.
                value_minor: i64::try_from(*value).unwrap_or(i64::MAX),
                overflow: *value > i128::from(i64::MAX),
            })
            .collect(),
    }
}

pub fn utilization_to_proto(u: &AgentUtilization) -> pb::AgentUtilization {
    pb::AgentUtilization {
        agent_id: u.agent.clone(),
        logged_in_seconds: u.logged_in_seconds,
        handling_seconds: u.handling_seconds,
        utilization: u.utilization,
    }
}

pub fn scorecard_to_proto(scope: &str, lines: &[scorecard::Line]) -> pb::Scorecard {
    pb::Scorecard {
        scope: scope.to_owned(),
        lines: lines
            .iter()
            .map(|l| pb::ScorecardLine {
                kpi: l.kpi.to_owned(),
                value: l.value,
                target: l.target.clone(),
                mean_seconds: l.mean_seconds,
                met: l.met,
            })
            .collect(),
    }
}

/// A drill-down row.
pub fn conversation_to_proto(c: ConversationRow) -> pb::ConversationFacts {
    pb::ConversationFacts {
        conversation_id: c.conversation_id,
        customer_id: c.customer_id,
        channel: c.channel.to_owned(),
        inbox: c.inbox,
        team: c.team,
        priority: c.priority.to_owned(),
        agent: c.agent,
        assignee: c.assignee,
        tags: c.tags,
        state: c.state.to_owned(),
        opened_at: Some(chrono_to_timestamp(c.opened_at)),
        resolved_at: c.resolved_at.map(chrono_to_timestamp),
        ended_at: c.ended_at.map(chrono_to_timestamp),
        first_response_seconds: c.first_response_seconds,
        first_responder: c.first_responder,
        human_first_response_seconds: c.human_first_response_seconds,
        wait_seconds: c.wait_seconds,
        resolution_seconds: c.resolution_seconds,
        duration_seconds: c.duration_seconds,
        reopen_count: c.reopen_count,
        customer_messages: c.customer_messages,
        agent_messages: c.agent_messages,
        bot_messages: c.bot_messages,
        csat_score: c.csat_score,
        nps_score: c.nps_score,
        ces_score: c.ces_score,
        reply_seconds: c.reply_seconds,
        sla_breaches: c
            .sla_breaches
            .into_iter()
            .map(|b| pb::SlaBreach {
                metric: b.metric.as_str().to_owned(),
                policy: b.policy,
                target_seconds: b.target_seconds,
                actual_seconds: b.actual_seconds,
                at: Some(chrono_to_timestamp(b.at)),
            })
            .collect(),
    }
}

pub fn settings_to_proto(s: &Settings) -> pb::GetSettingsResponse {
    pb::GetSettingsResponse {
        business_hours: s.business_hours.as_ref().map(schedule_to_proto),
        targets: Some(targets_to_proto(&s.targets)),
        sla_policies: s.sla_policies.iter().map(policy_to_proto).collect(),
    }
}

fn sla_to_proto(s: &crate::engine::kpi::SlaKpis) -> pb::SlaKpis {
    let stats = |x: &crate::engine::kpi::SlaStats| pb::SlaStats {
        achieved: x.achieved,
        breached: x.breached,
        breach_rate: x.breach_rate,
        over_target: Some(duration_stats(&x.over_target)),
    };
    pb::SlaKpis {
        first_response: Some(stats(&s.first_response)),
        next_response: Some(stats(&s.next_response)),
        resolution: Some(stats(&s.resolution)),
        overall: Some(stats(&s.overall)),
    }
}

fn policy_to_proto(p: &sla::Policy) -> pb::SlaPolicy {
    let target = |m: SlaMetric| {
        p.target(m).map(|t| pb::SlaTarget {
            seconds: t.seconds,
            business_hours: t.business_hours,
        })
    };
    let c = &p.conditions;
    pb::SlaPolicy {
        name: p.name.clone(),
        conditions: Some(pb::SlaConditions {
            channels: c
                .channels
                .iter()
                .map(|ch| super::channel_to_proto(*ch) as i32)
                .collect(),
            inboxes: c.inboxes.clone(),
            teams: c.teams.clone(),
            priorities: c
                .priorities
                .iter()
                .map(|p| super::priority_to_proto(*p) as i32)
                .collect(),
            tags: c.tags.clone(),
        }),
        first_response: target(SlaMetric::FirstResponse),
        next_response: target(SlaMetric::NextResponse),
        resolution: target(SlaMetric::Resolution),
    }
}

/// SLA policies from the wire (path prefix `sla_policies.policies`), checked.
pub fn policies_from_proto(list: &pb::SlaPolicies) -> Result<Vec<sla::Policy>, Error> {
    let field = "sla_policies.policies";
    let mut out = Vec::with_capacity(list.policies.len().min(sla::MAX_POLICIES + 1));
    for (i, p) in list.policies.iter().enumerate().take(sla::MAX_POLICIES + 1) {
        let at = |rest: &str| format!("{field}[{i}].{rest}");
        let c = p.conditions.clone().unwrap_or_default();
        let mut conditions = sla::Conditions {
            inboxes: c.inboxes,
            teams: c.teams,
            tags: c.tags,
            ..Default::default()
        };
        for (j, ch) in c.channels.iter().enumerate().take(sla::MAX_CONDITION_VALUES + 1) {
            conditions.channels.push(
                super::required_enum(&format!("channels[{j}]"), *ch, super::channel)
                    .map_err(|e| invalid(&at("conditions"), e))?,
            );
        }
        for (j, pr) in c
            .priorities
            .iter()
            .enumerate()
            .take(sla::MAX_CONDITION_VALUES + 1)
        {
            conditions.priorities.push(
                super::required_enum(&format!("priorities[{j}]"), *pr, super::priority)
                    .map_err(|e| invalid(&at("conditions"), e))?,
            );
        }
        let target = |t: &Option<pb::SlaTarget>| {
            t.as_ref().map(|t| sla::Target {
                seconds: t.seconds,
                business_hours: t.business_hours,
            })
        };
        out.push(sla::Policy {
            name: p.name.clone(),
            conditions,
            targets: [
                target(&p.first_response),
                target(&p.next_response),
                target(&p.resolution),
            ],
        });
    }
    if list.policies.len() > sla::MAX_POLICIES {
        return Err(Error::invalid(
            field,
            format!(
                "at most {} policies, got {}",
                sla::MAX_POLICIES,
                list.policies.len()
            ),
        ));
    }
    sla::check(field, &out)?;
    Ok(out)
}

fn format_hhmm(secs: DaySeconds) -> String {
    format!("{:02}:{:02}", secs / 3600, (secs % 3600) / 60)
}

pub fn schedule_from_proto(b: &pb::BusinessHours) -> Result<Schedule, Error> {
    let tz = query::parse_time_zone("business_hours.time_zone", &b.time_zone)?;
    if b.time_zone.is_empty() {
        return Err(Error::invalid(
            "business_hours.time_zone",
            "must be set (an IANA time zone)",
        ));
    }
    let mut weekly: [Vec<(DaySeconds, DaySeconds)>; 7] = Default::default();
    for (i, day) in b.days.iter().enumerate() {
        if !(1..=7).contains(&day.weekday) {
            return Err(Error::invalid(
                format!("business_hours.days[{i}].weekday"),
                "must be 1 (Monday) to 7 (Sunday)",
            ));
        }
        for (j, interval) in day.intervals.iter().enumerate() {
            let open = calendar::parse_hhmm(
                &format!("business_hours.days[{i}].intervals[{j}].open"),
                &interval.open,
            )?;
            let close = calendar::parse_hhmm(
                &format!("business_hours.days[{i}].intervals[{j}].close"),
                &interval.close,
            )?;
            weekly[day.weekday as usize - 1].push((open, close));
        }
    }
    let mut holidays = BTreeSet::new();
    for (i, h) in b.holidays.iter().enumerate() {
        holidays.insert(calendar::parse_holiday(
            &format!("business_hours.holidays[{i}]"),
            h,
        )?);
    }
    Schedule::new(tz, weekly, holidays)
}

pub fn schedule_to_proto(s: &Schedule) -> pb::BusinessHours {
    pb::BusinessHours {
        time_zone: s.time_zone.name().to_owned(),
        days: s
            .weekly
            .iter()
            .enumerate()
            .filter(|(_, intervals)| !intervals.is_empty())
            .map(|(i, intervals)| pb::DayHours {
                weekday: i as u32 + 1,
                intervals: intervals
                    .iter()
                    .map(|(open, close)| pb::OpenInterval {
                        open: format_hhmm(*open),
                        close: format_hhmm(*close),
                    })
                    .collect(),
            })
            .collect(),
        holidays: s
            .holidays
            .iter()
            .map(|d| d.format("%Y-%m-%d").to_string())
            .collect(),
    }
}

pub fn targets_from_proto(t: &pb::Targets) -> Result<Targets, Error> {
    let d = Targets::default();
    let check = |field: &str, v: Option<f64>, default: f64, max: f64| -> Result<f64, Error> {
        match v {
            None => Ok(default),
            Some(v) if v.is_finite() && (0.0..=max).contains(&v) => Ok(v),
            Some(v) => Err(Error::invalid(
                format!("targets.{field}"),
                format!("must be between 0 and {max}, got {v}"),
            )),
        }
    };
    let out = Targets {
        human_frt_seconds: check("human_frt_seconds", t.human_frt_seconds, d.human_frt_seconds, 1e9)?,
        bot_frt_seconds: check("bot_frt_seconds", t.bot_frt_seconds, d.bot_frt_seconds, 1e9)?,
        resolution_seconds: check(
            "resolution_seconds",
            t.resolution_seconds,
            d.resolution_seconds,
            1e9,
        )?,
        csat_percent: check("csat_percent", t.csat_percent, d.csat_percent, 100.0)?,
        fcr_percent: check("fcr_percent", t.fcr_percent, d.fcr_percent, 100.0)?,
        utilization_min_percent: check(
            "utilization_min_percent",
            t.utilization_min_percent,
            d.utilization_min_percent,
            100.0,
        )?,
        utilization_max_percent: check(
            "utilization_max_percent",
            t.utilization_max_percent,
            d.utilization_max_percent,
            100.0,
        )?,
        duration_compliance_percent: check(
            "duration_compliance_percent",
            t.duration_compliance_percent,
            d.duration_compliance_percent,
            100.0,
        )?,
    };
    if out.utilization_min_percent > out.utilization_max_percent {
        return Err(Error::invalid(
            "targets.utilization_min_percent",
            "must not exceed utilization_max_percent",
        ));
    }
    Ok(out)
}

pub fn targets_to_proto(t: &Targets) -> pb::Targets {
    pb::Targets {
        human_frt_seconds: Some(t.human_frt_seconds),
        bot_frt_seconds: Some(t.bot_frt_seconds),
        resolution_seconds: Some(t.resolution_seconds),
        csat_percent: Some(t.csat_percent),
        fcr_percent: Some(t.fcr_percent),
        utilization_min_percent: Some(t.utilization_min_percent),
        utilization_max_percent: Some(t.utilization_max_percent),
        duration_compliance_percent: Some(t.duration_compliance_percent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revenue_beyond_64_bits_is_flagged_never_wrapped_or_silently_cut() {
        let mut k = Kpis::default();
        // 10,000 conversions of the largest accepted value (10^15) sum past int64's range.
        let big = 10_000 * i128::from(crate::domain::event::MAX_VALUE_MINOR);
        k.conversion.revenue = vec![("EUR".into(), big), ("USD".into(), 12_345)];
        let money = kpis_to_proto(&k).conversion.unwrap().revenue;
        assert_eq!((money[0].value_minor, money[0].overflow), (i64::MAX, true));
        assert_eq!((money[1].value_minor, money[1].overflow), (12_345, false));
    }
}
