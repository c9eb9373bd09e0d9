//! The HTTP retry layer: `tower::retry`'s protocol in a response future of its own.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use ballast_core::Failure;
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use ballast_core::http::{attached, AsFailure};
use ballast_core::{BoxError, ConfigError};

use crate::body::RetryBody;
use crate::policy::{
    Attempts, Counters, Decision, RetryStats, Settings, Shared, DEFAULT_BODY_CAP,
    DEFAULT_BUDGET_MIN_PER_SEC, DEFAULT_BUDGET_PERCENT, DEFAULT_BUDGET_TTL, DEFAULT_JITTER,
    DEFAULT_LAYER_BASE_DELAY, DEFAULT_LAYER_DEADLINE, DEFAULT_LAYER_MAX_DELAY,
    DEFAULT_LAYER_MAX_RETRIES,
};

/// Re-runs requests whose database failure is worth retrying and safe to repeat.
///
/// See the [crate docs](crate) for the rules. [`RetryLayer::new`] has the defaults;
/// [`RetryLayer::builder`] changes them. Clones share one budget and one set of counters, read
/// through [`RetryLayer::handle`].
///
/// ```
/// use std::time::Duration;
/// use ballast_retry::RetryLayer;
///
/// let layer = RetryLayer::builder()
///     .max_retries(2)
///     .delays(Duration::from_millis(200), Duration::from_secs(2))
///     .deadline(Duration::from_secs(5))
///     .build()?;
/// let handle = layer.handle(); // for a /stats handler
/// assert_eq!(handle.stats().retries, 0);
///
/// let error = RetryLayer::builder().jitter(-1.0).build().unwrap_err();
/// assert_eq!(error.setting, "jitter");
/// # Ok::<(), ballast_retry::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct RetryLayer {
    body_cap: usize,
    idempotent: MethodSet,
    shared: Arc<Shared>,
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("shared", &self.shared)
            .field("body_cap", &self.body_cap)
            .finish_non_exhaustive()
    }
}

impl RetryLayer {
    /// The layer with the defaults: 2 retries, 100 ms doubling to at most 500 ms with jitter, a
    /// 2 s deadline — in-request retries are for blips and add at most about a second — bodies
    /// up to 64 KiB replayed, `GET`, `HEAD`, `OPTIONS`, `PUT`, `DELETE` and `TRACE` idempotent,
    /// and a budget of 10 retries a second plus 20 % of requests. A failure the pool answered
    /// from its closed connect gate (a known outage) is not retried: the client gets its 503 at
    /// once, with the `Retry-After` the pool's next attempt gives.
    pub fn new() -> Self {
        Self::builder()
            .build()
            .unwrap_or_else(|_| unreachable!("the defaults are valid"))
    }

    /// A builder starting from the defaults of [`RetryLayer::new`].
    pub fn builder() -> RetryLayerBuilder {
        RetryLayerBuilder {
            settings: Settings {
                max_retries: DEFAULT_LAYER_MAX_RETRIES,
                base_delay: DEFAULT_LAYER_BASE_DELAY,
                max_delay: DEFAULT_LAYER_MAX_DELAY,
                jitter: DEFAULT_JITTER,
                deadline: DEFAULT_LAYER_DEADLINE,
                budget: Some((
                    DEFAULT_BUDGET_TTL,
                    DEFAULT_BUDGET_MIN_PER_SEC,
                    DEFAULT_BUDGET_PERCENT,
                )),
            },
            body_cap: DEFAULT_BODY_CAP,
            idempotent: vec![
                Method::GET,
                Method::HEAD,
                Method::OPTIONS,
                Method::PUT,
                Method::DELETE,
                Method::TRACE,
            ],
        }
    }

    /// A handle on the counters of this layer, its clones and every service they made.
    pub fn handle(&self) -> RetryHandle {
        RetryHandle {
            counters: Arc::clone(&self.shared.counters),
        }
    }
}

/// Reads the counters of a [`RetryLayer`] or a [`Retrying`](crate::Retrying) (and their
/// clones) without holding the layer: cheap to clone, for a `/stats` or metrics handler.
#[derive(Debug, Clone)]
pub struct RetryHandle {
    counters: Arc<Counters>,
}

impl RetryHandle {
    pub(crate) fn new(counters: Arc<Counters>) -> Self {
        RetryHandle { counters }
    }

    /// The counters since the layer was built.
    pub fn stats(&self) -> RetryStats {
        self.counters.snapshot()
    }
}

/// Collects a [`RetryLayer`]'s settings; [`build`](Self::build) checks them together. The
/// setters never fail.
#[derive(Debug, Clone)]
#[must_use]
pub struct RetryLayerBuilder {
    settings: Settings,
    body_cap: usize,
    idempotent: Vec<Method>,
}

