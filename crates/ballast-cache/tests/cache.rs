//! The cache's rules, bounds and stats, through axum and plain Tower services.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::Router;
use ballast_cache::{CacheLayer, Eviction, ResponseCache};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use tower::{service_fn, Layer, ServiceExt};

fn cache(entries: u64, bytes: u64) -> ResponseCache {
    ResponseCache::builder()
        .store_unmarked(true)
        .max_entries(entries)
        .max_bytes(bytes)
        .max_entry_bytes(bytes.min(1 << 20))
        .build()
        .unwrap()
}

fn request(method: Method, path: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::empty()).unwrap()
}

async fn text(app: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

/// A router whose handlers count their calls; `/r/{case}` answers in the way `case` names.
fn app(cache: &ResponseCache, calls: &Arc<AtomicUsize>) -> Router {
    let counted = move |calls: Arc<AtomicUsize>| {
        calls.fetch_add(1, Ordering::SeqCst);
    };
    let c1 = Arc::clone(calls);
    let c2 = Arc::clone(calls);
    let c3 = Arc::clone(calls);
    let c4 = Arc::clone(calls);
    Router::new()
        .route(
            "/r/{case}",
            get(move |Path(case): Path<String>| {
                let calls = Arc::clone(&c1);
                async move {
                    counted(calls);
                    let mut response = Response::new(Body::from(format!("case {case}")));
                    let headers = response.headers_mut();
                    match case.as_str() {
                        "set-cookie" => {
                            headers.insert("set-cookie", "session=1".parse().unwrap());
                        }
                        "private" => {
                            headers.insert("cache-control", "private, max-age=60".parse().unwrap());
                        }
                        "no-store" => {
                            headers.insert("cache-control", "no-store".parse().unwrap());
                        }
                        "no-cache" => {
                            headers.insert("cache-control", "no-cache".parse().unwrap());
                        }
                        "vary-star" => {
                            headers.insert("vary", "*".parse().unwrap());
                        }
                        "max-age-0" => {
                            headers.insert("cache-control", "max-age=0".parse().unwrap());
                        }
                        "500" => *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR,
                        "404" => *response.status_mut() = StatusCode::NOT_FOUND,
                        "failure" => {
                            use axum::response::IntoResponse;
                            let error = ballast_error::Error::from(
                                ballast_core::sqlstate::failure("53300"),
                            );
                            return error.into_response();
                        }
                        _ => {}
                    }
                    response
                }
            }),
        )
        .route(
            "/lang",
            get(move |headers: HeaderMap| {
                let calls = Arc::clone(&c2);
                async move {
                    counted(calls);
                    let lang = headers
                        .get("accept-language")
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or("none")
                        .to_owned();
                    ([("vary", "Accept-Language")], format!("hello in {lang}"))
                }
            }),
        )
        .route(
            "/reflect",
            get(move |headers: HeaderMap| {
                let calls = Arc::clone(&c3);
                async move {
                    counted(calls);
                    let host = headers
                        .get("x-forwarded-host")
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or("example.com")
                        .to_owned();
                    format!("<script src=\"https://{host}/app.js\"></script>")
                }
            }),
        )
        .route(
            "/items",
            get(move || {
                let calls = Arc::clone(&c4);
                async move {
                    counted(calls);
                    "[]"
                }
            }),
        )
        .route("/items", post(|| async { StatusCode::CREATED }))
        .layer(CacheLayer::new(cache.clone()).x_cache_header(true))
}

#[tokio::test]
async fn what_must_never_be_stored_is_not() {
    let cases: [(Request<Body>, &str); 12] = [
        (request(Method::GET, "/r/set-cookie", &[]), "set-cookie"),
        (request(Method::GET, "/r/private", &[]), "private"),
        (request(Method::GET, "/r/no-store", &[]), "no-store"),
        (request(Method::GET, "/r/no-cache", &[]), "no-cache"),
        (request(Method::GET, "/r/vary-star", &[]), "vary-star"),
        (request(Method::GET, "/r/max-age-0", &[]), "max-age=0"),
        (request(Method::GET, "/r/500", &[]), "5xx"),
        (
            request(Method::GET, "/r/failure", &[]),
            "the error layer's 503",
        ),
        (
            request(Method::GET, "/r/404", &[]),
            "a status outside the set",
        ),
        (
            request(Method::GET, "/r/plain", &[("authorization", "Bearer x")]),
            "Authorization",
        ),
        (
            request(Method::GET, "/r/plain", &[("cookie", "session=1")]),
            "Cookie",
        ),
        (request(Method::POST, "/items", &[]), "POST"),
    ];
    for (sample, name) in cases {
        let cache = cache(100, 1 << 20);
        let calls = Arc::new(AtomicUsize::new(0));
        let app = app(&cache, &calls);
        let (parts, _) = sample.into_parts();
        let again = || {
            let mut request = Request::new(Body::empty());
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = parts.uri.clone();
            *request.headers_mut() = parts.headers.clone();
            request
        };
        text(&app, again()).await;
        text(&app, again()).await;
        let stats = cache.stats().await;
        // At most a "hit-for-pass" note, never a response.
        assert!(stats.entries <= 1, "{name}: stored");
        assert_eq!(stats.inserts, 0, "{name}: stored");
        assert_eq!(stats.hits, 0, "{name}: served from the cache");
        if parts.method == Method::GET {
            assert_eq!(calls.load(Ordering::SeqCst), 2, "{name}");
        }
    }
}

#[tokio::test]
async fn a_response_varying_on_language_is_never_served_to_another_language() {
    let cache = cache(100, 1 << 20);
    let calls = Arc::new(AtomicUsize::new(0));
    let app = app(&cache, &calls);
    let ask = |lang: &str| request(Method::GET, "/lang", &[("accept-language", lang)]);
    assert_eq!(text(&app, ask("en")).await.2, "hello in en");
    assert_eq!(text(&app, ask("fr")).await.2, "hello in fr");
    let (_, headers, body) = text(&app, ask("en")).await;
    assert_eq!(body, "hello in en");
    assert_eq!(headers["x-cache"], "HIT");
    let (_, headers, body) = text(&app, ask("fr")).await;
    assert_eq!(body, "hello in fr");
    assert_eq!(headers["x-cache"], "HIT");
    assert_eq!(text(&app, ask("de")).await.2, "hello in de");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_reflected_forwarding_header_never_reaches_another_client() {
    let cache = cache(100, 1 << 20);
    let calls = Arc::new(AtomicUsize::new(0));
    let app = app(&cache, &calls);
    let evil = text(
        &app,
        request(
            Method::GET,
            "/reflect",
            &[("x-forwarded-host", "evil.example")],
        ),
    )
    .await
    .2;
    assert!(evil.contains("evil.example"));
    for _ in 0..3 {
        let clean = text(&app, request(Method::GET, "/reflect", &[])).await.2;
        assert!(!clean.contains("evil"), "poisoned: {clean}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one per distinct header value"
    );
}

#[tokio::test]
async fn hits_carry_age_and_head_is_answered_from_get() {
    let cache = cache(100, 1 << 20);
    let calls = Arc::new(AtomicUsize::new(0));
    let app = app(&cache, &calls);
    let (_, headers, _) = text(&app, request(Method::HEAD, "/items", &[])).await;
    assert_eq!(headers["x-cache"], "MISS");
    assert_eq!(cache.stats().await.entries, 0, "a HEAD stores nothing");
    let (_, headers, _) = text(&app, request(Method::GET, "/items", &[])).await;
    assert_eq!(headers["x-cache"], "MISS");
    let (status, headers, body) = text(&app, request(Method::HEAD, "/items", &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-cache"], "HIT");
    assert_eq!(headers["content-length"], "2");
    assert!(body.is_empty());
    let (_, headers, body) = text(&app, request(Method::GET, "/items", &[])).await;
    assert_eq!(body, "[]");
    assert_eq!(headers["age"], "0");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A plain service answering `size` bytes for every path, counting calls.
fn sized(
    size: usize,
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<String>,
    Response = Response<http_body_util::Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    let body = Bytes::from(vec![b'x'; size]);
    service_fn(move |_request: Request<String>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let body = body.clone();
        async move { Ok::<_, Infallible>(Response::new(http_body_util::Full::new(body))) }
    })
}

fn get_request(path: &str) -> Request<String> {
    Request::get(format!("http://example.com{path}"))
        .body(String::new())
        .unwrap()
}

#[tokio::test]
async fn both_bounds_hold_under_twenty_thousand_keys() {
    let max_bytes = 8 * 1024 * 1024;
    let cache = ResponseCache::builder()
        .store_unmarked(true)
        .max_entries(1_000)
        .max_bytes(max_bytes)
        .max_entry_bytes(128 * 1024)
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let service = CacheLayer::new(cache.clone()).layer(sized(64 * 1024, Arc::clone(&calls)));
    for i in 0..20_000 {
        service
            .clone()
            .oneshot(get_request(&format!("/k/{i}")))
            .await
            .unwrap();
    }
    let stats = cache.stats().await;
    println!("scenario 19 (bounds, 64 KiB bodies): {stats:?}");
    assert!(stats.entries <= 1_000);
    assert!(stats.bytes <= max_bytes, "{} bytes", stats.bytes);
    assert!(
        stats.entries >= 100,
        "the cache was used: {}",
        stats.entries
    );
    assert_eq!(stats.inserts, 20_000);
    assert_eq!(stats.evictions, 20_000 - stats.entries);

    // Tiny bodies: now the entry bound is the one that binds.
    let cache = ResponseCache::builder()
        .store_unmarked(true)
        .max_entries(1_000)
        .max_bytes(max_bytes)
        .build()
        .unwrap();
    let service = CacheLayer::new(cache.clone()).layer(sized(16, Arc::clone(&calls)));
    for i in 0..20_000 {
        service
            .clone()
            .oneshot(get_request(&format!("/k/{i}")))
            .await
            .unwrap();
    }
    let stats = cache.stats().await;
    println!("scenario 19 (bounds, 16-byte bodies): {stats:?}");
    assert!(stats.entries <= 1_000);
    assert!(stats.entries >= 900, "{}", stats.entries);
    assert!(stats.bytes <= max_bytes);
}

#[tokio::test]
async fn recently_used_keys_survive_a_scan() {
    let cache = ResponseCache::builder()
        .store_unmarked(true)
        .max_entries(10)
        .max_bytes(10 * 4096)
        .max_entry_bytes(4096)
        .eviction(Eviction::Lru)
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let service = CacheLayer::new(cache.clone()).layer(sized(100, Arc::clone(&calls)));
    let fetch = |i: usize| service.clone().oneshot(get_request(&format!("/k/{i}")));
    for i in 0..10 {
        fetch(i).await.unwrap();
    }
    cache.stats().await;
    for i in 0..5 {
        fetch(i).await.unwrap(); // touch the first five
    }
    cache.stats().await;
    for i in 10..15 {
        fetch(i).await.unwrap(); // a scan of five new keys
    }
    cache.stats().await;
    let before = calls.load(Ordering::SeqCst);
    for i in 0..5 {
        fetch(i).await.unwrap();
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before,
        "the recently used five were kept"
    );
    fetch(5).await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before + 1,
        "the least recently used went"
    );
}

/// 100 stored responses, read, then 100,000 distinct keys whose responses may not be stored (a
/// route that asked, answering a `no-store` 404) or whose route never asked: the notes the cache keeps of
/// those keys live in a bound of their own, and the 100 responses are all still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unstorable_keys_evicts_no_stored_response() {
    let cache = ResponseCache::builder()
        .max_entries(100)
        .max_bytes(100 * 4096)
        .max_entry_bytes(4096)
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let app: Router = Router::new()
        .route(
            "/items/{id}",
            get(move |Path(id): Path<u32>| {
                counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    if id < 100 {
                        Ok(format!("item {id}"))
                    } else {
                        // As ballast's problems say: never stored.
                        Err((
                            StatusCode::NOT_FOUND,
                            [(http::header::CACHE_CONTROL, "no-store")],
                        ))
                    }
                }
            })
            .layer(ballast_cache::CacheRouteLayer::ttl(Duration::from_secs(60))),
        )
        .route("/other/{id}", get(|| async { "never asked" }))
        .layer(CacheLayer::new(cache.clone()));
    let fetch = |path: String| text(&app, request(Method::GET, &path, &[]));
    for id in 0..100 {
        assert_eq!(fetch(format!("/items/{id}")).await.0, StatusCode::OK);
        assert_eq!(fetch(format!("/items/{id}")).await.0, StatusCode::OK);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 100, "read once, then hits");
    for n in 0..100_000 {
        let path = if n % 2 == 0 {
            format!("/items/{}", 100 + n)
        } else {
            format!("/other/{n}")
        };
        fetch(path).await;
    }
    let stats = cache.stats().await;
    let before = calls.load(Ordering::SeqCst);
    for id in 0..100 {
        let (status, headers, body) = fetch(format!("/items/{id}")).await;
        assert_eq!((status, body), (StatusCode::OK, format!("item {id}")));
        assert!(headers.get("age").is_some(), "served from the cache");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before,
        "all 100 were still stored ({} entries, {} evictions)",
        stats.entries,
        stats.evictions
    );
    assert_eq!(stats.entries, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_misses_run_the_handler_once() {
    let cache = cache(100, 1 << 20);
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let service =
        CacheLayer::new(cache.clone()).layer(service_fn(move |_request: Request<String>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from(
                    "slow",
                ))))
            }
        }));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move {
                let response = service.oneshot(get_request("/slow")).await.unwrap();
                response.into_body().collect().await.unwrap().to_bytes()
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), "slow");
    }
    println!(
        "scenario 21 (stampede): 100 misses, {} handler call(s)",
        calls.load(Ordering::SeqCst)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_of_an_unstorable_response_each_reach_the_service() {
    let cache = cache(100, 1 << 20);
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let service =
        CacheLayer::new(cache.clone()).layer(service_fn(move |_request: Request<String>| {
            let call = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let mut response =
                    Response::new(http_body_util::Full::new(Bytes::from(format!("{call}"))));
                response
                    .headers_mut()
                    .insert("set-cookie", format!("user={call}").parse().unwrap());
                Ok::<_, Infallible>(response)
            }
        }));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move {
                let response = service.oneshot(get_request("/mine")).await.unwrap();
                let cookie = response.headers()["set-cookie"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                (cookie, body)
            })
        })
        .collect();
    for task in tasks {
        let (cookie, body) = task.await.unwrap();
        assert_eq!(
            cookie,
            format!("user={}", String::from_utf8_lossy(&body)),
            "own response"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 10);
    // The key is remembered as not storable: later requests skip the coalescing.
    service.clone().oneshot(get_request("/mine")).await.unwrap();
    let stats = cache.stats().await;
    assert_eq!(stats.passes, 1, "{stats:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 11);
}

/// A body of `remaining` bytes in 64 KiB chunks, or endless.
struct Stream {
    remaining: Option<usize>,
}

impl http_body::Body for Stream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        const CHUNK: usize = 64 * 1024;
        let size = match &mut self.remaining {
            Some(0) => return Poll::Ready(None),
            Some(remaining) => {
                let size = CHUNK.min(*remaining);
                *remaining -= size;
                size
            }
            None => CHUNK,
        };
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'y'; size])))))
    }
}

