//! A cache hit against a bare service returning the same bytes, in one run.
//!
//! ```text
//! cargo bench -p ballast-cache --bench hit
//! ```
//!
//! Both are driven the same way (one `block_on` per request on a current-thread runtime), so the
//! difference is the layer's own work on a hit: the key, the lookup, the stored headers and
//! body handed out with `Age`. Goal: at most 1 µs over the bare service, median.

use std::convert::Infallible;
use std::hint::black_box;

use ballast_cache::{CacheLayer, ResponseCache};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use tower::{service_fn, Layer, Service};

fn request() -> Request<String> {
    Request::get("http://example.com/items?page=1")
        .header("accept", "application/json")
        .body(String::new())
        .unwrap()
}

fn hit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = Bytes::from(vec![b'x'; 2048]);
    let bare_body = body;
    let handler = move |_request: Request<String>| {
        let body = bare_body.clone();
        async move {
            let mut response = Response::new(Full::new(body));
            response
                .headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            Ok::<_, Infallible>(response)
        }
    };
    let mut bare = service_fn(handler.clone());
    let cache = ResponseCache::builder()
        .store_unmarked(true)
        .build()
        .unwrap();
    let mut cached = CacheLayer::new(cache.clone()).layer(service_fn(handler));
    // Fill the cache.
    runtime.block_on(cached.call(request())).unwrap();

    let mut group = c.benchmark_group("GET /items (2 KiB)");
    group.bench_function("bare service", |b| {
        b.iter(|| black_box(runtime.block_on(bare.call(black_box(request())))));
    });
    group.bench_function("cache hit", |b| {
        b.iter(|| black_box(runtime.block_on(cached.call(black_box(request())))));
    });
    group.finish();
    let stats = runtime.block_on(cache.stats());
    assert_eq!(stats.misses, 1, "every measured request was a hit");
}

criterion_group!(benches, hit);
criterion_main!(benches);
