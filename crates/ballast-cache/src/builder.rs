//! [`ResponseCacheBuilder`]: a cache's settings and their defaults.

use ballast_core::ConfigError;
use std::time::Duration;

use http::{HeaderName, StatusCode};

use crate::rules::DEFAULT_KEYED_HEADERS;

/// Default most entries (the seed's 100).
const DEFAULT_MAX_ENTRIES: u64 = 100;
/// Default most bytes (the seed's 10 MB), counting keys, headers and bodies.
const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Default largest single response stored: a tenth of the default byte bound, so one response
/// cannot push out the other ninety-nine.
const DEFAULT_MAX_ENTRY_BYTES: u64 = 1024 * 1024;
/// Default time to live, capped by a response's own `max-age`/`s-maxage`.
const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Default interval of the cleanup task (the seed's 60 s).
const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(60);
/// Default `stale_if_error`: how long past its freshness a stored response may stand in for a
/// failing service (RFC 5861), when the response does not say. An outage of a few minutes is
/// answered with what the cache has rather than 503s.
const DEFAULT_STALE_IF_ERROR: Duration = Duration::from_secs(300);

/// Which entries are evicted first when the cache is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Eviction {
    /// Least recently used: every new response is admitted.
    #[default]
    Lru,
    /// moka's TinyLFU: a full cache may refuse a new key that is less popular than the ones it
    /// holds. Better hit ratios on skewed traffic; new keys may not be stored at once.
    TinyLfu,
}

/// Builds a [`ResponseCache`](crate::ResponseCache); every setting has a default.
#[derive(Debug, Clone)]
pub struct ResponseCacheBuilder {
    pub(crate) max_entries: u64,
    pub(crate) max_bytes: u64,
    pub(crate) max_entry_bytes: u64,
    pub(crate) ttl: Duration,
    pub(crate) cleanup_interval: Duration,
    pub(crate) eviction: Eviction,
    pub(crate) statuses: Vec<StatusCode>,
    pub(crate) keyed_headers: Vec<HeaderName>,
    pub(crate) stale_if_error: Duration,
    pub(crate) store_unmarked: bool,
}

impl ResponseCacheBuilder {
    /// Stores responses that neither their route ([`CacheRouteLayer`](crate::CacheRouteLayer))
    /// nor their own `Cache-Control: max-age`/`s-maxage` asked to be cached, for the TTL.
    /// Defaults to `false`: caching is something a route asks for, so a health check or a page
    /// nobody meant to cache is never served stale. `true` stores every storable `GET` of the
    /// routes under the layer.
    #[must_use]
    pub fn store_unmarked(mut self, store: bool) -> Self {
        self.store_unmarked = store;
        self
    }

    /// Sets how long past its freshness a stored response may stand in for a failing service
    /// (a 5xx, a classified failure such as the database being down, an error): a `GET` for it
    /// gets the stale response, with its `Age`, instead of the failure. A response's own
    /// `stale-if-error` directive takes precedence; `must-revalidate`, `proxy-revalidate` and
    /// `s-maxage` forbid it. Zero turns it off. Defaults to 5 minutes. Stale responses count
    /// against the same bounds.
    #[must_use]
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = window;
        self
    }

    /// Sets the most entries. Defaults to 100.
    #[must_use]
    pub fn max_entries(mut self, entries: u64) -> Self {
        self.max_entries = entries;
        self
    }

    /// Sets the most bytes, counting keys, headers, bodies and a fixed overhead per entry.
    /// Defaults to 10 MiB.
    #[must_use]
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Sets the largest single response body stored; larger ones stream through untouched.
    /// Defaults to 1 MiB.
    #[must_use]
    pub fn max_entry_bytes(mut self, bytes: u64) -> Self {
        self.max_entry_bytes = bytes;
        self
    }

    /// Sets the time to live; a response's own `s-maxage` or `max-age` can only shorten it.
    /// Defaults to 60 s.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the interval of the cleanup task ([`ResponseCache::spawn_cleanup`](crate::ResponseCache::spawn_cleanup)). Defaults to
    /// 60 s.
    #[must_use]
    pub fn cleanup_interval(mut self, interval: Duration) -> Self {
        self.cleanup_interval = interval;
        self
    }

    /// Sets the eviction policy. Defaults to [`Eviction::Lru`].
    #[must_use]
    pub fn eviction(mut self, eviction: Eviction) -> Self {
        self.eviction = eviction;
        self
    }

    /// Sets the statuses that may be stored. Defaults to the heuristically cacheable ones (RFC 9110
    /// §15.1: 200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501), stored when their freshness
    /// is explicit or their route gives one (unmarked responses: 200 only). 206 and any other 5xx
    /// are never stored.
    #[must_use]
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.statuses = statuses.into_iter().collect();
        self
    }

    /// Sets the request headers whose values join the default key (see
    /// [`DEFAULT_KEYED_HEADERS`]).
    #[must_use]
    pub fn keyed_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.keyed_headers = names.into_iter().collect();
        self
    }

    /// Checks the settings together, naming the first one out of range (see `build`).
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        for (setting, value) in [
            ("max_entries", self.max_entries),
            ("max_bytes", self.max_bytes),
            ("max_entry_bytes", self.max_entry_bytes),
        ] {
            if value == 0 {
                return Err(ConfigError::new(setting, "must be at least 1"));
            }
        }
        if self.max_entry_bytes > self.max_bytes {
            return Err(ConfigError::new(
                "max_entry_bytes",
                format!(
                    "must not exceed max_bytes ({} > {})",
                    self.max_entry_bytes, self.max_bytes
                ),
            ));
        }
        if self.max_bytes > u64::from(u32::MAX) {
            return Err(ConfigError::new(
                "max_bytes",
                format!("must be at most {} (4 GiB)", u32::MAX),
            ));
        }
        for (setting, value) in [
            ("ttl", self.ttl),
            ("cleanup_interval", self.cleanup_interval),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(setting, "must be greater than zero"));
            }
        }
        Ok(())
    }
}

impl Default for ResponseCacheBuilder {
    /// The defaults: 100 entries, 10 MiB, 1 MiB per response, 60 s TTL, cleanup every 60 s,
    /// LRU, status 200, [`DEFAULT_KEYED_HEADERS`], five minutes of `stale-if-error`.
    fn default() -> Self {
        ResponseCacheBuilder {
            max_entries: DEFAULT_MAX_ENTRIES,
            max_bytes: DEFAULT_MAX_BYTES,
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
            ttl: DEFAULT_TTL,
            cleanup_interval: DEFAULT_CLEANUP_INTERVAL,
            eviction: Eviction::Lru,
            statuses: crate::rules::CACHEABLE_STATUSES.to_vec(),
            store_unmarked: false,
            keyed_headers: DEFAULT_KEYED_HEADERS
                .iter()
                .map(|name| HeaderName::from_static(name))
                .collect(),
            stale_if_error: DEFAULT_STALE_IF_ERROR,
        }
    }
}
