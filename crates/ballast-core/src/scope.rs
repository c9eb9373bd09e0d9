//! The request a piece of database work belongs to: its deadline, and what the database did for
//! it (feature `scope`).
//!
//! A request's deadline is known to the layer that bounds it, not to the pool that hands out
//! connections deep inside the handler; and when the deadline passes, the layer must say what ran
//! out — the database, the client's request body, or something else. A [`RequestScope`] carries
//! both across: the layer runs the request inside one ([`RequestScope::run`], a Tokio task-local),
//! and the pool reads the deadline ([`RequestScope::remaining`]) and marks what it does for the
//! request ([`RequestScope::waiting`], [`RequestScope::holding`], [`RequestScope::sent`]).
//! Without a scope, everything works as before: no deadline, nothing marked.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::time::{Duration, Instant};
//! use ballast_core::scope::RequestScope;
//!
//! let scope = RequestScope::new(Some(Instant::now() + Duration::from_secs(5)));
//! let remaining = scope
//!     .run(async {
//!         // Deep inside a handler, the pool asks how long it may wait.
//!         RequestScope::remaining()
//!     })
//!     .await;
//! assert!(remaining.unwrap() <= Duration::from_secs(5));
//! assert_eq!(RequestScope::remaining(), None, "outside the scope");
//! # }
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

tokio::task_local! {
    static SCOPE: Arc<RequestScope>;
}

/// A future running inside a [`RequestScope`] ([`RequestScope::run`]).
pub type Scoped<F> = tokio::task::futures::TaskLocalFuture<Arc<RequestScope>, F>;

/// Whether layers should record each request's path in its scope (see
/// [`RequestScope::record_paths`]).
static RECORD_PATHS: AtomicBool = AtomicBool::new(false);

/// One request's deadline and its use of the database. See the [module docs](self).
#[derive(Debug)]
pub struct RequestScope {
    deadline: Option<Instant>,
    /// The request's path, when something asked for paths.
    path: OnceLock<Box<str>>,
    waiting: AtomicU32,
    holding: AtomicU32,
    sent: AtomicBool,
    guarded: AtomicBool,
}

/// What the database was doing for a request at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DatabaseUse {
    /// A checkout was waiting for a connection.
    pub waiting_for_connection: bool,
    /// A connection was checked out (a statement may be running on it).
    pub connection_in_use: bool,
    /// A statement was started for the request: whatever fails now may have written.
    pub statement_sent: bool,
    /// An idempotency key guards the request's writes: repeating it cannot do them twice.
    pub guarded: bool,
}

impl RequestScope {
    /// A scope with this deadline (or none).
    pub fn new(deadline: Option<Instant>) -> Arc<Self> {
        Arc::new(RequestScope {
            deadline,
            path: OnceLock::new(),
            waiting: AtomicU32::new(0),
            holding: AtomicU32::new(0),
            sent: AtomicBool::new(false),
            guarded: AtomicBool::new(false),
        })
    }

    /// Runs `future` inside this scope: code it runs (on this task) finds the scope with
    /// [`current`](Self::current).
    pub fn run<F: Future>(self: &Arc<Self>, future: F) -> Scoped<F> {
        SCOPE.scope(Arc::clone(self), future)
    }

    /// The scope of the request this task is running, if it runs inside one.
    pub fn current() -> Option<Arc<RequestScope>> {
        SCOPE.try_with(Arc::clone).ok()
    }

    #[doc(hidden)]
    /// Internal to the ballast crates: not part of the stable API, and may change in any release.
    ///
    /// Calls `f` with the scope of the request this task is running, if it runs inside one
    /// (without taking a handle to it, for the hot paths).
    pub fn with_current<R>(f: impl FnOnce(&RequestScope) -> R) -> Option<R> {
        SCOPE.try_with(|scope| f(scope)).ok()
    }

    /// The time left until the current request's deadline (zero once it has passed), if the
    /// task runs inside a scope that has one.
    pub fn remaining() -> Option<Duration> {
        SCOPE
            .try_with(|scope| scope.deadline)
            .ok()
            .flatten()
            .map(|deadline| deadline.saturating_duration_since(Instant::now()))
    }

