//! The persisted form of a [`Segment`] (`segment_parts.body`): what a replica loads after a restart
//! instead of decoding every stored conversation record again.
//!
//! Layout: magic and version, the day, the database xmin the segment is complete for, the
//! segment-local symbol names, then per row its conversation id, customer name, hot columns and
//! blob; last, a CRC-32 of everything before it. It is stored in parts of about [`PART_BYTES`]
//! ([`PartEncoder`]), whose bytes in order are the body. Loading is two steps: [`parse`] reads and
//! verifies the bytes (no tenant state needed, so it can run in parallel with other work), and
//! [`Parsed::attach`] maps names and customers to the loading tenant's ids. A damaged snapshot
//! is refused (and the day rebuilt from its conversation records) instead of giving wrong
//! numbers. A snapshot is derived data: deleting it loses nothing.

use chrono::{Datelike, NaiveDate};

use super::{Segment, row::Hot};
use crate::domain::time::{OPEN_END, Span};
use crate::engine::{
    codec::{Reader, Writer},
    intern::Interner,
};

const MAGIC: &[u8; 4] = b"CKS3";

/// A snapshot that cannot be loaded.
#[derive(Debug, thiserror::Error)]
#[error("segment snapshot of {0} is damaged or of an unknown version")]
pub struct CorruptSnapshot(pub NaiveDate);

/// The size at which a snapshot is cut into stored parts (`segment_parts`): persisting a day
/// holds one part in memory at a time (and the statement's and the connection's copies of
/// it), not the whole body three times over (a day of a 10 M-conversation tenant is 74 MB).
pub const PART_BYTES: usize = 4 << 20;

/// Serializes `segment`; `customers` names its customer ids.
pub fn encode(segment: &Segment, customers: &Interner) -> Vec<u8> {
    let mut encoder = PartEncoder::default();
    let mut body = Vec::with_capacity(segment.row_bytes() + segment.len() * 32 + 64);
    while let Some((part, _)) = encoder.next_part(segment, customers, usize::MAX) {
        body.extend_from_slice(&part);
    }
    body
}

/// Serializes a segment a part at a time: each call encodes the rows after the previous part's
/// until the part reaches the size asked for; the parts' bytes in order are [`encode`]'s body.
/// Resumable, so that a writer encodes a part, stores it and only then encodes the next.
#[derive(Default)]
pub struct PartEncoder {
    /// The header (day, xmin, names, row count) was encoded, with the first part.
    begun: bool,
    /// Rows (in id order) already encoded.
    rows: usize,
    crc: crc32fast::Hasher,
    finished: bool,
}

impl PartEncoder {
    /// The next part of `segment`'s body (the same segment every call), of about `part_bytes`
    /// (it ends after the row that reached the size) and whether it is the last; `None` once
    /// the last was returned.
    pub fn next_part(
        &mut self,
        segment: &Segment,
        customers: &Interner,
        part_bytes: usize,
    ) -> Option<(Vec<u8>, bool)> {
        if self.finished {
            return None;
        }
        let capacity = part_bytes.min(segment.row_bytes() + segment.len() * 32 + 64);
        let mut w = Writer::new();
        w.buf.reserve(capacity);
        if !self.begun {
            self.begun = true;
            w.buf.extend_from_slice(MAGIC);
            w.i64(i64::from(segment.day.num_days_from_ce()));
            w.i64(segment.as_of);
            w.count(segment.names.len() - 1);
            for name in &segment.names[1..] {
                w.bytes(name.as_bytes());
            }
            w.count(segment.len());
        }
        // By conversation id: a loaded segment's rows are in id order.
        for &row in &segment.by_id[self.rows..] {
            if w.buf.len() >= part_bytes {
                break;
            }
            encode_row(segment, customers, row as usize, &mut w);
            self.rows += 1;
        }
        self.crc.update(&w.buf);
        self.finished = self.rows == segment.len();
        if self.finished {
            let crc = std::mem::take(&mut self.crc).finalize();
            w.buf.extend_from_slice(&crc.to_le_bytes());
        }
        Some((w.buf, self.finished))
    }
}

