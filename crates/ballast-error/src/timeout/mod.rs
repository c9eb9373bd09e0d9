//! A deadline for each request that says what ran out when it passes: [`RequestTimeoutLayer`]
//! (its docs state the contract and have an example).
//!
//! The request runs inside a [`RequestScope`](ballast_core::scope::RequestScope), so the pool
//! never lets a checkout wait past the request's deadline; when the deadline passes, the answer
//! says whose time ran out — a `408` when the client's body stopped arriving, a `503` when the
//! database did not answer or no connection became free — and the request's connections are
//! cancelled and returned.
//!
//! Laid out as tower-http lays out a middleware: the layer here, its service (`service.rs`), the
//! service's future (`future.rs`, which decides the answer at the deadline) and the request
//! and response bodies it watches (`body.rs`).

mod body;
mod future;
mod service;

pub use body::{TimedBody, TimeoutBody};
pub use future::TimeoutFuture;
pub use service::RequestTimeout;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

/// Bounds every request by a deadline, and answers by what actually ran out when it passes.
///
/// The request runs inside a [`RequestScope`](ballast_core::scope::RequestScope), so the pool never lets a checkout wait past the
/// request's deadline, and marks what the database is doing for it. When the deadline passes,
/// the request is dropped (its connections are cancelled and returned, see `ballast-pool`) and
/// the answer says whose time ran out:
///
/// | at the deadline | answer |
/// |---|---|
/// | the handler was waiting for the client's request body | `408` `REQUEST_TIMEOUT`, `Connection: close`: the client's fault, never a database error |
/// | a connection was in use (a statement running) | `503` `DB_CONNECTION_ERROR`, "the database did not answer in time" |
/// | a checkout was waiting for a connection | `503` `DB_CONNECTION_ERROR`, "no database connection became free in time" |
/// | anything else | `503` `REQUEST_TIMEOUT` |
///
/// A 503 is `retryable` only when repeating the request cannot do it twice: nothing was sent to
/// the database for it, its method is idempotent, or an idempotency key guards it. Database failures ride in the response
/// extensions, so [`ErrorResponseLayer`](crate::ErrorResponseLayer) (outside this layer)
/// renders and logs them like any other.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use ballast_error::timeout::RequestTimeoutLayer;
/// use ballast_error::ErrorResponseLayer;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// let service = ServiceBuilder::new()
///     .layer(ErrorResponseLayer::new())
///     .layer(RequestTimeoutLayer::new(Duration::from_millis(50)))
///     .service(service_fn(|_request: http::Request<_>| async {
///         tokio::time::sleep(Duration::from_secs(10)).await;
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
///     }));
/// let request = http::Request::new(String::new());
/// let response = service.oneshot(request).await.unwrap();
/// assert_eq!(response.status(), 503);
/// # }
/// ```
#[derive(Clone)]
pub struct RequestTimeoutLayer {
    timeout: Duration,
    draining: Option<Draining>,
}

/// Whether the service is draining, for [`RequestTimeoutLayer::draining`].
type Draining = Arc<dyn Fn() -> bool + Send + Sync>;

/// How often a request waiting for its body looks whether the service began to drain, and how
/// long its body must have stalled then to be cut.
const DRAIN_CHECK: Duration = Duration::from_millis(500);

impl RequestTimeoutLayer {
    /// Every request gets `timeout`.
    pub fn new(timeout: Duration) -> Self {
        RequestTimeoutLayer {
            timeout,
            draining: None,
        }
    }

    /// Answers a request whose body stalled `408` as soon as the service drains, instead of at
    /// its deadline: `draining` says whether the drain began (with ballast-shutdown,
    /// `move || handle.phase() >= Phase::Draining`; `Stack` wires it). A client that stopped
    /// sending its body would otherwise hold the drain until the request's deadline, and the
    /// process would exit 1 at the drain deadline. A body still arriving is not cut: it stalled
    /// if nothing came for half a second while the handler waited for it.
    #[must_use]
    pub fn draining(mut self, draining: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.draining = Some(Arc::new(draining));
        self
    }
}

impl fmt::Debug for RequestTimeoutLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestTimeoutLayer")
            .field("timeout", &self.timeout)
            .field("draining", &self.draining.is_some())
            .finish()
    }
}

impl<S> Layer<S> for RequestTimeoutLayer {
    type Service = RequestTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestTimeout {
            inner,
            timeout: self.timeout,
            draining: self.draining.clone(),
        }
    }
}
