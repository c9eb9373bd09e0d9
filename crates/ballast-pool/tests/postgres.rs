//! The pool against the real PostgreSQL server, with testkit faults.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_core::{Cause, Code, DriverCode, Failure, Reach, SqlState};
use ballast_pool::{PoolConfig, SharedPool};
use ballast_testkit::db::{self, Backends, PgRole};
use ballast_testkit::fake::FakeServer;
use ballast_testkit::proxy::{FaultProxy, Mode};
use diesel::sql_types::BigInt;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

mod support;

use support::backend_pid;

type Pool = SharedPool<AsyncPgConnection>;

/// A pool on `url` with pool parameters `params` (`connection_limit=10&...`).
fn pool(url: &str, params: &str) -> Pool {
    let separator = if url.contains('?') { '&' } else { '?' };
    let config = PoolConfig::from_url(&format!("{url}{separator}{params}")).unwrap();
    SharedPool::new(config).unwrap()
}

/// Samples the number of `which` backends every few milliseconds until `stop` is set; returns
/// the largest count seen.
fn sample_backends(
    url: String,
    which: Backends,
    stop: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let admin = db::pg_connect(&url).await;
        let (column, value) = match &which {
            Backends::Role(name) => ("usename", name.clone()),
            Backends::ApplicationName(name) => ("application_name", name.clone()),
            _ => unreachable!("tests sample by role or application name"),
        };
        let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE {column} = $1");
        let mut peak = 0;
        while AtomicUsize::load(&stop, Ordering::SeqCst) == 0 {
            let row = admin.query_one(&sql, &[&value]).await.unwrap();
            peak = peak.max(row.get::<_, i64>(0) as usize);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        peak
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_tasks_never_exceed_ten_backends() {
    let Some(url) = db::postgres_url("two_hundred_tasks_never_exceed_ten_backends") else {
        return;
    };
    let role = PgRole::create(&url, None).await;
    // Every task waits its turn: this is about the bound, not about shedding.
    let pool = pool(role.url(), "connection_limit=10&queue_target=0");
    let stop = Arc::new(AtomicUsize::new(0));
    let sampler = sample_backends(
        url.clone(),
        Backends::Role(role.name().into()),
        Arc::clone(&stop),
    );

    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { support::hold_postgres(&pool, 0.01).await })
        })
        .collect();
    for task in tasks {
        task.await
            .unwrap()
            .expect("every task gets a connection within pool_timeout");
    }
    stop.store(1, Ordering::SeqCst);
    let peak = sampler.await.unwrap();
    let stats = pool.stats();
    println!("scenario 1 (bound): peak backends {peak}, stats {stats:?}");
    assert!(peak <= 10, "saw {peak} backends");
    assert!(peak >= 2, "the pool did run concurrently ({peak})");
    assert!(stats.open <= 10);
    assert_eq!(stats.checkouts, 200);
    assert!(stats.connects <= 10, "{}", stats.connects);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_limit_three_with_pool_of_ten_yields_classified_53300() {
    let Some(url) = db::postgres_url("role_limit_three_with_pool_of_ten") else {
        return;
    };
    let role = PgRole::create(&url, Some(3)).await;
    let pool = pool(role.url(), "connection_limit=10&pool_timeout=1");
    let stop = Arc::new(AtomicUsize::new(0));
    let sampler = sample_backends(
        url.clone(),
        Backends::Role(role.name().into()),
        Arc::clone(&stop),
    );

    // Thirty requests that each hold a connection for longer than the others may wait.
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { support::hold_postgres(&pool, 1.5).await })
        })
        .collect();
    let mut ok = 0;
    let mut failed = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => ok += 1,
            Err(failure) => {
                failed += 1;
                assert_eq!(
                    failure.cause(),
                    Cause::TooManyConnections,
                    "{}",
                    failure.report()
                );
                assert_eq!(failure.code(), Code::DbConnection);
                assert!(failure.retryable());
                assert_eq!(failure.reach(), Reach::NotSent);
                assert_eq!(
                    failure.driver_code(),
                    Some(DriverCode::Postgres(SqlState::new("53300").unwrap()))
                );
            }
        }
    }
    stop.store(1, Ordering::SeqCst);
    let peak = sampler.await.unwrap();
    let stats = pool.stats();
    println!("scenario 2 (role limit 3): ok {ok}, failed {failed}, peak {peak}, stats {stats:?}");
    assert!(peak <= 3, "saw {peak} backends");
    assert!(ok >= 3, "the three allowed connections served requests");
    assert!(failed > 0);
    assert!(stats.connect_failures_by_code["SQLSTATE 53300"] >= 1);
    // No reconnect storm: real connect attempts stay a handful while 30 requests failed or
    // waited; the rest were answered from the gate.
    let attempts = stats.connects + stats.connect_failures;
    assert!(attempts <= 30, "{attempts} connect attempts");
}