    /// The deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    #[doc(hidden)]
    /// Internal to the ballast crates: not part of the stable API, and may change in any release.
    ///
    /// Asks the layers that make scopes to record each request's path in it from now on, for
    /// this process: a pool that warns about connections held too long (`leak_threshold`) names
    /// the request. Until something asks, no path is copied.
    pub fn record_paths() {
        RECORD_PATHS.store(true, Ordering::Relaxed);
    }

    #[doc(hidden)]
    /// Internal to the ballast crates: not part of the stable API, and may change in any release.
    ///
    /// Whether paths are to be recorded ([`record_paths`](Self::record_paths)).
    pub fn records_paths() -> bool {
        RECORD_PATHS.load(Ordering::Relaxed)
    }

    #[doc(hidden)]
    /// Internal to the ballast crates: not part of the stable API, and may change in any release.
    ///
    /// Records the request's path (the first one recorded stays). Layers call it when
    /// [`records_paths`](Self::records_paths) says so; never a query string, which can carry
    /// tokens.
    pub fn set_path(&self, path: &str) {
        let _ = self.path.set(path.into());
    }

    /// The request's path, if it was recorded.
    pub fn path(&self) -> Option<&str> {
        self.path.get().map(|path| &**path)
    }

    /// What the database is doing for the request now (and whether a statement was ever sent).
    pub fn database(&self) -> DatabaseUse {
        DatabaseUse {
            waiting_for_connection: self.waiting.load(Ordering::Acquire) > 0,
            connection_in_use: self.holding.load(Ordering::Acquire) > 0,
            statement_sent: self.sent.load(Ordering::Acquire),
            guarded: self.guarded.load(Ordering::Acquire),
        }
    }

    #[doc(hidden)]
    /// Internal to the ballast crates: not part of the stable API, and may change in any release.
    ///
    /// For pools: marks a checkout waiting for a connection, until the mark is dropped.
    pub fn waiting(self: &Arc<Self>) -> Mark {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Mark {
            scope: Arc::clone(self),
            counter: Counter::Waiting,
        }
    }

    #[doc(hidden)]
    /// Internal to the ballast crates: not part of the stable API, and may change in any release.
    ///
    /// For pools: marks a connection checked out for the request, until the mark is dropped.
    pub fn holding(self: &Arc<Self>) -> Mark {
        self.holding.fetch_add(1, Ordering::AcqRel);
        Mark {
            scope: Arc::clone(self),
            counter: Counter::Holding,
        }
    }

    #[doc(hidden)]
    /// Internal to the ballast crates: not part of the stable API, and may change in any release.
    ///
    /// For pools: notes that a statement was started for the request.
    pub fn sent(&self) {
        self.sent.store(true, Ordering::Release);
    }

    #[doc(hidden)]
    /// Internal to the ballast crates: not part of the stable API, and may change in any release.
    ///
    /// Notes that an idempotency key guards the request's writes (`ballast-idempotency` does,
    /// for a request with a key): a failure anywhere in it may be repeated
    /// ([`Failure::with_idempotent`](crate::Failure::with_idempotent)).
    pub fn guard(&self) {
        self.guarded.store(true, Ordering::Release);
    }
}

#[derive(Debug, Clone, Copy)]
enum Counter {
    Waiting,
    Holding,
}

#[doc(hidden)]
/// Internal to the ballast crates: not part of the stable API, and may change in any release.
///
/// A mark on a [`RequestScope`] that lasts until it is dropped (see
/// [`RequestScope::waiting`], [`RequestScope::holding`]).
#[derive(Debug)]
pub struct Mark {
    scope: Arc<RequestScope>,
    counter: Counter,
}

