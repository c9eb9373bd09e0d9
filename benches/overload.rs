//! Overload: what 500 concurrent clients see from the example server (release build, a pool of
//! 10, every request a 100 ms query) without a bound on waiting checkouts and with the default
//! one, measured in one run.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench overload
//! ```
//!
//! Each side runs the shipped server as a process (`cargo build --release --example server`,
//! which this bench runs first) and drives it from this process: 500 clients, each sending
//! `GET /sleep?ms=100` over a new connection as soon as its last answer came, for 30 s
//! (`OVERLOAD_SECONDS` to change it). It prints throughput and the p50/p99 latency of the
//! successes and of the 503s, for `queue_limit=0` (no bound: checkouts queue for up to
//! `pool_timeout`, 20 s) and for the default (10 × `connection_limit` = 100).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
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

/// One request on a new connection: its status and how long the answer took.
async fn request(addr: SocketAddr, path: &str) -> Option<(u16, Duration)> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let text = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    stream.write_all(text.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok()?;
    let status = std::str::from_utf8(answer.get(9..12)?).ok()?.parse().ok()?;
    Some((status, started.elapsed()))
}

#[derive(Default)]
struct Latencies {
    ok: Vec<Duration>,
    shed: Vec<Duration>,
    other: usize,
}

fn percentile(samples: &mut [Duration], quantile: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort();
    let index = ((samples.len() as f64 * quantile).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[index]
}

async fn run(label: &str, database_url: &str, seconds: u64) {
    let (_server, addr) = start(database_url).await;
    // Warm up: the schema and the pool's connections.
    for _ in 0..3 {
        let _ = request(addr, "/sleep?ms=1").await;
    }
    let latencies = Arc::new(Mutex::new(Latencies::default()));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let latencies = Arc::clone(&latencies);
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    // Distinct URLs: each request runs its own query.
                    let path = format!("/sleep?ms={QUERY_MS}&c={client}&n={n}");
                    let answer = request(addr, &path).await;
                    let mut latencies = latencies.lock().unwrap();
                    match answer {
                        Some((200, took)) => latencies.ok.push(took),
                        Some((503, took)) => latencies.shed.push(took),
                        _ => latencies.other += 1,
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    let mut latencies = latencies.lock().unwrap();
    let ok = latencies.ok.len();
    let shed = latencies.shed.len();
    println!(
        "{label:<34} {:>6.1} ok/s   ok p50 {:>8.1?} p99 {:>8.1?}   {:>6} × 503: p50 {:>8.1?} p99 {:>8.1?}   other {}",
        ok as f64 / seconds as f64,
        percentile(&mut latencies.ok, 0.5),
        percentile(&mut latencies.ok, 0.99),
        shed,
        percentile(&mut latencies.shed, 0.5),
        percentile(&mut latencies.shed, 0.99),
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
    run(
        "before: queue_limit=0 (no bound)",
        &format!("{url}{separator}connection_limit={POOL}&queue_limit=0"),
        seconds,
    )
    .await;
    run(
        "after: default queue_limit (100)",
        &format!("{url}{separator}connection_limit={POOL}"),
        seconds,
    )
    .await;
}
