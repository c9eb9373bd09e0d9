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
use crate::entry::{Entry, Freshness, Note, Stored};
use crate::key::CacheKey;
use crate::rules::{self};
use crate::store::Event;

/// Why the first of a set of concurrent misses did not produce a stored response.
#[derive(Debug)]
pub(super) struct NotCached;

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

    Box::pin(fill(inner, layer, key, request)).await
}

/// A miss that may be stored: concurrent misses of one key run the inner service once.
pub(super) async fn fill<S, ReqBody, ResBody>(
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
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let cache = &layer.cache;
    // The first one's future runs inside moka's `try_get_with`; the others wait for its entry.
    let mut request = Some(request);
    let mut own: Option<Result<Response<CacheBody<ResBody>>, S::Error>> = None;
    // Whether the route turned out never to have asked to be cached.
    let mut bypassed = false;
    let mut as_of = Instant::now();
    let mut stored = None;
    let moka = cache.inner.moka.clone();
    let init = {
        let request = &mut request;
        let own = &mut own;
        let bypassed = &mut bypassed;
        let as_of = &mut as_of;
        let stored = &mut stored;
        let key = key.clone();
        let mut inner = inner.clone();
        async move {
            let Some(request) = request.take() else {
                return Err(NotCached);
            };
            let request_headers = request.headers().clone();
            let request_time = SystemTime::now();
            let started = Instant::now();
            // How current the data is: a replica read says so inside (`DataAsOf`).
            let (response, observed) = DataAsOf::observe(inner.call(request)).await;
            *as_of = observed.map_or(started, |observed| observed.min(started));
            let response = match response {
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
            match store(cache, &key, &request_headers, response, exchange, *as_of).await {
                Ok(outcome) => {
                    *own = outcome.own_response().map(Ok);
                    cache.account(&outcome.entry);
                    let entry = Arc::clone(&outcome.entry);
                    *stored = Some(outcome);
                    Ok(entry)
                }
                Err((response, remember)) => {
                    *own = Some(Ok(response));
                    *bypassed = remember.silent();
                    // Hit-for-pass: the next requests for this key skip the coalescing. The
                    // note is kept apart from the stored responses; the requests waiting for
                    // this one read it as they go to the service.
                    if let Some(note) = remember.note() {
                        cache.inner.notes.insert(key.clone(), note).await;
                    }
                    Err(NotCached)
                }
            }
        }
    };
    let outcome = moka.try_get_with(key.clone(), init).await;
    if let Some(outcome) = stored {
        outcome.unless_superseded(cache, &key, as_of).await;
    }
    if let Some(result) = own {
        let mut response = result?;
        if !bypassed {
            cache.count(Event::Miss);
            mark(&mut response, layer.x_cache, "MISS");
        }
        return Ok(response);
    }
    if outcome.is_err() && cache.noted(&key).await == Some(Note::Bypass) {
        // A route that never asked to be cached: this request goes to the service, silently.
        cache.count(Event::Bypassed);
        let Some(request) = request else {
            unreachable!("only the first request's own response was taken")
        };
        return pass_through(inner, request).await;
    }
    if let Ok(entry) = &outcome {
        match &entry.stored {
            // Another request's response, stored for this key.
            Stored::Response(stored) => {
                cache.count(Event::Miss);
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
                        cache.count(Event::Miss);
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
    cache.count(Event::Miss);
    let mut response = pass_through(inner, request).await?;
    mark(&mut response, layer.x_cache, "MISS");
    Ok(response)
}
