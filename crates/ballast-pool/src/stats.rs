//! Pool statistics: a serialisable snapshot for `/stats` and metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

/// Buckets of the acquire-wait histogram: bucket `i` counts waits below `2^i` microseconds, the
/// last one everything longer (2^26 µs is about 67 s, past any sensible `pool_timeout`).
const WAIT_BUCKETS: usize = 27;

/// A snapshot of a pool's state and history.
///
/// Counters run from the pool's creation. Serialises to JSON with these field names.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PoolStats {
    /// `connection_limit`: the most connections open at once.
    pub max_size: u32,
    /// Connections open now (idle and in use).
    pub open: u32,
    /// Open connections not checked out.
    pub idle: u32,
    /// Connections checked out now.
    pub in_use: u32,
    /// Checkouts waiting for a connection now.
    pub waiting: u64,
    /// Whether [`close`](crate::SharedPool::close) was called.
    pub closed: bool,
    /// Successful checkouts.
    pub checkouts: u64,
    /// Successful checkouts that had to wait for a connection.
    pub checkouts_waited: u64,
    /// Checkouts that gave up after `pool_timeout`.
    pub timeouts: u64,
    /// Checkouts that failed before `pool_timeout` because connecting failed and there was no
    /// open connection to wait for.
    pub failed_fast: u64,
    /// Checkouts refused because the database was at capacity: at once, or after waiting past
    /// `queue_target` in a standing queue (the sum of [`Refusals`]' first four).
    pub shed: u64,
    /// Checkouts that got no connection, by reason.
    pub refusals: Refusals,
    /// Connections that stayed checked out longer than `leak_threshold` (each logged once); 0
    /// while it is off.
    pub held_too_long: u64,
    /// Connections opened.
    pub connects: u64,
    /// Connect attempts that failed, in total.
    pub connect_failures: u64,
    /// Connect failures by driver code (`SQLSTATE 53300`, `MySQL error 1040`) or, without one,
    /// by cause (`Unreachable`, `TimedOut`).
    pub connect_failures_by_code: BTreeMap<String, u64>,
    /// Connect attempts skipped because the last one failed moments ago (answered with that
    /// failure, without touching the network).
    pub connects_skipped: u64,
    /// Connections dropped when they came back broken (closed, or a transaction left open).
    pub closed_broken: u64,
    /// Checkouts abandoned while a statement ran (or with a transaction open): the statement
    /// was cancelled on the server and the connection made idle again, or closed (then also
    /// counted in `closed_broken`).
    pub cancelled: u64,
    /// Connections dropped because the idle check at checkout failed.
    pub closed_invalid: u64,
    /// Connections closed after `idle_timeout` or `max_lifetime`.
    pub closed_expired: u64,
    /// Total time checkouts waited, in milliseconds.
    pub acquire_wait_total_ms: f64,
    /// Median checkout wait (upper bound of its histogram bucket), in milliseconds.
    pub acquire_wait_p50_ms: f64,
    /// 99th-percentile checkout wait (upper bound of its histogram bucket), in milliseconds.
    pub acquire_wait_p99_ms: f64,
    /// How long checkouts waited for a connection (OpenTelemetry's
    /// `db.client.connection.wait_time`).
    pub wait_time: Timings,
    /// How long connections stayed checked out (`db.client.connection.use_time`).
    pub use_time: Timings,
    /// How long opening a connection took, startup and after-connect SQL included
    /// (`db.client.connection.create_time`).
    pub create_time: Timings,
    /// The server's connection budget for the pool's login, read on the first connection
    /// (`None` before it, for SQLite, and behind PgBouncer).
    pub budget: Option<crate::ServerBudget>,
}

