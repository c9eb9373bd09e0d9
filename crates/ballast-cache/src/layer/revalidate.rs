//! A stored response that is no longer fresh: asked again, or refreshed by a `304`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ballast_core::scope::{DataAsOf, RequestScope};
use ballast_core::BoxError;
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::hit::{hit, mark};
use super::storing::{insert_fenced, store};
use super::CacheLayer;
use crate::body::CacheBody;
use crate::entry::{Entry, Freshness, Stored, StoredResponse};
use crate::key::CacheKey;
use crate::rules::{self};
use crate::store::Event;

/// Asks the service again for a stored response that is no longer fresh, one request at a time
/// per entry: a storable answer replaces it; a failure (a 5xx, a classified failure, an error) is
/// answered with the stale response while it is within `stale-if-error`, and so is a service
/// that has not answered [`STALE_MARGIN`] before the request's deadline.
pub(super) async fn revalidate<S, ReqBody, ResBody>(
    mut inner: S,
    layer: CacheLayer,
    key: CacheKey,
    entry: Arc<Entry>,
    request: Request<ReqBody>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let cache = &layer.cache;
    let Stored::Response(stale) = &entry.stored else {
        unreachable!("only stored responses are revalidated")
    };
    let head = request.method() == Method::HEAD;
    let asked_at = Instant::now();
    // A service that hangs (a locked table, a database that takes the connection and never
    // answers) must not take the request to its deadline while a stale copy may stand in: the
    // deadline layer further out would answer 503, and the cache would never see a failure.
    let give_up = stale_deadline(stale);
    let revalidating = stale.revalidating.lock();
    let _revalidating = match give_up {
        Some(at) => match tokio::time::timeout_at(at, revalidating).await {
            Ok(guard) => guard,
            // The request ahead is still waiting on the service.
            Err(_) => return Ok(serve_stale(&layer, stale, head)),
        },
        None => revalidating.await,
    };
    // The request ahead found the service failing while this one waited: that is this one's
    // answer too, rather than another request to a failing service.
    let failed_meanwhile = stale
        .failed_at
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .is_some_and(|at| at >= asked_at);
    if failed_meanwhile && stale.usable_if_error() {
        return Ok(serve_stale(&layer, stale, head));
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
    let started = Instant::now();
    let call = DataAsOf::observe(inner.call(request));
    let (answer, observed) = match give_up {
        Some(at) => match tokio::time::timeout_at(at, call).await {
            Ok(answered) => answered,
            Err(_) => {
                // Dropped: the query is cancelled, as any abandoned request's is.
                *stale
                    .failed_at
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
                return Ok(serve_stale(&layer, stale, head));
            }
        },
        None => call.await,
    };
    let as_of = observed.map_or(started, |observed| observed.min(started));
    let exchange = rules::Exchange {
        request_time,
        response_time: SystemTime::now(),
    };
    if validating {
        if let Ok(response) = &answer {
            if response.status() == http::StatusCode::NOT_MODIFIED {
                return Ok(freshen(&layer, key, stale, response.headers(), exchange, as_of).await);
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
        return Ok(serve_stale(&layer, stale, head));
    }
    let response = answer?;
    if head || failed {
        let mut response = response.map(CacheBody::inner);
        mark(&mut response, layer.x_cache, "MISS");
        return Ok(response);
    }
    let mut response = match store(cache, &key, &request_headers, response, exchange, as_of).await {
        Ok(outcome) => {
            let own = outcome.own_response();
            insert_fenced(cache, key, outcome.entry, as_of).await;
            own.unwrap_or_else(|| unreachable!("a stored outcome holds its response"))
        }
        Err((response, remember)) => {
            // No longer storable: the stale entry goes, and the key is remembered as such.
            match remember.note() {
                Some(note) => cache.note(key.clone(), note).await,
                None => cache.inner.moka.invalidate(&key).await,
            }
            if remember.silent() {
                return Ok(response);
            }
            response
        }
    };
    mark(&mut response, layer.x_cache, "MISS");
    Ok(response)
}

/// How long before a request's deadline the cache stops waiting for the service and answers
/// with a stale copy it may use: time for that answer to leave before the deadline layer
/// further out gives up on the request.
const STALE_MARGIN: Duration = Duration::from_millis(100);

/// When to stop waiting for the service and serve `stale` instead: shortly before the current
/// request's deadline ([`RequestScope`]), if the request has one and `stale` may stand in for
/// a failure (`stale-if-error`).
fn stale_deadline(stale: &StoredResponse) -> Option<tokio::time::Instant> {
    if !stale.usable_if_error() {
        return None;
    }
    let remaining = RequestScope::remaining()?;
    Some(tokio::time::Instant::now() + remaining.saturating_sub(STALE_MARGIN))
}

/// The stale copy, as the answer to a request whose service failed or did not answer in time.
fn serve_stale<ResBody>(
    layer: &CacheLayer,
    stale: &StoredResponse,
    head: bool,
) -> Response<CacheBody<ResBody>> {
    layer.cache.count(Event::Stale);
    hit(stale, Some(stale.age()), head, layer.x_cache, "STALE")
}

/// A stored response the service says is unchanged (a `304` to the cache's conditional request):
/// its headers updated from the `304` (RFC 9111 §3.2, §4.3.4), its freshness computed anew, stored
/// again, and served.
pub(super) async fn freshen<ResBody>(
    layer: &CacheLayer,
    key: CacheKey,
    stale: &StoredResponse,
    not_modified: &http::HeaderMap,
    exchange: rules::Exchange,
    as_of: Instant,
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
    // A 304 without a `Date` (an origin must send one): the validation is this response's
    // date now, as the `Age` starting again says.
    if !not_modified.contains_key(http::header::DATE) {
        super::storing::record_date(&mut headers, exchange.response_time);
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
        tags: stale.tags.clone(),
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
        let entry = Entry::new(&key, Stored::Response(fresh));
        insert_fenced(cache, key, entry, as_of).await;
    }
    response
}
