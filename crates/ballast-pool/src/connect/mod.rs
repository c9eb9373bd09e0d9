//! Opening connections with the driver, so a failed connect keeps its driver code: the
//! [`Connect`] trait, and one module per backend that implements it.

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::future::Future;
use std::time::Duration;

use ballast_core::Failure;
use diesel_async::pooled_connection::PoolableConnection;
use diesel_async::AsyncConnection;

use crate::budget::ServerBudget;
use crate::config::{Backend, PoolConfig};

/// A connection just opened, with the index of the URL's host it is on (where the URL names
/// hosts).
pub(crate) type Opened<C> = (C, Option<usize>);

/// A diesel-async connection type the pool can open.
///
/// Implemented for `AsyncPgConnection` (feature `postgres`), `AsyncMysqlConnection` (feature
/// `mysql`) and `SyncConnectionWrapper<SqliteConnection>` (feature `sqlite`). Each opens its
/// connection with its driver directly rather than through diesel's `establish`, because diesel
/// drops the driver's error code: here a refused connect stays `53300` or `1040` or
/// "connection refused", which decides whether anyone retries.
///
/// The trait is sealed: the pool's correctness rests on what each implementation does when a
/// checkout is abandoned, so only these three implement it. Its methods are the pool's internals
/// (hidden from the docs, not part of the stable API); applications use it as a bound only
/// (`SharedPool<C: Connect>`).
pub trait Connect: sealed::Sealed + AsyncConnection + PoolableConnection + Send + 'static {
    /// The backend this connection type speaks to; a [`PoolConfig`] for another backend is
    /// rejected when the pool is built.
    const BACKEND: Backend;

    #[doc(hidden)]
    /// Opens one connection, taking at most `config.connect_timeout()` for all of it (for each
    /// host, where the URL names several): TCP, startup, authentication and session setup.
    /// Returns it with the index of the URL's host it is on, where the URL names hosts.
    ///
    /// # Errors
    ///
    /// The classified failure, always [`Reach::NotSent`](ballast_core::Reach::NotSent).
    fn open(
        config: &PoolConfig,
    ) -> impl Future<Output = Result<(Self, Option<usize>), Failure>> + Send;

    #[doc(hidden)]
    /// Makes a connection whose checkout was abandoned idle again: stops the statement it may
    /// still be running (`in_flight`) on the server and ends a transaction left open. Returns
    /// whether the connection can be reused; `false` closes it.
    ///
    /// The pool keeps the connection checked out — counted against `connection_limit` — until
    /// this returns, and gives it a few seconds.
    ///
    /// # Errors
    ///
    /// The failure that kept the connection from becoming idle; it is then closed.
    ///
    /// `host` is the URL's host the connection is on, as [`open`](Self::open) said: a cancel
    /// request goes there.
    fn cancel_abandoned(
        &mut self,
        config: &PoolConfig,
        host: Option<usize>,
        in_flight: bool,
    ) -> impl Future<Output = Result<bool, Failure>> + Send;

    #[doc(hidden)]
    /// Reads the server's connection budget for this connection's login; the pool calls it on
    /// its first connection. `Ok(None)` where there is none to read (SQLite; PostgreSQL behind
    /// PgBouncer). The default reads nothing.
    ///
    /// # Errors
    ///
    /// The failure of the statements that read it (the pool logs it and reads again on its next
    /// connection).
    fn server_budget(
        &mut self,
        config: &PoolConfig,
    ) -> impl Future<Output = Result<Option<ServerBudget>, Failure>> + Send {
        let _ = config;
        async { Ok(None) }
    }

    #[doc(hidden)]
    /// The statement that bounds every later statement of this connection on the server by
    /// `timeout` — or, with `None`, puts the connection's own bound back — for
    /// [`PoolConfig::with_statement_deadline`]. `None` where the backend has no such bound (the
    /// default).
    fn statement_bound(config: &PoolConfig, timeout: Option<Duration>) -> Option<String> {
        let _ = (config, timeout);
        None
    }

    #[doc(hidden)]
    /// Checks, once the after-connect statements ran, that the session can work as the
    /// configuration asks; the default checks nothing. PostgreSQL: the `schema` exists (a
    /// `search_path` naming a missing schema is accepted, and then every statement that creates
    /// or finds a table fails).
    ///
    /// # Errors
    ///
    /// [`Cause::InvalidConfig`](ballast_core::Cause::InvalidConfig) naming the setting, or the
    /// failure of the check's statement.
    fn check_session(
        &mut self,
        config: &PoolConfig,
    ) -> impl Future<Output = Result<(), Failure>> + Send {
        let _ = config;
        async { Ok(()) }
    }

    #[doc(hidden)]
    /// The server's current WAL position, read on a primary for [`ReplicaSet`](crate::ReplicaSet)'s
    /// lag checks. `Ok(None)` where there is none to read (the default: MySQL, SQLite).
    ///
    /// # Errors
    ///
    /// The failure of the statement that reads it.
    fn wal_position(&mut self) -> impl Future<Output = Result<Option<u64>, Failure>> + Send {
        async { Ok(None) }
    }

    #[doc(hidden)]
    /// Where a replica's replay stands, for [`ReplicaSet`](crate::ReplicaSet)'s lag checks.
    /// `Ok(None)` where it cannot be read (the default: such replicas never take reads).
    ///
    /// # Errors
    ///
    /// The failure of the statement that reads it.
    fn replay_status(
        &mut self,
    ) -> impl Future<Output = Result<Option<crate::replicas::Replay>, Failure>> + Send {
        async { Ok(None) }
    }

    #[doc(hidden)]
    /// Sends [`statement_bound`](Self::statement_bound)'s statement. The default runs it and
    /// waits for its answer; PostgreSQL pipelines it instead: it is on its way when this returns,
    /// and the checkout's first statement follows it without waiting a round trip.
    ///
    /// # Errors
    ///
    /// The server's refusal of the statement, or a broken connection, where they are known.
    fn send_statement_bound(
        &mut self,
        sql: &str,
    ) -> impl Future<Output = diesel::QueryResult<()>> + Send {
        diesel_async::SimpleAsyncConnection::batch_execute(self, sql)
    }
}

