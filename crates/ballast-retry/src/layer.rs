//! The HTTP retry layer, built on `tower::retry`.

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
use http_body_util::{BodyExt, Collected, Limited};
use pin_project_lite::pin_project;
use tower::retry::budget::TpsBudget;
use tower::retry::Policy;
use tower_layer::Layer;
use tower_service::Service;

use ballast_core::http::{attached, AsFailure};
use ballast_core::{BoxError, ConfigError};

use crate::body::RetryBody;
use crate::policy::{
    self, Attempts, Counters, Decision, RetryStats, Shared, DEFAULT_BODY_CAP,
    DEFAULT_BUDGET_MIN_PER_SEC, DEFAULT_BUDGET_PERCENT, DEFAULT_BUDGET_TTL, DEFAULT_JITTER,
    DEFAULT_LAYER_BASE_DELAY, DEFAULT_LAYER_DEADLINE, DEFAULT_LAYER_MAX_DELAY,
    DEFAULT_LAYER_MAX_RETRIES,
};

/// Re-runs requests whose database failure is worth retrying and safe to repeat.
///
/// See the [crate docs](crate) for the rules. Clones share one budget and one set of counters
/// ([`RetryLayer::stats`]).
///
/// ```
/// use std::time::Duration;
/// use ballast_retry::RetryLayer;
///
/// let layer = RetryLayer::new()
///     .max_retries(2)
///     .delays(Duration::from_millis(200), Duration::from_secs(2))
///     .expect("base below cap")
///     .deadline(Duration::from_secs(5));
/// assert_eq!(layer.stats().retries, 0);
/// ```
#[derive(Clone)]
pub struct RetryLayer {
    settings: Settings,
    shared: Arc<Shared>,
}

