//! The store: a moka cache bounded by entries and bytes, with stats, invalidation and cleanup.

use ballast_core::ConfigError;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode};
use moka::future::Cache as Moka;
use moka::notification::RemovalCause;
use moka::policy::{EvictionPolicy, Expiry};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::rules::{Lifetime, StaleWindows, DEFAULT_KEYED_HEADERS};

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
/// Fixed cost counted for each entry on top of its key, headers and body: the entry's own
/// bookkeeping (moka's node, the `Arc`, the header map's table).
const ENTRY_OVERHEAD: u64 = 256;

/// Which entries are evicted first when the cache is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Eviction {
    /// Least recently used (the seed's policy): every new response is admitted.
    #[default]
    Lru,
    /// moka's TinyLFU: a full cache may refuse a new key that is less popular than the ones it
    /// holds. Better hit ratios on skewed traffic; new keys may not be stored at once.
    TinyLfu,
}

/// The key of a stored response: the request's path (for invalidation), its primary key (host,
/// path, query, keyed headers — or the application's key) and the values of the headers the
/// response varies on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The request path, then the primary key, in one allocation: built in place by a lookup
    /// (a hit allocates it once), copied only when an entry is stored.
    text: String,
    path_len: usize,
    /// `None` for most keys: no allocation, and no reference count that every request on every
    /// core would bump.
    variant: Option<Arc<str>>,
}

impl CacheKey {
    pub(crate) fn new(path: &str, primary: &str) -> Self {
        let mut text = String::with_capacity(path.len() + primary.len());
        text.push_str(path);
        text.push_str(primary);
        Self::from_text(text, path.len())
    }

    /// A key from `text`: the path (its first `path_len` bytes), then the primary key.
    pub(crate) fn from_text(text: String, path_len: usize) -> Self {
        CacheKey {
            text,
            path_len,
            variant: None,
        }
    }

    pub(crate) fn with_variant(&self, variant: String) -> Self {
        CacheKey {
            text: self.text.clone(),
            path_len: self.path_len,
            variant: (!variant.is_empty()).then(|| variant.into()),
        }
    }

    /// Hands the key's buffer back for the thread's next lookup (a fresh hit is done with it).
    pub(crate) fn recycle(self) {
        crate::layer::recycle_key_buffer(self.text);
    }

    /// The request path the entry was stored for.
    pub fn path(&self) -> &str {
        &self.text[..self.path_len]
    }

    /// The primary key (by default host, path and query).
    pub fn primary(&self) -> &str {
        &self.text[self.path_len..]
    }

    fn size(&self) -> u64 {
        (self.text.len() + self.variant.as_ref().map_or(0, |variant| variant.len())) as u64
    }
}

/// A stored response, the note that responses for this key vary on some request headers, or
/// the note that this key answered with something that may not be stored.
#[derive(Debug)]
// Every value lives behind the entry's `Arc`: a note is as big as a response, which the fixed
// per-entry overhead in the byte count already covers, and a hit is spared a second pointer.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Stored {
    Response(StoredResponse),
    Vary(Vec<HeaderName>),
    /// "Hit-for-pass": requests for this key go straight to the service, without waiting on
    /// each other, until the note expires (the TTL) and the key is tried again.
    Pass,
}

/// A response as stored.
#[derive(Debug)]
pub(crate) struct StoredResponse {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) stored_at: Instant,
    /// How long it is fresh, how old it was when stored, whether every use needs validation.
    pub(crate) lifetime: Lifetime,
    /// Whether it carries a validator (`ETag`, `Last-Modified`) to revalidate it with.
    pub(crate) validator: bool,
    /// How long past its freshness it may still be served (RFC 5861).
    pub(crate) stale: StaleWindows,
    /// Held by the request revalidating it, so concurrent requests for a stale entry wait for
    /// one answer of the service instead of each asking it.
    pub(crate) revalidating: tokio::sync::Mutex<()>,
    /// When revalidating it last failed: requests that waited for that answer take it as theirs.
    pub(crate) failed_at: std::sync::Mutex<Option<Instant>>,
}

