//! docs/metrics.md §5 arithmetic, derived here rather than borrowed from the engine: duration
//! statistics by sorting every value, rates and means by their formulas.

use chatkpi::engine::stats::DurationStats;

/// Count, mean, min, max, `percentile_cont` p50 / p90 / p95 / p99 and the share at or under
/// `target` of `values` (seconds). All values are sorted; a percentile interpolates linearly
/// between the two closest ranks. The mean is taken over whole microseconds (every duration is
/// a difference of microsecond instants), so it does not depend on the order of the values.
pub fn summary(mut values: Vec<f64>, target: Option<f64>) -> DurationStats {
    if values.is_empty() {
        return DurationStats::default();
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let percentile = |p: f64| {
        let rank = p * (n - 1) as f64;
        let (below, above) = (rank.floor() as usize, rank.ceil() as usize);
        values[below] + (values[above] - values[below]) * (rank - below as f64)
    };
    let micros: i128 = values.iter().map(|v| (v * 1e6).round() as i128).sum();
    DurationStats {
        count: n as u64,
        mean: Some(micros as f64 / 1e6 / n as f64),
        min: values.first().copied(),
        max: values.last().copied(),
        p50: Some(percentile(0.50)),
        p90: Some(percentile(0.90)),
        p95: Some(percentile(0.95)),
        p99: Some(percentile(0.99)),
        within_target: target.map(|t| 100.0 * values.iter().filter(|v| **v <= t).count() as f64 / n as f64),
    }
}

/// `100 * part / whole`, absent when `whole` is 0.
pub fn rate(part: u64, whole: u64) -> Option<f64> {
    if whole == 0 {
        return None;
    }
    Some(100.0 * part as f64 / whole as f64)
}

/// `sum / n`, absent when `n` is 0.
pub fn mean(sum: f64, n: u64) -> Option<f64> {
    if n == 0 {
        return None;
    }
    Some(sum / n as f64)
}
