//! The store: a moka cache bounded by entries and bytes, with stats, invalidation and cleanup.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_core::ConfigError;
use http::{HeaderName, StatusCode};
use moka::future::Cache as Moka;
use moka::notification::RemovalCause;
use moka::policy::{EvictionPolicy, Expiry};
use tokio::sync::watch;

use crate::builder::{Eviction, ResponseCacheBuilder};
use crate::entry::{Entry, Note, Stored};
use crate::key::CacheKey;
use crate::stats::{CacheStats, CleanupTask};
pub(crate) use crate::stats::{Counters, Event};

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

/// The most keys remembered as not storable ([`Note`]s), apart from the stored responses: a
/// note is a key and a byte (a few hundred bytes with moka's bookkeeping), so 10,000 of them
/// take a few megabytes, and a flood of URLs nobody caches turns over only these.
pub(crate) const NOTES: u64 = 10_000;

pub(crate) struct Inner {
    pub(crate) moka: Moka<CacheKey, Arc<Entry>, foldhash::fast::RandomState>,
    /// What the cache remembers of keys whose response was not stored, in a bound of its own.
    pub(crate) notes: Moka<CacheKey, Note, foldhash::fast::RandomState>,
    /// The requests to the service that concurrent misses of their key wait for.
    pub(crate) collapsing: Arc<crate::collapse::Collapsing>,
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
    /// The recent invalidations: a fill that predates one of its key's is not stored.
    pub(crate) fence: crate::fence::Fence,
}

/// Hands an invalidation to the other instances (feature `redis`); never waits.
pub(crate) type Fanout = Box<dyn Fn(&Invalidated) + Send + Sync>;

/// An invalidation as it travels between instances.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum Invalidated {
    /// The entries of exactly these paths.
    Paths(Vec<String>),
    /// The entries whose path starts with this.
    Prefix(String),
    /// The entries stored with any of these tags.
    Tags(Vec<String>),
    /// Every entry.
    All,
}

impl Invalidated {
    /// Whether this removes the entry stored for `key` with `tags`.
    pub(crate) fn matches(&self, key: &CacheKey, tags: Option<&[String]>) -> bool {
        match self {
            Invalidated::Paths(paths) => paths.iter().any(|path| key.path() == path),
            Invalidated::Prefix(prefix) => key.path().starts_with(prefix.as_str()),
            Invalidated::Tags(removed) => {
                tags.is_some_and(|own| own.iter().any(|tag| removed.contains(tag)))
            }
            Invalidated::All => true,
        }
    }
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

impl ResponseCache {
    /// Counts one `event`.
    pub(crate) fn count(&self, event: Event) {
        self.inner.counters.count(event);
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
    /// every 60 s, LRU, status 200, [`DEFAULT_KEYED_HEADERS`](crate::DEFAULT_KEYED_HEADERS).
    pub fn builder() -> ResponseCacheBuilder {
        ResponseCacheBuilder::default()
    }

    /// A cache with the defaults of [`builder`](Self::builder) (which are in range: nothing can
    /// fail).
    pub fn new() -> Self {
        Self::from_builder(ResponseCacheBuilder::default())
    }

    /// The cache, from settings known to be in range.
    pub(crate) fn from_builder(builder: ResponseCacheBuilder) -> Self {
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
        let notes = Moka::builder()
            .max_capacity(NOTES)
            .time_to_live(builder.ttl)
            .support_invalidation_closures()
            .build_with_hasher(foldhash::fast::RandomState::default());
        ResponseCache {
            inner: Arc::new(Inner {
                moka,
                notes,
                collapsing: Arc::default(),
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
                fence: crate::fence::Fence::default(),
            }),
        }
    }

    pub(crate) async fn insert(&self, key: CacheKey, entry: Arc<Entry>) {
        self.account(&entry);
        self.inner.moka.insert(key, entry).await;
    }

    /// Remembers that `key`'s response was not stored, and why: no stored response is pushed
    /// out for it. A stored response of the key, if any, goes.
    pub(crate) async fn note(&self, key: CacheKey, note: Note) {
        self.inner.moka.invalidate(&key).await;
        self.inner.notes.insert(key, note).await;
    }

    /// What the cache remembers of `key` as not storable, if anything.
    pub(crate) async fn noted(&self, key: &CacheKey) -> Option<Note> {
        self.inner.notes.get(key).await
    }

    /// Counts an entry about to enter moka (by `insert`); the eviction listener takes its bytes
    /// off again when it leaves.
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
        self.inner.notes.invalidate_all();
        self.inner.moka.run_pending_tasks().await;
    }

