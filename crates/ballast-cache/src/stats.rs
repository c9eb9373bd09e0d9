//! A cache's figures, and its cleanup task.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The running cleanup task of a [`ResponseCache`](crate::ResponseCache). Dropping it stops the task too.
#[derive(Debug)]
pub struct CleanupTask {
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) task: Option<JoinHandle<()>>,
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
    /// Requests of routes that cache (a `CacheRouteLayer`, or responses that state their
    /// freshness) that were not in the cache. Routes that never asked to be cached are bypassed,
    /// not missed, so `hit_ratio` is the cached routes' own.
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
    /// Requests that bypassed the cache: their method, credentials or request `Cache-Control`,
    /// or a route that never asked to be cached (they carry no `x-cache`).
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

impl Counters {
    /// Counts one `event`.
    pub(crate) fn count(&self, event: Event) {
        tracing::debug!(cache.event = event.name());
        let counters = self;
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
