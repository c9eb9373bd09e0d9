//! How long a response stays fresh, how old it is, and how long it may serve stale (RFC 9111
//! §4.2, RFC 5861).

use std::time::{Duration, SystemTime};

use ballast_core::http::attached;
use http::header::{AGE, DATE, ETAG, EXPIRES, LAST_MODIFIED, SET_COOKIE};
use http::{HeaderMap, StatusCode};

use super::{directives, vary_names, Directives, NotStored, DELTA_SECONDS_MAX};

/// How long a response stays fresh, how old it already is, and whether it must be validated
/// before every use: what the cache stores with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifetime {
    /// The freshness lifetime (RFC 9111 §4.2.1), capped by the route's and the cache's TTL.
    pub(crate) fresh_for: Duration,
    /// The corrected initial age (RFC 9111 §4.2.3): the `Age` it arrived with, or how old its
    /// `Date` says it is, whichever is larger, plus the time the service took to answer.
    pub(crate) initial_age: Duration,
    /// `no-cache`: stored, but validated with the service before every use (§5.2.2.4).
    pub(crate) always_validate: bool,
}

/// The statuses a response may be stored with when its freshness is explicit or its route gives
/// one: the heuristically cacheable ones (RFC 9110 §15.1). 206 is never stored (the cache does not
/// assemble ranges), nor is any other 5xx.
pub(crate) const CACHEABLE_STATUSES: [StatusCode; 11] = [
    StatusCode::OK,
    StatusCode::NON_AUTHORITATIVE_INFORMATION,
    StatusCode::NO_CONTENT,
    StatusCode::MULTIPLE_CHOICES,
    StatusCode::MOVED_PERMANENTLY,
    StatusCode::PERMANENT_REDIRECT,
    StatusCode::NOT_FOUND,
    StatusCode::METHOD_NOT_ALLOWED,
    StatusCode::GONE,
    StatusCode::URI_TOO_LONG,
    StatusCode::NOT_IMPLEMENTED,
];

/// When the exchange happened, for the age calculation (RFC 9111 §4.2.3).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exchange {
    /// When the request went to the service.
    pub(crate) request_time: SystemTime,
    /// When its response arrived.
    pub(crate) response_time: SystemTime,
}

