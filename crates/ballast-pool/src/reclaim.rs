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

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::connect::Connect;
use crate::manager::Manager;
use crate::shared::Shared;

/// The longest an abandoned connection is given to become idle again (the cancel request, the
/// cancelled statement winding down, a `ROLLBACK`). A connection that takes longer is closed
/// instead of reused.
const RECLAIM_DEADLINE: Duration = Duration::from_secs(5);

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
            C::cancel_abandoned(&mut idle.conn, &shared.config, idle.host, in_flight),
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
