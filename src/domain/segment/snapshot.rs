//! The persisted form of a [`Segment`] (`segments.body`): what a replica loads after a restart
//! instead of decoding every stored conversation record again.
//!
//! Layout: magic and version, the day, the database xmin the segment is complete for, the
//! segment-local symbol names, then per row its conversation id, customer name, hot columns and
//! blob. Loading maps names to the loading tenant's ids and checks every row, so a damaged
//! snapshot is refused (and rebuilt from the conversation records) instead of giving wrong
//! numbers. A snapshot is derived data: deleting it loses nothing.

use chrono::{Datelike, NaiveDate};

use super::{Segment, row::Hot};
use crate::domain::{
    codec::{Reader, Writer},
    intern::Interner,
    time::{OPEN_END, Span},
};

const MAGIC: &[u8; 4] = b"CKS1";

/// A snapshot that cannot be loaded.
#[derive(Debug, thiserror::Error)]
#[error("segment snapshot of {0} is damaged or of an unknown version")]
pub struct CorruptSnapshot(pub NaiveDate);

/// Serializes `segment`; `customers` names its customer ids.
pub fn encode(segment: &Segment, customers: &Interner) -> Vec<u8> {
    let mut w = Writer::new();
    w.buf
        .reserve(segment.blob.len() + segment.ids.len() + segment.len() * 32);
    w.buf.extend_from_slice(MAGIC);
    w.i64(i64::from(segment.day.num_days_from_ce()));
    w.i64(segment.as_of);
    w.count(segment.names.len() - 1);
    for name in &segment.names[1..] {
        w.bytes(name.as_bytes());
    }
    w.count(segment.len());
    for row in 0..segment.len() {
        let hot = segment.hot(row);
        w.bytes(segment.id(row).as_bytes());
        w.bytes(customers.name(segment.customer[row]).as_bytes());
        w.i64(hot.opened_at);
        w.time(hot.opened_at, hot.active.start);
        w.time(hot.opened_at, hot.active.end);
        w.opt_time(
            hot.opened_at,
            (hot.live_until != OPEN_END).then_some(hot.live_until),
        );
        w.bytes(segment.blob(row));
    }
    w.buf
}

/// Loads a snapshot for `day`; `symbols` gives the tenant id of a symbol name and customers are
/// interned into the tenant's table.
pub fn decode(
    day: NaiveDate,
    bytes: &[u8],
    symbols: &mut impl FnMut(&str) -> u32,
    customers: &mut Interner,
) -> Result<Segment, CorruptSnapshot> {
    let corrupt = || CorruptSnapshot(day);
    if bytes.get(..4) != Some(MAGIC.as_slice()) {
        return Err(corrupt());
    }
    let mut r = Reader::new(&bytes[4..]);
    let stored_day = NaiveDate::from_num_days_from_ce_opt(r.i32());
    let as_of = r.i64();
    if stored_day != Some(day) {
        return Err(corrupt());
    }
    let mut segment = Segment::empty(day, as_of);
    for _ in 0..r.count() {
        let name = r.str();
        segment.names.push(name.into());
        segment.tenant_syms.push(symbols(name));
    }
    let rows = r.count();
    segment.reserve(rows, bytes.len());
    for _ in 0..rows {
        let id = r.str();
        let customer = customers.intern(r.str());
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
        segment.push(id, hot, customer, blob);
    }
    if r.is_corrupt() || !r.at_end() || !segment.check() {
        return Err(corrupt());
    }
    segment.shrink();
    segment.unpersisted = 0.into();
    Ok(segment)
}
