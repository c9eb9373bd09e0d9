//! The bb8 connection manager: opens connections through [`Connect`], gates connects after a
//! failure, checks only long-idle connections, and drops broken ones.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ballast_core::{Cause, Failure};
use tokio::sync::{watch, Notify};

use crate::admission::Admission;
use crate::budget::ServerBudget;
use crate::config::PoolConfig;
use crate::connect::Connect;
use crate::leak::Holders;
use crate::reclaim::{Activity, Tracking};
use crate::stats::Counters;

/// The first pause after a failed connect before the network is tried again. Short, so a pool
/// recovers within a few hundred milliseconds of the database coming back.
const CONNECT_BACKOFF_FIRST: Duration = Duration::from_millis(50);
/// The longest pause between connect attempts while connects keep failing: bounds both the
/// connect rate during an outage (a couple per second, whatever the request rate) and the time
/// to notice the database is back.
const CONNECT_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// State shared by the pool handle and its manager.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: PoolConfig,
    pub(crate) closed: AtomicBool,
    pub(crate) counters: Counters,
    /// Admission by time: the hold-time estimate and the standing-queue state.
    pub(crate) admission: Admission,
    /// The connections checked out now, when `leak_threshold` is set.
    pub(crate) holders: Holders,
    /// Connect attempts on the network right now.
    connecting: AtomicUsize,
    /// The latest connect failure and when it happened; unlike the gate's, kept after a success,
    /// so a checkout that timed out can say connecting failed while it waited.
    latest_failure: Mutex<Option<(Instant, Failure)>>,
    gate: Mutex<Gate>,
    /// Bumped after every failed connect, so waiting checkouts can look at the failure.
    failures: watch::Sender<u64>,
    /// Abandoned connections being made idle again (see `reclaim`).
    pub(crate) reclaiming: AtomicUsize,
    /// Notified when the last reclaim ends.
    pub(crate) reclaimed: Notify,
    /// The server's connection budget, read on the first connection.
    pub(crate) budget: Mutex<Option<ServerBudget>>,
    /// Whether a connection has read (or is reading) the budget.
    budget_read: AtomicBool,
    /// The thread this pool's PostgreSQL connections are driven on (`io.rs`).
    #[cfg(feature = "postgres")]
    pub(crate) driver: Option<Arc<crate::io::Driver>>,
}

impl Shared {
    pub(crate) fn new(config: PoolConfig) -> Self {
        #[cfg(feature = "postgres")]
        let config_backend = config.backend();
        Shared {
            admission: Admission::new(
                config.queue_target(),
                config.connection_limit(),
                config.queue_limit(),
            ),
            holders: Holders::default(),
            config,
            closed: AtomicBool::new(false),
            counters: Counters::default(),
            connecting: AtomicUsize::new(0),
            latest_failure: Mutex::new(None),
            gate: Mutex::new(Gate::default()),
            failures: watch::Sender::new(0),
            reclaiming: AtomicUsize::new(0),
            reclaimed: Notify::new(),
            budget: Mutex::new(None),
            budget_read: AtomicBool::new(false),
            #[cfg(feature = "postgres")]
            driver: (config_backend == crate::Backend::Postgres)
                .then(crate::io::Driver::start)
                .flatten()
                .map(Arc::new),
        }
    }

    /// Opens a connection as [`open_ready`](crate::connect::open_ready) does, on this pool's
    /// driving thread where it has one.
    pub(crate) async fn open<C: Connect>(&self) -> Result<C, Failure> {
        #[cfg(feature = "postgres")]
        {
            crate::io::with_driver(
                self.driver.clone(),
                crate::connect::open_ready::<C>(&self.config),
            )
            .await
        }
        #[cfg(not(feature = "postgres"))]
        {
            crate::connect::open_ready::<C>(&self.config).await
        }
    }