fn encode_row(segment: &Segment, customers: &Interner, row: usize, w: &mut Writer) {
    let hot = segment.hot(row);
    w.bytes(segment.id(row).as_bytes());
    w.bytes(customers.name(segment.customer(row)).as_bytes());
    w.i64(hot.opened_at);
    w.time(hot.opened_at, hot.active.start);
    w.time(hot.opened_at, hot.active.end);
    w.opt_time(
        hot.opened_at,
        (hot.live_until != OPEN_END).then_some(hot.live_until),
    );
    w.bytes(segment.blob(row));
}

/// A verified snapshot whose names are not yet mapped to a tenant's ids.
pub struct Parsed {
    segment: Segment,
    /// The body, and each row's customer name in it (start, end).
    body: Vec<u8>,
    customers: Vec<(u32, u32)>,
}

/// Reads and verifies a snapshot of `day`.
pub fn parse(day: NaiveDate, body: Vec<u8>) -> Result<Parsed, CorruptSnapshot> {
    let corrupt = || CorruptSnapshot(day);
    let content = body.len().checked_sub(4).ok_or_else(corrupt)?;
    let crc = u32::from_le_bytes(body[content..].try_into().map_err(|_| corrupt())?);
    if body.get(..4) != Some(MAGIC.as_slice()) || crc32fast::hash(&body[..content]) != crc {
        return Err(corrupt());
    }
    let mut r = Reader::new(&body[4..content]);
    let stored_day = NaiveDate::from_num_days_from_ce_opt(r.i32());
    let as_of = r.i64();
    if stored_day != Some(day) {
        return Err(corrupt());
    }
    let mut segment = Segment::empty(day, as_of);
    for _ in 0..r.count() {
        segment.names.push(r.str().into());
    }
    let rows = r.count();
    let mut customers = Vec::with_capacity(rows);
    for _ in 0..rows {
        let id = r.str();
        let name = r.bytes();
        // Where the name lies in the body (attached to the tenant's customers later).
        let start = name.as_ptr() as usize - body.as_ptr() as usize;
        customers.push((start as u32, (start + name.len()) as u32));
        let opened_at = r.i64();
        let active = Span {
            start: r.time(opened_at),
            end: r.time(opened_at),
        };
        let live_until = r.opt_time(opened_at).unwrap_or(OPEN_END);
        let blob = r.bytes();
        if r.is_corrupt() || (!segment.is_empty() && segment.id(segment.len() - 1) >= id) {
            return Err(corrupt());
        }
        let hot = Hot {
            opened_at,
            active,
            live_until,
        };
        segment.push(id, hot, 0, blob);
    }
    if r.is_corrupt() || !r.at_end() {
        return Err(corrupt());
    }
    Ok(Parsed {
        segment,
        body,
        customers,
    })
}

impl Parsed {
    /// The segment with the tenant's ids: `symbols` gives the id of a symbol name, customers
    /// are interned into the tenant's table.
    pub fn attach(mut self, symbols: &mut impl FnMut(&str) -> u32, customers: &mut Interner) -> Segment {
        let seg = &mut self.segment;
        seg.tenant_syms = std::iter::once(0)
            .chain(seg.names[1..].iter().map(|n| symbols(n)))
            .collect();
        let body = &self.body;
        seg.set_customers(|row| {
            let (start, end) = self.customers[row];
            customers.intern(std::str::from_utf8(&body[start as usize..end as usize]).unwrap_or(""))
        });
        seg.seal_sorted();
        seg.unpersisted = 0.into();
        self.segment
    }
}

/// [`parse`] and [`Parsed::attach`] in one step.
pub fn decode(
    day: NaiveDate,
    bytes: &[u8],
    symbols: &mut impl FnMut(&str) -> u32,
    customers: &mut Interner,
) -> Result<Segment, CorruptSnapshot> {
    Ok(parse(day, bytes.to_vec())?.attach(symbols, customers))
}
