//! What a write declares it makes stale: [`InvalidateLayer`] on the writing routes, read by the
//! [`CacheLayer`](crate::CacheLayer) further out.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::Response;
use tower_layer::Layer;
use tower_service::Service;

use crate::store::Invalidated;

/// What a write makes stale beyond its own target: a response extension that
/// [`InvalidateLayer`] sets on a route's responses, or a handler inserts itself (axum:
/// `(Extension(Invalidates::tag("bookmarks")), Json(created))`).
///
/// When an unsafe request (`POST`, `PUT`, `PATCH`, `DELETE`, ...) succeeds (2xx or 3xx), the
/// [`CacheLayer`](crate::CacheLayer) removes what its response declares — the responses stored
/// with a [tag](crate::CacheRouteLayer::tag), the paths under a prefix, exact paths — together
/// with what RFC 9111 §4.4 invalidates anyway (the target, `Location`, `Content-Location`), and
/// tells the other instances with shared invalidation (feature `redis`). A failed write
/// invalidates nothing. Declared on the response of a safe method, it is ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invalidates {
    tags: Vec<String>,
    prefixes: Vec<String>,
    paths: Vec<String>,
}

impl Invalidates {
    /// Nothing declared yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The responses stored with `tag`.
    pub fn tag(tag: impl Into<String>) -> Self {
        Self::new().and_tag(tag)
    }

    /// The responses stored for request paths that start with `prefix`.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self::new().and_prefix(prefix)
    }

    /// The responses stored for exactly `path` (every query and variant).
    pub fn path(path: impl Into<String>) -> Self {
        Self::new().and_path(path)
    }

    /// These, and the responses stored with `tag`.
    #[must_use]
    pub fn and_tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// These, and the responses stored for paths that start with `prefix`.
    #[must_use]
    pub fn and_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefixes.push(prefix.into());
        self
    }

    /// These, and the responses stored for exactly `path`.
    #[must_use]
    pub fn and_path(mut self, path: impl Into<String>) -> Self {
        self.paths.push(path.into());
        self
    }

    /// The invalidations to apply (and to publish), one per kind declared.
    pub(crate) fn invalidations(&self) -> impl Iterator<Item = Invalidated> + '_ {
        let tags = (!self.tags.is_empty()).then(|| Invalidated::Tags(self.tags.clone()));
        let paths = (!self.paths.is_empty()).then(|| Invalidated::Paths(self.paths.clone()));
        let prefixes = self
            .prefixes
            .iter()
            .map(|prefix| Invalidated::Prefix(prefix.clone()));
        tags.into_iter().chain(paths).chain(prefixes)
    }
}

/// Declares what a route's writes make stale: it puts [`Invalidates`] on the route's
/// responses, and the [`CacheLayer`](crate::CacheLayer) further out removes it from the cache
/// when the write succeeds, on every instance with shared invalidation.
///
/// The reads that show what the write changes are tagged with
/// [`CacheRouteLayer::tag`](crate::CacheRouteLayer::tag); the write names the tag:
///
/// ```
/// use std::time::Duration;
/// use axum::{routing::{delete, get, post}, Router};
/// use ballast_cache::{CacheLayer, CacheRouteLayer, InvalidateLayer, ResponseCache};
///
/// let popular = CacheRouteLayer::ttl(Duration::from_secs(60)).tag("bookmarks");
/// let app: Router = Router::new()
///     .route("/popular", get(|| async { "[]" }).layer(popular))
///     .route("/bookmarks", post(|| async { "made" }).layer(InvalidateLayer::tag("bookmarks")))
///     .route("/bookmarks/{id}", delete(|| async { "gone" }).layer(InvalidateLayer::tag("bookmarks")))
///     .layer(CacheLayer::new(ResponseCache::new()));
/// # let _ = app;
/// ```
#[derive(Debug, Clone)]
pub struct InvalidateLayer {
    declared: Arc<Invalidates>,
}

impl InvalidateLayer {
    /// Declares `invalidates` for every response of the route.
    pub fn new(invalidates: Invalidates) -> Self {
        InvalidateLayer {
            declared: Arc::new(invalidates),
        }
    }

    /// Declares the responses stored with `tag`.
    pub fn tag(tag: impl Into<String>) -> Self {
        Self::new(Invalidates::tag(tag))
    }

    /// Declares the responses stored for paths that start with `prefix`.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self::new(Invalidates::prefix(prefix))
    }
}

impl<S> Layer<S> for InvalidateLayer {
    type Service = Invalidate<S>;

    fn layer(&self, inner: S) -> Invalidate<S> {
        Invalidate {
            inner,
            declared: Arc::clone(&self.declared),
        }
    }
}

/// The service made by [`InvalidateLayer`].
#[derive(Debug, Clone)]
pub struct Invalidate<S> {
    inner: S,
    declared: Arc<Invalidates>,
}

impl<S> Invalidate<S> {
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

impl<S, Request, B> Service<Request> for Invalidate<S>
where
    S: Service<Request, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = InvalidateFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        InvalidateFuture {
            inner: self.inner.call(request),
            declared: Some(Arc::clone(&self.declared)),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Invalidate`].
    #[derive(Debug)]
    pub struct InvalidateFuture<F> {
        #[pin]
        inner: F,
        declared: Option<Arc<Invalidates>>,
    }
}

impl<F, B, E> Future for InvalidateFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        if let Some(declared) = this.declared.take() {
            let extensions = response.extensions_mut();
            // A handler's own declaration adds to the route's.
            let merged = match extensions.remove::<Invalidates>() {
                Some(mut own) => {
                    own.tags.extend(declared.tags.iter().cloned());
                    own.prefixes.extend(declared.prefixes.iter().cloned());
                    own.paths.extend(declared.paths.iter().cloned());
                    own
                }
                None => Invalidates::clone(&declared),
            };
            extensions.insert(merged);
        }
        Poll::Ready(Ok(response))
    }
}
