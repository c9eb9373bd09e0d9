//! Opening connections with the driver, so a failed connect keeps its driver code.

use std::future::Future;
use std::time::Duration;

use ballast_core::Failure;
use diesel_async::pooled_connection::PoolableConnection;
use diesel_async::AsyncConnection;

use crate::budget::ServerBudget;
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
    fn cancel_abandoned(
        &mut self,
        config: &PoolConfig,
        in_flight: bool,
    ) -> impl Future<Output = Result<bool, Failure>> + Send;

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

    /// The statement that bounds every later statement of this connection on the server by
    /// `timeout` — or, with `None`, puts the connection's own bound back — for
    /// [`PoolConfig::with_statement_deadline`]. `None` where the backend has no such bound (the
    /// default).
    fn statement_bound(config: &PoolConfig, timeout: Option<Duration>) -> Option<String> {
        let _ = (config, timeout);
        None
    }

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
pub(crate) async fn open_ready<C: Connect>(config: &PoolConfig) -> Result<C, Failure> {
    let started = std::time::Instant::now();
    let mut conn = C::open(config).await?;
    let statements = config.after_connect_statements();
    if statements.is_empty() {
        return Ok(conn);
    }
    let left = config.connect_timeout().saturating_sub(started.elapsed());
    let setup = async {
        for statement in &statements {
            diesel_async::SimpleAsyncConnection::batch_execute(&mut conn, statement).await?;
        }
        Ok::<_, Failure>(conn.check_session(config).await)
    };
    match tokio::time::timeout(left, setup).await {
        Ok(Ok(Ok(()))) => Ok(conn),
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

/// How many times a `ROLLBACK` is tried after a cancel request: the cancel may land on the first
/// one instead of the abandoned statement, if that statement had just ended.
#[cfg(feature = "postgres")]
const ROLLBACK_ATTEMPTS: usize = 3;

/// How long an abandoned PostgreSQL statement gets to end on its own before it is cancelled: most
/// statements are short, and a cancel request costs the server a connection and a process.
#[cfg(feature = "postgres")]
const CANCEL_GRACE: Duration = Duration::from_millis(20);

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
        // The connection's socket and task live on the pool's I/O thread (`io.rs`).
        if config.pgbouncer() {
            let owned = config.clone();
            return bounded(
                config,
                crate::io::open_on_driver(async move {
                    crate::pgbouncer::connect(&owned, pg_config).await
                }),
            )
            .await;
        }
        #[cfg(feature = "tls")]
        if let Some(settings) = config.tls() {
            let tls = crate::tls::MakeRustls(crate::tls::client_config(settings)?);
            return bounded(
                config,
                crate::io::open_on_driver(async move {
                    let (client, connection) = match pg_config.connect(tls).await {
                        Ok(connected) => connected,
                        // A certificate refused, a server without TLS: the deployment's to fix.
                        Err(error) if crate::tls::is_tls_failure(&error) => {
                            return Err(Failure::new(ballast_core::Cause::InvalidConfig)
                                .with_detail(format!("TLS: {error}"))
                                .with_source(error))
                        }
                        Err(error) => return Err(error.into()),
                    };
                    Ok(Self::try_from_client_and_connection(client, connection).await?)
                }),
            )
            .await;
        }
        bounded(
            config,
            crate::io::open_on_driver(async move {
                // tokio-postgres's own connect_timeout covers only the TCP connect; `bounded`
                // covers the startup conversation too, where a hung server would otherwise hang us.
                let (client, connection) = pg_config.connect(tokio_postgres::NoTls).await?;
                Ok(Self::try_from_client_and_connection(client, connection).await?)
            }),
        )
        .await
    }

    /// `ROLLBACK` first: it queues behind the abandoned statement, so a statement that ends on
    /// its own within a short grace needs nothing more. Otherwise PostgreSQL's cancel request
    /// (a separate, short connection to the postmaster that is not a session and counts against
    /// no connection limit) stops it, and the `ROLLBACK` runs right after. Either way no
    /// transaction is left open.
    async fn cancel_abandoned(
        &mut self,
        config: &PoolConfig,
        in_flight: bool,
    ) -> Result<bool, Failure> {
        use diesel_async::{AsyncConnection, SimpleAsyncConnection};
        let token = self.cancel_token();
        let mut rolled_back = {
            let rollback = self.batch_execute("ROLLBACK");
            tokio::pin!(rollback);
            match tokio::time::timeout(CANCEL_GRACE, &mut rollback).await {
                Ok(result) => result,
                Err(_) if in_flight => {
                    let cancel = postgres_cancel(&token, config);
                    match tokio::time::timeout(config.connect_timeout(), cancel).await {
                        Ok(result) => result?,
                        Err(_) => {
                            return Err(Failure::new(ballast_core::Cause::TimedOut).with_detail(
                                "the cancel request took longer than connect_timeout",
                            ))
                        }
                    }
                    rollback.await
                }
                Err(_) => rollback.await,
            }
        };
        let mut attempts = 1;
        loop {
            match rolled_back {
                Ok(()) => {
                    // The server is idle and outside any transaction: so is diesel's view of it.
                    *self.transaction_state() = Default::default();
                    return Ok(true);
                }
                // A closed connection will not recover.
                Err(diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::ClosedConnection
                    | diesel::result::DatabaseErrorKind::UnableToSendCommand,
                    _,
                )) => return Ok(false),
                // The cancel may have arrived as the statement ended and hit the ROLLBACK.
                Err(error) if attempts < ROLLBACK_ATTEMPTS => {
                    tracing::debug!("ROLLBACK of an abandoned connection failed: {error}");
                    attempts += 1;
                    rolled_back = self.batch_execute("ROLLBACK").await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// `statement_timeout`, in milliseconds: the smaller of the time left and the URL's fixed
    /// `statement_timeout`; without a deadline, the fixed one or the session's default.
    fn statement_bound(config: &PoolConfig, timeout: Option<Duration>) -> Option<String> {
        let fixed = config.statement_timeout();
        Some(match (timeout, fixed) {
            (Some(left), fixed) => format!(
                "SET statement_timeout = {}",
                fixed
                    .map_or(left, |fixed| left.min(fixed))
                    .as_millis()
                    .max(1)
            ),
            (None, Some(fixed)) => format!("SET statement_timeout = {}", fixed.as_millis().max(1)),
            (None, None) => "SET statement_timeout TO DEFAULT".to_owned(),
        })
    }

    async fn check_session(&mut self, config: &PoolConfig) -> Result<(), Failure> {
        use diesel_async::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct Current {
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            schema: Option<String>,
        }
        let Some(schema) = config.schema() else {
            return Ok(());
        };
        // The first schema of the search_path that exists: none when `schema` does not.
        let current: Current = diesel::sql_query("SELECT current_schema() AS schema")
            .get_result(self)
            .await?;
        if current.schema.is_none() {
            return Err(Failure::new(ballast_core::Cause::InvalidConfig).with_detail(format!(
                "schema: the database has no schema named `{schema}` (create it, or fix the URL's `schema`)"
            )));
        }
        Ok(())
    }

    /// tokio-postgres queues a request when its future is first polled and answers requests in
    /// order, so one poll puts the `SET` on the wire ahead of whatever the checkout sends next;
    /// its answer is read and dropped by the connection's task. `SET statement_timeout` with a
    /// number fails only on a broken connection, which the next statement reports.
    async fn send_statement_bound(&mut self, sql: &str) -> diesel::QueryResult<()> {
        use std::task::{Context, Poll, Waker};
        let mut shared = &*self;
        let mut set = std::pin::pin!(diesel_async::SimpleAsyncConnection::batch_execute(
            &mut shared,
            sql
        ));
        match set.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(result) => result,
            Poll::Pending => Ok(()),
        }
    }

    /// Superusers may use the reserved slots, and no `CONNECTION LIMIT` applies to them.
    async fn server_budget(
        &mut self,
        config: &PoolConfig,
    ) -> Result<Option<ServerBudget>, Failure> {
        use diesel_async::RunQueryDsl;
        if config.pgbouncer() {
            tracing::info!("behind PgBouncer the server's connection budget is PgBouncer's (default_pool_size, max_db_connections, max_client_conn): it is not read");
            return Ok(None);
        }
        let row: PostgresBudget = diesel::sql_query(POSTGRES_BUDGET).get_result(self).await?;
        let reserved = if row.superuser { 0 } else { row.reserved };
        let login_limit =
            (!row.superuser && row.login_limit >= 0).then(|| count(row.login_limit.into()));
        Ok(Some(ServerBudget::new(
            count(i64::from(row.max_connections - reserved)),
            login_limit,
            count(row.server_in_use.into()),
            count(row.login_in_use.into()),
            1,
        )))
    }
}

/// PostgreSQL's budget figures for the current role, in one row.
#[cfg(feature = "postgres")]
const POSTGRES_BUDGET: &str = "SELECT current_setting('max_connections')::int4 AS max_connections, \
    (current_setting('superuser_reserved_connections')::int4 \
      + coalesce(current_setting('reserved_connections', true), '0')::int4) AS reserved, \
    r.rolconnlimit AS login_limit, r.rolsuper AS superuser, \
    (SELECT count(*)::int4 FROM pg_stat_activity WHERE backend_type = 'client backend') AS server_in_use, \
    (SELECT count(*)::int4 FROM pg_stat_activity \
      WHERE backend_type = 'client backend' AND usename = current_user) AS login_in_use \
    FROM pg_roles r WHERE r.rolname = current_user";

#[cfg(feature = "postgres")]
#[derive(diesel::QueryableByName)]
struct PostgresBudget {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    max_connections: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    reserved: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    login_limit: i32,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    superuser: bool,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    server_in_use: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    login_in_use: i32,
}

/// A server's count as a `u32` (negative: none).
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn count(value: i64) -> u32 {
    u32::try_from(value.max(0)).unwrap_or(u32::MAX)
}

/// Sends PostgreSQL's cancel request for `token`'s backend and waits until the server has acted
/// on it.
///
/// tokio-postgres's own `cancel_query` returns as soon as the request is written, before the
/// server has signalled the backend: a `ROLLBACK` sent right after could then run first, and the
/// late cancel would hit the next checkout's statement instead. As libpq's `PQcancel` does, this
/// waits for the server to close the cancel connection, which it does after signalling.
#[cfg(feature = "postgres")]
async fn postgres_cancel(
    token: &tokio_postgres::CancelToken,
    config: &PoolConfig,
) -> Result<(), Failure> {
    use tokio_postgres::config::Host;
    let pg_config: tokio_postgres::Config = config.driver_url().parse()?;
    let ports = pg_config.get_ports();
    let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    let mut last = None;
    // The token does not say which of several hosts the connection reached: the first that
    // answers gets the request (a cancel for a backend a server does not have is ignored).
    for (i, host) in pg_config.get_hosts().iter().enumerate() {
        let sent = match host {
            Host::Tcp(name) => {
                let address = pg_config
                    .get_hostaddrs()
                    .get(i)
                    .map_or_else(|| name.clone(), ToString::to_string);
                match tokio::net::TcpStream::connect((address.as_str(), port(i))).await {
                    Ok(stream) => send_cancel(token, config, name, UntilClosed::new(stream)).await,
                    Err(error) => Err(Failure::from(error)),
                }
            }
            #[cfg(unix)]
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{}", port(i)));
                match tokio::net::UnixStream::connect(path).await {
                    Ok(stream) => {
                        send_cancel(token, config, "localhost", UntilClosed::new(stream)).await
                    }
                    Err(error) => Err(Failure::from(error)),
                }
            }
            #[cfg(not(unix))]
            Host::Unix(_) => continue,
        };
        match sent {
            Ok(()) => return Ok(()),
            Err(failure) => last = Some(failure),
        }
    }
    Err(last.unwrap_or_else(|| {
        Failure::new(ballast_core::Cause::InvalidConfig).with_detail("the URL names no host")
    }))
}

/// Sends the cancel request over `stream`, with the pool's TLS settings when it has any (a server
/// that requires TLS gets the cancel over TLS too).
#[cfg(feature = "postgres")]
async fn send_cancel<S>(
    token: &tokio_postgres::CancelToken,
    config: &PoolConfig,
    host: &str,
    stream: S,
) -> Result<(), Failure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if config.pgbouncer() {
        // The connection's own `sslnegotiation=direct` is ours (see `pgbouncer`): the same hook
        // negotiates TLS for the cancel request.
        use tokio_postgres::tls::MakeTlsConnect;
        let mut bouncer = crate::pgbouncer::Bouncer::new(config)?;
        let tls = MakeTlsConnect::<S>::make_tls_connect(&mut bouncer, host)?;
        return match token.cancel_query_raw(stream, tls).await {
            Ok(()) => Ok(()),
            #[cfg(feature = "tls")]
            Err(error) if config.tls().is_some() && closed_after_sending(&error) => Ok(()),
            Err(error) => Err(Failure::from(error)),
        };
    }
    #[cfg(feature = "tls")]
    if let Some(settings) = config.tls() {
        use tokio_postgres::tls::MakeTlsConnect;
        let mut make = crate::tls::MakeRustls(crate::tls::client_config(settings)?);
        let tls = <crate::tls::MakeRustls as MakeTlsConnect<S>>::make_tls_connect(&mut make, host)
            .map_err(|error| {
                Failure::new(ballast_core::Cause::InvalidConfig).with_detail(error.to_string())
            })?;
        return match token.cancel_query_raw(stream, tls).await {
            Ok(()) => Ok(()),
            // PostgreSQL closes the connection as soon as it has read a cancel request, without
            // TLS's close_notify: the reset that follows our own close is not a failure. (Had the
            // request not arrived, the ROLLBACK after it waits behind the statement and the
            // connection is closed at the reclaim deadline.)
            Err(error) if closed_after_sending(&error) => Ok(()),
            Err(error) => Err(Failure::from(error)),
        };
    }
    let _ = (config, host);
    token
        .cancel_query_raw(stream, tokio_postgres::NoTls)
        .await
        .map_err(Failure::from)
}

