//! In-process overhead of each layer and of the whole stack against a bare service, in one run.
//!
//! ```text
//! cargo bench --bench stack
//! ```
//!
//! The handler answers at once with `Cache-Control: no-store`, so every request is a cache miss
//! that does no database work. Each service is driven the same way (one `block_on` per request
//! on a current-thread runtime). Goal: the whole stack costs at most 1 µs over the bare service,
//! median.

use std::convert::Infallible;
use std::hint::black_box;

use ballast::cache::{CacheLayer, ResponseCache};
use ballast::error::ErrorResponseLayer;
use ballast::retry::{RetryBody, RetryLayer};
use ballast::shutdown::{Shutdown, ShutdownLayer};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use tower::{service_fn, Layer, Service, ServiceBuilder};

fn request() -> Request<Full<Bytes>> {
    Request::get("http://example.com/items?page=1")
        .header("accept", "application/json")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn handler<B>(_request: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"[]")));
    response
        .headers_mut()
        .insert("cache-control", "no-store".parse().unwrap());
    Ok(response)
}

fn layers(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let shutdown = Shutdown::builder().build();
    let cache = ResponseCache::builder().build().unwrap();
    let mut group = c.benchmark_group("cache miss, no database work");

    let mut bare = service_fn(handler::<Full<Bytes>>);
    group.bench_function("bare service", |b| {
        b.iter(|| black_box(runtime.block_on(bare.call(black_box(request())))));
    });
    let mut shutdown_only =
        ShutdownLayer::new(shutdown.handle()).layer(service_fn(handler::<Full<Bytes>>));
    group.bench_function("ShutdownLayer", |b| {
        b.iter(|| black_box(runtime.block_on(shutdown_only.call(black_box(request())))));
    });
    let mut error_only = ErrorResponseLayer::new().layer(service_fn(handler::<Full<Bytes>>));
    group.bench_function("ErrorResponseLayer", |b| {
        b.iter(|| black_box(runtime.block_on(error_only.call(black_box(request())))));
    });
    let mut cache_only = CacheLayer::new(cache.clone()).layer(service_fn(handler::<Full<Bytes>>));
    group.bench_function("CacheLayer (miss)", |b| {
        b.iter(|| black_box(runtime.block_on(cache_only.call(black_box(request())))));
    });
    let mut retry_only = RetryLayer::new().layer(service_fn(handler::<RetryBody<Full<Bytes>>>));
    group.bench_function("RetryLayer", |b| {
        b.iter(|| black_box(runtime.block_on(retry_only.call(black_box(request())))));
    });
    let mut stack = ServiceBuilder::new()
        .layer(ShutdownLayer::new(shutdown.handle()))
        .layer(ErrorResponseLayer::new())
        .layer(CacheLayer::new(cache))
        .layer(RetryLayer::new())
        .service_fn(handler::<RetryBody<Full<Bytes>>>);
    group.bench_function("whole stack", |b| {
        b.iter(|| black_box(runtime.block_on(stack.call(black_box(request())))));
    });
    group.finish();
}

criterion_group!(benches, layers);
criterion_main!(benches);