    /// Reads the server's budget on the first connection that gets here (again on a later one
    /// when reading failed) and warns when `connection_limit` does not fit in it.
    async fn read_budget<C: Connect>(&self, conn: &mut C) {
        /// Lets a later connection read the budget unless this one did: also when the connect
        /// is dropped part-way (the pool closing, a cancelled checkout).
        struct Unread<'a>(&'a AtomicBool);
        impl Drop for Unread<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        if self.budget_read.swap(true, Ordering::AcqRel) {
            return;
        }
        let unread = Unread(&self.budget_read);
        let read = tokio::time::timeout(
            self.config.connect_timeout(),
            conn.server_budget(&self.config),
        )
        .await;
        match read {
            Ok(Ok(budget)) => {
                std::mem::forget(unread);
                if let Some(budget) = &budget {
                    budget.warn_if_short(&self.config);
                }
                *self.budget.lock().unwrap_or_else(PoisonError::into_inner) = budget;
            }
            Ok(Err(failure)) => {
                tracing::debug!("the server's connection budget could not be read: {failure}");
            }
            Err(_) => {
                tracing::debug!(
                    "reading the server's connection budget took longer than connect_timeout"
                );
            }
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn subscribe_failures(&self) -> watch::Receiver<u64> {
        self.failures.subscribe()
    }

    /// Whether a connect attempt is on the network right now: its outcome may still serve a
    /// waiting checkout.
    pub(crate) fn is_connecting(&self) -> bool {
        self.connecting.load(Ordering::Acquire) > 0
    }

    /// The last connect failure, if connecting has failed since the last success.
    pub(crate) fn last_connect_failure(&self) -> Option<Failure> {
        self.lock_gate().failure.as_ref().map(Failure::detached)
    }

    /// The latest connect failure if it happened after `since`.
    pub(crate) fn connect_failure_since(&self, since: Instant) -> Option<Failure> {
        let latest = self
            .latest_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        latest
            .as_ref()
            .filter(|(at, _)| *at >= since)
            .map(|(_, failure)| failure.detached())
    }

    /// The failure to answer at once when the database is known to be unreachable: connecting
    /// failed, and until the background probe gets through, the gate answers every connect. It
    /// says when the pool will try again and that it was known before the caller asked.
    pub(crate) fn known_outage(&self) -> Option<Failure> {
        let gate = self.lock_gate();
        let failure = gate.failure.as_ref()?;
        Some(
            failure
                .detached()
                .with_retry_after(gate.retry_in(Instant::now()))
                .with_known_outage(true),
        )
    }

    /// When the pool tries to connect next, while connecting is failing.
    pub(crate) fn retry_in(&self) -> Option<Duration> {
        let gate = self.lock_gate();
        gate.failure.as_ref()?;
        Some(gate.retry_in(Instant::now()))
    }

    fn lock_gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a failed connect: counted, logged, the gate closed for a growing pause, waiting
    /// checkouts told. Returns whether a probe must be started (none runs yet).
    fn connect_failed(&self, failure: &Failure) -> bool {
        let key = failure
            .driver_code()
            .map_or_else(|| format!("{:?}", failure.cause()), |code| code.to_string());
        self.counters.connect_failed(key);
        tracing::warn!(
            code = failure.code().as_str(),
            cause = ?failure.cause(),
            retryable = failure.retryable(),
            "database connect failed: {}",
            failure.report()
        );
        let start_probe = {
            let mut gate = self.lock_gate();
            gate.consecutive = gate.consecutive.saturating_add(1);
            gate.retry_at = Some(Instant::now() + Gate::backoff(gate.consecutive));
            gate.failure = Some(failure.detached());
            !std::mem::replace(&mut gate.probe_running, true)
        };
        *self
            .latest_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), failure.detached()));
        self.failures.send_modify(|count| *count += 1);
        start_probe
    }
}

