//! Starting while the database is down: the quickstart, as a process, started with its database
//! refusing connections stays up (alive, not ready, requests answered 503 retryable), creates
//! its schema once the database is there, serves, and stops cleanly; a startup step that cannot
//! succeed ends the service with exit code 1; SIGTERM during startup exits 0 at once.

mod support;

use std::time::{Duration, Instant};

use ballast::prelude::*;
use ballast_testkit::db::{self, PgDatabase};
use ballast_testkit::proxy::{FaultProxy, Mode};
use support::{command_for, example_binary, get, send, start_command, terminate, wait_ready};

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"))
}

/// The quickstart, started while its database (behind a proxy that refuses connections) is
/// down.
async fn quickstart_with_database_down(url: &str) -> (PgDatabase, FaultProxy, support::Server) {
    let database = PgDatabase::create(url).await;
    let proxy = FaultProxy::start(db::socket_addr(database.url()))
        .await
        .unwrap();
    proxy.set_mode(Mode::Refuse);
    proxy.wait_for_mode().await;
    let database_url = format!(
        "{}?connection_limit=4&connect_timeout=1&pool_timeout=1",
        proxy.url(database.url())
    );
    let server = start_command(command_for(
        example_binary("quickstart"),
        &[("DATABASE_URL", &database_url), ("RUST_LOG", "info")],
    ))
    .await;
    (database, proxy, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_starts_before_its_database() {
    let Some(url) = db::postgres_url("the_quickstart_starts_before_its_database") else {
        return;
    };
    let (_database, proxy, mut server) = quickstart_with_database_down(&url).await;
    let addr = server.addr;

    // The database is not there: the process stays up (it used to exit 1 after about 7 s),
    // alive but not ready, and requests get a retryable 503 without reaching a handler.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "{}",
        server.log()
    );
    assert_eq!(get(addr, "/healthz").await.status, 200);
    let ready = get(addr, "/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("schema"), "{}", ready.body);
    let early = get(addr, "/users").await;
    assert_eq!(early.status, 503, "{}", early.body);
    assert_eq!(json(&early.body)["code"], "DB_CONNECTION_ERROR");
    assert_eq!(json(&early.body)["retryable"], true);
    assert!(early.head.contains("retry-after:"), "{}", early.head);
    let created = send(
        addr,
        "POST",
        "/users",
        Some((
            "application/json",
            r#"{"name":"Ada","email":"ada@example.com"}"#,
        )),
    )
    .await;
    assert_eq!(created.status, 503, "{}", created.body);
    assert_eq!(json(&created.body)["retryable"], true, "nothing ran");
    // The wait is logged when it starts, not at every attempt.
    let log = server.log();
    let warnings = log.matches("startup step waits for the database").count();
    assert_eq!(warnings, 1, "{log}");

    // The database comes up: the schema is created within the longest wait, and it serves.
    proxy.set_mode(Mode::Pass);
    proxy.wait_for_mode().await;
    let up = Instant::now();
    wait_ready(addr, Duration::from_secs(15)).await;
    println!(
        "quickstart: ready {:?} after the database came up",
        up.elapsed()
    );
    let created = send(
        addr,
        "POST",
        "/users",
        Some((
            "application/json",
            r#"{"name":"Ada","email":"ada@example.com"}"#,
        )),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert!(server.log().contains("startup done"), "{}", server.log());

    let (status, _) = terminate(&mut server, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_startup_exits_at_once() {
    let Some(url) = db::postgres_url("sigterm_during_startup_exits_at_once") else {
        return;
    };
    let (_database, _proxy, mut server) = quickstart_with_database_down(&url).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, took) = terminate(&mut server, Duration::from_secs(10)).await;
    println!(
        "quickstart: exit {:?} {took:?} after SIGTERM during startup",
        status.code()
    );
    assert_eq!(status.code(), Some(0), "{}", server.log());
    assert!(took < Duration::from_secs(3), "{}", server.log());
}

/// A step that cannot succeed — a statement the database refuses — ends the service: exit
/// code 1, the cause in the log, not a retry loop that never becomes ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_startup_step_that_cannot_succeed_exits_1() {
    let Some(url) = db::postgres_url("a_startup_step_that_cannot_succeed_exits_1") else {
        return;
    };
    let database = PgDatabase::create(&url).await;
    // The startup step runs in a task of its own: the subscriber is the process's (this is the
    // binary's only in-process test that logs).
    let logs = ballast_testkit::logs::Captured::default();
    let writer = logs.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .finish(),
    )
    .unwrap();
    let pool = SharedPool::<AsyncPgConnection>::init_from_url(database.url()).unwrap();
    let stack = Stack::builder(pool)
        .startup("schema", |pool| async move {
            Ok::<_, Failure>(pool.get().await?.batch_execute("CREATE TABLE (").await?)
        })
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
    let code = tokio::time::timeout(Duration::from_secs(20), stack.serve(listener, app))
        .await
        .expect("serve returned");
    assert_eq!(code, std::process::ExitCode::FAILURE);
    let log = logs.take();
    assert!(log.contains("retrying cannot fix it"), "{log}");
}