impl Drop for Mark {
    fn drop(&mut self) {
        let counter = match self.counter {
            Counter::Waiting => &self.scope.waiting,
            Counter::Holding => &self.scope.holding,
        };
        counter.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn marks_last_as_long_as_they_are_held() {
        let scope = RequestScope::new(None);
        assert_eq!(scope.database(), DatabaseUse::default());
        let waiting = scope.waiting();
        assert!(scope.database().waiting_for_connection);
        drop(waiting);
        let holding = scope.holding();
        scope.sent();
        let seen = scope
            .run(async { RequestScope::current().unwrap().database() })
            .await;
        assert!(seen.connection_in_use && seen.statement_sent && !seen.waiting_for_connection);
        drop(holding);
        assert!(!scope.database().connection_in_use);
        assert!(scope.database().statement_sent, "sent stays sent");
        assert_eq!(scope.run(async { RequestScope::remaining() }).await, None);
    }
}

tokio::task_local! {
    static DRAIN: DrainSignal;
}

/// Whether the service has begun to drain, for work that should stop early then: a background
/// job's retries ([`ballast_retry::Retrying`] gives up waiting for the next attempt and returns
/// the last failure).
///
/// `ballast-shutdown` runs every job of `ShutdownHandle::spawn` inside the signal of its
/// shutdown; [`run`](Self::run) puts any future inside one, and [`current`](Self::current)
/// finds it. Without one, nothing ever drains.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use ballast_core::scope::DrainSignal;
///
/// let (drain, signal) = tokio::sync::watch::channel(false);
/// let signal = DrainSignal::new(signal);
/// signal
///     .clone()
///     .run(async {
///         let current = DrainSignal::current().expect("inside the signal");
///         assert!(!current.is_draining());
///         drain.send_replace(true);
///         current.draining().await; // resolves: the drain began
///     })
///     .await;
/// assert!(DrainSignal::current().is_none(), "outside it");
/// # }
/// ```
///
/// [`ballast_retry::Retrying`]: https://docs.rs/ballast-retry
#[derive(Debug, Clone)]
pub struct DrainSignal(tokio::sync::watch::Receiver<bool>);

impl DrainSignal {
    /// A signal that says the drain has begun once `draining` holds `true`.
    pub fn new(draining: tokio::sync::watch::Receiver<bool>) -> Self {
        DrainSignal(draining)
    }

    /// Runs `future` inside this signal: [`current`](Self::current) finds it there.
    pub fn run<F: Future>(self, future: F) -> tokio::task::futures::TaskLocalFuture<Self, F> {
        DRAIN.scope(self, future)
    }

    /// The signal the current task runs inside, if any.
    pub fn current() -> Option<DrainSignal> {
        DRAIN.try_with(DrainSignal::clone).ok()
    }

    /// Whether the drain has begun.
    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves when the drain begins (at once if it has); never if whoever could start it is
    /// gone.
    pub async fn draining(mut self) {
        if self.0.wait_for(|draining| *draining).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

tokio::task_local! {
    static AS_OF: Arc<DataAsOf>;
}

/// How current the data a response is built from is: the earliest moment some piece of it is
/// known to be current as of, when that is before the request began.
///
/// A read on a streaming replica sees the primary as it was a little while ago: a response built
/// from it may predate a write another request already answered. Whoever is about to keep a
/// response for later — a cache filling an entry — runs the service inside
/// [`observe`](Self::observe); whoever reads data that may be behind — a replica read in
/// `ballast-pool` — [`record`](Self::record)s how current it is. The cache then refuses to store
/// a response that predates an invalidation of its key: no write is hidden by a copy built from
/// data older than it. Outside an `observe`, `record` does nothing.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::{Duration, Instant};
/// use ballast_core::scope::DataAsOf;
///
/// let behind = Instant::now() - Duration::from_millis(300);
/// let ((), as_of) = DataAsOf::observe(async move {
///     // Deep inside a handler: a replica read, 300 ms behind the primary.
///     DataAsOf::record(behind);
/// })
/// .await;
/// assert_eq!(as_of, Some(behind));
/// # }
/// ```
#[derive(Debug, Default)]
pub struct DataAsOf {
    earliest: std::sync::Mutex<Option<Instant>>,
}

impl DataAsOf {
    /// Runs `future`, and returns its output with the earliest moment recorded inside it (`None`:
    /// nothing was recorded, the data is as current as the moment it was read).
    pub async fn observe<F: Future>(future: F) -> (F::Output, Option<Instant>) {
        let slot = Arc::new(DataAsOf::default());
        let output = AS_OF.scope(Arc::clone(&slot), future).await;
        let earliest = *slot
            .earliest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (output, earliest)
    }

    /// Records that data read now is current only as of `as_of`, for the enclosing
    /// [`observe`](Self::observe), if any; the earliest of several records counts.
    pub fn record(as_of: Instant) {
        let _ = AS_OF.try_with(|slot| {
            let mut earliest = slot
                .earliest
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if earliest.is_none_or(|earliest| as_of < earliest) {
                *earliest = Some(as_of);
            }
        });
    }
}
