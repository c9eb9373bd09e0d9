//! Read replicas beside the primary: [`ReplicaSet`], the task that reads each replica's lag, the
//! choice of a connection for a read, and read-your-writes over HTTP
//! ([`ReadYourWritesLayer`](crate::ReadYourWritesLayer)).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_core::scope::DataAsOf;
use ballast_core::Failure;

use crate::connect::Connect;
use crate::pool::SharedPool;
use crate::pooled::PooledConnection;

mod lag;
#[cfg(feature = "axum")]
mod layer;
mod position;
pub(crate) mod scope;
mod stats;

pub(crate) use lag::Replay;
#[cfg(feature = "axum")]
pub use layer::{ReadYourWrites, ReadYourWritesFuture, ReadYourWritesLayer, READ_AFTER};
pub use position::{InvalidWalPosition, WalPosition};
pub use stats::{ReadRoutes, ReplicaState, ReplicaStats};

/// How far behind the primary a replica may be and still take reads, by default.
const DEFAULT_MAX_LAG: Duration = Duration::from_secs(5);
/// How often each replica's lag is read, by default.
const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long a read with a token waits for a replica to replay up to it, by default.
const DEFAULT_TOKEN_WAIT: Duration = Duration::from_millis(100);
/// The longest a read waits for a replica's connection before it takes the primary's: a
/// replica that is slow to hand one out costs a read almost nothing.
const REPLICA_WAIT: Duration = Duration::from_millis(50);
/// How often a read waiting for its token asks the replica where its replay stands.
const TOKEN_POLL: Duration = Duration::from_millis(5);

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
///
/// **Read-your-writes.** Under a [`ReadYourWritesLayer`](crate::ReadYourWritesLayer), a request
/// that carries a token of its client's last write (a [`WalPosition`]) is served by a replica
/// only once the replica has replayed up to it: at once when the last check saw it there, after
/// waiting at most `max_token_wait` (100 ms) when its lag is that short, else by the primary. A
/// token beyond the primary's own position is capped at it, so a made-up one costs at most that
/// wait. A replica read tells a response cache around it how current its data is
/// ([`DataAsOf`]), so the cache never keeps a copy older than a write it has seen invalidated.
///
/// **Writes** through a replica's connection are refused by the replica (`25006`): the error log
/// says a handler wrote through a read connection, and under the layer the request is answered
/// `500 CRITICAL_ERROR` — a bug to fix, not an outage to retry. The replica is not set aside.
///
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
    token_wait: Duration,
    next: AtomicUsize,
    /// The primary's position: the latest read, and reads after writes.
    position: position::PrimaryPosition,
    /// Where reads went, by reason.
    routes: stats::RouteCounters,
    /// The moment the `current_as_of` figures count from.
    epoch: Instant,
}

struct Replica<C: Connect> {
    pool: SharedPool<C>,
    fresh: AtomicBool,
    /// Microseconds behind the primary at the last check; `u64::MAX`: unknown.
    lag_micros: AtomicU64,
    /// Its pool's lost connections at the last check: a loss since (the replica stopping under
    /// a read) sets it aside until the next check.
    lost_at_check: AtomicU64,
    /// The highest WAL position it was seen to have replayed.
    replayed: AtomicU64,
    /// Microseconds after the set's `epoch`: it had replayed everything the primary committed
    /// before then, at its last check.
    current_as_of: AtomicU64,
}

impl<C: Connect> Replica<C> {
    fn saw(&self, position: u64) {
        self.replayed.fetch_max(position, Ordering::AcqRel);
    }

    fn set_current_as_of(&self, set: &Inner<C>, as_of: Instant) {
        let micros = as_of.saturating_duration_since(set.epoch).as_micros();
        self.current_as_of
            .store(u64::try_from(micros).unwrap_or(u64::MAX), Ordering::Release);
    }

    fn current_as_of(&self, set: &Inner<C>) -> Instant {
        set.epoch + Duration::from_micros(self.current_as_of.load(Ordering::Acquire))
    }

    /// Fresh at its last check, and no connection of it lost since.
    fn takes_reads(&self) -> bool {
        self.fresh.load(Ordering::Acquire)
            && self.pool.connections_lost() == self.lost_at_check.load(Ordering::Acquire)
    }
}

