//! A response built before a write is never stored after the write's invalidation: a read that
//! was on its way when the write answered (or that read a replica behind the write, as
//! `DataAsOf` tells) is answered, and not kept.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{Method, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use ballast_cache::{CacheLayer, CacheRouteLayer, ResponseCache};
use ballast_core::scope::DataAsOf;
use http_body_util::BodyExt;
use tokio::sync::Notify;
use tower::ServiceExt;

/// The data, and a gate a slow read waits at between reading it and answering.
#[derive(Clone, Default)]
struct Origin {
    version: Arc<AtomicUsize>,
    gate: Arc<Notify>,
    slow: Arc<std::sync::atomic::AtomicBool>,
    /// How far behind the data the reads see is (a replica's lag), in milliseconds.
    behind_ms: Arc<AtomicUsize>,
}

async fn read(State(origin): State<Origin>) -> String {
    let behind = Duration::from_millis(origin.behind_ms.load(Ordering::SeqCst) as u64);
    if !behind.is_zero() {
        DataAsOf::record(Instant::now() - behind);
    }
    let seen = origin.version.load(Ordering::SeqCst);
    if origin.slow.swap(false, Ordering::SeqCst) {
        origin.gate.notified().await;
    }
    format!("version {seen}")
}

async fn write(State(origin): State<Origin>) -> StatusCode {
    origin.version.fetch_add(1, Ordering::SeqCst);
    StatusCode::NO_CONTENT
}

fn app(cache: &ResponseCache, origin: &Origin) -> Router {
    Router::new()
        .route(
            "/items",
            get(read)
                .layer(CacheRouteLayer::ttl(Duration::from_secs(3600)))
                .post(write),
        )
        .with_state(origin.clone())
        .layer(CacheLayer::new(cache.clone()).x_cache_header(true))
}

async fn send(app: &Router, method: Method) -> (String, String) {
    let request = Request::builder()
        .method(method)
        .uri("/items")
        .header("host", "fence.test")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let x_cache = response
        .headers()
        .get("x-cache")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (String::from_utf8(body.to_vec()).unwrap(), x_cache)
}

#[tokio::test]
async fn a_read_that_began_before_a_write_is_not_stored_after_it() {
    let cache = ResponseCache::builder().build().unwrap();
    let origin = Origin::default();
    let app = app(&cache, &origin);

    // A read sees version 0, then waits before answering.
    origin.slow.store(true, Ordering::SeqCst);
    let slow = tokio::spawn({
        let app = app.clone();
        async move { send(&app, Method::GET).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The write answers (and invalidates /items) while the read is on its way.
    send(&app, Method::POST).await;
    origin.gate.notify_one();
    let (body, x_cache) = slow.await.unwrap();
    assert_eq!((body.as_str(), x_cache.as_str()), ("version 0", "MISS"));

    // The old copy was not kept: the next read sees the write.
    let (body, x_cache) = send(&app, Method::GET).await;
    assert_eq!(body, "version 1", "x-cache: {x_cache}");
    assert_eq!(x_cache, "MISS");
    // And that one is stored.
    assert_eq!(
        send(&app, Method::GET).await,
        ("version 1".into(), "HIT".into())
    );
}

#[tokio::test]
async fn a_read_of_data_older_than_a_write_is_not_stored() {
    let cache = ResponseCache::builder().build().unwrap();
    let origin = Origin::default();
    let app = app(&cache, &origin);

    // A write invalidates /items; reads then come from data 500 ms behind (a lagging replica).
    send(&app, Method::POST).await;
    origin.behind_ms.store(500, Ordering::SeqCst);
    for _ in 0..3 {
        let (_, x_cache) = send(&app, Method::GET).await;
        assert_eq!(
            x_cache, "MISS",
            "a copy that may predate the write is not kept"
        );
    }
    assert_eq!(cache.stats().await.entries, 0);

    // Data current as of after the write is stored as before.
    origin.behind_ms.store(0, Ordering::SeqCst);
    assert_eq!(send(&app, Method::GET).await.1, "MISS");
    assert_eq!(send(&app, Method::GET).await.1, "HIT");
    // A lag recorded after the write went long enough ago does not stop storing.
    tokio::time::sleep(Duration::from_millis(600)).await;
    send(&app, Method::POST).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    origin.behind_ms.store(300, Ordering::SeqCst);
    assert_eq!(send(&app, Method::GET).await.1, "MISS");
    assert_eq!(send(&app, Method::GET).await.1, "HIT");
}