/// Where a stored response stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Within its time to live: served as it is.
    Fresh,
    /// Stale, within `stale-while-revalidate`: served, and revalidated in the background.
    WhileRevalidating,
    /// Stale, within `stale-if-error`: the service is asked, and if it fails this is served.
    IfError,
    /// Stale (or `no-cache`) with a validator: the service is asked whether it changed
    /// (RFC 9111 §4.3); a `304` makes it fresh again.
    Validate,
    /// Too old to serve.
    Expired,
}

impl StoredResponse {
    /// Its current age (RFC 9111 §4.2.3): its age when stored plus the time since. This is the
    /// `Age` a hit sends.
    pub(crate) fn age(&self) -> Duration {
        self.lifetime.initial_age + self.stored_at.elapsed()
    }

    /// Where it stands at `age` (one clock read serves both this and the `Age` header).
    pub(crate) fn freshness(&self, age: Duration) -> Freshness {
        let fresh_for = self.lifetime.fresh_for;
        if !self.lifetime.always_validate && age < fresh_for {
            Freshness::Fresh
        } else if age < fresh_for + self.stale.while_revalidate {
            Freshness::WhileRevalidating
        } else if age < fresh_for + self.stale.if_error {
            Freshness::IfError
        } else if self.validator {
            Freshness::Validate
        } else {
            Freshness::Expired
        }
    }

    /// Whether it may still stand in for a failing service.
    pub(crate) fn usable_if_error(&self) -> bool {
        self.age() < self.lifetime.fresh_for + self.stale.if_error.max(self.stale.while_revalidate)
    }

    /// How long it is kept: the rest of its freshness and the longest stale window after it, and
    /// with a validator at least `revalidation` more, to be revalidated rather than fetched again.
    fn keep(&self, revalidation: Duration) -> Duration {
        let window = self.stale.if_error.max(self.stale.while_revalidate);
        let window = if self.validator {
            window.max(revalidation)
        } else {
            window
        };
        self.lifetime
            .fresh_for
            .saturating_sub(self.lifetime.initial_age)
            + window
    }
}

/// A stored value with its size, computed once.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) stored: Stored,
    size: u64,
}

impl Entry {
    pub(crate) fn new(key: &CacheKey, stored: Stored) -> Arc<Self> {
        let content = match &stored {
            Stored::Response(response) => {
                let headers: usize = response
                    .headers
                    .iter()
                    .map(|(name, value)| name.as_str().len() + value.len() + 16)
                    .sum();
                (headers + response.body.len()) as u64
            }
            Stored::Vary(names) => names.iter().map(|name| name.as_str().len() as u64).sum(),
            Stored::Pass => 0,
        };
        Arc::new(Entry {
            stored,
            size: key.size() + content + ENTRY_OVERHEAD,
        })
    }

    /// How long moka keeps the entry: a response as long as it may be served, stale included.
    fn keep(&self, default: Duration) -> Duration {
        match &self.stored {
            Stored::Response(response) => response.keep(default),
            Stored::Vary(_) | Stored::Pass => default,
        }
    }
}

/// Builds a [`ResponseCache`]; every setting has a default.
#[derive(Debug, Clone)]
pub struct ResponseCacheBuilder {
    max_entries: u64,
    max_bytes: u64,
    max_entry_bytes: u64,
    ttl: Duration,
    cleanup_interval: Duration,
    eviction: Eviction,
    statuses: Vec<StatusCode>,
    keyed_headers: Vec<HeaderName>,
    stale_if_error: Duration,
    store_unmarked: bool,
}

impl ResponseCacheBuilder {
    /// Stores responses that neither their route ([`CacheRouteLayer`](crate::CacheRouteLayer))
    /// nor their own `Cache-Control: max-age`/`s-maxage` asked to be cached, for the TTL.
    /// Defaults to `false`: caching is something a route asks for, so a health check or a page
    /// nobody meant to cache is never served stale. `true` is the seed's behaviour (every
    /// storable `GET` of the routes under the layer).
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

    /// Sets the interval of the cleanup task ([`ResponseCache::spawn_cleanup`]). Defaults to
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

