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
//! and the totals kept for its other chunks stay valid (`kpi::partial`). The versions of a
//! segment share the chunks a merge left alone, so a refresh copies the chunks it changes, not
//! the day.
//!
//! Symbols (agents, teams, inboxes, tags) are stored as segment-local ids with their names, so a
//! segment can be persisted and loaded by any replica ([`snapshot`]); loading maps them to the
//! tenant's ids once. Customers are stored as tenant customer ids (dense, for joins).

pub mod row;
pub mod snapshot;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
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

impl Default for Bounds {
    fn default() -> Self {
        Bounds::EMPTY
    }
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

/// Rows per chunk, a power of two (tests use small chunks, so that days have several).
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
    /// The rows, [`CHUNK_ROWS`] to a chunk (every chunk but the last is full). A merge shares
    /// the chunks it leaves alone with the segment it was merged from.
    chunks: Vec<Arc<Chunk>>,
    /// Rows by conversation id (a permutation of the rows): finds a conversation.
    by_id: Vec<u32>,
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

/// Up to [`CHUNK_ROWS`] consecutive rows of a segment, column by column. Immutable once its
/// segment is built: a merge copies the chunks it changes (those with a replaced row, and the
/// last one when conversations are appended), so refreshing a day that keeps receiving
/// conversations costs the rows that changed and their chunks, not the day.
#[derive(Debug, Clone, Default)]
struct Chunk {
    /// Changes whenever one of the chunk's rows does (the same counter as segment versions).
    version: u64,
    /// Conversation ids concatenated; `id_ends[i]` ends row `i`.
    ids: Vec<u8>,
    id_ends: Vec<u32>,
    opened_at: Vec<Micros>,
    active_start: Vec<Micros>,
    active_end: Vec<Micros>,
    live_until: Vec<Micros>,
    /// Tenant customer ids (0 = none).
    customer: Vec<u32>,
    blob: Vec<u8>,
    blob_ends: Vec<u32>,
    bounds: Bounds,
}

/// Bytes `ends[i]` ends the `i`-th item of (`ends` of a concatenation).
fn item(ends: &[u32], i: usize) -> std::ops::Range<usize> {
    let start = if i == 0 { 0 } else { ends[i - 1] as usize };
    start..ends[i] as usize
}

impl Chunk {
    fn len(&self) -> usize {
        self.opened_at.len()
    }

    fn id(&self, i: usize) -> &str {
        std::str::from_utf8(&self.ids[item(&self.id_ends, i)]).unwrap_or("")
    }

    fn blob(&self, i: usize) -> &[u8] {
        &self.blob[item(&self.blob_ends, i)]
    }

    fn hot(&self, i: usize) -> row::Hot {
        row::Hot {
            opened_at: self.opened_at[i],
            active: Span {
                start: self.active_start[i],
                end: self.active_end[i],
            },
            live_until: self.live_until[i],
        }
    }

    fn push(&mut self, id: &str, hot: row::Hot, customer: u32, blob: &[u8]) {
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

    /// Appends rows `rows` of `from`, column by column.
    fn copy_rows(&mut self, from: &Chunk, rows: std::ops::Range<usize>) {
        if rows.is_empty() {
            return;
        }
        // Byte ranges of the rows' ids and blobs, and the offsets that move with them.
        let copy_bytes = |bytes: &mut Vec<u8>, ends: &mut Vec<u32>, src: &[u8], src_ends: &[u32]| {
            let start = item(src_ends, rows.start).start;
            let end = src_ends[rows.end - 1] as usize;
            let shift = bytes.len() as i64 - start as i64;
            bytes.extend_from_slice(&src[start..end]);
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
        self.bounds.rows += rows.len();
        for hot in rows.map(|i| from.hot(i)) {
            self.bounds.widen(hot.opened_at, hot.active, hot.live_until);
        }
    }

    fn shrink(&mut self) {
        self.ids.shrink_to_fit();
        self.id_ends.shrink_to_fit();
        self.opened_at.shrink_to_fit();
        self.active_start.shrink_to_fit();
        self.active_end.shrink_to_fit();
        self.live_until.shrink_to_fit();
        self.customer.shrink_to_fit();
        self.blob.shrink_to_fit();
        self.blob_ends.shrink_to_fit();
    }

    fn heap_bytes(&self) -> usize {
        self.ids.capacity()
            + self.blob.capacity()
            + self.opened_at.capacity() * 4 * 8
            + (self.customer.capacity() + self.id_ends.capacity() + self.blob_ends.capacity()) * 4
            + std::mem::size_of::<Chunk>()
            + 16
    }
}

/// Encodes facts into rows of a segment with the symbols `names` (growing them).
struct Encoder<'a, F> {
    names: Vec<Box<str>>,
    tenant_syms: Vec<Sym>,
    local: HashMap<Box<str>, u32>,
    scratch: Writer,
    symbols: &'a mut F,
    customers: &'a mut Interner,
}

impl<'a, F: FnMut(&str) -> Sym> Encoder<'a, F> {
    fn new(segment: &Segment, symbols: &'a mut F, customers: &'a mut Interner) -> Self {
        Encoder {
            local: (segment.names.iter().enumerate())
                .map(|(i, n)| (n.clone(), i as u32))
                .collect(),
            names: segment.names.clone(),
            tenant_syms: segment.tenant_syms.clone(),
            scratch: Writer::new(),
            symbols,
            customers,
        }
    }

