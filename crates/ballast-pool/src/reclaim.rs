//! Connections abandoned mid-query: noticing them, stopping their statement on the server, and
//! returning them to the pool only once they are idle again.
//!
//! A request's future can be dropped at any `.await` — the client hung up, a timeout fired, the
//! shutdown deadline passed, the handler panicked. When that happens while a statement runs, the
//! checked-out connection goes back with the statement still running on the server: handed to the
//! next checkout, that request waits behind it (an abandoned `pg_sleep(20)` made the next request
//! take 18 s), and on MySQL the next command reads the old command's answer.
//!
//! Every pooled connection carries an [`Activity`] fed by a diesel [`Instrumentation`]: statements
//! started minus statements finished. A connection that comes back with a statement in flight (or a
//! PostgreSQL transaction left open) is not returned to bb8 at once: a task keeps it checked out —
//! so the pool still counts it against `connection_limit` — and [`Connect::cancel_abandoned`]
//! stops the statement on the server and makes the connection idle again, or says it must be
//! closed. Only then does the slot go back to the pool.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_core::scope::RequestScope;
use diesel::connection::{Instrumentation, InstrumentationEvent};

use crate::connect::Connect;
use crate::manager::{Manager, Shared};

/// The longest an abandoned connection is given to become idle again (the cancel request, the
/// cancelled statement winding down, a `ROLLBACK`). A connection that takes longer is closed
/// instead of reused.
const RECLAIM_DEADLINE: Duration = Duration::from_secs(5);

/// What one pooled connection is doing, as its instrumentation reports it.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    /// Statements started and not yet finished.
    in_flight: AtomicU32,
    /// Whether a statement was started since the connection was last checked out.
    sent: AtomicBool,
    /// Whether a statement failed because the connection itself is gone (a backend terminated,
    /// a reset): the connection is closed when it comes back, even before the driver has
    /// noticed the socket closing, and whatever the handler did with the error.
    lost: AtomicBool,
}

impl Activity {
    /// Whether a statement may still be running.
    pub(crate) fn in_flight(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// Whether a statement was started since the last [`checked_out`](Self::checked_out).
    pub(crate) fn sent(&self) -> bool {
        self.sent.load(Ordering::Acquire)
    }

    /// Whether a statement failed with the connection gone.
    pub(crate) fn lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// A new checkout begins: nothing sent for it yet.
    pub(crate) fn checked_out(&self) {
        self.sent.store(false, Ordering::Release);
    }

    /// The connection was made idle again: the statements it abandoned are over.
    fn idle(&self) {
        self.in_flight.store(0, Ordering::Release);
    }
}

/// The diesel instrumentation installed on every pooled connection: counts statements in flight
/// and passes every event on to the application's default instrumentation, if it set one.
pub(crate) struct Tracking {
    activity: Arc<Activity>,
    next: Option<Box<dyn Instrumentation>>,
}

impl Tracking {
    pub(crate) fn new(activity: Arc<Activity>) -> Self {
        Tracking {
            activity,
            next: diesel::connection::get_default_instrumentation(),
        }
    }
}

impl Instrumentation for Tracking {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        match &event {
            InstrumentationEvent::StartQuery { .. } => {
                self.activity.in_flight.fetch_add(1, Ordering::AcqRel);
                self.activity.sent.store(true, Ordering::Release);
                // Tell the request at once where the statement starts on its own task (every
                // backend but SQLite, whose statements run on a blocking thread); the checkout
                // tells it again when it ends.
                RequestScope::with_current(RequestScope::sent);
            }
            InstrumentationEvent::FinishQuery { error, .. } => {
                if error.is_some_and(|error| {
                    ballast_core::classify_diesel(error).cause()
                        == ballast_core::Cause::ConnectionLost
                }) {
                    self.activity.lost.store(true, Ordering::Release);
                }
                // Saturating: an event from before the last reclaim must not wrap the count.
                let _ = self.activity.in_flight.fetch_update(
                    Ordering::AcqRel,
                    Ordering::Acquire,
                    |count| Some(count.saturating_sub(1)),
                );
            }
            _ => {}
        }
        if let Some(next) = &mut self.next {
            next.on_connection_event(event);
        }
    }
}

/// A checked-out connection that came back while it may still be busy.
pub(crate) type Abandoned<C> = bb8::PooledConnection<'static, Manager<C>>;

/// Whether a connection coming back needs reclaiming before bb8 may have it again.
pub(crate) fn needs_reclaim<C: Connect>(conn: &mut Abandoned<C>) -> bool {
    let idle = &mut **conn;
    // A transaction left open (or a BEGIN/COMMIT cut off) makes diesel-async call the
    // connection broken: a PostgreSQL connection can be rolled back and kept.
    idle.activity.in_flight() || idle.conn.is_broken()
}

/// Keeps `conn` checked out — with its checkout's turn — while its abandoned statement is
/// stopped, then lets it go back: to be reused when it is idle again, or closed when it is not.
/// The turn is given back once bb8 has the connection.
pub(crate) fn spawn<C: Connect>(mut conn: Abandoned<C>, shared: Arc<Shared>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        // No runtime to cancel on (the process is ending): close it.
        conn.discard = true;
        drop(conn);
        shared.admission.give_back();
        return;
    };
    let reclaiming = Reclaiming::start(Arc::clone(&shared));
    runtime.spawn(async move {
        let started = Instant::now();
        let idle = &mut *conn;
        let in_flight = idle.activity.in_flight();
        let outcome = tokio::time::timeout(
            RECLAIM_DEADLINE,
            C::cancel_abandoned(&mut idle.conn, &shared.config, in_flight),
        )
        .await;
        let reusable = match outcome {
            Ok(Ok(reusable)) => reusable,
            Ok(Err(failure)) => {
                tracing::warn!(
                    "an abandoned connection could not be made idle and is closed: {}",
                    failure.report()
                );
                false
            }
            Err(_) => {
                tracing::warn!(
                    deadline_ms = RECLAIM_DEADLINE.as_millis() as u64,
                    "an abandoned connection did not become idle in time and is closed"
                );
                false
            }
        };
        if reusable {
            idle.activity.idle();
        } else {
            idle.discard = true;
        }
        shared.counters.cancelled.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            took_ms = started.elapsed().as_millis() as u64,
            cancelled_statement = in_flight,
            reusable,
            "abandoned connection reclaimed"
        );
        // Dropping `conn` hands it back to bb8, which reuses it or, when it is to be discarded,
        // closes it; only then does `close` stop waiting for it.
        drop(conn);
        drop(reclaiming);
    });
}

/// Counts a reclaim as under way for as long as its task lives, so [`SharedPool::close`]
/// (crate::SharedPool::close) can wait for abandoned connections to wind down, and gives the
/// checkout's turn back when it ends (a task dropped unfinished included).
struct Reclaiming(Arc<Shared>);

impl Reclaiming {
    fn start(shared: Arc<Shared>) -> Self {
        shared.reclaiming.fetch_add(1, Ordering::AcqRel);
        Reclaiming(shared)
    }
}

impl Drop for Reclaiming {
    fn drop(&mut self) {
        self.0.admission.give_back();
        if self.0.reclaiming.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.reclaimed.notify_waiters();
        }
    }
}
