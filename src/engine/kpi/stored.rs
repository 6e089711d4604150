//! Kept totals as persisted beside their day's snapshot (`kept_totals`), so a restarted replica
//! reads a settled day's totals instead of computing them from its rows again (BENCHMARKS.md,
//! "A 10 M restart").
//!
//! Ids are the process's own, so the body names everything relative to the day's segment as
//! persisted: a customer as the place in id order of the first row of the segment with that
//! customer (every customer the totals hold or read is one of the segment's own,
//! [`super::partial`]), a symbol by its name.
//! Attributed conversions are indexes into the tenant's conversion list, which is the same list
//! only when loaded from the same side snapshot with nothing since.
//!
//! Totals are exact for exactly the data they were computed from: their own day's rows and what
//! they read beyond it (openings of other days inside their span, conversions). The [`Basis`]
//! names that data by snapshot: the `built_xmin` of every day whose openings lie in the span
//! read, and of the side snapshot. A restarted replica uses the totals only when their own day
//! is held exactly as its snapshot, and every other day whose openings they read (then or now)
//! and the side snapshot are held as the snapshots of the basis, perhaps with records or
//! conversions stored since merged on top: those are written to the change log
//! ([`super::partial::Changes`]) after the totals are read back, so totals that read one of
//! their customers are computed again, and from then on the log tracks them like any kept
//! totals. A conversion stored since and dated before the side snapshot's last moves the places
//! of the later ones: the places read back are moved past it ([`decode`]'s `inserted`).
//! Anything else (a damaged body, a day of their own that changed, a day that appeared) leaves
//! them unused: the day is computed from its rows, as without them.
//!
//! Layout: magic and version, the shape, which rows (kind and number), the basis, the groups
//! (key, then every [`Acc`] field), the two reads; last, a CRC-32 of everything before it.
//! Customer lists are sets, written as ascending places (each the difference from the one
//! before); durations as sorted whole microseconds likewise (`Durations::write_to`).
//! Ledgers of repeat-contact verdicts are not persisted: a restored day whose returning
//! customers' openings change is computed again instead of corrected.

use std::sync::Arc;

use chrono::{Datelike, NaiveDate};

use super::{
    GroupKey,
    acc::{Acc, EndedMessages, Groups, SlaAcc},
    partial::{KeptRows, Partial, Read},
};
use crate::domain::{
    event::{Channel, Priority},
    time::Span,
};
use crate::engine::{
    codec::{Reader, Writer},
    intern::Interner,
    segment::{MessageTotals, Segment},
    stats::Durations,
};

const MAGIC: &[u8; 4] = b"CKT2";

/// The snapshots kept totals were computed from (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Basis {
    /// `built_xmin` of every day whose openings the totals could read (their own included),
    /// sorted by day.
    pub days: Vec<(NaiveDate, i64)>,
    /// `built_xmin` of the side snapshot, when the totals read or hold conversions.
    pub side: Option<i64>,
}

/// Persisted totals, read back.
pub struct Restored {
    pub shape: Arc<str>,
    pub rows: KeptRows,
    pub basis: Basis,
    groups: Groups,
    openings: Read,
    conversions: Read,
}

