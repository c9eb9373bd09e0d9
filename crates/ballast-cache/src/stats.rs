//! A cache's figures, and its cleanup task.

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
