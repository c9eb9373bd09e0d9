//! Side-by-side load: the full ballast stack against the stacks it replaces, served and loaded
//! over HTTP in one run, at a fixed concurrency, alternating each pair's runs so machine drift
//! cancels out.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench load
//! ```
//!
//! 1. A cached `GET /items` through the full stack vs a bare axum handler returning the same
//!    bytes (goal ≥ 0.85).
//! 2. A database round trip through the full stack vs stock axum + bb8 + diesel-async with their
//!    defaults, pool of 10 (goal ≥ 1.15).
//! 3. The same vs a handler that opens a new connection per request — the seed's failure mode
//!    (goal ≥ 25×).
//! 4. The same vs `pgbench -S` with the same client count, where pgbench is installed: the
//!    fraction of the database's own ceiling.
//!
//! Without `DATABASE_URL` only pair 1 runs.
//!
//! This bench drives its own copy of the stack in process. The example server itself, as its own
//! process, against sqlx, deadpool and bb8 with and without its checkout ping, is measured by
//! `cargo run --release -p ballast-bench --features peers` (`bench/`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use ballast::cache::{CacheLayer, ResponseCache};
use ballast::error::ErrorResponseLayer;
use ballast::pool::{PoolConfig, SharedPool};
use ballast::retry::RetryLayer;
use ballast::shutdown::{Shutdown, ShutdownLayer};
use diesel_async::pooled_connection::bb8::Pool as StockPool;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceBuilder;

/// Concurrent client connections.
const CONCURRENCY: usize = 64;
/// How long each measured run lasts.
const RUN: Duration = Duration::from_secs(3);
/// Runs of each side of a pair, alternated.
const ROUNDS: usize = 3;
/// The body of `GET /items`.
const ITEMS: &str = r#"[{"id":1,"name":"lamp","created_at":"2026-11-26T12:00:00Z"},{"id":2,"name":"chair","created_at":"2026-11-26T12:00:01Z"}]"#;

/// Wraps a router in the full stack: shutdown → error → cache → retry.
fn full_stack(router: Router) -> Router {
    let shutdown = Shutdown::builder().build();
    let cache = ResponseCache::builder()
        .store_unmarked(true)
        .build()
        .expect("cache");
    router.layer(
        ServiceBuilder::new()
            .layer(ShutdownLayer::new(shutdown.handle()))
            .layer(ErrorResponseLayer::new())
            .layer(CacheLayer::new(cache))
            .layer(RetryLayer::new()),
    )
}

fn no_store(response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

/// One keep-alive connection sending `GET path` until `stop`; counts 200 responses.
async fn client(addr: SocketAddr, path: String, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        if stream.write_all(request.as_bytes()).await.is_err() {
            return;
        }
        buffer.clear();
        // Read the head, then exactly content-length bytes of body.
        let (head_end, length) = loop {
            let Ok(read) = stream.read(&mut chunk).await else {
                return;
            };
            if read == 0 {
                return;
            }
            buffer.extend_from_slice(&chunk[..read]);
            if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .and_then(|value| value.trim().parse().ok())
                    .unwrap_or(0);
                if !head.starts_with("http/1.1 200") {
                    return;
                }
                break (end + 4, length);
            }
        };
        while buffer.len() < head_end + length {
            let Ok(read) = stream.read(&mut chunk).await else {
                return;
            };
            if read == 0 {
                return;
            }
            buffer.extend_from_slice(&chunk[..read]);
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Requests per second against `addr` with `CONCURRENCY` connections for `run`.
async fn measure(addr: SocketAddr, path: &str, run: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            tokio::spawn(client(
                addr,
                path.to_owned(),
                Arc::clone(&stop),
                Arc::clone(&done),
            ))
        })
        .collect();
    let started = Instant::now();
    tokio::time::sleep(run).await;
    stop.store(true, Ordering::Relaxed);
    let count = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    for client in clients {
        let _ = client.await;
    }
    count as f64 / elapsed.as_secs_f64()
}

/// Alternates `ROUNDS` runs of each side; prints both and the ratio `a / b`.
async fn pair(
    name: &str,
    a: (&str, SocketAddr, &str),
    b: (&str, SocketAddr, &str),
    run: Duration,
    goal: &str,
) -> f64 {
    measure(a.1, a.2, Duration::from_millis(300)).await;
    measure(b.1, b.2, Duration::from_millis(300)).await;
    let (mut total_a, mut total_b) = (0.0, 0.0);
    for _ in 0..ROUNDS {
        total_a += measure(a.1, a.2, run).await;
        total_b += measure(b.1, b.2, run).await;
    }
    let (rate_a, rate_b) = (total_a / ROUNDS as f64, total_b / ROUNDS as f64);
    let ratio = rate_a / rate_b;
    println!(
        "{name}: {} {rate_a:>9.0} req/s   {} {rate_b:>9.0} req/s   ratio {ratio:.2} (goal {goal})",
        a.0, b.0
    );
    ratio
}

