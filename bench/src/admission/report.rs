//! What a run's answers add up to: a summary, and the same per time slice for the charts.

use std::time::Duration;

use super::load::Sample;

/// One subject's figures for a run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Summary {
    /// Successes a second, over the time until the last answer.
    pub(crate) served_per_second: f64,
    pub(crate) served: usize,
    /// 503s.
    pub(crate) refused: usize,
    /// 503s without `Retry-After`.
    pub(crate) refused_without_retry_after: usize,
    /// Anything else: other statuses, no answer.
    pub(crate) other: usize,
    pub(crate) ok_p50: Duration,
    pub(crate) ok_p99: Duration,
    pub(crate) ok_max: Duration,
    pub(crate) refused_p50: Duration,
    pub(crate) refused_p99: Duration,
}

pub(crate) fn quantile(samples: &mut [Duration], quantile: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let index = ((samples.len() as f64 * quantile).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[index]
}

/// The summary of the answers that came within `from..to` (the whole run: `..`).
pub(crate) fn summarise(samples: &[Sample], from: Duration, to: Duration) -> Summary {
    let window: Vec<&Sample> = samples
        .iter()
        .filter(|sample| sample.at >= from && sample.at < to)
        .collect();
    let mut ok: Vec<Duration> = window
        .iter()
        .filter(|s| s.status == 200)
        .map(|s| s.took)
        .collect();
    let mut refused: Vec<Duration> = window
        .iter()
        .filter(|s| s.status == 503)
        .map(|s| s.took)
        .collect();
    let last = window.iter().map(|s| s.at).max().unwrap_or(to).min(to);
    let span = last.saturating_sub(from).max(Duration::from_millis(1));
    Summary {
        served_per_second: ok.len() as f64 / span.as_secs_f64(),
        served: ok.len(),
        refused: refused.len(),
        refused_without_retry_after: window
            .iter()
            .filter(|s| s.status == 503 && !s.retry_after)
            .count(),
        other: window
            .iter()
            .filter(|s| s.status != 200 && s.status != 503)
            .count(),
        ok_p50: quantile(&mut ok, 0.5),
        ok_p99: quantile(&mut ok, 0.99),
        ok_max: quantile(&mut ok, 1.0),
        refused_p50: quantile(&mut refused, 0.5),
        refused_p99: quantile(&mut refused, 0.99),
    }
}

/// One time slice of a run.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Slice {
    /// The slice's start, in seconds.
    pub(crate) at: f64,
    pub(crate) served_per_second: f64,
    pub(crate) refused_per_second: f64,
    /// The 99th percentile latency of the successes that finished in it, in seconds.
    pub(crate) ok_p99: f64,
}

/// The run cut into slices of `width`, up to `until`.
pub(crate) fn slices(samples: &[Sample], width: Duration, until: Duration) -> Vec<Slice> {
    let count = (until.as_secs_f64() / width.as_secs_f64()).ceil() as usize;
    let mut ok: Vec<Vec<Duration>> = vec![Vec::new(); count];
    let mut refused = vec![0usize; count];
    for sample in samples {
        let index = (sample.at.as_secs_f64() / width.as_secs_f64()) as usize;
        if index >= count {
            continue;
        }
        match sample.status {
            200 => ok[index].push(sample.took),
            503 => refused[index] += 1,
            _ => {}
        }
    }
    ok.iter_mut()
        .zip(refused)
        .enumerate()
        .map(|(index, (ok, refused))| Slice {
            at: index as f64 * width.as_secs_f64(),
            served_per_second: ok.len() as f64 / width.as_secs_f64(),
            refused_per_second: refused as f64 / width.as_secs_f64(),
            ok_p99: quantile(ok, 0.99).as_secs_f64(),
        })
        .collect()
}

/// A duration for a table: `12.3ms`, `1.45s`.
pub(crate) fn short(duration: Duration) -> String {
    if duration.is_zero() {
        "-".to_owned()
    } else if duration < Duration::from_millis(1) {
        format!("{}µs", duration.as_micros())
    } else if duration < Duration::from_secs(1) {
        format!("{:.1}ms", duration.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2}s", duration.as_secs_f64())
    }
}

/// The table's header.
pub(crate) fn header() -> String {
    format!(
        "  {:<22} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10}",
        "subject",
        "served/s",
        "served",
        "refused",
        "other",
        "ok p50",
        "ok p99",
        "refused p50",
        "refused p99"
    )
}

/// One row of the table.
pub(crate) fn row(label: &str, summary: &Summary) -> String {
    format!(
        "  {:<22} {:>9.1} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10}",
        label,
        summary.served_per_second,
        summary.served,
        summary.refused,
        summary.other,
        short(summary.ok_p50),
        short(summary.ok_p99),
        short(summary.refused_p50),
        short(summary.refused_p99),
    )
}
