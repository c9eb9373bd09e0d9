//! [`ResponseBody`]: the service's own body, or the problem document rendered in its place.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use ballast_core::BoxError;
use bytes::Bytes;
use http_body::Body;
use http_body_util::Full;
use pin_project_lite::pin_project;

pin_project! {
    /// The response body of [`ErrorResponse`]: the service's own body, or the problem document
    /// the layer rendered in its place. Either way its error is a [`BoxError`].
    pub struct ResponseBody<B> {
        #[pin]
        pub(super) kind: BodyKind<B>,
    }
}

pin_project! {
    #[project = BodyKindProj]
    pub(super) enum BodyKind<B> {
        Inner { #[pin] body: B },
        Problem { body: Full<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    /// A body of the service's, passed through.
    pub fn inner(body: B) -> Self {
        ResponseBody {
            kind: BodyKind::Inner { body },
        }
    }

    /// A problem document the layer rendered.
    pub(super) fn problem(body: Full<Bytes>) -> Self {
        ResponseBody {
            kind: BodyKind::Problem { body },
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            BodyKind::Inner { .. } => f.write_str("ResponseBody::Inner"),
            BodyKind::Problem { body } => {
                f.debug_tuple("ResponseBody::Problem").field(body).finish()
            }
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            BodyKindProj::Inner { body } => body
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(Into::into))),
            BodyKindProj::Problem { body } => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(|never| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Inner { body } => body.is_end_stream(),
            BodyKind::Problem { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.kind {
            BodyKind::Inner { body } => body.size_hint(),
            BodyKind::Problem { body } => body.size_hint(),
        }
    }
}
