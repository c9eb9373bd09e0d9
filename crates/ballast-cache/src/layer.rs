//! The layer: serves hits, coalesces misses, stores what may be stored.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use ballast_core::BoxError;
use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, AGE, CONTENT_LENGTH};
use http::{HeaderName, Method, Request, Response};
use http_body::{Body, Frame};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::CacheBody;
use crate::rules::{self, NotStored};
use crate::store::{CacheKey, Entry, Event, Freshness, ResponseCache, Stored, StoredResponse};

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

/// The service made by [`CacheLayer`].
#[derive(Clone)]
pub struct Cache<S> {
    inner: S,
    layer: CacheLayer,
}

impl<S: fmt::Debug> fmt::Debug for Cache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Cache`]: a fresh hit is answered at once, a request the cache
    /// passes by runs the inner service's own future, and everything else (a miss that may be
    /// stored, a stale entry) runs boxed.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

/// A boxed response future.
type Boxed<B, E> = Pin<Box<dyn Future<Output = Result<Response<CacheBody<B>>, E>> + Send>>;

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        Ready { response: Option<Response<CacheBody<B>>> },
        Pass { #[pin] future: F, label: Option<&'static str> },
        Invalidate { #[pin] future: F, invalidation: Option<(ResponseCache, Invalidation)> },
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
                        target.apply(&cache, response.headers());
                    }
                }
                Poll::Ready(Ok(response.map(CacheBody::inner)))
            }
            KindProj::Boxed { future } => future.as_mut().poll(cx),
        }
    }
}

/// What a successful unsafe request makes stale (RFC 9111 §4.4): its target's path, and the
/// paths its response's `Location` and `Content-Location` name on the same host.
#[derive(Debug)]
pub(crate) struct Invalidation {
    host: Option<String>,
    path: String,
}

impl Invalidation {
    fn of(parts: &http::request::Parts) -> Self {
        let host = parts
            .headers
            .get(http::header::HOST)
            .and_then(|host| host.to_str().ok())
            .or_else(|| parts.uri.authority().map(http::uri::Authority::as_str))
            .map(str::to_owned);
        Invalidation {
            host,
            path: parts.uri.path().to_owned(),
        }
    }

    /// Invalidates the target and the same-origin `Location`/`Content-Location` paths of a
    /// response with `headers`. Every stored variant and query of those paths goes: invalidating
    /// more than the target URI is allowed, and cheaper than telling queries apart.
    fn apply(self, cache: &ResponseCache, headers: &http::HeaderMap) {
        let mut paths = vec![self.path];
        for name in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
            let Some(uri) = headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse::<http::Uri>().ok())
            else {
                continue;
            };
            let same_origin = match uri.authority() {
                None => true,
                Some(authority) => self.host.as_deref() == Some(authority.as_str()),
            };
            if same_origin && uri.path().starts_with('/') && !paths.iter().any(|p| p == uri.path())
            {
                paths.push(uri.path().to_owned());
            }
        }
        cache.invalidate_paths_now(paths);
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
fn now_or_never<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(std::task::Waker::noop()))
    {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Cache<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + Sync + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + Unpin + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let layer = &self.layer;
        let (parts, body) = request.into_parts();
        if !parts.method.is_safe() {
            // An unsafe method's success makes what is stored for its target stale (§4.4).
            let target = Invalidation::of(&parts);
            layer.cache.count(Event::Bypassed);
            let request = Request::from_parts(parts, body);
            return ResponseFuture {
                kind: Kind::Invalidate {
                    future: self.inner.call(request),
                    invalidation: Some((layer.cache.clone(), target)),
                },
            };
        }
        let scan = rules::Scan::of(
            &parts.headers,
            layer.credentialed,
            &layer.cache.inner.keyed_headers,
        );
        let key = if scan.bypasses(&parts.method, &parts.headers) {
            None
        } else {
            match &layer.key {
                Some(key) => key(&parts).map(|primary| CacheKey::new(parts.uri.path(), &primary)),
                None => {
                    // The path and the default primary key, built in one buffer: the thread's
                    // own, given back by a fresh hit, so most hits allocate no key.
                    let path = parts.uri.path();
                    let mut text = KEY_BUFFER.take();
                    text.clear();
                    text.reserve(path.len() + 64);
                    text.push_str(path);
                    rules::push_default_key(
                        &mut text,
                        &parts,
                        &layer.cache.inner.keyed_headers,
                        &scan,
                    );
                    Some(CacheKey::from_text(text, path.len()))
                }
            }
        };
        let found = key
            .as_ref()
            .and_then(|key| now_or_never(layer.cache.inner.moka.get(key)));
        // A fresh hit is answered here: no clone of the inner service, no boxed future. A request
        // with its own cache directives is decided in `lookup`.
        let directed = scan.cache_control || scan.pragma;
        if let (Some(Some(entry)), false) = (&found, directed) {
            if let Stored::Response(stored) = &entry.stored {
                let age = stored.age();
                if let Freshness::Fresh = stored.freshness(age) {
                    layer.cache.count(Event::Hit);
                    let head = parts.method == Method::HEAD;
                    let mut response = hit(stored, Some(age), head, layer.x_cache, "HIT");
                    if scan.conditional {
                        let conditions = rules::Conditions::of(&parts.headers);
                        answer_conditions(&conditions, &mut response);
                    }
                    if let Some(key) = key {
                        key.recycle();
                    }
                    return ResponseFuture {
                        kind: Kind::Ready {
                            response: Some(response),
                        },
                    };
                }
            }
        }
        // Passed by: the inner service's own future, no clone of it, nothing boxed.
        let pass = match (&key, &found) {
            (None, _) => Some(None),
            (Some(_), Some(Some(entry))) if matches!(entry.stored, Stored::Pass) => {
                // Hit-for-pass: this key answered with something that may not be stored.
                layer.cache.count(Event::Miss);
                layer.cache.count(Event::Pass);
                Some(layer.x_cache.then_some("MISS"))
            }
            _ => None,
        };
        if let Some(label) = pass {
            if key.is_none() {
                layer.cache.count(Event::Bypassed);
            }
            let request = Request::from_parts(parts, body);
            return ResponseFuture {
                kind: Kind::Pass {
                    future: self.inner.call(request),
                    label,
                },
            };
        }
        // Use the service that was polled ready; leave a clone in its place.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        let request = Request::from_parts(parts, body);
        let Some(key) = key else {
            unreachable!("a request without a key is passed by above")
        };
        ResponseFuture {
            kind: Kind::Boxed {
                future: Box::pin(lookup(inner, layer, key, request, found)),
            },
        }
    }
}

async fn pass_through<S, ReqBody, ResBody>(
    mut inner: S,
    request: Request<ReqBody>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let response = inner.call(request).await?;
    Ok(response.map(CacheBody::inner))
}

/// Why the first of a set of concurrent misses did not produce a stored response.
#[derive(Debug)]
struct NotCached;

/// A request that may be served from or stored into the cache (a miss, a stale entry, a
/// variant): its conditions are taken out so the service answers in full, and answered against
/// whatever response it gets.
async fn lookup<S, ReqBody, ResBody>(
    inner: S,
    layer: CacheLayer,
    key: CacheKey,
    request: Request<ReqBody>,
    found: Option<Option<Arc<Entry>>>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + Sync + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + Unpin + 'static,
    ResBody::Error: Into<BoxError>,
{
    let mut request = request;
    let conditions = rules::Conditions::take(request.headers_mut());
    let mut response = lookup_unconditional(inner, layer, key, request, found).await?;
    if !conditions.is_empty() {
        answer_conditions(&conditions, &mut response);
    }
    Ok(response)
}

/// Turns a `200` that satisfies the request's `conditions` into a `304 Not Modified` with the
/// fields RFC 9110 §15.4.5 asks for and no body.
fn answer_conditions<B>(conditions: &rules::Conditions, response: &mut Response<CacheBody<B>>) {
    if response.status() != http::StatusCode::OK || !conditions.not_modified(response.headers()) {
        return;
    }
    let mut headers = http::HeaderMap::new();
    for name in rules::NOT_MODIFIED_FIELDS.iter().chain([&X_CACHE]) {
        for value in response.headers().get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    *response.headers_mut() = headers;
    *response.status_mut() = http::StatusCode::NOT_MODIFIED;
    *response.body_mut() = CacheBody::cached(Bytes::new());
}

async fn lookup_unconditional<S, ReqBody, ResBody>(
    inner: S,
    layer: CacheLayer,
    key: CacheKey,
    request: Request<ReqBody>,
    found: Option<Option<Arc<Entry>>>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + Sync + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + Unpin + 'static,
    ResBody::Error: Into<BoxError>,
{
    let cache = &layer.cache;
    let head = request.method() == Method::HEAD;
    let mut key = key;
    // `call` looked the key up already unless moka made it wait.
    let mut found = match found {
        Some(found) => found,
        None => cache.inner.moka.get(&key).await,
    };
    if let Some(entry) = &found {
        if let Stored::Vary(names) = &entry.stored {
            // Responses of this key vary: the request's values of those headers are part of
            // the key.
            key = key.with_variant(rules::variant(request.headers(), names));
            found = cache.inner.moka.get(&key).await;
        }
    }
    let pass = match found.as_deref().map(|entry| &entry.stored) {
        Some(Stored::Response(stored)) => {
            let age = stored.age();
            if rules::request_refreshes(request.headers(), age, stored.lifetime.fresh_for) {
                // The client asks for something fresher than this: validated or fetched anew.
                let Some(entry) = found.clone() else {
                    unreachable!("matched on `found`")
                };
                return Box::pin(revalidate(inner, layer, key, entry, request)).await;
            }
            match stored.freshness(age) {
                Freshness::Fresh => {
                    cache.count(Event::Hit);
                    return Ok(hit(stored, Some(age), head, layer.x_cache, "HIT"));
                }
                Freshness::WhileRevalidating => {
                    // Served stale at once; one background request brings it up to date.
                    cache.count(Event::Stale);
                    let response = hit(stored, Some(age), head, layer.x_cache, "STALE");
                    if !head && stored.revalidating.try_lock().is_ok() {
                        if let (Some(entry), Ok(runtime)) =
                            (found.clone(), tokio::runtime::Handle::try_current())
                        {
                            runtime.spawn(revalidate(inner, layer.clone(), key, entry, request));
                        }
                    }
                    return Ok(response);
                }
                Freshness::IfError | Freshness::Validate => {
                    let Some(entry) = found.clone() else {
                        unreachable!("matched on `found`")
                    };
                    // Boxed, as `fill` below: the rare paths' futures are large, and inline they
                    // would make every hit's future as large, moved on every request.
                    return Box::pin(revalidate(inner, layer, key, entry, request)).await;
                }
                Freshness::Expired => false,
            }
        }
        Some(Stored::Pass) => true,
        _ => false,
    };
    cache.count(Event::Miss);
    if pass {
        cache.count(Event::Pass);
        let mut response = pass_through(inner, request).await?;
        mark(&mut response, layer.x_cache, "MISS");
        return Ok(response);
    }
    if head {
        // A HEAD response has no body to store; a later GET will fill the cache.
        let mut response = pass_through(inner, request).await?;
        mark(&mut response, layer.x_cache, "MISS");
        return Ok(response);
    }

    Box::pin(fill(inner, layer, key, request)).await
}

/// A miss that may be stored: concurrent misses of one key run the inner service once.
async fn fill<S, ReqBody, ResBody>(
    inner: S,
    layer: CacheLayer,
    key: CacheKey,
    request: Request<ReqBody>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + Sync + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + Unpin + 'static,
    ResBody::Error: Into<BoxError>,
{
    let cache = &layer.cache;
    // The first one's future runs inside moka's `try_get_with`; the others wait for its entry.
    let mut request = Some(request);
    let mut own: Option<Result<Response<CacheBody<ResBody>>, S::Error>> = None;
    let moka = cache.inner.moka.clone();
    let init = {
        let request = &mut request;
        let own = &mut own;
        let key = key.clone();
        let mut inner = inner.clone();
        async move {
            let Some(request) = request.take() else {
                return Err(NotCached);
            };
            let request_headers = request.headers().clone();
            let request_time = SystemTime::now();
            let response = match inner.call(request).await {
                Ok(response) => response,
                Err(error) => {
                    *own = Some(Err(error));
                    return Err(NotCached);
                }
            };
            let exchange = rules::Exchange {
                request_time,
                response_time: SystemTime::now(),
            };
            match store(cache, &key, &request_headers, response, exchange).await {
                Ok(outcome) => {
                    *own = outcome.own_response().map(Ok);
                    cache.account(&outcome.entry);
                    Ok(outcome.entry)
                }
                Err((response, remember)) => {
                    *own = Some(Ok(response));
                    if remember {
                        // Hit-for-pass: the next requests for this key skip the coalescing.
                        let entry = Entry::new(&key, Stored::Pass);
                        cache.account(&entry);
                        Ok(entry)
                    } else {
                        Err(NotCached)
                    }
                }
            }
        }
    };
    let outcome = moka.try_get_with(key.clone(), init).await;
    if let Some(result) = own {
        let mut response = result?;
        mark(&mut response, layer.x_cache, "MISS");
        return Ok(response);
    }
    if let Ok(entry) = &outcome {
        match &entry.stored {
            // The first request's response may not be stored: this one goes to the service.
            Stored::Pass => {}
            // Another request's response, stored for this key.
            Stored::Response(stored) => {
                let mut response = hit(stored, Some(stored.age()), false, false, "MISS");
                mark(&mut response, layer.x_cache, "MISS");
                return Ok(response);
            }
            // Another request's response varies: this request's variant may be the same.
            Stored::Vary(names) => {
                let variant = key.with_variant(rules::variant(
                    request
                        .as_ref()
                        .map_or(&http::HeaderMap::new(), Request::headers),
                    names,
                ));
                if let Some(entry) = cache.inner.moka.get(&variant).await {
                    if let Stored::Response(stored) = &entry.stored {
                        let mut response = hit(stored, Some(stored.age()), false, false, "MISS");
                        mark(&mut response, layer.x_cache, "MISS");
                        return Ok(response);
                    }
                }
            }
        }
    }
    // The first request's response was not storable, or it varies and this request's variant
    // is another: this request goes to the service itself.
    let Some(request) = request else {
        unreachable!("the first request's own response was returned above")
    };
    let mut response = pass_through(inner, request).await?;
    mark(&mut response, layer.x_cache, "MISS");
    Ok(response)
}

/// Asks the service again for a stored response that is no longer fresh, one request at a time
/// per entry: a storable answer replaces it; a failure (a 5xx, a classified failure, an error) is
/// answered with the stale response while it is within `stale-if-error`.
async fn revalidate<S, ReqBody, ResBody>(
    mut inner: S,
    layer: CacheLayer,
    key: CacheKey,
    entry: Arc<Entry>,
    request: Request<ReqBody>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes> + Unpin,
    ResBody::Error: Into<BoxError>,
{
    let cache = &layer.cache;
    let Stored::Response(stale) = &entry.stored else {
        unreachable!("only stored responses are revalidated")
    };
    let head = request.method() == Method::HEAD;
    let asked_at = Instant::now();
    let _revalidating = stale.revalidating.lock().await;
    // The request ahead found the service failing while this one waited: that is this one's
    // answer too, rather than another request to a failing service.
    let failed_meanwhile = stale
        .failed_at
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .is_some_and(|at| at >= asked_at);
    if failed_meanwhile && stale.usable_if_error() {
        cache.count(Event::Stale);
        return Ok(hit(stale, Some(stale.age()), head, layer.x_cache, "STALE"));
    }
    // Another request may have brought it up to date while this one waited.
    if let Some(current) = cache.inner.moka.get(&key).await {
        if let Stored::Response(current_response) = &current.stored {
            if !Arc::ptr_eq(&current, &entry)
                && current_response.freshness(current_response.age()) == Freshness::Fresh
            {
                cache.count(Event::Hit);
                return Ok(hit(
                    current_response,
                    Some(current_response.age()),
                    head,
                    layer.x_cache,
                    "HIT",
                ));
            }
        }
    }
    cache.count(Event::Miss);
    let mut request = request;
    // Asks whether it changed (RFC 9111 §4.3.1): with its validators, a `304` keeps its body.
    let validating = stale.validator && !head;
    if validating {
        if let Some(etag) = stale.headers.get(http::header::ETAG) {
            request
                .headers_mut()
                .insert(http::header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(modified) = stale.headers.get(http::header::LAST_MODIFIED) {
            request
                .headers_mut()
                .insert(http::header::IF_MODIFIED_SINCE, modified.clone());
        }
    }
    let request_headers = request.headers().clone();
    let request_time = SystemTime::now();
    let answer = inner.call(request).await;
    let exchange = rules::Exchange {
        request_time,
        response_time: SystemTime::now(),
    };
    if validating {
        if let Ok(response) = &answer {
            if response.status() == http::StatusCode::NOT_MODIFIED {
                return Ok(freshen(&layer, key, stale, response.headers(), exchange).await);
            }
        }
    }
    let failed = match &answer {
        Ok(response) => rules::is_error(response.status(), response.extensions()),
        Err(_) => true,
    };
    if failed {
        *stale
            .failed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    }
    if failed && stale.usable_if_error() {
        cache.count(Event::Stale);
        return Ok(hit(stale, Some(stale.age()), head, layer.x_cache, "STALE"));
    }
    let response = answer?;
    if head || failed {
        let mut response = response.map(CacheBody::inner);
        mark(&mut response, layer.x_cache, "MISS");
        return Ok(response);
    }
    let mut response = match store(cache, &key, &request_headers, response, exchange).await {
        Ok(outcome) => {
            let own = outcome.own_response();
            cache.insert(key, outcome.entry).await;
            own.unwrap_or_else(|| unreachable!("a stored outcome holds its response"))
        }
        Err((response, remember)) => {
            // No longer storable: the stale entry goes, and the key is remembered as such.
            if remember {
                cache
                    .insert(key.clone(), Entry::new(&key, Stored::Pass))
                    .await;
            } else {
                cache.inner.moka.invalidate(&key).await;
            }
            response
        }
    };
    mark(&mut response, layer.x_cache, "MISS");
    Ok(response)
}

/// Decides whether `response` may be stored and stores it: the entry for `key` on success
/// (a note of the `Vary` headers when the response varies, the response itself stored under
/// its variant), or the response to send on unchanged.
async fn store<ResBody>(
    cache: &ResponseCache,
    key: &CacheKey,
    request_headers: &http::HeaderMap,
    response: Response<ResBody>,
    exchange: rules::Exchange,
) -> Result<StoreOutcome, (Response<CacheBody<ResBody>>, bool)>
where
    ResBody: Body<Data = Bytes> + Unpin,
    ResBody::Error: Into<BoxError>,
{
    let lifetime = match rules::response_freshness(
        response.status(),
        response.headers(),
        response.extensions(),
        &cache.inner.statuses,
        cache.inner.default_ttl,
        cache.inner.store_unmarked,
        exchange,
    ) {
        Ok(lifetime) => lifetime,
        Err(reason) => {
            cache.count(Event::NotStorable);
            // A failure is transient: the next request may well be storable. What the response
            // says about itself (private, no-store, Set-Cookie, a status outside the set) holds
            // for its key: remember it.
            let remember = !matches!(reason, NotStored::Failure | NotStored::Status5xx);
            return Err((response.map(CacheBody::inner), remember));
        }
    };
    let vary = rules::vary_names(response.headers()).unwrap_or_default();
    let stale = rules::stale_windows(response.headers(), cache.inner.stale_if_error);
    let (parts, body) = response.into_parts();
    let body = match read_up_to(body, cache.inner.max_entry_bytes).await {
        Ok(body) => body,
        Err((reason, body)) => {
            cache.count(match reason {
                NotStored::TooLarge => Event::TooLarge,
                _ => Event::NotStorable,
            });
            return Err((Response::from_parts(parts, body), false));
        }
    };
    let validator = parts.headers.contains_key(http::header::ETAG)
        || parts.headers.contains_key(http::header::LAST_MODIFIED);
    let stored = StoredResponse {
        status: parts.status,
        headers: parts.headers,
        body,
        stored_at: Instant::now(),
        lifetime,
        validator,
        stale,
        revalidating: tokio::sync::Mutex::new(()),
        failed_at: std::sync::Mutex::new(None),
    };
    if vary.is_empty() {
        return Ok(StoreOutcome {
            entry: Entry::new(key, Stored::Response(stored)),
            variant: None,
        });
    }
    // The response varies: it belongs under its variant's key, and the primary key gets a note
    // of the headers it varies on, so later requests look for their own variant.
    let variant_key = key.with_variant(rules::variant(request_headers, &vary));
    let response = Entry::new(&variant_key, Stored::Response(stored));
    let note = Entry::new(key, Stored::Vary(vary));
    if variant_key == *key {
        // Looked up by its variant already (the note existed): refresh the note, and the
        // response is this key's value.
        cache.insert(key.with_variant(String::new()), note).await;
        return Ok(StoreOutcome {
            entry: response,
            variant: None,
        });
    }
    cache.insert(variant_key, Arc::clone(&response)).await;
    Ok(StoreOutcome {
        entry: note,
        variant: Some(response),
    })
}

/// A stored response the service says is unchanged (a `304` to the cache's conditional request):
/// its headers updated from the `304` (RFC 9111 §3.2, §4.3.4), its freshness computed anew, stored
/// again, and served.
async fn freshen<ResBody>(
    layer: &CacheLayer,
    key: CacheKey,
    stale: &StoredResponse,
    not_modified: &http::HeaderMap,
    exchange: rules::Exchange,
) -> Response<CacheBody<ResBody>> {
    let cache = &layer.cache;
    let mut headers = stale.headers.clone();
    for name in not_modified.keys() {
        if rules::updates_stored(name) {
            headers.remove(name);
            for value in not_modified.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
    }
    // Its age starts again from the 304: the validation made it as good as new. Without
    // explicit freshness in the merged fields, it keeps the lifetime it was stored with (its
    // route's).
    let mut route = http::Extensions::new();
    if !stale.lifetime.fresh_for.is_zero() {
        route.insert(crate::RouteTtl(stale.lifetime.fresh_for));
    }
    let lifetime = rules::response_freshness(
        stale.status,
        &headers,
        &route,
        &cache.inner.statuses,
        cache.inner.default_ttl,
        cache.inner.store_unmarked,
        exchange,
    );
    let stale_windows = rules::stale_windows(&headers, cache.inner.stale_if_error);
    let fresh = StoredResponse {
        status: stale.status,
        headers,
        body: stale.body.clone(),
        stored_at: Instant::now(),
        lifetime: lifetime.unwrap_or(rules::Lifetime {
            fresh_for: Duration::ZERO,
            initial_age: Duration::ZERO,
            always_validate: true,
        }),
        validator: stale.validator,
        stale: stale_windows,
        revalidating: tokio::sync::Mutex::new(()),
        failed_at: std::sync::Mutex::new(None),
    };
    cache.count(Event::Revalidated);
    let response = hit(
        &fresh,
        Some(fresh.age()),
        false,
        layer.x_cache,
        "REVALIDATED",
    );
    if lifetime.is_ok() {
        cache
            .insert(key.clone(), Entry::new(&key, Stored::Response(fresh)))
            .await;
    }
    response
}

/// What [`store`] stored: the entry for the key, and the response's own entry when it varies.
struct StoreOutcome {
    entry: Arc<Entry>,
    variant: Option<Arc<Entry>>,
}

impl StoreOutcome {
    /// The storing request's own response: the one stored (under its variant, when the response
    /// varies).
    fn own_response<B>(&self) -> Option<Response<CacheBody<B>>> {
        match &self.variant.as_ref().unwrap_or(&self.entry).stored {
            Stored::Response(stored) => Some(hit(stored, None, false, false, "MISS")),
            Stored::Vary(_) | Stored::Pass => None,
        }
    }
}

/// Reads `body` into memory, stopping as soon as it exceeds `limit`: then the frames read so far
/// and the rest of the body come back as one body, untruncated.
async fn read_up_to<ResBody>(
    mut body: ResBody,
    limit: u64,
) -> Result<Bytes, (NotStored, CacheBody<ResBody>)>
where
    ResBody: Body<Data = Bytes> + Unpin,
    ResBody::Error: Into<BoxError>,
{
    if body.size_hint().lower() > limit {
        return Err((NotStored::TooLarge, CacheBody::inner(body)));
    }
    let mut frames: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut read: u64 = 0;
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            None => break,
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    read += data.len() as u64;
                }
                let trailers = frame.is_trailers();
                frames.push_back(frame);
                if read > limit || trailers {
                    let reason = if trailers {
                        NotStored::BodyError
                    } else {
                        NotStored::TooLarge
                    };
                    return Err((reason, CacheBody::prefixed(frames, None, Some(body))));
                }
            }
            Some(Err(error)) => {
                return Err((
                    NotStored::BodyError,
                    CacheBody::prefixed(frames, Some(error.into()), None),
                ));
            }
        }
    }
    let mut bytes = BytesMut::with_capacity(read as usize);
    for frame in frames {
        if let Ok(data) = frame.into_data() {
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes.freeze())
}

/// The response from a stored one: its status, headers and body, with `Age`, and
/// `x-cache: <label>` when enabled.
fn hit<ResBody>(
    stored: &StoredResponse,
    age: Option<Duration>,
    head: bool,
    x_cache: bool,
    label: &'static str,
) -> Response<CacheBody<ResBody>> {
    let body = if head {
        Bytes::new()
    } else {
        stored.body.clone()
    };
    let mut response = Response::new(CacheBody::cached(body));
    *response.status_mut() = stored.status;
    // Room for `Age`, `X-Cache` (and a HEAD's `Content-Length`) from the start: a clone has
    // none, and a header map grows on any insert when full, even one that replaces a value.
    let headers = response.headers_mut();
    headers.reserve(stored.headers.len() + 3);
    for (name, value) in &stored.headers {
        headers.append(name.clone(), value.clone());
    }
    // A hit says how old it is; the request that stored it forwards the service's `Age` as it was.
    if let Some(age) = age {
        headers.insert(AGE, age_value(age.as_secs()));
    }
    if head {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(stored.body.len()));
    }
    mark(&mut response, x_cache, label);
    response
}

thread_local! {
    /// A buffer for the next lookup's key (see `Cache::call`).
    static KEY_BUFFER: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
}

/// Gives a key's buffer back for the thread's next lookup, unless it grew large.
pub(crate) fn recycle_key_buffer(text: String) {
    if text.capacity() <= 1024 {
        KEY_BUFFER.set(text);
    }
}

/// The `Age` header's value. The first minute's values are made once: a fresh hit is usually
/// young, and formatting a number allocates.
fn age_value(seconds: u64) -> HeaderValue {
    static YOUNG: std::sync::LazyLock<Vec<HeaderValue>> =
        std::sync::LazyLock::new(|| (0..60_u64).map(HeaderValue::from).collect());
    usize::try_from(seconds)
        .ok()
        .and_then(|seconds| YOUNG.get(seconds))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(seconds))
}

fn mark<B>(response: &mut Response<B>, enabled: bool, value: &'static str) {
    if enabled {
        response
            .headers_mut()
            .insert(X_CACHE, HeaderValue::from_static(value));
    }
}
