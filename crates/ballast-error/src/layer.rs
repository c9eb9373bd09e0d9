//! The layer: failures (in response extensions, as service errors, or as panics) become
//! problem+json responses, logged once.

use std::any::Any;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use ballast_core::{Cause, Failure};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower_http::catch_panic::ResponseForPanic;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{Error, HandlerProblem, Repr};
use crate::map::{DefaultProblems, MapProblem};
use ballast_core::http::{attach, attached, failure_response, Problem, RetryAfter};
pub use ballast_core::BoxError;

pin_project! {
    /// The response body of [`ErrorResponse`]: the service's own body, or the problem document
    /// the layer rendered in its place. Either way its error is a [`BoxError`].
    pub struct ResponseBody<B> {
        #[pin]
        kind: BodyKind<B>,
    }
}

pin_project! {
    #[project = BodyKindProj]
    enum BodyKind<B> {
        Inner { #[pin] body: B },
        Problem { body: Full<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    /// A body of the service's, passed through.
    pub fn inner(body: B) -> Self {
        ResponseBody {
            kind: BodyKind::Inner { body },
        }
    }

    /// A problem document the layer rendered.
    fn problem(body: Full<Bytes>) -> Self {
        ResponseBody {
            kind: BodyKind::Problem { body },
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            BodyKind::Inner { .. } => f.write_str("ResponseBody::Inner"),
            BodyKind::Problem { body } => {
                f.debug_tuple("ResponseBody::Problem").field(body).finish()
            }
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            BodyKindProj::Inner { body } => body
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(Into::into))),
            BodyKindProj::Problem { body } => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(|never| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Inner { body } => body.is_end_stream(),
            BodyKind::Problem { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.kind {
            BodyKind::Inner { body } => body.size_hint(),
            BodyKind::Problem { body } => body.size_hint(),
        }
    }
}

/// Renders every failure of the wrapped service as an RFC 9457 problem+json response and logs it
/// exactly once.
///
/// - A response that carries a classified failure in its extensions (what
///   [`Error`]'s `IntoResponse` produces) is rendered again with this layer's
///   [`MapProblem`] and `Retry-After` policy.
/// - A service error (`Err` from a plain Tower or hyper service) becomes a response too: a
///   [`Failure`], an [`Error`], diesel, driver and I/O errors are classified, and
///   `tower::timeout`'s `Elapsed` is a 503 `DB_CONNECTION_ERROR` (timed out, retryable); anything
///   else is a 500 `CRITICAL_ERROR`. The stack's error type becomes [`Infallible`].
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

/// The service made by [`ErrorResponseLayer`]; see there.
pub struct ErrorResponse<S, M = DefaultProblems> {
    inner: S,
    /// Copied into every response future: a few words, where a shared `Arc` would be a reference
    /// count every request on every core bumps.
    settings: Settings<M>,
    /// An error from the inner service's `poll_ready`, answered on the next call.
    not_ready: Option<BoxError>,
}

impl<S: Clone, M: Clone> Clone for ErrorResponse<S, M> {
    fn clone(&self) -> Self {
        ErrorResponse {
            inner: self.inner.clone(),
            settings: self.settings.clone(),
            not_ready: None,
        }
    }
}

impl<S: fmt::Debug, M: fmt::Debug> fmt::Debug for ErrorResponse<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorResponse")
            .field("inner", &self.inner)
            .field("map", &self.settings.map)
            .field("retry_after", &self.settings.retry_after)
            .finish_non_exhaustive()
    }
}

impl<S, M, ReqBody, ResBody> Service<Request<ReqBody>> for ErrorResponse<S, M>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
    M: MapProblem,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future, M>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.not_ready.is_none() {
            if let Err(error) = ready!(self.inner.poll_ready(cx)) {
                // There is no request to answer yet: the next call answers with this error.
                self.not_ready = Some(error.into());
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let context = RequestContext {
            method: request.method().clone(),
            path: request.uri().path_and_query().cloned(),
            settings: self.settings.clone(),
            request_id: request_id(request.headers()),
        };
        let state = match self.not_ready.take() {
            Some(error) => State::NotReady { error: Some(error) },
            // A panic while the service makes its future is answered like one while it runs.
            None => match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(request))) {
                Ok(future) => State::Called { future },
                Err(panic) => State::Panicked { panic: Some(panic) },
            },
        };
        ResponseFuture {
            state,
            context: Some(context),
        }
    }
}

