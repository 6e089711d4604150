//! Day segments: the unit in which KPI queries read, cache and persist a tenant's facts.
//!
//! A segment holds the conversations of one UTC day (the day a conversation was first stored
//! with, its `segment_day`; it never moves, so a conversation lives in exactly one segment) in a
//! compact form: a few fixed-width columns a scan filters on without decoding (opened, first and
//! last event, end of life, customer) and one [`row`] blob per conversation with the rest. A
//! million conversations take about 150 MB. Segments are immutable: new facts produce a new
//! segment ([`Segment::merge`]), so a query keeps reading the version it started with while
//! ingest goes on.
//!
//! Rows are in arrival order: a segment built or loaded holds its rows by conversation id, and a
//! merge replaces a changed conversation's row in place and appends new conversations after the
//! others. Rows come in chunks of [`CHUNK_ROWS`], each with a version that changes only when
//! one of its rows does: a day that keeps receiving conversations changes in its last chunks,
//! and the totals kept for its other chunks stay valid (`kpi::partial`).
//!
//! Symbols (agents, teams, inboxes, tags) are stored as segment-local ids with their names, so a
//! segment can be persisted and loaded by any replica ([`snapshot`]); loading maps them to the
//! tenant's ids once. Customers are stored as tenant customer ids (dense, for joins).

pub mod row;
pub mod snapshot;

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
};

use chrono::NaiveDate;

use super::{codec::Writer, intern::Interner};
use crate::domain::{
    facts::ConversationFacts,
    time::{Micros, Span},
};
pub use row::{Attr, Clock, Conv, MessageTotals, Msg, Parts, Resp, Survey, Sym};

/// Where a segment's conversations lie in time, for choosing which segments a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub rows: usize,
    /// Earliest and latest `opened_at`.
    pub opened: Span,
    /// Earliest first event and latest last event: every item of every conversation is inside.
    pub active: Span,
    /// Latest end of life ([`OPEN_END`] when a conversation is still open): after it, no
    /// conversation of the segment is in a backlog or handled.
    pub live_until: Micros,
}

impl Bounds {
    /// Bounds of nothing: every query skips it, and [`Bounds::widen`] starts from it.
    pub const EMPTY: Bounds = Bounds {
        rows: 0,
        opened: Span {
            start: Micros::MAX,
            end: Micros::MIN,
        },
        active: Span {
            start: Micros::MAX,
            end: Micros::MIN,
        },
        live_until: Micros::MIN,
    };

    /// The smallest bounds containing both.
    pub fn widen(&mut self, opened: Micros, active: Span, live_until: Micros) {
        self.opened.start = self.opened.start.min(opened);
        self.opened.end = self.opened.end.max(opened);
        self.active.start = self.active.start.min(active.start);
        self.active.end = self.active.end.max(active.end);
        self.live_until = self.live_until.max(live_until);
    }

    /// Whether an item of one of the conversations can fall in `[from, to)`.
    pub fn active_in(&self, from: Micros, to: Micros) -> bool {
        self.rows > 0 && self.active.start < to && self.active.end >= from
    }

    /// Whether a conversation was opened in `[from, to)`.
    pub fn opened_in(&self, from: Micros, to: Micros) -> bool {
        self.rows > 0 && self.opened.start < to && self.opened.end >= from
    }

    /// Whether a conversation can be open at instant `at` (opened at or before it, not over
    /// for good before it).
    pub fn open_at(&self, at: Micros) -> bool {
        self.rows > 0 && self.opened.start <= at && self.live_until > at
    }

    /// Whether a conversation can have handling time in `[from, to)`: handling lies between its
    /// first event and its end of life.
    pub fn handled_in(&self, from: Micros, to: Micros) -> bool {
        self.rows > 0 && self.active.start < to && self.live_until > from
    }
}

/// Source of [`Segment::version`]s and chunk versions (one counter: a chunk's version never
/// equals a segment's).
static VERSIONS: AtomicU64 = AtomicU64::new(1);

/// Rows per chunk (tests use small chunks, so that days have several).
pub const CHUNK_ROWS: usize = if cfg!(test) { 64 } else { 4096 };

