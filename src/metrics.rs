//! The figures of the pool, the cache, the retry layer and the shutdown in Prometheus's text
//! format (feature `metrics`), named after OpenTelemetry's semantic conventions for database
//! connection pools where they have a name, rendered by `metrics-exporter-prometheus`.
//!
//! | metric | type | from |
//! |---|---|---|
//! | `db_client_connections_usage{db_client_connection_state="idle"\|"used"}` | gauge | OTel `db.client.connection.count` (its earlier name `db.client.connections.usage`: Prometheus reserves `_count` for histograms) |
//! | `db_client_connection_max` | gauge | OTel `db.client.connection.max` |
//! | `db_client_connection_idle_max`, `db_client_connection_idle_min` | gauge | OTel `db.client.connection.idle.max`, `.idle.min` (the pool's size, and 0: connections open on demand) |
//! | `db_client_connection_pending_requests` | gauge | OTel `db.client.connection.pending_requests` |
//! | `db_client_connection_timeouts_total` | counter | OTel `db.client.connection.timeouts` |
//! | `db_client_connection_wait_time_seconds`, `db_client_connection_use_time_seconds`, `db_client_connection_create_time_seconds` | histogram | OTel `db.client.connection.wait_time`, `.use_time`, `.create_time` |
//! | `ballast_pool_server_connections_limit`, `ballast_pool_server_connections_in_use`, `ballast_pool_login_connections_limit`, `ballast_pool_budget_available` | gauge | `PoolStats::budget`: the server's connection budget read on the first connection (the login's limit only when it has one) — each instance's `db_client_connection_max` against `ballast_pool_budget_available` |
//! | `ballast_pool_checkouts_total`, `ballast_pool_connects_total`, `ballast_pool_connect_failures_total`, `ballast_pool_cancelled_total`, `ballast_pool_shed_total`, `ballast_pool_closed_broken_total`, `ballast_pool_held_too_long_total` | counter | `PoolStats` |
//! | `ballast_pool_refusals_total{reason="expected_wait"\|"standing_queue"\|"overdue"\|"queue_limit"\|"timed_out"\|"outage"}` | counter | `PoolStats::refusals`: checkouts that got no connection, by reason (admission by time's two rules, the opt-in `queue_limit`, a wait that ran out, a known outage) |
//! | `ballast_replica_fresh`, `ballast_replica_lag_seconds` | gauge | `ReplicaStats`: whether each replica takes reads, how far behind the primary it was at its last check |
//! | `ballast_replica_reads_total{reason="replica"\|"replica_after_wait"\|"primary_no_replica"\|"primary_behind_token"}` | counter | `ReplicaStats::routes`: where reads went, and why |
//! | `ballast_cache_hits_total`, `ballast_cache_misses_total`, `ballast_cache_stale_total`, `ballast_cache_revalidated_total`, `ballast_cache_evictions_total` | counter | `CacheStats` |
//! | `ballast_cache_entries`, `ballast_cache_size_bytes` | gauge | |
//! | `ballast_retry_attempts_total`, `ballast_retry_retries_total`, `ballast_retry_budget_exhausted_total`, `ballast_retry_outages_total`, `ballast_retry_unsafe_to_repeat_total` | counter | `RetryStats` |
//! | `ballast_http_requests_in_flight` | gauge | `ShutdownStats` |
//! | `ballast_shutdown_rejected_total` | counter | |
//! | `ballast_shutdown_phase{phase="running"\|"not_ready"\|"draining"\|"stopped"}` | gauge (1 for the current phase) | |
//!
//! Every pool metric carries `db_client_connection_pool_name` (OTel's
//! `db.client.connection.pool.name`): `ballast` for the primary's pool, `ballast-replica-1`,
//! `ballast-replica-2`, ... for the read replicas' ([`Figures::replicas`]). The text is the classic exposition format
//! (`text/plain; version=0.0.4`), which `promtool check metrics` and every Prometheus read: CI
//! checks the example server's `/metrics` with promtool.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ballast::metrics::Figures;
//!
//! let cache = ballast::cache::ResponseCache::builder().build()?;
//! let text = ballast::metrics::render(&Figures::new().cache(&cache.stats().await));
//! assert!(text.contains("# TYPE ballast_cache_hits_total counter"));
//! # Ok(())
//! # }
//! ```

use metrics::{counter, describe_counter, describe_gauge, gauge, with_local_recorder};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::cache::CacheStats;
use crate::pool::{PoolStats, ReplicaStats};
use crate::retry::RetryStats;
use crate::shutdown::{Phase, ShutdownStats};

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The pool's name in the metrics' `db_client_connection_pool_name` label.
const POOL_NAME: &str = "ballast";

