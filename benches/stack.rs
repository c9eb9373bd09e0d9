//! In-process overhead of each layer and of the whole stack against a bare service, in one run.
//!
//! ```text
//! cargo bench --bench stack
//! ```
//!
//! The handler answers at once with `Cache-Control: no-store`, so every request is a cache miss
//! that does no database work. Each service is driven the same way (one `block_on` per request
//! on a current-thread runtime). After criterion's groups the bench prints, from alternating
//! rounds, what the whole stack as the example server builds it (shutdown, error, request
//! timeout, cache, retry) costs over the bare service on a miss (goal: at most 1 µs), and what a
//! cache hit through it costs over a bare service answering the same bytes (goal: at most
//! 600 ns). `STACK_ONLY=hit` (or `miss`, `bare`) runs only that request, `STACK_CALLS` times,
//! for a profiler (`valgrind --tool=callgrind` counts instructions repeatably); `STACK_SIZES=1`
//! prints the sizes of the stack's response futures, which are copied whole each time a future
//! moves.

use std::convert::Infallible;
use std::hint::black_box;

use ballast::cache::{CacheLayer, ResponseCache};
use ballast::error::timeout::{RequestTimeoutLayer, TimedBody};
use ballast::error::ErrorResponseLayer;
use ballast::retry::{RetryBody, RetryLayer};
use ballast::shutdown::{Shutdown, ShutdownLayer};
use bytes::Bytes;
use criterion::{criterion_group, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use tower::{service_fn, Layer, Service, ServiceBuilder};

/// The stack as `examples/server/main.rs` builds it, outermost first.
macro_rules! example_stack {
    ($shutdown:expr, $cache:expr) => {
        ServiceBuilder::new()
            .layer(ShutdownLayer::new($shutdown.handle()))
            .layer(ErrorResponseLayer::new())
            .layer(RequestTimeoutLayer::new(std::time::Duration::from_secs(30)))
            .layer(CacheLayer::new($cache).x_cache_header(true))
            .layer(RetryLayer::new())
    };
}

/// The runtime every measurement drives its service on, one `block_on` per request.
fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A cache that stores what is not marked, as the stacks here measure it.
fn storing_cache() -> ResponseCache {
    ResponseCache::builder()
        .store_unmarked(true)
        .build()
        .unwrap()
}

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
    let runtime = current_thread();
    let _entered = runtime.enter();
    let shutdown = Shutdown::builder().build();
    let cache = storing_cache();
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

/// A cacheable answer: what a hit serves.
async fn cacheable<B>(_request: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(ITEMS)));
    response
        .headers_mut()
        .insert("cache-control", "max-age=3600".parse().unwrap());
    Ok(response)
}

/// The body both sides of the hit comparison answer.
const ITEMS: &[u8] = br#"[{"id":1,"name":"desk","created_at":"2026-11-26T00:00:00Z"}]"#;

/// Median nanoseconds per request of `call`, over alternating rounds with its partner; the
/// caller passes both closures and gets both medians.
fn alternate(mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64) {
    const CALLS: u32 = 50_000;
    let time = |f: &mut dyn FnMut()| {
        let started = std::time::Instant::now();
        for _ in 0..CALLS {
            f();
        }
        started.elapsed().as_nanos() as f64 / f64::from(CALLS)
    };
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for _ in 0..21 {
        first.push(time(&mut a));
        second.push(time(&mut b));
    }
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    (median(first), median(second))
}