#[tokio::test]
async fn startup_errors_fail_fast_classified_and_without_a_storm() {
    let cases = [
        (
            "53300",
            "lo siento, ya tenemos demasiados clientes",
            Cause::TooManyConnections,
            true,
        ),
        (
            "57P03",
            "the database system is starting up",
            Cause::ServerUnavailable,
            true,
        ),
        (
            "28P01",
            "password authentication failed for user \"app\"",
            Cause::AuthFailed,
            false,
        ),
        (
            "3D000",
            "database \"app\" does not exist",
            Cause::DatabaseMissing,
            false,
        ),
    ];
    for (state, message, cause, retryable) in cases {
        let server = FakeServer::postgres(state, message).await.unwrap();
        let pool = pool(&server.url("app"), "connection_limit=10&pool_timeout=20");
        let started = Instant::now();
        for _ in 0..20 {
            let failure = pool.get().await.expect_err("the server refuses");
            assert_eq!(failure.cause(), cause, "{state}");
            assert_eq!(failure.retryable(), retryable, "{state}");
            assert_eq!(failure.reach(), Reach::NotSent, "{state}");
            assert_eq!(
                failure.driver_code(),
                Some(DriverCode::Postgres(SqlState::new(state).unwrap()))
            );
        }
        // Twenty checkouts failed at once instead of waiting 20 s each, and the server saw a
        // handful of attempts, not twenty (the gate answered the rest).
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{state}: {:?}",
            started.elapsed()
        );
        assert!(
            server.connections() <= 5,
            "{state}: {} connects",
            server.connections()
        );
        let stats = pool.stats();
        assert_eq!(stats.failed_fast + stats.timeouts, 20, "{state}: {stats:?}");
    }
}

#[tokio::test]
async fn missing_database_is_an_init_error() {
    let Some(url) = db::postgres_url("missing_database_is_an_init_error") else {
        return;
    };
    let missing = db::with_database(&url, &db::unique_name("ballast_missing"));
    let pool = pool(&missing, "pool_timeout=20");
    let failure = pool.get().await.expect_err("no such database");
    assert_eq!(failure.cause(), Cause::DatabaseMissing);
    assert_eq!(failure.code(), Code::DbInit);
    assert!(!failure.retryable());
    assert!(failure.public_message().contains("does not exist"));
}