#[tokio::test]
async fn huge_and_endless_bodies_pass_through_and_are_not_stored() {
    let cache = cache(100, 8 << 20);
    let service =
        CacheLayer::new(cache.clone()).layer(service_fn(|request: Request<String>| async move {
            let remaining = match request.uri().path() {
                "/huge" => Some(50 * 1024 * 1024),
                _ => None,
            };
            Ok::<_, Infallible>(Response::new(Stream { remaining }))
        }));
    let response = service.clone().oneshot(get_request("/huge")).await.unwrap();
    let mut body = response.into_body();
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        total += frame.unwrap().into_data().unwrap().len();
    }
    assert_eq!(total, 50 * 1024 * 1024, "untruncated");

    let response = service.oneshot(get_request("/endless")).await.unwrap();
    let mut body = response.into_body();
    let mut total = 0;
    while total < 20 * 1024 * 1024 {
        total += body
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap()
            .len();
    }
    drop(body);
    let stats = cache.stats().await;
    println!("scenario 20 (huge and endless bodies): {stats:?}");
    assert_eq!(stats.entries, 0);
    assert_eq!(stats.too_large, 2);
}

#[tokio::test]
async fn entries_expire_after_their_ttl_and_cleanup_stops() {
    let cache = ResponseCache::builder()
        .store_unmarked(true)
        .ttl(Duration::from_millis(150))
        // Nothing kept past freshness for a failing service: the entry goes at its TTL.
        .stale_if_error(Duration::ZERO)
        .cleanup_interval(Duration::from_millis(50))
        .build()
        .unwrap();
    let cleanup = cache.spawn_cleanup();
    let calls = Arc::new(AtomicUsize::new(0));
    let service = CacheLayer::new(cache.clone()).layer(sized(10, Arc::clone(&calls)));
    service.clone().oneshot(get_request("/t")).await.unwrap();
    service.clone().oneshot(get_request("/t")).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    service.clone().oneshot(get_request("/t")).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2, "expired");
    // moka's timer wheel works in steps of about a second: the cleanup task removes the
    // expired entry within a couple of them, with no traffic and no `stats()` call.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while cache.entry_count_estimate() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the cleanup task never removed it"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cache.stats().await.expirations >= 1);
    assert!(!cleanup.is_finished());
    cleanup.stop().await;
}

