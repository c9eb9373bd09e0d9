//! What [`Stack::serve`](super::Stack::serve) answers in front of the stack: `/healthz`,
//! `/readyz`, the metrics route, and a 503 for every other request while startup runs.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use ballast_shutdown::{Liveness, Readiness};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower_service::Service;

use crate::startup::State as StartupState;

/// The paths health answers on.
const HEALTHZ: &str = "/healthz";
const READYZ: &str = "/readyz";

/// The figures of one stack, rendered for a scrape.
#[cfg(feature = "metrics")]
pub(super) async fn metrics_of<C: ballast_pool::Connect>(
    pool: ballast_pool::SharedPool<C>,
    cache: ballast_cache::ResponseCache,
    retry: ballast_retry::RetryHandle,
    shutdown: ballast_shutdown::ShutdownHandle,
) -> String {
    let (pool, cache, retry, shutdown) = (
        pool.stats(),
        cache.stats().await,
        retry.stats(),
        shutdown.stats(),
    );
    crate::metrics::render(
        &crate::metrics::Figures::new()
            .pool(&pool)
            .cache(&cache)
            .retry(&retry)
            .shutdown(&shutdown),
    )
}

/// The metrics route's answer: the stack's figures now, in Prometheus's text format, never cached.
#[cfg(feature = "metrics")]
pub(super) fn metrics_answer<C: ballast_pool::Connect>(
    pool: ballast_pool::SharedPool<C>,
    cache: ballast_cache::ResponseCache,
    retry: ballast_retry::RetryHandle,
    handle: ballast_shutdown::ShutdownHandle,
) -> Render {
    std::sync::Arc::new(move || {
        let text = metrics_of(pool.clone(), cache.clone(), retry.clone(), handle.clone());
        Box::pin(async move {
            let mut response = Response::new(Full::new(Bytes::from(text.await)));
            let headers = response.headers_mut();
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            headers.insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-store"),
            );
            response
        })
    })
}

/// Answers the metrics route.
pub(super) type Render = std::sync::Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>> + Send + Sync,
>;

/// `/healthz`, `/readyz` and the metrics route (when asked for) in front of the stack.
#[derive(Clone)]
pub(super) struct HealthRoutes<S> {
    pub(super) liveness: Liveness,
    pub(super) readiness: Readiness,
    pub(super) metrics: Option<(&'static str, Render)>,
    /// Where startup stands: requests wait for it with a 503.
    pub(super) starting: Option<std::sync::Arc<StartupState>>,
    pub(super) inner: S,
}

type HealthBody = http_body_util::combinators::UnsyncBoxBody<Bytes, ballast_core::BoxError>;

impl<S, B, ReqBody> Service<Request<ReqBody>> for HealthRoutes<S>
where
    S: Service<Request<ReqBody>, Response = Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<ballast_core::BoxError>,
{
    type Response = Response<HealthBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<HealthBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        fn boxed(response: Response<Full<Bytes>>) -> Response<HealthBody> {
            response.map(|body| body.map_err(|never| match never {}).boxed_unsync())
        }
        if let Some((path, render)) = &self.metrics {
            if request.uri().path() == *path {
                let answer = render();
                return Box::pin(async move { Ok(boxed(answer.await)) });
            }
        }
        match request.uri().path() {
            HEALTHZ => {
                let answer = self.liveness.call(request);
                Box::pin(async move { Ok(boxed(answer.await?)) })
            }
            READYZ => {
                let answer = self.readiness.call(request);
                Box::pin(async move { Ok(boxed(answer.await?)) })
            }
            _ => {
                if let Some(Err(failure)) = self.starting.as_ref().map(|state| state.check()) {
                    let idempotent = request.method().is_idempotent();
                    let head = request.method() == http::Method::HEAD;
                    let response = ballast_core::http::failure_response(
                        std::sync::Arc::new(failure),
                        idempotent,
                        head,
                        Some(&ballast_core::http::RetryAfter::default()),
                    );
                    return Box::pin(async move { Ok(boxed(response)) });
                }
                let answer = self.inner.call(request);
                Box::pin(async move {
                    let response = answer.await?;
                    Ok(response.map(|body| body.map_err(Into::into).boxed_unsync()))
                })
            }
        }
    }
}
