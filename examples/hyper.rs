//! The same stack on plain hyper and hyper-util, without axum: the layers are plain Tower.
//!
//! ```text
//! cargo run --example hyper
//! curl -i localhost:3001/items          # a count of items, cached (x-cache)
//! curl -i localhost:3001/missing        # a 404 problem
//! DATABASE_URL='postgres://postgres@127.0.0.1:1/test' cargo run --example hyper
//! curl -i localhost:3001/items          # 503 problem+json, retryable, Retry-After
//! ```
//!
//! The handler is a `tower::service_fn` whose errors are classified failures returned as `Err`:
//! `ErrorResponseLayer` turns them into responses, so the stack's error type is `Infallible`.
//! `BIND` defaults to `127.0.0.1:3001`; `DATABASE_URL` to an in-memory SQLite database (a
//! `postgres://` URL works too). Ctrl-C drains and exits.

use std::convert::Infallible;
use std::time::Duration;

use ballast::cache::{CacheLayer, ResponseCache};
use ballast::error::{BoxError, ErrorResponseLayer};
use ballast::pool::{Backend, PoolConfig, SharedPool};
use ballast::retry::{RetryBody, RetryLayer};
use ballast::shutdown::{Shutdown, ShutdownLayer};
use ballast::Failure;
use bytes::Bytes;
use diesel::sql_types::BigInt;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tower::ServiceBuilder;

type SqlitePool = SharedPool<SyncConnectionWrapper<diesel::SqliteConnection>>;

#[derive(Clone)]
enum Db {
    Postgres(SharedPool<AsyncPgConnection>),
    Sqlite(SqlitePool),
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// `GET /items`: how many items there are.
async fn count(db: &Db) -> Result<i64, Failure> {
    let sql = "SELECT count(*) AS count FROM items";
    let count: Count = match db {
        Db::Postgres(pool) => {
            let mut conn = pool.get().await?;
            conn.batch_execute("CREATE TABLE IF NOT EXISTS items (id BIGSERIAL PRIMARY KEY)")
                .await?;
            diesel::sql_query(sql).get_result(&mut *conn).await?
        }
        Db::Sqlite(pool) => {
            let mut conn = pool.get().await?;
            conn.batch_execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY)")
                .await?;
            diesel::sql_query(sql).get_result(&mut *conn).await?
        }
    };
    Ok(count.count)
}

async fn route(
    db: Db,
    request: Request<RetryBody<Incoming>>,
) -> Result<Response<Full<Bytes>>, BoxError> {
    match request.uri().path() {
        "/healthz" => Ok(Response::new(Full::new(Bytes::from_static(b"ok")))),
        "/items" => {
            // A failure here is returned as the service's error; the error layer renders it.
            let count = count(&db).await?;
            Ok(Response::new(Full::new(Bytes::from(format!(
                "{{\"items\":{count}}}"
            )))))
        }
        _ => Err(Box::new(ballast::Error::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "No such resource.",
        ))),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite::memory:".to_owned());
    let db = match PoolConfig::from_url(&url) {
        Ok(config) if config.backend() == Backend::Postgres => SharedPool::init(config)
            .map(Db::Postgres)
            .map_err(|e| e.to_string()),
        Ok(config) if config.backend() == Backend::Sqlite => SharedPool::init(config)
            .map(Db::Sqlite)
            .map_err(|e| e.to_string()),
        Ok(_) => Err("this example speaks PostgreSQL and SQLite".to_owned()),
        Err(error) => Err(error.to_string()),
    };
    let db = match db {
        Ok(db) => db,
        Err(message) => {
            eprintln!("error: DATABASE_URL: {message}");
            return std::process::ExitCode::from(2);
        }
    };
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3001".to_owned());
    let listener = match tokio::net::TcpListener::bind(&bind).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("error: BIND: cannot listen on {bind}: {error}");
            return std::process::ExitCode::from(2);
        }
    };

    let cache = ResponseCache::builder()
        .store_unmarked(true)
        .build()
        .expect("the default cache settings are valid");
    let closing = db.clone();
    let shutdown = Shutdown::builder()
        .drain_deadline(Duration::from_secs(10))
        .hook("close pool", Duration::from_secs(5), move || async move {
            match closing {
                Db::Postgres(pool) => pool.close().await,
                Db::Sqlite(pool) => pool.close().await,
            }
            Ok::<_, Infallible>(())
        })
        .build();
    if let Err(error) = shutdown.listen_for_signals() {
        eprintln!("error: signals: {error}");
        return std::process::ExitCode::from(2);
    }
    let handle = shutdown.handle();

    // In `ballast::Stack`'s order (its docs say why), as in the axum example.
    let service = ServiceBuilder::new()
        .layer(ShutdownLayer::new(handle.clone()))
        .layer(ErrorResponseLayer::new())
        .layer(CacheLayer::new(cache).x_cache_header(true))
        .layer(RetryLayer::new())
        .service_fn(move |request| route(db.clone(), request));

    println!(
        "listening on {}",
        listener.local_addr().map_or(bind, |a| a.to_string())
    );
    let draining = handle.draining();
    let server = async move {
        let graceful = GracefulShutdown::new();
        tokio::pin!(draining);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service.clone()));
                    let connection = graceful.watch(connection);
                    tokio::spawn(connection);
                }
                () = &mut draining => break,
            }
        }
        // Stop accepting; idle connections close, busy ones finish.
        drop(listener);
        graceful.shutdown().await;
    };
    let summary = shutdown.run(server).await;
    std::process::ExitCode::from(u8::try_from(summary.exit_code()).unwrap_or(1))
}
