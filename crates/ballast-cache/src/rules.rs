//! What may be stored and under which key (RFC 9111, as a shared cache).

use std::time::Duration;

use ballast_core::http::attached;
use std::time::SystemTime;

use http::header::{
    AGE, AUTHORIZATION, CACHE_CONTROL, CONTENT_LOCATION, COOKIE, DATE, ETAG, EXPIRES, HOST,
    IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, LAST_MODIFIED,
    PRAGMA, RANGE, SET_COOKIE, VARY,
};
use http::{HeaderMap, HeaderName, Method, StatusCode};

/// Request headers that change what many applications answer without their responses saying
/// `Vary`: proxies' forwarding headers and method or URL overrides. Their values are part of
/// the key by default, so a response built from one of them (a reflected `X-Forwarded-Host`, the
/// classic cache-poisoning vector) is only ever served to requests that sent the same value.
pub const DEFAULT_KEYED_HEADERS: [&str; 8] = [
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-scheme",
    "x-forwarded-port",
    "x-host",
    "x-original-url",
    "x-http-method-override",
];

/// The largest delta-seconds a cache must represent (RFC 9111 §1.2.2).
const DELTA_SECONDS_MAX: u64 = 2_147_483_648;

/// Why a response was not stored (for stats and debugging).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotStored {
    Status,
    Status5xx,
    Failure,
    SetCookie,
    CacheControl,
    /// Neither the route nor the response asked for it to be cached.
    NotAsked,
    VaryStar,
    TooLarge,
    BodyError,
}

/// The directives of `Cache-Control` headers that matter to a shared cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Directives {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
    pub(crate) must_revalidate: bool,
    pub(crate) proxy_revalidate: bool,
    pub(crate) stale_if_error: Option<u64>,
    pub(crate) stale_while_revalidate: Option<u64>,
    /// A request's `min-fresh`.
    pub(crate) min_fresh: Option<u64>,
    /// A freshness directive (`max-age`, `s-maxage`) given twice with different values: the
    /// response is treated as stale (RFC 9111 §4.2.1).
    pub(crate) conflicting: bool,
}

pub(crate) fn directives(headers: &HeaderMap) -> Directives {
    let mut directives = Directives::default();
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(value) = value.to_str() else {
            // Unreadable directives: assume the worst.
            directives.no_store = true;
            continue;
        };
        for directive in value.split(',') {
            let (name, argument) = match directive.split_once('=') {
                Some((name, argument)) => (name.trim(), Some(argument.trim().trim_matches('"'))),
                None => (directive.trim(), None),
            };
            // delta-seconds (RFC 9111 §1.2.2): digits only; a value too large to hold is 2^31.
            let seconds = || {
                argument
                    .filter(|argument| {
                        !argument.is_empty() && argument.bytes().all(|b| b.is_ascii_digit())
                    })
                    .map(|argument| {
                        argument
                            .parse::<u64>()
                            .unwrap_or(DELTA_SECONDS_MAX)
                            .min(DELTA_SECONDS_MAX)
                    })
            };
            if name.eq_ignore_ascii_case("no-store") {
                directives.no_store = true;
            } else if name.eq_ignore_ascii_case("no-cache") {
                directives.no_cache = true;
            } else if name.eq_ignore_ascii_case("private") {
                directives.private = true;
            } else if name.eq_ignore_ascii_case("max-age") {
                set_once(
                    &mut directives.max_age,
                    seconds(),
                    &mut directives.conflicting,
                );
            } else if name.eq_ignore_ascii_case("s-maxage") {
                set_once(
                    &mut directives.s_maxage,
                    seconds(),
                    &mut directives.conflicting,
                );
            } else if name.eq_ignore_ascii_case("must-revalidate") {
                directives.must_revalidate = true;
            } else if name.eq_ignore_ascii_case("proxy-revalidate") {
                directives.proxy_revalidate = true;
            } else if name.eq_ignore_ascii_case("stale-if-error") {
                directives.stale_if_error = Some(seconds().unwrap_or(0));
            } else if name.eq_ignore_ascii_case("min-fresh") {
                directives.min_fresh = Some(seconds().unwrap_or(0));
            } else if name.eq_ignore_ascii_case("stale-while-revalidate") {
                directives.stale_while_revalidate = Some(seconds().unwrap_or(0));
            }
        }
    }
    directives
}