/// Builds a [`ReplicaSet`].
pub struct ReplicaSetBuilder<C: Connect> {
    primary: SharedPool<C>,
    replicas: Vec<SharedPool<C>>,
    max_lag: Duration,
    check_interval: Duration,
    token_wait: Duration,
}

impl<C: Connect> fmt::Debug for ReplicaSetBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaSetBuilder")
            .field("replicas", &self.replicas.len())
            .field("max_replica_lag", &self.max_lag)
            .field("lag_check_interval", &self.check_interval)
            .field("max_token_wait", &self.token_wait)
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

    /// Sets the longest a read with a read-your-writes token waits for a replica to replay up
    /// to it before it takes the primary's connection. Only replicas whose lag is at most this
    /// are waited for. Defaults to 100 ms; zero never waits.
    #[must_use]
    pub fn max_token_wait(mut self, wait: Duration) -> Self {
        self.token_wait = wait;
        self
    }

    /// The set, its lag task started.
    pub fn build(self) -> ReplicaSet<C> {
        for replica in &self.replicas {
            replica.serve_reads_only();
        }
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
                    replayed: AtomicU64::new(0),
                    current_as_of: AtomicU64::new(0),
                })
                .collect(),
            max_lag: self.max_lag,
            check_interval: self.check_interval,
            token_wait: self.token_wait,
            next: AtomicUsize::new(0),
            position: position::PrimaryPosition::default(),
            routes: stats::RouteCounters::default(),
            epoch: Instant::now(),
        });
        if !inner.replicas.is_empty() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(lag::watch_lag(Arc::downgrade(&inner)));
            }
        }
        ReplicaSet { inner }
    }
}

/// Why a read went where it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// A fresh replica (that had replayed the token, if there was one).
    Replica,
    /// A replica, after waiting for it to replay the token.
    ReplicaAfterWait,
    /// The primary: no replica was fresh or handed out a connection in time.
    PrimaryNoReplica,
    /// The primary: no replica replayed the token in time.
    PrimaryBehindToken,
}

impl<C: Connect> ReplicaSet<C> {
    /// A builder for the replicas of `primary`.
    pub fn builder(primary: SharedPool<C>) -> ReplicaSetBuilder<C> {
        ReplicaSetBuilder {
            primary,
            replicas: Vec::new(),
            max_lag: DEFAULT_MAX_LAG,
            check_interval: DEFAULT_CHECK_INTERVAL,
            token_wait: DEFAULT_TOKEN_WAIT,
        }
    }

    /// The primary's pool.
    pub fn primary(&self) -> &SharedPool<C> {
        &self.inner.primary
    }

    /// The replicas' pools, in the order added.
    pub fn replicas(&self) -> impl ExactSizeIterator<Item = &SharedPool<C>> {
        self.inner.replicas.iter().map(|replica| &replica.pool)
    }

