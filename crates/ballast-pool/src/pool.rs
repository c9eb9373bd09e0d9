//! The shared pool: checkout with honest failures, stats, close, and the one-per-process
//! instance.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ballast_core::scope::RequestScope;
use ballast_core::{Cause, ConfigError, Failure};

use crate::config::{Backend, PoolConfig};
use crate::connect::Connect;
use crate::manager::Manager;
use crate::pooled::PooledConnection;
use crate::shared::Shared;
use crate::stats::{PoolStats, Refusals};

/// What a component takes instead of building its own pool: a way to get a connection and to
/// read the pool's figures.
///
/// A backup job, a helper module or a handler that accepts `impl PoolProvider` shares the
/// process's one pool rather than opening its own — the mistake that exhausted the database in
/// the incident ballast comes from.
pub trait PoolProvider: Clone + Send + Sync + 'static {
    /// The connection type handed out.
    type Connection: Connect;

    /// Checks a connection out (see [`SharedPool::get`]).
    fn get(
        &self,
    ) -> impl Future<Output = Result<PooledConnection<Self::Connection>, Failure>> + Send;

    /// The pool's figures now.
    fn stats(&self) -> PoolStats;
}

/// The process's bounded, shared pool of diesel-async connections: cheap to clone (an `Arc`),
/// usable as axum state or through [`AddPoolLayer`](crate::AddPoolLayer).
///
/// See the [crate docs](crate) for the contract.
// The `Connect` bound is bb8's: its `Pool<M>` requires `M: ManageConnection` on the struct itself,
// so every type that holds the pool carries it (and a derived `Clone` would ask for `C: Clone`).
pub struct SharedPool<C: Connect> {
    pub(crate) inner: Arc<Inner<C>>,
}

pub(crate) struct Inner<C: Connect> {
    pub(crate) shared: Arc<Shared>,
    /// bb8's pool. `close` empties it of idle connections, and the manager refuses to open or
    /// keep any once the pool is closed, so nothing stays open while the handle lives on.
    pool: bb8::Pool<Manager<C>>,
}