/// A body that is not what [`encode`] writes.
#[derive(Debug, thiserror::Error)]
#[error("damaged kept totals: {0}")]
pub struct Damaged(&'static str);

/// Whether `p` holds or reads conversions (then its basis needs the side snapshot).
pub fn reads_conversions(p: &Partial) -> bool {
    !p.conversions.customers.is_empty()
        || p.groups
            .accs()
            .iter()
            .any(|(_, a)| !a.attributed.is_empty() || !a.converted.is_empty())
}

/// The body of `p`, totals of `seg` (as persisted) for the question `shape`; `None` when a
/// customer they name is not one of the segment's, or they are not of a day's kept rows.
pub fn encode(shape: &str, p: &Partial, seg: &Segment, symbols: &Interner, basis: &Basis) -> Option<Vec<u8>> {
    let (kind, n) = match p.rows {
        KeptRows::Inside(n) => (0, n),
        KeptRows::Before(n) => (1, n),
        KeptRows::Edge { .. } => return None,
    };
    // Rows are named by their place in id order, the order a snapshot stores and loads them in.
    let by_id: Vec<usize> = seg.rows_by_id().collect();
    let mut first_row: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
    for (place, row) in by_id.iter().enumerate().rev() {
        first_row.insert(seg.customer(*row), place as u64 + 1);
    }
    first_row.insert(0, 0);
    let mut out = Ids {
        w: Writer::new(),
        rows: &first_row,
        symbols,
        missing: false,
    };
    out.w.buf.extend_from_slice(MAGIC);
    out.w.bytes(shape.as_bytes());
    out.w.u8(kind);
    out.w.count(n);
    out.w.count(basis.days.len());
    for (day, xmin) in &basis.days {
        out.w.i64(i64::from(day.num_days_from_ce()));
        out.w.i64(*xmin);
    }
    match basis.side {
        Some(x) => {
            out.w.u8(1);
            out.w.i64(x);
        }
        None => out.w.u8(0),
    }
    let groups = Partial::merged_groups(&[], &[p]);
    out.w.count(groups.accs().len());
    for (key, acc) in groups.accs() {
        out.key(key);
        out.acc(acc);
    }
    out.read(&p.openings);
    out.read(&p.conversions);
    if out.missing {
        return None;
    }
    let mut buf = out.w.buf;
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    Some(buf)
}

/// A segment's rows in id order (what places in a body name), made once for all the bodies of
/// the segment.
pub struct Places(Vec<usize>);

impl Places {
    pub fn of(seg: &Segment) -> Places {
        Places(seg.rows_by_id().collect())
    }
}

/// Reads a body [`encode`] wrote for `seg` (whose [`Places`] are `places`), naming symbols with
/// `symbols`.
///
/// `inserted`: for each conversion the tenant's list gained since the side snapshot of the
/// basis, in list order, how many of the snapshot's conversions precede it (empty when none
/// did); the attributed conversions read back are moved past those inserted before them, and
/// must be among the `held` conversions of the tenant.
pub fn decode(
    body: &[u8],
    seg: &Segment,
    places: &Places,
    (inserted, held): (&[u32], usize),
    symbols: &mut impl FnMut(&str) -> u32,
) -> Result<Restored, Damaged> {
    let Some((data, crc)) = body.split_last_chunk::<4>() else {
        return Err(Damaged("too short"));
    };
    if crc32fast::hash(data) != u32::from_le_bytes(*crc) {
        return Err(Damaged("checksum"));
    }
    let Some(data) = data.strip_prefix(MAGIC) else {
        return Err(Damaged("magic"));
    };
    let mut r = Reader::new(data);
    let shape: Arc<str> = r.str().into();
    // A number of rows, not a length: read plainly (it may exceed the body's bytes).
    let rows = match (r.u8(), r.u64() as usize) {
        (0, n) => KeptRows::Inside(n),
        (1, n) => KeptRows::Before(n),
        _ => return Err(Damaged("rows")),
    };
    let days = (0..r.count())
        .map(|_| {
            let day = i32::try_from(r.i64())
                .ok()
                .and_then(NaiveDate::from_num_days_from_ce_opt)
                .unwrap_or_default();
            (day, r.i64())
        })
        .collect();
    let side = match r.u8() {
        0 => None,
        _ => Some(r.i64()),
    };
    let mut ids = Names {
        r,
        seg,
        by_id: &places.0,
        bits: Vec::new(),
        inserted,
        held,
        outside: false,
        symbols,
    };
    let groups = (0..ids.r.count())
        .map(|_| {
            let key = ids.key();
            (key, ids.acc())
        })
        .collect();
    let openings = ids.read();
    let conversions = ids.read();
    if ids.r.is_corrupt() || !ids.r.at_end() {
        return Err(Damaged("body"));
    }
    if ids.outside {
        return Err(Damaged("an attributed conversion the tenant does not hold"));
    }
    Ok(Restored {
        shape,
        rows,
        basis: Basis { days, side },
        groups: Groups::from_accs(groups),
        openings,
        conversions,
    })
}

impl Restored {
    /// The totals, as those of segment version `from` valid at the change log's version `at`.
    pub fn into_partial(self, from: u64, at: u64) -> Partial {
        Partial {
            groups: Arc::new(self.groups),
            moved: Vec::new(),
            from,
            rows: self.rows,
            at,
            openings: self.openings,
            conversions: self.conversions,
            ledgers: None,
        }
    }
}

/// Writes ids relative to the segment.
struct Ids<'a> {
    w: Writer,
    rows: &'a std::collections::HashMap<u32, u64>,
    symbols: &'a Interner,
    /// A customer that is not one of the segment's was met.
    missing: bool,
}

