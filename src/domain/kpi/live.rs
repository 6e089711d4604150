//! What the instant and interval KPIs answer (docs/metrics.md §5, §6, §10): backlog and live
//! counts, agent utilization, SLA clocks running at an instant, and the drill-down rows.

use crate::domain::{facts::SlaMetric, stats::DurationStats, time::Micros};

/// Backlog and live counts at an instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Backlog {
    pub open: u64,
    pub unassigned: u64,
    pub unanswered: u64,
    pub age: DurationStats,
}

/// One agent's utilization.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentUtilization {
    pub agent: String,
    pub logged_in_seconds: f64,
    pub handling_seconds: f64,
    pub utilization: Option<f64>,
}

/// Which conversations a drill-down lists (docs/metrics.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrillDown {
    Opened,
    Resolved,
    Ended,
    Missed,
    Abandoned,
    /// Open at the end of the window.
    Backlog,
    /// Resolved in the window but reopened or followed by a repeat contact.
    NotFcr,
    /// With an SLA clock breached in the window (docs/metrics.md §10).
    SlaBreached,
}

/// An SLA clock of a drill-down row that breached in the window.
#[derive(Debug, Clone, PartialEq)]
pub struct SlaBreach {
    pub metric: SlaMetric,
    pub policy: String,
    pub target_seconds: u32,
    /// How long it ran (calendar or business seconds, as the target counts).
    pub actual_seconds: f64,
    /// When it stopped.
    pub at: chrono::DateTime<chrono::Utc>,
}

/// SLA clocks running at an instant (docs/metrics.md §10).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlaStatus {
    /// Per metric (first response, next response, resolution): running, and of them past their
    /// target.
    pub active: [u64; 3],
    pub active_breached: [u64; 3],
    /// The clocks that breach soonest (or breached longest ago), by time left.
    pub at_risk: Vec<AtRisk>,
}

/// A running SLA clock and its time left.
#[derive(Debug, Clone, PartialEq)]
pub struct AtRisk {
    pub segment: usize,
    pub row: usize,
    pub metric: SlaMetric,
    pub policy: String,
    pub target_seconds: u32,
    pub started_at: Micros,
    /// Seconds it has run (as its target counts).
    pub elapsed_seconds: f64,
    /// Target minus elapsed: negative once breached.
    pub time_left_seconds: f64,
    /// The conversation's assignee at the instant.
    pub assignee: String,
}

/// One conversation of a drill-down, its durations measured as the query asks.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationRow {
    pub conversation_id: String,
    pub customer_id: String,
    pub channel: &'static str,
    pub inbox: String,
    pub team: String,
    pub priority: &'static str,
    pub agent: String,
    pub assignee: String,
    /// Sorted.
    pub tags: Vec<String>,
    pub state: &'static str,
    pub opened_at: chrono::DateTime<chrono::Utc>,
    pub resolved_at: Option<chrono::DateTime<chrono::Utc>>,
    pub ended_at: Option<chrono::DateTime<chrono::Utc>>,
    pub first_response_seconds: Option<f64>,
    /// Agent id; empty for a bot.
    pub first_responder: String,
    pub human_first_response_seconds: Option<f64>,
    pub wait_seconds: Option<f64>,
    pub resolution_seconds: Option<f64>,
    pub duration_seconds: Option<f64>,
    pub reopen_count: u32,
    pub customer_messages: u32,
    pub agent_messages: u32,
    pub bot_messages: u32,
    pub csat_score: Option<i32>,
    pub nps_score: Option<i32>,
    pub ces_score: Option<i32>,
    pub reply_seconds: Vec<f64>,
    /// SLA clocks that breached in the window.
    pub sla_breaches: Vec<SlaBreach>,
}
