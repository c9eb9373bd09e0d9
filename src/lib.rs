//! ballast: Tower middleware that keeps a database-backed web service alive when the database is
//! scarce, slow or gone.
//!
//! A web app died of `FATAL: sorry, too many clients already`: every module built its own
//! database client until PostgreSQL refused everyone. ballast is the fix as layers that stack into
//! any axum or hyper app. This facade re-exports the crates, each behind a default feature of the
//! same name:
//!
//! | module | crate | what |
//! |---|---|---|
//! | [`pool`] | `ballast-pool` | one shared, bounded bb8 pool of diesel-async connections |
//! | [`error`] | `ballast-error` | failures as problem+json with the codes clients know; [`Error`] for handlers |
//! | [`retry`] | `ballast-retry` | retries of connection failures that never run a write twice |
//! | [`cache`] | `ballast-cache` | a response cache bounded by entries and bytes |
//! | [`shutdown`] | `ballast-shutdown` | readiness, bounded drain, ordered teardown |
//! | [`idempotency`] | `ballast-idempotency` | exactly-once writes for requests with an `Idempotency-Key` |
//!
//! and, always, the classified failure they share ([`Failure`], from `ballast-core`). Backends are
//! features too: `postgres` (default), `mysql`, `sqlite`; and three opt-in ones: `tls` (PostgreSQL
//! over TLS with rustls), `metrics` (`ballast::metrics`, Prometheus text with OpenTelemetry's
//! names) and `redis` (`ballast::cache::redis`, cache invalidation shared by every instance
//! through Redis pub/sub). [`diesel`] and [`diesel_async`] are re-exported at the versions and features ballast
//! uses.
//!
//! # Start here
//!
//! `use ballast::prelude::*;`, then:
//!
//! - [`SharedPool::init_from_url`](pool::SharedPool::init_from_url) once in `main`;
//! - handlers take a [`Conn<C>`](pool::Conn) and return `Result<_, ballast::Error>`, using plain
//!   `?` on diesel's errors (404, 409, 422 and retryable 503s come out right);
//! - [`Stack::builder(pool).build()`](Stack) and `stack.serve(listener, router).await` as the
//!   last line of `main`: every layer in order, `/healthz` and `/readyz`, signals, the server's
//!   protective timeouts, the drain, background jobs (`stack.handle().spawn(..)`) and the teardown,
//!   returning the exit code.
//!
//! `examples/quickstart.rs` (the README shows it whole) is a complete service in that shape.
//!
//! # Traces
//!
//! Each layer writes `tracing` events with stable field names, inside whatever span the request
//! runs in (tower-http's `TraceLayer`, with its request id, or an OpenTelemetry span through
//! `tracing-opentelemetry`):
//!
//! | layer | level | fields |
//! |---|---|---|
//! | pool checkout | DEBUG | `db.client.connection.pool.name`, `pool.wait_us`, `pool.outcome` (`checked_out`, or the failure's code) |
//! | cache | DEBUG | `cache.event`: `hit`, `miss`, `stale`, `revalidated`, `pass`, `bypass`, `not_storable`, `too_large` |
//! | retry | INFO | `retry.attempt`, `retry.delay_ms`, `code`, `cause`, `reach` |
//! | error | ERROR (500), WARN (503), DEBUG (4xx, and a 503 the pool answered at once for a known outage or overload: the pool logged its start) | `status`, `code`, `cause`, `retryable`, `reach`, `driver_code`, `method`, `path`, `request_id` |
//! | shutdown | DEBUG | `shutdown.phase` on a request refused while draining |
//!
//! A problem document carries the request's `x-request-id` as its `instance`, so a report from a
//! client finds its log lines.
//!
//! # Composing the layers yourself
//!
//! [`Stack`] puts the layers in the one order that works; its docs state the order and the
//! reason for each place, and are the one place that does. To compose them by hand, keep that
//! order (here without the health routes, the request timeout and the pool layer):
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{routing::get, Router};
//! use ballast::cache::{CacheLayer, ResponseCache};
//! use ballast::error::ErrorResponseLayer;
//! use ballast::retry::RetryLayer;
//! use ballast::shutdown::{Shutdown, ShutdownLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! // A handler whose database refuses connections (SQLSTATE 53300).
//! async fn items() -> Result<String, ballast::Error> {
//!     Err(ballast::sqlstate::failure("53300").into())
//! }
//!
//! let shutdown = Shutdown::builder().build();
//! let cache = ResponseCache::builder().build()?;
//! let retry = RetryLayer::builder()
//!     .delays(
//!         std::time::Duration::from_millis(1),
//!         std::time::Duration::from_millis(5),
//!     )
//!     .build()?;
//! let app = Router::new().route("/items", get(items)).layer(
//!     ServiceBuilder::new()
//!         .layer(ShutdownLayer::new(shutdown.handle()))
//!         .layer(ErrorResponseLayer::new())
//!         .layer(CacheLayer::new(cache.clone()))
//!         .layer(retry.clone()),
//! );
//!
//! let request = http::Request::get("/items").body(axum::body::Body::empty())?;
//! let response = app.oneshot(request).await?;
//! // Retried (nothing was sent), then answered honestly: 503, retryable, Retry-After.
//! assert_eq!(response.status(), 503);
//! assert!(response.headers().contains_key("retry-after"));
//! assert_eq!(retry.handle().stats().retries, 2);
//! // And never cached.
//! assert_eq!(cache.stats().await.entries, 0);
//! # Ok(())
//! # }
//! ```
//!
//! `cargo run --example server` runs the whole stack against SQLite, PostgreSQL or MariaDB; the
//! README walks through it.
//!
//! # Configuration
//!
//! Every setting in ballast follows one convention (moka's and tower-http's): a type's defaults
//! come from `new()` or `builder()` (or `Default`); setters take and return it by value and never
//! fail (named for the setting, or `with_` + the setting where the type also has a getter of that
//! name, as [`PoolConfig`](pool::PoolConfig) does); and settings that depend on each other are checked once — by `build()`, which returns
//! `Result<_, ConfigError>` ([`ResponseCacheBuilder`](cache::ResponseCacheBuilder),
//! [`RetryLayerBuilder`](retry::RetryLayerBuilder)), or for the pool by
//! [`PoolConfig::from_url`](pool::PoolConfig::from_url) and when the pool is built. A
//! [`ConfigError`] names the setting (a URL parameter or a setter) and never a password. Layers
//! without interdependent settings (`CacheLayer`, `ErrorResponseLayer`, `ServeConfig`) have no
//! `build()`: their setters are the whole story.
//!
//! # Stability
//!
//! Items marked `#[doc(hidden)]` in the crates (`RequestScope`'s marks, `attach`/`attached` for
//! the failure in response extensions, the `Connect` trait's methods, `Failure`'s setters that
//! override a classification) are how the crates talk to each other: not part of the public API,
//! and they may change in any release. A response's failure is read as
//! `response.extensions().get::<Arc<Failure>>()`.

