//! Writes that declare what they make stale: routes tagged by `CacheRouteLayer::tag`, writes
//! that name the tag with `InvalidateLayer` (or a prefix, or an `Invalidates` of the handler's
//! own), on one instance and across two through Redis (feature `redis`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{Method, Request, StatusCode};
use axum::routing::{get, post};
use axum::{Extension, Router};
use ballast_cache::{CacheLayer, CacheRouteLayer, InvalidateLayer, Invalidates, ResponseCache};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// How often the origin answered a read: a cached read answers the same number again.
#[derive(Clone, Default)]
struct Origin(Arc<AtomicUsize>);

async fn read(State(origin): State<Origin>) -> String {
    origin.0.fetch_add(1, Ordering::SeqCst).to_string()
}

fn app(cache: &ResponseCache, origin: &Origin) -> Router {
    let tagged = CacheRouteLayer::ttl(Duration::from_secs(3600)).tag("bookmarks");
    Router::new()
        .route("/popular", get(read).layer(tagged.clone()))
        .route("/users/{id}/bookmarks", get(read).layer(tagged))
        .route(
            "/profile",
            get(read).layer(CacheRouteLayer::ttl(Duration::from_secs(3600)).tag("users")),
        )
        // A write that declares the tag on its route.
        .route(
            "/bookmarks",
            post(|| async { StatusCode::CREATED }).layer(InvalidateLayer::tag("bookmarks")),
        )
        // A write whose handler declares what it changed.
        .route(
            "/users/{id}/rename",
            post(|| async { (Extension(Invalidates::tag("users")), "renamed") }),
        )
        // A write that fails invalidates nothing.
        .route(
            "/bookmarks/broken",
            post(|| async { StatusCode::INTERNAL_SERVER_ERROR })
                .layer(InvalidateLayer::tag("bookmarks")),
        )
        .with_state(origin.clone())
        .layer(CacheLayer::new(cache.clone()))
}

async fn send(app: &Router, method: Method, path: &str) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "bookmarks.test")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

async fn body(app: &Router, path: &str) -> String {
    let (status, body) = send(app, Method::GET, path).await;
    assert_eq!(status, StatusCode::OK, "{path}");
    body
}

#[tokio::test]
async fn a_write_removes_what_it_declares_and_nothing_else() {
    let cache = ResponseCache::new();
    let origin = Origin::default();
    let app = app(&cache, &origin);

    let popular = body(&app, "/popular").await;
    let mine = body(&app, "/users/7/bookmarks").await;
    let profile = body(&app, "/profile").await;
    assert_eq!(body(&app, "/popular").await, popular, "stored");
    assert_eq!(body(&app, "/users/7/bookmarks").await, mine, "stored");

    // A failed write removes nothing.
    let (status, _) = send(&app, Method::POST, "/bookmarks/broken").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        body(&app, "/popular").await,
        popular,
        "a failure invalidates nothing"
    );

    // The write that names the tag: every route stored with it is read again, others stay.
    let (status, _) = send(&app, Method::POST, "/bookmarks").await;
    assert_eq!(status, StatusCode::CREATED);
    let popular_after = body(&app, "/popular").await;
    assert_ne!(popular_after, popular, "/popular was tagged bookmarks");
    assert_ne!(body(&app, "/users/7/bookmarks").await, mine, "tagged too");
    assert_eq!(body(&app, "/profile").await, profile, "another tag stays");

    // A handler's own declaration.
    let (status, _) = send(&app, Method::POST, "/users/7/rename").await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(
        body(&app, "/profile").await,
        profile,
        "the handler declared users"
    );
    assert_eq!(
        body(&app, "/popular").await,
        popular_after,
        "bookmarks stay"
    );

    // A job, with no request: the cache's own call.
    cache.invalidate_tag("bookmarks").await;
    assert_ne!(body(&app, "/popular").await, popular_after);
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_invalidation_reaches_the_other_instance() {
    use ballast_cache::redis::SharedInvalidation;
    let Some(url) = ballast_testkit::db::redis_url("declared_invalidation_shared") else {
        return;
    };
    let channel = ballast_testkit::db::unique_name("ballast_declared");
    let start = |cache: &ResponseCache| {
        SharedInvalidation::builder(url.clone())
            .channel(channel.clone())
            .start(cache)
            .unwrap()
    };
    let (cache_a, cache_b) = (ResponseCache::new(), ResponseCache::new());
    let (shared_a, shared_b) = (start(&cache_a), start(&cache_b));
    assert!(shared_a.wait_connected(Duration::from_secs(5)).await);
    assert!(shared_b.wait_connected(Duration::from_secs(5)).await);
    let (a, b) = (
        app(&cache_a, &Origin::default()),
        app(&cache_b, &Origin::default()),
    );

    let on_b = body(&b, "/popular").await;
    assert_eq!(body(&b, "/popular").await, on_b, "stored on B");
    // The write lands on A; B's tagged entry goes.
    let (status, _) = send(&a, Method::POST, "/bookmarks").await;
    assert_eq!(status, StatusCode::CREATED);
    let started = Instant::now();
    while cache_b.stats().await.entries != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "never arrived on B"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_ne!(
        body(&b, "/popular").await,
        on_b,
        "B reads again after A's write"
    );
    assert!(shared_b.stats().received >= 1);
}
