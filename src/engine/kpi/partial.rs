//! Segments' totals kept between computations.
//!
//! A conversation that lies inside a query's window (its first and last events included)
//! contributes the same totals whatever the window's exact bounds: every one of its items is
//! placed, and none is in the window before. For a segment that begins inside the window, the
//! totals of its rows that end before the window's end are kept, per question shape (grouping,
//! filters, business hours, lookaheads, kinds, time zone, targets), in a [`PartialStore`] and
//! reused by later computations; only the rows still active at the window's end, and the
//! segments at its start, are scanned again. A dashboard asking about the last 30 days scans the
//! conversations at the window's edges, not the month.
//!
//! Likewise, a segment opened in the window before (retention's previous customers) keeps the
//! totals of its rows that end before the window: they hold only previous customers, which do
//! not depend on where exactly the window before begins or the window ends.
//!
//! The remaining rows of a segment (those active across the window's start or end) depend on
//! the window's exact bounds: their totals are kept under the exact window
//! ([`KeptRows::Edge`]), so repeating the same question scans nothing.
//!
//! The rows ending before an instant are determined by their number (a segment's set of rows
//! ending before `t` only grows with `t`), so the key holds that number, not the window's end,
//! and windows ending at different instants share the totals while no row ends between them.
//!
//! The totals stay valid while what they were computed from is unchanged. The segment's own rows
//! are in the [`PartialKey`] (its version and rows). Beyond them, totals read other days in two
//! ways only: the repeat-contact check reads the openings of the customers resolved in them (up
//! to a repeat window after each resolution), and attribution reads the conversions of the
//! customers opened in them (up to an attribution window after each opening). Each kept
//! [`Partial`] lists those customers and the span of time they read, and the tenant's
//! [`Changes`] log which customers' openings and conversions changed at each version, and
//! when: totals are reused while no customer they read changed inside the span they read. So a
//! tenant streaming new conversations into its newest day invalidates the totals of that day's
//! changed chunks and of the chunks where its returning customers were resolved in the last
//! week, not of every day whose lookahead reaches the newest one. Totals of days where customers
//! still return keep their repeat-contact verdicts ([`super::ledger`]): when only openings they
//! read changed, they are corrected for those customers instead ([`Partial::corrected`]).

use std::{collections::VecDeque, sync::Arc};

use chrono::NaiveDate;

use super::{
    acc::Groups,
    ledger::{Ledger, Moved},
};
use crate::domain::time::{Micros, Span};

/// A segment's totals for one question shape, and what they read beyond the segment.
pub struct Partial {
    /// The totals as counted; shared by the corrections of these totals, which only move
    /// verdicts (`moved`).
    pub(super) groups: Arc<Groups>,
    /// Verdicts judged again since `groups` were counted ([`Partial::corrected`]), applied to
    /// wherever the groups are merged ([`Partial::merged_groups`]): a correction copies a few
    /// moves, not the day's totals (a full copy per kept day and question was the transient
    /// above a live tenant's cache, RELIABILITY.md).
    pub(super) moved: Vec<Moved>,
    /// The version of the segment (or chunk) the totals were computed from, and exactly which
    /// of its rows: a [`PartialKey`]'s slot holds the newest totals computed for it, and are
    /// used only for the same version and rows ([`Partial::is_of`]).
    pub(super) from: u64,
    pub(super) rows: KeptRows,
    /// The tenant's [`Changes::version`] the totals were computed at.
    pub(super) at: u64,
    /// Customers whose openings the repeat-contact check read, and when.
    pub(super) openings: Read,
    /// Customers whose conversions attribution read, and when.
    pub(super) conversions: Read,
    /// Every repeat-contact verdict the totals counted, one ledger per chunk, when kept (totals
    /// of days where customers still return): then a change of openings corrects the totals
    /// ([`Partial::corrected`]) instead of making them stale. Shared with the chunks' own
    /// totals.
    pub(super) ledgers: Option<Vec<Arc<Ledger>>>,
}

/// Customers (sorted) whose items in a span of time some totals read.
#[derive(Debug, Clone, Default)]
pub struct Read {
    pub customers: Vec<u32>,
    /// Every time read lies in `[start, end]` (empty when `start > end`).
    pub span: Span,
}