/// The figures to render; each part is optional.
#[derive(Debug, Default, Clone, Copy)]
pub struct Figures<'a> {
    pool: Option<&'a PoolStats>,
    replicas: Option<&'a ReplicaStats>,
    cache: Option<&'a CacheStats>,
    retry: Option<&'a RetryStats>,
    shutdown: Option<&'a ShutdownStats>,
}

impl<'a> Figures<'a> {
    /// No figures yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The pool's figures.
    #[must_use]
    pub fn pool(mut self, stats: &'a PoolStats) -> Self {
        self.pool = Some(stats);
        self
    }

    /// The read replicas' figures: each replica's pool (named `ballast-replica-<n>`), its lag,
    /// and where reads went.
    #[must_use]
    pub fn replicas(mut self, stats: &'a ReplicaStats) -> Self {
        self.replicas = Some(stats);
        self
    }

    /// The cache's figures.
    #[must_use]
    pub fn cache(mut self, stats: &'a CacheStats) -> Self {
        self.cache = Some(stats);
        self
    }

    /// The retry layer's figures.
    #[must_use]
    pub fn retry(mut self, stats: &'a RetryStats) -> Self {
        self.retry = Some(stats);
        self
    }

    /// The shutdown's figures.
    #[must_use]
    pub fn shutdown(mut self, stats: &'a ShutdownStats) -> Self {
        self.shutdown = Some(stats);
        self
    }
}

/// The figures as Prometheus text (see the module's table).
pub fn render(figures: &Figures<'_>) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    with_local_recorder(&recorder, || {
        describe();
        record(figures);
    });
    let mut text = handle.render();
    let pools = figures.pools();
    if !pools.is_empty() {
        // The pool keeps its own buckets: written here as Prometheus histograms.
        for (name, help, timings) in [
            (
                "db_client_connection_wait_time_seconds",
                "Time checkouts waited for a connection",
                (|pool: &PoolStats| &pool.wait_time) as fn(&PoolStats) -> &crate::pool::Timings,
            ),
            (
                "db_client_connection_use_time_seconds",
                "Time connections stayed checked out",
                |pool: &PoolStats| &pool.use_time,
            ),
            (
                "db_client_connection_create_time_seconds",
                "Time opening a connection took",
                |pool: &PoolStats| &pool.create_time,
            ),
        ] {
            histogram(&mut text, name, help, &pools, timings);
        }
    }
    in_name_order(&text)
}

/// `text` with its metric families sorted by name: the exporter keeps them in hash maps, so
/// their order would change from one render to the next. Each family is its `# HELP` line and
/// what follows it up to the next one.
fn in_name_order(text: &str) -> String {
    let mut families: Vec<(&str, Vec<&str>)> = Vec::new();
    for line in text.lines().filter(|line| !line.is_empty()) {
        match line.strip_prefix("# HELP ") {
            Some(rest) => {
                let name = rest.split(' ').next().unwrap_or(rest);
                families.push((name, vec![line]));
            }
            None => match families.last_mut() {
                Some((_, lines)) => lines.push(line),
                None => families.push(("", vec![line])),
            },
        }
    }
    families.sort_by(|a, b| a.0.cmp(b.0));
    let mut sorted = String::with_capacity(text.len() + 1);
    for (_, lines) in families {
        for line in lines {
            sorted.push_str(line);
            sorted.push('\n');
        }
    }
    sorted
}

/// Appends one histogram family: each pool's `timings`.
fn histogram(
    text: &mut String,
    name: &str,
    help: &str,
    pools: &[(String, &PoolStats)],
    timings: fn(&PoolStats) -> &crate::pool::Timings,
) {
    use std::fmt::Write;
    // Writing into a String cannot fail.
    let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (pool, stats) in pools {
        let timings = timings(stats);
        let labels = format!("db_client_connection_pool_name=\"{pool}\"");
        for (bound, count) in &timings.buckets {
            let _ = writeln!(text, "{name}_bucket{{{labels},le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            text,
            "{name}_bucket{{{labels},le=\"+Inf\"}} {}",
            timings.count
        );
        let _ = writeln!(text, "{name}_sum{{{labels}}} {}", timings.sum_seconds);
        let _ = writeln!(text, "{name}_count{{{labels}}} {}", timings.count);
    }
    text.push('\n');
}

impl Figures<'_> {
    /// Every pool with its name: the primary's, then each replica's.
    fn pools(&self) -> Vec<(String, &PoolStats)> {
        let mut pools = Vec::new();
        if let Some(pool) = self.pool {
            pools.push((POOL_NAME.to_owned(), pool));
        }
        if let Some(replicas) = self.replicas {
            for (index, replica) in replicas.replicas.iter().enumerate() {
                pools.push((replica_name(index), &replica.pool));
            }
        }
        pools
    }
}

