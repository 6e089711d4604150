//! Routing: the groups an item goes to (docs/metrics.md §6) - its value of the breakdown dimension,
//! or the local calendar bucket of its placing time.

use chrono_tz::Tz;

use super::{Dimension, GroupKey, Grouping};
use crate::domain::{
    calendar::{self, Granularity},
    time::Micros,
};
use crate::engine::segment::{Conv, Sym};

/// Routes items of one computation to their groups.
pub(super) struct Router {
    grouping: Grouping,
    /// Local calendar slots (start, local hour of day, local ISO weekday), sorted by start,
    /// computed once so items are placed by a binary search instead of a time-zone conversion.
    slots: Vec<(Micros, u32, u32)>,
}

impl Router {
    /// A router for items placed in `[from, to)` (time groupings need slots covering it).
    pub fn new(grouping: Grouping, tz: Tz, from: Micros, to: Micros) -> Self {
        let granularity = match grouping {
            Grouping::Series(g) => g,
            Grouping::By(Dimension::HourOfDay | Dimension::DayOfWeek) => Granularity::Hour,
            _ => {
                return Self {
                    grouping,
                    slots: Vec::new(),
                };
            }
        };
        let slots = calendar::buckets(tz, granularity, from, to)
            .into_iter()
            .map(|b| {
                (
                    b.start,
                    calendar::hour_of_day(tz, b.start),
                    calendar::day_of_week(tz, b.start),
                )
            })
            .collect();
        Self { grouping, slots }
    }

    /// The slot containing `at` (callers place only items inside the covered range).
    fn slot(&self, at: Micros) -> (Micros, u32, u32) {
        let i = self.slots.partition_point(|(start, _, _)| *start <= at);
        self.slots[i.saturating_sub(1)]
    }

    /// Whether an item's group depends on its time alone (not on the conversation).
    pub fn by_time_only(&self) -> bool {
        matches!(
            self.grouping,
            Grouping::All | Grouping::Series(_) | Grouping::By(Dimension::HourOfDay | Dimension::DayOfWeek)
        )
    }

    /// Whether every time in `[a, b]` goes to the same group: then a conversation's items can be
    /// counted at once instead of one by one.
    pub fn same_group(&self, a: Micros, b: Micros) -> bool {
        match self.grouping {
            Grouping::All => true,
            Grouping::By(Dimension::HourOfDay | Dimension::DayOfWeek) | Grouping::Series(_) => {
                self.slot(a).0 == self.slot(b).0
            }
            Grouping::By(_) => true,
        }
    }

    /// Sets `out` to the groups of an item of conversation `c` placed at `at`; `agent` is the
    /// item's agent for the agent dimension (responding agent, survey credit, or the
    /// conversation's agent).
    pub fn route(&self, c: &Conv, at: Micros, agent: Sym, out: &mut Vec<GroupKey>) {
        out.clear();
        match self.grouping {
            Grouping::All => out.push(GroupKey::All),
            Grouping::Series(_) => out.push(GroupKey::Bucket(self.slot(at).0)),
            Grouping::By(d) => match d {
                Dimension::Channel => out.push(GroupKey::Channel(c.channel)),
                Dimension::Inbox => out.push(GroupKey::Value(c.inbox)),
                Dimension::Team => out.push(GroupKey::Value(c.team)),
                Dimension::Agent => out.push(GroupKey::Value(agent)),
                Dimension::Tag if c.tags.is_empty() => out.push(GroupKey::Value(0)),
                Dimension::Tag => out.extend(c.tags.iter().map(|t| GroupKey::Value(*t))),
                Dimension::Priority => out.push(GroupKey::Priority(c.priority)),
                Dimension::HourOfDay => out.push(GroupKey::Number(self.slot(at).1)),
                Dimension::DayOfWeek => out.push(GroupKey::Number(self.slot(at).2)),
                // Only SLA clocks have a policy ([`Router::route_clock`]).
                Dimension::SlaPolicy => {}
            },
        }
    }

    /// [`Router::route`] for an SLA clock governed by policy `policy`.
    pub fn route_clock(&self, c: &Conv, at: Micros, agent: Sym, policy: u32, out: &mut Vec<GroupKey>) {
        if self.grouping == Grouping::By(Dimension::SlaPolicy) {
            out.clear();
            out.push(GroupKey::Policy(policy));
        } else {
            self.route(c, at, agent, out);
        }
    }
}
