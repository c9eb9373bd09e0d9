//! [`CacheLayer`] and the [`Cache`] service it makes, laid out as tower-http lays out a
//! middleware: the layer here, the service's `call` in `service.rs` (the fresh hit, the pass, the
//! write that invalidates), its future in `future.rs`, and the slower paths each in a file of its
//! own: a miss and the stampede protection (`miss.rs`), revalidation (`revalidate.rs`), deciding
//! and storing (`storing.rs`), answering from a stored response (`hit.rs`), what a write makes
//! stale (`write.rs`).

mod future;
mod hit;
mod miss;
mod revalidate;
mod service;
mod storing;
mod write;

pub use future::ResponseFuture;
pub use service::Cache;

use std::fmt;
use std::sync::Arc;

use http::HeaderName;
use tower_layer::Layer;

use crate::store::ResponseCache;

/// The header that says whether a response came from the cache, when enabled.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Computes a request's primary cache key; `None` sends the request past the cache.
type KeyFn = dyn Fn(&http::request::Parts) -> Option<String> + Send + Sync;

/// Serves `GET` and `HEAD` requests from a [`ResponseCache`] and stores the responses that may
/// be stored. See the [crate docs](crate) for the rules.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use ballast_cache::{CacheLayer, ResponseCache};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// let cache = ResponseCache::builder().max_entries(1_000).max_bytes(8 << 20).build()?;
/// let service = ServiceBuilder::new()
///     .layer(CacheLayer::new(cache.clone()))
///     .service(service_fn(|_request: http::Request<String>| async {
///         // The response asks to be cached (a route can ask with `CacheRouteLayer` instead).
///         let response = http::Response::builder()
///             .header("cache-control", "public, max-age=30")
///             .body(String::from("[]"));
///         Ok::<_, http::Error>(response?)
///     }));
/// let request = || http::Request::get("http://example.com/items").body(String::new());
/// service.clone().oneshot(request()?).await?; // a miss, stored
/// service.oneshot(request()?).await?; // a hit
/// let stats = cache.stats().await;
/// assert_eq!((stats.hits, stats.misses, stats.entries), (1, 1, 1));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct CacheLayer {
    cache: ResponseCache,
    key: Option<Arc<KeyFn>>,
    credentialed: bool,
    x_cache: bool,
}

impl CacheLayer {
    /// A layer that serves from and stores into `cache`.
    pub fn new(cache: ResponseCache) -> Self {
        CacheLayer {
            cache,
            key: None,
            credentialed: false,
            x_cache: false,
        }
    }

    /// Replaces the primary key (by default host, path, query and the keyed headers). Returning
    /// `None` sends the request past the cache. The `Vary` headers of the response are always
    /// added to it.
    #[must_use]
    pub fn key_fn(
        mut self,
        key: impl Fn(&http::request::Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.key = Some(Arc::new(key));
        self
    }

    /// Lets requests with `Authorization` or `Cookie` use the cache. Only set this together
    /// with a [`key_fn`](Self::key_fn) that includes the user: otherwise one user's response is
    /// served to another.
    #[must_use]
    pub fn cache_credentialed_requests(mut self, allow: bool) -> Self {
        self.credentialed = allow;
        self
    }

    /// Adds `x-cache: HIT` or `x-cache: MISS` to cacheable responses.
    #[must_use]
    pub fn x_cache_header(mut self, enabled: bool) -> Self {
        self.x_cache = enabled;
        self
    }
}

impl fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayer")
            .field("cache", &self.cache)
            .field("custom_key", &self.key.is_some())
            .field("credentialed", &self.credentialed)
            .field("x_cache", &self.x_cache)
            .finish()
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = Cache<S>;

    fn layer(&self, inner: S) -> Cache<S> {
        Cache {
            inner,
            layer: self.clone(),
        }
    }
}