fn summary() {
    let runtime = current_thread();
    let _entered = runtime.enter();
    let shutdown = Shutdown::builder().build();
    let stack = |cache: ResponseCache| example_stack!(shutdown, cache);
    println!("\nthe example server's stack, median of 21 alternating rounds");

    let mut bare = service_fn(handler::<Full<Bytes>>);
    let mut miss = stack(storing_cache()).service_fn(handler::<RetryBody<TimedBody<Full<Bytes>>>>);
    let (bare_ns, stack_ns) = alternate(
        || drop(black_box(runtime.block_on(bare.call(black_box(request()))))),
        || drop(black_box(runtime.block_on(miss.call(black_box(request()))))),
    );
    println!(
        "  miss (no-store): bare {bare_ns:>6.0} ns  stack {stack_ns:>6.0} ns  overhead {:>5.0} ns \
         (goal: at most 1000 ns)",
        stack_ns - bare_ns
    );

    let mut bare = service_fn(cacheable::<Full<Bytes>>);
    let mut hit = stack(storing_cache()).service_fn(cacheable::<RetryBody<TimedBody<Full<Bytes>>>>);
    drop(runtime.block_on(hit.call(request())));
    let (bare_ns, hit_ns) = alternate(
        || drop(black_box(runtime.block_on(bare.call(black_box(request()))))),
        || drop(black_box(runtime.block_on(hit.call(black_box(request()))))),
    );
    println!(
        "  hit:             bare {bare_ns:>6.0} ns  stack {hit_ns:>6.0} ns  overhead {:>5.0} ns \
         (goal: at most 600 ns)",
        hit_ns - bare_ns
    );
}

/// `STACK_ONLY=hit` (or `miss`, or `bare`: the bare service): only that request through the
/// example server's stack,
/// `STACK_CALLS` times (200,000), for a profiler (`valgrind --tool=callgrind`, `perf record`).
fn profile(which: &str) {
    let runtime = current_thread();
    let _entered = runtime.enter();
    let shutdown = Shutdown::builder().build();
    let cache = storing_cache();
    let stack = example_stack!(shutdown, cache);
    let calls: u32 = std::env::var("STACK_CALLS")
        .ok()
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(200_000);
    let run = |mut service: Box<dyn FnMut()>| {
        for _ in 0..=calls {
            service();
        }
    };
    if which == "bare" {
        let mut bare = service_fn(cacheable::<Full<Bytes>>);
        run(Box::new(move || {
            drop(black_box(runtime.block_on(bare.call(black_box(request())))));
        }));
    } else if which == "hit" {
        let mut hit = stack.service_fn(cacheable::<RetryBody<TimedBody<Full<Bytes>>>>);
        run(Box::new(move || {
            drop(black_box(runtime.block_on(hit.call(black_box(request())))));
        }));
    } else {
        let mut miss = stack.service_fn(handler::<RetryBody<TimedBody<Full<Bytes>>>>);
        run(Box::new(move || {
            drop(black_box(runtime.block_on(miss.call(black_box(request())))));
        }));
    }
}

criterion_group!(benches, layers);

fn main() {
    if std::env::var("STACK_SIZES").is_ok() {
        sizes();
        return;
    }
    if let Ok(which) = std::env::var("STACK_ONLY") {
        profile(&which);
        return;
    }
    benches();
    summary();
    Criterion::default().configure_from_args().final_summary();
}

/// `STACK_SIZES=1`: the response futures' sizes, layer by layer, as the example server stacks
/// them.
fn sizes() {
    fn size_of_future<S: Service<Request<Full<Bytes>>>>(_: &S) -> usize {
        size_of::<S::Future>()
    }
    let shutdown = Shutdown::builder().build();
    let cache = ResponseCache::builder().build().unwrap();
    let retry = RetryLayer::new().layer(service_fn(handler::<RetryBody<TimedBody<Full<Bytes>>>>));
    let cached = CacheLayer::new(cache).layer(retry.clone());
    let timed = RequestTimeoutLayer::new(std::time::Duration::from_secs(30)).layer(cached.clone());
    let errored = ErrorResponseLayer::new().layer(timed.clone());
    let whole = ShutdownLayer::new(shutdown.handle()).layer(errored.clone());
    eprintln!(
        "futures: timeout {} error {} whole {}",
        size_of_future(&timed),
        size_of_future(&errored),
        size_of_future(&whole)
    );
    fn size_of_future2<S: Service<Request<TimedBody<Full<Bytes>>>>>(_: &S) -> usize {
        size_of::<S::Future>()
    }
    eprintln!(
        "cache {} retry {}",
        size_of_future2(&cached),
        size_of_future2(&retry)
    );
}