fn new_version() -> u64 {
    VERSIONS.fetch_add(1, Ordering::Relaxed)
}

/// One day of a tenant's conversations; see the module doc.
#[derive(Debug)]
pub struct Segment {
    pub day: NaiveDate,
    /// Unique to this segment value, and larger than every version before it (a process-wide
    /// counter): what was computed from a segment stays valid while its version is the same.
    pub version: u64,
    /// Conversation ids in row order, concatenated; `id_ends[row]` ends row `row`.
    ids: Vec<u8>,
    id_ends: Vec<u32>,
    /// Rows by conversation id (a permutation of the rows): finds a conversation.
    by_id: Vec<u32>,
    /// The version of each chunk of [`CHUNK_ROWS`] rows.
    chunk_versions: Vec<u64>,
    pub opened_at: Vec<Micros>,
    pub active_start: Vec<Micros>,
    pub active_end: Vec<Micros>,
    pub live_until: Vec<Micros>,
    /// Tenant customer ids (0 = none).
    pub customer: Vec<u32>,
    blob: Vec<u8>,
    blob_ends: Vec<u32>,
    /// Segment-local symbol names; index 0 is the absent symbol.
    names: Vec<Box<str>>,
    /// Segment-local symbol -> tenant symbol.
    tenant_syms: Vec<Sym>,
    pub bounds: Bounds,
    /// The xmin of the database snapshot this segment is complete for: rows written by
    /// transactions at or after it may be missing and are read again ([`Segment::merge`]).
    pub as_of: i64,
    /// Rows merged in since the version persisted as a snapshot ([`NEVER_PERSISTED`] when this
    /// segment was built from records): the cache persists a segment again when it has drifted.
    pub unpersisted: AtomicUsize,
}

/// [`Segment::unpersisted`] of a segment no snapshot was taken of.
pub const NEVER_PERSISTED: usize = usize::MAX;

impl Segment {
    fn empty(day: NaiveDate, as_of: i64) -> Self {
        Segment {
            day,
            version: new_version(),
            ids: Vec::new(),
            id_ends: Vec::new(),
            by_id: Vec::new(),
            chunk_versions: Vec::new(),
            opened_at: Vec::new(),
            active_start: Vec::new(),
            active_end: Vec::new(),
            live_until: Vec::new(),
            customer: Vec::new(),
            blob: Vec::new(),
            blob_ends: Vec::new(),
            names: vec!["".into()],
            tenant_syms: vec![0],
            bounds: Bounds::EMPTY,
            as_of,
            unpersisted: AtomicUsize::new(NEVER_PERSISTED),
        }
    }

    /// A segment of `facts` (any order, distinct ids) as of database xmin `as_of`, its rows by
    /// conversation id. `symbols` gives the tenant id of a symbol name (adding it when new).
    pub fn build(
        day: NaiveDate,
        facts: &[ConversationFacts],
        as_of: i64,
        symbols: &mut impl FnMut(&str) -> Sym,
        customers: &mut Interner,
    ) -> Segment {
        Segment::empty(day, as_of).merge(facts, as_of, symbols, customers)
    }