/// The pool's own counters (bb8 keeps the rest).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Checkouts under way (bb8's own figure never forgets a cancelled one).
    pub(crate) waiting: AtomicU64,
    pub(crate) failed_fast: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) connects: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) connects_skipped: AtomicU64,
    pub(crate) closed_broken: AtomicU64,
    /// Connections whose statement failed with the connection gone (or on a read-only server),
    /// counted as it fails: [`ReplicaSet`](crate::ReplicaSet) stops reading from a replica
    /// whose count moved until its next check.
    pub(crate) lost: Arc<AtomicU64>,
    pub(crate) cancelled: AtomicU64,
    pub(crate) refused_expected_wait: AtomicU64,
    pub(crate) refused_standing_queue: AtomicU64,
    pub(crate) refused_overdue: AtomicU64,
    pub(crate) refused_queue_limit: AtomicU64,
    failures_by_code: Mutex<BTreeMap<String, u64>>,
    wait: WaitHistogram,
    /// How long checkouts waited, how long connections stayed checked out, how long connects
    /// took: the histograms OpenTelemetry names `wait_time`, `use_time`, `create_time`.
    pub(crate) wait_time: TimeHistogram,
    pub(crate) use_time: TimeHistogram,
    pub(crate) create_time: TimeHistogram,
}

impl Counters {
    pub(crate) fn connect_failed(&self, key: String) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
        let mut by_code = self
            .failures_by_code
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *by_code.entry(key).or_default() += 1;
    }

    pub(crate) fn failures_by_code(&self) -> BTreeMap<String, u64> {
        self.failures_by_code
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn record_wait(&self, wait: Duration) {
        self.wait.record(wait);
        self.wait_time.record(wait);
    }

    pub(crate) fn wait_percentile_ms(&self, quantile: f64) -> f64 {
        self.wait.percentile_ms(quantile)
    }
}

/// Checkouts that got no connection, by reason: what `/stats` and the
/// `ballast_pool_refusals_total{reason}` metric show.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Refusals {
    /// Refused at once: the expected wait was longer than the time the checkout had
    /// (`pool_timeout`, or the request's deadline).
    pub expected_wait: u64,
    /// Refused at once: this one expected to wait longer than one and a half `queue_target`s,
    /// or, waits having stayed above the target, longer than the target.
    pub standing_queue: u64,
    /// Gave up waiting: the wait turned out longer than admission allows (admitted before the
    /// pool knew how long connections are held, or before the database slowed down).
    pub overdue: u64,
    /// Refused at once: `queue_limit` checkouts were already waiting.
    pub queue_limit: u64,
    /// Waited the whole time they had and got no connection.
    pub timed_out: u64,
    /// Answered at once because connecting was failing: the database is down.
    pub outage: u64,
}

