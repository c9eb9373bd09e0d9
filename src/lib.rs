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
//! | [`error`] | `ballast-error` | failures as problem+json with the seed's codes; [`Error`] for handlers |
//! | [`retry`] | `ballast-retry` | retries of connection failures that never run a write twice |
//! | [`cache`] | `ballast-cache` | a response cache bounded by entries and bytes |
//! | [`shutdown`] | `ballast-shutdown` | readiness, bounded drain, ordered teardown |
//! | [`idempotency`] | `ballast-idempotency` | exactly-once writes for requests with an `Idempotency-Key` |
//!
//! and, always, the classified failure they share ([`Failure`], from `ballast-core`). Backends are
//! features too: `postgres` (default), `mysql`, `sqlite`.
//!
//! # The stack
//!
//! Outermost first: shutdown → error → cache → retry → handlers. The shutdown layer sees every
//! request, so it can count and refuse them; the error layer sits outside the cache and the retry
//! layer, so their failures are rendered once and the stack's error type is `Infallible`; the
//! cache answers hits before any retry bookkeeping; the retry layer sits next to the handlers,
//! whose `ballast::Error` leaves the classified failure in the response for it to read.
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

pub use ballast_core::{
    io, mysql, redact, sqlite, sqlstate, BoxError, Cause, Code, DriverCode, Failure, Reach,
    SqlState,
};

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
