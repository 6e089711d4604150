//! Lookups across a tenant's days by customer, built once per computation from the segments'
//! hot columns: repeat contacts (docs/metrics.md §5 FCR) and conversion attribution.
//!
//! Customers are dense ids, so each lookup table is a compressed sparse row (CSR) structure: one
//! offset per customer into one array of items, filled by a counting sort in linear time.

use std::{collections::HashSet, sync::Arc};

use super::ConversionRec;
use crate::domain::time::{Micros, Span};
use crate::engine::segment::{Segment, Sym};

/// The slot of each customer the lookups hold, `0..len`: its id, or, when the lookups know
/// which customers they will be asked about, its rank among them (a computation asking about a
/// few hundred customers of a tenant of a million then builds tables of a few hundred slots).
enum Slots {
    Ids(usize),
    Ranks {
        bits: Vec<u64>,
        /// Asked customers in the words before each word of `bits`.
        before: Vec<u32>,
        len: usize,
    },
}

impl Slots {
    fn ranks(bits: Vec<u64>) -> Self {
        let mut before = Vec::with_capacity(bits.len());
        let mut len = 0;
        for w in &bits {
            before.push(len as u32);
            len += w.count_ones() as usize;
        }
        Slots::Ranks { bits, before, len }
    }

    fn len(&self) -> usize {
        match self {
            Slots::Ids(n) => *n,
            Slots::Ranks { len, .. } => *len,
        }
    }

    /// Whether the lookups hold `customer`.
    fn hold(&self, customer: u32) -> bool {
        let c = customer as usize;
        match self {
            Slots::Ids(n) => c < *n,
            Slots::Ranks { bits, .. } => bits.get(c / 64).is_some_and(|w| w & (1 << (c % 64)) != 0),
        }
    }

    /// The slot of `customer`, if the lookups hold it.
    fn of(&self, customer: u32) -> Option<usize> {
        let c = customer as usize;
        match self {
            Slots::Ids(n) => (c < *n).then_some(c),
            Slots::Ranks { bits, before, .. } => {
                let (word, bit) = (*bits.get(c / 64)?, c % 64);
                (word & (1 << bit) != 0)
                    .then(|| before[c / 64] as usize + (word & ((1 << bit) - 1)).count_ones() as usize)
            }
        }
    }
}

/// Asks the processor to bring the cache line of `value` in (a hint: it changes no result).
fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing and cannot fault; the pointer comes from a reference.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(value).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// Items grouped by customer slot.
struct Csr<T> {
    starts: Vec<u32>,
    items: Vec<T>,
}

