//! Read replicas beside the primary: [`ReplicaSet`], the task that reads each replica's lag, and
//! the choice of a connection for a read.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ballast_core::Failure;
use serde::Serialize;

use crate::connect::Connect;
use crate::pool::SharedPool;
use crate::pooled::PooledConnection;
use crate::stats::PoolStats;

/// How far behind the primary a replica may be and still take reads, by default.
const DEFAULT_MAX_LAG: Duration = Duration::from_secs(5);
/// How often each replica's lag is read, by default.
const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The longest a read waits for a replica's connection before it takes the primary's: a
/// replica that is slow to hand one out costs a read almost nothing.
const REPLICA_WAIT: Duration = Duration::from_millis(50);

/// A primary and its streaming replicas (PostgreSQL), for reads that may be served by a replica.
///
/// Each replica is a [`SharedPool`] of its own, with the same URL parameters as the primary's
/// (its own `connection_limit`: the replica's server has its own connection budget). A task reads
/// each replica's lag every `lag_check_interval` (1 s): how far its replay is behind the
/// primary's WAL position, in time (`pg_last_wal_replay_lsn()` against `pg_current_wal_lsn()`,
/// and the replay timestamp) — never per request. A replica that answers and is at most
/// `max_replica_lag` (5 s) behind is *fresh*.
///
/// [`get_read`](Self::get_read) (and the [`ReadConn`](crate::ReadConn) extractor) takes a
/// connection of the next fresh replica, in turn; when there is none, or its pool does not hand
/// one out within 50 ms, the primary's. A replica that is down, lagging or refusing connections
/// costs a read nothing (no 503, no wait); it takes reads again once a check finds it fresh.
/// MySQL and MariaDB replicas are never fresh (GTID-based routing is not supported): reads use the
/// primary there.
///
/// Cheap to clone; the lag task ends when the last clone is dropped or the primary is closed.
/// Build it inside a Tokio runtime (the task is spawned then).
///
/// ```no_run
/// use std::time::Duration;
/// use ballast_pool::{PoolConfig, ReplicaSet, SharedPool};
/// use diesel_async::AsyncPgConnection;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let primary = SharedPool::<AsyncPgConnection>::new(PoolConfig::from_url("postgres://app@db-1/shop")?)?;
/// let replica = SharedPool::new(PoolConfig::from_url("postgres://app@db-2/shop")?)?;
/// let reads = ReplicaSet::builder(primary)
///     .replica(replica)
///     .max_replica_lag(Duration::from_secs(2))
///     .build();
/// let conn = reads.get_read().await?; // a fresh replica's, or the primary's
/// # drop(conn);
/// # Ok(())
/// # }
/// ```
pub struct ReplicaSet<C: Connect> {
    inner: Arc<Inner<C>>,
}

struct Inner<C: Connect> {
    primary: SharedPool<C>,
    replicas: Vec<Replica<C>>,
    max_lag: Duration,
    check_interval: Duration,
    next: AtomicUsize,
    to_replica: AtomicU64,
    to_primary: AtomicU64,
}

struct Replica<C: Connect> {
    pool: SharedPool<C>,
    fresh: AtomicBool,
    /// Microseconds behind the primary at the last check; `u64::MAX`: unknown.
    lag_micros: AtomicU64,
    /// Its pool's lost connections at the last check: a loss since (the replica stopping under
    /// a read) sets it aside until the next check.
    lost_at_check: AtomicU64,
}

/// Builds a [`ReplicaSet`].
pub struct ReplicaSetBuilder<C: Connect> {
    primary: SharedPool<C>,
    replicas: Vec<SharedPool<C>>,
    max_lag: Duration,
    check_interval: Duration,
}

impl<C: Connect> fmt::Debug for ReplicaSetBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaSetBuilder")
            .field("replicas", &self.replicas.len())
            .field("max_replica_lag", &self.max_lag)
            .field("lag_check_interval", &self.check_interval)
            .finish_non_exhaustive()
    }
}

impl<C: Connect> ReplicaSetBuilder<C> {
    /// Adds a replica.
    #[must_use]
    pub fn replica(mut self, pool: SharedPool<C>) -> Self {
        self.replicas.push(pool);
        self
    }

    /// Sets how far behind the primary a replica may be and still take reads. Defaults to 5 s.
    #[must_use]
    pub fn max_replica_lag(mut self, lag: Duration) -> Self {
        self.max_lag = lag;
        self
    }

    /// Sets how often each replica's lag is read (at least 10 ms). Defaults to 1 s.
    #[must_use]
    pub fn lag_check_interval(mut self, interval: Duration) -> Self {
        self.check_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// The set, its lag task started.
    pub fn build(self) -> ReplicaSet<C> {
        let inner = Arc::new(Inner {
            primary: self.primary,
            replicas: self
                .replicas
                .into_iter()
                .map(|pool| Replica {
                    pool,
                    fresh: AtomicBool::new(false),
                    lag_micros: AtomicU64::new(u64::MAX),
                    lost_at_check: AtomicU64::new(0),
                })
                .collect(),
            max_lag: self.max_lag,
            check_interval: self.check_interval,
            next: AtomicUsize::new(0),
            to_replica: AtomicU64::new(0),
            to_primary: AtomicU64::new(0),
        });
        if !inner.replicas.is_empty() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(watch_lag(Arc::downgrade(&inner)));
            }
        }
        ReplicaSet { inner }
    }
}

