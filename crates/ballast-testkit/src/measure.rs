//! What load tests and benches measure: latency percentiles and the process's resident memory.

use std::time::Duration;

/// The `quantile` (0 to 1) of `samples` by the nearest-rank method: the smallest sample that at
/// least that share of the samples do not exceed. Zero for no samples.
///
/// ```
/// use std::time::Duration;
/// use ballast_testkit::measure::percentile;
///
/// let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
/// assert_eq!(percentile(&samples, 0.5), Duration::from_millis(50));
/// assert_eq!(percentile(&samples, 0.99), Duration::from_millis(99));
/// assert_eq!(percentile(&[], 0.99), Duration::ZERO);
/// ```
pub fn percentile(samples: &[Duration], quantile: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = (sorted.len() as f64 * quantile).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The process's resident set size in bytes, from `/proc/self/statm` (0 where there is none).
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}
