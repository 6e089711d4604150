//! Alert rules, deliveries and notices: proto <-> domain, with `rule.` field paths.

use super::{chrono_to_timestamp, metrics::filters_from_proto};
use crate::{
    domain::{
        Error,
        alert::{Comparison, Phase, RuleSpec},
    },
    grpc::pb,
    store::alerts::{Delivery, Rule},
};

/// A rule as the client sent it, validated by the application (errors named `rule.<field>`).
pub fn rule_from_proto(r: Option<&pb::AlertRule>) -> Result<RuleSpec, Error> {
    let r = r.ok_or_else(|| Error::invalid("rule", "must be set"))?;
    let comparison = match pb::AlertComparison::try_from(r.comparison) {
        Ok(pb::AlertComparison::Above) => Comparison::Above,
        Ok(pb::AlertComparison::AtLeast) => Comparison::AtLeast,
        Ok(pb::AlertComparison::Below) => Comparison::Below,
        Ok(pb::AlertComparison::AtMost) => Comparison::AtMost,
        Ok(pb::AlertComparison::Unspecified) => return Err(Error::invalid("rule.comparison", "must be set")),
        Err(_) => {
            return Err(Error::invalid(
                "rule.comparison",
                format!("unknown enum value {}", r.comparison),
            ));
        }
    };
    let filters = filters_from_proto("rule.filters", &r.filters.clone().unwrap_or_default())?;
    Ok(RuleSpec {
        name: r.name.clone(),
        metric: r.metric.clone(),
        window_seconds: r.window_seconds,
        channels: filters.channels,
        inboxes: filters.inboxes,
        teams: filters.teams,
        agents: filters.agents,
        tags: filters.tags,
        priorities: filters.priorities,
        business_hours: r.business_hours,
        comparison,
        threshold: r.threshold,
        min_items: r.min_items,
        fire_after_seconds: r.fire_after_seconds,
        resolve_after_seconds: r.resolve_after_seconds,
        cooldown_seconds: r.cooldown_seconds,
        remind_every_seconds: r.remind_every_seconds,
        destinations: r.destinations.clone(),
    })
}

/// An application error about a rule, its field named below `rule.`.
pub fn in_rule(err: Error) -> Error {
    match err {
        Error::InvalidArgument { field, reason } if !field.starts_with("rule") => Error::InvalidArgument {
            field: format!("rule.{field}"),
            reason,
        },
        other => other,
    }
}

fn comparison_to_proto(c: Comparison) -> pb::AlertComparison {
    match c {
        Comparison::Above => pb::AlertComparison::Above,
        Comparison::AtLeast => pb::AlertComparison::AtLeast,
        Comparison::Below => pb::AlertComparison::Below,
        Comparison::AtMost => pb::AlertComparison::AtMost,
    }
}

pub fn comparison_name(c: Comparison) -> &'static str {
    match c {
        Comparison::Above => "above",
        Comparison::AtLeast => "at_least",
        Comparison::Below => "below",
        Comparison::AtMost => "at_most",
    }
}

pub fn rule_to_proto(rule: &Rule) -> pb::AlertRule {
    let s = &rule.spec;
    let since = match rule.state.phase {
        Phase::Ok => None,
        Phase::Pending(t) | Phase::Firing(t) | Phase::Resolving(t) => Some(chrono_to_timestamp(t)),
    };
    pb::AlertRule {
        rule_id: rule.rule_id as u64,
        name: s.name.clone(),
        metric: s.metric.clone(),
        window_seconds: s.window_seconds,
        filters: Some(pb::Filters {
            channels: s
                .channels
                .iter()
                .map(|c| super::channel_to_proto(*c) as i32)
                .collect(),
            inboxes: s.inboxes.clone(),
            teams: s.teams.clone(),
            agents: s.agents.clone(),
            tags: s.tags.clone(),
            priorities: s
                .priorities
                .iter()
                .map(|p| super::priority_to_proto(*p) as i32)
                .collect(),
        }),
        business_hours: s.business_hours,
        comparison: comparison_to_proto(s.comparison) as i32,
        threshold: s.threshold,
        min_items: s.min_items,
        fire_after_seconds: s.fire_after_seconds,
        resolve_after_seconds: s.resolve_after_seconds,
        cooldown_seconds: s.cooldown_seconds,
        remind_every_seconds: s.remind_every_seconds,
        destinations: s.destinations.clone(),
        state: Some(pb::AlertRuleState {
            firing: rule.state.is_firing(),
            episodes: rule.state.episodes,
            since,
            value: rule.state.value,
            evaluated_at: rule.state.evaluated_at.map(chrono_to_timestamp),
        }),
    }
}

pub fn delivery_to_proto(d: &Delivery) -> pb::AlertDelivery {
    pb::AlertDelivery {
        delivery_id: d.delivery_id as u64,
        rule_id: d.rule_id as u64,
        kind: d.kind.clone(),
        episode: d.episode as u64,
        destination: d.destination.clone(),
        status: d.status.clone(),
        next_attempt_at: d.next_attempt_at.map(chrono_to_timestamp),
        created_at: Some(chrono_to_timestamp(d.created_at)),
        attempts: d
            .attempts
            .iter()
            .map(|(attempt, at, code, error)| pb::AlertAttempt {
                attempt: *attempt as u32,
                at: Some(chrono_to_timestamp(*at)),
                http_status: code.unwrap_or(0) as u32,
                error: error.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

/// A notice document (docs/metrics.md §12) as the stream sends it.
pub fn notice_to_proto(doc: &serde_json::Value) -> pb::AlertNotice {
    let rule = &doc["rule"];
    let at = doc["at"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| chrono_to_timestamp(t.with_timezone(&chrono::Utc)));
    pb::AlertNotice {
        rule_id: rule["id"].as_u64().unwrap_or_default(),
        rule_name: rule["name"].as_str().unwrap_or_default().to_owned(),
        metric: rule["metric"].as_str().unwrap_or_default().to_owned(),
        state: doc["state"].as_str().unwrap_or_default().to_owned(),
        episode: doc["episode"].as_u64().unwrap_or_default(),
        value: doc["value"].as_f64(),
        items: doc["items"].as_u64().unwrap_or_default(),
        threshold: rule["threshold"].as_f64().unwrap_or_default(),
        comparison: rule["comparison"].as_str().unwrap_or_default().to_owned(),
        at,
        document: doc.to_string(),
    }
}