impl Ids<'_> {
    /// A customer list as places, ascending, each as its difference from the one before
    /// (mostly one byte: a day's customers are most of its rows). Lists are sets: their order is
    /// not kept.
    fn customers(&mut self, list: &[u32]) {
        let mut places: Vec<u64> = list
            .iter()
            .map(|c| match self.rows.get(c) {
                Some(place) => *place,
                None => {
                    self.missing = true;
                    0
                }
            })
            .collect();
        places.sort_unstable();
        self.w.count(places.len());
        let mut before = 0;
        for p in places {
            self.w.u64(p - before);
            before = p;
        }
    }

    fn symbol(&mut self, sym: u32) {
        self.w.bytes(self.symbols.name(sym).as_bytes());
    }

    fn key(&mut self, key: &GroupKey) {
        match *key {
            GroupKey::All => self.w.u8(0),
            GroupKey::Value(sym) => {
                self.w.u8(1);
                self.symbol(sym);
            }
            GroupKey::Channel(c) => {
                self.w.u8(2);
                self.w.bytes(c.as_str().as_bytes());
            }
            GroupKey::Priority(p) => {
                self.w.u8(3);
                self.w.bytes(p.as_str().as_bytes());
            }
            GroupKey::Number(n) => {
                self.w.u8(4);
                self.w.u64(u64::from(n));
            }
            GroupKey::Bucket(t) => {
                self.w.u8(5);
                self.w.i64(t);
            }
            GroupKey::Policy(i) => {
                self.w.u8(6);
                self.w.u64(u64::from(i));
            }
        }
    }

    /// A byte codec, one function on purpose: it writes every field of [`Acc`] in the order
    /// [`Names::acc`] reads them, and the two are read side by side.
    fn acc(&mut self, a: &Acc) {
        // Taken apart, so a field added to `Acc` and left out here does not compile.
        #[rustfmt::skip]
        let Acc {
            conversations, messages, frt, bot_frt, human_frt, reply, wait, resolution, duration,
            resolved, resolutions, fcr, repeat, reopened, with_customer_message, missed,
            abandoned, ended, ended_messages, csat, nps, ces, surveys_sent, no_human_resolved,
            bot_resolutions, bot_involved, bot_and_human, customers, converted, attributed,
            previous_customers, tags, channels, sla,
        } = a;
        let MessageTotals {
            received,
            sent,
            delivered,
            read,
            failed,
        } = messages;
        let EndedMessages { customer, agent, bot } = ended_messages;
        for n in [
            conversations,
            resolved,
            resolutions,
            fcr,
            repeat,
            reopened,
            with_customer_message,
            missed,
            abandoned,
            ended,
            no_human_resolved,
            bot_resolutions,
            bot_involved,
            bot_and_human,
            received,
            sent,
            delivered,
            read,
            failed,
            customer,
            agent,
            bot,
        ] {
            self.w.u64(*n);
        }
        for n in surveys_sent.iter().chain(channels) {
            self.w.u64(*n);
        }
        for d in [frt, bot_frt, human_frt, reply, wait, resolution, duration] {
            d.write_to(&mut self.w);
        }
        self.w.count(csat.len());
        for (score, min, max) in csat {
            for v in [score, min, max] {
                self.w.i64(i64::from(*v));
            }
        }
        self.w.count(nps.len());
        for v in nps {
            self.w.i64(i64::from(*v));
        }
        self.w.count(ces.len());
        for v in ces {
            self.w.f64(*v);
        }
        for list in [customers, converted, previous_customers] {
            self.customers(list);
        }
        self.w.count(attributed.len());
        for i in attributed {
            self.w.u64(u64::from(*i));
        }
        self.w.count(tags.len());
        for (tag, n) in tags {
            self.symbol(*tag);
            self.w.u64(*n);
        }
        for s in sla {
            let SlaAcc {
                achieved,
                breached,
                over,
            } = s;
            self.w.u64(*achieved);
            self.w.u64(*breached);
            over.write_to(&mut self.w);
        }
    }

    fn read(&mut self, read: &Read) {
        self.customers(&read.customers);
        self.w.i64(read.span.start);
        self.w.i64(read.span.end);
    }
}

