//! A connection as the caller holds it: back to the pool when dropped, an abandoned statement
//! stopped first.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_core::scope::{Mark, RequestScope};
use ballast_core::{Cause, Failure, Reach};

use crate::connect::Connect;
use crate::manager::Manager;
use crate::reclaim;
use crate::shared::Shared;

/// A connection checked out of a [`SharedPool`](crate::SharedPool); it goes back when dropped.
///
/// Dereferences to the diesel-async connection, so `diesel_async::RunQueryDsl` methods take
/// `&mut *conn`. A connection that comes back broken — closed, or with a transaction left open
/// because the request was cancelled mid-transaction — is dropped instead of reused.
///
/// Dropped while a statement still runs — the request's future was dropped mid-query because
/// the client hung up, a timeout fired or the handler panicked — the connection stays checked
/// out while the statement is cancelled on the server (PostgreSQL's cancel request, MySQL's
/// `KILL QUERY`); it goes back to the pool only once it is idle again, or is closed. No later
/// checkout waits behind an abandoned statement. [`PoolStats::cancelled`](crate::PoolStats::cancelled) counts these.
pub struct PooledConnection<C: Connect> {
    /// Taken by `drop`.
    pub(crate) conn: Option<bb8::PooledConnection<'static, Manager<C>>>,
    pub(crate) shared: Arc<Shared>,
    /// The request's scope, told when the connection ran statements.
    pub(crate) scope: Option<Arc<RequestScope>>,
    /// When it was checked out, for the use-time histogram.
    pub(crate) checked_out: Instant,
    /// Its entry among the connections `leak_threshold` watches.
    pub(crate) holder: Option<u64>,
    /// Marks the connection in use for the request's scope while it is checked out.
    pub(crate) _holding: Option<Mark>,
    /// Where it goes back when dropped, when it was [lent](crate::Lent) to a request's `Conn`.
    pub(crate) lender: Option<crate::lend::Slot<C>>,
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
        if let Some(lender) = self.lender.take() {
            // Back to the layer that lent it, still checked out, as it is (in its transaction).
            lender.give_back(PooledConnection {
                conn: self.conn.take(),
                shared: Arc::clone(&self.shared),
                scope: self.scope.take(),
                checked_out: self.checked_out,
                holder: self.holder.take(),
                _holding: self._holding.take(),
                lender: None,
            });
            return;
        }
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
    ///
    /// The bound set is the time left and a fortieth more, and a connection whose bound is
    /// already between the time left and a twentieth more keeps it: a statement is never cut
    /// short of its request's deadline and outlives it by at most 5% of the time that was left,
    /// and a busy route whose checkouts have about the same time left (most of a request
    /// timeout) sends no `SET` at all after the first.
    pub(crate) async fn bound_statements(&mut self, left: Option<Duration>) -> Result<(), Failure> {
        let idle = self.idle_mut();
        match (left, idle.bound) {
            (None, None) => return Ok(()),
            (Some(left), Some(bound)) if bound >= left && bound <= left + left / 20 => {
                return Ok(())
            }
            _ => {}
        }
        let wanted = left.map(|left| left + left / 40);
        let config = &self.shared.config;
        let Some(sql) = C::statement_bound(config, wanted) else {
            return Ok(());
        };
        let idle = self
            .conn
            .as_mut()
            .unwrap_or_else(|| unreachable!("taken only when dropped"));
        // Unknown until the `SET` is answered: a checkout dropped meanwhile (MariaDB waits for
        // it) leaves a bound no deadline matches, so the next checkout sets its own.
        idle.bound = Some(Duration::ZERO);
        let outcome = idle.conn.send_statement_bound(&sql).await;
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
        idle.bound = wanted;
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
