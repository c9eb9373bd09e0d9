//! [`RequestTimeout`]: the service, which runs each request in its [`RequestScope`].

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ballast_core::scope::RequestScope;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::body::BodyState;
use super::future::{State, Timer};
use super::{Draining, TimedBody, TimeoutBody, TimeoutFuture};

/// The service made by [`RequestTimeoutLayer`](crate::timeout::RequestTimeoutLayer).
#[derive(Clone)]
pub struct RequestTimeout<S> {
    pub(super) inner: S,
    pub(super) timeout: Duration,
    pub(super) draining: Option<Draining>,
}

impl<S> RequestTimeout<S> {
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
