//! The invalidations of the last moments, so that a response built before one is not stored
//! after it.
//!
//! moka's predicate invalidation removes the entries present when it runs. A fill already on its
//! way — the service read the data before a write committed and answers after the write's
//! invalidation — would store a copy older than the write, and keep it for its whole lifetime;
//! a read on a streaming replica widens that window to the replica's lag. Every invalidation is
//! logged here with its moment; a fill is stored only when no invalidation of its key came after
//! the moment its data is current as of (the fill's start, or earlier where a replica read said
//! so through [`DataAsOf`](ballast_core::scope::DataAsOf)).

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::key::CacheKey;
use crate::store::Invalidated;

/// How many invalidations are remembered: a fill older than the oldest of them is not stored
/// (it cannot be told apart from one that predates a forgotten invalidation).
const REMEMBERED: usize = 256;

/// What one logged invalidation removed.
enum Removed {
    /// A known invalidation (paths, a prefix, tags, everything).
    Known(Invalidated),
    /// An application's own predicate ([`ResponseCache::invalidate_if`](crate::ResponseCache::invalidate_if)).
    Predicate(Arc<dyn Fn(&CacheKey) -> bool + Send + Sync>),
}

impl Removed {
    fn matches(&self, key: &CacheKey, tags: Option<&[String]>) -> bool {
        match self {
            Removed::Known(invalidation) => invalidation.matches(key, tags),
            Removed::Predicate(predicate) => predicate(key),
        }
    }
}

/// The log of recent invalidations.
#[derive(Default)]
pub(crate) struct Fence {
    log: Mutex<Log>,
}

#[derive(Default)]
struct Log {
    recent: VecDeque<(Instant, Removed)>,
    /// The moment of the newest invalidation no longer remembered.
    forgotten: Option<Instant>,
}

impl fmt::Debug for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Fence")
            .field("remembered", &log.recent.len())
            .finish_non_exhaustive()
    }
}

impl Fence {
    /// Logs an invalidation applied now.
    pub(crate) fn invalidated(&self, invalidation: &Invalidated) {
        self.push(Removed::Known(invalidation.clone()));
    }

    /// Logs an application's predicate applied now.
    pub(crate) fn invalidated_if(&self, predicate: Arc<dyn Fn(&CacheKey) -> bool + Send + Sync>) {
        self.push(Removed::Predicate(predicate));
    }

    fn push(&self, removed: Removed) {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if log.recent.len() == REMEMBERED {
            if let Some((at, _)) = log.recent.pop_front() {
                log.forgotten = Some(at);
            }
        }
        log.recent.push_back((Instant::now(), removed));
    }

    /// Whether a response for `key` (stored with `tags`) built from data current as of `as_of`
    /// predates an invalidation that removed, or would have removed, it.
    pub(crate) fn predates(&self, key: &CacheKey, tags: Option<&[String]>, as_of: Instant) -> bool {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if log.forgotten.is_some_and(|at| at >= as_of) {
            return true;
        }
        log.recent
            .iter()
            .rev()
            .take_while(|(at, _)| *at >= as_of)
            .any(|(_, removed)| removed.matches(key, tags))
    }
}