/// The layer's settings, which its services and their futures carry.
#[derive(Clone)]
struct Settings<M> {
    map: M,
    retry_after: RetryAfter,
    plain_errors: bool,
}

impl<M> RequestContext<M> {
    /// The request's path.
    fn path(&self) -> &str {
        self.path
            .as_ref()
            .map_or("/", http::uri::PathAndQuery::path)
    }
}

/// What a response future needs to render and log a failure.
struct RequestContext<M> {
    method: Method,
    /// For the log line (its path only: a query string can carry tokens).
    path: Option<http::uri::PathAndQuery>,
    settings: Settings<M>,
    /// The request's id (`x-request-id`, as tower-http's `SetRequestIdLayer` sets it), when it
    /// has one a URI may carry: the problem's `instance`, and the log line's `request_id`.
    request_id: Option<HeaderValue>,
}

/// The request id header tower-http's request-id layers use (a `HeaderName`, so a lookup does
/// not parse the name first).
const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The request's id when it is one a problem's `instance` can carry as is (a URI reference of
/// unreserved characters, as UUIDs and ULIDs are).
fn request_id(headers: &http::HeaderMap) -> Option<HeaderValue> {
    // A pass over the request's few names costs less than hashing this one for a lookup.
    headers
        .iter()
        .find_map(|(name, value)| (*name == REQUEST_ID).then_some(value))
        .filter(|id| {
            !id.is_empty()
                && id.len() <= 128
                && id
                    .as_bytes()
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        })
        .cloned()
}

/// Adds the request id to a problem as its `instance` (RFC 9457 §3.1.5).
fn with_instance<M>(context: &RequestContext<M>, problem: &mut Problem) {
    if let Some(id) = context.request_id.as_ref().and_then(|id| id.to_str().ok()) {
        problem.members.insert("instance".to_owned(), id.into());
    }
}

pin_project! {
    /// The response future of [`ErrorResponse`].
    pub struct ResponseFuture<F, M> {
        #[pin]
        state: State<F>,
        context: Option<RequestContext<M>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] future: F },
        Panicked { panic: Option<Box<dyn Any + Send + 'static>> },
        NotReady { error: Option<BoxError> },
    }
}

