//! The KPI types of docs/metrics.md §5-§8: what a computation answers for one group of items, how
//! items are grouped, and the tenant's targets.

pub mod live;

use crate::domain::{
    calendar::Granularity,
    event::{Channel, Priority},
    stats::DurationStats,
    time::Micros,
};

/// A tenant's symbol for a name (inbox, team, agent, tag); 0 = not set. The query engine
/// interns names to these.
pub type Sym = u32;

/// Most rows an answer lists per dimension (breakdown rows, scorecards per agent or team,
/// utilization per agent): docs/metrics.md §6.
pub const MAX_ROWS: usize = 1000;

/// Most tag shares one group's KPIs list (docs/metrics.md §5 tags): the most frequent first.
pub const MAX_TAG_SHARES: usize = 100;

/// A breakdown dimension (docs/metrics.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    Channel,
    Inbox,
    Team,
    Agent,
    Tag,
    Priority,
    HourOfDay,
    DayOfWeek,
    /// The SLA policy of a clock (only SLA figures are grouped by it, docs/metrics.md §10).
    SlaPolicy,
}

/// How items are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    All,
    By(Dimension),
    Series(Granularity),
}

impl Dimension {
    /// Every dimension, in declaration order.
    pub const ALL: [Dimension; 9] = [
        Dimension::Channel,
        Dimension::Inbox,
        Dimension::Team,
        Dimension::Agent,
        Dimension::Tag,
        Dimension::Priority,
        Dimension::HourOfDay,
        Dimension::DayOfWeek,
        Dimension::SlaPolicy,
    ];
}

/// The group an item lands in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupKey {
    All,
    /// A tenant symbol (inbox, team, agent, tag); 0 = not set.
    Value(Sym),
    Channel(Channel),
    Priority(Priority),
    /// Hour of day (0-23) or day of week (1-7).
    Number(u32),
    /// Start of a calendar bucket.
    Bucket(Micros),
    /// An SLA policy, by its place in the tenant's list.
    Policy(u32),
}

/// KPI targets (docs/metrics.md §8), defaults from helpdesk practice.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Targets {
    pub human_frt_seconds: f64,
    pub bot_frt_seconds: f64,
    pub resolution_seconds: f64,
    pub csat_percent: f64,
    pub fcr_percent: f64,
    pub utilization_min_percent: f64,
    pub utilization_max_percent: f64,
    /// Share (%) of items within a duration target for the target to count as met.
    pub duration_compliance_percent: f64,
}

impl Default for Targets {
    fn default() -> Self {
        Self {
            human_frt_seconds: 60.0,
            bot_frt_seconds: 15.0,
            resolution_seconds: 510.0,
            csat_percent: 90.0,
            fcr_percent: 70.0,
            utilization_min_percent: 85.0,
            utilization_max_percent: 90.0,
            duration_compliance_percent: 90.0,
        }
    }
}

/// CSAT answers (docs/metrics.md §5).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Csat {
    pub responses: u64,
    /// Mean score mapped to 1-5 (`1 + 4 * (score - min) / (max - min)`), so answers on
    /// different scales can be averaged (docs/metrics.md).
    pub mean_score: Option<f64>,
    /// Share (%) of satisfied answers: `(score - min) / (max - min) >= 0.75`.
    pub satisfied_percent: Option<f64>,
    pub satisfied: u64,
    /// Answers per (score, scale min, scale max).
    pub distribution: Vec<(i32, i32, i32, u64)>,
    pub sent: u64,
    pub response_rate: Option<f64>,
}

/// NPS answers.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Nps {
    pub responses: u64,
    pub promoters: u64,
    pub passives: u64,
    pub detractors: u64,
    /// % promoters - % detractors (-100..100).
    pub score: Option<f64>,
    pub sent: u64,
    pub response_rate: Option<f64>,
}

/// CES answers, mapped to 1-7.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Ces {
    pub responses: u64,
    pub mean_score: Option<f64>,
    pub sent: u64,
    pub response_rate: Option<f64>,
}

/// Conversion rate and revenue (docs/metrics.md §5).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConversionKpis {
    pub customers: u64,
    pub converted: u64,
    pub rate: Option<f64>,
    /// (currency, sum of value_minor), sorted by currency.
    /// Sum of `value_minor` per currency, exact (128-bit; the wire's 64 bits may not hold it).
    pub revenue: Vec<(String, i128)>,
    pub conversions: u64,
}

