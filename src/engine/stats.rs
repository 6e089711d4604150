//! Duration statistics accumulated part by part (docs/metrics.md §5).
//!
//! [`Durations`] accumulates one KPI of one group. Count, mean, min, max and the share within a
//! target are always exact. Percentiles are exact while the group has at most
//! [`EXACT_PERCENTILES_UP_TO`] items; above that, every value is counted in a log-linear
//! histogram ([`LogHistogram`]) and percentiles come from it with less than 1 % relative error
//! (docs/metrics.md §5 allows 1 %). Which one applies depends only on the group's item count, so
//! the same question always gets the same answer.

pub use crate::domain::stats::*;
use crate::domain::stats::{PERCENTILES, exact_percentiles};
use crate::engine::codec::{Reader, Writer};

/// Groups with at most this many items get exact percentiles (see the module doc).
pub const EXACT_PERCENTILES_UP_TO: usize = 10_000;

/// Durations (seconds) of one KPI and one group, item by item or merged from parts.
#[derive(Debug, Clone)]
pub struct Durations {
    count: u64,
    /// Sum in whole microseconds: every duration is a difference of microsecond instants, so
    /// the mean is exact and independent of the order items came in.
    sum_micros: i128,
    min: f64,
    max: f64,
    /// Items at or under the KPI's target (counted as they are added).
    within: u64,
    /// Every value, while there are at most [`EXACT_PERCENTILES_UP_TO`].
    values: Vec<f64>,
    /// Counts per log bucket, once there are more (then `values` is empty).
    histogram: Option<Box<LogHistogram>>,
    /// `values` counted per log bucket (sparse), made when kept totals are shrunk: merged into
    /// a histogram, a kept part adds one count per bucket instead of one per value (a 30-day
    /// overview merges 30 days of a few thousand values per KPI). Empty, or exactly the
    /// buckets of `values`.
    binned: Vec<(u16, u32)>,
}

impl Default for Durations {
    fn default() -> Self {
        Self {
            count: 0,
            sum_micros: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            within: 0,
            values: Vec::new(),
            histogram: None,
            binned: Vec::new(),
        }
    }
}

/// A day's kept values are also binned from this many on (fewer are as cheap to add one by
/// one). A chunk's are binned only from [`BIN_CHUNK_FROM`]: they are merged into their day's
/// totals, which stay exact (and read the values, not the bins) unless the day has more than
/// [`EXACT_PERCENTILES_UP_TO`] values, so small bins would double a chunk's bytes for nothing.
pub const BIN_FROM: usize = 64;
/// See [`BIN_FROM`].
pub const BIN_CHUNK_FROM: usize = 1_024;

impl Durations {
    /// Adds one duration; `target` (seconds) counts it as within target when it is at or under.
    pub fn push(&mut self, v: f64, target: Option<f64>) {
        self.count += 1;
        self.sum_micros += (v * 1e6).round() as i64 as i128;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.within += u64::from(target.is_some_and(|t| v <= t));
        self.binned.clear();
        match &mut self.histogram {
            Some(h) => h.add(v, 1),
            None => {
                self.values.push(v);
                self.spill_if_large();
            }
        }
    }

    /// Adds another part's durations (`o` taken apart, so a new field left out here does not
    /// compile).
    pub fn merge(&mut self, o: &Durations) {
        let Durations {
            count,
            sum_micros,
            min,
            max,
            within,
            values,
            histogram,
            binned,
        } = o;
        self.count += count;
        self.sum_micros += sum_micros;
        self.min = self.min.min(*min);
        self.max = self.max.max(*max);
        self.within += within;
        self.binned.clear();
        if let Some(theirs) = histogram {
            self.histogram.get_or_insert_with(Box::default).merge(theirs);
        }
        match &mut self.histogram {
            Some(h) => {
                for v in self.values.drain(..) {
                    h.add(v, 1);
                }
                if binned.is_empty() {
                    for v in values {
                        h.add(*v, 1);
                    }
                } else {
                    h.add_sparse(binned);
                }
            }
            None => {
                self.values.extend_from_slice(values);
                self.spill_if_large();
            }
        }
    }

