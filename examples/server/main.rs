//! The whole ballast stack in an axum app: `cargo run --example server`.
//!
//! It works with no setup: without `DATABASE_URL` it keeps its data in an embedded SQLite file,
//! `ballast-example.db`, in the current directory. Point it at PostgreSQL or MariaDB with the
//! pool's URL parameters:
//!
//! ```text
//! cargo run --example server
//! DATABASE_URL='postgres://postgres@127.0.0.1:5432/test?connection_limit=10&pool_timeout=20' cargo run --example server
//! DATABASE_URL='mysql://root@127.0.0.1:3306/test' cargo run --example server
//! ```
//!
//! `BIND` (default `127.0.0.1:3000`) sets the address; `RUST_LOG` the log level (`error`, `warn`,
//! `info` — the default — `debug`, `trace`); `REQUEST_TIMEOUT` (30) the longest a request may
//! take, in seconds; `CACHE_TTL` (60) and `CACHE_STALE_IF_ERROR` (300) how long, in seconds, a
//! cached response is fresh and then may stand in for a failing database; `PRE_DRAIN_DELAY` (0)
//! how long, in seconds, it keeps serving after SIGTERM with `/readyz` failing, so a load
//! balancer (a Kubernetes Service) stops sending traffic before the listener closes.
//!
//! Several instances: `REDIS_URL` (e.g. `redis://127.0.0.1:6379`) shares the cache's
//! invalidations with every instance on the channel `CACHE_CHANNEL` (`ballast:cache:invalidate`),
//! so a write on one drops the others' cached copies within milliseconds; while Redis is away,
//! cached entries live at most `CACHE_FALLBACK_TTL` (5) seconds. Behind PgBouncer in transaction
//! mode, add `pgbouncer=true` to `DATABASE_URL`. PostgreSQL read replicas:
//! `DATABASE_REPLICA_URLS` (URLs separated by spaces, each with the primary's pool parameters)
//! serves `GET /items` and `GET /items/{id}` from a fresh replica, or the primary (see
//! `ballast::pool::ReplicaSet`); a write's answer carries a read-your-writes token (the header
//! and cookie `ballast-read-after`), and a read that sends it back sees the write
//! (`ballast::pool::ReadYourWritesLayer`). Then try:
//!
//! ```text
//! curl -i localhost:3000/healthz                  # 200 while the process lives
//! curl -i localhost:3000/readyz                   # 200 when the database answers, else 503
//! curl -i -X POST localhost:3000/items -H 'content-type: application/json' -d '{"name":"lamp"}'
//! curl -i -X POST localhost:3000/items -H 'idempotency-key: 4f1c' -H 'content-type: application/json' -d '{"name":"desk"}'
//!                                                 # the same again: the same item, Idempotent-Replayed: true
//! curl -i localhost:3000/items                    # x-cache: MISS, then HIT
//! curl -i localhost:3000/items/1                  # the item, or a 404 problem
//! curl -i -X POST localhost:3000/items -d 'nope'  # a 4xx problem+json
//! curl -i 'localhost:3000/sleep?ms=2000'          # a slow query holding its connection
//! curl -s localhost:3000/stats                    # pool, cache, retry and shutdown figures
//! curl -s localhost:3000/metrics                  # the same, for Prometheus
//! ```
//!
//! Stop the database while it runs: database routes answer 503 problem+json with
//! `"retryable": true` and `Retry-After`, `/readyz` fails, `/healthz` stays 200; start it again
//! and everything works, the schema included. Ctrl-C (or SIGTERM) drains in-flight requests,
//! stops the cache cleanup, clears the cache, closes the pool and exits 0.
//!
//! Stack: the layers of `ballast::Stack`, in its order (its docs say why), with a 30 s request
//! timeout.
//! The database code is in `db.rs`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ballast::cache::redis::{SharedInvalidation, SharedInvalidationBuilder};
use ballast::cache::{CacheLayer, CacheRouteLayer, CleanupTask, ResponseCache};
use ballast::error::timeout::RequestTimeoutLayer;
use ballast::error::ErrorResponseLayer;
use ballast::idempotency::{Idempotency, IdempotencyKey, Outcome};
use ballast::metrics::Figures;
use ballast::pool::{Backend, PoolConfig, ReadYourWritesLayer, ReplicaSet, SharedPool};
use ballast::retry::{RetryHandle, RetryLayer};
use ballast::shutdown::{Phase, Shutdown, ShutdownHandle, ShutdownLayer};
use ballast::Error;
use diesel_async::AsyncPgConnection;
use serde::Deserialize;
use tokio::sync::OnceCell;
use tower::ServiceBuilder;