/// A circuit in front of the network. After a failed connect, connects are answered with that
/// failure without touching the network, and one background probe tries the database again
/// after a growing pause (50 ms doubling to 500 ms) until it answers. No request ever waits for
/// a probe: against a database that accepts connections and never answers, a probe takes
/// `connect_timeout`, and clients are told at once instead.
#[derive(Debug, Default)]
struct Gate {
    failure: Option<Failure>,
    consecutive: u32,
    /// When the probe tries next, while `failure` is set.
    retry_at: Option<Instant>,
    /// Whether the probe task runs.
    probe_running: bool,
}

impl Gate {
    /// How long until the next attempt: the rest of the pause, or — while the probe's attempt
    /// is under way and may fail too — the pause that would follow it.
    fn retry_in(&self, now: Instant) -> Duration {
        match self.retry_at {
            Some(at) if now < at => at - now,
            _ => Self::backoff(self.consecutive.saturating_add(1)),
        }
    }

    fn backoff(consecutive: u32) -> Duration {
        let exponent = consecutive.saturating_sub(1).min(16);
        (CONNECT_BACKOFF_FIRST * 2u32.pow(exponent)).min(CONNECT_BACKOFF_MAX)
    }
}

/// A pooled connection, what it is doing, and when it last went idle.
#[derive(Debug)]
pub(crate) struct Idle<C> {
    pub(crate) conn: C,
    idle_since: Instant,
    /// Fed by the connection's instrumentation: statements in flight.
    pub(crate) activity: Arc<Activity>,
    /// Set when the connection must be closed rather than reused (an abandoned statement that
    /// could not be stopped).
    pub(crate) discard: bool,
    /// The bound an earlier checkout's deadline set on its statements
    /// (`statement_timeout=deadline`), to keep for a checkout with about as much time left, or
    /// to put back for a checkout without one.
    pub(crate) bound: Option<Duration>,
}

/// bb8's view of the pool's connections.
pub(crate) struct Manager<C> {
    pub(crate) shared: Arc<Shared>,
    /// The connection the probe opened when the database answered again, for the pool's next
    /// connect. At most one, and only while bb8 has room for it: the probe runs only while the
    /// gate keeps bb8 from connecting.
    probed: Arc<Mutex<Option<C>>>,
}

impl<C> Manager<C> {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Manager {
            shared,
            probed: Arc::new(Mutex::new(None)),
        }
    }
}

impl<C> fmt::Debug for Manager<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl<C: Connect> Manager<C> {
    /// A freshly opened connection, instrumented, as the pool keeps it.
    fn adopt(&self, mut conn: C) -> Idle<C> {
        self.shared
            .counters
            .connects
            .fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::default());
        conn.set_instrumentation(Tracking::new(Arc::clone(&activity)));
        if !self.shared.config.statement_cache() {
            conn.set_prepared_statement_cache_size(diesel::connection::CacheSize::Disabled);
        }
        Idle {
            conn,
            idle_since: Instant::now(),
            activity,
            discard: false,
            bound: None,
        }
    }

    /// Starts the background probe: after each pause it tries to connect, until the database
    /// answers (the connection is kept for the pool's next connect and the gate opens) or the
    /// pool is closed or gone.
    fn spawn_probe(&self) {
        let shared = Arc::downgrade(&self.shared);
        let probed = Arc::clone(&self.probed);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.shared.lock_gate().probe_running = false;
            return;
        };
        runtime.spawn(async move {
            loop {
                // Only a weak handle across the pause: a pool dropped without `close` ends the
                // probe too.
                let retry_at = match shared.upgrade() {
                    Some(shared) => shared.lock_gate().retry_at,
                    None => return,
                };
                if let Some(at) = retry_at {
                    tokio::time::sleep_until(at.into()).await;
                }
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                {
                    // Closed, or a connect of the pool's own got through meanwhile.
                    let mut gate = shared.lock_gate();
                    if shared.is_closed() || gate.failure.is_none() {
                        gate.probe_running = false;
                        return;
                    }
                }
                match shared.open::<C>().await {
                    Ok(conn) => {
                        *probed.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn);
                        {
                            let mut gate = shared.lock_gate();
                            gate.failure = None;
                            gate.consecutive = 0;
                            gate.retry_at = None;
                            gate.probe_running = false;
                        }
                        tracing::info!("database connects succeed again");
                        return;
                    }
                    Err(failure) => {
                        // The probe is this task: no second one is started.
                        shared.connect_failed(&failure);
                    }
                }
            }
        });
    }
}