/// Retention (docs/metrics.md §5).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Retention {
    pub previous_customers: u64,
    pub retained: u64,
    pub rate: Option<f64>,
}

/// Every KPI of docs/metrics.md §5 for one group.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Kpis {
    pub conversations: u64,
    pub messages_received: u64,
    pub messages_sent: u64,
    pub messages_delivered: u64,
    pub messages_read: u64,
    pub messages_failed: u64,
    pub delivery_rate: Option<f64>,
    pub read_rate: Option<f64>,
    pub first_response: DurationStats,
    /// First responses given by a bot (target: bot FRT).
    pub bot_first_response: DurationStats,
    pub human_first_response: DurationStats,
    pub reply: DurationStats,
    pub wait: DurationStats,
    pub resolution: DurationStats,
    pub duration: DurationStats,
    pub resolved: u64,
    pub resolutions: u64,
    pub fcr_rate: Option<f64>,
    pub repeat_contact_rate: Option<f64>,
    pub reopen_rate: Option<f64>,
    pub missed: u64,
    pub missed_rate: Option<f64>,
    pub abandoned: u64,
    pub ended: u64,
    pub messages_per_chat: Option<f64>,
    pub customer_messages_per_chat: Option<f64>,
    pub agent_messages_per_chat: Option<f64>,
    pub bot_messages_per_chat: Option<f64>,
    pub csat: Csat,
    pub nps: Nps,
    pub ces: Ces,
    pub automation_rate: Option<f64>,
    pub bot_resolutions: u64,
    pub bot_handoff_rate: Option<f64>,
    pub conversion: ConversionKpis,
    pub retention: Retention,
    /// (tag, conversations, share %), by conversations descending then tag; at most
    /// [`MAX_TAG_SHARES`] of them.
    pub tags: Vec<(String, u64, Option<f64>)>,
    /// Distinct tags of the group's conversations not listed in `tags` (beyond the first
    /// [`MAX_TAG_SHARES`]).
    pub tags_omitted: u64,
    /// (channel, conversations, share %), in channel order, channels with conversations only.
    pub channels: Vec<(Channel, u64, Option<f64>)>,
    /// Service levels (docs/metrics.md §10).
    pub sla: SlaKpis,
}

/// SLA figures of a group: per metric and over all three (docs/metrics.md §10).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SlaKpis {
    pub first_response: SlaStats,
    pub next_response: SlaStats,
    pub resolution: SlaStats,
    pub overall: SlaStats,
}

/// Clocks that stopped in the window: achieved, breached, breach rate and the time over target
/// of the breached ones (seconds, calendar or business as each target counts).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SlaStats {
    pub achieved: u64,
    pub breached: u64,
    /// breached / (achieved + breached), %.
    pub breach_rate: Option<f64>,
    pub over_target: DurationStats,
}

/// Keeps at most `limit` of `rows`: those ranked first by `rank` (ties by their position), in
/// their original order; returns how many were left out (docs/metrics.md §6: an answer lists at
/// most [`MAX_ROWS`] values of a dimension).
pub fn keep_ranked<T>(rows: &mut Vec<T>, limit: usize, rank: impl Fn(&T, &T) -> std::cmp::Ordering) -> u64 {
    if rows.len() <= limit {
        return 0;
    }
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|a, b| rank(&rows[*a], &rows[*b]).then(a.cmp(b)));
    let mut keep = vec![false; rows.len()];
    for i in &order[..limit] {
        keep[*i] = true;
    }
    let omitted = (rows.len() - limit) as u64;
    let mut i = 0;
    rows.retain(|_| {
        i += 1;
        keep[i - 1]
    });
    omitted
}

#[cfg(test)]
mod tests {
    use super::keep_ranked;

    #[test]
    fn the_highest_ranked_rows_stay_in_their_order() {
        let mut rows = vec![("a", 1), ("b", 5), ("c", 3), ("d", 5), ("e", 0)];
        let omitted = keep_ranked(&mut rows, 3, |x, y| y.1.cmp(&x.1));
        assert_eq!(omitted, 2);
        assert_eq!(rows, vec![("b", 5), ("c", 3), ("d", 5)]);
        let mut few = vec![1, 2];
        assert_eq!(keep_ranked(&mut few, 3, |x, y| x.cmp(y)), 0);
        assert_eq!(few, vec![1, 2]);
    }
}