#[tokio::test]
async fn refused_and_stalled_databases_fail_within_the_deadlines() {
    let Some(url) = db::postgres_url("refused_and_stalled_databases_fail") else {
        return;
    };
    let proxy = FaultProxy::start(db::socket_addr(&url)).await.unwrap();
    let proxied = proxy.url(&url);

    proxy.set_mode(Mode::Refuse);
    proxy.wait_for_mode().await;
    let refused = pool(&proxied, "pool_timeout=5&connect_timeout=1");
    let failure = refused.get().await.expect_err("refused");
    assert_eq!(failure.cause(), Cause::Unreachable, "{}", failure.report());
    assert!(failure.retryable());

    // Accepts TCP, never answers: the connect deadline covers the startup conversation.
    proxy.set_mode(Mode::Stall);
    proxy.wait_for_mode().await;
    let stalled = pool(&proxied, "pool_timeout=5&connect_timeout=0.5");
    let started = Instant::now();
    let failure = stalled.get().await.expect_err("stalled");
    let waited = started.elapsed();
    println!(
        "scenario 9 (connect hang): failed after {waited:?}: {}",
        failure.report()
    );
    assert_eq!(failure.cause(), Cause::TimedOut, "{}", failure.report());
    assert_eq!(failure.reach(), Reach::NotSent);
    assert!(
        waited < Duration::from_secs(5),
        "failed before pool_timeout: {waited:?}"
    );

    // Once the database answers again, the same pool recovers.
    proxy.set_mode(Mode::Pass);
    proxy.wait_for_mode().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match stalled.get().await {
            Ok(mut conn) => {
                conn.batch_execute("SELECT 1").await.unwrap();
                break;
            }
            Err(failure) if Instant::now() < deadline => {
                assert!(failure.retryable(), "{}", failure.report());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(failure) => panic!("did not recover: {}", failure.report()),
        }
    }
}

#[tokio::test]
async fn a_busy_pool_times_out_with_pool_exhausted() {
    let Some(url) = db::postgres_url("a_busy_pool_times_out_with_pool_exhausted") else {
        return;
    };
    let pool = pool(&url, "connection_limit=2&pool_timeout=0.3");
    let first = pool.get().await.unwrap();
    let second = pool.get().await.unwrap();
    let failure = pool.get().await.expect_err("both connections are in use");
    assert_eq!(failure.cause(), Cause::PoolExhausted);
    assert_eq!(failure.reach(), Reach::NotSent);
    let detail = failure.detail().unwrap();
    assert!(detail.contains("2 of 2 in use"), "{detail}");
    drop((first, second));
    assert_eq!(pool.stats().timeouts, 1);
}

#[tokio::test]
async fn killed_backends_fail_at_most_pool_size_requests_then_recover() {
    killed_backends(true).await;
}

/// The same with handlers that use plain `?` and never show the pool the error: the pool learns
/// from the connection's own instrumentation that the statement failed with the connection gone.
#[tokio::test]
async fn killed_backends_fail_at_most_pool_size_requests_with_plain_question_marks() {
    killed_backends(false).await;
}

async fn killed_backends(classify: bool) {
    let Some(url) = db::postgres_url("killed_backends_recover") else {
        return;
    };
    let app = db::unique_name("ballast_pool_kill");
    let pool = pool(
        &format!("{url}?application_name={app}"),
        "connection_limit=4",
    );
    // Open all four connections.
    let held: Vec<_> = futures_all(&pool, 4).await;
    drop(held);
    assert_eq!(pool.stats().idle, 4);
    let which = Backends::ApplicationName(app);
    assert_eq!(db::pg_terminate(&url, &which).await, 4);

    let mut failures = 0;
    for _ in 0..20 {
        let result: Result<(), Failure> = async {
            let mut conn = pool.get().await?;
            match conn.batch_execute("SELECT 1").await {
                Ok(()) => Ok(()),
                Err(error) if classify => Err(conn.classify(error).await),
                Err(error) => Err(Failure::from(error)),
            }
        }
        .await;
        if let Err(failure) = result {
            assert_eq!(
                failure.cause(),
                Cause::ConnectionLost,
                "{}",
                failure.report()
            );
            failures += 1;
        }
    }
    let stats = pool.stats();
    println!("scenario 7 (backends killed): {failures} of 20 failed, stats {stats:?}");
    assert!(failures <= 4, "{failures} requests failed");
    assert_eq!(stats.closed_broken, failures as u64);
    assert!(db::pg_backends(&url, &which).await.len() <= 4);
}

