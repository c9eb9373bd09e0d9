//! The response future of [`Cache`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;

use super::hit::mark;
use super::write::WriteInvalidation;
use crate::body::CacheBody;
use crate::store::ResponseCache;

pin_project_lite::pin_project! {
    /// The response future of [`Cache`]: a fresh hit is answered at once, a request the cache
    /// passes by runs the inner service's own future, and everything else (a miss that may be
    /// stored, a stale entry) runs boxed.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        pub(super) kind: Kind<F, B, E>,
    }
}

/// A boxed response future.
pub(super) type Boxed<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<CacheBody<B>>, E>> + Send>>;

pin_project_lite::pin_project! {
    #[project = KindProj]
    pub(super) enum Kind<F, B, E> {
        Ready { response: Option<Response<CacheBody<B>>> },
        Pass { #[pin] future: F, label: Option<&'static str> },
        Invalidate { #[pin] future: F, invalidation: Option<(ResponseCache, WriteInvalidation)> },
        Boxed { future: Boxed<B, E> },
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<CacheBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Ready { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => panic!("`ResponseFuture` polled after completion"),
            },
            KindProj::Pass { future, label } => {
                let mut response = std::task::ready!(future.poll(cx))?.map(CacheBody::inner);
                if let Some(label) = label {
                    mark(&mut response, true, label);
                }
                Poll::Ready(Ok(response))
            }
            KindProj::Invalidate {
                future,
                invalidation,
            } => {
                let response = std::task::ready!(future.poll(cx))?;
                let status = response.status();
                if status.is_success() || status.is_redirection() {
                    if let Some((cache, target)) = invalidation.take() {
                        if let Some(declared) = response.extensions().get::<crate::Invalidates>() {
                            cache.invalidate_declared(declared);
                        }
                        target.apply(&cache, response.headers());
                    }
                }
                Poll::Ready(Ok(response.map(CacheBody::inner)))
            }
            KindProj::Boxed { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Ready { .. } => "ready",
            Kind::Pass { .. } => "pass",
            Kind::Invalidate { .. } => "invalidate",
            Kind::Boxed { .. } => "boxed",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}

/// The outcome of `future` if it completes on its first poll. moka's `get` does unless it has
/// to wait for its own housekeeping; then the caller looks up again, awaiting.
pub(super) fn now_or_never<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(std::task::Waker::noop()))
    {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}