    /// Whether writes get read-your-writes tokens: a PostgreSQL primary with replicas (MySQL and
    /// MariaDB have no WAL position to give).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn gives_tokens(&self) -> bool {
        !self.inner.replicas.is_empty()
            && self.inner.primary.config().backend() == crate::Backend::Postgres
    }

    /// How long a read-your-writes token lasts: once this much time has passed since a write,
    /// every fresh replica has replayed it (`max_replica_lag` plus one `lag_check_interval`,
    /// rounded up to whole seconds, at least one).
    pub fn token_lifetime(&self) -> Duration {
        let lifetime = self.inner.max_lag + self.inner.check_interval;
        Duration::from_secs(lifetime.as_secs() + u64::from(lifetime.subsec_nanos() > 0))
            .max(Duration::from_secs(1))
    }

    /// A connection for a read: a fresh replica's (in turn), or the primary's. Under a
    /// [`ReadYourWritesLayer`](crate::ReadYourWritesLayer), a replica's only once it has
    /// replayed the request's token.
    ///
    /// # Errors
    ///
    /// The primary's checkout failure, when the read falls back to it and it fails.
    pub async fn get_read(&self) -> Result<PooledConnection<C>, Failure> {
        self.get_read_after(scope::ReadScope::after()).await
    }

    /// A connection for a read that must see `after` (a read-your-writes token), if given: a
    /// fresh replica's that has replayed it, or the primary's.
    ///
    /// # Errors
    ///
    /// The primary's checkout failure, when the read falls back to it and it fails.
    pub async fn get_read_after(
        &self,
        after: Option<WalPosition>,
    ) -> Result<PooledConnection<C>, Failure> {
        let (conn, route) = self.route(after).await;
        self.inner.routes.count(route);
        match conn {
            Some(conn) => Ok(conn),
            None => self.inner.primary.get().await,
        }
    }

    /// The replica connection for a read, and why; `None`: the primary's.
    async fn route(&self, after: Option<WalPosition>) -> (Option<PooledConnection<C>>, Route) {
        let inner = &*self.inner;
        let count = inner.replicas.len();
        if count == 0 {
            return (None, Route::PrimaryNoReplica);
        }
        let after = match after {
            Some(after) => match self.cap(u64::from(after)).await {
                Some(after) => Some(after),
                // The primary's position could not be read: only the primary is sure.
                None => return (None, Route::PrimaryBehindToken),
            },
            None => None,
        };
        let start = inner.next.fetch_add(1, Ordering::Relaxed);
        let mut fresh_seen = false;
        let mut worth_waiting: Option<&Replica<C>> = None;
        for offset in 0..count {
            let replica = &inner.replicas[(start + offset) % count];
            if !replica.takes_reads() {
                continue;
            }
            fresh_seen = true;
            if let Some(after) = after {
                if replica.replayed.load(Ordering::Acquire) < after {
                    let lag = Duration::from_micros(replica.lag_micros.load(Ordering::Relaxed));
                    if worth_waiting.is_none() && lag <= inner.token_wait {
                        worth_waiting = Some(replica);
                    }
                    continue;
                }
            }
            if let Ok(Ok(conn)) = tokio::time::timeout(REPLICA_WAIT, replica.pool.get()).await {
                DataAsOf::record(replica.current_as_of(inner));
                return (Some(conn), Route::Replica);
            }
        }
        if let (Some(after), Some(replica)) = (after, worth_waiting) {
            if let Some(conn) = self.wait_for(replica, after).await {
                DataAsOf::record(replica.current_as_of(inner));
                return (Some(conn), Route::ReplicaAfterWait);
            }
        }
        if after.is_some() && fresh_seen {
            (None, Route::PrimaryBehindToken)
        } else {
            (None, Route::PrimaryNoReplica)
        }
    }

    /// `after`, capped at the primary's position: read again when `after` is beyond the last
    /// one seen (a write that committed since, or a made-up token). `None` when it cannot be
    /// read.
    async fn cap(&self, after: u64) -> Option<u64> {
        let inner = &*self.inner;
        let known = inner.position.known.load(Ordering::Acquire);
        if after <= known {
            return Some(after);
        }
        let now = tokio::time::timeout(
            inner.token_wait.max(REPLICA_WAIT),
            inner.position.read_now(&inner.primary),
        )
        .await;
        match now {
            Ok(Ok(now)) => Some(after.min(now)),
            _ => None,
        }
    }

    /// A connection of `replica` once it has replayed `after`, asking it every few milliseconds
    /// for at most `max_token_wait`.
    async fn wait_for(&self, replica: &Replica<C>, after: u64) -> Option<PooledConnection<C>> {
        let deadline = tokio::time::Instant::now() + self.inner.token_wait;
        let mut conn = tokio::time::timeout_at(deadline, replica.pool.get())
            .await
            .ok()?
            .ok()?;
        loop {
            let status = tokio::time::timeout_at(deadline, conn.replay_status())
                .await
                .ok()?
                .ok()??;
            replica.saw(status.position);
            if status.position >= after {
                return Some(conn);
            }
            if tokio::time::Instant::now() + TOKEN_POLL >= deadline {
                return None;
            }
            tokio::time::sleep(TOKEN_POLL).await;
        }
    }

    /// The primary's WAL position now, read after this call began (one read for every write
    /// that asks at the same time): a read-your-writes token for a write that committed.
    ///
    /// # Errors
    ///
    /// The primary's checkout or statement failure.
    pub async fn position_after_write(&self) -> Result<WalPosition, Failure> {
        let inner = &*self.inner;
        inner
            .position
            .read_now(&inner.primary)
            .await
            .map(WalPosition::from)
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
            routes: inner.routes.snapshot(),
        }
    }

    /// Closes the primary's pool and every replica's.
    pub async fn close(&self) {
        for replica in &self.inner.replicas {
            replica.pool.close().await;
        }
        self.inner.primary.close().await;
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
            .field("max_token_wait", &self.inner.token_wait)
            .finish_non_exhaustive()
    }
}
