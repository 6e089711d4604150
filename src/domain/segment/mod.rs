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

use super::{
    codec::Writer,
    facts::ConversationFacts,
    intern::Interner,
    time::{Micros, OPEN_END, Span},
};
pub use row::{Conv, MessageTotals, Msg, Parts, Resp, Survey, Sym};

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

/// Source of [`Segment::version`]s.
static VERSIONS: AtomicU64 = AtomicU64::new(1);

/// One day of a tenant's conversations; see the module doc.
#[derive(Debug)]
pub struct Segment {
    pub day: NaiveDate,
    /// Unique to this segment value, and larger than every version before it (a process-wide
    /// counter): what was computed from a segment stays valid while its version is the same.
    pub version: u64,
    /// Conversation ids in row order (sorted), concatenated; `id_ends[row]` ends row `row`.
    ids: Vec<u8>,
    id_ends: Vec<u32>,
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
            version: VERSIONS.fetch_add(1, Ordering::Relaxed),
            ids: Vec::new(),
            id_ends: Vec::new(),
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

    /// A segment of `facts` (any order, distinct ids) as of database xmin `as_of`. `symbols`
    /// gives the tenant id of a symbol name (adding it when new).
    pub fn build(
        day: NaiveDate,
        facts: &[ConversationFacts],
        as_of: i64,
        symbols: &mut impl FnMut(&str) -> Sym,
        customers: &mut Interner,
    ) -> Segment {
        Segment::empty(day, as_of).merge(facts, as_of, symbols, customers)
    }

    /// A new segment with `changed` facts replacing rows of the same conversation id and the
    /// others added, as of `as_of`.
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
        let mut out = Segment {
            names: self.names.clone(),
            tenant_syms: self.tenant_syms.clone(),
            ..Segment::empty(self.day, as_of)
        };
        out.reserve(self.len() + changed.len(), self.blob.len());
        let mut local: HashMap<Box<str>, u32> = self
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
        let mut scratch = Writer::new();
        let (mut old, mut new) = (0, 0);
        while old < self.len() || new < changed.len() {
            let take_new = match (old < self.len(), changed.get(new)) {
                (true, Some(f)) => f.conversation_id.as_str() <= self.id(old),
                (false, Some(_)) => true,
                (_, None) => false,
            };
            if take_new {
                let f = changed[new];
                if old < self.len() && self.id(old) == f.conversation_id {
                    old += 1; // replaced
                }
                new += 1;
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
            } else {
                out.copy_row(self, old);
                old += 1;
            }
        }
        let before = self.unpersisted.load(Ordering::Relaxed);
        if before != NEVER_PERSISTED {
            out.unpersisted = AtomicUsize::new(before.saturating_add(changed.len()));
        }
        out.shrink();
        out
    }

    /// Drops spare capacity: a segment is immutable once built.
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

    /// Appends a row (ids must come in sorted order).
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

    fn copy_row(&mut self, from: &Segment, row: usize) {
        let hot = from.hot(row);
        self.push(from.id(row), hot, from.customer[row], from.blob(row));
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
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.id(mid).cmp(id) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
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
            + (self.id_ends.capacity() + self.blob_ends.capacity()) * 4
            + self.names.iter().map(|n| n.len() + 16).sum::<usize>()
            + self.tenant_syms.capacity() * 4
            + std::mem::size_of::<Segment>()
    }

    /// Whether the segment still holds a conversation that is open now.
    pub fn has_open(&self) -> bool {
        self.bounds.live_until == OPEN_END
    }
}
