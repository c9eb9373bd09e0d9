//! The bodies the timeout watches: the request's ([`TimedBody`], where a stalled upload shows)
//! and the response's ([`TimeoutBody`]).

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;

/// The request body hasn't ended, and nobody is waiting for more of it.
pub(super) const READ_IDLE: u8 = 0;
/// The handler asked for more of the body and the client has not sent it yet.
pub(super) const READ_WAITING: u8 = 1;
/// The body ended.
pub(super) const READ_DONE: u8 = 2;

/// Where reading a request body stands, and how many frames came.
#[derive(Debug, Default)]
pub(super) struct BodyState(AtomicU8, AtomicU32);

impl BodyState {
    pub(super) fn get(&self) -> u8 {
        self.0.load(Ordering::Acquire)
    }

    pub(super) fn set(&self, state: u8) {
        self.0.store(state, Ordering::Release);
    }

    pub(super) fn frames(&self) -> u32 {
        self.1.load(Ordering::Acquire)
    }
}

pin_project! {
    /// The request body as [`RequestTimeout`] passes it on: the same bytes, watched so a
    /// deadline can tell a client that stopped sending from a slow server.
    pub struct TimedBody<B> {
        #[pin]
        pub(super) body: B,
        pub(super) state: Option<Arc<BodyState>>,
    }
}

impl<B> fmt::Debug for TimedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimedBody").finish_non_exhaustive()
    }
}

impl<B: Body> Body for TimedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        if let Some(state) = this.state {
            state.set(match &polled {
                Poll::Pending => READ_WAITING,
                Poll::Ready(None) => READ_DONE,
                Poll::Ready(Some(_)) => {
                    state.1.fetch_add(1, Ordering::AcqRel);
                    READ_IDLE
                }
            });
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

pin_project! {
    /// The response body of [`RequestTimeout`]: the service's, or the problem it answered with.
    pub struct TimeoutBody<B> {
        #[pin]
        pub(super) kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    pub(super) enum Kind<B> {
        Inner { #[pin] body: B },
        Problem { #[pin] body: Full<Bytes> },
    }
}

impl<B> TimeoutBody<B> {
    pub(super) fn inner(body: B) -> Self {
        TimeoutBody {
            kind: Kind::Inner { body },
        }
    }

    pub(super) fn problem(body: Full<Bytes>) -> Self {
        TimeoutBody {
            kind: Kind::Problem { body },
        }
    }
}

impl<B> fmt::Debug for TimeoutBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Inner { .. } => "inner",
            Kind::Problem { .. } => "problem",
        };
        f.debug_struct("TimeoutBody").field("kind", &kind).finish()
    }
}

impl<B: Body<Data = Bytes>> Body for TimeoutBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Problem { body } => body
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(|never| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Problem { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Problem { body } => body.size_hint(),
        }
    }
}