impl<T: Copy + Default> Csr<T> {
    /// Groups `(customer, item)` pairs (of customers `slots` holds: the others are left out);
    /// items of one customer keep their input order.
    fn build(slots: &Slots, pairs: &[(u32, T)]) -> Self {
        // Counts, summed up to each slot's end; filled backwards, each slot's end moves down
        // to its start.
        let mut starts = vec![0u32; slots.len() + 1];
        let slotted = || pairs.iter().filter_map(|(c, item)| Some((slots.of(*c)?, *item)));
        for (s, _) in slotted() {
            starts[s] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut items = vec![T::default(); starts[slots.len()] as usize];
        for (s, item) in slotted().rev() {
            let start = &mut starts[s];
            *start -= 1;
            items[*start as usize] = item;
        }
        Self { starts, items }
    }

    /// Asks the memory for the bounds of slot `s` ([`prefetch`]).
    fn prefetch_bounds(&self, s: usize) {
        if let Some(b) = self.starts.get(s) {
            prefetch(b);
        }
    }

    /// Asks the memory for the first items of slot `s`, whose bounds were asked for before.
    fn prefetch_items(&self, s: usize) {
        if let Some(item) = self.starts.get(s).and_then(|&a| self.items.get(a as usize)) {
            prefetch(item);
        }
    }

    fn of(&self, slots: &Slots, customer: u32) -> &[T] {
        let Some(s) = slots.of(customer) else {
            return &[];
        };
        match (self.starts.get(s), self.starts.get(s + 1)) {
            (Some(&a), Some(&b)) => &self.items[a as usize..b as usize],
            _ => &[],
        }
    }
}

/// What a computation's lookups will be asked about, when it knows before they are built: a
/// computation that reuses kept totals asks about the customers of the few rows it scans and
/// of the totals it corrects, at resolutions in a few days, and its lookups read those days.
pub(super) struct Asked {
    /// Customers, one bit per customer id: the others' items are left out.
    pub customers: Vec<u64>,
    /// Every resolution asked about lies in `[start, end]`: openings outside it and the repeat
    /// window after it are left out.
    pub resolutions: Span,
}

/// The per-customer lookups of one computation.
pub(super) struct Joins {
    /// Which customers the tables below hold, and at which slot.
    slots: Slots,
    /// Open times of the conversations opened in the lookahead range, per customer.
    opens: Csr<Micros>,
    /// Zero disables the repeat check (docs/metrics.md §5).
    repeat_window: Micros,
    /// Conversions of the kinds asked for, per customer, by time: (time, index into the
    /// computation's conversions). The time is kept beside the index so that finding a
    /// customer's conversions in an attribution window reads one run of memory, not one
    /// random conversion per candidate.
    conversions: Csr<(Micros, u32)>,
    /// Customers with such a conversion, one bit each: most openers have none, and this small
    /// table answers that without touching the large one.
    converting: Vec<u64>,
    attribution_window: Micros,
}

impl Joins {
    /// `lookahead`: conversations opened in it may be repeat contacts; `conversions` are the
    /// tenant's (sorted by time), of which those in `conversion_range` and of `kinds` (all when
    /// `None`) can be attributed. `asked`, when given, says what the lookups will be asked
    /// about: the rest is left out.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        segments: &[Arc<Segment>],
        customers: usize,
        lookahead: Span,
        repeat_window: Micros,
        conversions: &[ConversionRec],
        conversion_range: Span,
        kinds: Option<&HashSet<Sym>>,
        attribution_window: Micros,
        asked: Option<&Asked>,
    ) -> Self {
        let slots = match asked {
            Some(a) => Slots::ranks(a.customers.clone()),
            None => Slots::Ids(customers),
        };
        // A repeat contact of a resolution at `t` is opened in `(t, t + repeat_window]`.
        let lookahead = match asked {
            Some(a) => Span {
                start: lookahead.start.max(a.resolutions.start),
                end: (lookahead.end).min(a.resolutions.end.saturating_add(repeat_window).saturating_add(1)),
            },
            None => lookahead,
        };
        let mut opens: Vec<(u32, Micros)> = Vec::new();
        if repeat_window > 0 {
            let read: Vec<&Arc<Segment>> = segments
                .iter()
                .filter(|seg| seg.bounds.opened_in(lookahead.start, lookahead.end))
                .collect();
            if asked.is_none() {
                opens.reserve(read.iter().map(|seg| seg.len()).sum());
            }
            for seg in read {
                for (opened, customer) in seg.openings() {
                    if customer != 0 && lookahead.contains(opened) && slots.hold(customer) {
                        opens.push((customer, opened));
                    }
                }
            }
        }
        let opens = Csr::build(&slots, &opens);
        let first = conversions.partition_point(|c| c.at < conversion_range.start);
        let pairs: Vec<(u32, (Micros, u32))> = conversions[first..]
            .iter()
            .enumerate()
            .take_while(|(_, c)| c.at < conversion_range.end)
            .filter(|(_, c)| kinds.is_none_or(|k| k.contains(&c.kind)) && slots.hold(c.customer))
            .map(|(i, c)| (c.customer, (c.at, (first + i) as u32)))
            .collect();
        let mut converting = vec![0u64; customers.div_ceil(64)];
        for (c, _) in &pairs {
            converting[*c as usize / 64] |= 1 << (*c % 64);
        }
        Self {
            opens,
            repeat_window,
            conversions: Csr::build(&slots, &pairs),
            converting,
            slots,
            attribution_window,
        }
    }

