//! `/healthz` and `/readyz` as Tower services, for axum and plain Tower stacks.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ballast_core::http::{Problem, RetryAfter};
use ballast_core::{Cause, Failure, ReadinessCheck};
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response};
use http_body_util::Full;
use tower_service::Service;

use crate::handle::ShutdownHandle;

/// How long one readiness check may take before it counts as failed: a probe that hangs is a
/// probe that fails, and the load balancer's own timeout is usually a second or a few.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Liveness and readiness for a service, from its shutdown state and its checks.
///
/// - [`liveness`](Self::liveness) (`/healthz`): `200 ok` while the process can answer at all. It
///   never asks the database: a database outage must not get every instance restarted.
/// - [`readiness`](Self::readiness) (`/readyz`): `200 ready` while the service is not shutting
///   down and every check passes; otherwise a `503` problem+json that says why (the shutdown, or
///   the failure of the first check that failed, with its code and a `Retry-After`). A check is
///   "can this instance reach its database" — `SharedPool` is one, and busy is ready — bounded by
///   3 s.
///
/// Both answer `Cache-Control: no-store`, `HEAD` without a body, and are served while draining
/// when they are mounted at the paths the [`ShutdownLayer`](crate::ShutdownLayer) lets through
/// (its default: `/healthz` and `/readyz`).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use axum::Router;
/// use ballast_shutdown::{Health, Shutdown};
/// use tower::ServiceExt;
///
/// let shutdown = Shutdown::builder().build();
/// let health = Health::new(shutdown.handle())
///     .check("database", || async { Ok::<(), ballast_core::Failure>(()) });
/// let app: Router = Router::new()
///     .route_service("/healthz", health.liveness())
///     .route_service("/readyz", health.readiness());
///
/// let ready = app.clone().oneshot(http::Request::get("/readyz").body(axum::body::Body::empty())?).await?;
/// assert_eq!(ready.status(), 200);
/// shutdown.handle().trigger();
/// let ready = app.oneshot(http::Request::get("/readyz").body(axum::body::Body::empty())?).await?;
/// assert_eq!(ready.status(), 503);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Health {
    handle: ShutdownHandle,
    checks: Arc<[(&'static str, Arc<dyn ReadinessCheck>)]>,
}

impl Health {
    /// Health for the service `handle` shuts down, with no checks yet.
    pub fn new(handle: ShutdownHandle) -> Self {
        Health {
            handle,
            checks: Arc::new([]),
        }
    }

    /// Adds a readiness check, named in the answer when it fails.
    #[must_use]
    pub fn check(self, name: &'static str, check: impl ReadinessCheck) -> Self {
        let mut checks: Vec<_> = self.checks.iter().cloned().collect();
        checks.push((name, Arc::new(check)));
        Health {
            handle: self.handle,
            checks: checks.into(),
        }
    }

    /// The liveness service (`/healthz`).
    pub fn liveness(&self) -> Liveness {
        Liveness
    }

    /// The readiness service (`/readyz`).
    pub fn readiness(&self) -> Readiness {
        Readiness {
            health: self.clone(),
        }
    }

    /// Whether the service is ready now, or the problem that says why not and when to ask again.
    async fn ready(&self) -> Result<(), (Problem, Option<Duration>)> {
        if !self.handle.is_ready() {
            return Err((crate::shutting_down(), None));
        }
        for (name, check) in self.checks.iter() {
            let failure = match tokio::time::timeout(CHECK_TIMEOUT, check.check()).await {
                Ok(Ok(())) => continue,
                Ok(Err(failure)) => failure,
                Err(_) => Failure::new(Cause::TimedOut).with_detail(format!(
                    "the {name} check took longer than {CHECK_TIMEOUT:?}"
                )),
            };
            tracing::debug!(check = name, failure = %failure.report(), "not ready");
            let mut problem = Problem::for_failure(&failure);
            problem.detail = format!("Not ready: {name}: {}", problem.detail).into();
            return Err((problem.with_retryable(true), failure.retry_after()));
        }
        Ok(())
    }
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.checks.iter().map(|(name, _)| *name).collect();
        f.debug_struct("Health")
            .field("handle", &self.handle)
            .field("checks", &names)
            .finish()
    }
}

/// A `200` text response that no cache keeps.
fn text(method: &Method, body: &'static str) -> Response<Full<Bytes>> {
    let body = if method == Method::HEAD { "" } else { body };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The liveness service: `200 ok` (see [`Health`]).
#[derive(Debug, Clone, Copy)]
pub struct Liveness;

impl<B> Service<Request<B>> for Liveness {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        std::future::ready(Ok(text(request.method(), "ok")))
    }
}

/// The readiness service: `200 ready` or a `503` problem (see [`Health`]).
#[derive(Debug, Clone)]
pub struct Readiness {
    health: Health,
}

impl<B> Service<Request<B>> for Readiness {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let health = self.health.clone();
        let method = request.method().clone();
        Box::pin(async move {
            Ok(match health.ready().await {
                Ok(()) => text(&method, "ready"),
                Err((problem, hint)) => {
                    let retry_after = RetryAfter::default().for_problem(&problem, hint);
                    let mut response = problem.to_response(method == Method::HEAD, retry_after);
                    response
                        .headers_mut()
                        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    response
                }
            })
        })
    }
}
