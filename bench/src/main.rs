//! The HTTP load bench: what ships — the example server, run as its own process with its whole
//! stack — against peer stacks beside it, all loaded by `wrk` (one thread, 64 connections) in
//! one run, alternating the subjects round by round so machine drift cancels out.
//!
//! ```text
//! apt-get install wrk
//! cargo build --release --example server
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run --release -p ballast-bench --features peers
//! ```
//!
//! `BENCH_SECONDS` (8) sets each run's length, `BENCH_ROUNDS` (3) the rounds; each subject's
//! figure is its median, with the CPU time and the context switches its serving process spent
//! per request (Linux: the example server's own process; the peers share the bench's, one
//! subject loaded at a time).
//! `BENCH_ONLY` (part of a subject's name, e.g. `sqlx`) loads only the subjects it names, to
//! profile one (`perf record -p` on the process serving it). Everything runs on a database of its own, `ballast_bench`, created on
//! the server `DATABASE_URL` names.
//!
//! - **Database round trip** (`GET /sleep?ms=0`: a checkout and `SELECT pg_sleep($1)`, pool of
//!   10): the example server against axum with, as their users get them, bb8 + diesel-async
//!   (stock: a ping at every checkout), the same with the ping off, deadpool + diesel-async,
//!   and sqlx's `PgPool`. The diesel peers run the statement as a cached prepared statement,
//!   as the example server does; sqlx caches its own. Goal: the example server ≥ 1.0 × sqlx.
//!   Three more subjects are not peers but tell the costs apart: ballast's pool alone in this
//!   process, the same with the example server's layers, and the example server with
//!   `statement_timeout=deadline` (a `SET statement_timeout` per checkout).
//! - **Cached read** (`GET /items`, a cache hit through the whole stack) against a bare axum
//!   handler answering the same bytes. Goal: ≥ 0.90.

use std::process::ExitCode;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use ballast_pool::{PoolConfig, SharedPool};
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{Double, Untyped};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use tokio::process::Command;

use common::{database_url, exit, setting, start_example, wrk, Run};

mod common;

/// The database the bench creates and uses.
const DATABASE: &str = "ballast_bench";
/// Every pool's size.
const POOL_SIZE: u32 = 10;
/// What every `/sleep` answers.
const SLEPT: &str = r#"{"slept_ms":0}"#;

/// `SELECT pg_sleep($1)`, cached as a prepared statement by diesel (its SQL never changes).
#[derive(QueryId)]
struct PgSleep(f64);

impl Query for PgSleep {
    type SqlType = Untyped;
}

impl QueryFragment<Pg> for PgSleep {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> diesel::QueryResult<()> {
        out.push_sql("SELECT pg_sleep(");
        out.push_bind_param::<Double, f64>(&self.0)?;
        out.push_sql(")");
        Ok(())
    }
}

type Bb8Pool = bb8::Pool<AsyncDieselConnectionManager<AsyncPgConnection>>;
type DeadPool = diesel_async::pooled_connection::deadpool::Pool<AsyncPgConnection>;

/// What every diesel peer's `/sleep` does once it has a connection, whichever pool gave it.
async fn sleep_on(
    conn: Result<impl std::ops::DerefMut<Target = AsyncPgConnection>, impl std::fmt::Debug>,
) -> Result<axum::response::Response, StatusCode> {
    let mut conn = conn.map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    PgSleep(0.0)
        .execute(&mut *conn)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(no_store(SLEPT).into_response())
}

async fn sleep_bb8(State(pool): State<Bb8Pool>) -> Result<axum::response::Response, StatusCode> {
    sleep_on(pool.get().await).await
}

async fn sleep_deadpool(
    State(pool): State<DeadPool>,
) -> Result<axum::response::Response, StatusCode> {
    sleep_on(pool.get().await).await
}

async fn sleep_ballast_pool(
    State(pool): State<SharedPool<AsyncPgConnection>>,
) -> Result<axum::response::Response, StatusCode> {
    sleep_on(pool.get().await).await
}

async fn sleep_sqlx(State(pool): State<sqlx::PgPool>) -> Result<impl IntoResponse, StatusCode> {
    sqlx::query("SELECT pg_sleep($1)")
        .bind(0.0_f64)
        .execute(&pool)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(no_store(SLEPT))
}

/// What every `/sleep` answers, as the example server does: never cached.
fn no_store(body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
}

fn json(body: impl Into<axum::body::Body>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], body.into())
}

/// Serves `router` on a free local port; returns the base URL.
async fn serve(router: Router) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(format!("http://{addr}"))
}