/// Records a freshness directive's value: an invalid one counts as 0 (stale, RFC 9111 §1.2.2),
/// and a second, different one marks the field conflicting.
fn set_once(slot: &mut Option<u64>, value: Option<u64>, conflicting: &mut bool) {
    let value = value.unwrap_or(0);
    match *slot {
        Some(previous) if previous != value => *conflicting = true,
        _ => *slot = Some(value),
    }
}

/// What one pass over a request's header names tells the layer: requests carry few headers,
/// and comparing each name against the few that matter costs less than a lookup per name.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Scan<'a> {
    /// `Range`, `If-Range`, `If-Match` or `If-Unmodified-Since`; or `Authorization` or `Cookie`
    /// when credentialed requests are not cached.
    pub(crate) bypass: bool,
    /// `Cache-Control` is present.
    pub(crate) cache_control: bool,
    /// `Pragma` is present.
    pub(crate) pragma: bool,
    /// `If-None-Match` or `If-Modified-Since` is present.
    pub(crate) conditional: bool,
    /// One of the cache's keyed headers is present.
    pub(crate) keyed: bool,
    /// The first `Host`.
    pub(crate) host: Option<&'a http::HeaderValue>,
}

impl<'a> Scan<'a> {
    pub(crate) fn of(
        headers: &'a HeaderMap,
        credentialed_allowed: bool,
        keyed: &[HeaderName],
    ) -> Self {
        let mut scan = Scan::default();
        for (name, value) in headers {
            if name == RANGE || name == IF_RANGE || name == IF_MATCH || name == IF_UNMODIFIED_SINCE
            {
                scan.bypass = true;
            } else if name == AUTHORIZATION || name == COOKIE {
                scan.bypass |= !credentialed_allowed;
            } else if name == CACHE_CONTROL {
                scan.cache_control = true;
            } else if name == PRAGMA {
                scan.pragma = true;
            } else if name == IF_NONE_MATCH || name == IF_MODIFIED_SINCE {
                scan.conditional = true;
            } else if name == HOST {
                scan.host = scan.host.or(Some(value));
            }
            if keyed.contains(name) {
                scan.keyed = true;
            }
        }
        scan
    }

    /// Whether the request neither uses nor fills the cache: an unsafe method, a range or a
    /// precondition the cache does not answer, credentials (unless allowed), or `no-store`.
    pub(crate) fn bypasses(&self, method: &Method, headers: &HeaderMap) -> bool {
        if method != Method::GET && method != Method::HEAD {
            return true;
        }
        self.bypass || (self.cache_control && directives(headers).no_store)
    }
}