impl<F, M> fmt::Debug for ResponseFuture<F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, M, B, E> Future for ResponseFuture<F, M>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    E: Into<BoxError>,
    M: MapProblem,
{
    type Output = Result<Response<ResponseBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.state.project() {
            // The handler's panic is caught here, as the server would otherwise lose the
            // connection (and a task) without an answer.
            StateProj::Called { future } => {
                match std::panic::catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
                    Ok(Poll::Pending) => return Poll::Pending,
                    Ok(Poll::Ready(Ok(response))) => Polled::Response(response),
                    Ok(Poll::Ready(Err(error))) => Polled::Error(error.into()),
                    Err(panic) => Polled::Panic(PanicResponse.response_for_panic(panic)),
                }
            }
            StateProj::Panicked { panic } => Polled::Panic(
                PanicResponse.response_for_panic(
                    panic
                        .take()
                        .unwrap_or_else(|| Box::new("the service panicked")),
                ),
            ),
            StateProj::NotReady { error } => Polled::Error(
                error
                    .take()
                    .unwrap_or_else(|| "the service was not ready".into()),
            ),
        };
        let Some(context) = this.context.take() else {
            // Polled after completion: answer like any other internal error.
            return Poll::Ready(Ok(internal_response()));
        };
        Poll::Ready(Ok(match result {
            Polled::Response(response) => match attached(response.extensions()) {
                Some(failure) => {
                    let failure = Arc::clone(failure);
                    let (parts, _body) = response.into_parts();
                    render(&context, failure, Some(parts.extensions))
                }
                None if context.settings.plain_errors && is_plain_error(&response) => {
                    plain_error_problem(&context, response)
                }
                // A handler's own problem: rendered again with the request's id, and with a
                // `Retry-After` when it invites a retry.
                None => match response.extensions().get::<HandlerProblem>() {
                    Some(HandlerProblem(problem))
                        if context.request_id.is_some()
                            || (problem.retryable
                                && problem.status == StatusCode::SERVICE_UNAVAILABLE) =>
                    {
                        let mut problem = Problem::clone(problem);
                        with_instance(&context, &mut problem);
                        let retry_after = context.settings.retry_after.for_problem(&problem, None);
                        let (parts, _body) = response.into_parts();
                        with_problem_body(&context, parts, &problem, retry_after)
                    }
                    _ => response.map(ResponseBody::inner),
                },
            },
            // The panic's answer carries its failure: rendered and logged like any other.
            Polled::Panic(response) => match attached(response.extensions()) {
                Some(failure) => {
                    let failure = Arc::clone(failure);
                    let (parts, _body) = response.into_parts();
                    render(&context, failure, Some(parts.extensions))
                }
                None => to_boxed(response),
            },
            Polled::Error(error) => match classify(error) {
                Repr::Failure(failure) => render(&context, failure, None),
                Repr::Problem(problem) => {
                    let retry_after = context.settings.retry_after.for_problem(&problem, None);
                    to_boxed(problem.to_response(is_head(&context), retry_after))
                }
            },
        }))
    }
}

/// What the service's future gave.
enum Polled<B> {
    Response(Response<B>),
    /// The service panicked: [`PanicResponse`]'s answer.
    Panic(Response<Full<Bytes>>),
    Error(BoxError),
}

/// An error status whose body is not a problem document.
fn is_plain_error<B>(response: &Response<B>) -> bool {
    (response.status().is_client_error() || response.status().is_server_error())
        && response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_none_or(|value| !value.as_bytes().starts_with(b"application/problem+json"))
}

/// `response` with its body replaced by the problem document of its status; its other headers
/// and extensions stay.
fn plain_error_problem<M, B, P>(
    context: &RequestContext<M>,
    response: Response<P>,
) -> Response<ResponseBody<B>> {
    let (parts, _body) = response.into_parts();
    let mut problem = crate::map::problem_for_status(parts.status);
    with_instance(context, &mut problem);
    tracing::debug!(
        status = parts.status.as_u16(),
        method = %context.method,
        path = context.path(),
        "an error response without a problem document: answered with one"
    );
    with_problem_body(context, parts, &problem, None)
}

/// A response of `parts` (its status, other headers and extensions kept) with `problem` as its
/// body and the problem's own headers (`content-type`, `content-length`, `cache-control:
/// no-store`, `retry-after`).
fn with_problem_body<M, B>(
    context: &RequestContext<M>,
    mut parts: http::response::Parts,
    problem: &Problem,
    retry_after: Option<std::time::Duration>,
) -> Response<ResponseBody<B>> {
    let rendered = problem.to_response(is_head(context), retry_after);
    let (rendered_parts, body) = rendered.into_parts();
    for name in [
        http::header::CONTENT_TYPE,
        http::header::CONTENT_LENGTH,
        http::header::CACHE_CONTROL,
        http::header::RETRY_AFTER,
    ] {
        if let Some(value) = rendered_parts.headers.get(&name) {
            parts.headers.insert(name, value.clone());
        } else if name != http::header::RETRY_AFTER {
            parts.headers.remove(&name);
        }
    }
    to_boxed(Response::from_parts(parts, body))
}

fn is_head<M>(context: &RequestContext<M>) -> bool {
    context.method == Method::HEAD
}

