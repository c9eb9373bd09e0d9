//! The layer: failures (in response extensions, as service errors, or as panics) become
//! problem+json responses, logged once.
//!
//! Laid out as tower-http lays out a middleware: the layer here, its service (`service.rs`), the
//! service's future (`future.rs`) and response body (`body.rs`), and how a failure is rendered
//! and logged (`render.rs`).

mod body;
mod future;
mod render;
mod service;

pub use ballast_core::BoxError;
pub use body::ResponseBody;
pub use future::ResponseFuture;
pub use render::PanicResponse;
pub use service::ErrorResponse;

use ballast_core::http::RetryAfter;
use tower_layer::Layer;

use crate::layer::service::Settings;
use crate::map::{DefaultProblems, MapProblem};

/// Renders every failure of the wrapped service as an RFC 9457 problem+json response and logs it
/// exactly once.
///
/// - A response that carries a classified failure in its extensions (what
///   [`Error`](crate::Error)'s `IntoResponse` produces) is rendered again with this layer's
///   [`MapProblem`] and `Retry-After` policy.
/// - A service error (`Err` from a plain Tower or hyper service) becomes a response too: a
///   [`Failure`](ballast_core::Failure), an [`Error`](crate::Error), diesel, driver and I/O errors are classified, and
///   `tower::timeout`'s `Elapsed` is a 503 `DB_CONNECTION_ERROR` (timed out, retryable); anything
///   else is a 500 `CRITICAL_ERROR`. The stack's error type becomes [`Infallible`](std::convert::Infallible).
/// - A panic in the service or its future becomes a 500 `CRITICAL_ERROR` (caught with
///   `catch_unwind` where the service is called and where its future is polled, as tower-http's
///   `CatchPanic` does, without a future of its own), and the server keeps serving.
/// - `retryable` is a promise: `true` only when repeating the request cannot do it twice — the
///   failure is worth retrying **and** its statement never reached the database, or the method
///   is idempotent (`GET`, `HEAD`, `OPTIONS`, `PUT`, `DELETE`, `TRACE`), or an idempotency key
///   guards it. A `POST` whose connection broke after the `INSERT` went out gets a 503 with
///   `"retryable": false` and `"outcome": "unknown"`.
/// - Retryable 503 responses carry `Retry-After` ([`RetryAfter`]: when the pool will next try
///   to connect, where the failure says, else 1 s; plus up to 2 s of jitter by default); others
///   do not invite a repeat. `HEAD` requests get the headers only.
/// - The log line (503: `warn`, 500: `error`) has the status, code, cause, retryability, reach,
///   driver code, method and path, and the failure's redacted report; never the query string,
///   a URL or a password.
///
/// The failure stays in the rendered response's extensions for outer layers.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use ballast_error::ErrorResponseLayer;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// // A plain Tower service whose errors are database failures.
/// let service = ServiceBuilder::new()
///     .layer(ErrorResponseLayer::new())
///     .service(service_fn(|_request: http::Request<String>| async {
///         Err::<http::Response<String>, _>(ballast_core::sqlstate::failure("53300"))
///     }));
/// let response = service.oneshot(http::Request::new(String::new())).await.unwrap();
/// assert_eq!(response.status(), 503);
/// assert_eq!(response.headers()["content-type"], "application/problem+json");
/// assert!(response.headers().contains_key("retry-after"));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ErrorResponseLayer<M = DefaultProblems> {
    map: M,
    retry_after: RetryAfter,
    plain_errors: bool,
}

impl ErrorResponseLayer {
    /// The layer with the default mapping and `Retry-After` policy.
    pub fn new() -> Self {
        ErrorResponseLayer {
            map: DefaultProblems,
            retry_after: RetryAfter::default(),
            plain_errors: true,
        }
    }
}

impl Default for ErrorResponseLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<M> ErrorResponseLayer<M> {
    /// Replaces the mapping from failures to problem documents.
    pub fn map_problem<N: MapProblem>(self, map: N) -> ErrorResponseLayer<N> {
        ErrorResponseLayer {
            map,
            retry_after: self.retry_after,
            plain_errors: self.plain_errors,
        }
    }

    /// Whether error responses that are not problem+json — a 4xx or 5xx with an empty, text or
    /// HTML body, such as axum's 404 for an unknown route, its 405 for a wrong method and its
    /// extractor rejections (`Path`, `Query`, `Json`), whose text echoes the request's input —
    /// are replaced with a problem+json document for their status: a code
    /// (`NOT_FOUND`, `METHOD_NOT_ALLOWED`, `BAD_REQUEST`, ...) and a fixed detail that never
    /// repeats the input. Their other headers (`Allow`, `WWW-Authenticate`, ...) stay. On by
    /// default, so every error response of the stack has the same shape.
    #[must_use]
    pub fn problems_for_plain_errors(mut self, replace: bool) -> Self {
        self.plain_errors = replace;
        self
    }

    /// Sets the `Retry-After` policy for 503 responses.
    #[must_use]
    pub fn retry_after(mut self, retry_after: RetryAfter) -> Self {
        self.retry_after = retry_after;
        self
    }
}

impl<S, M: Clone> Layer<S> for ErrorResponseLayer<M> {
    type Service = ErrorResponse<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorResponse {
            inner,
            settings: Settings {
                map: self.map.clone(),
                retry_after: self.retry_after,
                plain_errors: self.plain_errors,
            },
            not_ready: None,
        }
    }
}
