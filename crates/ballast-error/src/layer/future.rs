//! The response future of [`ErrorResponse`].

use std::any::Any;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ballast_core::http::{attached, Problem};
use ballast_core::BoxError;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower_http::catch_panic::ResponseForPanic;

use super::render::{
    classify, internal_response, is_head, is_plain_error, plain_error_problem, render, to_boxed,
    with_problem_body,
};
use super::service::{with_instance, RequestContext};
use crate::error::{HandlerProblem, Repr};
use crate::map::MapProblem;
use crate::{PanicResponse, ResponseBody};

pin_project! {
    /// The response future of [`ErrorResponse`].
    pub struct ResponseFuture<F, M> {
        #[pin]
        pub(super) state: State<F>,
        pub(super) context: Option<RequestContext<M>>,
    }
}

pin_project! {
    #[project = StateProj]
    pub(super) enum State<F> {
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
pub(super) enum Polled<B> {
    Response(Response<B>),
    /// The service panicked: [`PanicResponse`]'s answer.
    Panic(Response<Full<Bytes>>),
    Error(BoxError),
}
