//! The layer: counts requests in flight, refuses new ones while draining.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use ballast_core::http::RetryAfter;
use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::handle::{InFlight, Phase, ShutdownHandle};
use crate::request::InRequest;

/// The outermost layer: counts requests in flight (until their response body is finished) and,
/// once draining, answers new requests with a 503 problem (`retryable: true`, `Retry-After`,
/// `Connection: close`) while in-flight ones finish. Responses sent while draining carry
/// `Connection: close`, so keep-alive connections end with them.
///
/// Paths given to [`ShutdownLayer::serve_while_draining`] pass through while draining: by
/// default `/healthz` (liveness stays 200 until exit) and `/readyz` (which answers its own 503,
/// [`Health`](crate::Health)'s `SHUTTING_DOWN`).
///
/// ```
/// use ballast_shutdown::{Shutdown, ShutdownLayer};
///
/// let shutdown = Shutdown::builder().build();
/// let layer = ShutdownLayer::new(shutdown.handle()).serve_while_draining(["/healthz", "/readyz"]);
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
pub struct ShutdownLayer {
    handle: ShutdownHandle,
    passthrough: Arc<[String]>,
    retry_after: RetryAfter,
}

impl ShutdownLayer {
    /// A layer reporting to `handle`'s coordinator.
    pub fn new(handle: ShutdownHandle) -> Self {
        ShutdownLayer {
            handle,
            passthrough: Arc::new(["/healthz".to_owned(), "/readyz".to_owned()]),
            // Another instance can answer at once.
            retry_after: RetryAfter::new(Duration::from_secs(1), Duration::from_secs(1)),
        }
    }

    /// Sets the paths served as usual while draining (health and readiness endpoints).
    #[must_use]
    pub fn serve_while_draining<I, P>(mut self, paths: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        self.passthrough = paths.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the `Retry-After` policy of the 503s sent while draining.
    #[must_use]
    pub fn retry_after(mut self, retry_after: RetryAfter) -> Self {
        self.retry_after = retry_after;
        self
    }
}

impl<S> Layer<S> for ShutdownLayer {
    type Service = ShutdownService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ShutdownService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`ShutdownLayer`]. (tower-http would call it `Shutdown<S>`; that name
/// is the coordinator's, [`Shutdown`](crate::Shutdown).)
#[derive(Debug, Clone)]
pub struct ShutdownService<S> {
    inner: S,
    layer: ShutdownLayer,
}

impl<S> ShutdownService<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, this one taken apart.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ShutdownService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<ShutdownBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let handle = &self.layer.handle;
        let draining = handle.phase() >= Phase::Draining;
        let exempt = self
            .layer
            .passthrough
            .iter()
            .any(|path| path == request.uri().path());
        if draining && !exempt {
            handle.count_rejected();
            tracing::debug!(shutdown.phase = ?handle.phase(), "request refused while draining");
            let problem = crate::shutting_down();
            let head = request.method() == http::Method::HEAD;
            let mut response = problem.to_response(head, Some(self.layer.retry_after.pick()));
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            return ResponseFuture {
                state: State::Rejected {
                    response: Some(response),
                },
            };
        }
        let guard = handle.request_started();
        let future = {
            let _serving = InRequest::enter();
            self.inner.call(request)
        };
        ResponseFuture {
            state: State::Called {
                future,
                guard: Some(guard),
            },
        }
    }
}

pin_project! {
    /// The response future of [`ShutdownService`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called {
            #[pin]
            future: F,
            guard: Option<InFlight>,
        },
        Rejected { response: Option<Response<Full<Bytes>>> },
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
{
    type Output = Result<Response<ShutdownBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { future, guard } => {
                let result = {
                    let _serving = InRequest::enter();
                    ready!(future.poll(cx))
                };
                Poll::Ready(result.map(|mut response| {
                    let guard = guard.take();
                    // Draining now: this connection should not carry another request.
                    if let Some(guard) = &guard {
                        let draining = guard.phase() >= Phase::Draining;
                        if draining {
                            response
                                .headers_mut()
                                .insert(CONNECTION, HeaderValue::from_static("close"));
                        }
                    }
                    response.map(|body| ShutdownBody {
                        kind: Kind::Inner { body, guard },
                    })
                }))
            }
            StateProj::Rejected { response } => {
                let response = response
                    .take()
                    .unwrap_or_else(|| Response::new(Full::new(Bytes::new())));
                Poll::Ready(Ok(response.map(|body| ShutdownBody {
                    kind: Kind::Rejected { body },
                })))
            }
        }
    }
}

pin_project! {
    /// The response body of [`ShutdownService`]: the inner body, holding its request's place in
    /// the in-flight count until it is finished or dropped; or a refusal.
    pub struct ShutdownBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B, guard: Option<InFlight> },
        Rejected { #[pin] body: Full<Bytes> },
    }
}

impl<B> fmt::Debug for ShutdownBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownBody").finish_non_exhaustive()
    }
}

impl<B> Body for ShutdownBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body, guard } => {
                let frame = ready!(body.poll_frame(cx));
                if frame.is_none() {
                    // The body is finished: the request is no longer in flight.
                    guard.take();
                }
                Poll::Ready(frame)
            }
            KindProj::Rejected { body } => Poll::Ready(
                ready!(body.poll_frame(cx))
                    .map(|frame| Ok(frame.unwrap_or_else(|never| match never {}))),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body, .. } => body.is_end_stream(),
            Kind::Rejected { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body, .. } => body.size_hint(),
            Kind::Rejected { body } => body.size_hint(),
        }
    }
}
