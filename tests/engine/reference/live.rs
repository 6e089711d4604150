//! Instant and interval KPIs beside the window summaries: backlog and live counts at an instant,
//! agent utilization over a window (docs/metrics.md §5), and drill-down selection (§6).

use std::collections::BTreeMap;

use chatkpi::domain::{
    calendar::Schedule,
    event::Presence,
    facts::{SlaMetric, State},
    query::Query,
    sla::Policy,
};
use chatkpi::engine::kpi::live::{AgentUtilization, Backlog, DrillDown};

use super::{
    dataset::{Conv, Dataset, Micros, NONE, OPEN_END, Span, Sym, micros},
    kpis::Compiled,
    sla,
    stats::{rate, summary},
};

/// Conversations opened at or before `at` and not ended as of it; a reopen counts from its
/// time. Age is `at - opened_at`, in business hours when asked.
pub fn backlog(ds: &Dataset, q: &Query, schedule: Option<&Schedule>, at: Micros) -> Backlog {
    let mut out = Backlog::default();
    let mut ages = Vec::new();
    for c in backlog_conversations(ds, q, at) {
        out.open += 1;
        if c.assignee_at(at) == NONE {
            out.unassigned += 1;
        }
        if c.waiting_at(at) {
            out.unanswered += 1;
        }
        let span = Span {
            start: c.opened_at,
            end: at,
        };
        ages.push(match (q.business_hours, schedule) {
            (true, Some(s)) => s.open_seconds(span),
            _ => span.seconds(),
        });
    }
    out.age = summary(ages, None);
    out
}

/// The conversations in the backlog at `at`.
pub fn backlog_conversations<'a>(
    ds: &'a Dataset,
    q: &Query,
    at: Micros,
) -> impl Iterator<Item = &'a Conv> + 'a {
    let filters = Compiled::new(ds, &q.filters);
    ds.conversations
        .iter()
        .filter(move |c| c.opened_at <= at && c.state_at(at) == State::Open && filters.conversation(c))
}

/// How long, within `window`, some span of `a` holds and (when `b` is given) some span of `b`
/// too. A sweep over span starts (+1) and ends (-1) counting how many spans of each list hold:
/// derived here on its own, not the engine's sort / merge / clip / overlap walk.
fn covered(window: Span, a: &[Span], b: Option<&[Span]>) -> i64 {
    let mut edges: Vec<(Micros, usize, i64)> = Vec::new();
    for (list, spans) in [(0, a), (1, b.unwrap_or(&[]))] {
        for s in spans.iter().filter(|s| s.end > s.start) {
            edges.push((s.start, list, 1));
            edges.push((s.end, list, -1));
        }
    }
    edges.sort_unstable();
    let (mut holding, mut last, mut sum) = ([0i64; 2], window.start, 0);
    for (at, list, change) in edges {
        let at = at.clamp(window.start, window.end);
        if holding[0] > 0 && (b.is_none() || holding[1] > 0) {
            sum += at - last;
        }
        last = at;
        holding[list] += change;
    }
    sum
}

/// docs/metrics.md §5 utilization: per agent, logged-in time (online, busy or away) and the part of
/// it during which the agent was the assignee of at least one open conversation, in the window.
/// The agent filter picks agents; the other filters pick which conversations count as handling.
/// Returns the agents (by id) and the team figure (sums).
pub fn utilization(ds: &Dataset, q: &Query) -> (Vec<AgentUtilization>, AgentUtilization) {
    let window = Span {
        start: micros(q.window.from),
        end: micros(q.window.to),
    };
    let filters = Compiled::new(ds, &q.filters);

    // Logged-in intervals, agent by agent: each agent's presence changes in timeline order; an
    // interval opens at the first change to online / busy / away and closes at the next
    // offline (or never, OPEN_END).
    let mut timelines: BTreeMap<Sym, Vec<(Micros, bool)>> = BTreeMap::new();
    for (_, p) in &ds.presence {
        timelines
            .entry(p.agent)
            .or_default()
            .push((p.at, p.status != Presence::Offline));
    }
    let mut logged: BTreeMap<Sym, Vec<Span>> = BTreeMap::new();
    for (agent, changes) in timelines {
        let mut spans = Vec::new();
        let mut since: Option<Micros> = None;
        for (at, online) in changes {
            match (since, online) {
                (None, true) => since = Some(at),
                (Some(start), false) => {
                    spans.push(Span { start, end: at });
                    since = None;
                }
                _ => {}
            }
        }
        if let Some(start) = since {
            spans.push(Span { start, end: OPEN_END });
        }
        if !spans.is_empty() {
            logged.insert(agent, spans);
        }
    }

    // Handling intervals of matching conversations (agent filter excluded: it picks agents).
    let mut handling: BTreeMap<Sym, Vec<Span>> = BTreeMap::new();
    for c in ds
        .conversations
        .iter()
        .filter(|c| filters.conversation_except_agent(c))
    {
        for (agent, span) in c.handling.iter() {
            if span.end > window.start && span.start < window.end {
                handling.entry(*agent).or_default().push(*span);
            }
        }
    }

    let mut agents: Vec<Sym> = logged
        .keys()
        .chain(handling.keys())
        .copied()
        .filter(|a| filters.agent(*a))
        .collect();
    agents.sort_unstable();
    agents.dedup();
    let mut rows = Vec::new();
    let (mut sum_logged, mut sum_handling) = (0i64, 0i64);
    for agent in agents {
        let logged_in = logged.remove(&agent).unwrap_or_default();
        let handled = handling.remove(&agent).unwrap_or_default();
        let (l, h) = (
            covered(window, &logged_in, None),
            covered(window, &logged_in, Some(&handled)),
        );
        let handled_in_window = handled
            .iter()
            .any(|s| s.end.min(window.end) > s.start.max(window.start));
        if l == 0 && h == 0 && !handled_in_window {
            continue;
        }
        sum_logged += l;
        sum_handling += h;
        rows.push(AgentUtilization {
            agent: ds.symbols.name(agent).to_owned(),
            logged_in_seconds: l as f64 / 1e6,
            handling_seconds: h as f64 / 1e6,
            utilization: (l > 0).then(|| 100.0 * h as f64 / l as f64),
        });
    }
    rows.sort_by(|a, b| a.agent.cmp(&b.agent));
    let team = AgentUtilization {
        agent: String::new(),
        logged_in_seconds: sum_logged as f64 / 1e6,
        handling_seconds: sum_handling as f64 / 1e6,
        utilization: rate(sum_handling as u64, sum_logged as u64),
    };
    (rows, team)
}