    /// A new segment with `changed` facts replacing the rows of the same conversation id in
    /// place and the others appended (by id), as of `as_of`. Chunks without a changed or new row
    /// keep their versions.
    pub fn merge(
        &self,
        changed: &[ConversationFacts],
        as_of: i64,
        symbols: &mut impl FnMut(&str) -> Sym,
        customers: &mut Interner,
    ) -> Segment {
        let mut changed: Vec<&ConversationFacts> = changed.iter().collect();
        changed.sort_unstable_by(|a, b| a.conversation_id.cmp(&b.conversation_id));
        changed.dedup_by(|a, b| a.conversation_id == b.conversation_id);
        // Which rows are replaced, and which facts are new (in id order).
        let mut replaced: Vec<(usize, &ConversationFacts)> = Vec::new();
        let mut added: Vec<&ConversationFacts> = Vec::new();
        for f in changed {
            match self.find(&f.conversation_id) {
                Some(row) => replaced.push((row, f)),
                None => added.push(f),
            }
        }
        replaced.sort_unstable_by_key(|(row, _)| *row);
        let mut out = Segment {
            names: self.names.clone(),
            tenant_syms: self.tenant_syms.clone(),
            ..Segment::empty(self.day, as_of)
        };
        let (old_len, new_len) = (self.len(), self.len() + added.len());
        let per_row = self.blob.len() / old_len.max(1) + 64;
        out.reserve(
            new_len,
            self.blob.len() + per_row * (added.len() + replaced.len()),
        );
        let mut local: HashMap<Box<str>, u32> = self
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
        let mut scratch = Writer::new();
        let mut encoded = |out: &mut Segment, f: &ConversationFacts| {
            scratch.buf.clear();
            let mut sym = |name: Option<&str>| match name {
                None | Some("") => 0,
                Some(n) => *local.entry(n.into()).or_insert_with(|| {
                    out.names.push(n.into());
                    out.tenant_syms.push(symbols(n));
                    (out.names.len() - 1) as u32
                }),
            };
            let hot = row::encode(f, &mut sym, &mut scratch);
            let customer = customers.intern_opt(f.customer_id.as_deref());
            out.push(&f.conversation_id, hot, customer, &scratch.buf);
        };
        // Unchanged rows are copied a run at a time, replaced ones encoded in their place.
        let mut from = 0;
        for (row, f) in &replaced {
            out.copy_rows(self, from..*row);
            encoded(&mut out, f);
            from = row + 1;
        }
        out.copy_rows(self, from..old_len);
        for f in &added {
            encoded(&mut out, f);
        }
        let replaced_rows: Vec<usize> = replaced.iter().map(|(row, _)| *row).collect();
        out.chunk_versions = self.versions_after(old_len, new_len, &replaced_rows);
        out.by_id = out.order_with_appended(&self.by_id, old_len);
        let before = self.unpersisted.load(Ordering::Relaxed);
        if before != NEVER_PERSISTED {
            out.unpersisted = AtomicUsize::new(before.saturating_add(replaced.len() + added.len()));
        }
        out.shrink();
        out
    }

    /// The chunk versions of a merge of this segment into `new_len` rows: a chunk keeps its
    /// version when none of its rows was replaced (`replaced`, sorted) and it is as long as
    /// before; the others get new ones.
    fn versions_after(&self, old_len: usize, new_len: usize, replaced: &[usize]) -> Vec<u64> {
        let changed_chunk = |c: usize| {
            let rows = c * CHUNK_ROWS..((c + 1) * CHUNK_ROWS).min(new_len);
            rows.end > old_len || replaced.iter().any(|r| rows.contains(r))
        };
        (0..new_len.div_ceil(CHUNK_ROWS))
            .map(|c| match self.chunk_versions.get(c) {
                Some(v) if !changed_chunk(c) => *v,
                _ => new_version(),
            })
            .collect()
    }