/// `curl`'s output for one request (`-i` adds the headers).
async fn curl(args: &[&str]) -> Result<String, String> {
    let output = Command::new("curl")
        .arg("-s")
        .args(args)
        .output()
        .await
        .map_err(|error| format!("curl: {error}"))?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// CPU time used so far by process `pid` (user and system), in clock ticks, where `/proc`
/// tells (Linux).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |index: usize| fields.get(index)?.parse::<u64>().ok();
    // utime and stime are the 14th and 15th fields; the 3rd is the first after the name.
    Some(field(11)? + field(12)?)
}

/// Context switches of every thread of process `pid` so far, voluntary and not (Linux).
fn context_switches(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .filter(|line| line.contains("ctxt_switches:"))
            .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Some(total)
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let base = url.split('?').next().unwrap_or(url);
    match base.rsplit_once('/') {
        Some((server, _)) if server.contains("://") && !server.ends_with('/') => {
            format!("{server}/{database}")
        }
        _ => format!("{}/{database}", base.trim_end_matches('/')),
    }
}

/// A subject: its name, the URL `wrk` loads and the process serving it.
struct Subject {
    name: &'static str,
    url: String,
    pid: u32,
    rates: Vec<f64>,
    errors: u64,
    /// CPU ticks and context switches of the serving process, and the requests it served
    /// meanwhile.
    cpu: (u64, u64, u64),
}

impl Subject {
    fn new(name: &'static str, url: String, pid: u32) -> Self {
        Subject {
            name,
            url,
            pid,
            rates: Vec::new(),
            errors: 0,
            cpu: (0, 0, 0),
        }
    }

    /// The serving process's CPU time per request, in microseconds (a tick is 10 ms on Linux),
    /// and its context switches per request.
    fn cpu_per_request(&self) -> String {
        match self.cpu {
            (ticks, switches, requests) if requests > 0 && ticks > 0 => {
                format!(
                    "{:>6.1} µs CPU, {:.2} switches/request",
                    ticks as f64 * 10_000.0 / requests as f64,
                    switches as f64 / requests as f64
                )
            }
            _ => String::new(),
        }
    }

