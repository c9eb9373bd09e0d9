//! What may be stored and under which key (RFC 9111, as a shared cache): the request's
//! directives and key here, a response's freshness in `freshness.rs`, conditional requests and
//! `304`s in `conditions.rs`.

mod conditions;
mod freshness;

pub(crate) use conditions::{
    is_error, push_default_key, updates_stored, variant, vary_names, Conditions,
    NOT_MODIFIED_FIELDS,
};
pub(crate) use freshness::{
    http_date, response_freshness, stale_windows, Exchange, Lifetime, StaleWindows,
    CACHEABLE_STATUSES,
};

use std::time::Duration;

use http::header::{
    AUTHORIZATION, CACHE_CONTROL, COOKIE, HOST, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    IF_RANGE, IF_UNMODIFIED_SINCE, PRAGMA, RANGE,
};
use http::{HeaderMap, HeaderName, Method};

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
    /// The same, for a failure (a 5xx, an error the service attached): nothing to remember of
    /// the key, as a failure's response may lack what its route adds to a success.
    NotAskedFailure,
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, StatusCode};
    use std::time::SystemTime;

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