/// Whether a request's own directives (§5.2.1) refuse a stored response of this `age` and
/// freshness lifetime without validating it first: `no-cache` (or `Pragma: no-cache` without
/// `Cache-Control`, §5.4), `max-age` older than the response, `min-fresh` more than it has left.
pub(crate) fn request_refreshes(headers: &HeaderMap, age: Duration, fresh_for: Duration) -> bool {
    if !headers.contains_key(CACHE_CONTROL) {
        return headers
            .get_all(PRAGMA)
            .iter()
            .any(|value| value.as_bytes().eq_ignore_ascii_case(b"no-cache"));
    }
    let request = directives(headers);
    request.no_cache
        || request
            .max_age
            .is_some_and(|max| age > Duration::from_secs(max))
        || request
            .min_fresh
            .is_some_and(|min| fresh_for.saturating_sub(age) < Duration::from_secs(min))
}

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
    if status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED {
        return Err(NotStored::Status5xx);
    }
    let statuses = extensions
        .get::<crate::RouteStatuses>()
        .map_or(statuses, |route| &route.0);
    if !statuses.contains(&status) || status == StatusCode::PARTIAL_CONTENT {
        return Err(NotStored::Status);
    }
    if attached(extensions).is_some() {
        return Err(NotStored::Failure);
    }
    if headers.contains_key(SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    if vary_names(headers).is_none() {
        return Err(NotStored::VaryStar);
    }
    let directives = directives(headers);
    // `private` with or without field names: a shared cache stores none of it (§5.2.2.7 allows
    // storing the rest; not doing so is the safe reading).
    if directives.no_store || directives.private {
        return Err(NotStored::CacheControl);
    }
    let validator = headers.contains_key(ETAG) || headers.contains_key(LAST_MODIFIED);
    // `no-cache` states its freshness too: none, validate every use.
    let explicit = explicit_lifetime(&directives, headers, exchange.response_time)
        .or(directives.no_cache.then_some(Duration::ZERO));
    let route = extensions.get::<crate::RouteTtl>().map(|route| route.0);
    let fresh_for = match (route, explicit) {
        (Some(route), Some(explicit)) => route.min(explicit),
        (Some(lifetime), None) | (None, Some(lifetime)) => lifetime,
        (None, None) if store_unmarked && status == StatusCode::OK => default_ttl,
        (None, None) => return Err(NotStored::NotAsked),
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

/// The conditions of a `GET` or `HEAD` a cache answers itself (RFC 9111 §4.3.2): taken out of the
/// request, so the service is asked for the whole response (which can then be stored), and
/// evaluated against the response the request gets.
#[derive(Debug, Default)]
pub(crate) struct Conditions {
    if_none_match: Option<http::HeaderValue>,
    if_modified_since: Option<http::HeaderValue>,
}

impl Conditions {
    /// Takes `If-None-Match` and `If-Modified-Since` out of `headers`.
    pub(crate) fn take(headers: &mut HeaderMap) -> Self {
        Conditions {
            if_none_match: headers.remove(IF_NONE_MATCH),
            if_modified_since: headers.remove(IF_MODIFIED_SINCE),
        }
    }

    /// The conditions of `headers`, left in place.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        Conditions {
            if_none_match: headers.get(IF_NONE_MATCH).cloned(),
            if_modified_since: headers.get(IF_MODIFIED_SINCE).cloned(),
        }
    }

    /// Whether there are none.
    pub(crate) fn is_empty(&self) -> bool {
        self.if_none_match.is_none() && self.if_modified_since.is_none()
    }

    /// Whether a `200` with `headers` satisfies them, so the answer is `304 Not Modified`
    /// (RFC 9110 §13.1.2, §13.1.3, §13.2.2): `If-None-Match` (weak comparison, `*` matches any)
    /// decides when present; otherwise `If-Modified-Since` against `Last-Modified` (or `Date`).
    pub(crate) fn not_modified(&self, headers: &HeaderMap) -> bool {
        if let Some(tags) = &self.if_none_match {
            let Some(etag) = headers.get(ETAG).and_then(|etag| etag.to_str().ok()) else {
                return false;
            };
            let Ok(tags) = tags.to_str() else {
                return false;
            };
            return tags
                .split(',')
                .map(str::trim)
                .any(|tag| tag == "*" || weak_eq(tag, etag));
        }
        let Some(since) = self.if_modified_since.as_ref().and_then(http_date) else {
            return false;
        };
        let modified = headers
            .get(LAST_MODIFIED)
            .or_else(|| headers.get(DATE))
            .and_then(http_date);
        modified.is_some_and(|modified| modified <= since)
    }
}

