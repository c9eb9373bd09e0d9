//! Graceful shutdown for Tower services: readiness flips, in-flight requests drain within a
//! deadline, then teardown runs in order.
//!
//! On SIGTERM or SIGINT a service should stop looking ready, keep serving briefly while load
//! balancers notice, finish its in-flight work within a deadline, then tear down in order (stop
//! background jobs, clear the cache, close the pool) and exit before the platform's grace period
//! ends. This crate does all of it, and reaches the cache and the pool only through hooks, so it
//! depends on neither.
//!
//! # The sequence
//!
//! | phase | readiness | new requests | in-flight requests |
//! |---|---|---|---|
//! | [`Phase::Running`] | ready | served | served |
//! | [`Phase::NotReady`] (SIGTERM/SIGINT or [`ShutdownHandle::trigger`]) | 503 at once | served, for the pre-drain delay | served |
//! | [`Phase::Draining`] | 503 | 503 problem+json, `retryable`, `Retry-After`, `Connection: close` | finish, until the drain deadline (25 s) |
//! | [`Phase::Stopped`] | 503 | — | abandoned if still running |
//!
//! Then the hooks run in the order given, each bounded by its own timeout; one that fails or
//! hangs is logged and the next still runs. Every step logs its duration; a final line sums up.
//! [`Summary::exit_code`] is 0 after a clean drain with every hook ok. A second signal cuts the
//! sequence short: [`Shutdown::run`] returns at once and the exit code is 130. The crate never
//! exits the process; `main` returns the code. Signals are SIGTERM and SIGINT on Unix, Ctrl-C
//! elsewhere. [`Shutdown::install_panic_hook`] turns a panic outside request handling (a
//! background task) into an orderly shutdown instead of a half-dead process.
//!
//! The server stops accepting connections when [`ShutdownHandle::draining`] resolves; with
//! `axum::serve(..).with_graceful_shutdown(..)` (or hyper-util's graceful shutdown) idle
//! keep-alive connections close then, and [`Shutdown::run`] stops waiting for the server at the
//! drain deadline, so neither idle connections nor a request that never ends hold the process.
//!
//! # Example
//!
//! ```no_run
//! use std::future::IntoFuture;
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use ballast_shutdown::{Shutdown, ShutdownLayer};
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<std::process::ExitCode> {
//!     let shutdown = Shutdown::builder()
//!         .pre_drain_delay(Duration::from_secs(2))
//!         .drain_deadline(Duration::from_secs(20))
//!         .hook("stop cache cleanup", Duration::from_secs(2), || async { Ok::<_, String>(()) })
//!         .hook("close pool", Duration::from_secs(5), || async { Ok::<_, String>(()) })
//!         .build();
//!     shutdown.listen_for_signals()?;
//!     let handle = shutdown.handle();
//!     let readiness = handle.clone();
//!     let app = Router::new()
//!         .route("/healthz", get(|| async { "ok" }))
//!         .route("/readyz", get(move || async move {
//!             if readiness.is_ready() { (http::StatusCode::OK, "ready") }
//!             else { (http::StatusCode::SERVICE_UNAVAILABLE, "shutting down") }
//!         }))
//!         .layer(ShutdownLayer::new(handle.clone()).serve_while_draining(["/healthz", "/readyz"]));
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     let server = axum::serve(listener, app).with_graceful_shutdown(handle.draining());
//!     let summary = shutdown.run(server.into_future()).await;
//!     Ok(std::process::ExitCode::from(summary.exit_code() as u8))
//! }
//! ```

mod coordinator;
mod handle;
mod health;
mod layer;
mod request;
#[cfg(feature = "serve")]
mod serve;
mod summary;

pub use coordinator::{Shutdown, ShutdownBuilder};
pub use handle::{shutting_down, Phase, ShutdownHandle, ShutdownStats};
pub use health::{Health, Liveness, Readiness};
pub use layer::{ResponseFuture, ShutdownBody, ShutdownLayer, ShutdownService};
#[cfg(feature = "serve")]
pub use serve::{Listener, ServeConfig};
pub use summary::{HookOutcome, HookResult, Summary};