/// Opens a connection and runs the configuration's after-connect statements on it (`schema`,
/// `statement_timeout`, [`PoolConfig::with_after_connect`]), all within `connect_timeout`.
pub(crate) async fn open_ready<C: Connect>(
    config: &PoolConfig,
) -> Result<(C, Option<usize>), Failure> {
    let started = std::time::Instant::now();
    let (mut conn, host) = C::open(config).await?;
    let statements = config.after_connect_statements();
    if statements.is_empty() {
        return Ok((conn, host));
    }
    let left = config.connect_timeout().saturating_sub(started.elapsed());
    let setup = async {
        for statement in &statements {
            diesel_async::SimpleAsyncConnection::batch_execute(&mut conn, statement).await?;
        }
        Ok::<_, Failure>(conn.check_session(config).await)
    };
    match tokio::time::timeout(left, setup).await {
        Ok(Ok(Ok(()))) => Ok((conn, host)),
        // A setting the server took but that cannot work (a schema that does not exist).
        Ok(Ok(Err(failure))) => Err(failure.with_reach(ballast_core::Reach::NotSent)),
        // The connection broke meanwhile: a connect failure like any other.
        Ok(Err(failure)) if failure.retryable() => {
            Err(failure.with_reach(ballast_core::Reach::NotSent))
        }
        // A statement the server refuses (a bad `SET`) is the deployment's to fix: not
        // retryable.
        Ok(Err(failure)) => Err(Failure::new(ballast_core::Cause::InvalidConfig)
            .with_reach(ballast_core::Reach::NotSent)
            .with_detail(format!(
                "an after-connect statement failed: {}",
                failure.report()
            ))),
        Err(_) => Err(Failure::new(ballast_core::Cause::TimedOut)
            .with_reach(ballast_core::Reach::NotSent)
            .with_detail("the after-connect statements took longer than connect_timeout")),
    }
}

/// Runs a whole connect under the configured deadline, and marks every failure `NotSent`.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
async fn bounded<C>(
    config: &PoolConfig,
    connect: impl Future<Output = Result<C, Failure>>,
) -> Result<C, Failure> {
    let timeout = config.connect_timeout();
    match tokio::time::timeout(timeout, connect).await {
        Ok(result) => result,
        Err(_) => Err(
            Failure::new(ballast_core::Cause::TimedOut).with_detail(format!(
                "connecting took longer than connect_timeout ({timeout:?})"
            )),
        ),
    }
    .map_err(|failure| failure.with_reach(ballast_core::Reach::NotSent))
}

/// A server's count as a `u32` (negative: none).
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn count(value: i64) -> u32 {
    u32::try_from(value.max(0)).unwrap_or(u32::MAX)
}

/// Keeps [`Connect`] to the connection types this crate implements it for.
mod sealed {
    #[allow(unreachable_pub)]
    pub trait Sealed {}
    #[cfg(feature = "mysql")]
    impl Sealed for diesel_async::AsyncMysqlConnection {}
    #[cfg(feature = "postgres")]
    impl Sealed for diesel_async::AsyncPgConnection {}
    #[cfg(feature = "sqlite")]
    impl Sealed
        for diesel_async::sync_connection_wrapper::SyncConnectionWrapper<
            diesel::sqlite::SqliteConnection,
        >
    {
    }
}
