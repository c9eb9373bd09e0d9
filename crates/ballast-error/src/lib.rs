//! Failures become honest, safe HTTP responses: RFC 9457 problem+json with the codes clients
//! already know.
//!
//! A client must be able to tell "try again in a moment" from "this is broken", and must never
//! learn anything internal. This crate gives handlers an [`Error`] type and the stack an
//! [`ErrorResponseLayer`].
//!
//! # Contract
//!
//! | failure | status | `code` | `retryable` | `Retry-After` |
//! |---|---|---|---|---|
//! | connection refused, reset, timed out; too many connections; pool exhausted; the pool at capacity (`Overloaded`); server starting | 503 | `DB_CONNECTION_ERROR` | `true` when safe to repeat | when `retryable` |
//! | the same, but the statement may have run and nothing makes a repeat safe | 503 | `DB_CONNECTION_ERROR` | `false`, `"outcome": "unknown"` | no |
//! | wrong credentials, missing database, bad settings | 503 | `DB_INIT_ERROR` | `false` | no |
//! | the database out of memory or resources | 503 | `MEMORY_ERROR` | mostly `true` | when `retryable` |
//! | anything else: bad query, bug, panic, unknown error | 500 | `CRITICAL_ERROR` | `false` | no |
//! | application-defined ([`Error::new`]) | its own | its own | its own | on a `retryable` 503 |
//!
//! - **`retryable` is a promise**: `true` only when repeating the request cannot do it twice —
//!   the failure is worth retrying **and** its statement never reached the database, or the
//!   method is idempotent, or an idempotency key guards it
//!   ([`Failure::may_retry`](ballast_core::Failure::may_retry)). `Retry-After` says when the
//!   pool tries the database again, or when its queue will have room, where the failure knows.
//! - [`timeout::RequestTimeoutLayer`] bounds each request and says what ran out: a request body that
//!   stopped arriving is a 408, never a database error.
//!
//! - The body is `application/problem+json`: `type`, `title`, `status`, `detail`, `code`,
//!   `retryable` ([`Problem`]). `HEAD` requests get headers only. Problem responses carry
//!   `cache-control: no-store`.
//! - **Nothing internal leaks.** The `detail` is the failure's public message (for 500s always
//!   "An internal error occurred."; for a refusal at capacity, the expected wait against the
//!   time the request had); never the driver's message, SQL text, a URL, a host or a password.
//! - **Logged once**, by the layer: 503 at `warn`, 500 at `error`, with the driver code and the
//!   failure's redacted report (the first line of each error in its chain: PostgreSQL puts row
//!   values in its `DETAIL` lines, which stay out). A 503 the pool answered at once for a known
//!   outage or overload logs at `debug`: the pool logged the outage or the overload when it
//!   began, and a line per refused request would be thousands a second.
//! - Panics in handlers become 500s (caught with `catch_unwind`); the server keeps serving.
//! - The failure rides in the response extensions as an `Arc<Failure>`, for the retry and cache
//!   layers and anything outside.
//! - The mapping is pluggable ([`MapProblem`], closures included); [`DefaultProblems`] documents
//!   what maps to `MEMORY_ERROR` and why.
//!
//! # In axum
//!
//! ```
//! use axum::{routing::get, Router};
//! use ballast_error::{Error, ErrorResponseLayer};
//! use http::StatusCode;
//!
//! async fn item() -> Result<String, Error> {
//!     // `?` on a pool checkout, a diesel query or a driver call classifies the failure.
//!     Err(Error::new(StatusCode::NOT_FOUND, "ITEM_NOT_FOUND", "No item has that id."))
//! }
//!
//! let app: Router = Router::new()
//!     .route("/items/1", get(item))
//!     .layer(ErrorResponseLayer::new());
//! ```
//!
//! # Customised
//!
//! ```
//! use std::time::Duration;
//! use ballast_core::{Code, Failure};
//! use ballast_error::{DefaultProblems, ErrorResponseLayer, Problem, RetryAfter};
//!
//! let layer = ErrorResponseLayer::new()
//!     .map_problem(|failure: &Failure| {
//!         let problem = DefaultProblems::problem_for(failure);
//!         match failure.code() {
//!             Code::DbInit => problem.with_member("support", "ops@example.com"),
//!             _ => problem,
//!         }
//!     })
//!     .retry_after(RetryAfter::new(Duration::from_secs(5), Duration::from_secs(5)));
//! # let _ = layer;
//! ```
//!
//! # Performance
//!
//! `cargo bench -p ballast-error --bench layer` compares the success path through the layer with
//! the bare service in one run (goal: within 100 ns). Most of the cost is the request's context
//! kept for a failure (method, path, request id) and the panic guard around the call and each
//! poll. The figures are in the workspace's `docs/benchmarks.md`.

#![cfg_attr(docsrs, feature(doc_auto_cfg))]

mod error;
mod layer;
mod map;
pub mod timeout;

pub use ballast_core::http::{Problem, RetryAfter, PROBLEM_JSON};
pub use error::Error;
pub use layer::{
    BoxError, ErrorResponse, ErrorResponseLayer, PanicResponse, ResponseBody, ResponseFuture,
};
pub use map::{DefaultProblems, MapProblem};