use db::{Db, Item, NewItem};

mod db;

/// The database when no `DATABASE_URL` is set: a SQLite file in the current directory.
const DEFAULT_DATABASE_URL: &str = "sqlite://ballast-example.db";
/// The address when no `BIND` is set.
const DEFAULT_BIND: &str = "127.0.0.1:3000";
/// The longest `/sleep` may hold a connection, so a typo cannot pin the pool for an hour.
const MAX_SLEEP_MS: u64 = 60_000;
/// The longest a request may take unless `REQUEST_TIMEOUT` says, retries included: past it the client gets an answer that
/// says what ran out (`RequestTimeoutLayer`: a 408 for a request body that stopped arriving, a
/// 503 for the database), a query stuck on a silently dead connection cannot hold a request
/// forever, and no checkout waits past it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the cached routes' responses are kept unless `CACHE_TTL` says.
const CACHE_TTL: Duration = Duration::from_secs(60);

#[derive(Clone)]
struct App {
    db: Db,
    /// Created on the first request that reaches the database, so the server starts while the
    /// database is down and works as soon as it answers.
    schema: Arc<OnceCell<()>>,
    cache: ResponseCache,
    retry: RetryHandle,
    shutdown: ShutdownHandle,
    /// Exactly-once `POST /items` for requests with an `Idempotency-Key`.
    keys: Idempotency,
    /// The cache's invalidations shared through Redis, when `REDIS_URL` is set.
    shared: Option<Arc<SharedInvalidation>>,
    /// Read replicas, when `DATABASE_REPLICA_URLS` names some (PostgreSQL).
    reads: Option<ReplicaSet<AsyncPgConnection>>,
}

impl App {
    async fn ensure_schema(&self) -> Result<(), Error> {
        self.schema
            .get_or_try_init(|| async {
                self.db.create_schema().await?;
                tracing::info!("schema ready");
                Ok::<_, Error>(())
            })
            .await?;
        Ok(())
    }
}

/// A response that no cache may keep.
fn no_store(response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn healthz() -> Response {
    no_store("ok")
}

/// Ready while not shutting down and the database can be reached. A pool busy with slow
/// requests is ready: readiness asks the pool (`SharedPool::readiness`), never waits for a
/// checkout behind them.
async fn readyz(State(app): State<App>) -> Response {
    if !app.shutdown.is_ready() {
        // Another instance can serve: retryable, with a Retry-After (the error layer adds it).
        return Error::from(ballast::shutdown::shutting_down()).into_response();
    }
    match app.db.readiness().await {
        Ok(()) => no_store("ready"),
        // The classified failure: `DB_CONNECTION_ERROR`, retryable, saying what is missing (the
        // database unreachable, no writable primary among the URL's hosts).
        Err(failure) => Error::from(failure).into_response(),
    }
}

async fn list_items(State(app): State<App>) -> Result<Json<Vec<Item>>, Error> {
    app.ensure_schema().await?;
    match &app.reads {
        Some(reads) => Ok(Json(db::replica_items(reads).await?)),
        None => Ok(Json(app.db.items().await?)),
    }
}

async fn get_item(State(app): State<App>, Path(id): Path<i64>) -> Result<Json<Item>, Error> {
    app.ensure_schema().await?;
    match &app.reads {
        Some(reads) => Ok(Json(db::replica_item(reads, id).await?)),
        None => Ok(Json(app.db.item(id).await?)),
    }
}

/// `POST /items`. With an `Idempotency-Key` header the insert is recorded with its key in one
/// transaction: a repeat with the same key answers the first outcome again instead of inserting
/// twice, so even a failure whose outcome is unknown may be repeated (`"retryable": true`).
async fn create_item(
    State(app): State<App>,
    key: Option<IdempotencyKey>,
    // A body that is not this JSON is answered with a 4xx problem by the error layer.
    Json(new): Json<NewItem>,
) -> Result<Outcome, Error> {
    let name = new.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 255 {
        return Err(Error::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_NAME",
            "The name must have 1 to 255 characters.",
        ));
    }
    app.ensure_schema().await?;
    // The cache drops the stored `/items` when this answers a success (RFC 9111 §4.4).
    app.db.create_item(&app.keys, key.as_ref(), name).await
}

