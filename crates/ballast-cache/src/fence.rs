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

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::key::CacheKey;
use crate::store::Invalidated;

/// How many distinct invalidations are remembered: beyond it the oldest is forgotten, and a fill
/// older than a forgotten one is not stored (it cannot be told apart from one that predates it).
/// A write route that invalidates the same path again and again takes one place, at its latest
/// moment.
const REMEMBERED: usize = 4096;
/// Invalidations older than this are forgotten first: no fill, replica lag included, is older.
const HORIZON: Duration = Duration::from_secs(60);

/// An application's predicate ([`ResponseCache::invalidate_if`](crate::ResponseCache::invalidate_if)).
type Predicate = Arc<dyn Fn(&CacheKey) -> bool + Send + Sync>;

/// The log of recent invalidations.
#[derive(Default)]
pub(crate) struct Fence {
    log: Mutex<Log>,
}

#[derive(Default)]
struct Log {
    /// Each known invalidation (paths, a prefix, tags, everything) at its latest moment.
    known: HashMap<Invalidated, Instant>,
    /// The applications' predicates, oldest first.
    predicates: VecDeque<(Instant, Predicate)>,
    /// The moment of the newest invalidation no longer remembered.
    forgotten: Option<Instant>,
}

impl fmt::Debug for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let log = self.lock();
        f.debug_struct("Fence")
            .field("known", &log.known.len())
            .field("predicates", &log.predicates.len())
            .finish_non_exhaustive()
    }
}

impl Log {
    /// Forgets what is past the horizon, then the oldest while more than [`REMEMBERED`] are kept.
    fn trim(&mut self, now: Instant) {
        if self.known.len() + self.predicates.len() <= REMEMBERED {
            return;
        }
        let horizon = now.checked_sub(HORIZON);
        let mut forgotten = self.forgotten;
        self.known.retain(|_, at| {
            let keep = horizon.is_none_or(|horizon| *at >= horizon);
            if !keep {
                forgotten = forgotten.max(Some(*at));
            }
            keep
        });
        while self.known.len() + self.predicates.len() > REMEMBERED {
            let oldest_known = self
                .known
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(invalidation, at)| (invalidation.clone(), *at));
            let oldest_predicate = self.predicates.front().map(|(at, _)| *at);
            let at = match (oldest_known, oldest_predicate) {
                (Some((_, known)), Some(predicate)) if predicate < known => {
                    self.predicates.pop_front();
                    predicate
                }
                (Some((invalidation, known)), _) => {
                    self.known.remove(&invalidation);
                    known
                }
                (None, Some(predicate)) => {
                    self.predicates.pop_front();
                    predicate
                }
                (None, None) => break,
            };
            forgotten = forgotten.max(Some(at));
        }
        self.forgotten = forgotten;
    }
}

impl Fence {
    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Logs an invalidation applied now.
    pub(crate) fn invalidated(&self, invalidation: &Invalidated) {
        let mut log = self.lock();
        let now = Instant::now();
        match log.known.get_mut(invalidation) {
            Some(at) => *at = now,
            None => {
                log.known.insert(invalidation.clone(), now);
                log.trim(now);
            }
        }
    }

    /// Logs an application's predicate applied now.
    pub(crate) fn invalidated_if(&self, predicate: Predicate) {
        let mut log = self.lock();
        let now = Instant::now();
        log.predicates.push_back((now, predicate));
        log.trim(now);
    }

    /// Whether a response for `key` (stored with `tags`) built from data current as of `as_of`
    /// predates an invalidation that removed, or would have removed, it.
    pub(crate) fn predates(&self, key: &CacheKey, tags: Option<&[String]>, as_of: Instant) -> bool {
        let log = self.lock();
        if log.forgotten.is_some_and(|at| at >= as_of) {
            return true;
        }
        log.known
            .iter()
            .any(|(invalidation, at)| *at >= as_of && invalidation.matches(key, tags))
            || log
                .predicates
                .iter()
                .rev()
                .take_while(|(at, _)| *at >= as_of)
                .any(|(_, predicate)| predicate(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hot_write_route_takes_one_place_and_forgets_nothing_else() {
        let fence = Fence::default();
        let as_of = Instant::now();
        let items = Invalidated::Paths(vec!["/items".to_owned()]);
        for _ in 0..(REMEMBERED * 2) {
            fence.invalidated(&items);
        }
        assert_eq!(fence.lock().known.len(), 1);
        assert_eq!(fence.lock().forgotten, None);
        let key = |path: &str| CacheKey::new(path, "host");
        assert!(fence.predates(&key("/items"), None, as_of));
        assert!(
            !fence.predates(&key("/users"), None, as_of),
            "another path's fill is kept"
        );
    }
}
