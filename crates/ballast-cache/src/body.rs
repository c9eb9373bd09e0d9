//! The response body of [`Cache`](crate::Cache).

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use ballast_core::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// The response body of [`Cache`](crate::Cache): a stored body, the inner service's body, or the part of it
/// read while deciding whether to store it followed by the rest.
pub struct CacheBody<B> {
    kind: Kind<B>,
}

enum Kind<B> {
    Cached(Option<Bytes>),
    Inner(B),
    Prefixed {
        frames: VecDeque<Frame<Bytes>>,
        error: Option<BoxError>,
        rest: Option<B>,
    },
}

impl<B> CacheBody<B> {
    pub(crate) fn cached(body: Bytes) -> Self {
        CacheBody {
            kind: Kind::Cached((!body.is_empty()).then_some(body)),
        }
    }

    pub(crate) fn inner(body: B) -> Self {
        CacheBody {
            kind: Kind::Inner(body),
        }
    }

    pub(crate) fn prefixed(
        frames: VecDeque<Frame<Bytes>>,
        error: Option<BoxError>,
        rest: Option<B>,
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
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Cached(body) => Poll::Ready(body.take().map(|body| Ok(Frame::data(body)))),
            Kind::Inner(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Kind::Prefixed {
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
                    Some(rest) => Pin::new(rest).poll_frame(cx).map_err(Into::into),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Cached(body) => body.is_none(),
            Kind::Inner(body) => body.is_end_stream(),
            Kind::Prefixed {
                frames,
                error,
                rest,
            } => frames.is_empty() && error.is_none() && rest.as_ref().is_none_or(B::is_end_stream),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Cached(body) => SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Inner(body) => body.size_hint(),
            Kind::Prefixed { .. } => SizeHint::default(),
        }
    }
}

impl<B> fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Cached(_) => "cached",
            Kind::Inner(_) => "inner",
            Kind::Prefixed { .. } => "prefixed",
        };
        f.debug_struct("CacheBody").field("kind", &kind).finish()
    }
}
