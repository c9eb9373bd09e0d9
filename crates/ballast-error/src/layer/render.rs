//! Rendering a failure (a classified one, a foreign error, a panic, a plain error status) as
//! a problem response, and logging it once.

use std::any::Any;
use std::sync::Arc;

use ballast_core::http::{attach, failure_response, Problem};
use ballast_core::BoxError;
use ballast_core::{Cause, Failure};
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use tower_http::catch_panic::ResponseForPanic;

use super::service::{with_instance, RequestContext};
use crate::error::{Error, Repr};
use crate::map::{DefaultProblems, MapProblem};
use crate::ResponseBody;

/// An error status whose body is not a problem document.
pub(super) fn is_plain_error<B>(response: &Response<B>) -> bool {
    (response.status().is_client_error() || response.status().is_server_error())
        && response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_none_or(|value| !value.as_bytes().starts_with(b"application/problem+json"))
}

/// `response` with its body replaced by the problem document of its status; its other headers
/// and extensions stay.
pub(super) fn plain_error_problem<M, B, P>(
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
pub(super) fn with_problem_body<M, B>(
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

pub(super) fn is_head<M>(context: &RequestContext<M>) -> bool {
    context.method == Method::HEAD
}

/// A service error as an [`Error`]'s parts: recognised types keep their classification.
pub(super) fn classify(error: BoxError) -> Repr {
    let error = match error.downcast::<Error>() {
        Ok(error) => return error.into_repr(),
        Err(error) => error,
    };
    Repr::Failure(Arc::new(classify_foreign(error)))
}

pub(super) fn classify_foreign(error: BoxError) -> Failure {
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
pub(super) fn render<M: MapProblem, B>(
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

pub(super) fn log<M>(context: &RequestContext<M>, failure: &Failure, status: StatusCode) {
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

pub(super) fn to_boxed<B>(response: Response<Full<Bytes>>) -> Response<ResponseBody<B>> {
    response.map(ResponseBody::problem)
}

pub(super) fn internal_response<B>() -> Response<ResponseBody<B>> {
    to_boxed(DefaultProblems::problem_for(&Failure::new(Cause::Internal)).to_response(false, None))
}

/// Answers a panic with a 500 carrying an internal failure, which [`ErrorResponse`](crate::ErrorResponse) renders and
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