#[tokio::test]
async fn invalidation_and_clear() {
    let cache = cache(100, 1 << 20);
    let calls = Arc::new(AtomicUsize::new(0));
    let service = CacheLayer::new(cache.clone()).layer(sized(10, Arc::clone(&calls)));
    for path in ["/items", "/items?page=2", "/items/7", "/other"] {
        service.clone().oneshot(get_request(path)).await.unwrap();
    }
    assert_eq!(cache.stats().await.entries, 4);
    cache.invalidate_path("/items").await;
    assert_eq!(
        cache.stats().await.entries,
        2,
        "/items and /items?page=2 went"
    );
    cache.invalidate_prefix("/items").await;
    assert_eq!(cache.stats().await.entries, 1);
    cache.clear().await;
    let stats = cache.stats().await;
    assert_eq!((stats.entries, stats.bytes), (0, 0));
}

#[tokio::test]
async fn exact_stats() {
    let cache = ResponseCache::builder()
        .store_unmarked(true)
        .max_entries(2)
        .max_bytes(2 * 4096)
        .max_entry_bytes(4096)
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let service = CacheLayer::new(cache.clone()).layer(sized(1000, Arc::clone(&calls)));
    let fetch = |path: &str| service.clone().oneshot(get_request(path));
    fetch("/a").await.unwrap(); // miss, insert
    fetch("/a").await.unwrap(); // hit
    fetch("/b").await.unwrap(); // miss, insert
    cache.stats().await;
    fetch("/c").await.unwrap(); // miss, insert, evicts one
                                // Bypassed; to another path, so it invalidates nothing stored (RFC 9111 §4.4).
    let post = Request::post("http://example.com/elsewhere")
        .body(String::new())
        .unwrap();
    service.clone().oneshot(post).await.unwrap();
    let stats = cache.stats().await;
    println!("exact stats: {stats:?}");
    assert_eq!(stats.hits, 1);
    assert_eq!(stats.misses, 3);
    assert_eq!(stats.inserts, 3);
    assert_eq!(stats.evictions, 1);
    assert_eq!(stats.entries, 2);
    assert_eq!(stats.bypassed, 1);
    assert_eq!(stats.max_entries, 2);
    assert!((stats.hit_ratio - 0.25).abs() < 1e-9);
    assert!(
        stats.bytes > 2 * 1000 && stats.bytes <= 2 * 4096,
        "{}",
        stats.bytes
    );
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["hits"], 1);
}

