//! The response body of [`Cache`](crate::Cache).

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use ballast_core::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

pin_project_lite::pin_project! {
    /// The response body of [`Cache`](crate::Cache): a stored body, the inner service's body, or
    /// the part of it read while deciding whether to store it followed by the rest. The inner
    /// body need not be `Unpin`.
    pub struct CacheBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Cached { body: Option<Bytes> },
        Inner { #[pin] body: B },
        // Rare (a response too large to store, or one whose body failed): the rest is boxed so
        // the body read so far can be handed on whatever the body type.
        Prefixed {
            frames: VecDeque<Frame<Bytes>>,
            error: Option<BoxError>,
            rest: Option<Pin<Box<B>>>,
        },
    }
}

impl<B> CacheBody<B> {
    pub(crate) fn cached(body: Bytes) -> Self {
        CacheBody {
            kind: Kind::Cached {
                body: (!body.is_empty()).then_some(body),
            },
        }
    }

    pub(crate) fn inner(body: B) -> Self {
        CacheBody {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn prefixed(
        frames: VecDeque<Frame<Bytes>>,
        error: Option<BoxError>,
        rest: Option<Pin<Box<B>>>,
    ) -> Self {
        CacheBody {
            kind: Kind::Prefixed {
                frames,
                error,
                rest,
            },
        }
    }
}

impl<B> Body for CacheBody<B>
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
            KindProj::Cached { body } => Poll::Ready(body.take().map(|body| Ok(Frame::data(body)))),
            KindProj::Inner { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Prefixed {
                frames,
                error,
                rest,
            } => {
                if let Some(frame) = frames.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                if let Some(error) = error.take() {
                    return Poll::Ready(Some(Err(error)));
                }
                match rest {
                    Some(rest) => rest.as_mut().poll_frame(cx).map_err(Into::into),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Cached { body } => body.is_none(),
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Prefixed {
                frames,
                error,
                rest,
            } => {
                frames.is_empty()
                    && error.is_none()
                    && rest.as_ref().is_none_or(|rest| rest.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Cached { body } => {
                SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64))
            }
            Kind::Inner { body } => body.size_hint(),
            Kind::Prefixed { .. } => SizeHint::default(),
        }
    }
}

impl<B> fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Cached { .. } => "cached",
            Kind::Inner { .. } => "inner",
            Kind::Prefixed { .. } => "prefixed",
        };
        f.debug_struct("CacheBody").field("kind", &kind).finish()
    }
}