/// Whether a cancel request's error is the server closing the connection under our TLS close.
#[cfg(feature = "tls")]
fn closed_after_sending(error: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        source = error.source();
    }
    false
}

/// mysql_async's TLS options for the URL's settings (client certificates are PostgreSQL's only).
#[cfg(all(feature = "mysql", feature = "tls"))]
fn mysql_ssl_opts(settings: &crate::config::TlsSettings) -> mysql_async::SslOpts {
    use crate::config::SslMode;
    let mut opts = mysql_async::SslOpts::default();
    if let Some(root) = &settings.root_pem {
        opts = opts.with_root_certs(vec![root.clone().into()]);
    }
    match settings.mode {
        SslMode::Prefer | SslMode::Require => opts.with_danger_accept_invalid_certs(true),
        SslMode::VerifyCa => opts.with_danger_skip_domain_validation(true),
        SslMode::VerifyFull => opts,
    }
}

/// Whether a MySQL connect failed in the TLS handshake, or because the server has no TLS.
#[cfg(all(feature = "mysql", feature = "tls"))]
fn mysql_tls_failure(error: &mysql_async::Error) -> bool {
    if matches!(
        error,
        mysql_async::Error::Io(mysql_async::IoError::Tls(_))
            | mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer)
    ) {
        return true;
    }
    crate::tls::rustls_in_chain(error)
}