impl RetryLayerBuilder {
    /// Sets how many times a request may be retried after its first attempt. Defaults to 2.
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.settings.max_retries = retries;
        self
    }

    /// Sets the first delay and the longest one; delays double in between, with jitter. The
    /// first must not exceed the longest, which must be above zero. Defaults to 100 ms and
    /// 500 ms.
    pub fn delays(mut self, base: Duration, cap: Duration) -> Self {
        self.settings.base_delay = base;
        self.settings.max_delay = cap;
        self
    }

    /// Sets the jitter factor, from 0 to 100: each delay grows by a random share of itself up
    /// to this (0 for none, 1 for up to double). Defaults to 1.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.settings.jitter = jitter;
        self
    }

    /// Sets the overall deadline from the first attempt; no retry starts that could not finish
    /// by then. Defaults to 2 s.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.settings.deadline = deadline;
        self
    }

    /// Sets the largest request body recorded for replay (as the service reads it). Larger
    /// bodies, and bodies of unknown length, stream through untouched and their requests are not retried. Defaults to 64 KiB.
    pub fn body_cap(mut self, bytes: usize) -> Self {
        self.body_cap = bytes;
        self
    }

    /// Sets the methods whose requests may run twice (retried even when the statement may have
    /// reached the database).
    pub fn idempotent_methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.idempotent = methods.into_iter().collect();
        self
    }

    /// Sets the budget shared by every clone: deposits expire after `ttl` (1 to 60 s);
    /// `min_per_sec` retries a second are always allowed; on top, `percent` (0.0 to 1000.0) of
    /// requests may be retried. Defaults to 10 s, 10 a second and 0.2.
    pub fn budget(mut self, ttl: Duration, min_per_sec: u32, percent: f32) -> Self {
        self.settings.budget = Some((ttl, min_per_sec, percent));
        self
    }

    /// Turns the budget off: only `max_retries` and the deadline limit retries.
    pub fn without_budget(mut self) -> Self {
        self.settings.budget = None;
        self
    }

    /// The layer, with counters of its own.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first setting out of range (`delays`, `jitter`, `budget`).
    pub fn build(self) -> Result<RetryLayer, ConfigError> {
        self.settings.check()?;
        Ok(RetryLayer {
            body_cap: self.body_cap,
            idempotent: MethodSet::new(&self.idempotent),
            shared: Arc::new(self.settings.shared(true)),
        })
    }
}

impl<S: Clone> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            template: Arc::new(inner.clone()),
            inner,
            shared: Arc::clone(&self.shared),
            idempotent: self.idempotent.clone(),
            body_cap: self.body_cap,
        }
    }
}

/// The service made by [`RetryLayer`].
///
/// It follows `tower::retry`'s protocol — copy the request before the first attempt, ask the
/// policy after each, wait, poll the service ready, call again — in a future of its own: the
/// copy, the service clone and the per-request state live in one allocation made only for a
/// replayable request, so the future that is moved around on every request stays as small as
/// the inner one. `tower::retry::Retry` keeps all three inline, and moving them cost more than
/// the rest of the layer (see the crate's Performance section).
///
/// A retry calls a clone of the inner service made when it is needed, from a copy kept since the
/// layer was applied: a request that is never retried shares that copy (one reference count)
/// rather than cloning the inner service, whose clone may bump a reference count per layer and
/// per piece of application state, each contended across cores under load.
#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    template: Arc<S>,
    shared: Arc<Shared>,
    idempotent: MethodSet,
    body_cap: usize,
}

impl<S: fmt::Debug> fmt::Debug for Retry<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("body_cap", &self.body_cap)
            .finish_non_exhaustive()
    }
}

/// A set of methods, as a bit per standard method (copied with the policy for free) plus a
/// list for extension methods, if any are configured.
#[derive(Debug, Clone)]
struct MethodSet {
    standard: u16,
    other: Option<Arc<[Method]>>,
}

/// The standard methods, each with its bit in [`MethodSet::standard`].
const STANDARD_METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::OPTIONS,
    Method::PUT,
    Method::DELETE,
    Method::TRACE,
    Method::POST,
    Method::PATCH,
    Method::CONNECT,
];

impl MethodSet {
    fn new(methods: &[Method]) -> Self {
        let mut standard = 0;
        let mut other = Vec::new();
        for method in methods {
            match STANDARD_METHODS.iter().position(|known| known == method) {
                Some(bit) => standard |= 1 << bit,
                None => other.push(method.clone()),
            }
        }
        MethodSet {
            standard,
            other: (!other.is_empty()).then(|| other.into()),
        }
    }

    fn contains(&self, method: &Method) -> bool {
        match STANDARD_METHODS.iter().position(|known| known == method) {
            Some(bit) => self.standard & (1 << bit) != 0,
            None => self
                .other
                .as_ref()
                .is_some_and(|other| other.contains(method)),
        }
    }
}

