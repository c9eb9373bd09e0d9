//! The cache against RFC 9111 (HTTP Caching) and the parts of RFC 9110 it relies on; each test
//! is named after the section it checks.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ballast_cache::{CacheLayer, ResponseCache, RouteTtl};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, Layer, Service, ServiceExt};

/// What the origin saw: each request's method, path and headers.
type Seen = Arc<Mutex<Vec<(Method, String, HeaderMap)>>>;

/// An origin whose answer `answer` builds from the request; every request is recorded.
fn origin<F>(
    answer: F,
) -> (
    impl Service<
            Request<String>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
            Future = impl Send,
        > + Clone
        + Send
        + 'static,
    Seen,
)
where
    F: Fn(&Request<String>, usize) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    let service = service_fn(move |request: Request<String>| {
        let answer = answer.clone();
        let record = Arc::clone(&record);
        async move {
            let n = {
                let mut seen = record.lock().unwrap();
                seen.push((
                    request.method().clone(),
                    request.uri().path().to_owned(),
                    request.headers().clone(),
                ));
                seen.len()
            };
            Ok::<_, Infallible>(answer(&request, n))
        }
    });
    (service, seen)
}

fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response<Full<Bytes>> {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

fn cache() -> ResponseCache {
    ResponseCache::builder()
        .ttl(Duration::from_secs(3600))
        .build()
        .unwrap()
}

fn request(method: Method, path: &str, headers: &[(&str, &str)]) -> Request<String> {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://example.com{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(String::new()).unwrap()
}

/// Sends a request through `service`; the status, headers and body.
async fn send<S>(service: &S, request: Request<String>) -> (StatusCode, HeaderMap, String)
where
    S: Service<Request<String>, Error = Infallible> + Clone,
    S::Response: IntoParts,
{
    let response = service.clone().oneshot(request).await.unwrap();
    response.into_parts_text().await
}

/// Reads a response of any body type whole.
trait IntoParts {
    fn into_parts_text(self) -> impl std::future::Future<Output = (StatusCode, HeaderMap, String)>;
}

impl<B> IntoParts for Response<B>
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    async fn into_parts_text(self) -> (StatusCode, HeaderMap, String) {
        let (parts, body) = self.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }
}

async fn get<S>(service: &S, path: &str) -> (StatusCode, HeaderMap, String)
where
    S: Service<Request<String>, Error = Infallible> + Clone,
    S::Response: IntoParts,
{
    send(service, request(Method::GET, path, &[])).await
}

fn http_date(at: SystemTime) -> String {
    httpdate::fmt_http_date(at)
}

/// §4.2.1: `s-maxage`, then `max-age`, then `Expires` minus `Date` decide; a response with
/// neither is not stored unless its route gives it a lifetime.
#[tokio::test]
async fn rfc9111_4_2_1_freshness_lifetime_comes_from_the_response() {
    let now = SystemTime::now();
    let in_a_minute = http_date(now + Duration::from_secs(60));
    let a_minute_ago = http_date(now - Duration::from_secs(60));
    let date = http_date(now);
    // (path, the response's headers, whether it is stored)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, bool);
    let cases: Vec<Case<'_>> = vec![
        (
            "/s-maxage",
            vec![("cache-control", "max-age=0, s-maxage=60".into())],
            true,
        ),
        (
            "/max-age",
            vec![
                ("cache-control", "max-age=60".into()),
                ("expires", a_minute_ago.clone()),
            ],
            true,
        ),
        (
            "/expires",
            vec![("date", date.clone()), ("expires", in_a_minute.clone())],
            true,
        ),
        (
            "/expires-past",
            vec![("date", date.clone()), ("expires", a_minute_ago.clone())],
            false,
        ),
        // §5.3: an invalid Expires, "0" above all, is already expired.
        ("/expires-0", vec![("expires", "0".into())], false),
        ("/nothing", vec![], false),
        (
            "/max-age-0",
            vec![("cache-control", "max-age=0".into())],
            false,
        ),
    ];
    for (path, headers, stored) in cases {
        let headers = headers.clone();
        let (upstream, seen) = origin(move |_, _| {
            let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            response(200, &pairs, "body")
        });
        let service = CacheLayer::new(cache()).layer(upstream);
        for _ in 0..3 {
            assert_eq!(get(&service, path).await.0, StatusCode::OK);
        }
        let calls = seen.lock().unwrap().len();
        assert_eq!(
            calls,
            if stored { 1 } else { 3 },
            "{path}: the origin ran {calls} times"
        );
    }
}

