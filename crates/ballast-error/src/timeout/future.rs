//! [`TimeoutFuture`]: the request, raced against its deadline and, while the drain runs, a
//! stalled body.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use ballast_core::http::{failure_response, Problem, RetryAfter};
use ballast_core::scope::{RequestScope, Scoped};
use ballast_core::{Cause, Failure, Reach};
use http::header::{HeaderValue, CONNECTION};
use http::{Method, Response, StatusCode};
use pin_project_lite::pin_project;

use super::body::{BodyState, READ_DONE, READ_WAITING};
use super::{Draining, TimeoutBody, DRAIN_CHECK};

pin_project! {
    /// The response future of [`RequestTimeout`].
    pub struct TimeoutFuture<F> {
        #[pin]
        pub(super) state: State<F>,
        pub(super) deadline: tokio::time::Instant,
        #[pin]
        pub(super) sleep: Timer,
        pub(super) scope: Arc<RequestScope>,
        pub(super) reading: Option<Arc<BodyState>>,
        pub(super) draining: Option<Draining>,
        // The body's frames at the last look at the drain.
        pub(super) frames_seen: u32,
        pub(super) method: Method,
        pub(super) timeout: Duration,
    }
}

pin_project! {
    /// The request's timer, made on its first wait.
    #[project = TimerProj]
    pub(super) enum Timer {
        Unset,
        // Boxed: a timer is large, and most requests never need one.
        Set { sleep: Pin<Box<tokio::time::Sleep>> },
    }
}

pin_project! {
    #[project = StateProj]
    pub(super) enum State<F> {
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