#[derive(Debug, Deserialize)]
struct SleepQuery {
    ms: Option<u64>,
}

async fn sleep(State(app): State<App>, Query(query): Query<SleepQuery>) -> Result<Response, Error> {
    let ms = query.ms.unwrap_or(1000);
    if ms > MAX_SLEEP_MS {
        return Err(Error::new(
            StatusCode::BAD_REQUEST,
            "INVALID_SLEEP",
            "ms must be at most 60000.",
        ));
    }
    app.db.sleep(ms).await?;
    Ok(no_store(Json(serde_json::json!({ "slept_ms": ms }))))
}

/// `/metrics`: the figures of `/stats` for Prometheus (`ballast::metrics`).
async fn metrics(State(app): State<App>) -> Response {
    let (pool, cache) = (app.db.stats(), app.cache.stats().await);
    let (retry, shutdown) = (app.retry.stats(), app.shutdown.stats());
    let replicas = app.reads.as_ref().map(ReplicaSet::stats);
    let mut figures = Figures::new()
        .pool(&pool)
        .cache(&cache)
        .retry(&retry)
        .shutdown(&shutdown);
    if let Some(replicas) = &replicas {
        figures = figures.replicas(replicas);
    }
    let content_type = [(header::CONTENT_TYPE, ballast::metrics::CONTENT_TYPE)];
    no_store((content_type, ballast::metrics::render(&figures)))
}

async fn stats(State(app): State<App>) -> Response {
    no_store(Json(serde_json::json!({
        "pool": app.db.stats(),
        "cache": app.cache.stats().await,
        "retry": app.retry.stats(),
        "shutdown": app.shutdown.stats(),
        "shared_invalidation": app.shared.as_ref().map(|shared| shared.stats()),
        "replicas": app.reads.as_ref().map(ReplicaSet::stats),
    })))
}

/// Reads the settings; a bad one ends the process with a one-line message naming it.
/// The settings the environment gives.
struct Settings {
    pool: PoolConfig,
    addr: SocketAddr,
    cache: ResponseCache,
    cache_ttl: Duration,
    request_timeout: Duration,
    pre_drain_delay: Duration,
    /// `REDIS_URL`: the cache's invalidations shared with every instance on the channel.
    shared_invalidation: Option<SharedInvalidationBuilder>,
    /// `DATABASE_REPLICA_URLS`: PostgreSQL read replicas.
    replicas: Vec<PoolConfig>,
}