impl<C: Connect> bb8::ManageConnection for Manager<C> {
    type Connection = Idle<C>;
    type Error = Failure;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        let shared = &*self.shared;
        if shared.is_closed() {
            return Err(Failure::new(Cause::PoolClosed));
        }
        let probed = self
            .probed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(conn) = probed {
            return Ok(self.adopt(conn));
        }
        let known = shared.lock_gate().failure.as_ref().map(Failure::detached);
        if let Some(failure) = known {
            shared
                .counters
                .connects_skipped
                .fetch_add(1, Ordering::Relaxed);
            // The checkout that asked for this connect is waiting for it: tell it.
            shared.failures.send_modify(|count| *count += 1);
            return Err(failure);
        }
        shared.connecting.fetch_add(1, Ordering::AcqRel);
        let opening = Instant::now();
        let opened = shared.open::<C>().await;
        if opened.is_ok() {
            shared.counters.create_time.record(opening.elapsed());
        }
        // Before the failure is announced, so a waiter that hears of it sees this attempt over.
        shared.connecting.fetch_sub(1, Ordering::AcqRel);
        match opened {
            Ok(mut conn) => {
                shared.read_budget(&mut conn).await;
                // Another attempt may have failed while this one was under way: this one says
                // the database answers.
                let recovered = {
                    let mut gate = shared.lock_gate();
                    gate.consecutive = 0;
                    gate.retry_at = None;
                    gate.failure.take().is_some()
                };
                if recovered {
                    tracing::info!("database connects succeed again");
                }
                Ok(self.adopt(conn))
            }
            Err(failure) => {
                if shared.connect_failed(&failure) {
                    self.spawn_probe();
                }
                Err(failure)
            }
        }
    }

    async fn is_valid(&self, idle: &mut Self::Connection) -> Result<(), Self::Error> {
        if self.shared.is_closed() {
            return Err(Failure::new(Cause::PoolClosed));
        }
        // A connection used moments ago is trusted: a round trip per checkout would double the
        // cost of every short request. If it died since, its query fails and it is dropped when
        // it comes back broken.
        if idle.idle_since.elapsed() < self.shared.config.check_idle_after() {
            return Ok(());
        }
        idle.conn.batch_execute("SELECT 1").await?;
        Ok(())
    }

    fn has_broken(&self, idle: &mut Self::Connection) -> bool {
        // Called when a connection comes back. diesel-async reports a closed connection and a
        // transaction left open (a request cancelled mid-transaction) as broken; an abandoned
        // statement that could not be stopped marks it for discarding (see `reclaim`). Checkouts
        // hand abandoned connections to `reclaim` first; one still busy here was dropped inside
        // bb8 (a checkout cancelled during its idle check) and is closed.
        let broken = idle.discard
            || idle.activity.in_flight()
            || idle.activity.lost()
            || idle.conn.is_broken();
        if broken {
            self.shared
                .counters
                .closed_broken
                .fetch_add(1, Ordering::Relaxed);
        }
        idle.idle_since = Instant::now();
        broken || self.shared.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(Gate::backoff(1), Duration::from_millis(50));
        assert_eq!(Gate::backoff(2), Duration::from_millis(100));
        assert_eq!(Gate::backoff(4), Duration::from_millis(400));
        assert_eq!(Gate::backoff(5), CONNECT_BACKOFF_MAX);
        assert_eq!(Gate::backoff(u32::MAX), CONNECT_BACKOFF_MAX);
    }
}