#[tokio::test]
async fn classify_keeps_statement_errors_on_live_connections() {
    let Some(url) = db::postgres_url("classify_keeps_statement_errors") else {
        return;
    };
    let pool = pool(&url, "connection_limit=1");
    let mut conn = pool.get().await.unwrap();
    let error = conn.batch_execute("SELEC 1").await.unwrap_err();
    let failure = conn.classify(error).await;
    assert_eq!(failure.cause(), Cause::Query);
    assert_eq!(failure.code(), Code::Critical);
    // Inside an aborted transaction the check itself is refused, but the connection lives.
    conn.batch_execute("BEGIN").await.unwrap();
    let error = conn.batch_execute("SELEC 1").await.unwrap_err();
    assert_eq!(conn.classify(error).await.cause(), Cause::Query);
    conn.batch_execute("ROLLBACK").await.unwrap();
    conn.batch_execute("SELECT 1").await.unwrap();
    drop(conn);
    assert_eq!(pool.stats().waiting, 0);
}

async fn futures_all(
    pool: &Pool,
    n: usize,
) -> Vec<ballast_pool::PooledConnection<AsyncPgConnection>> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(pool.get().await.unwrap());
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_transactions_never_leave_a_backend_idle_in_transaction() {
    let Some(url) = db::postgres_url("cancelled_transactions") else {
        return;
    };
    let database = db::PgDatabase::create(&url).await;
    db::pg_execute(
        database.url(),
        "CREATE TABLE items (id serial PRIMARY KEY, n int)",
    )
    .await;
    let app = db::unique_name("ballast_pool_cancel");
    // Every request waits its turn: this is about cancellation, not about shedding.
    let pool = pool(
        &format!("{}?application_name={app}", database.url()),
        "connection_limit=4&queue_target=0",
    );

    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let pool = pool.clone();
            let work = async move {
                let mut conn = pool.get().await?;
                conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                    diesel::sql_query(format!("INSERT INTO items (n) VALUES ({i})"))
                        .execute(conn)
                        .await?;
                    diesel::sql_query("SELECT pg_sleep(0.02)")
                        .execute(conn)
                        .await?;
                    Ok(())
                })
                .await?;
                Ok::<_, Failure>(())
            };
            // Every other request is cancelled part-way, often inside the transaction.
            let limit = if i % 2 == 0 {
                Duration::from_millis(5 + (i as u64 % 20))
            } else {
                Duration::from_secs(30)
            };
            tokio::spawn(tokio::time::timeout(limit, work))
        })
        .collect();
    let mut completed = 0;
    for task in tasks {
        if let Ok(result) = task.await.unwrap() {
            result.unwrap();
            completed += 1;
        }
    }
    assert!(completed >= 30, "{completed}");

    // The server sees a dropped connection end its transaction at once; give it a moment.
    let which = Backends::ApplicationName(app);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let stuck = db::pg_backends(&url, &which)
            .await
            .into_iter()
            .filter(|backend| backend.state.as_deref() == Some("idle in transaction"))
            .count();
        if stuck == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stuck} backends idle in transaction"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every later checkout starts outside a transaction, and the next 100 requests succeed.
    for _ in 0..100 {
        let mut conn = pool.get().await.unwrap();
        // SAVEPOINT fails outside a transaction block (25P01) and succeeds inside one.
        let probe = conn.batch_execute("SAVEPOINT ballast_probe").await;
        assert!(probe.is_err(), "a checkout saw an open transaction");
    }
    let stats = pool.stats();
    println!("scenario 4 (cancellation): {completed} of 60 completed, stats {stats:?}");
    assert!(stats.open <= 4);
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        count: i64,
    }
    let mut conn = pool.get().await.unwrap();
    let rows: Count = diesel::sql_query("SELECT count(*) AS count FROM items")
        .get_result(&mut *conn)
        .await
        .unwrap();
    assert!(rows.count as usize >= completed);
}

