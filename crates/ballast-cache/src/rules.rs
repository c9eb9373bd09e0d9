//! What may be stored and under which key (RFC 9111, as a shared cache).

use std::time::Duration;

use ballast_core::http::attached;
use http::header::{AUTHORIZATION, CACHE_CONTROL, COOKIE, HOST, PRAGMA, SET_COOKIE, VARY};
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
            let seconds = || argument.and_then(|argument| argument.parse::<u64>().ok());
            if name.eq_ignore_ascii_case("no-store") {
                directives.no_store = true;
            } else if name.eq_ignore_ascii_case("no-cache") {
                directives.no_cache = true;
            } else if name.eq_ignore_ascii_case("private") {
                directives.private = true;
            } else if name.eq_ignore_ascii_case("max-age") {
                directives.max_age = Some(seconds().unwrap_or(0));
            } else if name.eq_ignore_ascii_case("s-maxage") {
                directives.s_maxage = Some(seconds().unwrap_or(0));
            } else if name.eq_ignore_ascii_case("must-revalidate") {
                directives.must_revalidate = true;
            } else if name.eq_ignore_ascii_case("proxy-revalidate") {
                directives.proxy_revalidate = true;
            } else if name.eq_ignore_ascii_case("stale-if-error") {
                directives.stale_if_error = Some(seconds().unwrap_or(0));
            } else if name.eq_ignore_ascii_case("stale-while-revalidate") {
                directives.stale_while_revalidate = Some(seconds().unwrap_or(0));
            }
        }
    }
    directives
}

/// Whether a request must bypass the cache entirely (neither served from it nor stored).
pub(crate) fn request_bypasses(
    method: &Method,
    headers: &HeaderMap,
    credentialed_allowed: bool,
) -> bool {
    if method != Method::GET && method != Method::HEAD {
        return true;
    }
    if !credentialed_allowed
        && (headers.contains_key(AUTHORIZATION) || headers.contains_key(COOKIE))
    {
        return true;
    }
    let request = directives(headers);
    let pragma_no_cache = headers
        .get_all(PRAGMA)
        .iter()
        .any(|value| value.as_bytes().eq_ignore_ascii_case(b"no-cache"));
    request.no_store || request.no_cache || pragma_no_cache
}

/// The TTL to store a response for, or why it must not be stored.
pub(crate) fn response_ttl(
    status: StatusCode,
    headers: &HeaderMap,
    extensions: &http::Extensions,
    statuses: &[StatusCode],
    default_ttl: Duration,
    store_unmarked: bool,
) -> Result<Duration, NotStored> {
    if status.is_server_error() {
        return Err(NotStored::Status5xx);
    }
    if !statuses.contains(&status) {
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
    if directives.no_store || directives.no_cache || directives.private {
        return Err(NotStored::CacheControl);
    }
    // A shared cache obeys s-maxage over max-age (RFC 9111, 5.2.2.10). The route's own TTL
    // (its opt-in) and the cache's TTL are caps on it.
    let explicit = directives
        .s_maxage
        .or(directives.max_age)
        .map(Duration::from_secs);
    let route = extensions.get::<crate::RouteTtl>().map(|route| route.0);
    let ttl = match (route, explicit) {
        (Some(route), Some(explicit)) => route.min(explicit),
        (Some(ttl), None) | (None, Some(ttl)) => ttl,
        (None, None) if store_unmarked => default_ttl,
        (None, None) => return Err(NotStored::NotAsked),
    }
    .min(default_ttl);
    if ttl.is_zero() {
        return Err(NotStored::CacheControl);
    }
    Ok(ttl)
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
/// forbids serving it stale: `must-revalidate`, `proxy-revalidate`, or `s-maxage` (which implies
/// `proxy-revalidate` for a shared cache, RFC 9111 §5.2.2.10).
pub(crate) fn stale_windows(headers: &HeaderMap, default_if_error: Duration) -> StaleWindows {
    let directives = directives(headers);
    if directives.must_revalidate || directives.proxy_revalidate || directives.s_maxage.is_some() {
        return StaleWindows::default();
    }
    StaleWindows {
        if_error: directives
            .stale_if_error
            .map_or(default_if_error, Duration::from_secs),
        while_revalidate: Duration::from_secs(directives.stale_while_revalidate.unwrap_or(0)),
    }
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
) {
    let host = parts
        .headers
        .get(HOST)
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
    // Most requests carry none of the keyed headers: one pass over the request's few names
    // finds that out cheaper than a lookup per keyed name.
    if !parts.headers.keys().any(|name| keyed.contains(name)) {
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
            response_ttl(
                ok,
                &headers(pairs),
                &none,
                &statuses,
                Duration::from_secs(60),
                true,
            )
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
            response_ttl(
                StatusCode::OK,
                &headers(pairs),
                &extensions,
                &statuses,
                Duration::from_secs(60),
                false,
            )
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
