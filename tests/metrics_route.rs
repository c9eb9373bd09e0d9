//! `StackBuilder::metrics_route`: `/metrics` in one line, like health, its families in the same
//! (name) order on every scrape.

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use ballast::pool::{PoolConfig, SharedPool};
use ballast::Stack;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Sqlite = SyncConnectionWrapper<diesel::SqliteConnection>;

async fn get_text(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

fn families(body: &str) -> Vec<&str> {
    body.lines()
        .filter_map(|line| line.strip_prefix("# HELP "))
        .map(|rest| rest.split(' ').next().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_serves_metrics_in_one_line_in_a_stable_order() {
    let pool = SharedPool::<Sqlite>::new(PoolConfig::from_url("sqlite::memory:").unwrap()).unwrap();
    let stack = Stack::builder(pool).metrics_route("/metrics").build();
    let handle = stack.handle();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().route("/", get(|| async { "hello" }));
    let server = tokio::spawn(stack.serve(listener, router));

    assert!(get_text(addr, "/").await.ends_with("hello"));
    let first = get_text(addr, "/metrics").await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(
        first.contains("content-type: text/plain; version=0.0.4"),
        "{first}"
    );
    assert!(first.contains("cache-control: no-store"), "{first}");
    let (_, body) = first.split_once("\r\n\r\n").unwrap();
    let names = families(body);
    for family in [
        "db_client_connection_max",
        "ballast_cache_hits_total",
        "ballast_retry_attempts_total",
        "ballast_shutdown_phase",
    ] {
        assert!(names.contains(&family), "{family} is missing: {names:?}");
    }
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "families in name order");
    for _ in 0..5 {
        let again = get_text(addr, "/metrics").await;
        let (_, again) = again.split_once("\r\n\r\n").unwrap();
        assert_eq!(families(again), names, "the same order on every scrape");
    }

    handle.trigger();
    let code = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops")
        .unwrap();
    assert_eq!(code, std::process::ExitCode::SUCCESS);
}