impl Read {
    /// Nothing read.
    pub fn nothing() -> Self {
        Read {
            customers: Vec::new(),
            span: Span {
                start: Micros::MAX,
                end: Micros::MIN,
            },
        }
    }

    /// Whether an item of `customer` at `at` is read.
    fn reads(&self, customer: u32, at: Micros) -> bool {
        self.span.start <= at && at <= self.span.end && self.customers.binary_search(&customer).is_ok()
    }

    /// Both together.
    fn union(reads: impl Iterator<Item = Read>) -> Read {
        let mut all = Read::nothing();
        for r in reads {
            all.customers.extend(r.customers);
            all.span.start = all.span.start.min(r.span.start);
            all.span.end = all.span.end.max(r.span.end);
        }
        // Sorted runs, one per part: the stable sort merges them in linear time.
        all.customers.sort();
        all.customers.dedup();
        all
    }
}

impl Partial {
    /// The totals of `parts` together (a segment's from its chunks'), valid at `at`: every part
    /// was checked against the changes up to it.
    pub(super) fn merged(parts: &[Arc<Partial>], from: u64, rows: KeptRows, at: u64) -> Partial {
        // The parts were shrunk when computed; their merge is made to size, and repeats across
        // chunks (a customer of two chunks) are left for `finish`, which reads lists as sets.
        let parts: Vec<&Partial> = parts.iter().map(|p| p.as_ref()).collect();
        Partial {
            groups: Arc::new(Partial::merged_groups(&[], &parts)),
            moved: Vec::new(),
            from,
            rows,
            at,
            openings: Read::union(parts.iter().map(|p| p.openings.clone())),
            conversions: Read::union(parts.iter().map(|p| p.conversions.clone())),
            ledgers: parts
                .iter()
                .map(|p| p.ledgers.clone())
                .collect::<Option<Vec<_>>>()
                .map(|ledgers| ledgers.concat()),
        }
    }

    /// `scanned` and the totals of `parts` merged, each part's moved verdicts applied.
    pub(super) fn merged_groups(scanned: &[Groups], parts: &[&Partial]) -> Groups {
        let all: Vec<&Groups> = scanned
            .iter()
            .chain(parts.iter().map(|p| p.groups.as_ref()))
            .collect();
        let mut merged = Groups::merge_all(&all);
        for p in parts {
            merged.replay(&p.moved);
        }
        merged
    }

    /// These totals, whose verdicts are `ledgers` (their own), with the repeat-contact verdicts
    /// of `customers` (sorted) judged again by `repeat(customer, resolved_at, own opening
    /// inside)` ([`super::ledger`]), valid at `at`. The groups are shared with these totals;
    /// past [`MAX_MOVED`] moves they are copied once with the moves applied.
    pub(super) fn corrected(
        &self,
        ledgers: &[Arc<Ledger>],
        customers: &[u32],
        repeat: impl Fn(u32, Micros, bool) -> bool,
        at: u64,
    ) -> Partial {
        let mut moved = self.moved.clone();
        let ledgers = ledgers
            .iter()
            .map(|l| match l.rejudge(customers, &repeat, &mut moved) {
                Some(new) => Arc::new(new),
                None => l.clone(),
            })
            .collect();
        let mut groups = self.groups.clone();
        if moved.len() > MAX_MOVED {
            Arc::make_mut(&mut groups).replay(&moved);
            moved = Vec::new();
        }
        Partial {
            groups,
            moved,
            from: self.from,
            rows: self.rows,
            at,
            openings: self.openings.clone(),
            conversions: self.conversions.clone(),
            ledgers: Some(ledgers),
        }
    }

    /// The version of the segment (or chunk) the totals were computed from.
    pub fn from(&self) -> u64 {
        self.from
    }

    /// When the openings the totals read lie (see [`Read`]).
    pub fn openings_span(&self) -> Span {
        self.openings.span
    }

    /// Whether these are the totals of version `from` of the rows `rows`.
    pub(super) fn is_of(&self, from: u64, rows: KeptRows) -> bool {
        self.from == from && self.rows == rows
    }

