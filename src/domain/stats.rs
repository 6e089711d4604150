//! Duration statistics of docs/metrics.md §5 as an answer states them: count, mean, min, max and
//! percentiles with linear interpolation between closest ranks (PostgreSQL `percentile_cont`),
//! computed exactly from a set of values; rates and means. The query engine accumulates them
//! part by part (`engine::stats`).

/// Summary of a set of durations in seconds. Everything but `count` is absent over zero items.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DurationStats {
    pub count: u64,
    pub mean: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    /// Share (%) of items at or under the target, when a target is given (docs/metrics.md §8).
    pub within_target: Option<f64>,
}

/// `percentile_cont(p)` over sorted values.
pub fn percentile_cont(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let pos = p * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64))
}

impl DurationStats {
    /// Summarises `values` (seconds, consumed and reordered). `target` in seconds enables
    /// `within_target`.
    ///
    /// Percentiles are exact: only the ranks they need are selected (`select_nth_unstable`,
    /// linear time) instead of sorting everything. The sum is taken in whole microseconds (every
    /// duration here is a difference of microsecond instants), so the mean is exact and does not
    /// depend on the order items were visited in.
    pub fn from_values(mut values: Vec<f64>, target: Option<f64>) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let n = values.len();
        // f64 -> i64 is one instruction (f64 -> i128 is a library call); the sum needs i128.
        let sum_micros: i128 = values.iter().map(|v| (v * 1e6).round() as i64 as i128).sum();
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in &values {
            min = min.min(*v);
            max = max.max(*v);
        }
        let within_target =
            target.map(|t| 100.0 * values.iter().filter(|v| **v <= t).count() as f64 / n as f64);
        let [p50, p90, p95, p99] = exact_percentiles(&mut values);
        Self {
            count: n as u64,
            mean: Some(sum_micros as f64 / 1e6 / n as f64),
            min: Some(min),
            max: Some(max),
            p50: Some(p50),
            p90: Some(p90),
            p95: Some(p95),
            p99: Some(p99),
            within_target,
        }
    }
}

/// The percentiles wanted, in order.
pub(crate) const PERCENTILES: [f64; 4] = [0.50, 0.90, 0.95, 0.99];

/// Exact p50, p90, p95 and p99 of non-empty `values` (reordered): only the ranks they need are
/// selected (linear time) instead of sorting everything.
pub(crate) fn exact_percentiles(values: &mut [f64]) -> [f64; 4] {
    let n = values.len();
    let mut ranks: Vec<usize> = PERCENTILES
        .iter()
        .flat_map(|p| {
            let pos = p * (n - 1) as f64;
            [pos.floor() as usize, pos.ceil() as usize]
        })
        .collect();
    ranks.sort_unstable();
    ranks.dedup();
    // Select ranks in ascending order, each in the part right of the previous one.
    let mut at_rank = Vec::with_capacity(ranks.len());
    let mut base = 0;
    for &rank in &ranks {
        let (_, nth, _) = values[base..].select_nth_unstable_by(rank - base, f64::total_cmp);
        at_rank.push((rank, *nth));
        base = rank;
    }
    let value = |rank: usize| at_rank.iter().find(|(r, _)| *r == rank).map_or(0.0, |(_, v)| *v);
    PERCENTILES.map(|p| {
        let pos = p * (n - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        value(lo) + (value(hi) - value(lo)) * (pos - lo as f64)
    })
}

/// `100 * part / whole`, absent when `whole` is 0 (docs/metrics.md §5).
pub fn rate(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| 100.0 * part as f64 / whole as f64)
}

/// `sum / n`, absent when `n` is 0.
pub fn mean(sum: f64, n: u64) -> Option<f64> {
    (n > 0).then(|| sum / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_percentile_cont() {
        // percentile_cont(0.9) over 1..=10 = 9.1; p50 = 5.5.
        let s = DurationStats::from_values((1..=10).rev().map(f64::from).collect(), Some(3.0));
        assert_eq!(s.count, 10);
        assert_eq!(s.p50, Some(5.5));
        assert!((s.p90.unwrap() - 9.1).abs() < 1e-9);
        assert!((s.p99.unwrap() - 9.91).abs() < 1e-9);
        assert_eq!((s.min, s.max, s.mean), (Some(1.0), Some(10.0), Some(5.5)));
        assert_eq!(s.within_target, Some(30.0));
    }

    #[test]
    fn selected_percentiles_equal_the_sorted_definition() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for n in [1, 2, 3, 10, 101, 1000] {
            let values: Vec<f64> = (0..n)
                .map(|_| rng.random_range(0..10_000_000) as f64 / 1e3)
                .collect();
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            let s = DurationStats::from_values(values, None);
            for (p, got) in [(0.5, s.p50), (0.9, s.p90), (0.95, s.p95), (0.99, s.p99)] {
                assert_eq!(got, percentile_cont(&sorted, p), "n={n} p={p}");
            }
        }
    }

    #[test]
    fn nothing_is_absent_not_zero() {
        let s = DurationStats::from_values(vec![], None);
        assert_eq!((s.count, s.mean, s.p50), (0, None, None));
        assert_eq!(rate(1, 0), None);
        assert_eq!(DurationStats::from_values(vec![7.0], None).p99, Some(7.0));
    }
}
