//! Service-level policies (docs/metrics.md §10): a tenant's ordered list of promises ("urgent
//! WhatsApp chats answered by a human within 2 minutes"), the conditions that pick the policy of
//! a clock, and the rules that judge a clock against its target.

use serde::{Deserialize, Serialize};

use super::{
    Error,
    event::{Channel, Priority, check_id},
    facts::SlaMetric,
};

/// Most policies a tenant may have.
pub const MAX_POLICIES: usize = 100;
/// Most values of one condition list.
pub const MAX_CONDITION_VALUES: usize = 100;
/// The longest target: a year.
pub const MAX_TARGET_SECONDS: u32 = 365 * 86_400;

/// One promise: which conversations it covers and up to three targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub name: String,
    #[serde(default)]
    pub conditions: Conditions,
    /// Per [`SlaMetric`] (first response, next response, resolution); at least one is set.
    pub targets: [Option<Target>; 3],
}

/// Which conversations a policy covers: OR within a list, AND across lists, an empty list =
/// any value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Conditions {
    pub channels: Vec<Channel>,
    pub inboxes: Vec<String>,
    pub teams: Vec<String>,
    pub priorities: Vec<Priority>,
    pub tags: Vec<String>,
}

/// A target: at most `seconds`, counted in calendar time or in the tenant's business hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub seconds: u32,
    pub business_hours: bool,
}

impl Policy {
    /// The target of `metric`, if the policy sets one.
    pub fn target(&self, metric: SlaMetric) -> Option<Target> {
        self.targets[metric as usize]
    }

    /// Whether any target is counted in business hours.
    pub fn uses_business_hours(&self) -> bool {
        self.targets.iter().flatten().any(|t| t.business_hours)
    }
}

/// Checks a tenant's policies; errors name the field below `field` (`sla_policies[2].name`).
pub fn check(field: &str, policies: &[Policy]) -> Result<(), Error> {
    if policies.len() > MAX_POLICIES {
        return Err(Error::invalid(
            field,
            format!("at most {MAX_POLICIES} policies, got {}", policies.len()),
        ));
    }
    for (i, p) in policies.iter().enumerate() {
        let at = |rest: &str| format!("{field}[{i}].{rest}");
        check_id(&at("name"), &p.name).map_err(Error::from)?;
        if policies[..i].iter().any(|q| q.name == p.name) {
            return Err(Error::invalid(
                at("name"),
                format!("{:?} names an earlier policy too", p.name),
            ));
        }
        if p.targets.iter().all(Option::is_none) {
            return Err(Error::invalid(
                at("first_response"),
                "a policy needs at least one target (first_response, next_response or resolution)",
            ));
        }
        for metric in SlaMetric::ALL {
            if let Some(t) = p.target(metric)
                && !(1..=MAX_TARGET_SECONDS).contains(&t.seconds)
            {
                return Err(Error::invalid(
                    at(&format!("{}.seconds", metric.as_str())),
                    format!(
                        "must be between 1 and {MAX_TARGET_SECONDS} (a year), got {}",
                        t.seconds
                    ),
                ));
            }
        }
        let c = &p.conditions;
        for (name, len) in [
            ("channels", c.channels.len()),
            ("inboxes", c.inboxes.len()),
            ("teams", c.teams.len()),
            ("priorities", c.priorities.len()),
            ("tags", c.tags.len()),
        ] {
            if len > MAX_CONDITION_VALUES {
                return Err(Error::invalid(
                    at(&format!("conditions.{name}")),
                    format!("at most {MAX_CONDITION_VALUES} values, got {len}"),
                ));
            }
        }
        for (name, values) in [("inboxes", &c.inboxes), ("teams", &c.teams), ("tags", &c.tags)] {
            for (j, v) in values.iter().enumerate() {
                check_id(&at(&format!("conditions.{name}[{j}]")), v).map_err(Error::from)?;
            }
        }
    }
    Ok(())
}

/// The verdict on a clock that stopped (docs/metrics.md §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Achieved,
    /// By how many seconds (business or calendar, as the target counts) it went over.
    Breached,
    /// Closed by the conversation's end before its target passed: not counted.
    NotCounted,
}

/// docs/metrics.md §10: a completed clock is achieved within its target and breached after it; a
/// clock closed by the conversation's end is breached when its target had passed by then, and
/// not counted otherwise.
pub fn verdict(elapsed: f64, target: Target, completed: bool) -> Verdict {
    if elapsed > f64::from(target.seconds) {
        Verdict::Breached
    } else if completed {
        Verdict::Achieved
    } else {
        Verdict::NotCounted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, seconds: u32) -> Policy {
        Policy {
            name: name.into(),
            conditions: Conditions::default(),
            targets: [
                Some(Target {
                    seconds,
                    business_hours: false,
                }),
                None,
                None,
            ],
        }
    }

    #[test]
    fn every_bad_value_of_a_policy_is_named() {
        let field = |policies: &[Policy]| check("sla_policies", policies).unwrap_err().to_string();
        assert!(check("sla_policies", &[policy("urgent", 120)]).is_ok());
        assert!(field(&[policy("", 120)]).starts_with("sla_policies[0].name: must be set"));
        assert!(field(&[policy("a", 120), policy("a", 60)]).starts_with("sla_policies[1].name:"));
        assert!(field(&[policy("a", 0)]).starts_with("sla_policies[0].first_response.seconds:"));
        assert!(
            field(&[policy("a", MAX_TARGET_SECONDS + 1)])
                .starts_with("sla_policies[0].first_response.seconds:")
        );
        let mut none = policy("a", 1);
        none.targets = [None, None, None];
        assert!(field(&[none]).starts_with("sla_policies[0].first_response: a policy needs"));
        let many: Vec<Policy> = (0..101).map(|i| policy(&format!("p{i}"), 60)).collect();
        assert!(field(&many).starts_with("sla_policies: at most 100 policies"));
        let mut tagged = policy("t", 60);
        tagged.conditions.tags = vec!["ok".into(), "bad\0".into()];
        assert!(field(&[tagged]).starts_with("sla_policies[0].conditions.tags[1]:"));
    }

    #[test]
    fn a_clock_is_achieved_breached_or_not_counted() {
        let t = Target {
            seconds: 120,
            business_hours: false,
        };
        assert_eq!(verdict(120.0, t, true), Verdict::Achieved);
        assert_eq!(verdict(120.5, t, true), Verdict::Breached);
        assert_eq!(verdict(100.0, t, false), Verdict::NotCounted);
        assert_eq!(verdict(121.0, t, false), Verdict::Breached);
    }
}