/// `pgbench -S` with the same client count, or `None` when pgbench is not installed.
fn pgbench(url: &str) -> Option<f64> {
    let run = |args: &[&str]| {
        std::process::Command::new("pgbench")
            .args(args)
            .arg(url)
            .output()
            .ok()
    };
    let init = run(&["-i", "-q", "-s", "1"])?;
    if !init.status.success() {
        return None;
    }
    let clients = CONCURRENCY.to_string();
    let seconds = RUN.as_secs().max(1).to_string();
    let output = run(&["-S", "-n", "-c", &clients, "-j", "2", "-T", &seconds])?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find(|line| line.starts_with("tps = "))
        .and_then(|line| {
            line.trim_start_matches("tps = ")
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        println!("load: {CONCURRENCY} keep-alive connections, {ROUNDS} x {RUN:?} per side, alternated");
        let items = || Router::new().route("/items", get(|| async { ([(header::CONTENT_TYPE, "application/json")], ITEMS) }));
        let cached = serve(full_stack(items())).await;
        let bare = serve(items()).await;
        pair(
            "1. cached GET /items",
            ("full stack", cached, "/items"),
            ("bare axum", bare, "/items"),
            RUN,
            ">= 0.85",
        )
        .await;

        let Ok(url) = std::env::var("DATABASE_URL") else {
            println!("skipping pairs 2-4: DATABASE_URL is unset");
            return;
        };
        // The database round trip: check a connection out, run one trivial query.
        let config = PoolConfig::from_url(&url)
            .expect("DATABASE_URL")
            .with_connection_limit(10);
        let pool = SharedPool::<AsyncPgConnection>::new(config).expect("pool");
        let ballast_db = Router::new()
            .route(
                "/db",
                get(|State(pool): State<SharedPool<AsyncPgConnection>>| async move {
                    let mut conn = pool.get().await?;
                    conn.batch_execute("SELECT 1").await?;
                    Ok::<_, ballast::Error>(no_store("ok"))
                }),
            )
            .with_state(pool);
        let ballast_db = serve(full_stack(ballast_db)).await;

        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url.as_str());
        let stock_pool = StockPool::builder().max_size(10).build(manager).await.expect("stock pool");
        let stock = Router::new()
            .route(
                "/db",
                get(|State(pool): State<StockPool<AsyncPgConnection>>| async move {
                    let Ok(mut conn) = pool.get().await else {
                        return (StatusCode::SERVICE_UNAVAILABLE, "no connection").into_response();
                    };
                    match conn.batch_execute("SELECT 1").await {
                        Ok(()) => "ok".into_response(),
                        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    }
                }),
            )
            .with_state(stock_pool);
        let stock = serve(stock).await;
        pair(
            "2. database round trip",
            ("full stack", ballast_db, "/db"),
            ("stock axum+bb8+diesel-async", stock, "/db"),
            RUN,
            ">= 1.15",
        )
        .await;

        let per_request_url = url.clone();
        let per_request = Router::new().route(
            "/db",
            get(move || {
                let url = per_request_url.clone();
                async move {
                    // The seed's failure mode: a new client (and connection) per request.
                    match AsyncPgConnection::establish(&url).await {
                        Ok(mut conn) => match conn.batch_execute("SELECT 1").await {
                            Ok(()) => "ok".into_response(),
                            Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                        },
                        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
                    }
                }
            }),
        );
        let per_request = serve(per_request).await;
        pair(
            "3. database round trip",
            ("full stack", ballast_db, "/db"),
            ("a connection per request", per_request, "/db"),
            RUN,
            ">= 25",
        )
        .await;

        let ballast_rate = measure(ballast_db, "/db", RUN).await;
        let database = ballast_testkit::db::PgDatabase::create(&url).await;
        match tokio::task::spawn_blocking({
            let url = database.url().to_owned();
            move || pgbench(&url)
        })
        .await
        .ok()
        .flatten()
        {
            Some(tps) => println!(
                "4. database round trip: full stack {ballast_rate:.0} req/s = {:.2} of pgbench -S ({tps:.0} tps, {CONCURRENCY} clients)",
                ballast_rate / tps
            ),
            None => println!("4. skipped: pgbench is not installed"),
        }
    });
}