/// Reads ids relative to the segment.
struct Names<'a, 's, F> {
    r: Reader<'a>,
    seg: &'s Segment,
    /// Rows in id order.
    by_id: &'s [usize],
    /// A set of customer ids, reused by every list ([`sorted_distinct`]).
    bits: Vec<u64>,
    /// Conversions inserted since the snapshot, and how many are held ([`decode`]).
    inserted: &'s [u32],
    held: usize,
    /// An attributed conversion was past those held.
    outside: bool,
    symbols: &'s mut F,
}

impl<F: FnMut(&str) -> u32> Names<'_, '_, F> {
    /// The customer at `place` (0: none).
    fn customer(&mut self, place: u64) -> u32 {
        match place {
            0 => 0,
            place if place <= self.by_id.len() as u64 => self.seg.customer(self.by_id[place as usize - 1]),
            _ => {
                self.r.fail();
                0
            }
        }
    }

    /// A customer list, sorted and without repeats (what kept totals hold, [`Acc::shrink`]).
    fn customers(&mut self) -> Vec<u32> {
        let mut place = 0u64;
        let list: Vec<u32> = (0..self.r.count())
            .map(|_| {
                place = place.saturating_add(self.r.u64());
                self.customer(place)
            })
            .collect();
        sorted_distinct(list, &mut self.bits)
    }

    fn symbol(&mut self) -> u32 {
        let name = self.r.str();
        (self.symbols)(name)
    }

    fn key(&mut self) -> GroupKey {
        match self.r.u8() {
            0 => GroupKey::All,
            1 => GroupKey::Value(self.symbol()),
            2 => match Channel::parse(self.r.str()) {
                Some(c) => GroupKey::Channel(c),
                None => self.damaged(),
            },
            3 => match Priority::parse(self.r.str()) {
                Some(p) => GroupKey::Priority(p),
                None => self.damaged(),
            },
            4 => GroupKey::Number(self.r.u32()),
            5 => GroupKey::Bucket(self.r.i64()),
            6 => GroupKey::Policy(self.r.u32()),
            _ => self.damaged(),
        }
    }

    fn damaged(&mut self) -> GroupKey {
        self.r.fail();
        GroupKey::All
    }

