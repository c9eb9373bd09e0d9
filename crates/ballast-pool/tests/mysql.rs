//! The pool against the real MariaDB server.

use std::time::Duration;

use ballast_core::{Cause, DriverCode, Failure, Reach};
use ballast_pool::{PoolConfig, SharedPool};
use ballast_testkit::db::{self, MysqlDatabase, MysqlUser};
use ballast_testkit::fake::FakeServer;
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};

mod support;

type Pool = SharedPool<AsyncMysqlConnection>;

fn pool(url: &str, params: &str) -> Pool {
    SharedPool::new(PoolConfig::from_url(&format!("{url}?{params}")).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_bound_holds_under_load() {
    let Some(url) = db::mysql_url("mariadb_bound_holds_under_load") else {
        return;
    };
    let database = MysqlDatabase::create(&url).await;
    let user = MysqlUser::create(&url, database.name(), None, None).await;
    // Every task waits its turn: this is about the bound, not about shedding.
    let pool = pool(user.url(), "connection_limit=10&queue_target=0");
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { support::hold_mysql(&pool, 0.01).await })
        })
        .collect();
    let mut peak = 0;
    for task in tasks {
        peak = peak.max(user.connections().await);
        task.await.unwrap().unwrap();
    }
    let stats = pool.stats();
    println!("MariaDB bound: peak {peak}, stats {stats:?}");
    assert!(peak <= 10, "saw {peak} connections");
    assert!(stats.open <= 10);
    assert_eq!(stats.checkouts, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_user_limit_yields_classified_too_many_connections() {
    let Some(url) = db::mysql_url("mariadb_user_limit_yields_classified") else {
        return;
    };
    let database = MysqlDatabase::create(&url).await;
    let user = MysqlUser::create(&url, database.name(), None, Some(3)).await;
    let pool = pool(user.url(), "connection_limit=10&pool_timeout=1");
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { support::hold_mysql(&pool, 1.5).await })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
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
                assert!(failure.retryable());
                assert_eq!(failure.reach(), Reach::NotSent);
                // MAX_USER_CONNECTIONS answers 1226; the global variable 1203; 1040 the server.
                assert!(matches!(
                    failure.driver_code(),
                    Some(DriverCode::MySql(1226 | 1203 | 1040))
                ));
            }
        }
    }
    println!(
        "MariaDB user limit 3: ok {ok}, failed {failed}, stats {:?}",
        pool.stats()
    );
    assert!(ok >= 3);
    assert!(failed > 0);
    assert!(user.connections().await <= 3);
}

#[tokio::test]
async fn server_wide_1040_fails_fast() {
    let server = FakeServer::mysql(1040, "08004", "Too many connections")
        .await
        .unwrap();
    let pool = pool(&server.url("test"), "pool_timeout=20");
    let started = std::time::Instant::now();
    let failure = pool.get().await.expect_err("refused");
    assert_eq!(failure.cause(), Cause::TooManyConnections);
    assert_eq!(failure.driver_code(), Some(DriverCode::MySql(1040)));
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// After-connect SQL reaches every MariaDB connection as it opens; Prisma's PostgreSQL-only
/// parameters are refused by name.
#[tokio::test]
async fn after_connect_sql_reaches_each_mariadb_connection() {
    let Some(url) = db::mysql_url("after_connect_sql_reaches_each_mariadb_connection") else {
        return;
    };
    #[derive(diesel::QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Text)]
        value: String,
    }
    let config = PoolConfig::from_url(&url)
        .unwrap()
        .with_after_connect("SET time_zone = '+05:30'")
        .with_after_connect("SET SESSION max_statement_time = 0.2");
    let pool = SharedPool::<AsyncMysqlConnection>::new(config).unwrap();
    let mut conn = pool.get().await.unwrap();
    let zone: Setting = diesel::sql_query("SELECT @@time_zone AS value")
        .get_result(&mut *conn)
        .await
        .unwrap();
    assert_eq!(zone.value, "+05:30");
    let error = diesel::sql_query("SELECT SLEEP(2)")
        .execute(&mut *conn)
        .await;
    // MariaDB ends the statement at max_statement_time (1969): a statement timeout.
    if let Err(error) = error {
        let text = format!("{error:?}");
        assert_eq!(
            Failure::from(error).cause(),
            Cause::StatementTimeout,
            "{text}"
        );
    }
    for parameter in ["schema=public", "statement_timeout=5"] {
        let error = PoolConfig::from_url(&format!("{url}?{parameter}")).unwrap_err();
        assert_eq!(error.setting, parameter.split('=').next().unwrap());
    }
}

/// `statement_timeout=deadline` on MariaDB: inside a request with 300 ms left, a statement stops
/// on the server by then (`max_statement_time`); a checkout without a deadline puts the
/// session's default back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_statement_timeout_deadline_bounds_statements_by_the_time_left() {
    use ballast_core::scope::RequestScope;
    use std::time::Instant;

    let Some(url) = db::mysql_url("mariadb_statement_timeout_deadline") else {
        return;
    };
    let pool = pool(&url, "connection_limit=1&statement_timeout=deadline");
    let scope = RequestScope::new(Some(Instant::now() + Duration::from_millis(300)));
    let started = Instant::now();
    let stopped = scope
        .run(async {
            let mut conn = pool.get().await?;
            // MariaDB answers an interrupted `SLEEP` with 1: a real statement is stopped.
            diesel::sql_query("SELECT COUNT(*) FROM information_schema.columns a, information_schema.columns b, information_schema.columns c")
                .execute(&mut *conn)
                .await
                .map_err(Failure::from)
        })
        .await
        .expect_err("stopped on the server");
    let took = started.elapsed();
    println!("stopped after {took:?}: {}", stopped.report());
    assert_eq!(
        stopped.cause(),
        Cause::StatementTimeout,
        "{}",
        stopped.report()
    );
    assert!(took < Duration::from_secs(2), "{took:?}");

    #[derive(diesel::QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Double)]
        max_statement_time: f64,
    }
    let mut conn = pool.get().await.unwrap();
    let setting: Setting = diesel::sql_query("SELECT @@max_statement_time AS max_statement_time")
        .get_result(&mut *conn)
        .await
        .unwrap();
    assert_eq!(setting.max_statement_time, 0.0, "the default is back");
}