/// Weak comparison of two entity-tags (RFC 9110 §8.8.3.2): equal opaque tags, either or both weak.
fn weak_eq(a: &str, b: &str) -> bool {
    let opaque = |tag: &str| tag.strip_prefix("W/").unwrap_or(tag).to_owned();
    let (a, b) = (opaque(a), opaque(b));
    a.len() >= 2 && a.starts_with('"') && a.ends_with('"') && a == b
}

/// The header fields a `304` carries from the `200` it stands for (RFC 9110 §15.4.5), and the
/// cache's `Age`.
pub(crate) const NOT_MODIFIED_FIELDS: [HeaderName; 8] = [
    CACHE_CONTROL,
    CONTENT_LOCATION,
    DATE,
    ETAG,
    EXPIRES,
    VARY,
    LAST_MODIFIED,
    AGE,
];

/// The header fields a `304` from the service does not update in the stored response (RFC 9111
/// §3.2): its length, and the connection's own fields.
pub(crate) fn updates_stored(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "upgrade"
            | "x-cache"
    )
}

/// Whether an answer of the service is an error a stale response may stand in for (RFC 5861:
/// 500, 502, 503, 504), or one that carries a classified failure.
pub(crate) fn is_error(status: StatusCode, extensions: &http::Extensions) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504) || attached(extensions).is_some()
}