/// What the setters change; `shared` is rebuilt from it.
#[derive(Debug, Clone)]
struct Settings {
    max_retries: u32,
    base_delay: Duration,
    max_delay: Duration,
    jitter: f64,
    deadline: Duration,
    body_cap: usize,
    idempotent: Arc<[Method]>,
    budget: Option<(Duration, u32, f32)>,
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("settings", &self.settings)
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
        let settings = Settings {
            max_retries: DEFAULT_LAYER_MAX_RETRIES,
            base_delay: DEFAULT_LAYER_BASE_DELAY,
            max_delay: DEFAULT_LAYER_MAX_DELAY,
            jitter: DEFAULT_JITTER,
            deadline: DEFAULT_LAYER_DEADLINE,
            body_cap: DEFAULT_BODY_CAP,
            idempotent: Arc::new([
                Method::GET,
                Method::HEAD,
                Method::OPTIONS,
                Method::PUT,
                Method::DELETE,
                Method::TRACE,
            ]),
            budget: Some((
                DEFAULT_BUDGET_TTL,
                DEFAULT_BUDGET_MIN_PER_SEC,
                DEFAULT_BUDGET_PERCENT,
            )),
        };
        Self::from_settings(settings, None)
            .unwrap_or_else(|_| unreachable!("the defaults are valid"))
    }

    fn from_settings(
        settings: Settings,
        counters: Option<Arc<Counters>>,
    ) -> Result<Self, tower::retry::backoff::InvalidBackoff> {
        let budget = settings
            .budget
            .map(|(ttl, min_per_sec, percent)| TpsBudget::new(ttl, min_per_sec, percent));
        let mut shared = policy::shared(
            settings.max_retries,
            settings.base_delay,
            settings.max_delay,
            settings.jitter,
            settings.deadline,
            budget,
            true,
        )?;
        // A layer changed by a setter keeps counting where it counted: clones taken before
        // the change share one set of counters with it.
        if let Some(counters) = counters {
            shared.counters = counters;
        }
        Ok(RetryLayer {
            settings,
            shared: Arc::new(shared),
        })
    }

    /// This layer with `change` made to its settings; a rejected change names `setting`.
    fn rebuilt(
        self,
        setting: &'static str,
        change: impl FnOnce(&mut Settings),
    ) -> Result<Self, ConfigError> {
        let mut settings = self.settings;
        change(&mut settings);
        Self::from_settings(settings, Some(Arc::clone(&self.shared.counters)))
            .map_err(|error| ConfigError::new(setting, error.to_string()))
    }

    /// Sets how many times a request may be retried after its first attempt. Defaults to 2.
    #[must_use]
    pub fn max_retries(self, retries: u32) -> Self {
        let settings = Settings {
            max_retries: retries,
            ..self.settings.clone()
        };
        Self::from_settings(settings, Some(Arc::clone(&self.shared.counters))).unwrap_or(self)
    }

    /// Sets the first delay and the longest one; delays double in between, with jitter.
    /// Defaults to 100 ms and 500 ms.
    ///
    /// # Errors
    ///
    /// `base` is longer than `cap`, or `cap` is zero.
    pub fn delays(self, base: Duration, cap: Duration) -> Result<Self, ConfigError> {
        self.rebuilt("delays", |settings| {
            settings.base_delay = base;
            settings.max_delay = cap;
        })
    }

    /// Sets the jitter factor: each delay grows by a random share of itself up to this (0 for
    /// none, 1 for up to double). Defaults to 1.
    ///
    /// # Errors
    ///
    /// `jitter` is negative, above 100 or NaN.
    pub fn jitter(self, jitter: f64) -> Result<Self, ConfigError> {
        self.rebuilt("jitter", |settings| settings.jitter = jitter)
    }

    /// Sets the overall deadline from the first attempt; no retry starts that could not finish
    /// by then. Defaults to 2 s.
    #[must_use]
    pub fn deadline(self, deadline: Duration) -> Self {
        let settings = Settings {
            deadline,
            ..self.settings.clone()
        };
        Self::from_settings(settings, Some(Arc::clone(&self.shared.counters))).unwrap_or(self)
    }

    /// Sets the largest request body buffered for replay. Larger bodies, and bodies of unknown
    /// length, stream through untouched and their requests are not retried. Defaults to 64 KiB.
    #[must_use]
    pub fn body_cap(mut self, bytes: usize) -> Self {
        self.settings.body_cap = bytes;
        self
    }

    /// Sets the methods whose requests may run twice (retried even when the statement may have
    /// reached the database).
    #[must_use]
    pub fn idempotent_methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.settings.idempotent = methods.into_iter().collect();
        self
    }

    /// Sets the budget shared by every clone: deposits expire after `ttl`; `min_per_sec` retries
    /// a second are always allowed; on top, `percent` (0.0 to 1000.0) of requests may be
    /// retried. Defaults to 10 s, 10 a second and 0.2.
    ///
    /// # Errors
    ///
    /// `ttl` is not between 1 and 60 seconds, or `percent` is out of range (tower's limits).
    pub fn budget(
        self,
        ttl: Duration,
        min_per_sec: u32,
        percent: f32,
    ) -> Result<Self, ConfigError> {
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&ttl)
            || !(0.0..=1000.0).contains(&percent)
        {
            return Err(ConfigError::new(
                "budget",
                format!(
                    "ttl must be 1 to 60 seconds and percent 0 to 1000 (got {ttl:?}, {percent})"
                ),
            ));
        }
        self.rebuilt("budget", |settings| {
            settings.budget = Some((ttl, min_per_sec, percent));
        })
    }

    /// Turns the budget off: only `max_retries` and the deadline limit retries.
    #[must_use]
    pub fn without_budget(self) -> Self {
        let settings = Settings {
            budget: None,
            ..self.settings.clone()
        };
        Self::from_settings(settings, Some(Arc::clone(&self.shared.counters))).unwrap_or(self)
    }

    /// The counters of this layer and every service it made.
    pub fn stats(&self) -> RetryStats {
        self.shared.counters.snapshot()
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        let policy = HttpPolicy {
            attempts: Attempts::new(Arc::clone(&self.shared), false),
            idempotent: MethodSet::new(&self.settings.idempotent),
        };
        Retry {
            inner: tower::retry::Retry::new(policy, inner),
            shared: Arc::clone(&self.shared),
            body_cap: self.settings.body_cap,
        }
    }
}

/// The service made by [`RetryLayer`].
#[derive(Clone)]
pub struct Retry<S> {
    inner: TowerRetry<S>,
    shared: Arc<Shared>,
    body_cap: usize,
}

impl<S: fmt::Debug> fmt::Debug for Retry<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner.get_ref())
            .field("body_cap", &self.body_cap)
            .finish_non_exhaustive()
    }
}

