//! `/metrics`: the figures of `/stats` in the OpenMetrics text format, for Prometheus.

use ballast::cache::CacheStats;
use ballast::pool::PoolStats;
use ballast::retry::RetryStats;
use ballast::shutdown::ShutdownStats;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The content type of [`render`]'s text.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The figures as OpenMetrics text, every name prefixed `ballast_`.
pub(crate) fn render(
    pool: &PoolStats,
    cache: &CacheStats,
    retry: &RetryStats,
    shutdown: &ShutdownStats,
) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("ballast");
    let mut gauge = |name: &str, help: &str, value: u64| {
        let metric = Gauge::<i64>::default();
        metric.set(i64::try_from(value).unwrap_or(i64::MAX));
        registry.register(name, help, metric);
    };
    gauge(
        "pool_max_size",
        "Most connections the pool opens",
        u64::from(pool.max_size),
    );
    gauge("pool_open", "Connections open", u64::from(pool.open));
    gauge(
        "pool_in_use",
        "Connections checked out",
        u64::from(pool.in_use),
    );
    gauge("pool_waiting", "Checkouts waiting", pool.waiting);
    gauge("cache_entries", "Responses cached", cache.entries);
    gauge("cache_bytes", "Bytes cached", cache.bytes);
    gauge(
        "requests_in_flight",
        "Requests in flight",
        shutdown.in_flight as u64,
    );
    let mut counter = |name: &str, help: &str, value: u64| {
        let metric = Counter::<u64>::default();
        metric.inc_by(value);
        registry.register(name, help, metric);
    };
    counter("pool_checkouts", "Successful checkouts", pool.checkouts);
    counter(
        "pool_timeouts",
        "Checkouts that waited pool_timeout in vain",
        pool.timeouts,
    );
    counter(
        "pool_connect_failures",
        "Failed connect attempts",
        pool.connect_failures,
    );
    counter(
        "pool_cancelled",
        "Checkouts abandoned mid-statement, cancelled on the server",
        pool.cancelled,
    );
    counter(
        "pool_shed",
        "Checkouts refused at once past queue_limit",
        pool.shed,
    );
    counter("cache_hits", "Cache hits", cache.hits);
    counter(
        "cache_stale",
        "Stale responses served while the database failed",
        cache.stale,
    );
    counter("cache_misses", "Cache misses", cache.misses);
    counter(
        "cache_evictions",
        "Entries evicted by the bounds",
        cache.evictions,
    );
    counter(
        "retry_attempts",
        "Calls to the handlers, retries included",
        retry.attempts,
    );
    counter("retry_retries", "Retries", retry.retries);
    counter(
        "retry_budget_exhausted",
        "Retries refused by the budget",
        retry.budget_exhausted,
    );
    counter(
        "retry_outages",
        "Failures answered at once because the database was known to be down",
        retry.outages,
    );
    counter(
        "shutdown_rejected",
        "Requests refused while draining",
        shutdown.rejected,
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}