/// The `index`th replica's pool name.
fn replica_name(index: usize) -> String {
    format!("{POOL_NAME}-replica-{}", index + 1)
}

/// The help text of every metric (`# HELP`, which promtool asks for).
fn describe() {
    for (name, help) in [
        (
            "db_client_connections_usage",
            "Connections open, by state (idle, used)",
        ),
        (
            "db_client_connection_max",
            "Most connections the pool opens",
        ),
        (
            "db_client_connection_idle_max",
            "Most idle connections the pool keeps",
        ),
        (
            "db_client_connection_idle_min",
            "Fewest idle connections the pool keeps open",
        ),
        (
            "db_client_connection_pending_requests",
            "Checkouts waiting for a connection",
        ),
        (
            "ballast_pool_server_connections_limit",
            "Client sessions the server takes for the pool's login, read on its first connection",
        ),
        (
            "ballast_pool_server_connections_in_use",
            "Sessions on the server, others than the pool's, when the budget was read",
        ),
        (
            "ballast_pool_login_connections_limit",
            "The login's own connection limit, read on the first connection",
        ),
        (
            "ballast_pool_budget_available",
            "Connections that were left for this pool when the budget was read",
        ),
        (
            "ballast_replica_fresh",
            "1 while the read replica takes reads (it answered and was within max_replica_lag)",
        ),
        (
            "ballast_replica_lag_seconds",
            "How far the read replica was behind the primary at its last check",
        ),
        ("ballast_cache_entries", "Responses cached"),
        (
            "ballast_cache_size_bytes",
            "Bytes cached, keys and headers included",
        ),
        ("ballast_http_requests_in_flight", "Requests in flight"),
        (
            "ballast_shutdown_phase",
            "1 for the shutdown phase the service is in",
        ),
    ] {
        describe_gauge!(name, help);
    }
    for (name, help) in [
        (
            "db_client_connection_timeouts_total",
            "Checkouts that waited pool_timeout in vain",
        ),
        ("ballast_pool_checkouts_total", "Connections checked out"),
        ("ballast_pool_connects_total", "Connections opened"),
        (
            "ballast_pool_connect_failures_total",
            "Connect attempts that failed",
        ),
        (
            "ballast_pool_cancelled_total",
            "Checkouts abandoned mid-statement, cancelled on the server",
        ),
        (
            "ballast_pool_shed_total",
            "Checkouts refused because the database was at capacity",
        ),
        (
            "ballast_pool_refusals_total",
            "Checkouts that got no connection, by reason",
        ),
        (
            "ballast_pool_held_too_long_total",
            "Connections checked out longer than leak_threshold",
        ),
        (
            "ballast_pool_closed_broken_total",
            "Connections closed because they came back broken",
        ),
        (
            "ballast_replica_reads_total",
            "Reads routed by the replica set, by where they went and why",
        ),
        (
            "ballast_cache_hits_total",
            "Responses served fresh from the cache",
        ),
        (
            "ballast_cache_misses_total",
            "Requests the cache sent to the service",
        ),
        (
            "ballast_cache_stale_total",
            "Stale responses served while the service failed or revalidated",
        ),
        (
            "ballast_cache_revalidated_total",
            "Stale responses the service confirmed unchanged (304)",
        ),
        (
            "ballast_cache_evictions_total",
            "Entries evicted by the bounds",
        ),
        (
            "ballast_retry_attempts_total",
            "Calls to the service, retries included",
        ),
        ("ballast_retry_retries_total", "Retries"),
        (
            "ballast_retry_budget_exhausted_total",
            "Retries the budget refused",
        ),
        (
            "ballast_retry_outages_total",
            "Failures answered at once during a known outage",
        ),
        (
            "ballast_retry_unsafe_to_repeat_total",
            "Retryable failures not retried: a write may have run",
        ),
        (
            "ballast_shutdown_rejected_total",
            "Requests refused while draining",
        ),
    ] {
        describe_counter!(name, help);
    }
}

/// A count as a gauge's value.
fn value(count: impl TryInto<u32> + Copy) -> f64 {
    f64::from(count.try_into().unwrap_or(u32::MAX))
}