/// RFC 9110 §5.6.7: a recipient accepts all three HTTP-date formats.
#[tokio::test]
async fn rfc9110_5_6_7_expires_in_every_date_format() {
    for expires in [
        "Sun, 06 Nov 2039 08:49:37 GMT",
        "Sunday, 06-Nov-39 08:49:37 GMT",
        "Sun Nov  6 08:49:37 2039",
    ] {
        let (upstream, seen) = origin(move |_, _| response(200, &[("expires", expires)], "body"));
        let service = CacheLayer::new(cache()).layer(upstream);
        for _ in 0..2 {
            get(&service, "/dated").await;
        }
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "Expires: {expires} was not understood"
        );
    }
}

/// §4.2.1: directives given twice with different values, or malformed, make the response stale.
#[tokio::test]
async fn rfc9111_4_2_1_conflicting_or_malformed_directives_are_stale() {
    for fields in [
        vec!["max-age=60", "max-age=10"],
        vec!["max-age=60, max-age=10"],
        vec!["max-age=abc"],
        vec!["max-age=-5"],
    ] {
        let answer_fields = fields.clone();
        let (upstream, seen) = origin(move |_, _| {
            let pairs: Vec<(&str, &str)> = answer_fields
                .iter()
                .map(|v| ("cache-control", *v))
                .collect();
            response(200, &pairs, "body")
        });
        let service = CacheLayer::new(cache()).layer(upstream);
        for _ in 0..2 {
            get(&service, "/conflict").await;
        }
        assert_eq!(
            seen.lock().unwrap().len(),
            2,
            "{fields:?} was served from the cache"
        );
    }
}

/// §4.2.3: the current age includes the `Age` the response arrived with; a hit sends that age plus
/// the time stored; the request that stored it forwards the origin's `Age` untouched.
#[tokio::test]
async fn rfc9111_4_2_3_age_is_carried_not_reset() {
    let (upstream, seen) = origin(|_, _| {
        response(
            200,
            &[("cache-control", "max-age=600"), ("age", "100")],
            "body",
        )
    });
    let service = CacheLayer::new(cache()).layer(upstream);
    let (_, miss, _) = get(&service, "/aged").await;
    assert_eq!(miss["age"], "100", "the miss forwards the origin's Age");
    let (_, hit, _) = get(&service, "/aged").await;
    let age: u64 = hit["age"].to_str().unwrap().parse().unwrap();
    assert!(
        (100..=102).contains(&age),
        "a hit's Age is the received age plus the time stored: {age}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);

    // Already older than its lifetime: never served as fresh.
    let (old, seen) = origin(|_, _| {
        response(
            200,
            &[("cache-control", "max-age=3600"), ("age", "7200")],
            "body",
        )
    });
    let service = CacheLayer::new(cache()).layer(old);
    for _ in 0..2 {
        get(&service, "/old").await;
    }
    assert_eq!(seen.lock().unwrap().len(), 2);
}

/// §5.2.2.7, §5.2.2.5: `private` (with or without field names) and `no-store` keep a response out
/// of a shared cache, even when its route asked for caching.
#[tokio::test]
async fn rfc9111_5_2_2_private_and_no_store_are_never_stored() {
    for directive in [
        "private",
        "private=\"set-cookie\"",
        "no-store",
        "max-age=60, private",
    ] {
        let (upstream, seen) = origin(move |_, _| {
            let mut response = response(200, &[("cache-control", directive)], "body");
            response
                .extensions_mut()
                .insert(RouteTtl(Duration::from_secs(60)));
            response
        });
        let service = CacheLayer::new(cache()).layer(upstream);
        for _ in 0..2 {
            get(&service, "/private").await;
        }
        assert_eq!(seen.lock().unwrap().len(), 2, "{directive} was stored");
    }
}

/// §5.2.2.4 and §4.3: `no-cache` is stored but validated before every use; the origin's `304`
/// keeps the stored body (§4.3.4 updates its headers). A `max-age` beside it changes nothing: the
/// response is still never used unchecked (it was served stale while revalidating).
#[tokio::test]
async fn rfc9111_5_2_2_4_no_cache_is_validated_before_every_use() {
    for cache_control in ["no-cache", "no-cache, max-age=3600"] {
        no_cache_is_validated(cache_control).await;
    }
}

async fn no_cache_is_validated(cache_control: &'static str) {
    let (upstream, seen) = origin(move |request: &Request<String>, n| {
        if request
            .headers()
            .get("if-none-match")
            .is_some_and(|tag| tag == "\"v1\"")
        {
            return response(
                304,
                &[("etag", "\"v1\""), ("x-version", &n.to_string())],
                "",
            );
        }
        response(
            200,
            &[
                ("cache-control", cache_control),
                ("etag", "\"v1\""),
                ("x-version", "1"),
            ],
            "the body",
        )
    });
    let service = CacheLayer::new(cache())
        .x_cache_header(true)
        .layer(upstream);
    let (status, _, body) = get(&service, "/validated").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "the body"));
    let (status, headers, body) = get(&service, "/validated").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "the body"),
        "served from the cache after a 304"
    );
    assert_eq!(headers["x-cache"], "REVALIDATED", "{cache_control}");
    assert_eq!(
        headers["x-version"], "2",
        "the 304's fields update the stored response"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "validated once per use: {cache_control}");
    assert_eq!(seen[1].2["if-none-match"], "\"v1\"");
}

