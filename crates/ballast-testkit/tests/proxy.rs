//! The fault proxy in front of the real PostgreSQL server.

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use ballast_testkit::db::{self, Backends};
use ballast_testkit::proxy::{FaultProxy, Mode};
use tokio_postgres::NoTls;

/// Long enough for any local round trip, short enough to keep a stalled test quick.
const STALL_PROBE: Duration = Duration::from_millis(500);

async fn proxy_for(url: &str) -> FaultProxy {
    FaultProxy::start(db::socket_addr(url))
        .await
        .expect("proxy starts")
}

#[tokio::test]
async fn pass_forwards_queries_and_counts_connections() {
    let Some(url) = db::postgres_url("pass_forwards_queries_and_counts_connections") else {
        return;
    };
    let proxy = proxy_for(&url).await;
    let client = db::pg_connect(&proxy.url(&url)).await;
    let row = client.query_one("SELECT 40 + 2", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(proxy.accepted(), 1);
    assert_eq!(proxy.open(), 1);
    drop(client);
    // The client's Terminate and close travel through the proxy, which then closes too.
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.open() != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(proxy.open(), 0);
}

#[tokio::test]
async fn refuse_makes_connects_fail_with_connection_refused_and_pass_restores() {
    let Some(url) = db::postgres_url("refuse_makes_connects_fail") else {
        return;
    };
    let proxy = proxy_for(&url).await;
    let open_before = db::pg_connect(&proxy.url(&url)).await;

    proxy.set_mode(Mode::Refuse);
    proxy.wait_for_mode().await;
    let error = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect_err("refused");
    assert_eq!(error.kind(), ErrorKind::ConnectionRefused);
    let error = tokio_postgres::connect(&proxy.url(&url), NoTls)
        .await
        .err()
        .expect("refused");
    let io = std::error::Error::source(&error)
        .and_then(|source| source.downcast_ref::<std::io::Error>())
        .expect("an io error");
    assert_eq!(io.kind(), ErrorKind::ConnectionRefused);
    // Connections made before keep working.
    open_before.query_one("SELECT 1", &[]).await.unwrap();

    proxy.set_mode(Mode::Pass);
    proxy.wait_for_mode().await;
    let client = db::pg_connect(&proxy.url(&url)).await;
    client.query_one("SELECT 1", &[]).await.unwrap();
}

#[tokio::test]
async fn reset_all_breaks_open_connections_only() {
    let Some(url) = db::postgres_url("reset_all_breaks_open_connections_only") else {
        return;
    };
    let proxy = proxy_for(&url).await;
    let (client, connection) = tokio_postgres::connect(&proxy.url(&url), NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    client.query_one("SELECT 1", &[]).await.unwrap();

    let query = tokio::spawn(async move { client.query_one("SELECT pg_sleep(5)", &[]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.reset_all();
    let error = query.await.unwrap().expect_err("the connection was reset");
    assert!(error.is_closed() || find_io(&error).is_some(), "{error:?}");
    let driver_error = driver
        .await
        .unwrap()
        .expect_err("the connection task fails");
    assert_eq!(
        find_io(&driver_error).map(std::io::Error::kind),
        Some(ErrorKind::ConnectionReset),
        "{driver_error:?}"
    );

    // New connections are unaffected.
    let client = db::pg_connect(&proxy.url(&url)).await;
    client.query_one("SELECT 1", &[]).await.unwrap();
}

#[tokio::test]
async fn stall_accepts_but_never_answers_then_recovers() {
    let Some(url) = db::postgres_url("stall_accepts_but_never_answers") else {
        return;
    };
    let proxy = proxy_for(&url).await;
    let open_before = db::pg_connect(&proxy.url(&url)).await;
    proxy.set_mode(Mode::Stall);

    // A new connect is accepted by TCP but the startup never completes.
    let proxied = proxy.url(&url);
    let connect = tokio_postgres::connect(&proxied, NoTls);
    assert!(
        tokio::time::timeout(STALL_PROBE, connect).await.is_err(),
        "a stalled connect must hang"
    );
    assert_eq!(proxy.accepted(), 2);
    // An open connection freezes.
    let query = open_before.query_one("SELECT 1", &[]);
    tokio::pin!(query);
    assert!(tokio::time::timeout(STALL_PROBE, &mut query).await.is_err());

    // Lifting the stall lets the frozen query finish.
    proxy.set_mode(Mode::Pass);
    query.await.unwrap();
}

#[tokio::test]
async fn latency_delays_every_round_trip() {
    let Some(url) = db::postgres_url("latency_delays_every_round_trip") else {
        return;
    };
    let proxy = proxy_for(&url).await;
    let client = db::pg_connect(&proxy.url(&url)).await;
    let delay = Duration::from_millis(150);
    proxy.set_mode(Mode::Latency(delay));
    let started = Instant::now();
    client.query_one("SELECT 1", &[]).await.unwrap();
    // One request and one reply, each held for `delay`: a lower bound that cannot flake.
    assert!(started.elapsed() >= delay * 2, "{:?}", started.elapsed());
}

#[tokio::test]
async fn sessions_through_the_proxy_are_real_backends() {
    let Some(url) = db::postgres_url("sessions_through_the_proxy_are_real_backends") else {
        return;
    };
    let proxy = proxy_for(&url).await;
    let app = db::unique_name("ballast_app");
    let mut clients = Vec::new();
    for _ in 0..3 {
        let client = db::pg_connect(&format!("{}?application_name={app}", proxy.url(&url))).await;
        clients.push(client);
    }
    let which = Backends::ApplicationName(app);
    assert_eq!(db::pg_backends(&url, &which).await.len(), 3);
    assert_eq!(proxy.open(), 3);
    assert_eq!(db::pg_terminate(&url, &which).await, 3);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !db::pg_backends(&url, &which).await.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(db::pg_backends(&url, &which).await.is_empty());
}

fn find_io(error: &tokio_postgres::Error) -> Option<&std::io::Error> {
    let mut source = std::error::Error::source(error);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        source = error.source();
    }
    None
}
