//! The shared pool: checkout with honest failures, stats, close, and the one-per-process
//! instance.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ballast_core::scope::{Mark, RequestScope};
use ballast_core::{Cause, ConfigError, Failure, Reach};

use crate::admission::{Reason, Refusal};
use crate::config::{Backend, PoolConfig};
use crate::connect::Connect;
use crate::manager::{Manager, Shared};
use crate::reclaim;
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
pub struct SharedPool<C: Connect> {
    inner: Arc<Inner<C>>,
}

struct Inner<C: Connect> {
    shared: Arc<Shared>,
    /// Taken out by `close`, so the pool and every idle connection really go away.
    pool: RwLock<Option<bb8::Pool<Manager<C>>>>,
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
            crate::leak::spawn_watch(Arc::downgrade(&shared), threshold);
            // Request-timeout layers record each request's path for the warnings.
            RequestScope::record_paths();
        }
        Ok(SharedPool {
            inner: Arc::new(Inner {
                shared,
                pool: RwLock::new(Some(pool)),
            }),
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
    /// [`Reach::NotSent`]: nothing ran.
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

    async fn get_for(
        &self,
        caller: &'static Location<'static>,
    ) -> Result<PooledConnection<C>, Failure> {
        let started = Instant::now();
        let shared = &self.inner.shared;
        let scope = RequestScope::current();
        let Some(pool) = self.bb8_pool() else {
            return Err(Failure::new(Cause::PoolClosed));
        };
        // Connecting has been failing and the gate is closed: the database is known to be
        // down, and waiting cannot help. Answer at once (an outage costs the client nothing but
        // the answer), unless open connections may still serve.
        if pool.state().connections == 0 {
            if let Some(failure) = shared.known_outage() {
                shared.counters.failed_fast.fetch_add(1, Ordering::Relaxed);
                return Err(self.honest(failure, scope.as_deref()));
            }
        }
        let (_waiting, ahead) = Waiting::start(shared);
        // The time the checkout has: `pool_timeout`, and never past the request's own deadline
        // where a layer set one (`RequestScope`).
        let pool_timeout = shared.config.pool_timeout();
        let time_left = match scope.as_ref().and_then(|scope| scope.deadline()) {
            Some(deadline) => deadline
                .saturating_duration_since(started)
                .min(pool_timeout),
            None => pool_timeout,
        };
        let deadline = started + time_left;
        if let Err(refusal) = shared.admission.admit(ahead, time_left, started) {
            // Like an outage, an overload is answered without waiting, and retrying within the
            // request would only join the queue again.
            return Err(self.honest(self.refused(&refusal), scope.as_deref()));
        }
        let _waiting_mark = scope.as_ref().map(RequestScope::waiting);
        let result = match self.take_turn(started, deadline).await {
            Ok(turn) => self
                .checkout(&pool, started, deadline)
                .await
                .map(|conn| (turn, conn)),
            Err(failure) => Err(failure),
        };
        let waited = started.elapsed();
        shared.counters.record_wait(waited);
        shared
            .admission
            .waited(waited, self.behind(), started + waited);
        tracing::debug!(
            db.client.connection.pool.name = "ballast",
            pool.wait_us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX),
            pool.outcome = match &result {
                Ok(_) => "checked_out",
                Err(failure) => failure.code().as_str(),
            },
            "checkout"
        );
        match result {
            Ok((turn, conn)) => {
                if waited > SLOW_CHECKOUT {
                    tracing::debug!(waited_ms = waited.as_millis() as u64, "slow checkout");
                }
                Ok(self.hand_out(turn, conn, scope, caller))
            }
            Err(failure) => {
                let failure = self.honest(failure, scope.as_deref());
                // A connect failure says when the pool will try again.
                let connecting = !matches!(
                    failure.cause(),
                    Cause::PoolExhausted | Cause::PoolClosed | Cause::Overloaded
                );
                Err(match shared.retry_in() {
                    Some(after) if connecting && failure.retry_after().is_none() => {
                        failure.with_retry_after(after)
                    }
                    _ => failure,
                })
            }
        }
    }

    /// Waits for a turn at a connection (see `Admission::turn`) until the deadline, giving up
    /// early when its wait turns out longer than admission allows.
    async fn take_turn(
        &self,
        started: Instant,
        deadline: Instant,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, Failure> {
        let shared = &self.inner.shared;
        if let Some(turn) = shared.admission.try_turn() {
            return Ok(turn);
        }
        let place = shared.admission.join();
        let turn = shared.admission.turn();
        tokio::pin!(turn);
        // Looked at every slice: the deadline, and whether this waiter is overdue.
        let tick = tokio::time::sleep_until(deadline.min(started + CHECKOUT_SLICE).into());
        tokio::pin!(tick);
        loop {
            tokio::select! {
                biased;
                turn = &mut turn => {
                    place.granted();
                    return Ok(turn);
                }
                () = &mut tick => {
                    let now = Instant::now();
                    if now >= deadline {
                        shared.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                        let pool = self.bb8_pool().ok_or_else(|| Failure::new(Cause::PoolClosed))?;
                        return Err(self.timed_out(&pool, started));
                    }
                    // A wait that turned out longer than admission allows: leave now, so the
                    // ones behind are served near the target.
                    if let Some(refusal) = shared.admission.overdue(now - started, place.ahead(), now) {
                        return Err(self.refused(&refusal));
                    }
                    tick.as_mut().reset(deadline.min(now + CHECKOUT_SLICE).into());
                }
            }
        }
    }

    /// With a turn in hand: a connection from bb8 — an idle one, or a new one — until the
    /// deadline, failing early when connecting fails and there is nothing to wait for.
    async fn checkout(
        &self,
        pool: &bb8::Pool<Manager<C>>,
        started: Instant,
        deadline: Instant,
    ) -> Result<bb8::PooledConnection<'static, Manager<C>>, Failure> {
        let shared = &self.inner.shared;
        let mut failures = shared.subscribe_failures();
        failures.borrow_and_update();
        'checkout: loop {
            // bb8 asks for a new connection only when a checkout starts (or is woken by a
            // returned one), and a connect that fails wakes nobody. A checkout that started
            // while another's failed connect was still being counted asks for none and would
            // sleep until `pool_timeout`; starting it again every slice, while the pool has
            // room to grow, closes that gap.
            let checkout = pool.get_owned();
            tokio::pin!(checkout);
            let slice =
                tokio::time::sleep_until(deadline.min(Instant::now() + CHECKOUT_SLICE).into());
            tokio::pin!(slice);
            loop {
                tokio::select! {
                    biased;
                    result = &mut checkout => return result.map_err(|error| match error {
                        bb8::RunError::User(failure) => failure,
                        bb8::RunError::TimedOut => self.timed_out(pool, started),
                    }),
                    changed = failures.changed() => {
                        if changed.is_err() {
                            continue;
                        }
                        if let Some(failure) = self.fail_fast(pool) {
                            shared.counters.failed_fast.fetch_add(1, Ordering::Relaxed);
                            return Err(failure);
                        }
                    }
                    () = &mut slice => {
                        if Instant::now() >= deadline {
                            shared.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                            return Err(self.timed_out(pool, started));
                        }
                        // Only a pool that could still grow may have forgotten to connect.
                        if pool.state().connections < shared.config.connection_limit() {
                            continue 'checkout;
                        }
                        slice.as_mut().reset(
                            deadline.min(Instant::now() + CHECKOUT_SLICE).into(),
                        );
                    }
                }
            }
        }
    }

    /// A connection from bb8, with its turn, as the caller gets it.
    fn hand_out(
        &self,
        turn: tokio::sync::SemaphorePermit<'_>,
        conn: bb8::PooledConnection<'static, Manager<C>>,
        scope: Option<Arc<RequestScope>>,
        caller: &'static Location<'static>,
    ) -> PooledConnection<C> {
        let shared = &self.inner.shared;
        // Given back when the connection is back in bb8 (`Drop`, or `reclaim`).
        turn.forget();
        conn.activity.checked_out();
        let holder = shared.config.leak_threshold().map(|_| {
            let path = scope
                .as_ref()
                .and_then(|scope| scope.path().map(str::to_owned));
            shared.holders.checked_out(caller, path)
        });
        PooledConnection {
            conn: Some(conn),
            shared: Arc::clone(shared),
            checked_out: Instant::now(),
            holder,
            _holding: scope.as_ref().map(RequestScope::holding),
            scope,
        }
    }

    /// Checkouts waiting behind one that is itself still counted as waiting.
    fn behind(&self) -> u64 {
        let waiting = self.inner.shared.counters.waiting.load(Ordering::Relaxed);
        waiting.saturating_sub(1)
    }

    /// The failure for a checkout admission refused: counted by reason, with a public message
    /// that names the expected wait against what was allowed, and the estimate as its
    /// `Retry-After`.
    fn refused(&self, refusal: &Refusal) -> Failure {
        let shared = &self.inner.shared;
        let counters = &shared.counters;
        let (counter, public) = match refusal.reason {
            Reason::ExpectedWait => (
                &counters.refused_expected_wait,
                format!(
                    "the database is at capacity: a connection would take about {} to free up, \
                     longer than the {} this request has",
                    Human(refusal.expected),
                    Human(refusal.allowed)
                ),
            ),
            Reason::StandingQueue => (
                &counters.refused_standing_queue,
                format!(
                    "the database is at capacity: a connection would take about {} to free up, \
                     and waits are held to {} while it is overloaded",
                    Human(refusal.expected),
                    Human(refusal.allowed)
                ),
            ),
            Reason::Overdue => (
                &counters.refused_overdue,
                format!(
                    "the database is at capacity: this request would have waited about {} for a \
                     connection, far past the {} waits are held to while it is overloaded",
                    Human(refusal.expected),
                    Human(refusal.allowed)
                ),
            ),
            Reason::QueueLimit => (
                &counters.refused_queue_limit,
                format!(
                    "the database is at capacity: {} requests are already waiting for a \
                     connection",
                    refusal.ahead
                ),
            ),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // Refusals come by the thousand a second in an overload: one string for the operator,
        // built in one go.
        Failure::new(Cause::Overloaded)
            .with_known_outage(true)
            .with_retry_after(refusal.retry_in)
            .with_detail(format!(
                "{:?}: {} waiting, {} connections held {:?} each on average",
                refusal.reason,
                refusal.ahead,
                shared.config.connection_limit(),
                shared.admission.hold().unwrap_or_default(),
            ))
            .with_public_message(public)
    }

    /// Where a checkout failure leaves the request: nothing was sent for it — unless an earlier
    /// connection of the same request ran statements, and then a repeat may write twice
    /// (unless an idempotency key guards the request).
    fn honest(&self, failure: Failure, scope: Option<&RequestScope>) -> Failure {
        let Some(scope) = scope else {
            return failure.with_reach(Reach::NotSent);
        };
        let database = scope.database();
        let reach = if database.statement_sent {
            Reach::MaybeSent
        } else {
            Reach::NotSent
        };
        failure.with_reach(reach).with_idempotent(database.guarded)
    }

    /// The connect failure a waiting checkout should report now, if waiting is pointless: no
    /// connection is open and no connect attempt is under way.
    fn fail_fast(&self, pool: &bb8::Pool<Manager<C>>) -> Option<Failure> {
        let shared = &self.inner.shared;
        let failure = shared.last_connect_failure()?;
        let nothing_to_wait_for = pool.state().connections == 0 && !shared.is_connecting();
        (nothing_to_wait_for || !failure.retryable()).then_some(failure)
    }

    /// The failure for a checkout that waited the whole `pool_timeout`.
    fn timed_out(&self, pool: &bb8::Pool<Manager<C>>, started: Instant) -> Failure {
        let waited = started.elapsed();
        let state = pool.state();
        let max = self.inner.shared.config.connection_limit();
        let in_use = state.connections - state.idle_connections;
        // Connecting failed while this checkout waited: that, not a busy pool, is why it
        // waited in vain (the pool could not grow).
        match self.inner.shared.connect_failure_since(started) {
            Some(failure) => {
                let detail = format!(
                    "no connection within {waited:?} ({in_use} of {max} in use, {} open); \
                     connecting failed: {}",
                    state.connections,
                    failure.report()
                );
                failure.with_detail(detail)
            }
            None => Failure::new(Cause::PoolExhausted).with_detail(format!(
                "pool exhausted ({in_use} of {max} in use, waited {waited:?})"
            )),
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
        let pool = self
            .inner
            .pool
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(pool) = pool else {
            return;
        };
        let idle = pool.state().idle_connections;
        // Each idle connection fails the check at checkout now (the pool is closed), and bb8
        // drops it; one checkout attempt walks through all of them without waiting.
        for _ in 0..=idle {
            if pool.state().idle_connections == 0 {
                break;
            }
            let _ = tokio::time::timeout(Duration::ZERO, pool.get()).await;
        }
        tracing::info!(closed_idle = idle, "database pool closed");
        drop(pool);
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
        let Some(pool) = self.bb8_pool() else {
            return Err(Failure::new(Cause::PoolClosed));
        };
        if pool.state().connections == 0 {
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
            let conn = self.checkout(&pool, started, started + limit).await?;
            let mut conn = self.hand_out(turn, conn, None, Location::caller());
            if shared.config.statement_deadline() {
                conn.bound_statements(None).await?;
            }
            conn.batch_execute("SELECT 1").await?;
            Ok::<_, Failure>(())
        };
        match tokio::time::timeout(limit, check).await {
            Ok(result) => result,
            Err(_) => Err(Failure::new(Cause::TimedOut).with_detail(format!(
                "the readiness check got no answer within connect_timeout ({limit:?})"
            ))),
        }
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
        let (open, idle, statistics) = match self.bb8_pool() {
            Some(pool) => {
                let state = pool.state();
                (
                    state.connections,
                    state.idle_connections,
                    Some(state.statistics),
                )
            }
            None => (0, 0, None),
        };
        let statistics = statistics.unwrap_or_default();
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

    fn bb8_pool(&self) -> Option<bb8::Pool<Manager<C>>> {
        self.inner
            .pool
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Counts a checkout as waiting for as long as it runs, cancellation included.
struct Waiting<'a>(&'a Shared);

impl<'a> Waiting<'a> {
    /// Starts counting; also says how many were waiting already.
    fn start(shared: &'a Shared) -> (Self, u64) {
        let ahead = shared.counters.waiting.fetch_add(1, Ordering::Relaxed);
        (Waiting(shared), ahead)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.counters.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// [`SharedPool::get`]'s future: the checkout itself, or — with `statement_timeout=deadline`
    /// — the checkout and the `SET` that bounds its statements, boxed.
    #[project = CheckoutProjection]
    enum Checkout<F, B> {
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

/// A duration as people read it in a refusal: `350 ms`, `4.8 s`.
struct Human(Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        if millis < 1000 {
            write!(f, "{millis} ms")
        } else {
            // Integers: a refusal is written thousands of times a second in an overload, and
            // formatting a float costs more than the rest of the message.
            let tenths = (millis + 50) / 100;
            write!(f, "{}.{} s", tenths / 10, tenths % 10)
        }
    }
}

/// How long one bb8 checkout is waited on before it is started again (see `get`): short enough
/// that a checkout bb8 forgot to ask a connection for waits at most this much longer, long enough
/// that restarting costs nothing measurable.
const CHECKOUT_SLICE: Duration = Duration::from_millis(100);

/// A checkout slower than this is logged (at debug level) with its wait.
const SLOW_CHECKOUT: Duration = Duration::from_millis(100);

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

/// A connection checked out of a [`SharedPool`]; it goes back when dropped.
///
/// Dereferences to the diesel-async connection, so `diesel_async::RunQueryDsl` methods take
/// `&mut *conn`. A connection that comes back broken — closed, or with a transaction left open
/// because the request was cancelled mid-transaction — is dropped instead of reused.
///
/// Dropped while a statement still runs — the request's future was dropped mid-query because
/// the client hung up, a timeout fired or the handler panicked — the connection stays checked
/// out while the statement is cancelled on the server (PostgreSQL's cancel request, MySQL's
/// `KILL QUERY`); it goes back to the pool only once it is idle again, or is closed. No later
/// checkout waits behind an abandoned statement. [`PoolStats::cancelled`] counts these.
pub struct PooledConnection<C: Connect> {
    /// Taken by `drop`.
    conn: Option<bb8::PooledConnection<'static, Manager<C>>>,
    shared: Arc<Shared>,
    /// The request's scope, told when the connection ran statements.
    scope: Option<Arc<RequestScope>>,
    /// When it was checked out, for the use-time histogram.
    checked_out: Instant,
    /// Its entry among the connections `leak_threshold` watches.
    holder: Option<u64>,
    /// Marks the connection in use for the request's scope while it is checked out.
    _holding: Option<Mark>,
}

impl<C: Connect> PooledConnection<C> {
    fn idle(&self) -> &crate::manager::Idle<C> {
        self.conn
            .as_ref()
            .unwrap_or_else(|| unreachable!("taken only when dropped"))
    }

    fn idle_mut(&mut self) -> &mut crate::manager::Idle<C> {
        self.conn
            .as_mut()
            .unwrap_or_else(|| unreachable!("taken only when dropped"))
    }
}

impl<C: Connect> Drop for PooledConnection<C> {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let held = self.checked_out.elapsed();
        self.shared.counters.use_time.record(held);
        self.shared.admission.returned(held);
        if let (Some(holder), Some(threshold)) = (self.holder, self.shared.config.leak_threshold())
        {
            self.shared.holders.returned(holder, threshold);
        }
        if let Some(scope) = &self.scope {
            if conn.activity.sent() {
                scope.sent();
            }
        }
        if reclaim::needs_reclaim(&mut conn) {
            // The reclaim keeps the turn too, and gives it back with the connection.
            reclaim::spawn(conn, Arc::clone(&self.shared));
            return;
        }
        // bb8 takes the connection back first, so the next turn finds it idle.
        drop(conn);
        self.shared.admission.give_back();
    }
}

impl<C: Connect> PooledConnection<C> {
    /// Bounds this connection's statements on the server by the time its request has `left`
    /// (`statement_timeout=deadline`), or puts the connection's own bound back for a checkout
    /// without a deadline. Nothing the request sent: the `SET` is not one of its statements.
    async fn bound_statements(&mut self, left: Option<Duration>) -> Result<(), Failure> {
        let idle = self.idle_mut();
        if left.is_none() && !idle.bounded {
            return Ok(());
        }
        let config = &self.shared.config;
        let Some(sql) = C::statement_bound(config, left) else {
            return Ok(());
        };
        let idle = self
            .conn
            .as_mut()
            .unwrap_or_else(|| unreachable!("taken only when dropped"));
        let outcome = idle.conn.batch_execute(&sql).await;
        idle.activity.checked_out();
        if let Err(error) = outcome {
            let failure = Failure::from(error);
            // A server that does not know the setting (MySQL has no `max_statement_time`)
            // will never know it: a configuration error, not retried.
            let failure = if failure.cause() == Cause::Query {
                Failure::new(Cause::InvalidConfig)
                    .with_detail(format!(
                        "statement_timeout=deadline: the server refused `{sql}`: {}",
                        failure.report()
                    ))
                    .with_source(failure)
            } else {
                failure
            };
            return Err(failure.with_reach(Reach::NotSent));
        }
        idle.bounded = left.is_some();
        Ok(())
    }

    /// Classifies an error from a query on this connection, using what the connection knows.
    ///
    /// diesel reports most server errors as `DatabaseErrorKind::Unknown` with a localised
    /// message, so a backend killed under a query (PostgreSQL `57P01`) would classify as a bad
    /// query (`CRITICAL_ERROR`). For such a statement error this asks the connection whether it
    /// is still alive — at no cost when it already knows it is closed, otherwise with one
    /// round trip, paid only on the error path — and reports a dead one as a lost connection
    /// (`DB_CONNECTION_ERROR`, retryable, `MaybeSent`). A connection that died this way is
    /// dropped when it goes back to the pool.
    pub async fn classify(&mut self, error: impl Into<Failure>) -> Failure {
        let failure = error.into();
        if !matches!(failure.cause(), Cause::Query | Cause::Internal) {
            return failure;
        }
        let conn = &mut self.idle_mut().conn;
        let dead = conn.is_broken()
            || match conn.batch_execute("SELECT 1").await {
                Ok(()) => false,
                // A live connection can still refuse (inside an aborted transaction, say); only
                // a connection-level failure means it is gone.
                Err(error) => {
                    Failure::from(error).cause() == Cause::ConnectionLost || conn.is_broken()
                }
            };
        if !dead {
            return failure;
        }
        Failure::new(Cause::ConnectionLost)
            .with_reach(Reach::MaybeSent)
            .with_detail(format!(
                "the connection broke under the query: {}",
                failure.report()
            ))
            .with_source(failure)
    }
}

impl<C: Connect> Deref for PooledConnection<C> {
    type Target = C;

    fn deref(&self) -> &C {
        &self.idle().conn
    }
}

impl<C: Connect> DerefMut for PooledConnection<C> {
    fn deref_mut(&mut self) -> &mut C {
        &mut self.idle_mut().conn
    }
}

impl<C: Connect> fmt::Debug for PooledConnection<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledConnection").finish_non_exhaustive()
    }
}

/// Readiness probes ask the pool ([`SharedPool::readiness`]): busy is ready.
impl<C: Connect> ballast_core::ReadinessCheck for SharedPool<C> {
    fn check(&self) -> ballast_core::CheckFuture<'_> {
        Box::pin(self.readiness())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_durations_as_people_read_them() {
        let said = |ms| Human(Duration::from_millis(ms)).to_string();
        assert_eq!(said(350), "350 ms");
        assert_eq!(said(999), "999 ms");
        assert_eq!(said(1_000), "1.0 s");
        assert_eq!(said(4_649), "4.6 s");
        assert_eq!(said(4_650), "4.7 s");
        assert_eq!(said(61_000), "61.0 s");
    }
}
