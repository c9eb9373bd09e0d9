//! A small server the process tests drive with real signals (it needs the `serve` feature).
//!
//! ```text
//! cargo run -p ballast-shutdown --features serve --example shutdown-demo
//! ```
//!
//! Environment: `BIND` (default `127.0.0.1:0`), `DRAIN_MS` (drain deadline, default 25000),
//! `PRE_DRAIN_MS` (default 0), `HOOK_TIMEOUT_MS` (default 5000), `SLOW_HOOK_MS` (adds a hook that
//! takes this long), `DATABASE_URL` (adds a PostgreSQL pool, closed by a hook). It prints
//! `listening on ADDR`, one `hook: NAME` line per hook as it runs, and `summary: ...` at the end,
//! then exits with the summary's code.
//!
//! Routes: `/healthz`, `/readyz`, `/work?ms=N` (answers after N ms), `/forever` (never
//! answers), `/db?ms=N` (one `pg_sleep` on a pooled connection), `/stats`.

use std::collections::HashMap;
use std::future::IntoFuture;
use std::io::Write;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use ballast_pool::{PoolConfig, SharedPool};
use ballast_shutdown::{Shutdown, ShutdownHandle, ShutdownLayer};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

#[derive(Clone)]
struct App {
    shutdown: ShutdownHandle,
    pool: Option<SharedPool<AsyncPgConnection>>,
}

fn env_ms(name: &str, default: u64) -> Duration {
    Duration::from_millis(
        std::env::var(name)
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(default),
    )
}

/// Prints a line to stdout at once (the tests read it while the process runs).
fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let pool = std::env::var("DATABASE_URL").ok().map(|url| {
        let config = PoolConfig::from_url(&url).unwrap_or_else(|error| {
            say(&format!("bad DATABASE_URL: {error}"));
            std::process::exit(2);
        });
        SharedPool::<AsyncPgConnection>::init(config).unwrap_or_else(|error| {
            say(&format!("pool: {error}"));
            std::process::exit(2);
        })
    });

    // A background task standing in for the cache cleanup.
    let (stop_cleanup, mut cleanup_stopped) = tokio::sync::oneshot::channel::<()>();
    let cleanup = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = &mut cleanup_stopped => return,
            }
        }
    });

    let hook_timeout = env_ms("HOOK_TIMEOUT_MS", 5000);
    let mut builder = Shutdown::builder()
        .pre_drain_delay(env_ms("PRE_DRAIN_MS", 0))
        .drain_deadline(env_ms("DRAIN_MS", 25_000))
        .hook("stop cache cleanup", hook_timeout, move || async move {
            say("hook: stop cache cleanup");
            let _ = stop_cleanup.send(());
            cleanup.await.map_err(|error| error.to_string())
        });
    if let Ok(slow) = std::env::var("SLOW_HOOK_MS") {
        let slow = Duration::from_millis(slow.parse().unwrap_or(0));
        builder = builder.hook("slow hook", hook_timeout, move || async move {
            say("hook: slow hook");
            tokio::time::sleep(slow).await;
            Ok::<_, String>(())
        });
    }
    let closing = pool.clone();
    builder = builder.hook("close pool", hook_timeout, move || async move {
        say("hook: close pool");
        if let Some(pool) = closing {
            pool.close().await;
        }
        Ok::<_, String>(())
    });
    let shutdown = builder.build();
    if let Err(error) = shutdown.listen_for_signals() {
        say(&format!("signals: {error}"));
        std::process::exit(2);
    }
    shutdown.install_panic_hook();
    let handle = shutdown.handle();

    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(app): State<App>| async move {
                if app.shutdown.is_ready() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        )
        .route(
            "/work",
            get(|Query(query): Query<HashMap<String, u64>>| async move {
                tokio::time::sleep(Duration::from_millis(query.get("ms").copied().unwrap_or(0)))
                    .await;
                "done"
            }),
        )
        .route("/forever", get(std::future::pending::<&'static str>))
        .route(
            "/db",
            get(
                |State(app): State<App>, Query(query): Query<HashMap<String, u64>>| async move {
                    let Some(pool) = app.pool else {
                        return (StatusCode::NOT_FOUND, "no database".to_owned());
                    };
                    let seconds = query.get("ms").copied().unwrap_or(0) as f64 / 1000.0;
                    let result = async {
                        let mut conn = pool.get().await?;
                        diesel::sql_query(format!("SELECT pg_sleep({seconds})"))
                            .execute(&mut *conn)
                            .await?;
                        Ok::<_, ballast_error::Error>(())
                    }
                    .await;
                    match result {
                        Ok(()) => (StatusCode::OK, "done".to_owned()),
                        Err(failure) => (StatusCode::SERVICE_UNAVAILABLE, failure.to_string()),
                    }
                },
            ),
        )
        .route(
            "/stats",
            get(|State(app): State<App>| async move {
                let stats = app.shutdown.stats();
                format!("{:?} {}", stats.phase, stats.in_flight)
            }),
        )
        .with_state(App {
            shutdown: handle.clone(),
            pool,
        })
        .layer(ShutdownLayer::new(handle.clone()).serve_while_draining(["/healthz", "/readyz"]));

    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:0".to_owned());
    let listener = match tokio::net::TcpListener::bind(&bind).await {
        Ok(listener) => listener,
        Err(error) => {
            say(&format!("cannot bind {bind}: {error}"));
            std::process::exit(2);
        }
    };
    let addr = listener
        .local_addr()
        .map(|addr| addr.to_string())
        .unwrap_or_default();
    say(&format!("listening on {addr}"));
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(handle.draining())
        .into_future();
    let summary = shutdown.run(server).await;
    say(&format!(
        "summary: drained={} abandoned={} hooks={:?} total_ms={}",
        summary.drained,
        summary.abandoned,
        summary
            .hooks
            .iter()
            .map(|hook| format!("{}={}", hook.name, hook.result))
            .collect::<Vec<_>>(),
        summary.total.as_millis()
    ));
    std::process::exit(summary.exit_code());
}