#[tokio::test]
async fn close_leaves_zero_backends() {
    let Some(url) = db::postgres_url("close_leaves_zero_backends") else {
        return;
    };
    let app = db::unique_name("ballast_pool_close");
    let pool = pool(
        &format!("{url}?application_name={app}"),
        "connection_limit=5",
    );
    let mut held = futures_all(&pool, 5).await;
    let checked_out = held.split_off(3);
    drop(held); // three idle, two checked out
    let which = Backends::ApplicationName(app);
    assert_eq!(db::pg_backends(&url, &which).await.len(), 5);

    pool.close().await;
    assert!(pool.is_closed());
    let failure = pool.get().await.expect_err("closed");
    assert_eq!(failure.cause(), Cause::PoolClosed);
    assert_eq!(failure.reach(), Reach::NotSent);
    wait_for_backends(&url, &which, 2).await;

    drop(checked_out);
    wait_for_backends(&url, &which, 0).await;
    assert_eq!(pool.stats().open, 0);
}

async fn wait_for_backends(url: &str, which: &Backends, expected: usize) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let count = db::pg_backends(url, which).await.len();
        if count == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{count} backends, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn long_idle_connections_are_checked_and_stats_serialise() {
    let Some(url) = db::postgres_url("long_idle_connections_are_checked") else {
        return;
    };
    let app = db::unique_name("ballast_pool_idle");
    // check_idle_after=0: every checkout tests the connection first, so a killed backend is
    // replaced before the request sees it.
    let pool = pool(
        &format!("{url}?application_name={app}"),
        "connection_limit=2&check_idle_after=0",
    );
    drop(pool.get().await.unwrap());
    db::pg_terminate(&url, &Backends::ApplicationName(app)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut conn = pool.get().await.expect("the dead connection was replaced");
    conn.batch_execute("SELECT 1").await.unwrap();
    drop(conn);
    let stats = pool.stats();
    assert_eq!(stats.closed_invalid, 1, "{stats:?}");
    let json = serde_json::to_value(&stats).unwrap();
    for field in [
        "max_size",
        "open",
        "idle",
        "in_use",
        "waiting",
        "checkouts",
        "timeouts",
        "connect_failures_by_code",
        "closed_broken",
        "acquire_wait_total_ms",
        "acquire_wait_p99_ms",
    ] {
        assert!(json.get(field).is_some(), "{field} missing from {json}");
    }
}

#[test]
fn creating_a_pool_outside_a_runtime_is_an_error_not_a_panic() {
    let config = PoolConfig::from_url("postgres://postgres@127.0.0.1:5432/test").unwrap();
    assert_eq!(
        Pool::new(config).unwrap_err(),
        ballast_pool::PoolError::NoRuntime
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_dropped_mid_statement_is_cancelled_and_the_connection_kept() {
    let Some(url) = db::postgres_url("a_checkout_dropped_mid_statement") else {
        return;
    };
    let app = db::unique_name("ballast_abandon");
    let pool = pool(
        &url,
        &format!("application_name={app}&connection_limit=1&pool_timeout=30"),
    );
    let pid = backend_pid(&pool).await;
    // The request gives up on a 20 s statement after 200 ms, as a client that hangs up does.
    let abandoned = tokio::time::timeout(
        Duration::from_millis(200),
        support::hold_postgres(&pool, 20.0),
    );
    assert!(abandoned.await.is_err(), "the statement was still running");
    let dropped = Instant::now();
    // The pool's only connection: the next checkout gets it once the statement has stopped.
    assert_eq!(backend_pid(&pool).await, pid, "the same connection, kept");
    let next = dropped.elapsed();
    let which = Backends::ApplicationName(app);
    let running = db::pg_backends(&url, &which)
        .await
        .iter()
        .filter(|backend| backend.is_running("pg_sleep"))
        .count();
    let stats = pool.stats();
    println!("abandoned statement: the next checkout ran {next:?} after the drop; {stats:?}");
    assert!(next < Duration::from_secs(1), "{next:?}");
    assert_eq!(running, 0, "the statement was cancelled on the server");
    assert_eq!((stats.cancelled, stats.closed_broken), (1, 0));

    // A transaction abandoned between two statements (nothing in flight): rolled back, kept.
    let abandoned_transaction = tokio::time::timeout(Duration::from_millis(100), async {
        let mut conn = pool.get().await.unwrap();
        conn.transaction::<_, diesel::result::Error, _>(async |conn| {
            conn.batch_execute("SELECT 1").await?;
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(())
        })
        .await
    });
    assert!(abandoned_transaction.await.is_err());
    let mut conn = pool.get().await.unwrap();
    assert!(
        conn.batch_execute("SAVEPOINT probe").await.is_err(),
        "the next checkout saw the abandoned transaction"
    );
    drop(conn);
    assert_eq!(backend_pid(&pool).await, pid);
    assert_eq!((pool.stats().cancelled, pool.stats().closed_broken), (2, 0));

    // Closing waits for an abandoned statement to wind down: nothing is left running.
    let abandoned = tokio::time::timeout(
        Duration::from_millis(100),
        support::hold_postgres(&pool, 20.0),
    );
    assert!(abandoned.await.is_err());
    pool.close().await;
    wait_for_backends(&url, &which, 0).await;
}

/// The statements this connection keeps prepared, other than the one asking (tokio-postgres
/// prepares every query as a named statement and closes it when done unless diesel caches it).
async fn prepared(conn: &mut AsyncPgConnection) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        count: i64,
    }
    let count: Count = diesel::sql_query(
        "SELECT count(*) AS count FROM pg_prepared_statements \
         WHERE statement NOT LIKE '%pg_prepared_statements%'",
    )
    .get_result(conn)
    .await
    .unwrap();
    count.count
}

#[tokio::test]
async fn the_statement_cache_is_on_by_default_and_switchable_off() {
    let Some(url) = db::postgres_url("the_statement_cache_is_on_by_default_and_switchable_off")
    else {
        return;
    };
    use diesel::IntoSql;
    for (params, cached) in [
        ("connection_limit=1", true),
        ("statement_cache_size=0", false),
    ] {
        let pool = pool(&url, params);
        let mut conn = pool.get().await.unwrap();
        for _ in 0..3 {
            diesel::select(7.into_sql::<diesel::sql_types::Integer>())
                .get_result::<i32>(&mut *conn)
                .await
                .unwrap();
        }
        let prepared = prepared(&mut conn).await;
        assert_eq!(prepared > 0, cached, "{params}: {prepared} prepared");
    }
}

/// Prisma's `schema`, `statement_timeout` and after-connect SQL reach every connection as it
/// opens; a Unix socket directory in `host` replaces the URL's host.
#[tokio::test]
async fn prisma_url_parameters_and_after_connect_sql_reach_each_connection() {
    let Some(url) = db::postgres_url("prisma_url_parameters") else {
        return;
    };
    #[derive(diesel::QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Text)]
        value: String,
    }
    async fn show(conn: &mut AsyncPgConnection, sql: &str) -> String {
        diesel::sql_query(sql)
            .get_result::<Setting>(conn)
            .await
            .unwrap()
            .value
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    db::pg_execute(&url, "CREATE SCHEMA IF NOT EXISTS shop").await;
    let config = PoolConfig::from_url(&format!(
        // A bound the connect's own catalog lookups keep well inside on a loaded machine (0.2 s
        // once timed one out in CI).
        "{url}{separator}schema=shop&statement_timeout=0.8&connection_limit=2"
    ))
    .unwrap()
    .with_after_connect("SET TIME ZONE 'Pacific/Auckland'");
    let pool = SharedPool::<AsyncPgConnection>::new(config).unwrap();
    let mut conn = pool.get().await.unwrap();
    assert_eq!(
        show(&mut conn, "SELECT current_setting('search_path') AS value").await,
        "shop"
    );
    assert_eq!(
        show(
            &mut conn,
            "SELECT current_setting('statement_timeout') AS value"
        )
        .await,
        "800ms"
    );
    assert_eq!(
        show(&mut conn, "SELECT current_setting('TimeZone') AS value").await,
        "Pacific/Auckland"
    );
    let error = diesel::sql_query("SELECT pg_sleep(2)")
        .execute(&mut *conn)
        .await
        .unwrap_err();
    assert_eq!(Failure::from(error).cause(), Cause::StatementTimeout);
    drop(conn);

    // A schema that does not exist: PostgreSQL takes the search_path, and every statement that
    // makes or finds a table would fail as a bad query (a 500) while readiness said yes. The
    // connect refuses it instead: a configuration error, not retried, and not ready.
    let config = PoolConfig::from_url(&format!(
        "{url}{separator}schema=ballast_no_such_schema&connection_limit=1"
    ))
    .unwrap()
    .with_pool_timeout(Duration::from_secs(2));
    let pool = SharedPool::<AsyncPgConnection>::new(config).unwrap();
    let failure = pool.get().await.expect_err("no such schema");
    assert_eq!(
        failure.cause(),
        Cause::InvalidConfig,
        "{}",
        failure.report()
    );
    assert_eq!(failure.code(), Code::DbInit);
    assert!(!failure.retryable());
    assert!(
        failure.report().contains("ballast_no_such_schema"),
        "the report names the schema: {}",
        failure.report()
    );
    let not_ready = pool.readiness().await.expect_err("not ready");
    assert_eq!(not_ready.code(), Code::DbInit, "{}", not_ready.report());

    // A statement the server refuses: a configuration error, not retried.
    let config = PoolConfig::from_url(&url)
        .unwrap()
        .with_after_connect("SET no_such_setting = 1")
        .with_pool_timeout(Duration::from_secs(2));
    let pool = SharedPool::<AsyncPgConnection>::new(config).unwrap();
    let failure = pool
        .get()
        .await
        .expect_err("the after-connect statement fails");
    assert_eq!(
        failure.cause(),
        Cause::InvalidConfig,
        "{}",
        failure.report()
    );
    assert!(!failure.retryable());

    // Over the Unix socket, where this machine has one.
    let socket_dir = std::path::Path::new("/var/run/postgresql");
    if socket_dir.join(".s.PGSQL.5432").exists() {
        let config =
            PoolConfig::from_url(&format!("{url}{separator}host={}", socket_dir.display()))
                .unwrap();
        let pool = SharedPool::<AsyncPgConnection>::new(config).unwrap();
        let mut conn = pool.get().await.unwrap();
        let via = show(
            &mut conn,
            "SELECT coalesce(inet_client_addr()::text, 'unix socket') AS value",
        )
        .await;
        assert_eq!(via, "unix socket");
    } else {
        println!(
            "no PostgreSQL socket in {}: the socket case is skipped",
            socket_dir.display()
        );
    }
}

/// The pool's timings (OpenTelemetry's `wait_time`, `use_time`, `create_time`) count each
/// checkout, each return and each connect, with the time they took.
#[tokio::test]
async fn timings_count_waits_uses_and_connects() {
    let Some(url) = db::postgres_url("timings_count_waits_uses_and_connects") else {
        return;
    };
    let pool = pool(&url, "connection_limit=2");
    for _ in 0..3 {
        let conn = pool.get().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(conn);
    }
    let stats = pool.stats();
    assert_eq!(stats.wait_time.count, 3, "{:?}", stats.wait_time);
    assert_eq!(stats.use_time.count, 3, "{:?}", stats.use_time);
    assert!(stats.use_time.sum_seconds >= 0.06, "{:?}", stats.use_time);
    assert_eq!(stats.create_time.count, 1, "one connection, reused");
    assert!(stats.create_time.sum_seconds > 0.0);
    let buckets = &stats.use_time.buckets;
    assert!(buckets
        .windows(2)
        .all(|pair| pair[0].0 < pair[1].0 && pair[0].1 <= pair[1].1));
}