pub use ballast_core::{
    io, mysql, redact, sqlite, sqlstate, BoxError, Cause, Code, ConfigError, DriverCode, Failure,
    Reach, ReadinessCheck, SqlState,
};

/// diesel, at the version and with the features ballast uses (the backends without linking
/// libpq or libmysqlclient: the connections are diesel-async's). `use ballast::diesel;` at the
/// top of a module makes diesel's macros and derives work there without a diesel dependency of
/// your own.
pub use diesel;
/// diesel-async, at the version and with the features ballast uses.
pub use diesel_async;

#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(all(
    feature = "pool",
    feature = "error",
    feature = "retry",
    feature = "cache",
    feature = "shutdown"
))]
mod stack;
#[cfg(all(
    feature = "pool",
    feature = "error",
    feature = "retry",
    feature = "cache",
    feature = "shutdown"
))]
mod startup;
#[cfg(all(
    feature = "pool",
    feature = "error",
    feature = "retry",
    feature = "cache",
    feature = "shutdown"
))]
pub use stack::{AppBody, Stack, StackBuilder, StackLayer, StackService};

/// The README's Rust code, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The names a ballast service uses, for `use ballast::prelude::*;`.
pub mod prelude {
    pub use crate::{Cause, Failure};
    pub use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};

    #[cfg(feature = "mysql")]
    pub use diesel_async::AsyncMysqlConnection;
    #[cfg(feature = "postgres")]
    pub use diesel_async::AsyncPgConnection;

    #[cfg(feature = "cache")]
    pub use crate::cache::{CacheRouteLayer, InvalidateLayer, ResponseCache};
    #[cfg(feature = "error")]
    pub use crate::error::{Error, ErrorResponseLayer};
    #[cfg(feature = "idempotency")]
    pub use crate::idempotency::IdempotencyLayer;
    #[cfg(feature = "pool")]
    pub use crate::pool::{AddPoolLayer, Conn, PoolConfig, PoolError, SharedPool};
    #[cfg(feature = "retry")]
    pub use crate::retry::{RetryLayer, Retrying};
    #[cfg(feature = "shutdown")]
    pub use crate::shutdown::{Health, Shutdown, ShutdownHandle, ShutdownLayer};
    #[cfg(all(
        feature = "pool",
        feature = "error",
        feature = "retry",
        feature = "cache",
        feature = "shutdown"
    ))]
    pub use crate::{Stack, StackBuilder};
}

#[cfg(feature = "cache")]
pub use ballast_cache as cache;
#[cfg(feature = "error")]
pub use ballast_error as error;
#[cfg(feature = "error")]
pub use ballast_error::Error;
#[cfg(feature = "idempotency")]
pub use ballast_idempotency as idempotency;
#[cfg(feature = "pool")]
pub use ballast_pool as pool;
#[cfg(feature = "retry")]
pub use ballast_retry as retry;
#[cfg(feature = "shutdown")]
pub use ballast_shutdown as shutdown;