    /// Rows by id: `old` (the first `old_len` rows by id) and the rows appended after them,
    /// which are in id order, merged.
    fn order_with_appended(&self, old: &[u32], old_len: usize) -> Vec<u32> {
        let appended: Vec<u32> = (old_len as u32..self.len() as u32).collect();
        let mut by_id = Vec::with_capacity(self.len());
        let (mut a, mut b) = (old.iter().peekable(), appended.iter().peekable());
        loop {
            let take_old = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) => self.id(**x as usize) < self.id(**y as usize),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let row = if take_old { a.next() } else { b.next() };
            by_id.extend(row);
        }
        by_id
    }

    /// Rows by id and fresh chunk versions, for a segment whose rows were pushed in id order
    /// (a loaded snapshot).
    pub(crate) fn seal_sorted(&mut self) {
        self.by_id = (0..self.len() as u32).collect();
        self.chunk_versions = (0..self.len().div_ceil(CHUNK_ROWS))
            .map(|_| new_version())
            .collect();
    }

    /// The chunks: each one's rows and version.
    pub fn chunks(&self) -> impl Iterator<Item = (std::ops::Range<usize>, u64)> + '_ {
        self.chunk_versions
            .iter()
            .enumerate()
            .map(|(c, v)| (c * CHUNK_ROWS..((c + 1) * CHUNK_ROWS).min(self.len()), *v))
    }

    /// Rows in id order (what a snapshot stores).
    pub fn rows_by_id(&self) -> impl Iterator<Item = usize> + '_ {
        self.by_id.iter().map(|r| *r as usize)
    }

    /// Drops spare capacity: a segment is immutable once built.
    fn shrink(&mut self) {
        self.ids.shrink_to_fit();
        self.id_ends.shrink_to_fit();
        self.by_id.shrink_to_fit();
        self.chunk_versions.shrink_to_fit();
        self.opened_at.shrink_to_fit();
        self.active_start.shrink_to_fit();
        self.active_end.shrink_to_fit();
        self.live_until.shrink_to_fit();
        self.customer.shrink_to_fit();
        self.blob.shrink_to_fit();
        self.blob_ends.shrink_to_fit();
    }

    fn reserve(&mut self, rows: usize, blob: usize) {
        self.id_ends.reserve(rows);
        self.opened_at.reserve(rows);
        self.active_start.reserve(rows);
        self.active_end.reserve(rows);
        self.live_until.reserve(rows);
        self.customer.reserve(rows);
        self.blob_ends.reserve(rows);
        self.blob.reserve(blob);
    }

    /// Appends a row (its id must not be in the segment yet).
    pub(crate) fn push(&mut self, id: &str, hot: row::Hot, customer: u32, blob: &[u8]) {
        self.ids.extend_from_slice(id.as_bytes());
        self.id_ends.push(self.ids.len() as u32);
        self.opened_at.push(hot.opened_at);
        self.active_start.push(hot.active.start);
        self.active_end.push(hot.active.end);
        self.live_until.push(hot.live_until);
        self.customer.push(customer);
        self.blob.extend_from_slice(blob);
        self.blob_ends.push(self.blob.len() as u32);
        self.bounds.rows += 1;
        self.bounds.widen(hot.opened_at, hot.active, hot.live_until);
    }

    /// Appends rows `rows` of `from` (their ids must not be in this segment yet), column by
    /// column.
    fn copy_rows(&mut self, from: &Segment, rows: std::ops::Range<usize>) {
        if rows.is_empty() {
            return;
        }
        // Byte ranges of the rows' ids and blobs, and the offsets that move with them.
        let copy_bytes = |bytes: &mut Vec<u8>, ends: &mut Vec<u32>, src: &[u8], src_ends: &[u32]| {
            let start = if rows.start == 0 {
                0
            } else {
                src_ends[rows.start - 1]
            };
            let end = src_ends[rows.end - 1];
            let shift = bytes.len() as i64 - i64::from(start);
            bytes.extend_from_slice(&src[start as usize..end as usize]);
            ends.extend(
                src_ends[rows.clone()]
                    .iter()
                    .map(|e| (i64::from(*e) + shift) as u32),
            );
        };
        copy_bytes(&mut self.ids, &mut self.id_ends, &from.ids, &from.id_ends);
        copy_bytes(&mut self.blob, &mut self.blob_ends, &from.blob, &from.blob_ends);
        for (to, src) in [
            (&mut self.opened_at, &from.opened_at),
            (&mut self.active_start, &from.active_start),
            (&mut self.active_end, &from.active_end),
            (&mut self.live_until, &from.live_until),
        ] {
            to.extend_from_slice(&src[rows.clone()]);
        }
        self.customer.extend_from_slice(&from.customer[rows.clone()]);
        let b = &mut self.bounds;
        b.rows += rows.len();
        for row in rows {
            b.widen(
                from.opened_at[row],
                Span {
                    start: from.active_start[row],
                    end: from.active_end[row],
                },
                from.live_until[row],
            );
        }
    }

    /// Number of conversations.
    pub fn len(&self) -> usize {
        self.opened_at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.opened_at.is_empty()
    }

    /// The conversation id of `row`.
    pub fn id(&self, row: usize) -> &str {
        let start = if row == 0 {
            0
        } else {
            self.id_ends[row - 1] as usize
        };
        std::str::from_utf8(&self.ids[start..self.id_ends[row] as usize]).unwrap_or("")
    }

    /// The row of conversation `id`, if present.
    pub fn find(&self, id: &str) -> Option<usize> {
        self.by_id
            .binary_search_by(|row| self.id(*row as usize).cmp(id))
            .ok()
            .map(|i| self.by_id[i] as usize)
    }

    fn blob(&self, row: usize) -> &[u8] {
        let start = if row == 0 {
            0
        } else {
            self.blob_ends[row - 1] as usize
        };
        &self.blob[start..self.blob_ends[row] as usize]
    }

    pub(crate) fn hot(&self, row: usize) -> row::Hot {
        row::Hot {
            opened_at: self.opened_at[row],
            active: Span {
                start: self.active_start[row],
                end: self.active_end[row],
            },
            live_until: self.live_until[row],
        }
    }

    /// Decodes `row` into `c` with tenant symbols. A segment is checked when it is loaded
    /// ([`Segment::check`]), so decoding cannot fail afterwards.
    pub fn decode(&self, row: usize, parts: Parts, c: &mut Conv) {
        c.opened_at = self.opened_at[row];
        c.active = Span {
            start: self.active_start[row],
            end: self.active_end[row],
        };
        c.customer = self.customer[row];
        row::decode(self.blob(row), &self.tenant_syms, parts, c);
    }

    /// Decodes every row once: `false` when one is malformed (a damaged snapshot).
    pub fn check(&self) -> bool {
        let mut c = Conv::default();
        (0..self.len()).all(|row| {
            c.opened_at = self.opened_at[row];
            row::decode(self.blob(row), &self.tenant_syms, Parts::All, &mut c)
        })
    }

    /// Heap bytes held (the query cache's budget counts these).
    pub fn heap_bytes(&self) -> usize {
        let rows = self.opened_at.capacity();
        self.ids.capacity()
            + self.blob.capacity()
            + rows * (4 * 8 + 4)
            + (self.id_ends.capacity() + self.blob_ends.capacity() + self.by_id.capacity()) * 4
            + self.chunk_versions.capacity() * 8
            + self.names.iter().map(|n| n.len() + 16).sum::<usize>()
            + self.tenant_syms.capacity() * 4
            + std::mem::size_of::<Segment>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::testkit;

    fn chunk_versions(s: &Segment) -> Vec<u64> {
        s.chunks().map(|(_, v)| v).collect()
    }

    #[test]
    fn a_merge_changes_the_versions_of_the_chunks_it_touches_only() {
        let facts: Vec<ConversationFacts> = (0..300)
            .map(|i| {
                testkit::Conv::of(&format!("c{i:03}"), &format!("cust{}", i % 7))
                    .opened("o", i, crate::domain::event::Channel::Email)
                    .facts()
            })
            .collect();
        let (first, later) = facts.split_at(200);
        let (mut symbols, mut customers) = (Interner::new(), Interner::new());
        let day = testkit::t(0).date_naive();
        let built = Segment::build(day, first, 1, &mut |n| symbols.intern(n), &mut customers);
        assert_eq!(built.chunks().count(), 200usize.div_ceil(CHUNK_ROWS));
        // A change to one row of the second chunk, and new conversations appended.
        let changed_row = CHUNK_ROWS + 3;
        let mut changed: Vec<ConversationFacts> = vec![
            first
                .iter()
                .find(|f| f.conversation_id == built.id(changed_row))
                .unwrap()
                .clone(),
        ];
        changed.extend(later.iter().cloned());
        let merged = built.merge(&changed, 2, &mut |n| symbols.intern(n), &mut customers);
        let (before, after) = (chunk_versions(&built), chunk_versions(&merged));
        assert_eq!(after[0], before[0], "an untouched chunk keeps its version");
        assert_ne!(after[1], before[1], "the changed row's chunk does not");
        // The last chunk was partly filled and got new rows; later chunks are new.
        assert_ne!(after[before.len() - 1], before[before.len() - 1]);
        assert_eq!(after.len(), 300usize.div_ceil(CHUNK_ROWS));
        assert_eq!(merged.id(changed_row), built.id(changed_row), "replaced in place");
    }
}
