//! A tenant's settings: business hours (docs/metrics.md §7) and KPI targets (§8).

use super::{calendar::Schedule, kpi::Targets};

/// A tenant's settings; the defaults when never set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub business_hours: Option<Schedule>,
    pub targets: Targets,
}

/// A change to a tenant's settings: fields that are `None` stay as they are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SettingsUpdate {
    /// `Some(None)` removes the schedule.
    pub business_hours: Option<Option<Schedule>>,
    pub targets: Option<Targets>,
}

impl Settings {
    /// The settings after `update`.
    pub fn apply(mut self, update: SettingsUpdate) -> Settings {
        if let Some(hours) = update.business_hours {
            self.business_hours = hours;
        }
        if let Some(targets) = update.targets {
            self.targets = targets;
        }
        self
    }
}