/// The conversations behind a conversation-level KPI, by opened_at then id. Conversation filters
/// apply (agent = the conversation's agent).
pub fn drill_down<'a>(
    ds: &'a Dataset,
    q: &Query,
    schedule: Option<&Schedule>,
    policies: &[Policy],
    kind: DrillDown,
) -> Vec<&'a Conv> {
    if kind == DrillDown::SlaBreached {
        return sla_breached(ds, q, schedule, policies);
    }
    let filters = Compiled::new(ds, &q.filters);
    let (from, to) = (micros(q.window.from), micros(q.window.to));
    let inside = |t: Option<Micros>| t.is_some_and(|t| from <= t && t < to);
    let repeat_window = q.repeat_window.num_microseconds().unwrap_or(i64::MAX);
    let mut out: Vec<&Conv> = ds
        .conversations
        .iter()
        .filter(|c| filters.conversation(c))
        .filter(|c| match kind {
            DrillDown::Opened => inside(Some(c.opened_at)),
            DrillDown::Resolved => inside(c.resolved_at),
            DrillDown::Ended => inside(c.ended_at),
            DrillDown::Missed => {
                inside(Some(c.opened_at))
                    && c.has_customer_message
                    && c.ended_at.is_some()
                    && c.responses.is_empty()
            }
            DrillDown::Abandoned => inside(Some(c.opened_at)) && c.state == State::Abandoned,
            DrillDown::Backlog => c.opened_at <= to && c.state_at(to) == State::Open,
            DrillDown::NotFcr => c.resolved_at.is_some_and(|r| {
                inside(Some(r)) && (c.reopen_count > 0 || Dataset::repeat_contact(c, repeat_window))
            }),
            DrillDown::SlaBreached => unreachable!("selected by sla_breached above"),
        })
        .collect();
    out.sort_by(|a, b| (a.opened_at, &a.id).cmp(&(b.opened_at, &b.id)));
    out
}

/// A running SLA clock at an instant: (conversation, metric, policy index, time left).
pub type Running = (String, SlaMetric, u32, f64);

/// SLA clocks running at `at` in the open conversations matching the filters (the agent filter
/// by the assignee at `at`): active and active breached per metric, and every running clock by
/// time left, then conversation id, then metric (docs/metrics.md §10).
pub fn sla_status(
    ds: &Dataset,
    q: &Query,
    schedule: Option<&Schedule>,
    policies: &[Policy],
    at: Micros,
) -> ([u64; 3], [u64; 3], Vec<Running>) {
    let filters = Compiled::new(ds, &q.filters);
    let (mut active, mut breached, mut running) = ([0; 3], [0; 3], Vec::new());
    for c in ds.conversations.iter().filter(|c| {
        c.opened_at <= at
            && c.state_at(at) == State::Open
            && filters.conversation_except_agent(c)
            && filters.agent(c.assignee_at(at))
    }) {
        for clock in sla::clocks(c) {
            if clock.start > at || clock.stop.is_some_and(|(t, _, _)| t <= at) {
                continue;
            }
            let Some((policy, target)) = sla::governing(ds, policies, c, &clock) else {
                continue;
            };
            let left = f64::from(target.seconds) - sla::elapsed(c, &clock, at, target, schedule);
            active[clock.metric as usize] += 1;
            breached[clock.metric as usize] += u64::from(left < 0.0);
            running.push((c.id.to_string(), clock.metric, policy, left));
        }
    }
    running.sort_by(|a, b| {
        a.3.total_cmp(&b.3)
            .then_with(|| a.0.cmp(&b.0))
            .then(a.1.cmp(&b.1))
    });
    (active, breached, running)
}

/// Conversations (matching the filters, by opened_at then id) with an SLA clock that stopped in
/// the window breached.
pub fn sla_breached<'a>(
    ds: &'a Dataset,
    q: &Query,
    schedule: Option<&Schedule>,
    policies: &[Policy],
) -> Vec<&'a Conv> {
    let filters = Compiled::new(ds, &q.filters);
    let (from, to) = (micros(q.window.from), micros(q.window.to));
    let mut out: Vec<&Conv> = ds
        .conversations
        .iter()
        .filter(|c| filters.conversation(c))
        .filter(|c| {
            sla::clocks(c).iter().any(|clock| {
                let Some((at, completed, _)) = clock.stop.filter(|s| from <= s.0 && s.0 < to) else {
                    return false;
                };
                sla::governing(ds, policies, c, clock).is_some_and(|(_, target)| {
                    let seconds = sla::elapsed(c, clock, at, target, schedule);
                    matches!(sla::judged(seconds, target, completed), Ok(Some(_)))
                })
            })
        })
        .collect();
    out.sort_by(|a, b| (a.opened_at, &a.id).cmp(&(b.opened_at, &b.id)));
    out
}