    /// Builds the cache.
    ///
    /// # Errors
    ///
    /// A bound is zero, `max_entry_bytes` exceeds `max_bytes`, the TTL or cleanup interval is
    /// zero, or a weight would not fit moka's 32-bit weigher.
    pub fn build(self) -> Result<ResponseCache, ConfigError> {
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
        Ok(ResponseCache::from_builder(self))
    }
}

/// The response store behind [`CacheLayer`](crate::CacheLayer): bounded by entries **and**
/// bytes, with TTL, stats, invalidation and a stoppable cleanup task. Cheap to clone.
///
/// Both bounds hold at once: each entry weighs `max(its size, max_bytes / max_entries)` against a
/// capacity of `max_bytes`, so there can be neither more than `max_entries` entries nor more than
/// `max_bytes` bytes. moka applies evictions lazily; [`ResponseCache::stats`] runs its pending
/// work first, so the figures it reports hold.
#[derive(Clone)]
pub struct ResponseCache {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) moka: Moka<CacheKey, Arc<Entry>, foldhash::fast::RandomState>,
    pub(crate) max_entries: u64,
    pub(crate) max_bytes: u64,
    pub(crate) max_entry_bytes: u64,
    pub(crate) default_ttl: Duration,
    pub(crate) cleanup_interval: Duration,
    pub(crate) statuses: Vec<StatusCode>,
    /// See [`ResponseCacheBuilder::store_unmarked`].
    pub(crate) store_unmarked: bool,
    pub(crate) keyed_headers: Vec<HeaderName>,
    pub(crate) stale_if_error: Duration,
    pub(crate) counters: Arc<Counters>,
    /// The shorter lifetime entries get while invalidations from other instances may be lost.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) degraded: Arc<Degraded>,
    /// Where this cache's invalidations go to reach other instances (feature `redis`).
    pub(crate) fanout: std::sync::OnceLock<Fanout>,
}

/// Hands an invalidation to the other instances (feature `redis`); never waits.
pub(crate) type Fanout = Box<dyn Fn(&Invalidation) + Send + Sync>;

/// An invalidation as it travels between instances.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum Invalidation {
    /// The entries of exactly these paths.
    Paths(Vec<String>),
    /// The entries whose path starts with this.
    Prefix(String),
    /// Every entry.
    All,
}

/// While on, no entry outlives `ttl` from now: stored ones are cut short when read, new ones
/// when stored.
#[derive(Debug)]
pub(crate) struct Degraded {
    on: std::sync::atomic::AtomicBool,
    /// Nanoseconds.
    ttl: AtomicU64,
}

impl Default for Degraded {
    fn default() -> Self {
        Degraded {
            on: std::sync::atomic::AtomicBool::new(false),
            ttl: AtomicU64::new(u64::MAX),
        }
    }
}

impl Degraded {
    /// Turns the shorter lifetime on (`Some`) or off.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn set(&self, ttl: Option<Duration>) {
        if let Some(ttl) = ttl {
            let nanos = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
            self.ttl.store(nanos, Ordering::Relaxed);
        }
        self.on.store(ttl.is_some(), Ordering::Release);
    }

    /// `keep`, cut to the shorter lifetime while it is on.
    fn cap(&self, keep: Duration) -> Duration {
        if self.on.load(Ordering::Acquire) {
            keep.min(Duration::from_nanos(self.ttl.load(Ordering::Relaxed)))
        } else {
            keep
        }
    }
}

/// Counters, shared with moka's eviction listener.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) inserts: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) expirations: AtomicU64,
    pub(crate) too_large: AtomicU64,
    pub(crate) not_storable: AtomicU64,
    pub(crate) bypassed: AtomicU64,
    pub(crate) passes: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) revalidated: AtomicU64,
    pub(crate) bytes: AtomicU64,
}

