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
//! The totals stay valid while what they were computed from is unchanged, and all of it is in
//! the [`PartialKey`]: the segment's version and rows, the newest version of the segments whose
//! openings the repeat-contact check reads (opened up to a repeat window after the segment's
//! last event), and the newest version of the conversion days its attribution reads.

use std::{collections::BTreeMap, sync::Arc};

use chrono::NaiveDate;

use super::acc::Groups;
use crate::domain::{
    segment::Segment,
    time::{Micros, to_datetime},
};

/// A segment's totals for one question shape.
pub struct Partial(pub(super) Groups);

impl Partial {
    /// Heap bytes held (for the cache's budget).
    pub fn heap_bytes(&self) -> usize {
        self.0.heap_bytes()
    }
}

/// What a segment's totals were computed from (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartialKey {
    /// The tenant's cache identity (ids of names differ between tenants and generations).
    pub tenant: u64,
    /// Everything about the question that changes the totals, except the window.
    pub shape: Arc<str>,
    pub segment: u64,
    /// Which of the segment's rows the totals cover.
    pub rows: KeptRows,
    pub opens_version: u64,
    pub conversions_version: u64,
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

/// The newest version of the segments opened in `[from, to]` (0 when none).
pub(super) fn opens_version(segments: &[Arc<Segment>], from: Micros, to: Micros) -> u64 {
    segments
        .iter()
        .filter(|s| s.bounds.opened_in(from, to.saturating_add(1)))
        .map(|s| s.version)
        .max()
        .unwrap_or(0)
}

/// The newest version of the conversion days (UTC) touching `[from, to]` (0 when none).
pub(super) fn conversions_version(days: &BTreeMap<NaiveDate, u64>, from: Micros, to: Micros) -> u64 {
    let (first, last) = (to_datetime(from).date_naive(), to_datetime(to).date_naive());
    days.range(first..=last).map(|(_, v)| *v).max().unwrap_or(0)
}
