//! The state a pool's handle, its manager and its tasks share: settings, counters, admission,
//! and the gate that answers connects while the database is failing them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use ballast_core::Failure;
use tokio::sync::{watch, Notify};

use crate::admission::Admission;
use crate::budget::ServerBudget;
use crate::config::PoolConfig;
use crate::connect::Connect;
use crate::leak::Holders;
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
    /// Whether the pool is a read replica's ([`ReplicaSet`](crate::ReplicaSet)): a write it
    /// refuses (`25006`) is a handler's bug, not a demoted primary.
    pub(crate) reads_only: Arc<AtomicBool>,
    pub(crate) counters: Counters,
    /// Admission by time: the hold-time estimate and the standing-queue state.
    pub(crate) admission: Admission,
    /// The connections checked out now, when `leak_threshold` is set.
    pub(crate) holders: Holders,
    /// Connect attempts on the network right now.
    pub(crate) connecting: AtomicUsize,
    /// The latest connect failure and when it happened; unlike the gate's, kept after a success,
    /// so a checkout that timed out can say connecting failed while it waited.
    latest_failure: Mutex<Option<(Instant, Failure)>>,
    gate: Mutex<Gate>,
    /// Bumped after every failed connect, so waiting checkouts can look at the failure.
    pub(crate) failures: watch::Sender<u64>,
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
            reads_only: Arc::default(),
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
    pub(crate) async fn open<C: Connect>(&self) -> Result<(C, Option<usize>), Failure> {
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
    pub(crate) async fn read_budget<C: Connect>(&self, conn: &mut C) {
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

    pub(crate) fn lock_gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a failed connect: counted, the gate closed for a growing pause, waiting checkouts
    /// told. Returns whether a probe must be started (none runs yet).
    ///
    /// Logged as an outage, not per attempt: the first failure (and a failure of another kind
    /// than the last) at `WARN`, then while it lasts one `WARN` every [`OUTAGE_LOG_EVERY`] with
    /// the attempts since; [`connect_succeeded`](Self::connect_succeeded) logs its end.
    pub(crate) fn connect_failed(&self, failure: &Failure) -> bool {
        let key = failure
            .driver_code()
            .map_or_else(|| format!("{:?}", failure.cause()), |code| code.to_string());
        self.counters.connect_failed(key);
        let now = Instant::now();
        let (start_probe, log) = {
            let mut gate = self.lock_gate();
            gate.consecutive = gate.consecutive.saturating_add(1);
            gate.retry_at = Some(now + Gate::backoff(gate.consecutive));
            let gate = &mut *gate;
            let log = gate.outage.failed(now, gate.failure.as_ref(), failure);
            gate.failure = Some(failure.detached());
            (!std::mem::replace(&mut gate.probe_running, true), log)
        };
        match log {
            OutageLog::Began => tracing::warn!(
                code = failure.code().as_str(),
                cause = ?failure.cause(),
                retryable = failure.retryable(),
                "database connect failed: {} (logged again while it lasts, every {}s)",
                failure.report(),
                OUTAGE_LOG_EVERY.as_secs()
            ),
            OutageLog::Still { attempts, down_for } => tracing::warn!(
                code = failure.code().as_str(),
                cause = ?failure.cause(),
                retryable = failure.retryable(),
                attempts,
                down_for_ms = u64::try_from(down_for.as_millis()).unwrap_or(u64::MAX),
                "database connects still failing: {}",
                failure.report()
            ),
            OutageLog::Quiet => {}
        }
        *self
            .latest_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((now, failure.detached()));
        self.failures.send_modify(|count| *count += 1);
        start_probe
    }

    /// Records a successful connect: the gate opens, and the end of an outage is logged once,
    /// with how long it lasted and how many attempts failed. (A probe still waiting for its next
    /// attempt sees the open gate and ends itself.)
    pub(crate) fn connect_succeeded(&self) {
        let ended = {
            let mut gate = self.lock_gate();
            gate.consecutive = 0;
            gate.retry_at = None;
            gate.failure = None;
            gate.outage.ended(Instant::now())
        };
        if let Some((down_for, attempts)) = ended {
            tracing::info!(
                attempts,
                down_for_ms = u64::try_from(down_for.as_millis()).unwrap_or(u64::MAX),
                "database connects succeed again"
            );
        }
    }
}

/// How often an outage that goes on is logged again.
pub(crate) const OUTAGE_LOG_EVERY: Duration = Duration::from_secs(10);

/// What a failed connect says in the log.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum OutageLog {
    /// The first failure, or one of another kind than the last.
    Began,
    /// The outage goes on: `attempts` failed since it was last logged.
    Still { attempts: u32, down_for: Duration },
    /// Nothing: it was logged less than [`OUTAGE_LOG_EVERY`] ago.
    Quiet,
}

/// An outage as the log tells it: since when, and the failures since it was last logged.
#[derive(Debug, Default)]
pub(crate) struct Outage {
    since: Option<Instant>,
    logged_at: Option<Instant>,
    unlogged: u32,
    attempts: u32,
}

