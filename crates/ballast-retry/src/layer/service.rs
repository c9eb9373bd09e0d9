//! [`Retry`]: the service, and which requests it may replay.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use ballast_core::http::AsFailure;
use ballast_core::BoxError;
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::future::{Replay, State};
use crate::body::RetryBody;
use crate::policy::{Attempts, Shared};
use crate::ResponseFuture;

/// The service made by [`RetryLayer`](crate::RetryLayer).
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
    pub(super) inner: S,
    pub(super) template: Arc<S>,
    pub(super) shared: Arc<Shared>,
    pub(super) idempotent: MethodSet,
    pub(super) body_cap: usize,
}

impl<S> Retry<S> {
    /// The inner service (the one each request's first attempt calls; retries call clones of the service the layer
    /// wrapped).
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
pub(super) struct MethodSet {
    pub(super) standard: u16,
    pub(super) other: Option<Arc<[Method]>>,
}

/// The standard methods, each with its bit in [`MethodSet::standard`].
pub(super) const STANDARD_METHODS: [Method; 9] = [
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
    pub(super) fn new(methods: &[Method]) -> Self {
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

    pub(super) fn contains(&self, method: &Method) -> bool {
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
pub(super) fn copy<B>(request: &Request<RetryBody<B>>) -> Option<Request<RetryBody<B>>> {
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
