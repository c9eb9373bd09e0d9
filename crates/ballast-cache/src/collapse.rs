//! Collapsed requests (RFC 9111 §4): concurrent misses of one key wait for one request to the
//! service, but only when its answer can serve them.
//!
//! The first request for a key (the leader) registers a [`Fill`]; the others join it. A joining
//! request waits only when the fill is [asked](Fill::asked): the leader's route asked to be
//! cached ([`CacheRouteLayer`](crate::CacheRouteLayer) says so as the request reaches it, before
//! the handler runs), or the key is known to store (it held a response, or the cache stores
//! unmarked responses). Otherwise it goes to the service on its own: a route that never asked
//! to be cached is never collapsed. The moment the leader's answer turns out not storable, fails,
//! or its client goes away (the leader is dropped), every waiter goes to the service at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use crate::entry::Entry;
use crate::key::CacheKey;

/// The fills in flight, by key.
#[derive(Default)]
pub(crate) struct Collapsing {
    fills: Mutex<HashMap<CacheKey, Arc<Fill>, foldhash::fast::RandomState>>,
}

/// One request to the service that others may wait for.
pub(crate) struct Fill {
    asked: AtomicBool,
    outcome: watch::Sender<Option<Outcome>>,
}

/// What a fill ended with, for the requests that waited.
#[derive(Clone)]
pub(crate) enum Outcome {
    /// Stored for the key: a response, or the note that responses vary.
    Stored(Arc<Entry>),
    /// Nothing a waiter can use: each goes to the service itself.
    Go,
}

/// A request's part in the collapsing of its key.
pub(crate) enum Joined {
    /// The first: it asks the service, and says what came of it.
    Leader(Leader),
    /// Another fill was in flight.
    Waiter(Arc<Fill>),
}

/// The leader's place: what it ends with goes to the waiters; dropped without an end (its
/// client went away), it sends them to the service at once.
pub(crate) struct Leader {
    fills: Arc<Collapsing>,
    key: CacheKey,
    fill: Arc<Fill>,
}

/// The request extension by which [`CacheRoute`](crate::route::CacheRoute) tells the leader's
/// fill that its route asked to be cached.
#[derive(Clone)]
pub(crate) struct Asking(pub(crate) Arc<Fill>);

impl Collapsing {
    /// Joins the fill in flight for `key`, or starts one; `asked`: the key is known to store.
    pub(crate) fn join(self: &Arc<Self>, key: &CacheKey, asked: bool) -> Joined {
        let mut fills = self.fills.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(fill) = fills.get(key) {
            return Joined::Waiter(Arc::clone(fill));
        }
        let fill = Arc::new(Fill {
            asked: AtomicBool::new(asked),
            outcome: watch::Sender::new(None),
        });
        fills.insert(key.clone(), Arc::clone(&fill));
        Joined::Leader(Leader {
            fills: Arc::clone(self),
            key: key.clone(),
            fill,
        })
    }
}

impl Fill {
    /// Whether waiting for this fill can serve: see the [module docs](self).
    pub(crate) fn asked(&self) -> bool {
        self.asked.load(Ordering::Acquire)
    }

    /// The leader's route asked to be cached.
    pub(crate) fn ask(&self) {
        self.asked.store(true, Ordering::Release);
    }

    /// What the fill ends with.
    pub(crate) async fn outcome(&self) -> Outcome {
        let mut outcome = self.outcome.subscribe();
        let ended = match outcome.wait_for(Option::is_some).await {
            Ok(ended) => ended.clone(),
            Err(_) => None,
        };
        ended.unwrap_or(Outcome::Go)
    }
}

impl Leader {
    /// The extension that lets the leader's route say it asked.
    pub(crate) fn asking(&self) -> Asking {
        Asking(Arc::clone(&self.fill))
    }

    /// Ends the fill with `outcome`.
    pub(crate) fn finish(self, outcome: Outcome) {
        self.fill.outcome.send_replace(Some(outcome));
        // `Drop` takes the fill out of the map.
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        // Unless finished: the client went away; the waiters go to the service at once.
        self.fill.outcome.send_if_modified(|outcome| {
            if outcome.is_none() {
                *outcome = Some(Outcome::Go);
                true
            } else {
                false
            }
        });
        let mut fills = self
            .fills
            .fills
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if fills
            .get(&self.key)
            .is_some_and(|fill| Arc::ptr_eq(fill, &self.fill))
        {
            fills.remove(&self.key);
        }
    }
}