    /// Appends the row of `f` to `chunk`.
    fn push(&mut self, chunk: &mut Chunk, f: &ConversationFacts) {
        self.scratch.buf.clear();
        let Encoder {
            names,
            tenant_syms,
            local,
            symbols,
            ..
        } = self;
        let sym = |name: Option<&str>| match name {
            None | Some("") => 0,
            Some(n) => *local.entry(n.into()).or_insert_with(|| {
                names.push(n.into());
                tenant_syms.push(symbols(n));
                (names.len() - 1) as u32
            }),
        };
        let hot = row::encode(f, sym, &mut self.scratch);
        let customer = self.customers.intern_opt(f.customer_id.as_deref());
        chunk.push(&f.conversation_id, hot, customer, &self.scratch.buf);
    }
}

impl Segment {
    fn empty(day: NaiveDate, as_of: i64) -> Self {
        Segment {
            day,
            version: new_version(),
            chunks: Vec::new(),
            by_id: Vec::new(),
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
    /// place and the others appended (by id), as of `as_of`. Only the chunks with a changed or
    /// new row are copied (and get new versions); the others are shared with this segment.
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
        let mut encoder = Encoder::new(self, symbols, customers);
        let mut chunks = self.chunks.clone();
        let mut touched = vec![false; chunks.len()];
        // A chunk with replaced rows is copied a run at a time, the replaced ones encoded in
        // their place.
        for run in replaced.chunk_by(|a, b| a.0 / CHUNK_ROWS == b.0 / CHUNK_ROWS) {
            let c = run[0].0 / CHUNK_ROWS;
            let old = &self.chunks[c];
            let mut chunk = Chunk::default();
            let mut from = 0;
            for (row, f) in run {
                chunk.copy_rows(old, from..row % CHUNK_ROWS);
                encoder.push(&mut chunk, f);
                from = row % CHUNK_ROWS + 1;
            }
            chunk.copy_rows(old, from..old.len());
            chunks[c] = Arc::new(chunk);
            touched[c] = true;
        }
        // New rows fill the last chunk (a copy of it, when it is shared), then new ones.
        for f in &added {
            if chunks.last().is_none_or(|c| c.len() == CHUNK_ROWS) {
                chunks.push(Arc::default());
                touched.push(false);
            }
            let last = chunks.len() - 1;
            encoder.push(Arc::make_mut(&mut chunks[last]), f);
            touched[last] = true;
        }
        for (chunk, _) in chunks.iter_mut().zip(&touched).filter(|(_, t)| **t) {
            let chunk = Arc::make_mut(chunk);
            chunk.version = new_version();
            chunk.shrink();
        }
        let mut out = Segment {
            chunks,
            names: encoder.names,
            tenant_syms: encoder.tenant_syms,
            ..Segment::empty(self.day, as_of)
        };
        out.bounds = out.chunk_bounds();
        out.by_id = out.order_with_appended(&self.by_id, self.len());
        let before = self.unpersisted.load(Ordering::Relaxed);
        if before != NEVER_PERSISTED {
            out.unpersisted = AtomicUsize::new(before.saturating_add(replaced.len() + added.len()));
        }
        out
    }

    /// The bounds of every chunk together.
    fn chunk_bounds(&self) -> Bounds {
        let mut all = Bounds::EMPTY;
        for b in self.chunks.iter().map(|c| &c.bounds).filter(|b| b.rows > 0) {
            all.rows += b.rows;
            all.widen(b.opened.start, b.active, b.live_until);
            all.opened.end = all.opened.end.max(b.opened.end);
        }
        all
    }

    /// Rows by id: `old` (the first `old_len` rows by id) and the rows appended after them,
    /// which are in id order, merged: each appended row is placed by a binary search, and the
    /// old rows between are copied a run at a time.
    fn order_with_appended(&self, old: &[u32], old_len: usize) -> Vec<u32> {
        let mut by_id = Vec::with_capacity(self.len());
        let mut rest = old;
        for row in old_len..self.len() {
            let id = self.id(row);
            let before = rest.partition_point(|r| self.id(*r as usize) < id);
            by_id.extend_from_slice(&rest[..before]);
            by_id.push(row as u32);
            rest = &rest[before..];
        }
        by_id.extend_from_slice(rest);
        by_id
    }

    /// Rows by id, fresh chunk versions and the bounds, for a segment whose rows were pushed
    /// in id order (a loaded snapshot).
    pub(crate) fn seal_sorted(&mut self) {
        self.bounds = self.chunk_bounds();
        self.by_id = (0..self.len() as u32).collect();
        for chunk in &mut self.chunks {
            let chunk = Arc::make_mut(chunk);
            chunk.version = new_version();
            chunk.shrink();
        }
        self.by_id.shrink_to_fit();
    }

    /// The chunks: each one's rows and version.
    pub fn chunks(&self) -> impl Iterator<Item = (std::ops::Range<usize>, u64)> + '_ {
        self.chunks
            .iter()
            .enumerate()
            .map(|(c, chunk)| (c * CHUNK_ROWS..c * CHUNK_ROWS + chunk.len(), chunk.version))
    }

