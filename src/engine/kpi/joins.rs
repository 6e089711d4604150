//! Lookups across a tenant's days by customer, built once per computation from the segments'
//! hot columns: repeat contacts (docs/metrics.md §5 FCR) and conversion attribution.
//!
//! Customers are dense ids, so each lookup table is a compressed sparse row (CSR) structure: one
//! offset per customer into one array of items, filled by a counting sort in linear time.

use std::{collections::HashSet, sync::Arc};

use super::ConversionRec;
use crate::domain::time::{Micros, Span};
use crate::engine::segment::{Segment, Sym};

/// Items grouped by customer id.
struct Csr<T> {
    starts: Vec<u32>,
    items: Vec<T>,
}

impl<T: Copy + Default> Csr<T> {
    /// Groups `(customer, item)` pairs; items of one customer keep their input order.
    fn build(customers: usize, pairs: &[(u32, T)]) -> Self {
        // Counts, summed up to each customer's end; filled backwards, each customer's end
        // moves down to its start.
        let mut starts = vec![0u32; customers + 1];
        for (c, _) in pairs {
            starts[*c as usize] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut items = vec![T::default(); pairs.len()];
        for (c, item) in pairs.iter().rev() {
            let slot = &mut starts[*c as usize];
            *slot -= 1;
            items[*slot as usize] = *item;
        }
        Self { starts, items }
    }

    fn of(&self, customer: u32) -> &[T] {
        match (
            self.starts.get(customer as usize),
            self.starts.get(customer as usize + 1),
        ) {
            (Some(&a), Some(&b)) => &self.items[a as usize..b as usize],
            _ => &[],
        }
    }
}

/// The per-customer lookups of one computation.
pub(super) struct Joins {
    /// Open times of the conversations opened in the lookahead range, per customer.
    opens: Csr<Micros>,
    /// Zero disables the repeat check (docs/metrics.md §5).
    repeat_window: Micros,
    /// Conversions of the kinds asked for, per customer, by time (indexes into the
    /// computation's conversions).
    conversions: Csr<u32>,
    /// Customers with such a conversion, one bit each: most openers have none, and this small
    /// table answers that without touching the large one.
    converting: Vec<u64>,
    attribution_window: Micros,
}

impl Joins {
    /// `lookahead`: conversations opened in it may be repeat contacts; `conversions` are the
    /// tenant's (sorted by time), of which those in `conversion_range` and of `kinds` (all when
    /// `None`) can be attributed. `asked` (one bit per customer id), when given, holds every
    /// customer the lookups will be asked about: the others' items are left out.
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
        asked: Option<&[u64]>,
    ) -> Self {
        let wanted = |c: u32| {
            asked.is_none_or(|bits| {
                bits.get(c as usize / 64)
                    .is_some_and(|w| w & (1 << (c % 64)) != 0)
            })
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
                for (&opened, &customer) in seg.opened_at.iter().zip(&seg.customer) {
                    if customer != 0 && lookahead.contains(opened) && wanted(customer) {
                        opens.push((customer, opened));
                    }
                }
            }
        }
        let opens = Csr::build(customers, &opens);
        let first = conversions.partition_point(|c| c.at < conversion_range.start);
        let pairs: Vec<(u32, u32)> = conversions[first..]
            .iter()
            .enumerate()
            .take_while(|(_, c)| c.at < conversion_range.end)
            .filter(|(_, c)| kinds.is_none_or(|k| k.contains(&c.kind)) && wanted(c.customer))
            .map(|(i, c)| (c.customer, (first + i) as u32))
            .collect();
        let mut converting = vec![0u64; customers.div_ceil(64)];
        for (c, _) in &pairs {
            converting[*c as usize / 64] |= 1 << (*c % 64);
        }
        Self {
            opens,
            repeat_window,
            conversions: Csr::build(customers, &pairs),
            converting,
            attribution_window,
        }
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
        let opens = self.opens.of(customer);
        let inside = opens.iter().filter(|t| resolved_at < **t && **t <= limit).count();
        inside > usize::from(own_inside)
    }

    /// Appends the conversions of `customer` in `[opened_at, opened_at + attribution_window]`
    /// (docs/metrics.md §5 conversion rate) to `out`.
    pub fn attributed(
        &self,
        customer: u32,
        opened_at: Micros,
        conversions: &[ConversionRec],
        out: &mut Vec<u32>,
    ) {
        let word = self.converting.get(customer as usize / 64).copied().unwrap_or(0);
        if word & (1 << (customer % 64)) == 0 {
            return;
        }
        let end = opened_at.saturating_add(self.attribution_window);
        out.extend(
            self.conversions
                .of(customer)
                .iter()
                .copied()
                .skip_while(|i| conversions[*i as usize].at < opened_at)
                .take_while(|i| conversions[*i as usize].at <= end),
        );
    }
}
