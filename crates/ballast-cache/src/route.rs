//! A route's opt-in to the cache: [`CacheRouteLayer`] marks its responses with a [`RouteTtl`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

/// How long the cache may keep a response, as its route asked: a response extension that
/// [`CacheRouteLayer`] sets (a handler can insert it too).
///
/// The cache's own TTL and the response's `Cache-Control: s-maxage`/`max-age` cap it;
/// `no-store`, `no-cache`, `private`, `Set-Cookie`, a failure or a status outside the cache's set
/// still keep the response out whatever the route asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTtl(pub Duration);

/// The statuses a route's responses may be stored with, when its [`CacheRouteLayer`] names them
/// (a response extension, like [`RouteTtl`]); otherwise the cache's own set applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteStatuses(pub Arc<[StatusCode]>);

/// The tags a route's stored responses carry, when its [`CacheRouteLayer`] names them (a
/// response extension, like [`RouteTtl`]): a write whose route declares one of them
/// ([`InvalidateLayer`](crate::InvalidateLayer)), or
/// [`ResponseCache::invalidate_tag`](crate::ResponseCache::invalidate_tag), removes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTags(pub Arc<[String]>);

/// Opts a route into the response cache: its responses carry a [`RouteTtl`], which the
/// [`CacheLayer`](crate::CacheLayer) further out reads. Apply it to the routes to cache, with
/// axum's per-route layers:
///
/// ```
/// use std::time::Duration;
/// use axum::{routing::get, Router};
/// use ballast_cache::{CacheLayer, CacheRouteLayer, ResponseCache};
///
/// # fn main() -> Result<(), ballast_cache::ConfigError> {
/// let cache = ResponseCache::builder().build()?;
/// let app: Router = Router::new()
///     // Cached for up to 30 s.
///     .route("/items", get(|| async { "[]" }).layer(CacheRouteLayer::ttl(Duration::from_secs(30))))
///     // Never cached: it did not ask.
///     .route("/readyz", get(|| async { "ready" }))
///     .layer(CacheLayer::new(cache));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct CacheRouteLayer {
    ttl: Duration,
    statuses: Option<RouteStatuses>,
    tags: Option<RouteTags>,
}

impl CacheRouteLayer {
    /// Marks the route's responses as storable for up to `ttl`.
    pub fn ttl(ttl: Duration) -> Self {
        CacheRouteLayer {
            ttl,
            statuses: None,
            tags: None,
        }
    }

    /// Tags the route's stored responses with `tag` (call it again for more): the writes that
    /// change what the route shows declare the tag with an
    /// [`InvalidateLayer`](crate::InvalidateLayer), and their success removes every response
    /// stored with it — every path, query and variant of the route, on every instance with
    /// shared invalidation.
    ///
    /// ```
    /// use std::time::Duration;
    /// use axum::{routing::{get, post}, Router};
    /// use ballast_cache::{CacheLayer, CacheRouteLayer, InvalidateLayer, ResponseCache};
    ///
    /// let app: Router = Router::new()
    ///     .route("/popular", get(|| async { "[]" })
    ///         .layer(CacheRouteLayer::ttl(Duration::from_secs(60)).tag("bookmarks")))
    ///     .route("/bookmarks", post(|| async { "made" }).layer(InvalidateLayer::tag("bookmarks")))
    ///     .layer(CacheLayer::new(ResponseCache::new()));
    /// # let _ = app;
    /// ```
    #[must_use]
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        let mut tags: Vec<String> = self
            .tags
            .take()
            .map(|tags| tags.0.to_vec())
            .unwrap_or_default();
        tags.push(tag.into());
        self.tags = Some(RouteTags(tags.into()));
        self
    }

    /// The statuses this route's responses may be stored with (say, `200` and `404` for a
    /// resource whose absence is worth remembering); by default the cache's set
    /// ([`ResponseCacheBuilder::statuses`](crate::ResponseCacheBuilder::statuses)). `206` and the
    /// 5xx other than `501` are never stored.
    #[must_use]
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.statuses = Some(RouteStatuses(statuses.into_iter().collect()));
        self
    }
}

impl<S> Layer<S> for CacheRouteLayer {
    type Service = CacheRoute<S>;

    fn layer(&self, inner: S) -> CacheRoute<S> {
        CacheRoute {
            inner,
            ttl: self.ttl,
            statuses: self.statuses.clone(),
            tags: self.tags.clone(),
        }
    }
}

/// The service made by [`CacheRouteLayer`].
#[derive(Debug, Clone)]
pub struct CacheRoute<S> {
    inner: S,
    ttl: Duration,
    statuses: Option<RouteStatuses>,
    tags: Option<RouteTags>,
}

impl<S> CacheRoute<S> {
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

impl<S, ReqBody, B> Service<http::Request<ReqBody>> for CacheRoute<S>
where
    S: Service<http::Request<ReqBody>, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = RouteFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // The cache further out may hold other requests for this key back until this one's
        // answer: they can wait for it, as this route asks to be cached.
        if let Some(asking) = request.extensions().get::<crate::collapse::Asking>() {
            asking.0.ask();
        }
        RouteFuture {
            inner: self.inner.call(request),
            ttl: self.ttl,
            statuses: self.statuses.clone(),
            tags: self.tags.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`CacheRoute`].
    #[derive(Debug)]
    pub struct RouteFuture<F> {
        #[pin]
        inner: F,
        ttl: Duration,
        statuses: Option<RouteStatuses>,
        tags: Option<RouteTags>,
    }
}

impl<F, B, E> Future for RouteFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        response.extensions_mut().insert(RouteTtl(*this.ttl));
        if let Some(statuses) = this.statuses.take() {
            response.extensions_mut().insert(statuses);
        }
        if let Some(tags) = this.tags.take() {
            response.extensions_mut().insert(tags);
        }
        Poll::Ready(Ok(response))
    }
}