impl Refusals {
    /// Each reason with its count, under the names the metrics use.
    pub fn by_reason(&self) -> [(&'static str, u64); 6] {
        [
            ("expected_wait", self.expected_wait),
            ("standing_queue", self.standing_queue),
            ("overdue", self.overdue),
            ("queue_limit", self.queue_limit),
            ("timed_out", self.timed_out),
            ("outage", self.outage),
        ]
    }

    /// The refusals because the database was at capacity (the first four reasons).
    pub fn shed(&self) -> u64 {
        self.expected_wait + self.standing_queue + self.overdue + self.queue_limit
    }
}

/// The upper bounds of [`Timings`]' buckets, in microseconds: every fourth power of two from
/// 1 µs to 67 s (about 1 µs, 4 µs, 16 µs, ..., 1 ms, 4 ms, 16 ms, 66 ms, 262 ms, 1 s, 4 s, 17 s,
/// 67 s).
const TIME_BOUNDS_MICROS: [u64; 14] = [
    1,
    1 << 2,
    1 << 4,
    1 << 6,
    1 << 8,
    1 << 10,
    1 << 12,
    1 << 14,
    1 << 16,
    1 << 18,
    1 << 20,
    1 << 22,
    1 << 24,
    1 << 26,
];

/// A lock-free histogram of durations: counts per bucket and the sum.
#[derive(Debug)]
pub(crate) struct TimeHistogram {
    buckets: [AtomicU64; TIME_BOUNDS_MICROS.len() + 1],
    sum_micros: AtomicU64,
}

impl Default for TimeHistogram {
    fn default() -> Self {
        TimeHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl TimeHistogram {
    pub(crate) fn record(&self, time: Duration) {
        let micros = u64::try_from(time.as_micros()).unwrap_or(u64::MAX);
        let bucket = TIME_BOUNDS_MICROS.partition_point(|&bound| bound < micros);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Timings {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(TIME_BOUNDS_MICROS.len());
        for (bound, count) in TIME_BOUNDS_MICROS.iter().zip(&self.buckets) {
            cumulative += count.load(Ordering::Relaxed);
            buckets.push((*bound as f64 / 1_000_000.0, cumulative));
        }
        let count = cumulative + self.buckets[TIME_BOUNDS_MICROS.len()].load(Ordering::Relaxed);
        Timings {
            buckets,
            count,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1_000_000.0,
        }
    }
}

/// A histogram of durations as Prometheus and OpenTelemetry read one: for each upper bound in
/// seconds, how many were at most that long (cumulative), and the count and sum of all.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timings {
    /// `(upper bound in seconds, how many took at most that)`, ascending.
    pub buckets: Vec<(f64, u64)>,
    /// How many there were.
    pub count: u64,
    /// Their total, in seconds.
    pub sum_seconds: f64,
}

/// A lock-free histogram of checkout waits with power-of-two microsecond buckets.
#[derive(Debug)]
struct WaitHistogram {
    buckets: [AtomicU64; WAIT_BUCKETS],
}

impl Default for WaitHistogram {
    fn default() -> Self {
        WaitHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl WaitHistogram {
    fn record(&self, wait: Duration) {
        let micros = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
        // Bucket i holds waits in [2^(i-1), 2^i) µs; bucket 0 holds 0 µs.
        let bucket = (u64::BITS - micros.leading_zeros()) as usize;
        self.buckets[bucket.min(WAIT_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }

    fn percentile_ms(&self, quantile: f64) -> f64 {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let wanted = (quantile * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= wanted {
                // The bucket's upper bound, 2^bucket µs.
                return (1u64 << bucket) as f64 / 1000.0;
            }
        }
        (1u64 << (WAIT_BUCKETS - 1)) as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_bucket_bounds() {
        let histogram = WaitHistogram::default();
        assert_eq!(histogram.percentile_ms(0.5), 0.0);
        for _ in 0..98 {
            histogram.record(Duration::from_micros(100)); // bucket 7: < 128 µs
        }
        histogram.record(Duration::from_millis(50)); // bucket 16: < 65.536 ms
        histogram.record(Duration::from_secs(1000)); // the last bucket
        assert_eq!(histogram.percentile_ms(0.5), 0.128);
        assert_eq!(histogram.percentile_ms(0.99), 65.536);
        assert_eq!(histogram.percentile_ms(1.0), (1u64 << 26) as f64 / 1000.0);
    }

    #[test]
    fn timings_are_cumulative_with_a_count_and_a_sum() {
        let histogram = TimeHistogram::default();
        histogram.record(Duration::from_micros(3)); // <= 4 µs
        histogram.record(Duration::from_millis(1)); // <= 1024 µs
        histogram.record(Duration::from_secs(100)); // past the last bound
        let timings = histogram.snapshot();
        assert_eq!(timings.count, 3);
        assert!((timings.sum_seconds - 100.001003).abs() < 1e-9);
        assert_eq!(timings.buckets[0], (0.000001, 0));
        assert_eq!(timings.buckets[1], (0.000004, 1));
        assert_eq!(timings.buckets[5], (0.001024, 2));
        assert_eq!(timings.buckets.last().unwrap().1, 2);
    }

    #[test]
    fn failures_are_counted_by_code() {
        let counters = Counters::default();
        counters.connect_failed("SQLSTATE 53300".into());
        counters.connect_failed("SQLSTATE 53300".into());
        counters.connect_failed("Unreachable".into());
        let by_code = counters.failures_by_code();
        assert_eq!(by_code["SQLSTATE 53300"], 2);
        assert_eq!(by_code["Unreachable"], 1);
        assert_eq!(counters.connect_failures.load(Ordering::Relaxed), 3);
    }
}
