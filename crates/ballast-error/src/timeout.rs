//! A deadline for each request that says what ran out when it passes.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use ballast_core::scope::{RequestScope, Scoped};
use ballast_core::{Cause, Failure, Reach};
use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use ballast_core::http::{failure_response, Problem, RetryAfter};

/// Bounds every request by a deadline, and answers by what actually ran out when it passes.
///
/// The request runs inside a [`RequestScope`], so the pool never lets a checkout wait past the
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
/// use ballast_error::{ErrorResponseLayer, RequestTimeoutLayer};
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

/// The service made by [`RequestTimeoutLayer`].
#[derive(Clone)]
pub struct RequestTimeout<S> {
    inner: S,
    timeout: Duration,
    draining: Option<Draining>,
}

impl<S: fmt::Debug> fmt::Debug for RequestTimeout<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestTimeout")
            .field("inner", &self.inner)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestTimeout<S>
where
    S: Service<Request<TimedBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body,
{
    type Response = Response<TimeoutBody<ResBody>>;
    type Error = S::Error;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let started = Instant::now();
        let scope = RequestScope::new(Some(started + self.timeout));
        if RequestScope::records_paths() {
            scope.set_path(request.uri().path());
        }
        // A body already complete (a GET's) has nothing to watch: no shared state for it.
        let reading = (!request.body().is_end_stream()).then(|| Arc::new(BodyState::default()));
        let method = request.method().clone();
        let request = request.map(|body| TimedBody {
            body,
            state: reading.clone(),
        });
        TimeoutFuture {
            state: State::Running {
                future: scope.run(self.inner.call(request)),
            },
            // The deadline from the clock reading above: one reading per request. The timer is
            // made only if the request has to wait: a response ready at once (a cache hit)
            // never touches the runtime's timer.
            deadline: (started + self.timeout).into(),
            sleep: Timer::Unset,
            scope,
            // Only a request with a body to wait for looks at the drain.
            draining: self.draining.clone().filter(|_| reading.is_some()),
            frames_seen: 0,
            reading,
            method,
            timeout: self.timeout,
        }
    }
}

pin_project! {
    /// The response future of [`RequestTimeout`].
    pub struct TimeoutFuture<F> {
        #[pin]
        state: State<F>,
        deadline: tokio::time::Instant,
        #[pin]
        sleep: Timer,
        scope: Arc<RequestScope>,
        reading: Option<Arc<BodyState>>,
        draining: Option<Draining>,
        // The body's frames at the last look at the drain.
        frames_seen: u32,
        method: Method,
        timeout: Duration,
    }
}

