//! A request the cache may answer or fill: lookup, conditions, and one fill per key.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use ballast_core::scope::DataAsOf;
use ballast_core::BoxError;
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::hit::{hit, mark};
use super::revalidate::revalidate;
use super::service::pass_through;
use super::storing::store;
use super::{CacheLayer, X_CACHE};
use crate::body::CacheBody;
use crate::collapse::{Joined, Outcome};
use crate::entry::{Entry, Freshness, Note, Stored};
use crate::key::CacheKey;
use crate::rules::{self};
use crate::store::Event;

/// A request that may be served from or stored into the cache (a miss, a stale entry, a
/// variant): its conditions are taken out so the service answers in full, and answered against
/// whatever response it gets.
pub(super) async fn lookup<S, ReqBody, ResBody>(
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
    ResBody: Body<Data = Bytes> + Send + 'static,
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
pub(super) fn answer_conditions<B>(
    conditions: &rules::Conditions,
    response: &mut Response<CacheBody<B>>,
) {
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

pub(super) async fn lookup_unconditional<S, ReqBody, ResBody>(
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
    ResBody: Body<Data = Bytes> + Send + 'static,
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
        Some(Stored::Vary(_)) => false,
        None => match cache.noted(&key).await {
            Some(Note::Pass) => true,
            Some(Note::Bypass) => {
                // A route that never asked to be cached.
                cache.count(Event::Bypassed);
                return pass_through(inner, request).await;
            }
            None => false,
        },
    };
    if pass {
        cache.count(Event::Miss);
        cache.count(Event::Pass);
        let mut response = pass_through(inner, request).await?;
        mark(&mut response, layer.x_cache, "MISS");
        return Ok(response);
    }
    if head {
        cache.count(Event::Miss);
        // A HEAD response has no body to store; a later GET will fill the cache.
        let mut response = pass_through(inner, request).await?;
        mark(&mut response, layer.x_cache, "MISS");
        return Ok(response);
    }

    // A key that held a response (expired now) is known to store: its misses collapse.
    let known = matches!(
        found.as_deref().map(|entry| &entry.stored),
        Some(Stored::Response(_))
    );
    Box::pin(fill(inner, layer, key, request, known)).await
}

/// A miss that may be stored: concurrent misses of one key run the inner service once when its
/// answer can serve them (see `crate::collapse`); `known`: the key is known to store.
pub(super) async fn fill<S, ReqBody, ResBody>(
    inner: S,
    layer: CacheLayer,
    key: CacheKey,
    request: Request<ReqBody>,
    known: bool,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + Sync + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let cache = &layer.cache;
    let asked = known || cache.inner.store_unmarked;
    let fill = match cache.inner.collapsing.join(&key, asked) {
        Joined::Leader(leader) => {
            let mut request = request;
            request.extensions_mut().insert(leader.asking());
            let (response, outcome) = fetch(inner, &layer, &key, request).await;
            leader.finish(outcome);
            return response;
        }
        Joined::Waiter(fill) => fill,
    };
    if fill.asked() {
        if let Outcome::Stored(entry) = fill.outcome().await {
            if let Some(response) = served(&layer, &key, &entry, request.headers()).await {
                return Ok(response);
            }
        }
    }
    // Not a fill this request can wait for (a route that never asked, or not yet known to), or
    // one whose answer cannot serve it: its own request, not collapsed again.
    let (response, _) = fetch(inner, &layer, &key, request).await;
    response
}

/// What a fill stored, as the answer to another request for its key: the stored response, or
/// this request's own variant of a response that varies; `None` if there is none.
async fn served<ResBody>(
    layer: &CacheLayer,
    key: &CacheKey,
    entry: &Entry,
    headers: &http::HeaderMap,
) -> Option<Response<CacheBody<ResBody>>> {
    let cache = &layer.cache;
    let variant;
    let stored = match &entry.stored {
        Stored::Response(stored) => stored,
        // Another request's response varies: this request's variant may be the same.
        Stored::Vary(names) => {
            variant = cache
                .inner
                .moka
                .get(&key.with_variant(rules::variant(headers, names)))
                .await?;
            match &variant.stored {
                Stored::Response(stored) => stored,
                Stored::Vary(_) => return None,
            }
        }
    };
    cache.count(Event::Miss);
    let mut response = hit(stored, Some(stored.age()), false, false, "MISS");
    mark(&mut response, layer.x_cache, "MISS");
    Some(response)
}

/// Asks the service, and stores its answer if it may be: this request's response, and what the
/// requests waiting for it get.
async fn fetch<S, ReqBody, ResBody>(
    mut inner: S,
    layer: &CacheLayer,
    key: &CacheKey,
    request: Request<ReqBody>,
) -> (Result<Response<CacheBody<ResBody>>, S::Error>, Outcome)
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let cache = &layer.cache;
    let request_headers = request.headers().clone();
    let request_time = SystemTime::now();
    let started = Instant::now();
    // How current the data is: a replica read says so inside (`DataAsOf`).
    let (response, observed) = DataAsOf::observe(inner.call(request)).await;
    let as_of = observed.map_or(started, |observed| observed.min(started));
    let response = match response {
        Ok(response) => response,
        Err(error) => return (Err(error), Outcome::Go),
    };
    let exchange = rules::Exchange {
        request_time,
        response_time: SystemTime::now(),
    };
    match store(cache, key, &request_headers, response, exchange, as_of).await {
        Ok(outcome) => {
            let own = outcome.own_response();
            let entry = Arc::clone(&outcome.entry);
            cache.insert(key.clone(), Arc::clone(&entry)).await;
            outcome.unless_superseded(cache, key, as_of).await;
            cache.count(Event::Miss);
            let mut response =
                own.unwrap_or_else(|| unreachable!("a stored outcome holds its response"));
            mark(&mut response, layer.x_cache, "MISS");
            (Ok(response), Outcome::Stored(entry))
        }
        Err((mut response, remember)) => {
            // Hit-for-pass: the next requests for this key skip the collapsing (and an expired
            // response of the key, no longer storable, goes).
            if let Some(note) = remember.note() {
                cache.note(key.clone(), note).await;
            }
            if !remember.silent() {
                cache.count(Event::Miss);
                mark(&mut response, layer.x_cache, "MISS");
            }
            (Ok(response), Outcome::Go)
        }
    }
}
