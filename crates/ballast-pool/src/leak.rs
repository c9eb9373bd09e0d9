//! Hold-time warnings (`leak_threshold`): a connection checked out for longer than the threshold
//! is logged once, with where it was checked out and for which request — HikariCP's
//! `leakDetectionThreshold`.
//!
//! A connection held for minutes is either a leak (a handle stored and forgotten, a task that
//! never ends) or a request doing far more than it should; either way the pool is a connection
//! short until it comes back, and nothing else says so. With the threshold set, each checkout is
//! noted — when, the caller's source location (`#[track_caller]` on
//! [`SharedPool::get`](crate::SharedPool::get)), the request's path where a request-timeout
//! layer recorded it — and a background task looks every quarter threshold for the ones past
//! it: one `WARN` each, and [`PoolStats::held_too_long`](crate::PoolStats::held_too_long)
//! counts them. The connection keeps working: this is a warning, not a timeout.
//!
//! Off (the default), a checkout pays one branch.

use std::collections::HashMap;
use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The longest pause between two looks for connections held too long, whatever the threshold.
const MOST_BETWEEN_LOOKS: Duration = Duration::from_secs(5);
/// The shortest, so a tiny threshold cannot make the task spin.
const LEAST_BETWEEN_LOOKS: Duration = Duration::from_millis(10);

/// One checked-out connection, as the warning names it.
#[derive(Debug)]
struct Holder {
    since: Instant,
    location: &'static Location<'static>,
    path: Option<String>,
    warned: bool,
}

/// The connections checked out now, when `leak_threshold` is set.
#[derive(Debug, Default)]
pub(crate) struct Holders {
    next: AtomicU64,
    held: Mutex<HashMap<u64, Holder>>,
    /// Connections that were held past the threshold.
    pub(crate) held_too_long: AtomicU64,
}

impl Holders {
    /// Notes a checkout; the number to give back to [`returned`](Self::returned).
    pub(crate) fn checked_out(
        &self,
        location: &'static Location<'static>,
        path: Option<String>,
    ) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let holder = Holder {
            since: Instant::now(),
            location,
            path,
            warned: false,
        };
        self.lock().insert(id, holder);
        id
    }

    /// The connection of checkout `id` came back.
    pub(crate) fn returned(&self, id: u64, threshold: Duration) {
        let Some(holder) = self.lock().remove(&id) else {
            return;
        };
        if holder.warned {
            tracing::info!(
                db.client.connection.pool.name = "ballast",
                held_ms = millis(holder.since.elapsed()),
                leak_threshold_ms = millis(threshold),
                checked_out_at = %holder.location,
                path = holder.path.as_deref().unwrap_or("none"),
                "a connection held past leak_threshold came back"
            );
        }
    }

    /// Warns once about each connection held past `threshold`.
    pub(crate) fn look(&self, threshold: Duration) {
        let now = Instant::now();
        let mut held = self.lock();
        for holder in held.values_mut() {
            let for_ = now.saturating_duration_since(holder.since);
            if holder.warned || for_ < threshold {
                continue;
            }
            holder.warned = true;
            self.held_too_long.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                db.client.connection.pool.name = "ballast",
                held_ms = millis(for_),
                leak_threshold_ms = millis(threshold),
                checked_out_at = %holder.location,
                path = holder.path.as_deref().unwrap_or("none"),
                "a connection has been checked out for {for_:?}, past leak_threshold \
                 ({threshold:?}): checked out at {} for {}; a leak, or a request holding its \
                 connection far longer than it should",
                holder.location,
                holder.path.as_deref().unwrap_or("no request path recorded")
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Holder>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How often the watch looks for connections held past `threshold`: a quarter of it, within
/// bounds.
pub(crate) fn look_every(threshold: Duration) -> Duration {
    (threshold / 4).clamp(LEAST_BETWEEN_LOOKS, MOST_BETWEEN_LOOKS)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_once_per_connection_past_the_threshold() {
        let holders = Holders::default();
        let here = Location::caller();
        let old = holders.checked_out(here, Some("/reports".to_owned()));
        let young = holders.checked_out(here, None);
        holders.lock().get_mut(&old).unwrap().since -= Duration::from_secs(10);
        holders.look(Duration::from_secs(5));
        holders.look(Duration::from_secs(5));
        assert_eq!(holders.held_too_long.load(Ordering::Relaxed), 1);
        holders.returned(old, Duration::from_secs(5));
        holders.returned(young, Duration::from_secs(5));
        assert!(holders.lock().is_empty());
    }
}