    /// Heap bytes held (for the cache's budget). Ledgers shared with the chunks' totals, and
    /// groups shared with their corrections, are counted in each: the budget errs on the side
    /// of holding less.
    pub fn heap_bytes(&self) -> usize {
        self.groups.heap_bytes()
            + self.moved.capacity() * std::mem::size_of::<Moved>()
            + (self.openings.customers.capacity() + self.conversions.customers.capacity()) * 4
            + self
                .ledgers
                .iter()
                .flatten()
                .map(|l| l.heap_bytes() + 16)
                .sum::<usize>()
    }
}

/// Most verdict moves a corrected [`Partial`] carries beside its shared groups; beyond, its
/// groups are copied with the moves applied.
const MAX_MOVED: usize = if cfg!(test) { 4 } else { 8192 };

/// Where a segment's totals are kept: the question shape, the day (or a chunk of it) and which
/// kind of its rows ([`KeptRows::slot`]). A slot holds one set of totals: those computed from a
/// newer segment, or from more of its rows, replace the older ones in place, so a tenant that
/// keeps writing into its newest day leaves no stale totals behind to fill the budget
/// ([`Partial::is_of`] says what a slot holds).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartialKey {
    /// The tenant's cache identity (ids of names differ between tenants and generations).
    pub tenant: u64,
    /// Everything about the question that changes the totals, except the window.
    pub shape: Arc<str>,
    pub slot: Slot,
    /// Which of the slot's rows the totals cover.
    pub rows: KeptRows,
}

/// A day's segment, or one of its chunks (by index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    Day(NaiveDate),
    Chunk(NaiveDate, u32),
}

/// The rows of a segment whose totals are kept: a number of those ending first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeptRows {
    /// Rows ending inside the window, of a segment that begins inside it.
    Inside(usize),
    /// Rows ending before the window, of a segment opened in the window before.
    Before(usize),
    /// Every other row the computation reads (those at the window's edges), for exactly this
    /// window: a dashboard asking the same window again reuses them while the segment is
    /// unchanged.
    Edge { from: Micros, to: Micros },
}

impl KeptRows {
    /// The rows' slot in a [`PartialKey`]: the kind of rows without their number (the totals
    /// say how many they cover).
    pub fn slot(self) -> KeptRows {
        match self {
            KeptRows::Inside(_) => KeptRows::Inside(0),
            KeptRows::Before(_) => KeptRows::Before(0),
            edge @ KeptRows::Edge { .. } => edge,
        }
    }
}

/// Keeps partial totals between computations (the query cache implements it, within its byte
/// budget).
pub trait PartialStore: Send + Sync {
    fn get(&self, key: &PartialKey) -> Option<Arc<Partial>>;
    fn put(&self, key: PartialKey, partial: Arc<Partial>);
}

/// Most changes the log holds (16 MiB); older ones are forgotten, and totals computed before
/// them are computed again.
const MAX_LOGGED: usize = 1 << 20;

/// The tenant's change log: whose openings and conversions changed, version by version, and at
/// what time (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// The newest version.
    pub version: u64,
    /// Every change after this version is in `log`.
    covered_from: u64,
    log: VecDeque<Change>,
    logged: usize,
}

#[derive(Debug, Clone)]
struct Change {
    version: u64,
    /// (customer, time of the opening) added or removed.
    openings: Vec<(u32, Micros)>,
    /// (customer, time of the conversion) added or removed.
    conversions: Vec<(u32, Micros)>,
}

impl Changes {
    /// Records that openings `openings` and conversions `conversions` ((customer, time); any
    /// order, repeats allowed; customer 0 = none) were added or removed; returns the new
    /// version, or the current one when nothing changed.
    pub fn record(&mut self, mut openings: Vec<(u32, Micros)>, mut conversions: Vec<(u32, Micros)>) -> u64 {
        for list in [&mut openings, &mut conversions] {
            list.retain(|(c, _)| *c != 0);
            list.sort_unstable();
            list.dedup();
        }
        if openings.is_empty() && conversions.is_empty() {
            return self.version;
        }
        self.version += 1;
        self.logged += openings.len() + conversions.len();
        self.log.push_back(Change {
            version: self.version,
            openings,
            conversions,
        });
        while self.logged > MAX_LOGGED {
            let Some(old) = self.log.pop_front() else { break };
            self.logged -= old.openings.len() + old.conversions.len();
            self.covered_from = old.version;
        }
        self.version
    }