/// What the layer tells the cache it did with a request.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Event {
    /// Served fresh from the cache.
    Hit,
    /// Served stale (while revalidating, or because the service failed).
    Stale,
    /// Sent to the service.
    Miss,
    /// Sent to the service because the key is remembered as not storable.
    Pass,
    /// Not looked up at all (a method or request the cache never serves).
    Bypassed,
    /// The response was not storable.
    NotStorable,
    /// The response was larger than an entry may be.
    TooLarge,
    /// A stale response the service confirmed unchanged (a `304`), served again.
    Revalidated,
}

impl Event {
    /// The event's name in traces (`cache.event`).
    fn name(self) -> &'static str {
        match self {
            Event::Hit => "hit",
            Event::Stale => "stale",
            Event::Miss => "miss",
            Event::Pass => "pass",
            Event::Bypassed => "bypass",
            Event::NotStorable => "not_storable",
            Event::TooLarge => "too_large",
            Event::Revalidated => "revalidated",
        }
    }
}

impl ResponseCache {
    /// Counts one `event`.
    pub(crate) fn count(&self, event: Event) {
        tracing::debug!(cache.event = event.name());
        let counters = &self.inner.counters;
        let counter = match event {
            Event::Hit => &counters.hits,
            Event::Stale => &counters.stale,
            Event::Miss => &counters.misses,
            Event::Pass => &counters.passes,
            Event::Bypassed => &counters.bypassed,
            Event::NotStorable => &counters.not_storable,
            Event::TooLarge => &counters.too_large,
            Event::Revalidated => &counters.revalidated,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Expires each entry after its own TTL (shorter while [`Degraded`]).
struct PerEntryTtl(Duration, Arc<Degraded>);

impl Expiry<CacheKey, Arc<Entry>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<Entry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(self.1.cap(value.keep(self.0)))
    }

    fn expire_after_read(
        &self,
        _key: &CacheKey,
        _value: &Arc<Entry>,
        _read_at: Instant,
        duration_until_expiry: Option<Duration>,
        _last_modified_at: Instant,
    ) -> Option<Duration> {
        duration_until_expiry.map(|left| self.1.cap(left))
    }
}

impl ResponseCache {
    /// A builder with the defaults: 100 entries, 10 MiB, 1 MiB per response, 60 s TTL, cleanup
    /// every 60 s, LRU, status 200, [`DEFAULT_KEYED_HEADERS`].
    pub fn builder() -> ResponseCacheBuilder {
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

    fn from_builder(builder: ResponseCacheBuilder) -> Self {
        let counters = Arc::new(Counters::default());
        let listener_counters = Arc::clone(&counters);
        let degraded = Arc::new(Degraded::default());
        let min_weight = (builder.max_bytes / builder.max_entries).max(1);
        let policy = match builder.eviction {
            Eviction::Lru => EvictionPolicy::lru(),
            Eviction::TinyLfu => EvictionPolicy::tiny_lfu(),
        };
        let moka = Moka::builder()
            .max_capacity(builder.max_bytes)
            .weigher(move |_key: &CacheKey, entry: &Arc<Entry>| {
                // Checked in `build`: max_bytes fits a u32, so every weight does.
                u32::try_from(entry.size.max(min_weight)).unwrap_or(u32::MAX)
            })
            .eviction_policy(policy)
            .expire_after(PerEntryTtl(builder.ttl, Arc::clone(&degraded)))
            .support_invalidation_closures()
            .eviction_listener(move |_key, entry: Arc<Entry>, cause| {
                listener_counters
                    .bytes
                    .fetch_sub(entry.size, Ordering::Relaxed);
                match cause {
                    RemovalCause::Size => {
                        listener_counters.evictions.fetch_add(1, Ordering::Relaxed);
                    }
                    RemovalCause::Expired => {
                        listener_counters
                            .expirations
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    RemovalCause::Explicit | RemovalCause::Replaced => {}
                }
            })
            // A keyed hash (the keys are the clients' URLs) a tenth of SipHash's cost.
            .build_with_hasher(foldhash::fast::RandomState::default());
        ResponseCache {
            inner: Arc::new(Inner {
                moka,
                max_entries: builder.max_entries,
                max_bytes: builder.max_bytes,
                max_entry_bytes: builder.max_entry_bytes,
                default_ttl: builder.ttl,
                cleanup_interval: builder.cleanup_interval,
                statuses: builder.statuses,
                store_unmarked: builder.store_unmarked,
                keyed_headers: builder.keyed_headers,
                stale_if_error: builder.stale_if_error,
                counters,
                degraded,
                fanout: std::sync::OnceLock::new(),
            }),
        }
    }

    pub(crate) async fn insert(&self, key: CacheKey, entry: Arc<Entry>) {
        self.account(&entry);
        self.inner.moka.insert(key, entry).await;
    }

    /// Counts an entry about to enter moka (by `insert`, or as the value of `try_get_with`);
    /// the eviction listener takes its bytes off again when it leaves.
    pub(crate) fn account(&self, entry: &Entry) {
        let counters = &self.inner.counters;
        counters.bytes.fetch_add(entry.size, Ordering::Relaxed);
        if matches!(entry.stored, Stored::Response(_)) {
            counters.inserts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removes every entry of this cache now (only this instance's: shutdown clears its own
    /// cache without emptying the others').
    pub async fn clear(&self) {
        self.inner.moka.invalidate_all();
        self.inner.moka.run_pending_tasks().await;
    }

    /// Removes the entries stored for exactly this request path (every query and variant), as
    /// an application does after a write (`POST /items` → `invalidate_path("/items")`). With
    /// shared invalidation (feature `redis`) every instance removes them too.
    pub async fn invalidate_path(&self, path: &str) {
        self.publish(&Invalidation::Paths(vec![path.to_owned()]));
        let path = path.to_owned();
        self.invalidate_if(move |key| key.path() == path).await;
    }

    /// Marks the entries of these paths invalid at once, without waiting for moka to remove
    /// them: no later lookup finds them. Other instances are told too.
    pub(crate) fn invalidate_paths_now(&self, paths: Vec<String>) {
        if paths.is_empty() {
            return;
        }
        let invalidation = Invalidation::Paths(paths);
        self.publish(&invalidation);
        self.invalidate_now(invalidation);
    }

    /// Applies an invalidation here, at once, without telling anyone.
    pub(crate) fn invalidate_now(&self, invalidation: Invalidation) {
        let moka = &self.inner.moka;
        let _ = match invalidation {
            Invalidation::Paths(paths) => moka
                .invalidate_entries_if(move |key, _| paths.iter().any(|path| key.path() == path)),
            Invalidation::Prefix(prefix) => {
                moka.invalidate_entries_if(move |key, _| key.path().starts_with(&prefix))
            }
            Invalidation::All => {
                moka.invalidate_all();
                Ok(String::new())
            }
        };
    }

    /// Hands an invalidation to the shared channel, if there is one; never waits.
    fn publish(&self, invalidation: &Invalidation) {
        if let Some(fanout) = self.inner.fanout.get() {
            fanout(invalidation);
        }
    }

    /// Removes the entries whose request path starts with `prefix` (on every instance, with
    /// shared invalidation).
    pub async fn invalidate_prefix(&self, prefix: &str) {
        self.publish(&Invalidation::Prefix(prefix.to_owned()));
        let prefix = prefix.to_owned();
        self.invalidate_if(move |key| key.path().starts_with(&prefix))
            .await;
    }

    /// Removes the entries whose key matches `predicate` (this instance's only: a predicate
    /// cannot travel to the others).
    pub async fn invalidate_if(
        &self,
        predicate: impl Fn(&CacheKey) -> bool + Send + Sync + 'static,
    ) {
        // Only fails when the builder did not enable invalidation closures, which it does.
        let _ = self
            .inner
            .moka
            .invalidate_entries_if(move |key, _| predicate(key));
        self.inner.moka.run_pending_tasks().await;
    }

    /// moka's count of entries as it stands, without running its pending work first: what the
    /// cleanup task (or traffic) has applied so far. [`stats`](Self::stats) is exact.
    pub fn entry_count_estimate(&self) -> u64 {
        self.inner.moka.entry_count()
    }

    /// The cache's figures, exact: moka's pending work runs first.
    pub async fn stats(&self) -> CacheStats {
        self.inner.moka.run_pending_tasks().await;
        let counters = &self.inner.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let hits = get(&counters.hits);
        let misses = get(&counters.misses);
        let lookups = hits + misses;
        CacheStats {
            entries: self.inner.moka.entry_count(),
            max_entries: self.inner.max_entries,
            bytes: get(&counters.bytes),
            max_bytes: self.inner.max_bytes,
            hits,
            misses,
            inserts: get(&counters.inserts),
            evictions: get(&counters.evictions),
            expirations: get(&counters.expirations),
            too_large: get(&counters.too_large),
            not_storable: get(&counters.not_storable),
            bypassed: get(&counters.bypassed),
            passes: get(&counters.passes),
            stale: get(&counters.stale),
            revalidated: get(&counters.revalidated),
            hit_ratio: if lookups == 0 {
                0.0
            } else {
                hits as f64 / lookups as f64
            },
        }
    }

    /// Starts the cleanup task: every `cleanup_interval` it removes expired entries and applies
    /// moka's pending evictions. Stop it with [`CleanupTask::stop`] (shutdown does).
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn spawn_cleanup(&self) -> CleanupTask {
        let (stop, mut stopped) = watch::channel(false);
        let cache = self.clone();
        let interval = self.inner.cleanup_interval;
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await; // the first tick is immediate
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        let started = Instant::now();
                        cache.inner.moka.run_pending_tasks().await;
                        tracing::debug!(
                            entries = cache.inner.moka.entry_count(),
                            took_ms = started.elapsed().as_millis() as u64,
                            "cache cleanup"
                        );
                    }
                    // The only change ever sent is "stop"; a dropped sender means the same.
                    _ = stopped.changed() => return,
                }
            }
        });
        CleanupTask {
            stop,
            task: Some(task),
        }
    }
}

impl fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCache")
            .field("max_entries", &self.inner.max_entries)
            .field("max_bytes", &self.inner.max_bytes)
            .field("max_entry_bytes", &self.inner.max_entry_bytes)
            .field("ttl", &self.inner.default_ttl)
            .finish_non_exhaustive()
    }
}