/// The request header names a response varies on, lowercased and sorted; `None` for `Vary: *`
/// (or an unreadable `Vary`).
pub(crate) fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in headers.get_all(VARY) {
        let value = value.to_str().ok()?;
        for name in value
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
        {
            if name == "*" {
                return None;
            }
            names.push(HeaderName::from_bytes(name.as_bytes()).ok()?);
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

/// The part of the key that the request's values of `names` make.
pub(crate) fn variant(headers: &HeaderMap, names: &[HeaderName]) -> String {
    let mut variant = String::new();
    for name in names {
        variant.push_str(name.as_str());
        variant.push('=');
        for (i, value) in headers.get_all(name).iter().enumerate() {
            if i > 0 {
                variant.push(',');
            }
            variant.push_str(&String::from_utf8_lossy(value.as_bytes()));
        }
        variant.push('\n');
    }
    variant
}

/// Appends the default primary key to `key` — host, path and query, and the values of the keyed
/// headers — so the cache builds the whole key in one buffer.
pub(crate) fn push_default_key(
    key: &mut String,
    parts: &http::request::Parts,
    keyed: &[HeaderName],
    scan: &Scan<'_>,
) {
    let host = scan
        .host
        .and_then(|host| host.to_str().ok())
        .or_else(|| parts.uri.authority().map(http::uri::Authority::as_str))
        .unwrap_or("");
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    key.reserve(host.len() + path.len());
    key.push_str(host);
    key.push_str(path);
    // Most requests carry none of the keyed headers (the scan tells).
    if !scan.keyed {
        return;
    }
    for name in keyed {
        for value in parts.headers.get_all(name) {
            key.push('\n');
            key.push_str(name.as_str());
            key.push('=');
            key.push_str(&String::from_utf8_lossy(value.as_bytes()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    fn now() -> Exchange {
        let now = SystemTime::now();
        Exchange {
            request_time: now,
            response_time: now,
        }
    }

    #[test]
    fn cache_control_directives() {
        let parsed = directives(&headers(&[
            ("cache-control", "public, Max-Age=60"),
            ("cache-control", "s-maxage=\"30\""),
        ]));
        assert_eq!(parsed.max_age, Some(60));
        assert_eq!(parsed.s_maxage, Some(30));
        assert!(!parsed.no_store);
        assert!(directives(&headers(&[("cache-control", "no-store")])).no_store);
        assert!(directives(&headers(&[("cache-control", "PRIVATE")])).private);
        assert_eq!(
            directives(&headers(&[("cache-control", "max-age=abc")])).max_age,
            Some(0)
        );
    }

    #[test]
    fn ttl_is_capped_by_the_response() {
        let ok = StatusCode::OK;
        let none = http::Extensions::new();
        let statuses = [StatusCode::OK];
        let ttl = |pairs: &[(&str, &str)]| {
            response_freshness(
                ok,
                &headers(pairs),
                &none,
                &statuses,
                Duration::from_secs(60),
                true,
                now(),
            )
            .map(|lifetime| lifetime.fresh_for)
        };
        assert_eq!(ttl(&[]), Ok(Duration::from_secs(60)));
        assert_eq!(
            ttl(&[("cache-control", "max-age=10")]),
            Ok(Duration::from_secs(10))
        );
        assert_eq!(
            ttl(&[("cache-control", "max-age=10, s-maxage=20")]),
            Ok(Duration::from_secs(20))
        );
        assert_eq!(
            ttl(&[("cache-control", "max-age=600")]),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            ttl(&[("cache-control", "max-age=0")]),
            Err(NotStored::CacheControl)
        );
        assert_eq!(ttl(&[("vary", "*")]), Err(NotStored::VaryStar));
    }

    #[test]
    fn only_what_a_route_or_the_response_asks_for_is_stored_by_default() {
        let statuses = [StatusCode::OK];
        let ttl = |pairs: &[(&str, &str)], route: Option<u64>| {
            let mut extensions = http::Extensions::new();
            if let Some(seconds) = route {
                extensions.insert(crate::RouteTtl(Duration::from_secs(seconds)));
            }
            response_freshness(
                StatusCode::OK,
                &headers(pairs),
                &extensions,
                &statuses,
                Duration::from_secs(60),
                false,
                now(),
            )
            .map(|lifetime| lifetime.fresh_for)
        };
        assert_eq!(ttl(&[], None), Err(NotStored::NotAsked));
        assert_eq!(ttl(&[], Some(30)), Ok(Duration::from_secs(30)));
        assert_eq!(
            ttl(&[], Some(600)),
            Ok(Duration::from_secs(60)),
            "the cache's TTL caps"
        );
        assert_eq!(
            ttl(&[("cache-control", "public, max-age=20")], None),
            Ok(Duration::from_secs(20))
        );
        assert_eq!(
            ttl(&[("cache-control", "max-age=5")], Some(30)),
            Ok(Duration::from_secs(5))
        );
        for refused in ["no-store", "private", "no-cache"] {
            assert_eq!(
                ttl(&[("cache-control", refused)], Some(30)),
                Err(NotStored::CacheControl),
                "{refused}: a route's opt-in never overrides the response"
            );
        }
    }

    #[test]
    fn stale_windows_come_from_the_response_or_the_default() {
        let default = Duration::from_secs(300);
        let windows = |pairs: &[(&str, &str)]| stale_windows(&headers(pairs), default);
        assert_eq!(
            windows(&[("cache-control", "max-age=60")]),
            StaleWindows {
                if_error: default,
                while_revalidate: Duration::ZERO
            }
        );
        assert_eq!(
            windows(&[(
                "cache-control",
                "max-age=60, stale-if-error=30, stale-while-revalidate=10"
            )]),
            StaleWindows {
                if_error: Duration::from_secs(30),
                while_revalidate: Duration::from_secs(10)
            }
        );
        for forbids in [
            "max-age=60, must-revalidate",
            "max-age=60, proxy-revalidate",
            "s-maxage=60, stale-if-error=30",
        ] {
            assert_eq!(
                windows(&[("cache-control", forbids)]),
                StaleWindows::default(),
                "{forbids}"
            );
        }
    }

    #[test]
    fn vary_names_are_normalised() {
        let names = vary_names(&headers(&[
            ("vary", "Accept-Language, accept"),
            ("vary", "accept"),
        ]))
        .unwrap();
        let names: Vec<&str> = names.iter().map(HeaderName::as_str).collect();
        assert_eq!(names, ["accept", "accept-language"]);
        assert!(vary_names(&headers(&[("vary", "accept, *")])).is_none());
    }
}
