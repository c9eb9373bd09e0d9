//! Shows the response cache at work: routes that ask for caching (`CacheRouteLayer`), misses,
//! hits, a response it refuses to store, a `Vary` response, invalidation after a write, and the
//! stats.
//!
//! ```text
//! cargo run -p ballast-cache --example cache
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::routing::get;
use axum::Router;
use ballast_cache::{CacheLayer, CacheRouteLayer, ResponseCache};
use http::Request;
use tower::ServiceExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cache = ResponseCache::builder().max_entries(100).build()?;
    let cleanup = cache.spawn_cleanup();
    let calls = Arc::new(AtomicUsize::new(0));
    let (c1, c2, c3) = (Arc::clone(&calls), Arc::clone(&calls), Arc::clone(&calls));
    // Each route asks for caching, for up to 30 s.
    let cached = CacheRouteLayer::ttl(Duration::from_secs(30));
    let app = Router::new()
        .route(
            "/items",
            get(move || async move {
                c1.fetch_add(1, Ordering::SeqCst);
                "[\"lamp\",\"chair\"]"
            })
            .layer(cached.clone()),
        )
        .route(
            "/me",
            get(move || async move {
                c2.fetch_add(1, Ordering::SeqCst);
                ([("cache-control", "private")], "your profile")
            })
            .layer(cached.clone()),
        )
        .route(
            "/greeting",
            get(move |headers: HeaderMap| async move {
                c3.fetch_add(1, Ordering::SeqCst);
                let greeting = match headers.get("accept-language").map(|v| v.as_bytes()) {
                    Some(b"fr") => "bonjour",
                    _ => "hello",
                };
                ([("vary", "accept-language")], greeting)
            })
            .layer(cached),
        )
        .layer(CacheLayer::new(cache.clone()).x_cache_header(true));

    let requests = [
        ("/items", None),
        ("/items", None),
        ("/me", None),
        ("/me", None),
        ("/greeting", Some("en")),
        ("/greeting", Some("fr")),
        ("/greeting", Some("fr")),
    ];
    for (path, language) in requests {
        let mut request = Request::get(path);
        if let Some(language) = language {
            request = request.header("accept-language", language);
        }
        let response = app.clone().oneshot(request.body(Body::empty())?).await?;
        let x_cache = response.headers().get("x-cache").cloned();
        let before = calls.load(Ordering::SeqCst);
        println!(
            "GET {path:<10} {:<5} -> {} x-cache: {:?} (handler calls so far: {before})",
            language.unwrap_or(""),
            response.status(),
            x_cache
        );
    }
    cache.invalidate_path("/items").await;
    println!(
        "after invalidate_path(\"/items\"): {:?}",
        cache.stats().await
    );
    cleanup.stop().await;
    Ok(())
}