fn settings() -> Result<Settings, String> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
    let pool = PoolConfig::from_url(&url).map_err(|error| format!("DATABASE_URL: {error}"))?;
    let replicas = std::env::var("DATABASE_REPLICA_URLS")
        .unwrap_or_default()
        .split_whitespace()
        .map(|url| {
            let replica = PoolConfig::from_url(url)
                .map_err(|error| format!("DATABASE_REPLICA_URLS: {error}"))?;
            if replica.backend() != Backend::Postgres || pool.backend() != Backend::Postgres {
                return Err(
                    "DATABASE_REPLICA_URLS: read replicas are PostgreSQL's, beside a \
                            PostgreSQL DATABASE_URL"
                        .to_owned(),
                );
            }
            Ok(replica)
        })
        .collect::<Result<Vec<_>, String>>()?;
    let bind = std::env::var("BIND").unwrap_or_else(|_| DEFAULT_BIND.to_owned());
    let addr = bind
        .parse()
        .map_err(|_| format!("BIND: {bind:?} is not an address such as 127.0.0.1:3000"))?;
    let cache_ttl = seconds_setting("CACHE_TTL")?.unwrap_or(CACHE_TTL);
    let mut cache = ResponseCache::builder().ttl(cache_ttl);
    if let Some(window) = seconds_setting("CACHE_STALE_IF_ERROR")? {
        cache = cache.stale_if_error(window);
    }
    let cache = cache
        .build()
        .map_err(|error| format!("CACHE_TTL: {error}"))?;
    let request_timeout = match seconds_setting("REQUEST_TIMEOUT")? {
        Some(timeout) if timeout.is_zero() => {
            return Err("REQUEST_TIMEOUT: must be greater than 0".to_owned())
        }
        Some(timeout) => timeout,
        None => REQUEST_TIMEOUT,
    };
    let pre_drain_delay = seconds_setting("PRE_DRAIN_DELAY")?.unwrap_or(Duration::ZERO);
    let shared_invalidation = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            let mut shared = SharedInvalidation::builder(url);
            if let Ok(channel) = std::env::var("CACHE_CHANNEL") {
                shared = shared.channel(channel);
            }
            if let Some(ttl) = seconds_setting("CACHE_FALLBACK_TTL")? {
                shared = shared.fallback_ttl(ttl);
            }
            Some(shared)
        }
        _ => None,
    };
    Ok(Settings {
        pool,
        addr,
        cache,
        cache_ttl,
        request_timeout,
        pre_drain_delay,
        shared_invalidation,
        replicas,
    })
}

/// An optional setting in seconds, fractions allowed.
fn seconds_setting(name: &str) -> Result<Option<Duration>, String> {
    let Ok(value) = std::env::var(name) else {
        return Ok(None);
    };
    value
        .parse::<f64>()
        .ok()
        .filter(|seconds| seconds.is_finite() && (0.0..=86_400.0).contains(seconds))
        .map(|seconds| Some(Duration::from_secs_f64(seconds)))
        .ok_or_else(|| format!("{name}: {value:?} is not a number of seconds from 0 to 86400"))
}