    fn acc(&mut self) -> Acc {
        let mut a = Acc::default();
        let r = &mut self.r;
        let m = &mut a.messages;
        let e = &mut a.ended_messages;
        for n in [
            &mut a.conversations,
            &mut a.resolved,
            &mut a.resolutions,
            &mut a.fcr,
            &mut a.repeat,
            &mut a.reopened,
            &mut a.with_customer_message,
            &mut a.missed,
            &mut a.abandoned,
            &mut a.ended,
            &mut a.no_human_resolved,
            &mut a.bot_resolutions,
            &mut a.bot_involved,
            &mut a.bot_and_human,
            &mut m.received,
            &mut m.sent,
            &mut m.delivered,
            &mut m.read,
            &mut m.failed,
            &mut e.customer,
            &mut e.agent,
            &mut e.bot,
        ] {
            *n = r.u64();
        }
        for n in a.surveys_sent.iter_mut().chain(&mut a.channels) {
            *n = r.u64();
        }
        for d in [
            &mut a.frt,
            &mut a.bot_frt,
            &mut a.human_frt,
            &mut a.reply,
            &mut a.wait,
            &mut a.resolution,
            &mut a.duration,
        ] {
            *d = Durations::read_from(r);
        }
        a.csat = (0..r.count()).map(|_| (r.i32(), r.i32(), r.i32())).collect();
        a.nps = (0..r.count()).map(|_| r.i32()).collect();
        a.ces = (0..r.count()).map(|_| r.f64()).collect();
        a.customers = self.customers();
        a.converted = self.customers();
        a.previous_customers = self.customers();
        let (r, inserted) = (&mut self.r, self.inserted);
        a.attributed = (0..r.count())
            .map(|_| {
                let place = r.u32();
                place + inserted.partition_point(|before| *before <= place) as u32
            })
            .collect();
        self.outside |= a.attributed.iter().any(|place| *place as usize >= self.held);
        for _ in 0..self.r.count() {
            let tag = self.symbol();
            a.tags.insert(tag, self.r.u64());
        }
        for s in &mut a.sla {
            s.achieved = self.r.u64();
            s.breached = self.r.u64();
            s.over = Durations::read_from(&mut self.r);
        }
        a
    }

    fn read(&mut self) -> Read {
        let customers = self.customers();
        let span = Span {
            start: self.r.i64(),
            end: self.r.i64(),
        };
        Read { customers, span }
    }
}

/// `ids` sorted, without repeats. A day's customers are a third of a million ids in no order
/// (places follow conversation ids, not customers): sorting them was nearly all the time a
/// restart spent reading totals back (BENCHMARKS.md). Marked in a bitset of the ids' range and
/// read back in order instead, in time linear in the list and the range; a short list of a wide
/// range is sorted.
fn sorted_distinct(mut ids: Vec<u32>, bits: &mut Vec<u64>) -> Vec<u32> {
    let Some(&max) = ids.iter().max() else {
        return ids;
    };
    let words = max as usize / 64 + 1;
    if ids.len() * 16 < words {
        ids.sort_unstable();
        ids.dedup();
        return ids;
    }
    bits.clear();
    bits.resize(words, 0);
    for id in &ids {
        bits[*id as usize / 64] |= 1 << (id % 64);
    }
    ids.clear();
    for (w, word) in bits.iter().enumerate() {
        let mut left = *word;
        while left != 0 {
            ids.push((w * 64) as u32 + left.trailing_zeros());
            left &= left - 1;
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customer_lists_are_read_back_sorted_without_repeats_however_long() {
        let mut bits = Vec::new();
        let long: Vec<u32> = (0..5_000u32).map(|i| (i * 7_919) % 3_001).collect();
        let mut by_hand = long.clone();
        by_hand.sort_unstable();
        by_hand.dedup();
        assert_eq!(sorted_distinct(long, &mut bits), by_hand);
        assert_eq!(
            sorted_distinct(vec![9_000_000, 3, 3, 64], &mut bits),
            vec![3, 64, 9_000_000]
        );
        assert_eq!(sorted_distinct(vec![63, 0, 64, 63], &mut bits), vec![0, 63, 64]);
        assert!(sorted_distinct(Vec::new(), &mut bits).is_empty());
    }
}