fn record(figures: &Figures<'_>) {
    for (pool_name, pool) in figures.pools() {
        let name = ("db_client_connection_pool_name", pool_name);
        for (state, count) in [("idle", pool.idle), ("used", pool.in_use)] {
            gauge!("db_client_connections_usage", name.0 => name.1.clone(), "db_client_connection_state" => state)
                .set(f64::from(count));
        }
        gauge!("db_client_connection_max", name.0 => name.1.clone()).set(f64::from(pool.max_size));
        // Every connection may stay idle; none is kept open on purpose (connections open on
        // demand).
        gauge!("db_client_connection_idle_max", name.0 => name.1.clone())
            .set(f64::from(pool.max_size));
        gauge!("db_client_connection_idle_min", name.0 => name.1.clone()).set(0.0);
        gauge!("db_client_connection_pending_requests", name.0 => name.1.clone())
            .set(value(pool.waiting));
        counter!("db_client_connection_timeouts_total", name.0 => name.1.clone())
            .absolute(pool.timeouts);
        if let Some(budget) = &pool.budget {
            for (metric, count) in [
                ("ballast_pool_server_connections_limit", budget.server_limit),
                (
                    "ballast_pool_server_connections_in_use",
                    budget.server_in_use,
                ),
                ("ballast_pool_budget_available", budget.available),
            ] {
                gauge!(metric, name.0 => name.1.clone()).set(f64::from(count));
            }
            if let Some(limit) = budget.login_limit {
                gauge!("ballast_pool_login_connections_limit", name.0 => name.1.clone())
                    .set(f64::from(limit));
            }
        }
        for (metric, count) in [
            ("ballast_pool_checkouts_total", pool.checkouts),
            ("ballast_pool_connects_total", pool.connects),
            ("ballast_pool_connect_failures_total", pool.connect_failures),
            ("ballast_pool_cancelled_total", pool.cancelled),
            ("ballast_pool_shed_total", pool.shed),
            ("ballast_pool_closed_broken_total", pool.closed_broken),
            ("ballast_pool_held_too_long_total", pool.held_too_long),
        ] {
            counter!(metric, name.0 => name.1.clone()).absolute(count);
        }
        for (reason, count) in pool.refusals.by_reason() {
            counter!("ballast_pool_refusals_total", name.0 => name.1.clone(), "reason" => reason)
                .absolute(count);
        }
    }
    if let Some(replicas) = figures.replicas {
        for (index, replica) in replicas.replicas.iter().enumerate() {
            let name = ("db_client_connection_pool_name", replica_name(index));
            gauge!("ballast_replica_fresh", name.0 => name.1.clone()).set(if replica.fresh {
                1.0
            } else {
                0.0
            });
            if let Some(lag) = replica.lag_seconds {
                gauge!("ballast_replica_lag_seconds", name.0 => name.1).set(lag);
            }
        }
        for (reason, count) in replicas.routes.by_reason() {
            counter!("ballast_replica_reads_total", "reason" => reason).absolute(count);
        }
    }
    if let Some(cache) = figures.cache {
        for (metric, count) in [
            ("ballast_cache_hits_total", cache.hits),
            ("ballast_cache_misses_total", cache.misses),
            ("ballast_cache_stale_total", cache.stale),
            ("ballast_cache_revalidated_total", cache.revalidated),
            ("ballast_cache_evictions_total", cache.evictions),
        ] {
            counter!(metric).absolute(count);
        }
        gauge!("ballast_cache_entries").set(value(cache.entries));
        gauge!("ballast_cache_size_bytes").set(cache.bytes as f64);
    }
    if let Some(retry) = figures.retry {
        for (metric, count) in [
            ("ballast_retry_attempts_total", retry.attempts),
            ("ballast_retry_retries_total", retry.retries),
            (
                "ballast_retry_budget_exhausted_total",
                retry.budget_exhausted,
            ),
            ("ballast_retry_outages_total", retry.outages),
            (
                "ballast_retry_unsafe_to_repeat_total",
                retry.unsafe_to_repeat,
            ),
        ] {
            counter!(metric).absolute(count);
        }
    }
    if let Some(shutdown) = figures.shutdown {
        gauge!("ballast_http_requests_in_flight").set(value(shutdown.in_flight));
        counter!("ballast_shutdown_rejected_total").absolute(shutdown.rejected);
        for (phase, name) in [
            (Phase::Running, "running"),
            (Phase::NotReady, "not_ready"),
            (Phase::Draining, "draining"),
            (Phase::Stopped, "stopped"),
        ] {
            gauge!("ballast_shutdown_phase", "phase" => name).set(if shutdown.phase == phase {
                1.0
            } else {
                0.0
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_come_out_in_the_same_order_every_time() {
        let stats = crate::retry::RetryLayer::new().handle().stats();
        let first = render(&Figures::new().retry(&stats));
        let names = |text: &str| -> Vec<String> {
            text.lines()
                .filter_map(|line| line.strip_prefix("# HELP "))
                .map(|rest| rest.split(' ').next().unwrap().to_owned())
                .collect()
        };
        let mut sorted = names(&first);
        sorted.sort();
        assert_eq!(names(&first), sorted, "in name order:\n{first}");
        assert!(sorted.len() > 3, "{first}");
        for _ in 0..20 {
            assert_eq!(render(&Figures::new().retry(&stats)), first);
        }
    }
}
