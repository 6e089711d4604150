//! A tenant's settings: business hours (docs/metrics.md §7), KPI targets (§8) and SLA policies
//! (§10).

use super::{Error, calendar::Schedule, facts::SlaMetric, kpi::Targets, sla::Policy};

/// A tenant's settings; the defaults when never set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub business_hours: Option<Schedule>,
    pub targets: Targets,
    /// In order: the first that covers a clock governs it.
    pub sla_policies: Vec<Policy>,
}

/// A change to a tenant's settings: fields that are `None` stay as they are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SettingsUpdate {
    /// `Some(None)` removes the schedule.
    pub business_hours: Option<Option<Schedule>>,
    pub targets: Option<Targets>,
    /// Replaces the list (an empty one removes every policy).
    pub sla_policies: Option<Vec<Policy>>,
}

impl Settings {
    /// The settings after `update`: a policy target counted in business hours needs business
    /// hours (both ways: such a policy without a schedule, or removing the schedule under it).
    pub fn apply(mut self, update: SettingsUpdate) -> Result<Settings, Error> {
        let removes_hours = update.business_hours.as_ref().is_some_and(Option::is_none);
        if let Some(hours) = update.business_hours {
            self.business_hours = hours;
        }
        if let Some(targets) = update.targets {
            self.targets = targets;
        }
        let new_policies = update.sla_policies.is_some();
        if let Some(policies) = update.sla_policies {
            self.sla_policies = policies;
        }
        if self.business_hours.is_none()
            && let Some((i, p)) = self
                .sla_policies
                .iter()
                .enumerate()
                .find(|(_, p)| p.uses_business_hours())
        {
            return Err(if new_policies {
                Error::invalid(
                    format!(
                        "sla_policies.policies[{i}].{}.business_hours",
                        first_in_business_hours(p)
                    ),
                    "measures in business hours, but the tenant has none: set business_hours too",
                )
            } else if removes_hours {
                Error::invalid(
                    "clear_business_hours",
                    format!(
                        "SLA policy {:?} measures in business hours: change it first",
                        p.name
                    ),
                )
            } else {
                Error::FailedPrecondition(format!(
                    "SLA policy {:?} measures in business hours, which the tenant has not set",
                    p.name
                ))
            });
        }
        Ok(self)
    }
}

/// The first metric of `p` whose target counts business hours.
fn first_in_business_hours(p: &Policy) -> &'static str {
    SlaMetric::ALL
        .into_iter()
        .find(|m| p.target(*m).is_some_and(|t| t.business_hours))
        .map_or("resolution", SlaMetric::as_str)
}
