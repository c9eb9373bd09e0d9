//! Opening connections with the driver, so a failed connect keeps its driver code.

use std::future::Future;

use ballast_core::Failure;
use diesel_async::pooled_connection::PoolableConnection;
use diesel_async::AsyncConnection;

use crate::config::{Backend, PoolConfig};

/// A diesel-async connection type the pool can open.
///
/// Implemented for `AsyncPgConnection` (feature `postgres`), `AsyncMysqlConnection` (feature
/// `mysql`) and `SyncConnectionWrapper<SqliteConnection>` (feature `sqlite`). Each opens its
/// connection with its driver directly rather than through diesel's `establish`, because diesel
/// drops the driver's error code: here a refused connect stays `53300` or `1040` or
/// "connection refused", which decides whether anyone retries.
pub trait Connect: AsyncConnection + PoolableConnection + Send + 'static {
    /// The backend this connection type speaks to; a [`PoolConfig`] for another backend is
    /// rejected when the pool is built.
    const BACKEND: Backend;

    /// Opens one connection, taking at most `config.connect_timeout()` for all of it: TCP,
    /// startup, authentication and session setup.
    ///
    /// # Errors
    ///
    /// The classified failure, always [`Reach::NotSent`](ballast_core::Reach::NotSent).
    fn open(config: &PoolConfig) -> impl Future<Output = Result<Self, Failure>> + Send;
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

#[cfg(feature = "postgres")]
impl Connect for diesel_async::AsyncPgConnection {
    const BACKEND: Backend = Backend::Postgres;

    async fn open(config: &PoolConfig) -> Result<Self, Failure> {
        let pg_config: tokio_postgres::Config = config.driver_url().parse()?;
        bounded(config, async move {
            // tokio-postgres's own connect_timeout covers only the TCP connect; `bounded`
            // covers the startup conversation too, where a hung server would otherwise hang us.
            let (client, connection) = pg_config.connect(tokio_postgres::NoTls).await?;
            Ok(Self::try_from_client_and_connection(client, connection).await?)
        })
        .await
    }
}

#[cfg(feature = "mysql")]
impl Connect for diesel_async::AsyncMysqlConnection {
    const BACKEND: Backend = Backend::Mysql;

    async fn open(config: &PoolConfig) -> Result<Self, Failure> {
        let opts =
            mysql_async::Opts::from_url(config.driver_url()).map_err(mysql_async::Error::Url)?;
        // What diesel-async's own `establish` sets: it keeps its own statement cache, and
        // `found_rows` makes affected-row counts match PostgreSQL's.
        let mut builder = mysql_async::OptsBuilder::from_opts(opts)
            .stmt_cache_size(0)
            .client_found_rows(true);
        // mysql_async by default reconnects through the server's Unix socket after a TCP
        // connect to a local server: two connections per connect, which breaks per-user
        // connection limits and the pool's bound. Connect where the URL says unless it asks.
        if !config.driver_url().contains("prefer_socket=") {
            builder = builder.prefer_socket(false);
        }
        bounded(config, async move {
            let conn = mysql_async::Conn::new(builder).await?;
            Ok(Self::try_from(conn).await?)
        })
        .await
    }
}

#[cfg(feature = "sqlite")]
impl Connect
    for diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>
{
    const BACKEND: Backend = Backend::Sqlite;

    async fn open(config: &PoolConfig) -> Result<Self, Failure> {
        use diesel_async::SimpleAsyncConnection;
        // Pooled SQLite connections contend for one file: a writer waits for the lock as long
        // as a checkout may wait for a connection, instead of failing at once with BUSY.
        let setup = format!(
            "PRAGMA busy_timeout = {}; PRAGMA foreign_keys = ON;",
            config.pool_timeout().as_millis()
        );
        bounded(config, async move {
            let mut conn = Self::establish(config.driver_url()).await?;
            conn.batch_execute(&setup).await?;
            Ok(conn)
        })
        .await
    }
}