/// A copy of `request` for another attempt, or `None` when its body cannot be replayed.
fn copy<B>(request: &Request<RetryBody<B>>) -> Option<Request<RetryBody<B>>> {
    let body = request.body().replay()?;
    let mut copy = Request::new(body);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    Some(copy)
}

impl<S, B, ResBody> Service<Request<B>> for Retry<S>
where
    S: Service<Request<RetryBody<B>>, Response = Response<ResBody>> + Clone,
    S::Error: AsFailure,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.shared.counters.attempt();
        // The request's clock starts and it counts into the budget, replayable or not.
        let attempts = Attempts::start(
            Arc::clone(&self.shared),
            self.idempotent.contains(request.method()),
        );
        let (parts, body) = request.into_parts();
        if body.is_end_stream() {
            // Nothing to read: call at once with an empty, replayable body.
            let request = Request::from_parts(parts, RetryBody::buffered(Bytes::new()));
            let replay = Replay::new(&request, Arc::clone(&self.template), attempts);
            return ResponseFuture {
                state: State::Called {
                    future: self.inner.call(request),
                },
                replay,
            };
        }
        if body
            .size_hint()
            .upper()
            .is_some_and(|upper| upper <= self.body_cap as u64)
        {
            // Recorded as the service reads it: nothing waits for the body before the call.
            let request = Request::from_parts(parts, RetryBody::recorded(body, self.body_cap));
            let replay = Replay::new(&request, Arc::clone(&self.template), attempts);
            return ResponseFuture {
                state: State::Called {
                    future: self.inner.call(request),
                },
                replay,
            };
        }
        self.shared.counters.not_replayable();
        let request = Request::from_parts(parts, RetryBody::streaming(body));
        ResponseFuture {
            state: State::Called {
                future: self.inner.call(request),
            },
            replay: None,
        }
    }
}

/// What a retry needs, boxed so the response future stays small: a copy of the request, the
/// service to clone for a retry and the request's retry state.
struct Replay<S, B> {
    request: Option<Request<RetryBody<B>>>,
    template: Arc<S>,
    /// The clone retries call, made at the first retry.
    service: Option<S>,
    attempts: Attempts,
}

impl<S, B> Replay<S, B> {
    /// `None` when the request cannot be replayed.
    fn new(
        request: &Request<RetryBody<B>>,
        template: Arc<S>,
        attempts: Attempts,
    ) -> Option<Box<Self>> {
        Some(Box::new(Replay {
            request: Some(copy(request)?),
            template,
            service: None,
            attempts,
        }))
    }
}

pin_project! {
    /// The response future of [`Retry`].
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<RetryBody<B>>>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        #[pin]
        state: State<S, B>,
        replay: Option<Box<Replay<S, B>>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<RetryBody<B>>>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        Called {
            #[pin]
            future: S::Future,
        },
        Waiting {
            sleep: Pin<Box<tokio::time::Sleep>>,
        },
        Polling,
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<RetryBody<B>>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<RetryBody<B>>, Response = Response<ResBody>> + Clone,
    S::Error: AsFailure,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let this = self.as_mut().project();
            let next = match this.state.project() {
                StateProj::Called { future } => {
                    let mut result = ready!(future.poll(cx));
                    // Only a request with a copy left, whose body could be read again, can be
                    // retried.
                    let Some(replay) = this.replay.as_mut().filter(|replay| {
                        replay
                            .request
                            .as_ref()
                            .is_some_and(|request| request.body().is_buffered())
                    }) else {
                        return Poll::Ready(result);
                    };
                    let failure: Option<&Failure> = match &mut result {
                        Ok(response) => attached(response.extensions()).map(|failure| &**failure),
                        Err(error) => error.as_failure(),
                    };
                    match replay.attempts.decide(failure) {
                        Decision::Retry(sleep) => State::Waiting {
                            sleep: Box::pin(sleep),
                        },
                        Decision::Stop => return Poll::Ready(result),
                    }
                }
                StateProj::Waiting { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    State::Polling
                }
                StateProj::Polling => {
                    let Some(replay) = this.replay.as_mut() else {
                        unreachable!("only a replayable request waits for a retry")
                    };
                    let service = replay
                        .service
                        .get_or_insert_with(|| S::clone(&replay.template));
                    if let Err(error) = ready!(service.poll_ready(cx)) {
                        return Poll::Ready(Err(error));
                    }
                    let Some(request) = replay.request.take() else {
                        unreachable!("a copy is kept for every retry")
                    };
                    // Keep a copy for the retry after this one (the body replays from memory).
                    replay.request = copy(&request);
                    let Some(service) = replay.service.as_mut() else {
                        unreachable!("made above")
                    };
                    State::Called {
                        future: service.call(request),
                    }
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}
