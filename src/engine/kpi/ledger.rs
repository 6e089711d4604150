//! The repeat-contact verdicts kept totals counted (docs/metrics.md §5 FCR and repeat contact
//! rate), resolution by resolution, so that totals a returning customer made stale are
//! corrected for that customer's few resolutions instead of being computed again from rows.
//!
//! A resolution's verdict reads only the openings of its customer in `(resolved_at,
//! resolved_at + repeat window]`. When a customer opens a conversation, every kept total that
//! counted one of that customer's resolutions in the week before is stale ([`super::partial`]),
//! though all it may have to change is two counters (`repeat`, `fcr`) of the groups that
//! resolution was counted in. A [`Ledger`] lists, for each such resolution, the customer, the
//! time, what else the verdict depends on (the conversation's own opening inside the range, a
//! reopen) and the groups it was counted in; [`Ledger::rejudge`] judges the changed customers'
//! resolutions again against the current openings and moves each changed verdict between the
//! counters. Judging again from the current openings (not applying the logged changes as
//! differences) gives what a computation from scratch gives, however the openings changed.

use std::{collections::HashMap, sync::Arc};

use super::GroupKey;
use crate::domain::time::Micros;

/// The verdicts of one chunk's resolutions, sorted by customer.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    entries: Vec<Judged>,
    /// The groups of each entry (`Judged::combo` indexes here): few distinct lists (one key for
    /// an overview, the agent's for a breakdown by agent, a day for a daily series).
    combos: Vec<Box<[GroupKey]>>,
}

/// One resolution counted by kept totals.
#[derive(Debug, Clone, Copy)]
struct Judged {
    customer: u32,
    /// Index into [`Ledger::combos`] (below [`COMBO`]) and the flags above it.
    combo: u32,
    resolved_at: Micros,
}

/// Counted as a repeat contact.
const REPEAT: u32 = 1 << 31;
/// The conversation's own opening lies inside its repeat range (docs/metrics.md §5: a
/// conversation is never its own repeat contact).
const OWN: u32 = 1 << 30;
/// Reopened: never first-contact resolved, whatever the verdict.
const REOPENED: u32 = 1 << 29;
const COMBO: u32 = REOPENED - 1;

/// What a scan judged, as it judges it.
#[derive(Debug, Default)]
pub(super) struct Builder {
    entries: Vec<Judged>,
    combos: Vec<Box<[GroupKey]>>,
    index: HashMap<Box<[GroupKey]>, u32>,
}

/// A verdict judged again, in one group it was counted in: it moves between the group's
/// `repeat` and `fcr` counters.
#[derive(Debug, Clone, Copy)]
pub(super) struct Moved {
    pub key: GroupKey,
    pub reopened: bool,
    /// The new verdict.
    pub repeat: bool,
}

/// One verdict as the scan counted it.
pub(super) struct Verdict {
    pub customer: u32,
    pub resolved_at: Micros,
    pub own_inside: bool,
    pub reopened: bool,
    pub repeat: bool,
}

impl Builder {
    /// Notes a verdict counted in the groups `keys` (none: filtered out, nothing to correct).
    pub fn note(&mut self, v: Verdict, keys: &[GroupKey]) {
        if keys.is_empty() {
            return;
        }
        let combo = match self.index.get(keys) {
            Some(i) => *i,
            None => {
                let i = self.combos.len() as u32;
                self.combos.push(keys.into());
                self.index.insert(keys.into(), i);
                i
            }
        };
        debug_assert!(combo <= COMBO, "a chunk holds far fewer rows");
        let flag = |on: bool, bit: u32| if on { bit } else { 0 };
        self.entries.push(Judged {
            customer: v.customer,
            combo: combo | flag(v.repeat, REPEAT) | flag(v.own_inside, OWN) | flag(v.reopened, REOPENED),
            resolved_at: v.resolved_at,
        });
    }

    pub fn finish(self) -> Arc<Ledger> {
        let Builder {
            mut entries,
            mut combos,
            index: _,
        } = self;
        entries.sort_unstable_by_key(|e| (e.customer, e.resolved_at));
        entries.shrink_to_fit();
        combos.shrink_to_fit();
        Arc::new(Ledger { entries, combos })
    }
}

impl Ledger {
    /// Judges the resolutions of `customers` (sorted) again with `repeat(customer, resolved_at,
    /// own opening inside)`; each verdict that changed is added to `moved`, once per group it
    /// was counted in (applied to the totals with [`Groups::replay`](super::acc::Groups::replay)).
    /// Returns the ledger with the new verdicts, or `None` when none changed.
    pub fn rejudge(
        &self,
        customers: &[u32],
        repeat: impl Fn(u32, Micros, bool) -> bool,
        moved: &mut Vec<Moved>,
    ) -> Option<Ledger> {
        let mut changed: Vec<(usize, bool)> = Vec::new();
        for &customer in customers {
            let first = self.entries.partition_point(|e| e.customer < customer);
            for (i, e) in self.entries[first..]
                .iter()
                .enumerate()
                .take_while(|(_, e)| e.customer == customer)
            {
                let now = repeat(customer, e.resolved_at, e.combo & OWN != 0);
                if now != (e.combo & REPEAT != 0) {
                    changed.push((first + i, now));
                }
            }
        }
        if changed.is_empty() {
            return None;
        }
        let mut ledger = self.clone();
        for (i, now) in changed {
            let e = &mut ledger.entries[i];
            moved.extend(self.combos[(e.combo & COMBO) as usize].iter().map(|key| Moved {
                key: *key,
                reopened: e.combo & REOPENED != 0,
                repeat: now,
            }));
            e.combo = (e.combo & !REPEAT) | if now { REPEAT } else { 0 };
        }
        Some(ledger)
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Judged>()
            + self
                .combos
                .iter()
                .map(|c| c.len() * std::mem::size_of::<GroupKey>() + 16)
                .sum::<usize>()
    }
}
