//! Retry database connection failures — and never run a write twice.
//!
//! A connection failure is often gone a moment later; repeating the request then turns a 503 into
//! an answer. This crate does that safely, as a Tower layer ([`RetryLayer`]) that follows `tower::retry`'s
//! protocol, and as a function ([`with_retry`], [`Retrying`]) for work outside HTTP.
//!
//! In a request, retries are for blips — a backend killed under a query, a connection refused
//! for a moment — and a client waits for every one of them, so the layer's are short (two, from
//! 100 ms, adding at most about a second). An outage is answered at once: a failure the pool
//! answered from its closed connect gate
//! ([`Failure::is_known_outage`](ballast_core::Failure::is_known_outage)) is not retried, and the
//! client is told when to come back. Background work has time: the function form defaults to
//! three retries from 1 s, and stops retrying when its service begins to drain (a job of
//! `ShutdownHandle::spawn`, or a future run in a
//! [`DrainSignal`](ballast_core::scope::DrainSignal)).
//!
//! # Contract
//!
//! A failed attempt is retried only when all of these hold:
//!
//! 1. **It carries a classified failure** ([`Failure`](ballast_core::Failure)): in the response
//!    extensions (what `ballast_error::Error` puts there) or as the service error ([`AsFailure`]).
//!    Plain 5xx responses without one are not this layer's business.
//! 2. **It is retryable**: too many connections, refused, reset, timed out, server starting —
//!    not a wrong password (`28P01`), a missing database (`3D000`) or a bad query.
//! 3. **Repeating it cannot write twice**: the statement was never sent
//!    ([`Reach::NotSent`](ballast_core::Reach::NotSent): any method, `POST` included), or the
//!    request is idempotent (`GET`, `HEAD`, `OPTIONS`, `PUT`, `DELETE`, `TRACE` by default). A
//!    `POST` whose connection broke after the `INSERT` went out is never retried, unless an
//!    idempotency key guards it ([`Failure::is_idempotent`](ballast_core::Failure::is_idempotent)).
//! 4. **It is not a known outage** (the layer only): the first attempt of the request met a
//!    failure first-hand, rather than one the pool answered from its closed gate because the
//!    database was already known to be down. (A request that met the failure first-hand may be
//!    seeing a blip: its retries wait at least until the pool tries the database again.)
//! 5. **The request can be replayed**: its body has a known length within the cap (64 KiB by
//!    default), and is recorded in memory as the service reads it (a retry reads the recording,
//!    then what the first attempt left unread). Nothing is read before the service asks, so a
//!    handler that never reads the body answers at once even when the client never sends the
//!    body it declared. A larger or streaming body passes through untouched — never truncated,
//!    never fully buffered — and its request is not retried; so is one whose reading failed.
//! 6. **Retries remain**: 2 by default for the layer, 3 for the function form.
//! 7. **There is time**: the next attempt, after its delay, could still finish before the
//!    overall deadline (2 s by default for the layer, 15 s for the function form), judging by
//!    how long the last attempt took.
//! 8. **The budget allows it**: tower's [`TpsBudget`](tower::retry::budget::TpsBudget) rule,
//!    kept without a lock (every request deposits into it), shared by every clone — 10 retries a second plus 20 % of requests by default — so an outage cannot multiply
//!    the load on a database that is already struggling.
//!
//! Delays come from tower's `ExponentialBackoff` — 100 ms doubling to at most 500 ms for the
//! layer, 1 s doubling to at most 5 s for the function form — with jitter, so clients do not
//! return in step. The failure adjusts the wait within the cap: a server starting up (`57P03`)
//! waits twice as long, an exhausted pool half as long, and no retry comes sooner than the
//! failure says trying again can succeed
//! ([`Failure::retry_after`](ballast_core::Failure::retry_after)). When retries end, the last
//! response goes out unchanged. Dropping the response future (the client went away, a timeout)
//! stops further attempts. Each retry is a `tracing` event with its attempt number and reason;
//! [`RetryHandle::stats`] counts attempts, retries, give-ups and budget refusals for `/stats`.
//!
//! # Example
//!
//! ```
//! use axum::{routing::get, Router};
//! use ballast_error::ErrorResponseLayer;
//! use ballast_retry::RetryLayer;
//! use tower::ServiceBuilder;
//!
//! let retry = RetryLayer::new();
//! let stats = retry.handle(); // read `stats.stats()` from a /stats handler
//! let app: Router = Router::new()
//!     .route("/items", get(|| async { "[]" }))
//!     // The error layer outside the retry layer: the stack's error type is `Infallible`.
//!     .layer(ServiceBuilder::new().layer(ErrorResponseLayer::new()).layer(retry));
//! # let _ = stats;
//! ```
//!
//! # Performance
//!
//! `cargo bench -p ballast-retry --bench retry` measures the success path against the bare
//! service and prints the overhead of a bodiless `GET` and of one with three headers from
//! alternating rounds (goal: 120 ns, not met: a replayable request is copied before its first
//! attempt, since the inner service takes it by value and a retry needs it again). A body is
//! recorded as the service reads it, never buffered before the call. The figures and the
//! profile are in the workspace's `docs/benchmarks.md`.

mod body;
mod budget;
mod builder;
mod function;
mod layer;
mod policy;

pub use ballast_core::http::AsFailure;
pub use ballast_core::ConfigError;
pub use body::RetryBody;
pub use builder::{FunctionForm, LayerForm, RetryBuilder, RetryLayerBuilder, RetryingBuilder};
pub use function::{with_retry, Retrying};
pub use layer::{ResponseFuture, Retry, RetryHandle, RetryLayer};
pub use policy::RetryStats;