/// The policy handed to `tower::retry::Retry` (public only because the response future's type
/// names it). tower clones it into each request's future; the clone's count starts when the
/// first copy of the request is made, just before the first attempt.
#[derive(Debug, Clone)]
pub struct HttpPolicy {
    attempts: Attempts,
    idempotent: MethodSet,
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

impl<B, ResBody, E> Policy<Request<RetryBody<B>>, Response<ResBody>, E> for HttpPolicy
where
    E: AsFailure,
{
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _request: &mut Request<RetryBody<B>>,
        result: &mut Result<Response<ResBody>, E>,
    ) -> Option<Self::Future> {
        let failure: Option<&Failure> = match result {
            Ok(response) => attached(response.extensions()).map(|failure| &**failure),
            Err(error) => error.as_failure(),
        };
        match self.attempts.decide(failure) {
            Decision::Retry(sleep) => Some(sleep),
            Decision::Stop => None,
        }
    }

    fn clone_request(&mut self, request: &Request<RetryBody<B>>) -> Option<Request<RetryBody<B>>> {
        let body = request.body().replay()?;
        if self.attempts.retries() == 0 {
            // The first copy, made as the request is first sent: its clock starts here.
            let idempotent = self.idempotent.contains(request.method());
            self.attempts.restart(idempotent);
        }
        let mut clone = Request::new(body);
        *clone.method_mut() = request.method().clone();
        *clone.uri_mut() = request.uri().clone();
        *clone.version_mut() = request.version();
        *clone.headers_mut() = request.headers().clone();
        *clone.extensions_mut() = request.extensions().clone();
        Some(clone)
    }
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
        policy::deposit(&self.shared);
        self.shared.counters.attempt();
        let (parts, body) = request.into_parts();
        let state = if body.is_end_stream() {
            // Nothing to read: call at once with an empty, replayable body.
            let request = Request::from_parts(parts, RetryBody::buffered(Bytes::new()));
            State::Called {
                future: self.inner.call(request),
            }
        } else if body
            .size_hint()
            .upper()
            .is_some_and(|upper| upper <= self.body_cap as u64)
        {
            // The body is read first; the call happens later, on the service that was polled
            // ready, and a fresh clone takes its place here.
            let clone = self.inner.clone();
            State::Buffering {
                collect: Limited::new(body, self.body_cap).collect(),
                parts: Some(parts),
                retry: Some(std::mem::replace(&mut self.inner, clone)),
            }
        } else {
            self.shared.counters.not_replayable();
            let request = Request::from_parts(parts, RetryBody::streaming(body));
            State::Called {
                future: self.inner.call(request),
            }
        };
        ResponseFuture { state }
    }
}

type TowerRetry<S> = tower::retry::Retry<HttpPolicy, S>;

pin_project! {
    /// The response future of [`Retry`].
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<RetryBody<B>>>,
        HttpPolicy: Policy<Request<RetryBody<B>>, S::Response, S::Error>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<RetryBody<B>>>,
        HttpPolicy: Policy<Request<RetryBody<B>>, S::Response, S::Error>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        Buffering {
            #[pin]
            collect: http_body_util::combinators::Collect<Limited<B>>,
            parts: Option<http::request::Parts>,
            retry: Option<TowerRetry<S>>,
        },
        Called {
            #[pin]
            future: tower::retry::future::ResponseFuture<HttpPolicy, S, Request<RetryBody<B>>>,
        },
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<RetryBody<B>>>,
    HttpPolicy: Policy<Request<RetryBody<B>>, S::Response, S::Error>,
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
                StateProj::Called { future } => return future.poll(cx),
                StateProj::Buffering {
                    collect,
                    parts,
                    retry,
                } => {
                    let collected: Result<Collected<Bytes>, BoxError> = ready!(collect.poll(cx));
                    let body = match collected {
                        Ok(collected) => RetryBody::buffered(collected.to_bytes()),
                        // The client went away or sent a broken body: the service sees the
                        // error it would have seen reading the body itself.
                        Err(error) => RetryBody::failed(error),
                    };
                    let (Some(parts), Some(mut retry)) = (parts.take(), retry.take()) else {
                        unreachable!("the buffering state is left once its body is read")
                    };
                    State::Called {
                        future: retry.call(Request::from_parts(parts, body)),
                    }
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}