    /// Asks the memory for what looking `customer` up will read first: the bounds of its
    /// openings and conversions. A scan asks this some rows ahead, then [`Joins::prefetch_items`]
    /// fewer rows ahead, so that the lookups of a row find their lines in cache (the tables of a
    /// tenant of millions of customers are far larger than the caches, and each lookup was two
    /// misses: a third of a cold 10 M overview's CPU, BENCHMARKS.md).
    pub fn prefetch_bounds(&self, customer: u32) {
        if let Some(s) = self.slots.of(customer) {
            self.opens.prefetch_bounds(s);
            if self.is_converting(customer) {
                self.conversions.prefetch_bounds(s);
            }
        }
    }

    /// Asks the memory for the first openings and conversions of `customer`, after
    /// [`Joins::prefetch_bounds`].
    pub fn prefetch_items(&self, customer: u32) {
        if let Some(s) = self.slots.of(customer) {
            self.opens.prefetch_items(s);
            if self.is_converting(customer) {
                self.conversions.prefetch_items(s);
            }
        }
    }

    fn is_converting(&self, customer: u32) -> bool {
        let word = self.converting.get(customer as usize / 64).copied().unwrap_or(0);
        word & (1 << (customer % 64)) != 0
    }

    /// Whether another conversation of `customer` was opened in `(resolved_at, resolved_at +
    /// repeat_window]` (docs/metrics.md §5 repeat contact). A conversation is never its own repeat
    /// contact: when its own `opened_at` is in that range (a `conversation_opened` stamped
    /// after the resolution) it is counted out.
    pub fn repeat(&self, customer: u32, resolved_at: Micros, own_opened_at: Micros) -> bool {
        self.repeat_given(customer, resolved_at, self.own_inside(resolved_at, own_opened_at))
    }

    /// Whether a conversation opened at `own_opened_at` lies in the repeat range of its own
    /// resolution at `resolved_at` (then it is counted out of [`Joins::repeat`]).
    pub fn own_inside(&self, resolved_at: Micros, own_opened_at: Micros) -> bool {
        let limit = resolved_at.saturating_add(self.repeat_window);
        resolved_at < own_opened_at && own_opened_at <= limit
    }

    /// [`Joins::repeat`], told whether the conversation's own opening is in the range.
    pub fn repeat_given(&self, customer: u32, resolved_at: Micros, own_inside: bool) -> bool {
        if self.repeat_window == 0 || customer == 0 {
            return false;
        }
        let limit = resolved_at.saturating_add(self.repeat_window);
        let opens = self.opens.of(&self.slots, customer);
        let inside = opens.iter().filter(|t| resolved_at < **t && **t <= limit).count();
        inside > usize::from(own_inside)
    }

