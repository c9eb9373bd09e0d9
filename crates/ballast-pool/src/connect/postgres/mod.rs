//! PostgreSQL through tokio-postgres: opening (plain, TLS, through PgBouncer, choosing among the
//! URL's hosts: `hosts`), cancelling an abandoned statement the way libpq's `PQcancel` does
//! (`cancel`), the server's connection budget and a replica's replay.

use std::future::Future;
use std::time::Duration;

use ballast_core::Failure;

mod cancel;
mod hosts;

use super::{count, Connect};
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
        hosts::open_target(config).await
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
                    let cancel = cancel::postgres_cancel(&token, config, host);
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

/// A WAL position as PostgreSQL writes it (`16/B374D848`), as one number.
fn parse_lsn(text: &str) -> Option<u64> {
    text.parse::<crate::WalPosition>().ok().map(u64::from)
}
