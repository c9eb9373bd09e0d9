//! PostgreSQL through tokio-postgres: opening (plain, TLS, through PgBouncer), cancelling an
//! abandoned statement the way libpq's `PQcancel` does, and the server's connection budget.

use std::future::Future;
use std::time::Duration;

use ballast_core::Failure;

use super::{bounded, count, Connect};
use crate::budget::ServerBudget;
use crate::config::{Backend, PoolConfig};

/// How many times a `ROLLBACK` is tried after a cancel request: the cancel may land on the first
/// one instead of the abandoned statement, if that statement had just ended.
const ROLLBACK_ATTEMPTS: usize = 3;

/// How long an abandoned PostgreSQL statement gets to end on its own before it is cancelled: most
/// statements are short, and a cancel request costs the server a connection and a process.
const CANCEL_GRACE: Duration = Duration::from_millis(20);

impl Connect for diesel_async::AsyncPgConnection {
    const BACKEND: Backend = Backend::Postgres;

    async fn open(config: &PoolConfig) -> Result<(Self, Option<usize>), Failure> {
        open_target(config).await
    }

    /// `ROLLBACK` first: it queues behind the abandoned statement, so a statement that ends on
    /// its own within a short grace needs nothing more. Otherwise PostgreSQL's cancel request
    /// (a separate, short connection to the postmaster that is not a session and counts against
    /// no connection limit) stops it, and the `ROLLBACK` runs right after. Either way no
    /// transaction is left open.
    async fn cancel_abandoned(
        &mut self,
        config: &PoolConfig,
        host: Option<usize>,
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
                    let cancel = postgres_cancel(&token, config, host);
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

    async fn wal_position(&mut self) -> Result<Option<u64>, Failure> {
        use diesel_async::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct Position {
            #[diesel(sql_type = diesel::sql_types::Text)]
            lsn: String,
        }
        let position: Position = diesel::sql_query("SELECT pg_current_wal_lsn()::text AS lsn")
            .get_result(self)
            .await?;
        Ok(parse_lsn(&position.lsn))
    }

    async fn replay_status(&mut self) -> Result<Option<crate::replicas::Replay>, Failure> {
        use diesel_async::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct Status {
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            lsn: Option<String>,
            #[diesel(sql_type = diesel::sql_types::Double)]
            behind: f64,
        }
        // Not in recovery (promoted, or pointed at a primary): its own position, nothing behind.
        let status: Status = diesel::sql_query(
            "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                    ELSE pg_current_wal_lsn() END::text AS lsn, \
                    CASE WHEN pg_is_in_recovery() THEN COALESCE(EXTRACT(EPOCH FROM \
                    (now() - pg_last_xact_replay_timestamp())), 0) ELSE 0 END::float8 AS behind",
        )
        .get_result(self)
        .await?;
        Ok(status
            .lsn
            .as_deref()
            .and_then(parse_lsn)
            .map(|position| crate::replicas::Replay {
                position,
                behind: Duration::try_from_secs_f64(status.behind.max(0.0))
                    .unwrap_or(Duration::MAX),
            }))
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
const POSTGRES_BUDGET: &str = "SELECT current_setting('max_connections')::int4 AS max_connections, \
    (current_setting('superuser_reserved_connections')::int4 \
      + coalesce(current_setting('reserved_connections', true), '0')::int4) AS reserved, \
    r.rolconnlimit AS login_limit, r.rolsuper AS superuser, \
    (SELECT count(*)::int4 FROM pg_stat_activity WHERE backend_type = 'client backend') AS server_in_use, \
    (SELECT count(*)::int4 FROM pg_stat_activity \
      WHERE backend_type = 'client backend' AND usename = current_user) AS login_in_use \
    FROM pg_roles r WHERE r.rolname = current_user";

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

/// Sends PostgreSQL's cancel request for `token`'s backend and waits until the server has acted
/// on it.
///
/// tokio-postgres's own `cancel_query` returns as soon as the request is written, before the
/// server has signalled the backend: a `ROLLBACK` sent right after could then run first, and the
/// late cancel would hit the next checkout's statement instead. As libpq's `PQcancel` does, this
/// waits for the server to close the cancel connection, which it does after signalling.
async fn postgres_cancel(
    token: &tokio_postgres::CancelToken,
    config: &PoolConfig,
    host: Option<usize>,
) -> Result<(), Failure> {
    use tokio_postgres::config::Host;
    // The host the connection is on, where the pool knows it (a URL with several hosts).
    let pg_config: tokio_postgres::Config = match (host, config.target()) {
        (Some(i), Some(target)) => target.url(Some(i)).parse()?,
        _ => config.driver_url().parse()?,
    };
    let ports = pg_config.get_ports();
    let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    let mut last = None;
    // Without the pool's note of the host (a configuration built without a URL), the first
    // host that answers gets the request (a server ignores a cancel for a backend it does not
    // have).
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

/// A stream whose shutdown completes only when the peer has closed the connection, without
/// closing our side first: PgBouncer reads a half-close as the client leaving and drops the
/// cancel request it was forwarding (libpq's `PQcancel` waits the same way).
struct UntilClosed<S> {
    stream: S,
}

impl<S> UntilClosed<S> {
    fn new(stream: S) -> Self {
        UntilClosed { stream }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for UntilClosed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

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

/// Opens a connection to the one server `url` names (plain, TLS, or through PgBouncer), bounded
/// by `connect_timeout`.
async fn open_url(
    config: &PoolConfig,
    url: &str,
) -> Result<diesel_async::AsyncPgConnection, Failure> {
    type Conn = diesel_async::AsyncPgConnection;
    let pg_config: tokio_postgres::Config = url.parse()?;

    // The connection's socket and task live on the pool's I/O thread (`io.rs`).
    if config.pgbouncer() {
        let owned = config.clone();
        return bounded(
            config,
            crate::io::open_on_driver(
                async move { crate::pgbouncer::connect(&owned, pg_config).await },
            ),
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
                Ok(Conn::try_from_client_and_connection(client, connection).await?)
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
            Ok(Conn::try_from_client_and_connection(client, connection).await?)
        }),
    )
    .await
}

/// Opens a connection as the URL's hosts and `target_session_attrs` say, as libpq does: the
/// hosts in order (shuffled with `load_balance_hosts=random`), each within `connect_timeout`,
/// the first whose server is what the attributes ask for kept (`prefer-standby`: a standby if any
/// host is one, then any). Returns it with the index of its host.
async fn open_target(
    config: &PoolConfig,
) -> Result<(diesel_async::AsyncPgConnection, Option<usize>), Failure> {
    use crate::config::SessionAttrs;
    let Some(target) = config.target() else {
        return Ok((Box::pin(open_url(config, config.driver_url())).await?, None));
    };
    let attrs = target.session_attrs;
    if target.hosts.len() == 1 && attrs == SessionAttrs::Any {
        return Ok((
            Box::pin(open_url(config, config.driver_url())).await?,
            Some(0),
        ));
    }
    let mut order: Vec<usize> = (0..target.hosts.len()).collect();
    if target.load_balance {
        shuffle(&mut order);
    }
    let passes: &[SessionAttrs] = match attrs {
        SessionAttrs::PreferStandby => &[SessionAttrs::Standby, SessionAttrs::Any],
        _ => std::slice::from_ref(&attrs),
    };
    let mut last = None;
    for &wanted in passes {
        for &i in &order {
            let host = &target.hosts[i];
            let attempt = async {
                let mut conn = Box::pin(open_url(config, &target.url(Some(i)))).await?;
                let fits = session_fits(&mut conn, wanted).await?;
                Ok::<_, Failure>((conn, fits))
            };
            match bounded(config, attempt).await {
                Ok((conn, true)) => return Ok((conn, Some(i))),
                Ok((_, false)) => {
                    last = Some(
                        Failure::new(ballast_core::Cause::ServerUnavailable)
                            .with_public_message(match wanted {
                                SessionAttrs::ReadWrite | SessionAttrs::Primary => {
                                    "No server of the database accepts writes right now."
                                }
                                _ => {
                                    "No server of the database is of the kind asked for right now."
                                }
                            })
                            .with_detail(format!(
                                "{}:{} is not {} (target_session_attrs={})",
                                host.name,
                                host.port(),
                                wanted.as_str(),
                                attrs.as_str()
                            )),
                    );
                }
                Err(failure) => {
                    tracing::debug!(
                        host = %host.name,
                        port = host.port(),
                        failure = %failure.report(),
                        "connect to one of the URL's hosts failed; trying the next"
                    );
                    last = Some(failure);
                }
            }
        }
    }
    let failure = last.unwrap_or_else(|| {
        Failure::new(ballast_core::Cause::InvalidConfig).with_detail("the URL names no host")
    });
    Err(failure.with_reach(ballast_core::Reach::NotSent))
}

/// Whether the server `conn` is on is what `wanted` asks for.
async fn session_fits(
    conn: &mut diesel_async::AsyncPgConnection,
    wanted: crate::config::SessionAttrs,
) -> Result<bool, Failure> {
    use crate::config::SessionAttrs;
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Flag {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        flag: bool,
    }
    let (sql, expected) = match wanted {
        SessionAttrs::Any | SessionAttrs::PreferStandby => return Ok(true),
        SessionAttrs::ReadWrite => (
            "SELECT current_setting('transaction_read_only') = 'on' AS flag",
            false,
        ),
        SessionAttrs::ReadOnly => (
            "SELECT current_setting('transaction_read_only') = 'on' AS flag",
            true,
        ),
        SessionAttrs::Primary => ("SELECT pg_is_in_recovery() AS flag", false),
        SessionAttrs::Standby => ("SELECT pg_is_in_recovery() AS flag", true),
    };
    let flag: Flag = diesel::sql_query(sql).get_result(conn).await?;
    Ok(flag.flag == expected)
}

/// Shuffles the host order (Fisher-Yates), with the standard library's per-process random keys.
fn shuffle(order: &mut [usize]) {
    use std::hash::{BuildHasher, Hasher};
    for i in (1..order.len()).rev() {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_usize(i);
        let j = (hasher.finish() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
}

/// A WAL position as PostgreSQL writes it (`16/B374D848`), as one number.
fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    let high = u64::from_str_radix(high, 16).ok()?;
    let low = u64::from_str_radix(low, 16).ok()?;
    Some((high << 32) | low)
}
