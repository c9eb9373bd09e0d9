//! [`ErrorResponse`]: the service, and what it keeps of each request for its failures.

use std::convert::Infallible;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::task::{ready, Context, Poll};

use ballast_core::http::{Problem, RetryAfter};
use ballast_core::BoxError;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::future::State;
use crate::map::{DefaultProblems, MapProblem};
use crate::{ResponseBody, ResponseFuture};

/// The service made by [`ErrorResponseLayer`](crate::ErrorResponseLayer); see there.
pub struct ErrorResponse<S, M = DefaultProblems> {
    pub(super) inner: S,
    /// Copied into every response future: a few words, where a shared `Arc` would be a reference
    /// count every request on every core bumps.
    pub(super) settings: Settings<M>,
    /// An error from the inner service's `poll_ready`, answered on the next call.
    pub(super) not_ready: Option<BoxError>,
}

impl<S, M> ErrorResponse<S, M> {
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
pub(super) struct Settings<M> {
    pub(super) map: M,
    pub(super) retry_after: RetryAfter,
    pub(super) plain_errors: bool,
}

impl<M> RequestContext<M> {
    /// The request's path.
    pub(super) fn path(&self) -> &str {
        self.path
            .as_ref()
            .map_or("/", http::uri::PathAndQuery::path)
    }
}

/// What a response future needs to render and log a failure.
pub(super) struct RequestContext<M> {
    pub(super) method: Method,
    /// For the log line (its path only: a query string can carry tokens).
    pub(super) path: Option<http::uri::PathAndQuery>,
    pub(super) settings: Settings<M>,
    /// The request's id (`x-request-id`, as tower-http's `SetRequestIdLayer` sets it), when it
    /// has one a URI may carry: the problem's `instance`, and the log line's `request_id`.
    pub(super) request_id: Option<HeaderValue>,
}

/// The request id header tower-http's request-id layers use (a `HeaderName`, so a lookup does
/// not parse the name first).
pub(super) const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The request's id when it is one a problem's `instance` can carry as is (a URI reference of
/// unreserved characters, as UUIDs and ULIDs are).
pub(super) fn request_id(headers: &http::HeaderMap) -> Option<HeaderValue> {
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
pub(super) fn with_instance<M>(context: &RequestContext<M>, problem: &mut Problem) {
    if let Some(id) = context.request_id.as_ref().and_then(|id| id.to_str().ok()) {
        problem.members.insert("instance".to_owned(), id.into());
    }
}