/// §4.3.1–§4.3.4: a stale response with a validator is revalidated with a conditional request;
/// on `304` it is fresh again (its new lifetime from the `304`) and served without its body being
/// sent again.
#[tokio::test]
async fn rfc9111_4_3_stale_responses_are_revalidated_not_refetched() {
    let (upstream, seen) = origin(|request: &Request<String>, _| {
        let modified = "Sun, 06 Nov 1994 08:49:37 GMT";
        if request.headers().contains_key("if-modified-since")
            || request.headers().contains_key("if-none-match")
        {
            return response(
                304,
                &[("cache-control", "max-age=60"), ("etag", "\"v1\"")],
                "",
            );
        }
        response(
            200,
            &[
                ("cache-control", "max-age=1"),
                ("etag", "\"v1\""),
                ("last-modified", modified),
            ],
            "big body",
        )
    });
    let service = CacheLayer::new(cache())
        .x_cache_header(true)
        .layer(upstream);
    get(&service, "/stale").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, headers, body) = get(&service, "/stale").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "big body"));
    assert_eq!(headers["x-cache"], "REVALIDATED");
    assert_eq!(headers["cache-control"], "max-age=60");
    let (_, headers, _) = get(&service, "/stale").await;
    assert_eq!(
        headers["x-cache"], "HIT",
        "fresh again for the 304's max-age"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].2["if-none-match"], "\"v1\"");
    assert_eq!(
        seen[1].2["if-modified-since"],
        "Sun, 06 Nov 1994 08:49:37 GMT"
    );
}

/// §4.3.2, RFC 9110 §13.1.2/§13.1.3/§15.4.5: a fresh stored response answers a conditional
/// request with `304 Not Modified`, its validators and no body.
#[tokio::test]
async fn rfc9111_4_3_2_conditional_requests_get_304_from_the_cache() {
    let (upstream, seen) = origin(|_, _| {
        response(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("etag", "\"v1\""),
                ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
                ("content-type", "text/plain"),
            ],
            "body",
        )
    });
    let service = CacheLayer::new(cache()).layer(upstream);
    get(&service, "/conditional").await;
    for (name, value, status) in [
        ("if-none-match", "\"v1\"", 304),
        ("if-none-match", "W/\"v1\"", 304),
        ("if-none-match", "\"v0\", \"v1\"", 304),
        ("if-none-match", "*", 304),
        ("if-none-match", "\"v2\"", 200),
        ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT", 304),
        ("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT", 200),
        ("if-modified-since", "not a date", 200),
    ] {
        let (got, headers, body) = send(
            &service,
            request(Method::GET, "/conditional", &[(name, value)]),
        )
        .await;
        assert_eq!(got.as_u16(), status, "{name}: {value}");
        if status == 304 {
            assert!(body.is_empty());
            assert_eq!(headers["etag"], "\"v1\"");
            assert_eq!(headers["cache-control"], "max-age=60");
            assert!(headers.contains_key("age"));
            assert!(!headers.contains_key("content-type"));
        } else {
            assert_eq!(body, "body");
        }
    }
    assert_eq!(seen.lock().unwrap().len(), 1);
}

