//! Reference SLA clocks and verdicts (docs/metrics.md §10), derived straight from a conversation's
//! messages and state changes rather than from the clocks the facts carry, and judged against
//! policies matched by name.

use chatkpi::domain::{
    calendar::Schedule,
    event::Sender,
    facts::{SlaMetric, State},
    sla::{Policy, Target},
};

use super::dataset::{Conv, Dataset, Micros, NONE, OPEN_END, Span, Sym};

/// One clock: its start and, once stopped, (when, completed, completing agent).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clock {
    pub metric: SlaMetric,
    pub start: Micros,
    pub stop: Option<(Micros, bool, Sym)>,
}

/// A step of the conversation that SLA clocks follow, in time order; at one instant messages
/// come before state changes (the event precedence of docs/metrics.md §2).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Customer,
    Human(Sym),
    /// The state becomes this.
    State(State),
}

fn steps(c: &Conv) -> Vec<(Micros, Step)> {
    let mut steps: Vec<(Micros, u8, Step)> = Vec::new();
    for m in c.messages.iter() {
        match m.sender {
            Sender::Customer => steps.push((m.at, 0, Step::Customer)),
            Sender::Agent => steps.push((m.at, 1, Step::Human(m.agent))),
            Sender::Bot | Sender::System => {}
        }
    }
    for (at, s) in c.state_changes.iter() {
        steps.push((*at, 2, Step::State(*s)));
    }
    // Stable: messages of one instant keep their order.
    steps.sort_by_key(|(at, rank, _)| (*at, *rank));
    steps.into_iter().map(|(at, _, s)| (at, s)).collect()
}

/// The clocks of `c` (docs/metrics.md §10).
pub fn clocks(c: &Conv) -> Vec<Clock> {
    let steps = steps(c);
    let ends = |s: &Step| matches!(s, Step::State(State::Resolved | State::Abandoned));
    let mut out = Vec::new();
    // First response: from the human queue start to the first human message or end at or
    // after it, whichever comes first.
    let mut first_stop = None;
    if let Some(queue_start) = c.human_queue_start {
        first_stop = steps
            .iter()
            .position(|(at, s)| *at >= queue_start && (matches!(s, Step::Human(_)) || ends(s)));
        out.push(Clock {
            metric: SlaMetric::FirstResponse,
            start: queue_start,
            stop: first_stop.map(|i| match steps[i] {
                (at, Step::Human(agent)) => (at, true, agent),
                (at, _) => (at, false, NONE),
            }),
        });
    }
    // Next responses: once the first-response clock stopped, a customer message into an open
    // conversation with none waiting starts one; a human message completes it; an end closes it.
    if let Some(first) = first_stop {
        let mut state = State::Open;
        for (_, s) in &steps[..first] {
            if let Step::State(next) = s {
                state = *next;
            }
        }
        let mut running: Option<Micros> = None;
        for (at, s) in &steps[first + 1..] {
            match s {
                Step::Customer if state == State::Open && running.is_none() => running = Some(*at),
                Step::Customer => {}
                Step::Human(agent) => {
                    if let Some(start) = running.take() {
                        out.push(Clock {
                            metric: SlaMetric::NextResponse,
                            start,
                            stop: Some((*at, true, *agent)),
                        });
                    }
                }
                Step::State(next) => {
                    state = *next;
                    if *next != State::Open
                        && let Some(start) = running.take()
                    {
                        out.push(Clock {
                            metric: SlaMetric::NextResponse,
                            start,
                            stop: Some((*at, false, NONE)),
                        });
                    }
                }
            }
        }
        if let Some(start) = running {
            out.push(Clock {
                metric: SlaMetric::NextResponse,
                start,
                stop: None,
            });
        }
    }
    // Resolution: opened to the final resolution; an abandonment closes it.
    let stop = match c.state {
        State::Resolved => c.resolved_at.map(|at| {
            let agent = if c.resolving_agent != NONE {
                c.resolving_agent
            } else {
                c.agent
            };
            (at, true, agent)
        }),
        State::Abandoned => c.ended_at.map(|at| (at, false, NONE)),
        State::Open => None,
    };
    out.push(Clock {
        metric: SlaMetric::Resolution,
        start: c.opened_at,
        stop,
    });
    out
}

/// The policy governing `clock` (its index) and its target: the first whose conditions match
/// the conversation's channel and inbox and its priority, team and tags when the clock started.
pub fn governing(ds: &Dataset, policies: &[Policy], c: &Conv, clock: &Clock) -> Option<(u32, Target)> {
    let a = c
        .attributes
        .iter()
        .rev()
        .find(|a| a.from <= clock.start)
        .or(c.attributes.first())?;
    let name = |s: Sym| ds.symbols.name(s);
    let (i, p) = policies.iter().enumerate().find(|(_, p)| {
        let k = &p.conditions;
        (k.channels.is_empty() || k.channels.contains(&c.channel))
            && (k.inboxes.is_empty() || c.inbox != NONE && k.inboxes.iter().any(|n| n == name(c.inbox)))
            && (k.teams.is_empty() || a.team != NONE && k.teams.iter().any(|n| n == name(a.team)))
            && (k.priorities.is_empty() || k.priorities.contains(&a.priority))
            && (k.tags.is_empty() || a.tags.iter().any(|t| k.tags.iter().any(|n| n == name(*t))))
    })?;
    p.target(clock.metric).map(|t| (i as u32, t))
}

/// Seconds `clock` ran until `until` as `target` counts them; waits on the customer do not count
/// for the resolution clock.
pub fn elapsed(c: &Conv, clock: &Clock, until: Micros, target: Target, schedule: Option<&Schedule>) -> f64 {
    let measure = |start: Micros, end: Micros| -> f64 {
        if end <= start {
            return 0.0;
        }
        let span = Span { start, end };
        match (target.business_hours, schedule) {
            (true, Some(s)) => s.open_seconds(span),
            _ => span.seconds(),
        }
    };
    let end = until.max(clock.start);
    let mut seconds = measure(clock.start, end);
    if clock.metric == SlaMetric::Resolution {
        for w in c.waits.iter() {
            let w_end = if w.end == OPEN_END { end } else { w.end };
            seconds -= measure(w.start.max(clock.start), w_end.min(end));
        }
    }
    seconds.max(0.0)
}

/// A stopped clock: `Some(over)` when breached (seconds over target), `None` when achieved;
/// `Err` when closed within its target (not counted).
pub fn judged(seconds: f64, target: Target, completed: bool) -> Result<Option<f64>, ()> {
    let over = seconds - f64::from(target.seconds);
    if over > 0.0 {
        Ok(Some(over))
    } else if completed {
        Ok(None)
    } else {
        Err(())
    }
}
