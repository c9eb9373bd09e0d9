//! Overload: what 500 concurrent clients see from the example server (release build, a pool of
//! 10, every request a 100 ms query) without admission control and with the default, measured
//! in one run.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench overload
//! ```
//!
//! Each side runs the shipped server as a process (`cargo build --release --example server`,
//! which this bench runs first) and drives it from this process: 500 clients, each sending
//! `GET /sleep?ms=100` over its keep-alive connection as soon as its last answer came — after a 503 at
//! once (impatient clients) or after its `Retry-After` (polite ones) — for 30 s
//! (`OVERLOAD_SECONDS` to change it). It prints throughput and the p50/p99 latency of the
//! successes and of the 503s, for `queue_target=0` (admission by time off: checkouts queue for up
//! to `pool_timeout`, 20 s) and for the default (admission by time, `queue_target` 1 s). The five
//! load shapes of admission by time have their own bench: `cargo run --release -p ballast-bench
//! --bin admission-bench`.

use ballast_testkit::measure::percentile;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballast_testkit::http::{Client as Connection, Reply};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Concurrent clients.
const CLIENTS: usize = 500;
/// Each request's query time.
const QUERY_MS: u64 = 100;
/// The pool's size.
const POOL: u32 = 10;

fn server_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/examples/server")
}

/// Builds the example server in release mode, as it ships.
fn build_server() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "--example", "server"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the example server failed");
}

async fn start(database_url: &str) -> (Child, SocketAddr) {
    let mut child = Command::new(server_binary())
        .env("DATABASE_URL", database_url)
        .env("BIND", "127.0.0.1:0")
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the example server starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().expect("a line");
    let addr = line
        .strip_prefix("listening on ")
        .expect("listening on ...")
        .parse()
        .unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

/// What a client does after a 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    /// Sends its next request at once: the worst case for the server.
    Impatient,
    /// Waits the `Retry-After` it was given, as a well-behaved client does.
    Polite,
}

#[derive(Default)]
struct Latencies {
    ok: Vec<Duration>,
    shed: Vec<Duration>,
    other: usize,
}

async fn run(label: &str, database_url: &str, seconds: u64, behaviour: Client) {
    let (_server, addr) = start(database_url).await;
    // Warm up: the schema and the pool's connections.
    let mut warm = Connection::new(addr);
    for _ in 0..3 {
        let _ = warm.get("/sleep?ms=1").await;
    }
    let latencies = Arc::new(Mutex::new(Latencies::default()));
    // Every client connects first; the measured run starts when all have.
    let connected = Arc::new(tokio::sync::Barrier::new(CLIENTS + 1));
    let start = Arc::new(tokio::sync::OnceCell::new());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let latencies = Arc::clone(&latencies);
            let (connected, start) = (Arc::clone(&connected), Arc::clone(&start));
            tokio::spawn(async move {
                let mut connection = Connection::new(addr);
                connection.connect().await;
                connected.wait().await;
                let deadline = *start
                    .get_or_init(|| async { Instant::now() + Duration::from_secs(seconds) })
                    .await;
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    // Distinct URLs: each request runs its own query.
                    let path = format!("/sleep?ms={QUERY_MS}&c={client}&n={n}");
                    let answer = connection.get(&path).await;
                    let wait = {
                        let mut latencies = latencies.lock().unwrap();
                        match answer {
                            Some(Reply {
                                status: 200, took, ..
                            }) => {
                                latencies.ok.push(took);
                                None
                            }
                            Some(Reply {
                                status: 503,
                                took,
                                retry_after,
                                ..
                            }) => {
                                latencies.shed.push(took);
                                retry_after.filter(|_| behaviour == Client::Polite)
                            }
                            _ => {
                                latencies.other += 1;
                                None
                            }
                        }
                    };
                    if let Some(seconds) = wait {
                        tokio::time::sleep(Duration::from_secs(seconds)).await;
                    }
                }
            })
        })
        .collect();
    connected.wait().await;
    for client in clients {
        client.await.unwrap();
    }
    // Clients queued at the deadline still finish: divide by the time until the last answer.
    let elapsed = start
        .get()
        .map_or(Duration::from_secs(seconds), |deadline| {
            Instant::now() + Duration::from_secs(seconds) - *deadline
        });
    let latencies = latencies.lock().unwrap();
    let ok = latencies.ok.len();
    let shed = latencies.shed.len();
    println!(
        "{label:<34} {:>6.1} ok/s   ok p50 {:>8.1?} p99 {:>8.1?}   {:>6} × 503: p50 {:>8.1?} p99 {:>8.1?}   other {}",
        ok as f64 / elapsed.as_secs_f64(),
        percentile(&latencies.ok, 0.5),
        percentile(&latencies.ok, 0.99),
        shed,
        percentile(&latencies.shed, 0.5),
        percentile(&latencies.shed, 0.99),
        latencies.other
    );
}

#[tokio::main]
async fn main() {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        println!("overload: DATABASE_URL is unset; nothing to measure");
        return;
    };
    let seconds = std::env::var("OVERLOAD_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(30);
    build_server();
    let separator = if url.contains('?') { '&' } else { '?' };
    println!(
        "{CLIENTS} clients, pool of {POOL}, {QUERY_MS} ms queries, {seconds} s per side, example server (release)"
    );
    let before = format!("{url}{separator}connection_limit={POOL}&queue_target=0");
    let after = format!("{url}{separator}connection_limit={POOL}");
    for behaviour in [Client::Impatient, Client::Polite] {
        println!("clients {behaviour:?}:");
        run(
            "  before: queue_target=0 (off)",
            &before,
            seconds,
            behaviour,
        )
        .await;
        run(
            "  after: default admission (1 s)",
            &after,
            seconds,
            behaviour,
        )
        .await;
    }
}