    /// Heap bytes held (up to 16 MiB of logged changes, [`MAX_LOGGED`]).
    pub fn heap_bytes(&self) -> usize {
        self.logged * std::mem::size_of::<(u32, Micros)>() + self.log.len() * std::mem::size_of::<Change>()
    }

    /// A change the log cannot describe customer by customer (an erasure, a day whose previous
    /// rows are not known): every totals computed before it are stale.
    pub fn reset(&mut self) -> u64 {
        self.version += 1;
        self.covered_from = self.version;
        self.log.clear();
        self.logged = 0;
        self.version
    }

    /// Whether `p` is as exact for the tenant's state at version `version` as for the state it
    /// was computed at: the log covers both and no change between them (either way) touched an
    /// opening or a conversion it read.
    pub fn untouched_between(&self, p: &Partial, version: u64) -> bool {
        let (low, high) = (version.min(p.at), version.max(p.at));
        if low < self.covered_from || high > self.version {
            return false;
        }
        let first = self.log.partition_point(|c| c.version <= low);
        (self.log.range(first..))
            .take_while(|c| c.version <= high)
            .all(|c| {
                !c.openings.iter().any(|(cu, t)| p.openings.reads(*cu, *t))
                    && !c.conversions.iter().any(|(cu, t)| p.conversions.reads(*cu, *t))
            })
    }

    /// Whether `p` is still what its rows give: no opening or conversion it read changed since.
    pub fn still_valid(&self, p: &Partial) -> bool {
        self.stale_openings(p)
            .is_some_and(|customers| customers.is_empty())
    }