    /// Removes the entries stored for exactly this request path (every query and variant), as
    /// an application does after a write (`POST /items` → `invalidate_path("/items")`). With
    /// shared invalidation (feature `redis`) every instance removes them too.
    pub async fn invalidate_path(&self, path: &str) {
        self.publish(&Invalidated::Paths(vec![path.to_owned()]));
        let path = path.to_owned();
        self.invalidate_if(move |key| key.path() == path).await;
    }

    /// Marks the entries of these paths invalid at once, without waiting for moka to remove
    /// them: no later lookup finds them. Other instances are told too.
    pub(crate) fn invalidate_paths_now(&self, paths: Vec<String>) {
        if paths.is_empty() {
            return;
        }
        let invalidation = Invalidated::Paths(paths);
        self.publish(&invalidation);
        self.invalidate_now(invalidation);
    }

    /// Applies an invalidation here, at once, without telling anyone.
    pub(crate) fn invalidate_now(&self, invalidation: Invalidated) {
        self.inner.fence.invalidated(&invalidation);
        let moka = &self.inner.moka;
        let _ = match invalidation {
            Invalidated::All => {
                moka.invalidate_all();
                self.inner.notes.invalidate_all();
                Ok(String::new())
            }
            invalidation => {
                // A write may make a key storable that was not (a 404 that now exists).
                let notes = invalidation.clone();
                let _ = self
                    .inner
                    .notes
                    .invalidate_entries_if(move |key, _| notes.matches(key, None));
                moka.invalidate_entries_if(move |key, entry| {
                    invalidation.matches(key, entry.tags())
                })
            }
        };
    }

    /// Hands an invalidation to the shared channel, if there is one; never waits.
    fn publish(&self, invalidation: &Invalidated) {
        if let Some(fanout) = self.inner.fanout.get() {
            fanout(invalidation);
        }
    }

    /// Removes the entries whose request path starts with `prefix` (on every instance, with
    /// shared invalidation).
    pub async fn invalidate_prefix(&self, prefix: &str) {
        self.publish(&Invalidated::Prefix(prefix.to_owned()));
        let prefix = prefix.to_owned();
        self.invalidate_if(move |key| key.path().starts_with(&prefix))
            .await;
    }

    /// Removes the entries stored with `tag` (a [`CacheRouteLayer::tag`](crate::CacheRouteLayer::tag)),
    /// on every instance with shared invalidation: what a background job calls after it changed
    /// what those routes show. A write route declares the same with an
    /// [`InvalidateLayer`](crate::InvalidateLayer) instead.
    pub async fn invalidate_tag(&self, tag: &str) {
        let invalidation = Invalidated::Tags(vec![tag.to_owned()]);
        self.publish(&invalidation);
        self.invalidate_now(invalidation);
        self.inner.moka.run_pending_tasks().await;
    }

    /// Applies what a write's response declared ([`Invalidates`](crate::Invalidates)) here and
    /// on the other instances, at once.
    pub(crate) fn invalidate_declared(&self, declared: &crate::Invalidates) {
        for invalidation in declared.invalidations() {
            self.publish(&invalidation);
            self.invalidate_now(invalidation);
        }
    }

    /// Removes the entries whose key matches `predicate` (this instance's only: a predicate
    /// cannot travel to the others).
    pub async fn invalidate_if(
        &self,
        predicate: impl Fn(&CacheKey) -> bool + Send + Sync + 'static,
    ) {
        let predicate: Arc<dyn Fn(&CacheKey) -> bool + Send + Sync> = Arc::new(predicate);
        self.inner.fence.invalidated_if(Arc::clone(&predicate));
        // Only fails when the builder did not enable invalidation closures, which it does.
        let notes = Arc::clone(&predicate);
        let _ = self
            .inner
            .notes
            .invalidate_entries_if(move |key, _| notes(key));
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

impl Default for ResponseCache {
    /// [`ResponseCache::new`].
    fn default() -> Self {
        Self::new()
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

impl ResponseCacheBuilder {
    /// Builds the cache.
    ///
    /// # Errors
    ///
    /// A bound is zero, `max_entry_bytes` exceeds `max_bytes`, the TTL or cleanup interval is
    /// zero, or a weight would not fit moka's 32-bit weigher.
    pub fn build(self) -> Result<ResponseCache, ConfigError> {
        self.check()?;
        Ok(ResponseCache::from_builder(self))
    }
}
