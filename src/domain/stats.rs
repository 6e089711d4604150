//! Duration statistics of METRICS.md §5: count, mean, min, max and exact percentiles with
//! linear interpolation between closest ranks (PostgreSQL `percentile_cont`).

/// Summary of a set of durations in seconds. Everything but `count` is absent over zero items.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DurationStats {
    pub count: u64,
    pub mean: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    /// Share (%) of items at or under the target, when a target is given (METRICS.md §8).
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
    /// Summarises `values` (consumed: sorted in place). `target` in seconds enables
    /// `within_target`.
    pub fn from_values(mut values: Vec<f64>, target: Option<f64>) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_unstable_by(f64::total_cmp);
        let n = values.len();
        let sum: f64 = values.iter().sum();
        Self {
            count: n as u64,
            mean: Some(sum / n as f64),
            min: values.first().copied(),
            max: values.last().copied(),
            p50: percentile_cont(&values, 0.50),
            p90: percentile_cont(&values, 0.90),
            p95: percentile_cont(&values, 0.95),
            p99: percentile_cont(&values, 0.99),
            within_target: target.map(|t| 100.0 * values.partition_point(|v| *v <= t) as f64 / n as f64),
        }
    }
}

/// `100 * part / whole`, absent when `whole` is 0 (METRICS.md §5).
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
    fn nothing_is_absent_not_zero() {
        let s = DurationStats::from_values(vec![], None);
        assert_eq!((s.count, s.mean, s.p50), (0, None, None));
        assert_eq!(rate(1, 0), None);
        assert_eq!(DurationStats::from_values(vec![7.0], None).p99, Some(7.0));
    }
}
