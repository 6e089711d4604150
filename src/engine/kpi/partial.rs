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
//! week, not of every day whose lookahead reaches the newest one.

use std::{collections::VecDeque, sync::Arc};

use super::acc::Groups;
use crate::domain::time::{Micros, Span};

/// A segment's totals for one question shape, and what they read beyond the segment.
pub struct Partial {
    pub(super) groups: Groups,
    /// The tenant's [`Changes::version`] the totals were computed at.
    pub(super) at: u64,
    /// Customers whose openings the repeat-contact check read, and when.
    pub(super) openings: Read,
    /// Customers whose conversions attribution read, and when.
    pub(super) conversions: Read,
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
        all.customers.sort_unstable();
        all.customers.dedup();
        all
    }
}

impl Partial {
    /// The totals of `parts` together (a segment's from its chunks'), valid at `at`: every part
    /// was checked against the changes up to it.
    pub(super) fn merged(parts: &[Arc<Partial>], at: u64) -> Partial {
        // The parts were shrunk when computed; their merge is made to size, and repeats across
        // chunks (a customer of two chunks) are left for `finish`, which reads lists as sets.
        let groups: Vec<&Groups> = parts.iter().map(|p| &p.groups).collect();
        let groups = Groups::merge_all(&groups);
        Partial {
            groups,
            at,
            openings: Read::union(parts.iter().map(|p| p.openings.clone())),
            conversions: Read::union(parts.iter().map(|p| p.conversions.clone())),
        }
    }

    /// Heap bytes held (for the cache's budget).
    pub fn heap_bytes(&self) -> usize {
        self.groups.heap_bytes()
            + (self.openings.customers.capacity() + self.conversions.customers.capacity()) * 4
    }
}

/// What a segment's totals were computed from, besides the customers they read (see the module
/// doc).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartialKey {
    /// The tenant's cache identity (ids of names differ between tenants and generations).
    pub tenant: u64,
    /// Everything about the question that changes the totals, except the window.
    pub shape: Arc<str>,
    pub segment: u64,
    /// Which of the segment's rows the totals cover.
    pub rows: KeptRows,
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

    /// A change the log cannot describe customer by customer (an erasure, a day whose previous
    /// rows are not known): every totals computed before it are stale.
    pub fn reset(&mut self) -> u64 {
        self.version += 1;
        self.covered_from = self.version;
        self.log.clear();
        self.logged = 0;
        self.version
    }

    /// Whether `p` is still what its rows give: no opening or conversion it read changed since.
    pub fn still_valid(&self, p: &Partial) -> bool {
        if p.at < self.covered_from || p.at > self.version {
            return false;
        }
        let newer = self.log.partition_point(|c| c.version <= p.at);
        self.log.range(newer..).all(|c| {
            !c.openings.iter().any(|(cu, t)| p.openings.reads(*cu, *t))
                && !c.conversions.iter().any(|(cu, t)| p.conversions.reads(*cu, *t))
        })
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
            groups: Groups::default(),
            at,
            openings,
            conversions,
        }
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
}