    /// Rows in id order (what a snapshot stores).
    pub fn rows_by_id(&self) -> impl Iterator<Item = usize> + '_ {
        self.by_id.iter().map(|r| *r as usize)
    }

    /// Appends a row (its id must not be in the segment yet; rows pushed must end in
    /// [`Segment::seal_sorted`], which takes the segment's bounds from its chunks').
    pub(crate) fn push(&mut self, id: &str, hot: row::Hot, customer: u32, blob: &[u8]) {
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK_ROWS) {
            self.chunks.push(Arc::default());
        }
        if let Some(last) = self.chunks.last_mut() {
            Arc::make_mut(last).push(id, hot, customer, blob);
        }
    }

    /// Sets the customer of every row to `customer(row)`.
    pub(crate) fn set_customers(&mut self, mut customer: impl FnMut(usize) -> u32) {
        for (c, chunk) in self.chunks.iter_mut().enumerate() {
            let chunk = Arc::make_mut(chunk);
            for (i, slot) in chunk.customer.iter_mut().enumerate() {
                *slot = customer(c * CHUNK_ROWS + i);
            }
        }
    }

    /// The chunk of `row` and the row's index in it.
    fn at(&self, row: usize) -> (&Chunk, usize) {
        (&self.chunks[row / CHUNK_ROWS], row % CHUNK_ROWS)
    }

    /// Number of conversations.
    pub fn len(&self) -> usize {
        self.chunks
            .last()
            .map_or(0, |c| (self.chunks.len() - 1) * CHUNK_ROWS + c.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The conversation id of `row`.
    pub fn id(&self, row: usize) -> &str {
        let (c, i) = self.at(row);
        c.id(i)
    }

    /// When the conversation of `row` was opened.
    pub fn opened_at(&self, row: usize) -> Micros {
        let (c, i) = self.at(row);
        c.opened_at[i]
    }

    /// The first event of `row`.
    pub fn active_start(&self, row: usize) -> Micros {
        let (c, i) = self.at(row);
        c.active_start[i]
    }

    /// The last event of `row`.
    pub fn active_end(&self, row: usize) -> Micros {
        let (c, i) = self.at(row);
        c.active_end[i]
    }

    /// The end of life of `row` ([`crate::domain::time::OPEN_END`] while it is open).
    pub fn live_until(&self, row: usize) -> Micros {
        let (c, i) = self.at(row);
        c.live_until[i]
    }

    /// The tenant customer id of `row` (0 = none).
    pub fn customer(&self, row: usize) -> u32 {
        let (c, i) = self.at(row);
        c.customer[i]
    }

    /// Every row's last event, in row order.
    pub fn active_ends(&self) -> impl Iterator<Item = Micros> + '_ {
        self.chunks.iter().flat_map(|c| c.active_end.iter().copied())
    }

    /// Every row's opening and customer, in row order.
    pub fn openings(&self) -> impl Iterator<Item = (Micros, u32)> + '_ {
        (self.chunks.iter()).flat_map(|c| c.opened_at.iter().copied().zip(c.customer.iter().copied()))
    }