#[test]
fn bad_settings_are_errors() {
    assert!(ResponseCache::builder()
        .store_unmarked(true)
        .max_entries(0)
        .build()
        .is_err());
    assert!(ResponseCache::builder()
        .store_unmarked(true)
        .max_bytes(10)
        .max_entry_bytes(20)
        .build()
        .is_err());
    assert!(ResponseCache::builder()
        .store_unmarked(true)
        .ttl(Duration::ZERO)
        .build()
        .is_err());
    assert!(ResponseCache::builder()
        .store_unmarked(true)
        .max_bytes(1 << 40)
        .build()
        .is_err());
}

/// A service that answers `{"n":<call>}` while `up`, else (after 20 ms) a 503 that carries a classified failure
/// (what the error layer's response for a down database carries); `cache_control` is its
/// `Cache-Control`.
fn flaky_origin(
    up: Arc<std::sync::atomic::AtomicBool>,
    calls: Arc<AtomicUsize>,
    cache_control: &'static str,
) -> impl tower::Service<
    Request<String>,
    Response = Response<String>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send {
    service_fn(move |_request: Request<String>| {
        let (up, calls) = (Arc::clone(&up), Arc::clone(&calls));
        async move {
            let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let mut response = if up.load(Ordering::SeqCst) {
                Response::new(format!("{{\"n\":{call}}}"))
            } else {
                // Failing takes a moment, as a timeout or a refused connect does.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let mut response = Response::new(String::from("down"));
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                response
                    .extensions_mut()
                    .insert(Arc::new(ballast_core::Failure::new(
                        ballast_core::Cause::Unreachable,
                    )));
                response
            };
            response
                .headers_mut()
                .insert("cache-control", cache_control.parse().unwrap());
            Ok::<_, Infallible>(response)
        }
    })
}

