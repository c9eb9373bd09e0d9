//! The example server as a process: every endpoint on the default SQLite and on PostgreSQL, the
//! bad-setting exits, a database that is down at startup, and a SIGTERM with requests in flight.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ballast_testkit::db::{self, Backends, PgDatabase};
use ballast_testkit::proxy::{FaultProxy, Mode};
use support::{
    command, command_for, example_binary, get, promtool_accepts, send, start, start_command, Server,
};

/// Walks every endpoint; returns the id of the item it created.
async fn walk(addr: SocketAddr) -> i64 {
    assert_eq!(get(addr, "/healthz").await.status, 200);
    let ready = get(addr, "/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.body);

    let created = send(
        addr,
        "POST",
        "/items",
        Some(("application/json", r#"{"name":"lamp"}"#)),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let item: serde_json::Value = serde_json::from_str(&created.body).unwrap();
    assert_eq!(item["name"], "lamp");
    let id = item["id"].as_i64().unwrap();
    assert!(item["created_at"].as_str().unwrap().ends_with('Z'));

    let first = get(addr, "/items").await;
    assert_eq!(first.status, 200);
    assert!(first.head.contains("x-cache: miss"), "{}", first.head);
    let list: serde_json::Value = serde_json::from_str(&first.body).unwrap();
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .any(|entry| entry["id"] == id));
    let second = get(addr, "/items").await;
    assert!(second.head.contains("x-cache: hit"), "{}", second.head);
    assert_eq!(second.body, first.body);

    // A write invalidates the cached list.
    let another = send(
        addr,
        "POST",
        "/items",
        Some(("application/json", r#"{"name":"chair"}"#)),
    )
    .await;
    assert_eq!(another.status, 201);
    let after = get(addr, "/items").await;
    assert!(
        after.head.contains("x-cache: miss"),
        "the list was invalidated"
    );
    assert!(after.body.contains("chair"));

    let one = get(addr, &format!("/items/{id}")).await;
    assert_eq!(one.status, 200);
    assert!(one.body.contains("lamp"));
    let missing = get(addr, "/items/999999").await;
    assert_eq!(missing.status, 404);
    assert!(missing
        .head
        .contains("content-type: application/problem+json"));
    assert!(missing.body.contains("\"code\":\"NOT_FOUND\""));

    for (content_type, body) in [
        ("application/json", "{not json"),
        ("text/plain", r#"{"name":"x"}"#),
        ("application/json", r#"{"title":"no name"}"#),
        ("application/json", r#"{"name":"   "}"#),
    ] {
        let bad = send(addr, "POST", "/items", Some((content_type, body))).await;
        assert!((400..500).contains(&bad.status), "{body}: {}", bad.status);
        assert!(bad.head.contains("application/problem+json"), "{body}");
    }

    let slept = get(addr, "/sleep?ms=50").await;
    assert_eq!(slept.status, 200, "{}", slept.body);
    assert!(slept.head.contains("cache-control: no-store"));
    assert_eq!(get(addr, "/sleep?ms=999999").await.status, 400);

    let stats: serde_json::Value = serde_json::from_str(&get(addr, "/stats").await.body).unwrap();
    for section in ["pool", "cache", "retry", "shutdown"] {
        assert!(stats.get(section).is_some(), "{section} missing: {stats}");
    }
    assert!(stats["pool"]["open"].as_u64().unwrap() >= 1);
    assert!(stats["cache"]["hits"].as_u64().unwrap() >= 1);
    let metrics = get(addr, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains("db_client_connections_usage"),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains("ballast_cache_hits_total"),
        "{}",
        metrics.body
    );
    promtool_accepts(&metrics.body);
    id
}

/// `POST /items` with a NUL in the name: PostgreSQL refuses the byte (22021), which is the
/// client's data, not a bug: a 422 problem, never a 500.
async fn post_a_nul(addr: SocketAddr) -> support::Answer {
    send(
        addr,
        "POST",
        "/items",
        Some(("application/json", r#"{"name":"a\u0000b"}"#)),
    )
    .await
}

/// SIGTERM with a slow request in flight: it completes and the process exits 0.
async fn stop_with_work_in_flight(mut server: Server) {
    let addr = server.addr;
    let in_flight = tokio::spawn(async move { get(addr, "/sleep?ms=800").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = server.child.id().unwrap().to_string();
    let signalled = Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let answer = in_flight.await.unwrap();
    assert_eq!(
        answer.status, 200,
        "the request in flight completed: {}",
        answer.body
    );
    let status = tokio::time::timeout(Duration::from_secs(10), server.child.wait())
        .await
        .expect("exited")
        .unwrap();
    println!(
        "SIGTERM with a request in flight: exit {:?} after {:?}",
        status.code(),
        signalled.elapsed()
    );
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_on_the_default_sqlite() {
    let server = start(&[]).await;
    walk(server.addr).await;
    // SQLite stores the NUL.
    let nul = post_a_nul(server.addr).await;
    assert_eq!(nul.status, 201, "{}", nul.body);
    // The name limit is 255 characters, not bytes.
    for (count, status) in [(255, 201), (256, 422)] {
        let body = format!(r#"{{"name":"{}"}}"#, "é".repeat(count));
        let answer = send(
            server.addr,
            "POST",
            "/items",
            Some(("application/json", &body)),
        )
        .await;
        assert_eq!(answer.status, status, "{count} characters: {}", answer.body);
    }
    assert!(
        server.dir.0.join("ballast-example.db").exists(),
        "the SQLite file was created"
    );
    stop_with_work_in_flight(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_on_postgresql_and_no_backend_left() {
    let Some(url) = db::postgres_url("every_endpoint_on_postgresql") else {
        return;
    };
    let database = PgDatabase::create(&url).await;
    let app = db::unique_name("ballast_example");
    let database_url = format!(
        "{}?application_name={app}&connection_limit=5",
        database.url()
    );
    let server = start(&[("DATABASE_URL", &database_url)]).await;
    walk(server.addr).await;
    // The server's connection budget, read on the first connection, for dashboards.
    let metrics = get(server.addr, "/metrics").await;
    assert!(
        metrics.body.contains("ballast_pool_budget_available{"),
        "{}",
        metrics.body
    );
    let stats = get(server.addr, "/stats").await.json();
    assert!(
        stats["pool"]["budget"]["server_limit"].as_u64().unwrap() > 5,
        "{stats}"
    );
    let nul = post_a_nul(server.addr).await;
    assert_eq!(nul.status, 422, "{}", nul.body);
    assert!(nul.head.contains("application/problem+json"));
    assert!(
        nul.body.contains(r#""code":"INVALID_DATA""#),
        "{}",
        nul.body
    );
    assert!(nul.body.contains(r#""retryable":false"#), "{}", nul.body);
    let which = Backends::ApplicationName(app);
    let open = db::pg_backends(&url, &which).await.len();
    assert!((1..=5).contains(&open), "{open} backends");
    stop_with_work_in_flight(server).await;
    assert!(
        db::pg_backends(&url, &which).await.is_empty(),
        "the pool was closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_exit_at_once_with_one_line_and_no_password() {
    const CANARY: &str = "canary-Pa55-2207";
    let cases = [
        (
            format!("postgres://app:{CANARY}@db/shop?connection_limit=0"),
            "connection_limit",
        ),
        (
            format!("postgres://app:{CANARY}@db/shop?pool_timeout=soon"),
            "pool_timeout",
        ),
        (format!("postgres://app:{CANARY}@db:notaport/shop"), "port"),
        (format!("redis://app:{CANARY}@db/0"), "url"),
        // Not URLs: once taken for SQLite file names (one named with the password).
        ("garbage".to_owned(), "url"),
        (
            format!("host=db user=app password={CANARY} dbname=shop"),
            "url",
        ),
        (
            format!("postgres://app:{CANARY}@db/shop?connection_limit=5&connection_limit=50"),
            "url",
        ),
    ];
    for (url, setting) in cases {
        let (mut command, dir) = command(&[("DATABASE_URL", url.as_str())]);
        let output = tokio::time::timeout(Duration::from_secs(10), command.output())
            .await
            .expect("exits at once")
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(setting), "{stderr}");
        assert!(!stderr.contains(CANARY), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(
            stderr
                .lines()
                .filter(|line| line.starts_with("error:"))
                .count(),
            1
        );
        let files: Vec<_> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert!(files.is_empty(), "{url}: created {files:?}");
    }
    let (mut command, _dir) = command(&[("BIND", "not-an-address")]);
    let output = command.output().await.unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("BIND"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_the_database_is_down_and_works_once_it_answers() {
    let Some(url) = db::postgres_url("starts_while_the_database_is_down") else {
        return;
    };
    let database = PgDatabase::create(&url).await;
    let proxy = FaultProxy::start(db::socket_addr(&url)).await.unwrap();
    proxy.set_mode(Mode::Refuse);
    proxy.wait_for_mode().await;
    let database_url = format!("{}?pool_timeout=2", proxy.url(database.url()));
    let server = start(&[("DATABASE_URL", &database_url)]).await;
    let addr = server.addr;
    assert_eq!(get(addr, "/healthz").await.status, 200);
    assert_eq!(get(addr, "/readyz").await.status, 503);
    let down = get(addr, "/items").await;
    assert_eq!(down.status, 503, "{}", down.body);
    assert!(down.head.contains("retry-after"));
    assert!(down.body.contains("\"code\":\"DB_CONNECTION_ERROR\""));
    assert!(down.body.contains("\"retryable\":true"));
    assert!(!down.body.contains("127.0.0.1"), "{}", down.body);

    proxy.set_mode(Mode::Pass);
    proxy.wait_for_mode().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = get(addr, "/readyz").await;
        if ready.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never became ready: {}",
            ready.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let created = send(
        addr,
        "POST",
        "/items",
        Some(("application/json", r#"{"name":"late"}"#)),
    )
    .await;
    assert_eq!(
        created.status, 201,
        "the schema was created once the database answered"
    );
    stop_with_work_in_flight(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_stack_on_plain_hyper() {
    let mut server = start_command(command_for(example_binary("hyper"), &[])).await;
    let addr = server.addr;
    let first = get(addr, "/items").await;
    assert_eq!((first.status, first.body.as_str()), (200, "{\"items\":0}"));
    assert!(first.head.contains("x-cache: miss"));
    assert!(get(addr, "/items").await.head.contains("x-cache: hit"));
    let missing = get(addr, "/missing").await;
    assert_eq!(missing.status, 404);
    assert!(missing.head.contains("application/problem+json"));
    assert!(missing.body.contains("\"code\":\"NOT_FOUND\""));
    let pid = server.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(10), server.child.wait())
        .await
        .expect("exited")
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "hyper-util's graceful shutdown drained and exited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hyper_stack_answers_503_when_the_database_is_down() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("postgres://postgres@127.0.0.1:{port}/test?pool_timeout=2");
    let server = start_command(command_for(
        example_binary("hyper"),
        &[("DATABASE_URL", &url)],
    ))
    .await;
    let down = get(server.addr, "/items").await;
    assert_eq!(down.status, 503, "{}", down.body);
    assert!(down.head.contains("retry-after"));
    assert!(down.body.contains("\"retryable\":true"));
}

/// Kubernetes: after SIGTERM the endpoints controller needs a moment to take the pod out of the
/// Service. With `PRE_DRAIN_DELAY` the server keeps serving that long while `/readyz` fails, and
/// only then closes the listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readiness_first_and_serves_through_the_pre_drain_delay() {
    let mut server = start(&[("PRE_DRAIN_DELAY", "1.5")]).await;
    let addr = server.addr;
    assert_eq!(get(addr, "/readyz").await.status, 200);
    let pid = server.child.id().unwrap().to_string();
    let signalled = Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ready = get(addr, "/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.head.contains("application/problem+json") || ready.head.contains("text/plain"));
    assert_eq!(get(addr, "/healthz").await.status, 200);
    let items = get(addr, "/items").await;
    assert_eq!(items.status, 200, "still serving: {}", items.body);
    assert!(signalled.elapsed() < Duration::from_millis(1500));
    let status = tokio::time::timeout(Duration::from_secs(10), server.child.wait())
        .await
        .expect("exited")
        .unwrap();
    assert!(
        signalled.elapsed() >= Duration::from_millis(1500),
        "waited for the delay"
    );
    assert_eq!(status.code(), Some(0));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

/// Routes that never asked to be cached (`/healthz`, `/readyz`, `/sleep`, `/stats`) pass the
/// cache by as if it were not there, whatever their responses say (`Cache-Control: no-store`):
/// no `x-cache`, counted as bypassed and never as misses, and never collapsed: five identical
/// slow requests at once each run their own query side by side (they finished at 1, 2, 2, 2 and
/// 2 s: the others waited for the first's `no-store`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_that_never_asked_to_be_cached_are_passed_by() {
    let Some(url) = db::postgres_url("routes_that_never_asked_to_be_cached_are_passed_by") else {
        return;
    };
    let database = PgDatabase::create(&url).await;
    let server = start(&[("DATABASE_URL", database.url())]).await;
    let addr = server.addr;
    support::wait_ready(addr, Duration::from_secs(30)).await;
    for path in [
        "/healthz",
        "/readyz",
        "/sleep?ms=0",
        "/stats",
        "/healthz",
        "/sleep?ms=0",
    ] {
        let answer = get(addr, path).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        assert!(!answer.head.contains("x-cache"), "{path}: {}", answer.head);
    }
    // The same slow URL five times at once: each its own query, side by side.
    let started = Instant::now();
    let slow: Vec<_> = (0..5)
        .map(|_| tokio::spawn(async move { get(addr, "/sleep?ms=1000").await }))
        .collect();
    for answer in slow {
        let answer = answer.await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(!answer.head.contains("x-cache"), "{}", answer.head);
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1800),
        "they waited on each other: {took:?}"
    );
    let stats: serde_json::Value = serde_json::from_str(&get(addr, "/stats").await.body).unwrap();
    assert_eq!(stats["cache"]["misses"], 0, "{stats}");
    assert!(
        stats["cache"]["bypassed"].as_u64().unwrap() >= 12,
        "{stats}"
    );
}
