//! SLA clocks judged against the tenant's policies (docs/metrics.md §10), on the segments' rows:
//! the policies resolved to the tenant's symbols once per computation, the policy that governs a
//! clock, and the time a clock ran as its target counts it.

use crate::domain::{
    calendar::Schedule,
    facts::SlaMetric,
    sla::{Policy, Target, Verdict, verdict},
    time::Span,
};
use crate::engine::{
    intern::{Interner, NONE},
    segment::{Attr, Clock, Conv, Sym},
};

/// One policy with its conditions as tenant symbols. `None` = any value; an empty list (only
/// names the tenant never used) matches nothing.
struct Compiled {
    channels: u16,
    priorities: u8,
    inboxes: Option<Vec<Sym>>,
    teams: Option<Vec<Sym>>,
    tags: Option<Vec<Sym>>,
    targets: [Option<Target>; 3],
}

/// The tenant's policies, in order, ready for rows.
pub(super) struct Policies {
    compiled: Vec<Compiled>,
}

fn syms(symbols: &Interner, names: &[String]) -> Option<Vec<Sym>> {
    (!names.is_empty()).then(|| {
        let mut s: Vec<Sym> = names
            .iter()
            .filter_map(|n| symbols.get(n))
            .filter(|s| *s != NONE)
            .collect();
        s.sort_unstable();
        s
    })
}

impl Policies {
    pub fn new(symbols: &Interner, policies: &[Policy]) -> Self {
        let compiled = policies
            .iter()
            .map(|p| {
                let c = &p.conditions;
                Compiled {
                    channels: c.channels.iter().fold(0, |m, ch| m | 1 << (*ch as u16)),
                    priorities: c.priorities.iter().fold(0, |m, p| m | 1 << (*p as u8)),
                    inboxes: syms(symbols, &c.inboxes),
                    teams: syms(symbols, &c.teams),
                    tags: syms(symbols, &c.tags),
                    targets: p.targets,
                }
            })
            .collect();
        Self { compiled }
    }

    pub fn is_empty(&self) -> bool {
        self.compiled.is_empty()
    }

    /// The governing policy of `clock` (its place in the list) and its target: the first
    /// policy whose conditions match the conversation's attributes when the clock started,
    /// when that policy sets a target for the clock's metric.
    pub fn governing(&self, c: &Conv, clock: &Clock) -> Option<(u32, Target)> {
        let attrs = c.attributes_at(clock.start)?;
        let (i, p) = self
            .compiled
            .iter()
            .enumerate()
            .find(|(_, p)| p.matches(c, attrs))?;
        p.targets[clock.metric as usize].map(|t| (i as u32, t))
    }
}

impl Compiled {
    fn matches(&self, c: &Conv, a: &Attr) -> bool {
        let any_of = |list: &Option<Vec<Sym>>, value: Sym| {
            list.as_ref().is_none_or(|l| l.binary_search(&value).is_ok())
        };
        (self.channels == 0 || self.channels & (1 << (c.channel as u16)) != 0)
            && (self.priorities == 0 || self.priorities & (1 << (a.priority as u8)) != 0)
            && any_of(&self.inboxes, c.inbox)
            && any_of(&self.teams, a.team)
            && self
                .tags
                .as_ref()
                .is_none_or(|l| c.attr_tags(a).iter().any(|t| l.binary_search(t).is_ok()))
    }
}

/// How long `clock` ran until `until`, in calendar seconds or in `schedule`'s open seconds as
/// `target` counts; a resolution clock without its waits on the customer (docs/metrics.md §10).
pub(super) fn elapsed(
    c: &Conv,
    clock: &Clock,
    until: i64,
    target: Target,
    schedule: Option<&Schedule>,
) -> f64 {
    let span = Span {
        start: clock.start,
        end: until.max(clock.start),
    };
    let measure = |s: Span| match (target.business_hours, schedule) {
        (true, Some(schedule)) => schedule.open_seconds(s),
        _ => s.seconds().max(0.0),
    };
    let mut seconds = measure(span);
    if clock.metric == SlaMetric::Resolution {
        for w in &c.waits {
            let inside = Span {
                start: w.start.max(span.start),
                end: w.end.min(span.end),
            };
            if inside.start < inside.end {
                seconds -= measure(inside);
            }
        }
    }
    seconds.max(0.0)
}

/// The verdict on a stopped clock and its seconds over target.
pub(super) fn judge(elapsed: f64, target: Target, completed: bool) -> (Verdict, f64) {
    (
        verdict(elapsed, target, completed),
        elapsed - f64::from(target.seconds),
    )
}