    /// Bytes of the rows' ids and blobs.
    pub(crate) fn row_bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.ids.len() + c.blob.len()).sum()
    }

    /// The row of conversation `id`, if present.
    pub fn find(&self, id: &str) -> Option<usize> {
        self.by_id
            .binary_search_by(|row| self.id(*row as usize).cmp(id))
            .ok()
            .map(|i| self.by_id[i] as usize)
    }

    fn blob(&self, row: usize) -> &[u8] {
        let (c, i) = self.at(row);
        c.blob(i)
    }

    pub(crate) fn hot(&self, row: usize) -> row::Hot {
        let (c, i) = self.at(row);
        c.hot(i)
    }

    /// Decodes `row` into `c` with tenant symbols. A segment is checked when it is loaded
    /// ([`Segment::check`]), so decoding cannot fail afterwards.
    pub fn decode(&self, row: usize, parts: Parts, c: &mut Conv) {
        let (chunk, i) = self.at(row);
        let hot = chunk.hot(i);
        (c.opened_at, c.active, c.customer) = (hot.opened_at, hot.active, chunk.customer[i]);
        row::decode(chunk.blob(i), &self.tenant_syms, parts, c);
    }

    /// Decodes every row once: `false` when one is malformed (a damaged snapshot).
    pub fn check(&self) -> bool {
        let mut c = Conv::default();
        (0..self.len()).all(|row| {
            c.opened_at = self.opened_at(row);
            row::decode(self.blob(row), &self.tenant_syms, Parts::All, &mut c)
        })
    }

    /// Heap bytes held (the query cache's budget counts these; chunks shared with another
    /// version of the segment are counted in each).
    pub fn heap_bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.heap_bytes()).sum::<usize>()
            + self.chunks.capacity() * 8
            + self.by_id.capacity() * 4
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

    /// Conversation `i` opened at `i` seconds; `late` gives it an agent reply and a
    /// resolution much later (so a replacement moves its active span and end of life).
    fn conv(i: usize, late: bool) -> ConversationFacts {
        let id = format!("c{i:04}");
        let mut c = testkit::Conv::of(&id, &format!("cust{}", i % 7)).opened(
            "o",
            i as i64,
            crate::domain::event::Channel::Email,
        );
        if late {
            c = c
                .agent("a", 100_000 + i as i64, &format!("agent{}", i % 3))
                .resolved("r", 200_000 + i as i64);
        }
        c.facts()
    }

    /// Each conversation's row (id, hot columns, customer, agent) by id.
    fn rows(s: &Segment) -> Vec<(String, row::Hot, u32, Sym)> {
        let mut c = Conv::default();
        s.rows_by_id()
            .map(|r| {
                s.decode(r, Parts::All, &mut c);
                (s.id(r).to_string(), s.hot(r), s.customer(r), c.agent)
            })
            .collect()
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

    #[test]
    fn a_segment_merged_in_steps_holds_what_one_built_at_once_does() {
        let (mut symbols, mut customers) = (Interner::new(), Interner::new());
        let day = testkit::t(0).date_naive();
        let mut sym = |n: &str| symbols.intern(n);
        // 150 conversations, then every third replaced by a later version together with 100
        // new ones (ids between and after the first ones), then the new ones resolved.
        let first: Vec<ConversationFacts> = (0..300).step_by(2).map(|i| conv(i, false)).collect();
        let mut seg = Segment::build(day, &first, 1, &mut sym, &mut customers);
        let added: Vec<usize> = (1..200).step_by(2).chain(300..305).collect();
        let mut second: Vec<ConversationFacts> = (0..300).step_by(6).map(|i| conv(i, true)).collect();
        second.extend(added.iter().map(|i| conv(*i, false)));
        seg = seg.merge(&second, 2, &mut sym, &mut customers);
        let third: Vec<ConversationFacts> = added.iter().map(|i| conv(*i, true)).collect();
        seg = seg.merge(&third, 3, &mut sym, &mut customers);
        // The same conversations in their final versions, in one build.
        let last: Vec<ConversationFacts> = (0..300)
            .step_by(2)
            .map(|i| conv(i, i % 6 == 0))
            .chain(added.iter().map(|i| conv(*i, true)))
            .collect();
        let whole = Segment::build(day, &last, 3, &mut sym, &mut customers);
        assert_eq!(seg.len(), last.len());
        assert_eq!(rows(&seg), rows(&whole));
        assert_eq!(seg.bounds, whole.bounds);
        for f in &last {
            let row = seg.find(&f.conversation_id).expect("every conversation is found");
            assert_eq!(seg.id(row), f.conversation_id);
        }
    }

    #[test]
    fn a_merge_shares_the_chunks_it_does_not_change() {
        let facts: Vec<ConversationFacts> = (0..CHUNK_ROWS * 3 + 5).map(|i| conv(i, false)).collect();
        let (mut symbols, mut customers) = (Interner::new(), Interner::new());
        let mut sym = |n: &str| symbols.intern(n);
        let day = testkit::t(0).date_naive();
        let built = Segment::build(day, &facts, 1, &mut sym, &mut customers);
        // One row of the second chunk replaced, one conversation appended.
        let changed = [conv(CHUNK_ROWS + 1, true), conv(CHUNK_ROWS * 4, false)];
        let merged = built.merge(&changed, 2, &mut sym, &mut customers);
        let shared: Vec<bool> = (built.chunks.iter().zip(&merged.chunks))
            .map(|(a, b)| Arc::ptr_eq(a, b))
            .collect();
        assert_eq!(shared, [true, false, true, false]);
        assert_eq!(merged.len(), built.len() + 1);
    }
}
