//! The request body the retried service receives: buffered (replayable) or passed through.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use ballast_core::BoxError;

pin_project! {
    /// A request body as [`Retry`](crate::Retry) hands it on.
    ///
    /// A body whose length is known and within the cap is read once into memory, so the request
    /// can be sent again; any other body streams through untouched, and that request is not
    /// retried.
    #[project = RetryBodyProj]
    pub struct RetryBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Buffered { data: Option<Bytes> },
        Streaming { #[pin] body: B },
        Failed { error: Option<BoxError> },
    }
}

impl<B> RetryBody<B> {
    pub(crate) fn buffered(data: Bytes) -> Self {
        RetryBody {
            kind: Kind::Buffered {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    pub(crate) fn streaming(body: B) -> Self {
        RetryBody {
            kind: Kind::Streaming { body },
        }
    }

    /// A body whose reading failed part-way: the service sees the same error it would have
    /// seen reading it itself.
    pub(crate) fn failed(error: BoxError) -> Self {
        RetryBody {
            kind: Kind::Failed { error: Some(error) },
        }
    }

    /// The buffered bytes, when the body can be replayed.
    pub(crate) fn replay(&self) -> Option<Self> {
        match &self.kind {
            Kind::Buffered { data } => Some(RetryBody {
                kind: Kind::Buffered { data: data.clone() },
            }),
            Kind::Streaming { .. } | Kind::Failed { .. } => None,
        }
    }

    /// Whether the body was read into memory.
    pub fn is_buffered(&self) -> bool {
        matches!(self.kind, Kind::Buffered { .. })
    }
}

impl<B> Body for RetryBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Buffered { data } => {
                Poll::Ready(data.take().map(|data| Ok(Frame::data(data))))
            }
            KindProj::Streaming { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Failed { error } => Poll::Ready(error.take().map(Err)),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Buffered { data } => data.is_none(),
            Kind::Streaming { body } => body.is_end_stream(),
            Kind::Failed { error } => error.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Buffered { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |data| data.len() as u64))
            }
            Kind::Streaming { body } => body.size_hint(),
            Kind::Failed { .. } => SizeHint::default(),
        }
    }
}

impl<B> std::fmt::Debug for RetryBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Buffered { .. } => "buffered",
            Kind::Streaming { .. } => "streaming",
            Kind::Failed { .. } => "failed",
        };
        f.debug_struct("RetryBody").field("kind", &kind).finish()
    }
}
