//! An outage is logged as an outage: once when connects start failing, again only every ten
//! seconds while it lasts, and once when they succeed again — not once per attempt (a pool
//! retrying every half second logged 29 warnings in 8 s).

use std::time::Duration;

use ballast_pool::{PoolConfig, SharedPool};
use ballast_testkit::db;
use ballast_testkit::logs::Captured;
use ballast_testkit::proxy::{FaultProxy, Mode};
use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};

#[tokio::test(flavor = "current_thread")]
async fn an_outage_is_logged_when_it_begins_and_ends_not_per_attempt() {
    let Some(url) = db::postgres_url("an_outage_is_logged_when_it_begins_and_ends") else {
        return;
    };
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let proxy = FaultProxy::start(db::socket_addr(&url)).await.unwrap();
    proxy.set_mode(Mode::Refuse);
    proxy.wait_for_mode().await;
    let config = PoolConfig::from_url(&proxy.url(&format!(
        "{url}{}pool_timeout=1&connect_timeout=1",
        if url.contains('?') { '&' } else { '?' }
    )))
    .unwrap();
    let pool = SharedPool::<AsyncPgConnection>::new(config).unwrap();
    // Two seconds of requests against a database that refuses: the probe tries every 50 ms
    // doubling to 500 ms, so connects fail several times.
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < until {
        assert!(pool.get().await.is_err());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failures = pool.stats().connect_failures;
    assert!(failures >= 4, "connects failed {failures} times");

    proxy.set_mode(Mode::Pass);
    proxy.wait_for_mode().await;
    let back = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut conn = loop {
        match pool.get().await {
            Ok(conn) => break conn,
            Err(failure) => {
                assert!(
                    tokio::time::Instant::now() < back,
                    "still failing: {failure}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    conn.batch_execute("SELECT 1").await.unwrap();
    drop(conn);

    let log = captured.take();
    let lines = |needle: &str| log.lines().filter(|line| line.contains(needle)).count();
    assert_eq!(
        lines("database connect failed"),
        1,
        "{failures} failed connects, one outage:\n{log}"
    );
    assert_eq!(lines("still failing"), 0, "less than ten seconds:\n{log}");
    assert_eq!(lines("database connects succeed again"), 1, "{log}");
    let end = log
        .lines()
        .find(|line| line.contains("succeed again"))
        .unwrap();
    assert!(
        end.contains("attempts=") && end.contains("down_for_ms="),
        "{end}"
    );
    pool.close().await;
}