/// The freshness a response is stored with, or why it must not be stored (RFC 9111 §3, §4.2).
///
/// Freshness is explicit (`s-maxage`, then `max-age`, then `Expires` minus `Date`), or given by
/// the route ([`RouteTtl`](crate::RouteTtl)), or — only for a 200, and only when the cache stores
/// unmarked responses — the cache's TTL; the smaller of an explicit and a route lifetime wins,
/// and the cache's TTL caps every lifetime. A response that is stale on arrival (an `Expires` in
/// the past or invalid, `max-age=0`, an `Age` beyond its lifetime, `no-cache`) is stored only when
/// it carries a validator (`ETag`, `Last-Modified`), to be revalidated before use.
pub(crate) fn response_freshness(
    status: StatusCode,
    headers: &HeaderMap,
    extensions: &http::Extensions,
    statuses: &[StatusCode],
    default_ttl: Duration,
    store_unmarked: bool,
    exchange: Exchange,
) -> Result<Lifetime, NotStored> {
    let directives = directives(headers);
    // `no-cache` states its freshness too: none, validate every use.
    let explicit = explicit_lifetime(&directives, headers, exchange.response_time)
        .or(directives.no_cache.then_some(Duration::ZERO));
    let route = extensions.get::<crate::RouteTtl>().map(|route| route.0);
    let unmarked = store_unmarked && status == StatusCode::OK;
    let failed = (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED)
        || attached(extensions).is_some();
    // The route's choice comes first: a response neither its route nor itself asked to cache
    // is none of the cache's business, whatever else it says (`no-store`, a status outside the
    // set) — not a miss.
    if route.is_none() && explicit.is_none() && !unmarked {
        return Err(if failed {
            NotStored::NotAskedFailure
        } else {
            NotStored::NotAsked
        });
    }
    if status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED {
        return Err(NotStored::Status5xx);
    }
    let statuses = extensions
        .get::<crate::RouteStatuses>()
        .map_or(statuses, |route| &route.0);
    if !statuses.contains(&status) || status == StatusCode::PARTIAL_CONTENT {
        return Err(NotStored::Status);
    }
    if failed {
        return Err(NotStored::Failure);
    }
    if headers.contains_key(SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    if vary_names(headers).is_none() {
        return Err(NotStored::VaryStar);
    }
    // `private` with or without field names: a shared cache stores none of it (§5.2.2.7 allows
    // storing the rest; not doing so is the safe reading).
    if directives.no_store || directives.private {
        return Err(NotStored::CacheControl);
    }
    let validator = headers.contains_key(ETAG) || headers.contains_key(LAST_MODIFIED);
    let fresh_for = match (route, explicit) {
        (Some(route), Some(explicit)) => route.min(explicit),
        (Some(lifetime), None) | (None, Some(lifetime)) => lifetime,
        // Unmarked, checked above.
        (None, None) => default_ttl,
    }
    .min(default_ttl);
    let initial_age = initial_age(headers, exchange);
    let always_validate = directives.no_cache;
    let stale_on_arrival = always_validate || fresh_for <= initial_age;
    if stale_on_arrival && !validator {
        // Nothing to validate it with: it could never be served.
        return Err(NotStored::CacheControl);
    }
    Ok(Lifetime {
        fresh_for,
        initial_age,
        always_validate,
    })
}

/// The explicit freshness lifetime (RFC 9111 §4.2.1): `s-maxage` (a shared cache), `max-age`,
/// or `Expires` minus `Date`; `None` when the response states none. Conflicting directives and an
/// invalid or repeated, differing `Expires` (such as `0`) mean already expired.
pub(crate) fn explicit_lifetime(
    directives: &Directives,
    headers: &HeaderMap,
    response_time: SystemTime,
) -> Option<Duration> {
    if directives.conflicting {
        return Some(Duration::ZERO);
    }
    if let Some(seconds) = directives.s_maxage.or(directives.max_age) {
        return Some(Duration::from_secs(seconds));
    }
    let mut expires = headers.get_all(EXPIRES).iter();
    let first = expires.next()?;
    if expires.any(|other| other != first) {
        return Some(Duration::ZERO);
    }
    let Some(expires) = http_date(first) else {
        // §5.3: an invalid date, especially "0", is a time in the past.
        return Some(Duration::ZERO);
    };
    let date = headers
        .get(DATE)
        .and_then(http_date)
        .unwrap_or(response_time);
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

/// The corrected initial age (RFC 9111 §4.2.3).
pub(crate) fn initial_age(headers: &HeaderMap, exchange: Exchange) -> Duration {
    // §5.1: Age is delta-seconds; an invalid value is ignored.
    let age_value = headers
        .get(AGE)
        .and_then(|value| value.to_str().ok())
        .filter(|value| !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
        .map_or(0, |value| {
            value
                .parse::<u64>()
                .unwrap_or(DELTA_SECONDS_MAX)
                .min(DELTA_SECONDS_MAX)
        });
    let date_value = headers
        .get(DATE)
        .and_then(http_date)
        .unwrap_or(exchange.response_time);
    let apparent_age = exchange
        .response_time
        .duration_since(date_value)
        .unwrap_or(Duration::ZERO);
    let response_delay = exchange
        .response_time
        .duration_since(exchange.request_time)
        .unwrap_or(Duration::ZERO);
    let corrected_age_value = Duration::from_secs(age_value) + response_delay;
    apparent_age.max(corrected_age_value)
}

/// An HTTP-date in any of its three formats (RFC 9110 §5.6.7): IMF-fixdate, the obsolete RFC 850
/// form and asctime's; `None` for anything else.
pub(crate) fn http_date(value: &http::HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(value.to_str().ok()?).ok()
}

/// How long past its freshness a stored response may still be served (RFC 5861).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StaleWindows {
    /// When the service fails (a 5xx, a classified failure, an error) while revalidating.
    pub(crate) if_error: Duration,
    /// While a background request revalidates it.
    pub(crate) while_revalidate: Duration,
}

/// The stale windows of a response: its own `stale-if-error` and `stale-while-revalidate`
/// directives, else `default_if_error` and no revalidation window. None at all when the response
/// forbids serving it stale: `must-revalidate`, `proxy-revalidate`, `s-maxage` (which implies
/// `proxy-revalidate` for a shared cache, RFC 9111 §5.2.2.10), or `no-cache` (validated before
/// every use, §4.2.4).
pub(crate) fn stale_windows(headers: &HeaderMap, default_if_error: Duration) -> StaleWindows {
    let directives = directives(headers);
    if directives.must_revalidate
        || directives.proxy_revalidate
        || directives.s_maxage.is_some()
        || directives.no_cache
    {
        return StaleWindows::default();
    }
    StaleWindows {
        if_error: directives
            .stale_if_error
            .map_or(default_if_error, Duration::from_secs),
        while_revalidate: Duration::from_secs(directives.stale_while_revalidate.unwrap_or(0)),
    }
}