    fn median(&self) -> f64 {
        let mut rates = self.rates.clone();
        rates.sort_by(f64::total_cmp);
        rates.get(rates.len() / 2).copied().unwrap_or(0.0)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    exit(run().await)
}

async fn run() -> Result<(), String> {
    let Some(url) = database_url("HTTP load bench") else {
        return Ok(());
    };
    let (seconds, rounds) = (setting("BENCH_SECONDS", 8), setting("BENCH_ROUNDS", 3));

    // A database of the bench's own: the example's `items` table starts empty.
    let admin = sqlx::PgPool::connect(&url)
        .await
        .map_err(|error| format!("DATABASE_URL: {error}"))?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(DATABASE)
        .fetch_optional(&admin)
        .await
        .map_err(|error| error.to_string())?;
    if exists.is_none() {
        sqlx::query(&format!("CREATE DATABASE {DATABASE}"))
            .execute(&admin)
            .await
            .map_err(|error| error.to_string())?;
    }
    admin.close().await;
    let db_url = with_database(&url, DATABASE);

    let (example_process, example) = start_example(&[
        (
            "DATABASE_URL",
            &format!("{db_url}?connection_limit={POOL_SIZE}"),
        ),
        // Hits stay fresh for the whole run.
        ("CACHE_TTL", "3600"),
    ])
    .await?;
    let example_pid = example_process.id().unwrap_or(0);
    // The same with each checkout's statements bounded by its request's time left
    // (`statement_timeout=deadline`: one `SET` per checkout), to state what that costs.
    let (deadline_process, deadline_example) = start_example(&[
        (
            "DATABASE_URL",
            &format!("{db_url}?connection_limit={POOL_SIZE}&statement_timeout=deadline"),
        ),
        ("CACHE_TTL", "3600"),
    ])
    .await?;
    let deadline_pid = deadline_process.id().unwrap_or(0);
    let own_pid = std::process::id();
    for name in ["desk", "lamp", "chair"] {
        curl(&[
            "-X",
            "POST",
            &format!("{example}/items"),
            "-H",
            "content-type: application/json",
            "-d",
            &format!(r#"{{"name":"{name}"}}"#),
        ])
        .await?;
    }
    let items = curl(&[&format!("{example}/items")]).await?;
    let hit = curl(&["-i", &format!("{example}/items")]).await?;
    if !hit.to_ascii_lowercase().contains("x-cache: hit") {
        return Err(format!("GET /items is not a cache hit:\n{hit}"));
    }

    let manager = || AsyncDieselConnectionManager::<AsyncPgConnection>::new(db_url.as_str());
    let stock: Bb8Pool = bb8::Pool::builder()
        .max_size(POOL_SIZE)
        .build(manager())
        .await
        .map_err(|error| error.to_string())?;
    let no_ping: Bb8Pool = bb8::Pool::builder()
        .max_size(POOL_SIZE)
        .test_on_check_out(false)
        .build(manager())
        .await
        .map_err(|error| error.to_string())?;
    let deadpool = DeadPool::builder(manager())
        .max_size(POOL_SIZE as usize)
        .build()
        .map_err(|error| error.to_string())?;
    let sqlx_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .connect_lazy(&db_url)
        .map_err(|error| error.to_string())?;
    let config = PoolConfig::from_url(&db_url).map_err(|error| error.to_string())?;
    let ballast_pool =
        SharedPool::<AsyncPgConnection>::new(config.with_connection_limit(POOL_SIZE))
            .map_err(|error| error.to_string())?;
    let serve = |router: Router| async move { serve(router).await.map_err(|e| e.to_string()) };
    let bare = serve(Router::new().route(
        "/items",
        get(move || {
            let items = items.clone();
            async move { json(items) }
        }),
    ))
    .await?;
    let stock = serve(
        Router::new()
            .route("/sleep", get(sleep_bb8))
            .with_state(stock),
    )
    .await?;
    let no_ping = serve(
        Router::new()
            .route("/sleep", get(sleep_bb8))
            .with_state(no_ping),
    )
    .await?;
    let deadpool = serve(
        Router::new()
            .route("/sleep", get(sleep_deadpool))
            .with_state(deadpool),
    )
    .await?;
    let pool_only = serve(
        Router::new()
            .route("/sleep", get(sleep_ballast_pool))
            .with_state(ballast_pool.clone()),
    )
    .await?;
    let shutdown = ballast::shutdown::Shutdown::builder().build();
    let layered = serve(
        Router::new()
            .route("/sleep", get(sleep_ballast_pool))
            .with_state(ballast_pool.clone())
            .layer(
                tower::ServiceBuilder::new()
                    .layer(ballast::shutdown::ShutdownLayer::new(shutdown.handle()))
                    .layer(ballast::error::ErrorResponseLayer::new())
                    .layer(ballast::error::timeout::RequestTimeoutLayer::new(
                        Duration::from_secs(30),
                    ))
                    .layer(
                        ballast::cache::CacheLayer::new(
                            ballast::cache::ResponseCache::builder()
                                .store_unmarked(true)
                                .build()
                                .unwrap(),
                        )
                        .x_cache_header(true),
                    )
                    .layer(ballast::retry::RetryLayer::new()),
            ),
    )
    .await?;
    let sqlx_url = serve(
        Router::new()
            .route("/sleep", get(sleep_sqlx))
            .with_state(sqlx_pool),
    )
    .await?;

    let mut round_trip = [
        Subject::new(
            "ballast example server",
            format!("{example}/sleep?ms=0"),
            example_pid,
        ),
        Subject::new("axum + bb8 stock (ping)", format!("{stock}/sleep"), own_pid),
        // Not a peer: the example server with `statement_timeout=deadline`.
        Subject::new(
            "example, statement deadline",
            format!("{deadline_example}/sleep?ms=0"),
            deadline_pid,
        ),
        Subject::new("axum + bb8, ping off", format!("{no_ping}/sleep"), own_pid),
        Subject::new("axum + deadpool", format!("{deadpool}/sleep"), own_pid),
        Subject::new("axum + sqlx PgPool", format!("{sqlx_url}/sleep"), own_pid),
        // Not a peer: ballast's pool without the layers, to tell the pool's cost from theirs.
        Subject::new(
            "axum + ballast pool, no layers",
            format!("{pool_only}/sleep"),
            own_pid,
        ),
        // Not a peer either: the same with the example server's layers, in this process.
        Subject::new(
            "axum + ballast pool + layers",
            format!("{layered}/sleep"),
            own_pid,
        ),
    ];
    let mut cached = [
        Subject::new(
            "ballast example server (hit)",
            format!("{example}/items"),
            example_pid,
        ),
        Subject::new("bare axum, same bytes", format!("{bare}/items"), own_pid),
    ];
    // `BENCH_ONLY` (a part of a subject's name) loads only the subjects it names, for profiling
    // one of them; the table then shows only those.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let chosen = |subject: &&mut Subject| subject.name.contains(only.as_str());
    // Warm every pool and statement cache, then alternate.
    for subject in round_trip
        .iter_mut()
        .chain(cached.iter_mut())
        .filter(chosen)
    {
        wrk(&subject.url, 64, 2).await?;
    }
    for round in 1..=rounds {
        for subject in round_trip
            .iter_mut()
            .chain(cached.iter_mut())
            .filter(chosen)
        {
            let before = (cpu_ticks(subject.pid), context_switches(subject.pid));
            let Run {
                rate,
                requests,
                errors,
                ..
            } = wrk(&subject.url, 64, seconds).await?;
            let after = (cpu_ticks(subject.pid), context_switches(subject.pid));
            if let ((Some(t0), Some(s0)), (Some(t1), Some(s1))) = (before, after) {
                subject.cpu.0 += t1.saturating_sub(t0);
                subject.cpu.1 += s1.saturating_sub(s0);
                subject.cpu.2 += requests;
            }
            subject.rates.push(rate);
            subject.errors += errors;
            eprintln!("round {round}: {:<30} {rate:>9.0} req/s", subject.name);
        }
    }

    println!(
        "\nHTTP load: wrk -t1 -c64 -d{seconds}s, {rounds} rounds alternated, PostgreSQL, pools of \
         {POOL_SIZE}; median req/s"
    );
    let sqlx_rate = round_trip[5].median();
    let stock_rate = round_trip[1].median();
    println!("  database round trip (a checkout and SELECT pg_sleep($1))");
    for subject in round_trip
        .iter()
        .filter(|subject| !subject.rates.is_empty())
    {
        let rate = subject.median();
        println!(
            "    {:<30} {rate:>9.0}   {:>5.2} × sqlx   {:>5.2} × stock bb8   {}{}",
            subject.name,
            rate / sqlx_rate,
            rate / stock_rate,
            subject.cpu_per_request(),
            errors(subject.errors)
        );
    }
    let bare_rate = cached[1].median();
    println!("  cached read (GET /items)");
    for subject in cached.iter().filter(|subject| !subject.rates.is_empty()) {
        let rate = subject.median();
        println!(
            "    {:<30} {rate:>9.0}   {:>5.2} × bare axum   {}{}",
            subject.name,
            rate / bare_rate,
            subject.cpu_per_request(),
            errors(subject.errors)
        );
    }
    // The cached read over HTTP/2 with prior knowledge, by h2load: 16 connections, 8 streams
    // each, the same two servers (bare axum with its `http2` feature).
    let mut h2 = [Vec::new(), Vec::new()];
    if only.is_empty() {
        for _ in 1..=rounds {
            for (index, subject) in cached.iter().enumerate() {
                match h2load(&subject.url, seconds).await {
                    Ok(rate) => h2[index].push(rate),
                    Err(error) => eprintln!("h2load: {error}"),
                }
            }
        }
    }
    if h2.iter().all(|rates| !rates.is_empty()) {
        let median = |rates: &Vec<f64>| {
            let mut rates = rates.clone();
            rates.sort_by(f64::total_cmp);
            rates[rates.len() / 2]
        };
        let bare = median(&h2[1]);
        println!("  cached read over HTTP/2 (h2load -c16 -m8 -D{seconds})");
        for (subject, rates) in cached.iter().zip(&h2) {
            let rate = median(rates);
            println!(
                "    {:<30} {rate:>9.0}   {:>5.2} × bare axum",
                subject.name,
                rate / bare
            );
        }
    }
    if !only.is_empty() {
        return Ok(());
    }
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    let ballast = round_trip[0].median();
    println!(
        "statement_timeout=deadline (a SET per checkout): {:.2} × the example server's round trip",
        round_trip[2].median() / ballast
    );
    println!(
        "goals: round trip ≥ 1.00 × sqlx: {:.2}, {}; cached hit ≥ 0.90 × bare axum: {:.2}, {}",
        ballast / sqlx_rate,
        verdict(ballast >= sqlx_rate),
        cached[0].median() / bare_rate,
        verdict(cached[0].median() >= 0.9 * bare_rate)
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

/// Requests a second of one `h2load` run (HTTP/2 with prior knowledge) against `url`.
async fn h2load(url: &str, seconds: u64) -> Result<f64, String> {
    let output = Command::new("h2load")
        .args(["-c16", "-m8", &format!("-D{seconds}"), url])
        .output()
        .await
        .map_err(|error| format!("{error} (apt-get install nghttp2-client)"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix("finished in ")?;
            rest.split(", ")
                .nth(1)?
                .strip_suffix(" req/s")?
                .parse()
                .ok()
        })
        .ok_or_else(|| format!("h2load printed no rate: {text}"))
}

fn errors(count: u64) -> String {
    if count == 0 {
        String::new()
    } else {
        format!("   ({count} error responses)")
    }
}