/// The running cleanup task of a [`ResponseCache`]. Dropping it stops the task too.
#[derive(Debug)]
pub struct CleanupTask {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl CleanupTask {
    /// Stops the task and waits until it has stopped.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Whether the task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for CleanupTask {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// A snapshot of a cache's figures (serialises to JSON with these names).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct CacheStats {
    /// Entries stored now (responses, and one note per key whose responses vary).
    pub entries: u64,
    /// The entry bound.
    pub max_entries: u64,
    /// Bytes stored now: keys, headers, bodies and a fixed overhead per entry.
    pub bytes: u64,
    /// The byte bound.
    pub max_bytes: u64,
    /// Requests answered from the cache.
    pub hits: u64,
    /// Cacheable requests that were not in the cache.
    pub misses: u64,
    /// Responses stored.
    pub inserts: u64,
    /// Entries evicted to keep within the bounds.
    pub evictions: u64,
    /// Entries removed when their TTL ran out.
    pub expirations: u64,
    /// Responses not stored because their body exceeded `max_entry_bytes`.
    pub too_large: u64,
    /// Responses not stored for any other reason (status, `Set-Cookie`, `Cache-Control`, ...).
    pub not_storable: u64,
    /// Requests that bypassed the cache (method, credentials, request `Cache-Control`).
    pub bypassed: u64,
    /// Requests sent straight to the service because their key recently answered with
    /// something that may not be stored ("hit-for-pass"; counted as misses too).
    pub passes: u64,
    /// Stale responses served: the service failed while revalidating (within `stale-if-error`),
    /// or a background request was revalidating (within `stale-while-revalidate`).
    pub stale: u64,
    /// Stale responses the service confirmed unchanged with a `304` and that were served again
    /// (RFC 9111 §4.3).
    pub revalidated: u64,
    /// `hits / (hits + misses)`.
    pub hit_ratio: f64,
}