pin_project! {
    /// The request's timer, made on its first wait.
    #[project = TimerProj]
    enum Timer {
        Unset,
        // Boxed: a timer is large, and most requests never need one.
        Set { sleep: Pin<Box<tokio::time::Sleep>> },
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running { #[pin] future: Scoped<F> },
        Done,
    }
}

impl<F> fmt::Debug for TimeoutFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutFuture")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<TimeoutBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let StateProj::Running { future } = this.state.as_mut().project() {
            if let Poll::Ready(result) = future.poll(cx) {
                this.state.set(State::Done);
                return Poll::Ready(result.map(|response| response.map(TimeoutBody::inner)));
            }
        }
        // With a drain to watch, the timer wakes every `DRAIN_CHECK` until the deadline.
        let wake_at = |deadline: tokio::time::Instant, watching: bool| {
            if watching {
                deadline.min(tokio::time::Instant::now() + DRAIN_CHECK)
            } else {
                deadline
            }
        };
        if let TimerProj::Unset = this.sleep.as_mut().project() {
            let at = wake_at(*this.deadline, this.draining.is_some());
            this.sleep.set(Timer::Set {
                sleep: Box::pin(tokio::time::sleep_until(at)),
            });
        }
        let mut cut_on_drain = false;
        if let TimerProj::Set { sleep } = this.sleep.as_mut().project() {
            loop {
                ready!(sleep.as_mut().poll(cx));
                if tokio::time::Instant::now() >= *this.deadline {
                    break;
                }
                // A look at the drain: a body that stalled since the last look is cut now.
                if let (Some(draining), Some(reading)) =
                    (this.draining.as_ref(), this.reading.as_ref())
                {
                    let frames = reading.frames();
                    if draining() && reading.get() == READ_WAITING && frames == *this.frames_seen {
                        cut_on_drain = true;
                        break;
                    }
                    *this.frames_seen = frames;
                    if reading.get() == READ_DONE {
                        *this.draining = None;
                    }
                }
                let at = wake_at(*this.deadline, this.draining.is_some());
                sleep.as_mut().reset(at);
            }
        }
        // What the request was doing when its time ran out, before it is dropped.
        let waiting_for_client = this
            .reading
            .as_ref()
            .is_some_and(|reading| reading.get() == READ_WAITING);
        let database = this.scope.database();
        // Dropping it returns (and cancels) its connections; only then is "sent" complete.
        this.state.set(State::Done);
        let after = this.scope.database();
        let (sent, guarded) = (after.statement_sent, after.guarded);
        let reach = if sent {
            Reach::MaybeSent
        } else {
            Reach::NotSent
        };
        let idempotent = this.method.is_idempotent();
        let detail = format!(
            "no answer within the request's deadline ({:?})",
            this.timeout
        );
        let failure = if waiting_for_client {
            None
        } else if database.connection_in_use {
            Some(
                Failure::new(Cause::TimedOut)
                    .with_reach(reach)
                    .with_idempotent(guarded)
                    .with_detail(format!("{detail}: a statement was still running")),
            )
        } else if database.waiting_for_connection {
            Some(
                Failure::new(Cause::PoolExhausted)
                    .with_reach(reach)
                    .with_idempotent(guarded)
                    .with_detail(format!("{detail}: still waiting for a connection")),
            )
        } else {
            None
        };
        let head = *this.method == Method::HEAD;
        let response = match failure {
            // No `Retry-After`: the error layer outside adds its own, with its policy.
            Some(failure) => failure_response(Arc::new(failure), idempotent, head, None),
            None if waiting_for_client => {
                let problem = Problem::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "REQUEST_TIMEOUT",
                    "The request body did not arrive in time.",
                );
                let mut response = problem.to_response(head, None);
                // The rest of the body may still come: the connection cannot be reused.
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
                tracing::debug!(
                    timeout_ms = this.timeout.as_millis() as u64,
                    cut_on_drain,
                    "request body did not arrive in time"
                );
                response
            }
            None => {
                let problem = Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "REQUEST_TIMEOUT",
                    "The request took longer than its deadline.",
                )
                .with_retryable(idempotent || guarded || !sent);
                let retry_after = RetryAfter::default().for_problem(&problem, None);
                tracing::warn!(
                    timeout_ms = this.timeout.as_millis() as u64,
                    method = %this.method,
                    "request took longer than its deadline"
                );
                problem.to_response(head, retry_after)
            }
        };
        Poll::Ready(Ok(response.map(TimeoutBody::problem)))
    }
}

/// The request body hasn't ended, and nobody is waiting for more of it.
const READ_IDLE: u8 = 0;
/// The handler asked for more of the body and the client has not sent it yet.
const READ_WAITING: u8 = 1;
/// The body ended.
const READ_DONE: u8 = 2;

/// Where reading a request body stands, and how many frames came.
#[derive(Debug, Default)]
struct BodyState(AtomicU8, AtomicU32);

impl BodyState {
    fn get(&self) -> u8 {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self, state: u8) {
        self.0.store(state, Ordering::Release);
    }

    fn frames(&self) -> u32 {
        self.1.load(Ordering::Acquire)
    }
}

pin_project! {
    /// The request body as [`RequestTimeout`] passes it on: the same bytes, watched so a
    /// deadline can tell a client that stopped sending from a slow server.
    pub struct TimedBody<B> {
        #[pin]
        body: B,
        state: Option<Arc<BodyState>>,
    }
}

impl<B> fmt::Debug for TimedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimedBody").finish_non_exhaustive()
    }
}

impl<B: Body> Body for TimedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        if let Some(state) = this.state {
            state.set(match &polled {
                Poll::Pending => READ_WAITING,
                Poll::Ready(None) => READ_DONE,
                Poll::Ready(Some(_)) => {
                    state.1.fetch_add(1, Ordering::AcqRel);
                    READ_IDLE
                }
            });
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

pin_project! {
    /// The response body of [`RequestTimeout`]: the service's, or the problem it answered with.
    pub struct TimeoutBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Problem { #[pin] body: Full<Bytes> },
    }
}

impl<B> TimeoutBody<B> {
    fn inner(body: B) -> Self {
        TimeoutBody {
            kind: Kind::Inner { body },
        }
    }

    fn problem(body: Full<Bytes>) -> Self {
        TimeoutBody {
            kind: Kind::Problem { body },
        }
    }
}

impl<B> fmt::Debug for TimeoutBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Inner { .. } => "inner",
            Kind::Problem { .. } => "problem",
        };
        f.debug_struct("TimeoutBody").field("kind", &kind).finish()
    }
}

impl<B: Body<Data = Bytes>> Body for TimeoutBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Problem { body } => body
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(|never| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Problem { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Problem { body } => body.size_hint(),
        }
    }
}