fn log_level() -> tracing::Level {
    match std::env::var("RUST_LOG")
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        "error" => tracing::Level::ERROR,
        "warn" => tracing::Level::WARN,
        "debug" => tracing::Level::DEBUG,
        "trace" => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_max_level(log_level())
        .with_writer(std::io::stderr)
        .init();
    let Settings {
        pool: config,
        addr,
        cache,
        cache_ttl,
        request_timeout,
        pre_drain_delay,
        shared_invalidation,
        replicas,
    } = match settings() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(?config, "configuration");
    let db = match Db::open(config) {
        Ok(db) => db,
        Err(error) => {
            eprintln!("error: DATABASE_URL: {error}");
            return ExitCode::from(2);
        }
    };
    // Read replicas beside a PostgreSQL primary.
    let reads = match (&db, replicas.is_empty()) {
        (Db::Postgres(primary), false) => {
            let mut set = ReplicaSet::builder(primary.clone());
            for replica in replicas {
                match SharedPool::new(replica) {
                    Ok(pool) => set = set.replica(pool),
                    Err(error) => {
                        eprintln!("error: DATABASE_REPLICA_URLS: {error}");
                        return ExitCode::from(2);
                    }
                }
            }
            Some(set.build())
        }
        _ => None,
    };
    // Several instances: a write on one drops the others' cached copies too.
    let shared = match shared_invalidation.map(|shared| shared.start(&cache)) {
        Some(Ok(shared)) => Some(Arc::new(shared)),
        Some(Err(error)) => {
            eprintln!("error: REDIS_URL: {error}");
            return ExitCode::from(2);
        }
        None => None,
    };
    let cleanup: CleanupTask = cache.spawn_cleanup();
    let retry = RetryLayer::new();

    let (clearing, closing, unsharing) = (cache.clone(), db.clone(), shared.clone());
    let closing_replicas = reads.clone();
    let shutdown = Shutdown::builder()
        .pre_drain_delay(pre_drain_delay)
        .hook(
            "stop shared invalidation",
            Duration::from_secs(2),
            move || async move {
                if let Some(shared) = unsharing {
                    shared.stop().await;
                }
                Ok::<_, String>(())
            },
        )
        .hook(
            "stop cache cleanup",
            Duration::from_secs(2),
            move || async move {
                cleanup.stop().await;
                Ok::<_, String>(())
            },
        )
        .hook("clear cache", Duration::from_secs(2), move || async move {
            clearing.clear().await;
            Ok::<_, String>(())
        })
        .hook("close pool", Duration::from_secs(5), move || async move {
            if let Some(reads) = closing_replicas {
                for replica in reads.replicas() {
                    replica.close().await;
                }
            }
            closing.close().await;
            Ok::<_, String>(())
        })
        .build();
    shutdown.install_panic_hook();
    let handle = shutdown.handle();

    let app_state = App {
        db,
        schema: Arc::new(OnceCell::new()),
        cache: cache.clone(),
        retry: retry.handle(),
        shutdown: handle.clone(),
        keys: Idempotency::new(),
        shared,
        reads: reads.clone(),
    };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        // The routes the cache may answer, for up to CACHE_TTL: caching is a route's choice.
        .route(
            "/items",
            get(list_items)
                .layer(CacheRouteLayer::ttl(cache_ttl))
                .post(create_item),
        )
        .route(
            "/items/{id}",
            get(get_item).layer(CacheRouteLayer::ttl(cache_ttl)),
        )
        .route("/sleep", get(sleep))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .with_state(app_state);
    // Read-your-writes with replicas: a write's answer carries a token (header and cookie), and
    // a read that sends it back sees the write. Innermost, so the cache and the retry layer see
    // what it did.
    let app = match reads {
        Some(reads) => app.layer(ReadYourWritesLayer::new(reads)),
        None => app,
    };
    // Around the router, not inside it (`Router::layer` would put the stack on every route, and
    // axum clones a route's whole service for each request): the server keeps one stack per
    // connection, and the router is reached only by what the cache does not answer.
    let app = ServiceBuilder::new()
        .layer(ShutdownLayer::new(handle.clone()).serve_while_draining(["/healthz", "/readyz"]))
        .layer(ErrorResponseLayer::new())
        .layer({
            // A request body that stalled is answered 408 when the drain begins.
            let handle = handle.clone();
            RequestTimeoutLayer::new(request_timeout)
                .draining(move || handle.phase() >= Phase::Draining)
        })
        .layer(CacheLayer::new(cache).x_cache_header(true))
        .layer(retry)
        .service(app);

    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("error: BIND: cannot listen on {addr}: {error}");
            return ExitCode::from(2);
        }
    };
    let local = listener
        .local_addr()
        .map_or_else(|_| addr.to_string(), |a| a.to_string());
    tracing::info!("listening on http://{local}");
    println!("listening on {local}");
    // Signals, the server's timeouts and connection cap, the drain and the hooks.
    shutdown.serve(listener, app).await
}