    /// Appends the conversions of `customer` in `[opened_at, opened_at + attribution_window]`
    /// (docs/metrics.md §5 conversion rate) to `out`.
    pub fn attributed(&self, customer: u32, opened_at: Micros, out: &mut Vec<u32>) {
        if !self.is_converting(customer) {
            return;
        }
        let end = opened_at.saturating_add(self.attribution_window);
        out.extend(
            self.conversions
                .of(&self.slots, customer)
                .iter()
                .skip_while(|(at, _)| *at < opened_at)
                .take_while(|(at, _)| *at <= end)
                .map(|(_, i)| *i),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        event::Channel,
        testkit::{Conv, t},
        time::micros,
    };
    use crate::engine::testkit::Dataset;

    const DAY: i64 = 86_400;

    /// The instant `days` days after the first opening.
    fn day(days: i64) -> Micros {
        micros(t(days * DAY))
    }

    /// Lookups of a customer who opens conversations at the start of days `days`, repeat window
    /// 7 days, asked about `asked` (all when `None`).
    fn lookups(days: &[i64], asked: Option<Span>) -> (Joins, u32) {
        let mut ds = Dataset::new();
        for d in days {
            ds.upsert(
                &Conv::of(&format!("c{d}"), "cust")
                    .opened("o", d * DAY, Channel::Email)
                    .facts(),
            );
        }
        ds.finish();
        let data = ds.data();
        let customer = ds.customers.get("cust").unwrap();
        let asked = asked.map(|resolutions| Asked {
            customers: vec![!0; data.customers.div_ceil(64)],
            resolutions,
        });
        let everything = Span {
            start: day(0),
            end: day(100),
        };
        let joins = Joins::new(
            &data.segments,
            data.customers,
            everything,
            day(7) - day(0),
            &data.conversions,
            everything,
            None,
            0,
            asked.as_ref(),
        );
        (joins, customer)
    }

    #[test]
    fn lookups_asked_about_some_resolutions_answer_for_those_as_complete_lookups_do() {
        let days = [0, 3, 9, 20];
        let asked = Span {
            start: day(2) - 1,
            end: day(2),
        };
        let (all, customer) = lookups(&days, None);
        let (narrow, _) = lookups(&days, Some(asked));
        // Resolutions at the asked instants: the openings of days 3 and 9 (the last one
        // exactly 7 days after a resolution at day 2) are found by both.
        for at in [asked.start, asked.end] {
            assert_eq!(
                narrow.repeat_given(customer, at, false),
                all.repeat_given(customer, at, false)
            );
            assert_eq!(
                narrow.repeat_given(customer, at, true),
                all.repeat_given(customer, at, true)
            );
        }
        assert!(narrow.repeat_given(customer, asked.end, true), "days 3 and 9");
        // Beyond what was asked, day 20 was left out.
        let later = day(15);
        assert!(all.repeat_given(customer, later, false));
        assert!(!narrow.repeat_given(customer, later, false));
    }

    #[test]
    fn a_customers_attributed_conversions_are_those_from_the_opening_to_the_window_end_inclusive() {
        let conversion = |customer, at| ConversionRec {
            at,
            customer,
            kind: 0,
            value_minor: None,
            currency: 0,
        };
        let (opened, window) = (day(10), day(7) - day(0));
        // Sorted by time, as a computation's are; customer 2's interleave with customer 1's.
        let conversions = [
            conversion(1, day(9)),
            conversion(2, day(10)),
            conversion(1, opened - 1),
            conversion(1, opened),
            conversion(1, day(14)),
            conversion(2, day(15)),
            conversion(1, opened + window),
            conversion(1, opened + window + 1),
        ];
        let everything = Span {
            start: day(0),
            end: day(100),
        };
        let joins = Joins::new(
            &[],
            3,
            everything,
            0,
            &conversions,
            everything,
            None,
            window,
            None,
        );
        let mut attributed = Vec::new();
        joins.attributed(1, opened, &mut attributed);
        let by_hand: Vec<u32> = conversions
            .iter()
            .enumerate()
            .filter(|(_, c)| c.customer == 1 && opened <= c.at && c.at <= opened + window)
            .map(|(i, _)| i as u32)
            .collect();
        assert_eq!(by_hand, [3, 4, 6]);
        assert_eq!(attributed, by_hand);
    }

    #[test]
    fn asked_customers_take_the_slots_of_their_rank_and_the_others_none() {
        let mut bits = vec![0u64; 3];
        for c in [3, 64, 130] {
            bits[c / 64] |= 1 << (c % 64);
        }
        let slots = Slots::ranks(bits);
        assert_eq!(slots.len(), 3);
        let of: Vec<Option<usize>> = [3, 64, 130, 4, 0, 129, 1000].map(|c| slots.of(c)).to_vec();
        assert_eq!(of, [Some(0), Some(1), Some(2), None, None, None, None]);
    }
}