    /// The customers (sorted, distinct) whose openings `p` read changed since it was computed,
    /// when nothing else it read changed (no conversion, no change the log forgot): judging
    /// their verdicts again makes `p` current ([`Partial::corrected`]). `None`: `p` is stale
    /// beyond that.
    pub fn stale_openings(&self, p: &Partial) -> Option<Vec<u32>> {
        if p.at < self.covered_from || p.at > self.version {
            return None;
        }
        let newer = self.log.partition_point(|c| c.version <= p.at);
        let mut customers = Vec::new();
        for c in self.log.range(newer..) {
            if c.conversions.iter().any(|(cu, t)| p.conversions.reads(*cu, *t)) {
                return None;
            }
            customers.extend(
                c.openings
                    .iter()
                    .filter(|(cu, t)| p.openings.reads(*cu, *t))
                    .map(|(cu, _)| *cu),
            );
        }
        customers.sort_unstable();
        customers.dedup();
        Some(customers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(customers: &[u32], start: Micros, end: Micros) -> Read {
        Read {
            customers: customers.to_vec(),
            span: Span { start, end },
        }
    }

    fn partial(at: u64, openings: Read, conversions: Read) -> Partial {
        Partial {
            groups: Arc::default(),
            moved: Vec::new(),
            from: 1,
            rows: KeptRows::Inside(1),
            at,
            openings,
            conversions,
            ledgers: None,
        }
    }

    #[test]
    fn totals_are_as_exact_for_another_version_only_when_nothing_they_read_changed_between() {
        let mut changes = Changes::default();
        let read_changed = changes.record(vec![(5, 300)], Vec::new());
        let other = changes.record(vec![(9, 200)], Vec::new());
        let p = partial(other, read(&[5], 0, 1_000), Read::nothing());
        // Between the two versions only customer 9, not read, changed; before them 5 did.
        assert!(changes.untouched_between(&p, read_changed));
        assert!(!changes.untouched_between(&p, 0));
        // Later: a conversion of 5 (no conversion read) and an opening of 5 outside the span.
        changes.record(Vec::new(), vec![(5, 400)]);
        let outside = changes.record(vec![(5, 2_000)], Vec::new());
        assert!(changes.untouched_between(&p, outside));
        let inside = changes.record(vec![(5, 500)], Vec::new());
        assert!(!changes.untouched_between(&p, inside));
        // A change the log cannot describe: nothing is known between.
        let reset = changes.reset();
        assert!(!changes.untouched_between(&p, reset));
    }

    #[test]
    fn totals_stay_valid_until_a_customer_they_read_changes_inside_the_span_they_read() {
        let mut changes = Changes::default();
        changes.record(vec![(5, 10)], vec![]);
        let p = partial(changes.version, read(&[1, 2, 3], 100, 200), read(&[7], 100, 200));
        assert!(changes.still_valid(&p));
        changes.record(vec![(4, 150), (0, 150), (4, 150)], vec![(9, 150)]);
        assert!(changes.still_valid(&p), "other customers changed");
        changes.record(vec![(2, 250), (2, 99)], vec![]);
        assert!(
            changes.still_valid(&p),
            "a customer it read, outside the span it read"
        );
        assert_eq!(
            changes.record(vec![], vec![(0, 150)]),
            changes.version,
            "nothing to record"
        );
        changes.record(vec![], vec![(7, 200)]);
        assert!(!changes.still_valid(&p), "a conversion it attributed changed");
        let q = partial(changes.version, read(&[1, 2, 3], 100, 200), Read::nothing());
        changes.record(vec![(2, 100)], vec![]);
        assert!(!changes.still_valid(&q), "an opening it checked changed");
        let r = partial(changes.version, read(&[1], 0, 1_000), read(&[1], 0, 1_000));
        changes.reset();
        assert!(
            !changes.still_valid(&r),
            "after a reset nothing computed before holds"
        );
        assert!(changes.still_valid(&partial(changes.version, read(&[1], 0, 9), Read::nothing())));
    }

    /// Totals of `n` first-contact resolutions of customers 1..=n in one group, with their
    /// ledger.
    fn resolved(n: u32) -> (Partial, Arc<Ledger>) {
        use super::super::{
            GroupKey,
            ledger::{Builder, Verdict},
        };
        let mut groups = Groups::default();
        let mut ledger = Builder::default();
        for customer in 1..=n {
            let acc = groups.get(GroupKey::All);
            acc.resolved += 1;
            acc.fcr += 1;
            let v = Verdict {
                customer,
                resolved_at: 100,
                own_inside: false,
                reopened: false,
                repeat: false,
            };
            ledger.note(v, &[GroupKey::All]);
        }
        let ledger = ledger.finish();
        let mut p = partial(1, Read::nothing(), Read::nothing());
        p.groups = Arc::new(groups);
        p.ledgers = Some(vec![ledger.clone()]);
        (p, ledger)
    }

    fn fcr_and_repeat(p: &Partial) -> (u64, u64) {
        let merged = Partial::merged_groups(&[], &[p]);
        let (_, acc) = &merged.into_sorted()[0];
        (acc.fcr, acc.repeat)
    }

    #[test]
    fn a_correction_shares_the_counted_groups_and_carries_only_the_verdicts_it_moved() {
        let (p, ledger) = resolved(10);
        let back: Vec<u32> = vec![2, 7];
        let corrected = p.corrected(&[ledger], &back, |_, _, _| true, 2);
        assert!(Arc::ptr_eq(&p.groups, &corrected.groups));
        assert_eq!(corrected.moved.len(), 2);
        assert_eq!(fcr_and_repeat(&corrected), (8, 2));
        assert_eq!(
            fcr_and_repeat(&p),
            (10, 0),
            "the totals it corrected are unchanged"
        );
    }

    #[test]
    fn past_the_limit_a_correction_copies_its_groups_with_the_moves_applied() {
        let (p, ledger) = resolved(10);
        let back: Vec<u32> = (1..=MAX_MOVED as u32 + 1).collect();
        let corrected = p.corrected(&[ledger], &back, |_, _, _| true, 2);
        assert!(!Arc::ptr_eq(&p.groups, &corrected.groups));
        assert!(corrected.moved.is_empty());
        let moved = MAX_MOVED as u64 + 1;
        assert_eq!(fcr_and_repeat(&corrected), (10 - moved, moved));
        // A second correction moves one back, beside the copied groups.
        let ledgers = corrected.ledgers.clone().unwrap();
        let again = corrected.corrected(&ledgers, &[1], |_, _, _| false, 3);
        assert_eq!(fcr_and_repeat(&again), (10 - moved + 1, moved - 1));
    }
}