/// Why a pool could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolError {
    /// The configuration names another backend than the connection type speaks.
    WrongBackend {
        /// The connection type's backend.
        expected: Backend,
        /// The configuration's.
        configured: Backend,
    },
    /// The process's pool already exists with another configuration or connection type.
    AlreadyInitialized,
    /// There is no Tokio runtime to run the pool's background work on.
    NoRuntime,
    /// A setting is out of range (see [`PoolConfig::check`]).
    Config(ConfigError),
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::WrongBackend {
                expected,
                configured,
            } => write!(
                f,
                "the database URL names {configured:?}, but the pool's connections are {expected:?}"
            ),
            PoolError::AlreadyInitialized => f.write_str(
                "the shared pool is already initialised with another configuration or connection type",
            ),
            PoolError::NoRuntime => f.write_str("a pool must be created inside a Tokio runtime"),
            PoolError::Config(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for PoolError {}

impl From<ConfigError> for PoolError {
    fn from(error: ConfigError) -> Self {
        PoolError::Config(error)
    }
}

impl From<PoolError> for Failure {
    /// A pool that cannot be built is a deployment mistake: a setting out of range is
    /// `DB_INIT_ERROR` (as a bad URL is), anything else `CRITICAL_ERROR`; neither is retryable.
    fn from(error: PoolError) -> Self {
        if let PoolError::Config(error) = error {
            return error.into();
        }
        Failure::new(Cause::Internal).with_detail(error.to_string())
    }
}

/// The process's one pool, of whichever connection type initialised it first.
static GLOBAL: Mutex<Option<(PoolConfig, Box<dyn Any + Send + Sync>)>> = Mutex::new(None);

impl<C: Connect> SharedPool<C> {
    /// Builds a pool of its own. Nothing connects yet: the first checkout does, so a service
    /// starts even while its database is down.
    ///
    /// Prefer [`SharedPool::init`] in applications: a second pool in the same process is how
    /// the connection limit gets exceeded.
    ///
    /// # Errors
    ///
    /// A setting is out of range, the configuration is for another backend, or there is no
    /// Tokio runtime.
    pub fn new(config: PoolConfig) -> Result<Self, PoolError> {
        config.check().map_err(PoolError::Config)?;
        if config.backend() != C::BACKEND {
            return Err(PoolError::WrongBackend {
                expected: C::BACKEND,
                configured: config.backend(),
            });
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(PoolError::NoRuntime);
        }
        let shared = Arc::new(Shared::new(config));
        let config = &shared.config;
        let pool = bb8::Pool::builder()
            .max_size(config.connection_limit())
            // Connections open on demand; none are kept warm.
            .min_idle(None)
            // `is_valid` checks only connections idle longer than `check_idle_after`.
            .test_on_check_out(true)
            // `get` enforces `pool_timeout` itself across restarted checkouts; bb8's own bound
            // stays as a backstop.
            .connection_timeout(config.pool_timeout())
            .idle_timeout(config.idle_timeout())
            .max_lifetime(config.max_lifetime())
            // One attempt per approval: the manager's gate decides when to try again, and a
            // waiting checkout hears about the failure at once.
            .retry_connection(false)
            .build_unchecked(Manager::new(Arc::clone(&shared)));
        if let Some(threshold) = shared.config.leak_threshold() {
            crate::shared::spawn_leak_watch(Arc::downgrade(&shared), threshold);
            // Request-timeout layers record each request's path for the warnings.
            RequestScope::record_paths();
        }
        Ok(SharedPool {
            inner: Arc::new(Inner { shared, pool }),
        })
    }

    /// The process's shared pool: built by the first call, returned again by every later call
    /// with the same configuration, concurrent first calls included.
    ///
    /// # Errors
    ///
    /// [`PoolError::AlreadyInitialized`] when the process's pool exists with a different
    /// configuration or connection type; otherwise as [`SharedPool::new`].
    pub fn init(config: PoolConfig) -> Result<Self, PoolError> {
        let mut global = GLOBAL.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((existing_config, existing)) = global.as_ref() {
            return match existing.downcast_ref::<SharedPool<C>>() {
                Some(pool) if *existing_config == config => Ok(pool.clone()),
                _ => Err(PoolError::AlreadyInitialized),
            };
        }
        let pool = Self::new(config.clone())?;
        *global = Some((config, Box::new(pool.clone())));
        Ok(pool)
    }

    /// The process's shared pool for a database URL with its settings
    /// ([`PoolConfig::from_url`], then [`init`](Self::init)): what a service's `main` calls with
    /// its `DATABASE_URL`.
    ///
    /// # Errors
    ///
    /// [`PoolError::Config`] for a malformed URL or setting (the message names it, never the
    /// password); otherwise as [`init`](Self::init).
    pub fn init_from_url(url: &str) -> Result<Self, PoolError> {
        Self::init(PoolConfig::from_url(url)?)
    }

    /// Checks a connection out.
    ///
    /// Waits at most `pool_timeout`, and never past the deadline of the request it runs in
    /// ([`RequestScope`]); waiting checkouts are served in arrival order. Admission by time
    /// decides first whether to wait at all (see the [crate docs](crate#admission-by-time)): a
    /// checkout that cannot be served within the time it has, or expected to wait longer than
    /// one and a half `queue_target`s (in a standing queue, longer than the target), is refused
    /// at once. Fails early, with the connect failure, when connecting fails and there is
    /// nothing to wait for (no open connection, no other connect under way), or the failure is
    /// not retryable (a wrong password does not fix itself within the wait). Every failure is
    /// [`Reach::NotSent`](ballast_core::Reach::NotSent): nothing ran.
    ///
    /// # Errors
    ///
    /// - the connect failure (`TooManyConnections`, `Unreachable`, `AuthFailed`, `TimedOut`,
    ///   ...) when connecting failed, or when it was failing while the wait ran out;
    /// - [`Cause::Overloaded`] when admission refused it (a known outage: the retry layer does not
    ///   retry it within the request), with the expected wait as its
    ///   [`retry_after`](Failure::retry_after);
    /// - [`Cause::PoolExhausted`] when every connection stayed in use for the whole wait;
    /// - [`Cause::PoolClosed`] after [`close`](Self::close).
    #[track_caller]
    pub fn get(&self) -> impl Future<Output = Result<PooledConnection<C>, Failure>> + Send + '_ {
        // The caller's source location, for `leak_threshold`'s warnings: free to take.
        let caller = Location::caller();
        if !self.inner.shared.config.statement_deadline() {
            return Checkout::Plain {
                future: self.get_for(caller),
            };
        }
        // Boxed, a future of its own: pools that do not bound statements pay nothing for it.
        Checkout::Bounded {
            future: Box::pin(async move {
                let mut conn = self.get_for(caller).await?;
                let left = conn
                    .scope
                    .as_ref()
                    .and_then(|scope| scope.deadline())
                    .map(|deadline| deadline.saturating_duration_since(Instant::now()));
                conn.bound_statements(left).await?;
                Ok(conn)
            }),
        }
    }

    /// Closes the pool: idle connections close at once, checkouts fail with
    /// [`Cause::PoolClosed`] from now on, and connections checked out now close when they come
    /// back. Once they have, no connection of this pool remains open.
    pub async fn close(&self) {
        let shared = &self.inner.shared;
        shared.closed.store(true, Ordering::Release);
        // Connections abandoned mid-statement are being stopped on the server: wait for them,
        // so closing leaves nothing running (the caller bounds the wait, e.g. a shutdown hook's
        // timeout).
        loop {
            let reclaimed = shared.reclaimed.notified();
            if shared.reclaiming.load(Ordering::Acquire) == 0 {
                break;
            }
            reclaimed.await;
        }
        let pool = &self.inner.pool;
        let idle = pool.state().idle_connections;
        // bb8 has no call that drops its idle connections: each fails the check at checkout now
        // (the pool is closed) and bb8 drops it, so one checkout attempt walks through all of
        // them without waiting.
        for _ in 0..=idle {
            if pool.state().idle_connections == 0 {
                break;
            }
            let _ = tokio::time::timeout(Duration::ZERO, pool.get()).await;
        }
        tracing::info!(closed_idle = idle, "database pool closed");
    }

    /// Whether this instance can reach its database — what a readiness probe should answer.
    ///
    /// **Busy is ready, and readiness never queues.** A pool whose every connection is checked
    /// out by slow requests is working: failing readiness then would take every instance out
    /// of the load balancer at once, exactly when all of them are busy; and a probe that waited
    /// its turn behind the requests would answer as late as they do. So:
    ///
    /// - closed, or connecting is failing with no connection open: not ready, with the failure;
    /// - every connection someone's turn (in use, or about to be): ready at once if connecting
    ///   is not failing, not ready with the failure if it is — without waiting;
    /// - otherwise, with a turn of its own, one connection — an idle one, or a new one within
    ///   `connect_timeout` — answers a `SELECT 1` within `connect_timeout`.
    ///
    /// # Errors
    ///
    /// The failure that keeps the database out of reach.
    pub async fn readiness(&self) -> Result<(), Failure> {
        let shared = &self.inner.shared;
        if shared.is_closed() {
            return Err(Failure::new(Cause::PoolClosed));
        }
        if self.bb8_pool().state().connections == 0 {
            if let Some(failure) = shared.known_outage() {
                return Err(failure);
            }
        }
        let Some(turn) = shared.admission.try_turn() else {
            return shared.last_connect_failure().map_or(Ok(()), Err);
        };
        let limit = shared.config.connect_timeout();
        let check = async {
            let started = Instant::now();
            let conn = self.checkout(started, started + limit).await?;
            let mut conn = self.hand_out(turn, conn, None, Location::caller());
            if shared.config.statement_deadline() {
                conn.bound_statements(None).await?;
            }
            // A URL that asks for the primary is ready only while its connection is on one.
            conn.batch_execute(ready_statement(shared.config.target_session_attrs()))
                .await?;
            Ok::<_, Failure>(())
        };
        match tokio::time::timeout(limit, check).await {
            Ok(result) => result,
            Err(_) => Err(Failure::new(Cause::TimedOut).with_detail(format!(
                "the readiness check got no answer within connect_timeout ({limit:?})"
            ))),
        }
    }

    /// How many of the pool's connections have been lost under a statement so far.
    pub(crate) fn connections_lost(&self) -> u64 {
        self.inner.shared.counters.lost.load(Ordering::Acquire)
    }

    /// Marks the pool as a read replica's (see `Shared::reads_only`).
    pub(crate) fn serve_reads_only(&self) {
        self.inner.shared.reads_only.store(true, Ordering::Release);
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.is_closed()
    }

    /// The configuration the pool was built with.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.shared.config
    }

    /// The pool's figures now.
    pub fn stats(&self) -> PoolStats {
        let shared = &self.inner.shared;
        let counters = &shared.counters;
        let state = self.bb8_pool().state();
        let (open, idle, statistics) =
            (state.connections, state.idle_connections, state.statistics);
        let timeouts = counters.timeouts.load(Ordering::Relaxed) + statistics.get_timed_out;
        let failed_fast = counters.failed_fast.load(Ordering::Relaxed);
        let refusals = Refusals {
            expected_wait: counters.refused_expected_wait.load(Ordering::Relaxed),
            standing_queue: counters.refused_standing_queue.load(Ordering::Relaxed),
            overdue: counters.refused_overdue.load(Ordering::Relaxed),
            queue_limit: counters.refused_queue_limit.load(Ordering::Relaxed),
            timed_out: timeouts,
            outage: failed_fast,
        };
        PoolStats {
            max_size: shared.config.connection_limit(),
            open,
            idle,
            in_use: open - idle,
            waiting: counters.waiting.load(Ordering::Relaxed),
            closed: shared.is_closed(),
            checkouts: statistics.get_direct + statistics.get_waited,
            checkouts_waited: statistics.get_waited,
            timeouts,
            failed_fast,
            connects: counters.connects.load(Ordering::Relaxed),
            connect_failures: counters.connect_failures.load(Ordering::Relaxed),
            connect_failures_by_code: counters.failures_by_code(),
            connects_skipped: counters.connects_skipped.load(Ordering::Relaxed),
            closed_broken: counters.closed_broken.load(Ordering::Relaxed),
            shed: refusals.shed(),
            refusals,
            held_too_long: shared.holders.held_too_long.load(Ordering::Relaxed),
            cancelled: counters.cancelled.load(Ordering::Relaxed),
            closed_invalid: statistics.connections_closed_invalid,
            closed_expired: statistics.connections_closed_idle_timeout
                + statistics.connections_closed_max_lifetime,
            acquire_wait_total_ms: statistics.get_wait_time.as_secs_f64() * 1000.0,
            acquire_wait_p50_ms: counters.wait_percentile_ms(0.5),
            acquire_wait_p99_ms: counters.wait_percentile_ms(0.99),
            wait_time: counters.wait_time.snapshot(),
            use_time: counters.use_time.snapshot(),
            create_time: counters.create_time.snapshot(),
            budget: *shared.budget.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    pub(crate) fn bb8_pool(&self) -> &bb8::Pool<Manager<C>> {
        &self.inner.pool
    }
}

impl<C: Connect> Clone for SharedPool<C> {
    fn clone(&self) -> Self {
        SharedPool {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<C: Connect> PartialEq for SharedPool<C> {
    /// Two handles are equal when they are the same pool.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl<C: Connect> Eq for SharedPool<C> {}

impl<C: Connect> fmt::Debug for SharedPool<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedPool")
            .field("config", &self.inner.shared.config)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl<C: Connect> PoolProvider for SharedPool<C> {
    type Connection = C;

    #[track_caller]
    fn get(&self) -> impl Future<Output = Result<PooledConnection<C>, Failure>> + Send {
        SharedPool::get(self)
    }

    fn stats(&self) -> PoolStats {
        SharedPool::stats(self)
    }
}

/// Readiness probes ask the pool ([`SharedPool::readiness`]): busy is ready.
/// The statement the readiness check runs: `SELECT 1`, or — where the URL asks for a primary —
/// one that fails with `25006` (a read-only server) when the connection is not on one, which
/// also has the connection closed so the next connect chooses its host again.
fn ready_statement(attrs: crate::SessionAttrs) -> &'static str {
    match attrs {
        crate::SessionAttrs::ReadWrite => {
            "DO $$BEGIN IF current_setting('transaction_read_only') = 'on' THEN \
             RAISE EXCEPTION USING ERRCODE = '25006', \
             MESSAGE = 'no writable primary: this server only accepts reads'; END IF; END$$"
        }
        crate::SessionAttrs::Primary => {
            "DO $$BEGIN IF pg_is_in_recovery() THEN \
             RAISE EXCEPTION USING ERRCODE = '25006', \
             MESSAGE = 'no primary: this server is a standby'; END IF; END$$"
        }
        _ => "SELECT 1",
    }
}

impl<C: Connect> ballast_core::ReadinessCheck for SharedPool<C> {
    fn check(&self) -> ballast_core::CheckFuture<'_> {
        Box::pin(self.readiness())
    }
}

pin_project_lite::pin_project! {
    /// [`SharedPool::get`]'s future: the checkout itself, or — with `statement_timeout=deadline`
    /// — the checkout and the `SET` that bounds its statements, boxed.
    #[project = CheckoutProjection]
    pub(crate) enum Checkout<F, B> {
        Plain { #[pin] future: F },
        Bounded { future: Pin<Box<B>> },
    }
}

impl<C: Connect, F, B> Future for Checkout<F, B>
where
    F: Future<Output = Result<PooledConnection<C>, Failure>>,
    B: Future<Output = Result<PooledConnection<C>, Failure>>,
{
    type Output = Result<PooledConnection<C>, Failure>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CheckoutProjection::Plain { future } => future.poll(cx),
            CheckoutProjection::Bounded { future } => future.as_mut().poll(cx),
        }
    }
}