impl<C: Connect> ReplicaSet<C> {
    /// A builder for the replicas of `primary`.
    pub fn builder(primary: SharedPool<C>) -> ReplicaSetBuilder<C> {
        ReplicaSetBuilder {
            primary,
            replicas: Vec::new(),
            max_lag: DEFAULT_MAX_LAG,
            check_interval: DEFAULT_CHECK_INTERVAL,
        }
    }

    /// The primary's pool.
    pub fn primary(&self) -> &SharedPool<C> {
        &self.inner.primary
    }

    /// A connection for a read: a fresh replica's (in turn), or the primary's.
    ///
    /// # Errors
    ///
    /// The primary's checkout failure, when the read falls back to it and it fails.
    pub async fn get_read(&self) -> Result<PooledConnection<C>, Failure> {
        let inner = &*self.inner;
        let count = inner.replicas.len();
        if count > 0 {
            let start = inner.next.fetch_add(1, Ordering::Relaxed);
            for offset in 0..count {
                let replica = &inner.replicas[(start + offset) % count];
                // Fresh at its last check, and no connection of it lost since.
                if !replica.fresh.load(Ordering::Acquire)
                    || replica.pool.connections_lost()
                        != replica.lost_at_check.load(Ordering::Acquire)
                {
                    continue;
                }
                if let Ok(Ok(conn)) = tokio::time::timeout(REPLICA_WAIT, replica.pool.get()).await {
                    inner.to_replica.fetch_add(1, Ordering::Relaxed);
                    return Ok(conn);
                }
            }
        }
        inner.to_primary.fetch_add(1, Ordering::Relaxed);
        inner.primary.get().await
    }

    /// The figures now: each replica's state, and where reads went.
    pub fn stats(&self) -> ReplicaStats {
        let inner = &*self.inner;
        ReplicaStats {
            replicas: inner
                .replicas
                .iter()
                .map(|replica| {
                    let micros = replica.lag_micros.load(Ordering::Relaxed);
                    ReplicaState {
                        fresh: replica.fresh.load(Ordering::Relaxed),
                        lag_seconds: (micros != u64::MAX)
                            .then(|| Duration::from_micros(micros).as_secs_f64()),
                        pool: replica.pool.stats(),
                    }
                })
                .collect(),
            reads_to_replicas: inner.to_replica.load(Ordering::Relaxed),
            reads_to_primary: inner.to_primary.load(Ordering::Relaxed),
        }
    }
}

impl<C: Connect> Clone for ReplicaSet<C> {
    fn clone(&self) -> Self {
        ReplicaSet {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<C: Connect> fmt::Debug for ReplicaSet<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaSet")
            .field("replicas", &self.inner.replicas.len())
            .field("max_replica_lag", &self.inner.max_lag)
            .field("lag_check_interval", &self.inner.check_interval)
            .finish_non_exhaustive()
    }
}

/// A [`ReplicaSet`]'s figures ([`ReplicaSet::stats`]).
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaStats {
    /// Each replica, in the order added.
    pub replicas: Vec<ReplicaState>,
    /// Reads a replica served.
    pub reads_to_replicas: u64,
    /// Reads the primary served: no replica was fresh, or none handed out a connection in time.
    pub reads_to_primary: u64,
}

/// One replica's state at its last lag check.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaState {
    /// Whether it takes reads.
    pub fresh: bool,
    /// How far behind the primary it was, in seconds; `None` when it could not be read.
    pub lag_seconds: Option<f64>,
    /// Its pool's figures.
    pub pool: PoolStats,
}

/// Reads each replica's lag every interval, until the set is dropped or the primary closed.
async fn watch_lag<C: Connect>(inner: Weak<Inner<C>>) {
    loop {
        let Some(set) = inner.upgrade() else {
            return;
        };
        if set.primary.is_closed() {
            return;
        }
        let interval = set.check_interval;
        let primary_position = async {
            let mut conn = set.primary.get().await.ok()?;
            conn.wal_position().await.ok().flatten()
        };
        let primary_position = tokio::time::timeout(interval, primary_position)
            .await
            .ok()
            .flatten();
        for replica in &set.replicas {
            let lost = replica.pool.connections_lost();
            let status = tokio::time::timeout(interval, async {
                let mut conn = replica.pool.get().await?;
                conn.replay_status().await
            })
            .await;
            let lag = match (status, primary_position) {
                (Ok(Ok(Some(status))), Some(primary)) if status.position >= primary => {
                    Some(Duration::ZERO)
                }
                (Ok(Ok(Some(status))), _) => Some(status.behind),
                _ => None,
            };
            let fresh = lag.is_some_and(|lag| lag <= set.max_lag);
            replica.lost_at_check.store(lost, Ordering::Release);
            let was = replica.fresh.swap(fresh, Ordering::AcqRel);
            if was != fresh {
                tracing::info!(
                    replica = %ballast_core::redact(replica.pool.config().driver_url()),
                    fresh,
                    lag = ?lag,
                    "read replica {}",
                    if fresh { "takes reads again" } else { "takes no reads" }
                );
            }
            let micros = lag.map_or(u64::MAX, |lag| {
                u64::try_from(lag.as_micros()).unwrap_or(u64::MAX - 1)
            });
            replica.lag_micros.store(micros, Ordering::Relaxed);
        }
        drop(set);
        tokio::time::sleep(interval).await;
    }
}

/// Where a replica's replay stands.
#[derive(Debug, Clone, Copy)]
#[doc(hidden)]
pub struct Replay {
    /// The WAL position it has replayed up to.
    pub position: u64,
    /// How long ago the last transaction it replayed committed on the primary (zero when it is
    /// not in recovery).
    pub behind: Duration,
}