/// A service error as an [`Error`]'s parts: recognised types keep their classification.
fn classify(error: BoxError) -> Repr {
    let error = match error.downcast::<Error>() {
        Ok(error) => return error.into_repr(),
        Err(error) => error,
    };
    Repr::Failure(Arc::new(classify_foreign(error)))
}

fn classify_foreign(error: BoxError) -> Failure {
    // `tower::timeout::TimeoutLayer` gave up on the request: the database (or whatever the
    // handler waited on) did not answer in time. Retrying later may work.
    match error.downcast::<tower::timeout::error::Elapsed>() {
        Ok(error) => Failure::new(Cause::TimedOut)
            .with_detail("the request took longer than its timeout")
            .with_source(*error),
        Err(error) => Failure::from_boxed(error),
    }
}

/// The problem response for `failure`, logged once; `extensions` are carried over from the
/// response that carried it.
fn render<M: MapProblem, B>(
    context: &RequestContext<M>,
    failure: Arc<Failure>,
    extensions: Option<http::Extensions>,
) -> Response<ResponseBody<B>> {
    let mut problem = context.settings.map.problem(&failure);
    problem.keep_promise(&failure, context.method.is_idempotent());
    with_instance(context, &mut problem);
    log(context, &failure, problem.status);
    let retry_after = context
        .settings
        .retry_after
        .for_problem(&problem, failure.retry_after());
    let mut response = problem.to_response(is_head(context), retry_after);
    if let Some(extensions) = extensions {
        *response.extensions_mut() = extensions;
    }
    attach(response.extensions_mut(), failure);
    to_boxed(response)
}

fn log<M>(context: &RequestContext<M>, failure: &Failure, status: StatusCode) {
    let request_id = context
        .request_id
        .as_ref()
        .and_then(|id| id.to_str().ok())
        .unwrap_or("none");
    // The path only: a query string can carry tokens.
    let path = context.path();
    macro_rules! event {
        ($level:expr) => {
            tracing::event!(
                $level,
                status = status.as_u16(),
                code = failure.code().as_str(),
                cause = ?failure.cause(),
                retryable = failure.retryable(),
                reach = ?failure.reach(),
                driver_code = %failure.driver_code().map_or_else(|| "none".to_owned(), |code| code.to_string()),
                method = %context.method,
                path,
                request_id,
                // Formatted only when the event is enabled.
                "request failed: {}",
                failure.report()
            )
        };
    }
    // A 500 is a bug (ERROR); a 503 an outage an operator watches (WARN); a 4xx the client's own
    // data (a duplicate, an invalid value), which no operator has to act on (DEBUG). A failure
    // known before the request asked — an outage or an overload the pool answers at once — was
    // logged by the pool when it began: one WARN line per refused request would be thousands a
    // second exactly when the service is busiest (DEBUG).
    if status.is_client_error() || failure.is_known_outage() {
        event!(tracing::Level::DEBUG);
    } else if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        event!(tracing::Level::ERROR);
    } else {
        event!(tracing::Level::WARN);
    }
}

fn to_boxed<B>(response: Response<Full<Bytes>>) -> Response<ResponseBody<B>> {
    response.map(ResponseBody::problem)
}

fn internal_response<B>() -> Response<ResponseBody<B>> {
    to_boxed(DefaultProblems::problem_for(&Failure::new(Cause::Internal)).to_response(false, None))
}

/// Answers a panic with a 500 carrying an internal failure, which [`ErrorResponse`] renders and
/// logs like any other.
#[derive(Debug, Clone, Copy, Default)]
pub struct PanicResponse;

impl ResponseForPanic for PanicResponse {
    type ResponseBody = Full<Bytes>;

    fn response_for_panic(
        &mut self,
        panic: Box<dyn Any + Send + 'static>,
    ) -> Response<Full<Bytes>> {
        let message = panic
            .downcast_ref::<&str>()
            .map(|message| (*message).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        let failure =
            Failure::new(Cause::Internal).with_detail(format!("handler panicked: {message}"));
        failure_response(Arc::new(failure), false, false, None)
    }
}