/// A stream whose shutdown completes only when the peer has closed the connection, without
/// closing our side first: PgBouncer reads a half-close as the client leaving and drops the
/// cancel request it was forwarding (libpq's `PQcancel` waits the same way).
#[cfg(feature = "postgres")]
struct UntilClosed<S> {
    stream: S,
}

#[cfg(feature = "postgres")]
impl<S> UntilClosed<S> {
    fn new(stream: S) -> Self {
        UntilClosed { stream }
    }
}

#[cfg(feature = "postgres")]
impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for UntilClosed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

#[cfg(feature = "postgres")]
impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite
    for UntilClosed<S>
{
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::{ready, Poll};
        ready!(std::pin::Pin::new(&mut self.stream).poll_flush(cx))?;
        // The server sends nothing back: the read ends when it closes the connection.
        let mut scratch = [0u8; 64];
        loop {
            let mut buf = tokio::io::ReadBuf::new(&mut scratch);
            ready!(std::pin::Pin::new(&mut self.stream).poll_read(cx, &mut buf))?;
            if buf.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// MySQL's and MariaDB's budget figures for the current account, in one row.
#[cfg(feature = "mysql")]
const MYSQL_BUDGET: &str = "SELECT CAST(@@max_connections AS SIGNED) AS max_connections, \
    CAST(@@session.max_user_connections AS SIGNED) AS login_limit, \
    (SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE COMMAND <> 'Daemon') AS server_in_use, \
    (SELECT COUNT(*) FROM information_schema.PROCESSLIST \
      WHERE COMMAND <> 'Daemon' AND USER = SUBSTRING_INDEX(CURRENT_USER(), '@', 1)) AS login_in_use";

#[cfg(feature = "mysql")]
#[derive(diesel::QueryableByName)]
struct MysqlBudget {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    max_connections: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    login_limit: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    server_in_use: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    login_in_use: i64,
}

#[cfg(feature = "mysql")]
impl Connect for diesel_async::AsyncMysqlConnection {
    const BACKEND: Backend = Backend::Mysql;

    /// MariaDB's `max_statement_time`, in seconds (MySQL has no such variable: there the first
    /// checkout fails as a configuration error).
    fn statement_bound(_: &PoolConfig, timeout: Option<Duration>) -> Option<String> {
        Some(match timeout {
            Some(left) => format!(
                "SET SESSION max_statement_time = {:.3}",
                left.as_secs_f64().max(0.001)
            ),
            None => "SET SESSION max_statement_time = DEFAULT".to_owned(),
        })
    }

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
        #[cfg(feature = "tls")]
        let tls = config.tls().is_some();
        #[cfg(feature = "tls")]
        if let Some(settings) = config.tls() {
            builder = builder.ssl_opts(Some(mysql_ssl_opts(settings)));
        }
        bounded(config, async move {
            let conn = match mysql_async::Conn::new(builder).await {
                Ok(conn) => conn,
                // A certificate refused, a server without TLS: the deployment's to fix.
                #[cfg(feature = "tls")]
                Err(error) if tls && mysql_tls_failure(&error) => {
                    return Err(Failure::new(ballast_core::Cause::InvalidConfig)
                        .with_detail(format!("TLS: {error}"))
                        .with_source(error))
                }
                Err(error) => return Err(error.into()),
            };
            Ok(Self::try_from(conn).await?)
        })
        .await
    }

    /// MySQL has no in-band cancel: `KILL QUERY` goes over a second, short-lived connection
    /// (which counts against the user's connection limit while it lasts). mysql_async cannot
    /// tell where an abandoned command left its side of the protocol, so the connection is
    /// closed afterwards rather than risk reading the killed statement's answer as the next
    /// one's.
    ///
    /// The process sends one `KILL` at a time: a burst of abandoned requests then costs one
    /// extra connection, not one per request, and the server is not asked to wake several
    /// threads waiting on one lock at once (MariaDB's `KILL` retries such a wake-up for up to
    /// 2 s).
    async fn cancel_abandoned(
        &mut self,
        config: &PoolConfig,
        in_flight: bool,
    ) -> Result<bool, Failure> {
        static ONE_KILL_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        if in_flight {
            let token = self.cancel_token();
            let _turn = ONE_KILL_AT_A_TIME.lock().await;
            match tokio::time::timeout(config.connect_timeout(), token.cancel_query()).await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(Failure::new(ballast_core::Cause::TimedOut)
                        .with_detail("KILL QUERY took longer than connect_timeout"))
                }
            }
        }
        Ok(false)
    }

    /// The session's `max_user_connections` is the account's `MAX_USER_CONNECTIONS` when it has
    /// one, else the global value (0: none).
    async fn server_budget(
        &mut self,
        _config: &PoolConfig,
    ) -> Result<Option<ServerBudget>, Failure> {
        use diesel_async::RunQueryDsl;
        let row: MysqlBudget = diesel::sql_query(MYSQL_BUDGET).get_result(self).await?;
        let login_limit = (row.login_limit > 0).then(|| count(row.login_limit));
        Ok(Some(ServerBudget::new(
            count(row.max_connections),
            login_limit,
            count(row.server_in_use),
            count(row.login_in_use),
            1,
        )))
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

    /// diesel cannot interrupt SQLite, and diesel-async's wrapper does not let go of an
    /// abandoned statement: dropping its future blocks (in place) until the statement's blocking
    /// thread is done, so the connection comes back idle. A transaction left open closes it.
    async fn cancel_abandoned(
        &mut self,
        _config: &PoolConfig,
        _in_flight: bool,
    ) -> Result<bool, Failure> {
        use diesel_async::pooled_connection::PoolableConnection;
        Ok(!self.is_broken())
    }
}
