//! MySQL and MariaDB through mysql_async: opening (plain or TLS), stopping an abandoned
//! statement with `KILL QUERY`, and the server's connection budget.

use std::time::Duration;

use ballast_core::Failure;

use super::{bounded, count, Connect};
use crate::budget::ServerBudget;
use crate::config::{Backend, PoolConfig};

/// mysql_async's TLS options for the URL's settings (client certificates are PostgreSQL's only).
#[cfg(feature = "tls")]
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
#[cfg(feature = "tls")]
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

/// MySQL's and MariaDB's budget figures for the current account, in one row.
const MYSQL_BUDGET: &str = "SELECT CAST(@@max_connections AS SIGNED) AS max_connections, \
    CAST(@@session.max_user_connections AS SIGNED) AS login_limit, \
    (SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE COMMAND <> 'Daemon') AS server_in_use, \
    (SELECT COUNT(*) FROM information_schema.PROCESSLIST \
      WHERE COMMAND <> 'Daemon' AND USER = SUBSTRING_INDEX(CURRENT_USER(), '@', 1)) AS login_in_use";

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

    async fn open(config: &PoolConfig) -> Result<(Self, Option<usize>), Failure> {
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
            Ok((Self::try_from(conn).await?, None))
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
        _host: Option<usize>,
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
