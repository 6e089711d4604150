//! Scorecards (docs/metrics.md §8): each targeted KPI, its target and whether it is met.

use super::{
    kpi::{Kpis, Targets, live::AgentUtilization},
    stats::DurationStats,
};

/// One KPI against its target.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub kpi: &'static str,
    /// Share within target (%) for duration KPIs, the rate for rate KPIs.
    pub value: Option<f64>,
    pub target: String,
    pub mean_seconds: Option<f64>,
    pub met: Option<bool>,
}

fn duration_line(kpi: &'static str, stats: &DurationStats, limit: f64, t: &Targets) -> Line {
    Line {
        kpi,
        value: stats.within_target,
        target: format!("<= {limit} s for {}% of items", t.duration_compliance_percent),
        mean_seconds: stats.mean,
        met: stats
            .within_target
            .map(|share| share >= t.duration_compliance_percent),
    }
}

fn at_least(kpi: &'static str, value: Option<f64>, goal: f64) -> Line {
    Line {
        kpi,
        value,
        target: format!(">= {goal} %"),
        mean_seconds: None,
        met: value.map(|v| v >= goal),
    }
}

/// The scorecard lines of one scope. `utilization` is absent for scopes without presence
/// (teams): its line then has no value.
pub fn lines(k: &Kpis, utilization: Option<&AgentUtilization>, t: &Targets) -> Vec<Line> {
    let util = utilization.and_then(|u| u.utilization);
    vec![
        duration_line("human_frt", &k.human_first_response, t.human_frt_seconds, t),
        duration_line("bot_frt", &k.bot_first_response, t.bot_frt_seconds, t),
        duration_line("resolution_time", &k.resolution, t.resolution_seconds, t),
        at_least("csat", k.csat.satisfied_percent, t.csat_percent),
        at_least("fcr", k.fcr_rate, t.fcr_percent),
        Line {
            kpi: "utilization",
            value: util,
            target: format!("{}-{} %", t.utilization_min_percent, t.utilization_max_percent),
            mean_seconds: None,
            met: util.map(|u| u >= t.utilization_min_percent && u <= t.utilization_max_percent),
        },
    ]
}