impl Outage {
    /// A connect failed with `failure`; `last` is the failure the gate held (none: connecting
    /// worked until now).
    fn failed(&mut self, now: Instant, last: Option<&Failure>, failure: &Failure) -> OutageLog {
        self.attempts = self.attempts.saturating_add(1);
        let changed = last.is_none_or(|last| {
            last.cause() != failure.cause() || last.driver_code() != failure.driver_code()
        });
        let since = *self.since.get_or_insert(now);
        let due = self
            .logged_at
            .is_none_or(|at| now.duration_since(at) >= OUTAGE_LOG_EVERY);
        if changed {
            self.logged_at = Some(now);
            self.unlogged = 0;
            return OutageLog::Began;
        }
        self.unlogged = self.unlogged.saturating_add(1);
        if !due {
            return OutageLog::Quiet;
        }
        self.logged_at = Some(now);
        let attempts = std::mem::take(&mut self.unlogged);
        OutageLog::Still {
            attempts,
            down_for: now.duration_since(since),
        }
    }

    /// Connecting works again: how long it did not, and how many attempts failed; `None` when
    /// there was no outage.
    fn ended(&mut self, now: Instant) -> Option<(Duration, u32)> {
        let since = self.since.take()?;
        let attempts = std::mem::take(&mut self.attempts);
        self.logged_at = None;
        self.unlogged = 0;
        Some((now.duration_since(since), attempts))
    }
}

/// Starts the task that looks for connections held past `threshold` (`leak_threshold`), for as
/// long as the pool lives and is open.
pub(crate) fn spawn_leak_watch(shared: std::sync::Weak<Shared>, threshold: Duration) {
    let every = crate::leak::look_every(threshold);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            if shared.is_closed() {
                return;
            }
            shared.holders.look(threshold);
        }
    });
}

/// A circuit in front of the network. After a failed connect, connects are answered with that
/// failure without touching the network, and one background probe tries the database again
/// after a growing pause (50 ms doubling to 500 ms) until it answers. No request ever waits for
/// a probe: against a database that accepts connections and never answers, a probe takes
/// `connect_timeout`, and clients are told at once instead.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    pub(crate) failure: Option<Failure>,
    pub(crate) consecutive: u32,
    /// When the probe tries next, while `failure` is set.
    pub(crate) retry_at: Option<Instant>,
    /// Whether the probe task runs.
    pub(crate) probe_running: bool,
    /// The outage, for the log.
    pub(crate) outage: Outage,
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

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_core::Cause;

    fn shared() -> Shared {
        Shared::new(PoolConfig::from_url("sqlite::memory:").unwrap())
    }

    #[test]
    fn an_outage_is_logged_when_it_begins_changes_goes_on_and_ends() {
        let mut outage = Outage::default();
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let refused = Failure::new(Cause::Unreachable);
        let auth = Failure::new(Cause::AuthFailed);
        assert_eq!(outage.failed(at(0), None, &refused), OutageLog::Began);
        for ms in [50, 150, 650, 9_999] {
            assert_eq!(
                outage.failed(at(ms), Some(&refused), &refused),
                OutageLog::Quiet
            );
        }
        assert_eq!(
            outage.failed(at(10_000), Some(&refused), &refused),
            OutageLog::Still {
                attempts: 5,
                down_for: Duration::from_secs(10)
            }
        );
        assert_eq!(
            outage.failed(at(10_500), Some(&refused), &refused),
            OutageLog::Quiet
        );
        // Another kind of failure is news at once.
        assert_eq!(
            outage.failed(at(11_000), Some(&refused), &auth),
            OutageLog::Began
        );
        assert_eq!(outage.ended(at(12_000)), Some((Duration::from_secs(12), 8)));
        assert_eq!(outage.ended(at(13_000)), None, "one end per outage");
        // The next outage starts its own count.
        assert_eq!(outage.failed(at(20_000), None, &refused), OutageLog::Began);
    }

    #[test]
    fn a_failed_connect_closes_the_gate_and_starts_one_probe() {
        let shared = shared();
        assert!(shared.known_outage().is_none());
        assert!(shared.retry_in().is_none());
        let started = Instant::now();
        let failure = Failure::new(Cause::Unreachable);
        assert!(
            shared.connect_failed(&failure),
            "the first failure starts the probe"
        );
        assert!(!shared.connect_failed(&failure), "one probe at a time");
        let outage = shared
            .known_outage()
            .expect("the database is known to be down");
        assert!(outage.is_known_outage());
        assert_eq!(outage.cause(), Cause::Unreachable);
        // Two failures in a row: the second pause is 100 ms.
        let after = outage.retry_after().unwrap();
        assert!(after <= Duration::from_millis(100), "{after:?}");
        assert!(shared.connect_failure_since(started).is_some());
        assert!(shared.connect_failure_since(Instant::now()).is_none());
        assert_eq!(shared.counters.connect_failures.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(Gate::backoff(1), Duration::from_millis(50));
        assert_eq!(Gate::backoff(2), Duration::from_millis(100));
        assert_eq!(Gate::backoff(4), Duration::from_millis(400));
        assert_eq!(Gate::backoff(5), CONNECT_BACKOFF_MAX);
        assert_eq!(Gate::backoff(u32::MAX), CONNECT_BACKOFF_MAX);
    }
}