async fn body_of(
    response: Response<ballast_cache::CacheBody<String>>,
) -> (StatusCode, HeaderMap, String) {
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

/// RFC 5861 `stale-if-error`: while the service fails, a stored response past its freshness is
/// served instead of the failure, for the window; then the failure goes through.
#[tokio::test]
async fn stale_if_error_serves_what_the_cache_has_while_the_service_fails() {
    let cache = ResponseCache::builder()
        .store_unmarked(true)
        .ttl(Duration::from_millis(100))
        .stale_if_error(Duration::from_millis(400))
        .build()
        .unwrap();
    let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let calls = Arc::new(AtomicUsize::new(0));
    let service = CacheLayer::new(cache.clone())
        .x_cache_header(true)
        .layer(flaky_origin(
            Arc::clone(&up),
            Arc::clone(&calls),
            "max-age=60",
        ));
    let (status, _, body) = body_of(
        service
            .clone()
            .oneshot(get_request("/items"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, r#"{"n":1}"#));

    up.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Past its freshness, the service down: the stale response, with its age.
    let (status, headers, body) = body_of(
        service
            .clone()
            .oneshot(get_request("/items"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, r#"{"n":1}"#));
    assert_eq!(headers["x-cache"], "STALE");
    assert!(headers.contains_key("age"));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the service was asked first"
    );

    // Concurrent requests for it while the service fails: one answer of the service serves them.
    let before = calls.load(Ordering::SeqCst);
    let answers = futures_join(&service, 20).await;
    assert!(answers
        .iter()
        .all(|(status, _, body)| *status == StatusCode::OK && body == r#"{"n":1}"#));
    let asked = calls.load(Ordering::SeqCst) - before;
    assert!(asked < 20, "{asked} requests reached the failing service");

    // Past the window: the failure goes through.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let (status, _, _) = body_of(
        service
            .clone()
            .oneshot(get_request("/items"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let stats = cache.stats().await;
    println!("scenario 27 (stale-if-error, in process): {asked} of 20 concurrent stale requests asked the service; {stats:?}");
    assert!(stats.stale >= 21, "{stats:?}");
}

async fn futures_join<S>(service: &S, n: usize) -> Vec<(StatusCode, HeaderMap, String)>
where
    S: tower::Service<Request<String>, Response = Response<ballast_cache::CacheBody<String>>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
{
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move {
                body_of(service.oneshot(get_request("/items")).await.unwrap()).await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

/// `must-revalidate` (and `s-maxage`, which implies `proxy-revalidate`) forbid serving a stale
/// response, even for a failing service; a response's own `stale-if-error` sets the window.
#[tokio::test]
async fn revalidate_directives_forbid_stale_and_the_response_sets_its_window() {
    // The cache's TTL (50 ms) caps each response's lifetime, so they are stale within 100 ms.
    for (cache_control, stale_served) in [
        ("max-age=1, must-revalidate", false),
        ("s-maxage=1", false),
        ("max-age=1, stale-if-error=60", true),
    ] {
        let cache = ResponseCache::builder()
            .store_unmarked(true)
            .ttl(Duration::from_millis(50))
            .stale_if_error(Duration::ZERO)
            .build()
            .unwrap();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let calls = Arc::new(AtomicUsize::new(0));
        let service = CacheLayer::new(cache.clone()).layer(flaky_origin(
            Arc::clone(&up),
            Arc::clone(&calls),
            cache_control,
        ));
        service.clone().oneshot(get_request("/r")).await.unwrap();
        up.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, _, _) =
            body_of(service.clone().oneshot(get_request("/r")).await.unwrap()).await;
        assert_eq!(status == StatusCode::OK, stale_served, "{cache_control}");
    }
}

/// RFC 5861 `stale-while-revalidate`: a stale response within the window is served at once, and
/// one background request brings the entry up to date.
#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_in_the_background() {
    let cache = ResponseCache::builder()
        .store_unmarked(true)
        .ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let calls = Arc::new(AtomicUsize::new(0));
    let service = CacheLayer::new(cache.clone())
        .x_cache_header(true)
        .layer(flaky_origin(
            Arc::clone(&up),
            Arc::clone(&calls),
            "max-age=1, stale-while-revalidate=30",
        ));
    service.clone().oneshot(get_request("/s")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, headers, body) =
        body_of(service.clone().oneshot(get_request("/s")).await.unwrap()).await;
    assert_eq!(body, r#"{"n":1}"#, "the stale response, at once");
    assert_eq!(headers["x-cache"], "STALE");
    // The background request stores the new answer.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let (_, headers, body) =
            body_of(service.clone().oneshot(get_request("/s")).await.unwrap()).await;
        if body == r#"{"n":2}"# {
            assert_eq!(headers["x-cache"], "HIT");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never refreshed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// By default only what asked to be cached is: a route with `CacheRouteLayer`, or a response
/// that states its freshness. A health check and an unmarked page never come from the cache.
#[tokio::test]
async fn caching_is_something_a_route_asks_for() {
    use ballast_cache::CacheRouteLayer;
    let cache = ResponseCache::builder().build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counting = |body: &'static str| {
        let calls = Arc::clone(&calls);
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { body }
        }
    };
    let app = Router::new()
        .route(
            "/items",
            get(counting("[]")).layer(CacheRouteLayer::ttl(Duration::from_secs(30))),
        )
        .route("/readyz", get(counting("ready")))
        .route("/page", get(counting("page")))
        .route(
            "/explicit",
            get({
                let calls = Arc::clone(&calls);
                move || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async {
                        (
                            [(http::header::CACHE_CONTROL, "public, max-age=30")],
                            "explicit",
                        )
                    }
                }
            }),
        )
        .layer(CacheLayer::new(cache.clone()).x_cache_header(true));
    for (path, cached) in [
        ("/items", true),
        ("/readyz", false),
        ("/page", false),
        ("/explicit", true),
    ] {
        let before = calls.load(Ordering::SeqCst);
        for n in 0..3 {
            let (status, headers, _) = text(&app, request(Method::GET, path, &[])).await;
            assert_eq!(status, StatusCode::OK);
            // Only a route that asked says where its answer came from; the others say nothing,
            // as if the cache were not there.
            let expected = match (cached, n) {
                (false, _) => None,
                (true, 0) => Some("MISS"),
                (true, _) => Some("HIT"),
            };
            assert_eq!(
                headers.get("x-cache").map(|value| value.to_str().unwrap()),
                expected,
                "{path}, request {n}"
            );
        }
        let ran = calls.load(Ordering::SeqCst) - before;
        assert_eq!(
            ran,
            if cached { 1 } else { 3 },
            "{path}: the handler ran {ran} times"
        );
    }
    // No route at all: a 404 nobody asked to cache says nothing either.
    let (status, headers, _) = text(&app, request(Method::GET, "/nowhere", &[])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!headers.contains_key("x-cache"), "{headers:?}");
    let stats = cache.stats().await;
    assert_eq!(stats.hits, 4, "{stats:?}");
    // The hit ratio is the cached routes' own: the others are bypassed, not missed.
    assert_eq!(stats.misses, 2, "{stats:?}");
    assert_eq!(stats.bypassed, 7, "{stats:?}");
    assert_eq!(stats.not_storable, 0, "{stats:?}");
}

/// A route's policy names its statuses: a route that caches only its 200s never stores its 404s,
/// while one that asks for 404s too remembers an absence.
#[tokio::test]
async fn a_routes_policy_names_its_statuses() {
    use ballast_cache::CacheRouteLayer;
    let cache = ResponseCache::builder().build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let missing = |calls: &Arc<AtomicUsize>| {
        let calls = Arc::clone(calls);
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { (StatusCode::NOT_FOUND, "no such thing") }
        }
    };
    let ttl = Duration::from_secs(30);
    let app = Router::new()
        .route(
            "/only-ok",
            get(missing(&calls)).layer(CacheRouteLayer::ttl(ttl).statuses([StatusCode::OK])),
        )
        .route(
            "/absences-too",
            get(missing(&calls))
                .layer(CacheRouteLayer::ttl(ttl).statuses([StatusCode::OK, StatusCode::NOT_FOUND])),
        )
        .layer(CacheLayer::new(cache.clone()));
    for (path, runs) in [("/only-ok", 3), ("/absences-too", 1)] {
        let before = calls.load(Ordering::SeqCst);
        for _ in 0..3 {
            assert_eq!(
                text(&app, request(Method::GET, path, &[])).await.0,
                StatusCode::NOT_FOUND
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst) - before, runs, "{path}");
    }
}

/// A request's own `no-cache` (or `Pragma: no-cache`) is never answered from the cache without
/// asking the service (RFC 9111 §5.2.1.4, §5.4); what the service answers may be stored.
#[tokio::test]
async fn a_requests_no_cache_always_reaches_the_service() {
    for header in [
        ("cache-control", "no-cache"),
        ("pragma", "no-cache"),
        ("cache-control", "max-age=0"),
    ] {
        let cache = cache(100, 1 << 20);
        let calls = Arc::new(AtomicUsize::new(0));
        let app = app(&cache, &calls);
        text(&app, request(Method::GET, "/r/plain", &[])).await;
        for _ in 0..2 {
            text(&app, request(Method::GET, "/r/plain", &[header])).await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3, "{header:?}");
        assert_eq!(cache.stats().await.hits, 0, "{header:?}");
    }
}

/// A stale copy stands in for a service that hangs, not only for one that fails: past its
/// freshness, with `stale-if-error`, a request whose service does not answer gets the stale
/// copy shortly before its deadline (the request timeout further out), instead of that
/// layer's 503. Concurrent requests waiting behind it get it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_copy_answers_before_the_deadline_when_the_service_hangs() {
    use ballast_error::timeout::RequestTimeoutLayer;
    let cache = cache(100, 1 << 20);
    let hang = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = {
        let (hang, calls) = (Arc::clone(&hang), Arc::clone(&calls));
        service_fn(
            move |_request: Request<ballast_error::timeout::TimedBody<String>>| {
                let (hang, calls) = (Arc::clone(&hang), Arc::clone(&calls));
                async move {
                    let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    if hang.load(Ordering::SeqCst) {
                        // A locked table: the query never returns.
                        std::future::pending::<()>().await;
                    }
                    let mut response = Response::new(format!("{{\"n\":{call}}}"));
                    response.headers_mut().insert(
                        "cache-control",
                        "max-age=1, stale-if-error=60".parse().unwrap(),
                    );
                    Ok::<_, Infallible>(response)
                }
            },
        )
    };
    let service = tower::ServiceBuilder::new()
        .layer(RequestTimeoutLayer::new(Duration::from_millis(600)))
        .layer(CacheLayer::new(cache.clone()).x_cache_header(true))
        .service(origin);
    assert_eq!(fetch(service.clone()).await.2, r#"{"n":1}"#);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    hang.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let waiting: Vec<_> = (0..3)
        .map(|_| tokio::spawn(fetch(service.clone())))
        .collect();
    let mut answers = Vec::new();
    for answer in waiting {
        answers.push(answer.await.unwrap());
    }
    let took = started.elapsed();
    for (status, headers, body) in &answers {
        assert_eq!((*status, body.as_str()), (StatusCode::OK, r#"{"n":1}"#));
        assert_eq!(headers["x-cache"], "STALE");
    }
    assert!(
        took < Duration::from_millis(600),
        "within the deadline: {took:?}"
    );
    assert!(
        took >= Duration::from_millis(400),
        "the service had its chance: {took:?}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one request asked the hanging service"
    );
}

/// `GET /items` through `service`: the status, the headers and the body.
async fn fetch<S, B>(service: S) -> (StatusCode, HeaderMap, String)
where
    S: tower::Service<Request<String>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let response = service.oneshot(get_request("/items")).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

/// A router whose routes take `HANDLER` to answer and count their calls: `/asked` (a route that
/// asked to be cached, storable), `/private` (asked, answers `private`), `/never` (never asked,
/// `no-store`, as a health check or ballast's problems say).
fn slow_routes(cache: &ResponseCache, calls: &Arc<AtomicUsize>) -> Router {
    let route = |cache_control: &'static str| {
        let calls = Arc::clone(calls);
        get(move || {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(HANDLER).await;
                ([(http::header::CACHE_CONTROL, cache_control)], "answer")
            }
        })
    };
    let asked = || ballast_cache::CacheRouteLayer::ttl(Duration::from_secs(60));
    Router::new()
        .route("/asked", route("public").layer(asked()))
        .route("/private", route("private").layer(asked()))
        .route("/never", route("no-store"))
        .layer(CacheLayer::new(cache.clone()).x_cache_header(true))
}

/// How long each of [`slow_routes`]'s handlers takes.
const HANDLER: Duration = Duration::from_millis(400);
/// What a request may take beyond one handler time: scheduling on a loaded test machine.
const SLACK: Duration = Duration::from_millis(150);

/// `n` identical requests at once: how long the slowest took.
async fn at_once(app: &Router, path: &'static str, n: usize) -> Duration {
    let started = tokio::time::Instant::now();
    let requests: Vec<_> = (0..n)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { text(&app, request(Method::GET, path, &[])).await })
        })
        .collect();
    for answer in requests {
        let (status, _, body) = answer.await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "answer"));
    }
    started.elapsed()
}

/// RFC 9111 §4: a request waits for another's response only when that response can serve it.
/// Identical requests to a route that asked collapse into one handler call; to a route that
/// never asked they do not wait at all (they did, for a whole handler time, until the first
/// answer said `no-store`); once a key's answer turned out not storable, its requests no longer
/// wait on each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_wait_for_another_only_when_its_answer_can_serve_them() {
    let cache = ResponseCache::builder().build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let app = slow_routes(&cache, &calls);

    let took = at_once(&app, "/asked", 5).await;
    assert_eq!(
        calls.swap(0, Ordering::SeqCst),
        1,
        "collapsed into one call"
    );
    assert!(took < HANDLER + SLACK, "{took:?}");

    let took = at_once(&app, "/never", 5).await;
    assert_eq!(calls.swap(0, Ordering::SeqCst), 5, "each its own call");
    assert!(
        took < HANDLER + SLACK,
        "a route that never asked is never collapsed: {took:?}"
    );

    // The first time, the answer's `private` is news: the others waited for it, then go.
    let first = at_once(&app, "/private", 5).await;
    calls.store(0, Ordering::SeqCst);
    let took = at_once(&app, "/private", 5).await;
    println!("five at once: asked, never asked, private (first {first:?}, then {took:?})");
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    assert!(
        took < HANDLER + SLACK,
        "remembered as not storable: {took:?}"
    );
}

/// The first request's client hangs up while others wait for its answer: they go to the service
/// at once (they waited again, for a waiter that took over, before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_go_at_once_when_the_first_client_hangs_up() {
    let cache = ResponseCache::builder().build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let app = slow_routes(&cache, &calls);
    let started = tokio::time::Instant::now();
    let first = {
        let app = app.clone();
        tokio::spawn(async move { text(&app, request(Method::GET, "/private", &[])).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                let answer = text(&app, request(Method::GET, "/private", &[])).await;
                (answer, started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    first.abort();
    let hung_up = started.elapsed();
    for waiter in waiters {
        let ((status, _, body), took) = waiter.await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "answer"));
        assert!(took < hung_up + HANDLER + SLACK, "{took:?}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "the first's and each waiter's own"
    );
}