    /// Makes room for `total` values before parts are merged in: a histogram straight away
    /// when they will not stay exact, otherwise space for every value.
    pub fn prepare(&mut self, total: u64) {
        if self.histogram.is_some() {
            return;
        }
        if total as usize > EXACT_PERCENTILES_UP_TO {
            self.binned.clear();
            let mut h = Box::<LogHistogram>::default();
            for v in self.values.drain(..) {
                h.add(v, 1);
            }
            self.values = Vec::new();
            self.histogram = Some(h);
        } else {
            self.values.reserve(total as usize);
        }
    }

    fn spill_if_large(&mut self) {
        if self.values.len() > EXACT_PERCENTILES_UP_TO {
            self.prepare(self.values.len() as u64);
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Drops spare capacity and bins the values when there are at least `bin_from` (before the
    /// totals are kept).
    pub fn shrink(&mut self, bin_from: usize) {
        self.values.shrink_to_fit();
        if self.values.len() >= bin_from {
            self.binned = LogHistogram::sparse(&self.values);
        }
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.values.capacity() * 8
            + self.binned.capacity() * 8
            + self.histogram.as_ref().map_or(0, |h| h.heap_bytes())
    }

    /// Writes every field, as [`Self::read_from`] reads them (kept totals persisted with their
    /// day, `engine::kpi::stored`).
    pub fn write_to(&self, w: &mut Writer) {
        let Durations {
            count,
            sum_micros,
            min,
            max,
            within,
            values,
            histogram,
            binned,
        } = self;
        w.u64(*count);
        w.i64((*sum_micros >> 64) as i64);
        w.u64(*sum_micros as u64);
        w.f64(*min);
        w.f64(*max);
        w.u64(*within);
        write_values(values, w);
        match histogram {
            None => w.u8(0),
            Some(h) => {
                w.u8(1);
                w.u64(h.zero);
                w.u64(h.first as u64);
                w.count(h.counts.len());
                for c in &h.counts {
                    w.u64(*c);
                }
            }
        }
        w.count(binned.len());
        for (bucket, n) in binned {
            w.u64(u64::from(*bucket));
            w.u64(u64::from(*n));
        }
    }

    /// Reads what [`Self::write_to`] wrote; a value out of its domain (a histogram's range, a
    /// bucket) marks `r` corrupt instead of being kept.
    pub fn read_from(r: &mut Reader<'_>) -> Durations {
        let count = r.u64();
        let high = r.i64();
        let sum_micros = (i128::from(high) << 64) | i128::from(r.u64());
        let (min, max, within) = (r.f64(), r.f64(), r.u64());
        let values = read_values(r);
        let histogram = match r.u8() {
            0 => None,
            1 => {
                // `first` is a bucket, not a length: read plainly, checked below.
                let (zero, first, len) = (r.u64(), r.u64().min(BUCKETS as u64 + 1) as usize, r.count());
                let counts: Vec<u64> = (0..len).map(|_| r.u64()).collect();
                let whole = first % POWER == 0 && len % POWER == 0 && first + len <= BUCKETS;
                if !whole {
                    r.fail();
                }
                Some(Box::new(LogHistogram { zero, first, counts }))
            }
            _ => {
                r.fail();
                None
            }
        };
        let binned: Vec<(u16, u32)> = (0..r.count())
            .map(|_| {
                let (bucket, n) = (r.u64(), r.u32());
                match u16::try_from(bucket) {
                    Ok(b) if usize::from(b) < BUCKETS || b == ZERO => (b, n),
                    _ => {
                        r.fail();
                        (ZERO, 0)
                    }
                }
            })
            .collect();
        if values.len() > EXACT_PERCENTILES_UP_TO || (histogram.is_some() && !values.is_empty()) {
            r.fail();
        }
        Durations {
            count,
            sum_micros,
            min,
            max,
            within,
            values,
            histogram,
            binned,
        }
    }

    /// The statistics; `with_target` reports the share within target.
    pub fn stats(mut self, with_target: bool) -> DurationStats {
        if self.count == 0 {
            return DurationStats::default();
        }
        let n = self.count;
        let within_target = with_target.then(|| 100.0 * self.within as f64 / n as f64);
        let [p50, p90, p95, p99] = match &self.histogram {
            None => exact_percentiles(&mut self.values),
            Some(h) => h.percentiles(n, self.min, self.max),
        };
        DurationStats {
            count: n,
            mean: Some(self.sum_micros as f64 / 1e6 / n as f64),
            min: Some(self.min),
            max: Some(self.max),
            p50: Some(p50),
            p90: Some(p90),
            p95: Some(p95),
            p99: Some(p99),
            within_target,
        }
    }
}

/// Tags of [`write_values`]: whole microseconds, ascending, as differences; or every float.
const VALUES_MICROS: u8 = 0;
const VALUES_FLOATS: u8 = 1;

/// Durations are differences of microsecond instants in seconds (`micros / 1e6`), and their
/// order means nothing (percentiles sort them, sums add them): written as whole microseconds,
/// sorted, each as its difference from the one before, they take one to three bytes instead of
/// eight (the values of a 10 M tenant's day broken down by agent: 16 MB as floats). A value
/// that is not such a quotient is written as it is, and so are all of its list.
fn write_values(values: &[f64], w: &mut Writer) {
    let micros: Option<Vec<i64>> = values
        .iter()
        .map(|v| {
            let m = (v * 1e6).round();
            (m.abs() < 9e15 && m / 1e6 == *v).then_some(m as i64)
        })
        .collect();
    match micros {
        Some(mut micros) => {
            micros.sort_unstable();
            w.u8(VALUES_MICROS);
            w.count(micros.len());
            let mut before = 0;
            for m in micros {
                w.i64(m - before);
                before = m;
            }
        }
        None => {
            w.u8(VALUES_FLOATS);
            w.count(values.len());
            for v in values {
                w.f64(*v);
            }
        }
    }
}

fn read_values(r: &mut Reader<'_>) -> Vec<f64> {
    match r.u8() {
        VALUES_MICROS => {
            let mut at = 0i64;
            (0..r.count())
                .map(|_| {
                    at = at.wrapping_add(r.i64());
                    at as f64 / 1e6
                })
                .collect()
        }
        VALUES_FLOATS => (0..r.count()).map(|_| r.f64()).collect(),
        _ => {
            r.fail();
            Vec::new()
        }
    }
}

/// Counts of non-negative durations in log-linear buckets (as HdrHistogram and DDSketch do):
/// every power of two `[2^e, 2^(e+1))` is cut into 64 equal buckets, so a bucket is at most
/// 1/64 of its lower bound wide and its midpoint, the representative, is within 0.8 % of every
/// value in it. A value's bucket is read off its IEEE 754 bits (exponent and top six mantissa
/// bits), without a logarithm. Zero has its own bucket.
///
/// Only the powers of two between the smallest and the largest value counted are held (512
/// bytes each): durations of a support team span seconds to days, 18 of the 56 powers, so a
/// histogram is about 9 KiB instead of 28. Every finished group holds one per duration KPI
/// above the exact limit, and every answer allocates and frees them: in the live tenant's
/// profile (BENCHMARKS.md, "Live tenants", session 24) merging groups and their histograms
/// (28 KiB each, mostly zeros) took half of the server's page faults.
#[derive(Debug, Clone, Default)]
pub struct LogHistogram {
    zero: u64,
    /// The bucket `counts[0]` counts: the first of a power of two (a multiple of 64).
    first: usize,
    /// Counts of buckets `first..first + counts.len()`, whole powers of two.
    counts: Vec<u64>,
}

/// Buckets per power of two (as bits of the mantissa).
const SUB_BITS: u32 = 6;
/// Buckets of one power of two: what a histogram's range grows by.
const POWER: usize = 1 << SUB_BITS;
/// The mantissa bits below a bucket's.
const SHIFT: u32 = 52 - SUB_BITS;
/// `(exponent, top mantissa bits)` of 2^-20 s (just under one microsecond, the smallest
/// positive duration): bucket 0.
const FIRST: u64 = (1023 - 20) << SUB_BITS;
/// 56 powers of two, up to 2^36 s (about 2,000 years): longer than any span between valid
/// instants.
const BUCKETS: usize = 56 << SUB_BITS;
/// Zero's bucket in sparse form (past every other).
const ZERO: u16 = u16::MAX;
const _: () = assert!(BUCKETS < ZERO as usize);

impl LogHistogram {
    fn index(v: f64) -> Option<usize> {
        (v > 0.0).then(|| ((v.to_bits() >> SHIFT).saturating_sub(FIRST) as usize).min(BUCKETS - 1))
    }

    /// Heap bytes held.
    fn heap_bytes(&self) -> usize {
        self.counts.capacity() * 8 + std::mem::size_of::<Self>()
    }

    /// Grows the held range to include buckets `from..to` (widened to whole powers of two).
    fn cover(&mut self, from: usize, to: usize) {
        let from = from / POWER * POWER;
        let to = to.div_ceil(POWER) * POWER;
        if self.counts.is_empty() {
            self.first = from;
            self.counts = vec![0; to - from];
            return;
        }
        let end = self.first + self.counts.len();
        if from < self.first {
            let mut counts = vec![0; end.max(to) - from];
            counts[self.first - from..end - from].copy_from_slice(&self.counts);
            self.counts = counts;
            self.first = from;
        } else if to > end {
            self.counts.resize(to - self.first, 0);
        }
    }

    /// Adds `n` to bucket `i`.
    fn add_at(&mut self, i: usize, n: u64) {
        if !(self.first..self.first + self.counts.len()).contains(&i) {
            self.cover(i, i + 1);
        }
        self.counts[i - self.first] += n;
    }

    fn add(&mut self, v: f64, n: u64) {
        match Self::index(v) {
            Some(i) => self.add_at(i, n),
            None => self.zero += n,
        }
    }

    /// The bucket of `v` in [`Self::sparse`] form ([`ZERO`] for zero).
    fn bucket(v: f64) -> u16 {
        Self::index(v).map_or(ZERO, |i| i as u16)
    }

    /// Adds `n` to a bucket of [`Self::sparse`] form.
    fn add_to(&mut self, bucket: u16, n: u64) {
        match usize::from(bucket) {
            i if i < BUCKETS => self.add_at(i, n),
            _ => self.zero += n,
        }
    }

    /// Adds buckets of [`Self::sparse`] form (sorted by bucket), the range grown once.
    fn add_sparse(&mut self, binned: &[(u16, u32)]) {
        let mut positive = binned.iter().filter(|(b, _)| usize::from(*b) < BUCKETS);
        if let (Some((lo, _)), Some((hi, _))) = (positive.next(), positive.next_back()) {
            self.cover(usize::from(*lo), usize::from(*hi) + 1);
        }
        for (bucket, n) in binned {
            self.add_to(*bucket, u64::from(*n));
        }
    }

    /// The non-empty buckets of `values` with their counts, by bucket.
    fn sparse(values: &[f64]) -> Vec<(u16, u32)> {
        let mut buckets: Vec<u16> = values.iter().map(|v| Self::bucket(*v)).collect();
        buckets.sort_unstable();
        let mut out: Vec<(u16, u32)> = Vec::new();
        for b in buckets {
            match out.last_mut() {
                Some((last, n)) if *last == b => *n += 1,
                _ => out.push((b, 1)),
            }
        }
        out.shrink_to_fit();
        out
    }

    fn merge(&mut self, o: &LogHistogram) {
        let LogHistogram { zero, first, counts } = o;
        self.zero += zero;
        if counts.is_empty() {
            return;
        }
        self.cover(*first, first + counts.len());
        let at = first - self.first;
        for (mine, theirs) in self.counts[at..at + counts.len()].iter_mut().zip(counts) {
            *mine += theirs;
        }
    }

    /// The midpoint of bucket `i`.
    fn representative(i: usize) -> f64 {
        let bound = |i: usize| f64::from_bits((i as u64 + FIRST) << SHIFT);
        (bound(i) + bound(i + 1)) / 2.0
    }

    /// Approximate p50, p90, p95 and p99 of `n` values within `[min, max]`.
    fn percentiles(&self, n: u64, min: f64, max: f64) -> [f64; 4] {
        // The value at a 0-based rank: its bucket's representative, kept inside [min, max].
        let at_rank = |rank: u64| -> f64 {
            if rank < self.zero {
                return 0.0;
            }
            let mut seen = self.zero;
            for (i, count) in self.counts.iter().enumerate() {
                seen += count;
                if rank < seen {
                    return Self::representative(self.first + i).clamp(min, max);
                }
            }
            max
        };
        PERCENTILES.map(|p| {
            let pos = p * (n - 1) as f64;
            let (lo, hi) = (pos.floor() as u64, pos.ceil() as u64);
            let (a, b) = (at_rank(lo), at_rank(hi));
            a + (b - a) * (pos - lo as f64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field as written and read back (`Durations` compares by its debug form).
    fn read_back(d: &Durations) -> Durations {
        let mut w = Writer::new();
        d.write_to(&mut w);
        let mut r = Reader::new(&w.buf);
        let back = Durations::read_from(&mut r);
        assert!(!r.is_corrupt() && r.at_end());
        back
    }

    #[test]
    fn durations_read_back_are_those_written_exact_binned_or_counted_in_a_histogram() {
        let mut exact = Durations::default();
        let mut counted = Durations::default();
        // Ascending whole microseconds, as read back (their order means nothing).
        for i in 0..=EXACT_PERCENTILES_UP_TO as u64 {
            let v = i as f64 * 1.5;
            exact.push(v, Some(60.0));
            counted.push(v, None);
        }
        exact.push(0.25, None);
        let mut binned = Durations::default();
        for v in [0.0, 3.0, 3.0, 90.5] {
            binned.push(v, Some(10.0));
        }
        binned.shrink(1);
        // Not a whole number of microseconds: written as it is.
        let mut fine = Durations::default();
        for v in [2.5e-7, 1.0 / 3.0] {
            fine.push(v, None);
        }
        for d in [Durations::default(), binned, counted, fine] {
            assert_eq!(format!("{:?}", read_back(&d)), format!("{d:?}"));
        }
        assert!(exact.histogram.is_some(), "past the exact limit");
        assert_eq!(read_back(&exact).stats(true), exact.clone().stats(true));
    }

    #[test]
    fn values_read_back_in_another_order_give_the_same_statistics() {
        let mut d = Durations::default();
        for v in [90.0, 0.000_001, 12.345_678, 0.0, 7.0, 12.345_678] {
            d.push(v, Some(10.0));
        }
        let back = read_back(&d);
        assert_eq!(
            back.values,
            vec![0.0, 0.000_001, 7.0, 12.345_678, 12.345_678, 90.0]
        );
        assert_eq!(back.stats(true), d.stats(true));
    }

    #[test]
    fn a_histogram_read_back_outside_its_range_is_refused() {
        let mut d = Durations::default();
        for i in 0..=EXACT_PERCENTILES_UP_TO {
            d.push(i as f64, None);
        }
        d.histogram.as_mut().unwrap().first = 3;
        let mut w = Writer::new();
        d.write_to(&mut w);
        let mut r = Reader::new(&w.buf);
        Durations::read_from(&mut r);
        assert!(r.is_corrupt());
    }

    #[test]
    fn accumulated_durations_equal_the_values_definition_below_the_limit() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let values: Vec<f64> = (0..5000)
            .map(|_| rng.random_range(0..100_000_000) as f64 / 1e6)
            .collect();
        let expected = DurationStats::from_values(values.clone(), Some(30.0));
        // In two parts, merged, as a parallel scan does.
        let (mut a, mut b) = (Durations::default(), Durations::default());
        for (i, v) in values.iter().enumerate() {
            if i % 3 == 0 {
                a.push(*v, Some(30.0))
            } else {
                b.push(*v, Some(30.0))
            }
        }
        a.merge(&b);
        assert_eq!(a.stats(true), expected);
    }

    #[test]
    fn above_the_limit_percentiles_are_within_one_percent_and_the_rest_exact() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        // Long-tailed, with zeros and a few huge values.
        let values: Vec<f64> = (0..(EXACT_PERCENTILES_UP_TO * 3))
            .map(|i| match i % 50 {
                0 => 0.0,
                1 => rng.random_range(1..10_000_000_000_000i64) as f64 / 1e6,
                _ => (rng.random::<f64>().powi(4) * 86_400.0 * 1e6).round() / 1e6,
            })
            .collect();
        let exact = DurationStats::from_values(values.clone(), Some(120.0));
        let mut parts = vec![Durations::default(); 7];
        for (i, v) in values.iter().enumerate() {
            parts[i % 7].push(*v, Some(120.0));
        }
        let mut all = Durations::default();
        for p in &parts {
            all.merge(p);
        }
        let approx = all.stats(true);
        assert_eq!(
            (
                approx.count,
                approx.mean,
                approx.min,
                approx.max,
                approx.within_target
            ),
            (exact.count, exact.mean, exact.min, exact.max, exact.within_target)
        );
        for (a, e) in [
            (approx.p50, exact.p50),
            (approx.p90, exact.p90),
            (approx.p95, exact.p95),
            (approx.p99, exact.p99),
        ] {
            let (a, e) = (a.unwrap(), e.unwrap());
            assert!((a - e).abs() <= 0.01 * e, "approximate {a} vs exact {e}");
        }
    }

    #[test]
    fn a_histogram_holds_only_the_powers_of_two_its_values_span() {
        let mut h = LogHistogram::default();
        for v in [1.0, 59.5, 3599.0, 0.0] {
            h.add(v, 1);
        }
        // 1 s is 2^0, bucket 20 powers above 2^-20; 3,599 s is under 2^12: powers 0 to 11.
        assert_eq!((h.first, h.counts.len(), h.zero), (20 * POWER, 12 * POWER, 1));
        assert_eq!(h.counts.iter().sum::<u64>(), 3);
    }

    #[test]
    fn histograms_of_disjoint_ranges_merge_into_the_histogram_of_all_their_values() {
        let small = [0.001, 0.004, 0.009];
        let large = [10_000.0, 54_321.0, 99_999.0, 0.0];
        let of = |values: &[f64]| {
            let mut h = LogHistogram::default();
            values.iter().for_each(|v| h.add(*v, 1));
            h
        };
        let all = of(&[small.as_slice(), &large].concat());
        for (a, b) in [(&small[..], &large[..]), (&large[..], &small[..])] {
            let mut merged = of(a);
            merged.merge(&of(b));
            let mut binned = of(a);
            binned.add_sparse(&LogHistogram::sparse(b));
            for h in [merged, binned] {
                assert_eq!((h.first, &h.counts, h.zero), (all.first, &all.counts, all.zero));
                assert_eq!(h.percentiles(7, 0.0, 99_999.0), all.percentiles(7, 0.0, 99_999.0));
            }
        }
    }

    /// Kept parts carry their values binned; merged, they give the same statistics as the
    /// values added one by one, above and below the exact limit.
    #[test]
    fn binned_parts_merge_like_their_values() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        for n in [50, 5_000, EXACT_PERCENTILES_UP_TO * 2] {
            let mut parts = vec![Durations::default(); 9];
            for i in 0..n {
                let v = match i % 40 {
                    0 => 0.0,
                    _ => (rng.random::<f64>().powi(3) * 7_200.0 * 1e6).round() / 1e6,
                };
                parts[i % 9].push(v, Some(60.0));
            }
            let (mut plain, mut binned) = (Durations::default(), Durations::default());
            let total = parts.iter().map(Durations::count).sum();
            plain.prepare(total);
            binned.prepare(total);
            for p in &parts {
                plain.merge(p);
                let mut kept = p.clone();
                kept.shrink(BIN_FROM);
                assert_eq!(kept.binned.is_empty(), kept.values.len() < BIN_FROM);
                assert_eq!(
                    kept.binned.iter().map(|(_, n)| u64::from(*n)).sum::<u64>(),
                    if kept.binned.is_empty() { 0 } else { p.count() }
                );
                binned.merge(&kept);
            }
            assert_eq!(binned.stats(true), plain.stats(true), "n={n}");
        }
    }
}