/// The defect found by hand: a conditional first request for a cold key must not switch caching
/// off for the key. The cache asks the origin for the whole response, stores it, and answers the
/// condition itself.
#[tokio::test]
async fn rfc9111_4_3_2_a_conditional_first_request_does_not_disable_caching() {
    let (upstream, seen) = origin(|request: &Request<String>, _| {
        if request
            .headers()
            .get("if-none-match")
            .is_some_and(|tag| tag == "\"v1\"")
        {
            return response(304, &[("etag", "\"v1\"")], "");
        }
        response(
            200,
            &[("cache-control", "max-age=60"), ("etag", "\"v1\"")],
            "body",
        )
    });
    let service = CacheLayer::new(cache()).layer(upstream);
    let (status, _, _) = send(
        &service,
        request(Method::GET, "/cold", &[("if-none-match", "\"v1\"")]),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    for _ in 0..3 {
        let (status, _, body) = get(&service, "/cold").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "body"));
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "requests 2-4 were served from the cache");
    assert!(
        !seen[0].2.contains_key("if-none-match"),
        "the origin was asked for the whole response"
    );
}

/// RFC 9110 §14.2, §15.3.7: a `Range` request neither uses nor marks the cache, and a `206` is
/// never stored.
#[tokio::test]
async fn rfc9110_14_2_range_requests_neither_use_nor_mark_the_cache() {
    let (upstream, seen) = origin(|request: &Request<String>, _| {
        if request.headers().contains_key("range") {
            return response(
                206,
                &[
                    ("cache-control", "max-age=60"),
                    ("content-range", "bytes 0-1/4"),
                ],
                "bo",
            );
        }
        response(200, &[("cache-control", "max-age=60")], "body")
    });
    let service = CacheLayer::new(cache()).layer(upstream);
    let (status, _, _) = send(
        &service,
        request(Method::GET, "/ranged", &[("range", "bytes=0-1")]),
    )
    .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    for _ in 0..2 {
        assert_eq!(get(&service, "/ranged").await.2, "body");
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "the 206 was not stored and did not mark the key"
    );
}

/// §4.4: a successful unsafe request invalidates its target and the same-origin `Location` and
/// `Content-Location`; a failed one, or another host's location, invalidates nothing.
#[tokio::test]
async fn rfc9111_4_4_unsafe_methods_invalidate() {
    let (upstream, seen) = origin(|request: &Request<String>, _| {
        match (request.method().as_str(), request.uri().path()) {
            ("POST", "/items") => response(201, &[("location", "/items/7")], ""),
            ("PUT", "/items/8") => response(
                200,
                &[("content-location", "http://other.example/items/9")],
                "",
            ),
            ("DELETE", _) => response(500, &[], ""),
            _ => response(200, &[("cache-control", "max-age=60")], "stored"),
        }
    });
    let cache = cache();
    let service = CacheLayer::new(cache.clone()).layer(upstream);
    let gets = |seen: &Seen, path: &str| {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(m, p, _)| m == Method::GET && p == path)
            .count()
    };
    for path in ["/items", "/items/7", "/items/8", "/items/9"] {
        get(&service, path).await;
        get(&service, path).await;
        assert_eq!(gets(&seen, path), 1, "{path} is cached");
    }
    send(&service, request(Method::POST, "/items", &[])).await;
    send(&service, request(Method::PUT, "/items/8", &[])).await;
    send(&service, request(Method::DELETE, "/items/9", &[])).await;
    for path in ["/items", "/items/7", "/items/8", "/items/9"] {
        get(&service, path).await;
    }
    assert_eq!(gets(&seen, "/items"), 2, "the POST's target");
    assert_eq!(gets(&seen, "/items/7"), 2, "the POST's Location");
    assert_eq!(gets(&seen, "/items/8"), 2, "the PUT's target");
    assert_eq!(
        gets(&seen, "/items/9"),
        1,
        "another host's Content-Location, and a failed DELETE"
    );
}

