//! The response future of [`Retry`]: one attempt after another, as the policy decides.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use ballast_core::http::{attached, AsFailure};
use ballast_core::{BoxError, Failure};
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::service::copy;
use crate::body::RetryBody;
use crate::policy::{Attempts, Decision};

/// What a retry needs, boxed so the response future stays small: a copy of the request, the
/// service to clone for a retry and the request's retry state.
pub(super) struct Replay<S, B> {
    pub(super) request: Option<Request<RetryBody<B>>>,
    pub(super) template: Arc<S>,
    /// The clone retries call, made at the first retry.
    pub(super) service: Option<S>,
    pub(super) attempts: Attempts,
}

impl<S, B> Replay<S, B> {
    /// `None` when the request cannot be replayed.
    pub(super) fn new(
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
        pub(super) state: State<S, B>,
        pub(super) replay: Option<Box<Replay<S, B>>>,
    }
}

pin_project! {
    #[project = StateProj]
    pub(super) enum State<S, B>
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