/// RFC 9110 §15.1: the heuristically cacheable statuses are stored with explicit freshness; other
/// statuses, 206 and the 5xx other than 501 are not.
#[tokio::test]
async fn rfc9110_15_1_cacheable_statuses() {
    for (status, stored) in [
        (200, true),
        (203, true),
        (204, true),
        (301, true),
        (404, true),
        (410, true),
        (501, true),
        (302, false),
        (400, false),
        (500, false),
        (503, false),
    ] {
        let (upstream, seen) =
            origin(move |_, _| response(status, &[("cache-control", "max-age=60")], ""));
        let service = CacheLayer::new(cache()).layer(upstream);
        for _ in 0..2 {
            get(&service, "/status").await;
        }
        let calls = seen.lock().unwrap().len();
        assert_eq!(calls, if stored { 1 } else { 2 }, "status {status}");
    }
}

/// §4.3.4 with a route's policy: a response whose lifetime came from its route (no explicit
/// freshness) keeps that lifetime after a `304`, rather than falling back to the cache's TTL or to
/// none.
#[tokio::test]
async fn rfc9111_4_3_4_a_validated_response_keeps_its_routes_lifetime() {
    let (upstream, seen) = origin(|request: &Request<String>, _| {
        let mut response = if request.headers().contains_key("if-none-match") {
            response(304, &[("etag", "\"v1\"")], "")
        } else {
            response(200, &[("etag", "\"v1\"")], "body")
        };
        response
            .extensions_mut()
            .insert(RouteTtl(Duration::from_secs(1)));
        response
    });
    let service = CacheLayer::new(cache())
        .x_cache_header(true)
        .layer(upstream);
    get(&service, "/routed").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, headers, body) = get(&service, "/routed").await;
    assert_eq!(
        (headers["x-cache"].to_str().unwrap(), body.as_str()),
        ("REVALIDATED", "body")
    );
    let (_, headers, _) = get(&service, "/routed").await;
    assert_eq!(
        headers["x-cache"], "HIT",
        "fresh again for the route's second"
    );
    assert_eq!(seen.lock().unwrap().len(), 2);
}

/// RFC 9110 §6.6.1 and §8.8.3: a hit tells the truth downstream. A response stored without a
/// `Date` gets the time it arrived, so a hit's `Date` plus its `Age` is now (the server would
/// otherwise add a `Date` of now beside an `Age` of seconds); one without a validator gets a
/// strong `ETag` of its body, the same on every hit and for the same body stored again, and a
/// client's `If-None-Match` with it is answered `304` by the cache. The tag is the cache's own:
/// the service is never asked to validate it.
#[tokio::test]
async fn rfc9110_8_8_3_a_hit_keeps_its_date_and_carries_a_strong_etag() {
    let (upstream, seen) = origin(|_, _| response(200, &[("cache-control", "max-age=2")], "body"));
    let service = CacheLayer::new(cache())
        .x_cache_header(true)
        .layer(upstream);
    let (_, stored, _) = get(&service, "/dated").await;
    let date = stored["date"].to_str().unwrap().to_owned();
    let etag = stored["etag"].to_str().unwrap().to_owned();
    assert!(
        etag.starts_with('"') && !etag.starts_with("W/"),
        "strong: {etag}"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, hit, body) = get(&service, "/dated").await;
    assert_eq!(
        (hit["x-cache"].to_str().unwrap(), body.as_str()),
        ("HIT", "body")
    );
    assert_eq!(
        hit["date"].to_str().unwrap(),
        date,
        "the stored Date, not a new one"
    );
    assert_eq!(hit["etag"].to_str().unwrap(), etag);
    let age: u64 = hit["age"].to_str().unwrap().parse().unwrap();
    let dated = httpdate::parse_http_date(&date).unwrap();
    let now = SystemTime::now();
    let said = dated + Duration::from_secs(age);
    let off = now.duration_since(said).unwrap_or_else(|e| e.duration());
    assert!(
        off <= Duration::from_secs(1),
        "Date + Age is now: {date} + {age} s"
    );

    let (status, not_modified, body) = send(
        &service,
        request(Method::GET, "/dated", &[("if-none-match", &etag)]),
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::NOT_MODIFIED, ""));
    assert_eq!(not_modified["etag"].to_str().unwrap(), etag);
    // Stale past its max-age: fetched again, without the cache's tag as a condition.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, again, _) = get(&service, "/dated").await;
    assert_eq!(
        again["etag"].to_str().unwrap(),
        etag,
        "the same body, the same tag"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(!seen[1].2.contains_key("if-none-match"), "{:?}", seen[1].2);
}
