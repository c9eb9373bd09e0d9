//! The retry layer's success path against the bare service, and the cost of buffering request
//! bodies so they can be replayed, in one run.
//!
//! ```text
//! cargo bench -p ballast-retry --bench retry
//! ```
//!
//! The services answer at once, so each future is polled once with a no-op waker: what is
//! measured is the layer's own work (the request's copy for a retry, the budget, the clock,
//! buffering). After criterion's groups the bench prints the overhead of a bodiless `GET` and of
//! one with three headers, medians of interleaved rounds, against the goal (at most 120 ns).

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use ballast_retry::{RetryBody, RetryLayer};
use bytes::Bytes;
use criterion::{criterion_group, BenchmarkId, Criterion};
use http::{Method, Request, Response};
use http_body_util::Full;
use tower::{service_fn, Layer, Service};

/// Polls a future that is ready at once.
fn ready<F: Future>(future: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => unreachable!("the benchmarked services answer at once"),
    }
}

fn request(method: Method, body: &Bytes) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri("/items")
        .body(Full::new(body.clone()))
        .unwrap()
}

/// A `GET` as wrk and browsers send it: the headers are what the layer's copy must clone.
fn browser_get(body: &Bytes) -> Request<Full<Bytes>> {
    Request::builder()
        .uri("/items")
        .header(http::header::HOST, "localhost:3000")
        .header(http::header::USER_AGENT, "wrk")
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(body.clone()))
        .unwrap()
}

fn bare<B>(_request: Request<B>) -> std::future::Ready<Result<Response<String>, Infallible>> {
    std::future::ready(Ok(Response::new(String::new())))
}

fn success_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let empty = Bytes::new();
    let mut group = c.benchmark_group("bodiless GET");
    let mut plain = service_fn(bare::<Full<Bytes>>);
    group.bench_function("bare service", |b| {
        b.iter(|| black_box(ready(plain.call(black_box(request(Method::GET, &empty))))));
    });
    let mut layered = RetryLayer::new().layer(service_fn(bare::<RetryBody<Full<Bytes>>>));
    group.bench_function("with RetryLayer", |b| {
        b.iter(|| black_box(ready(layered.call(black_box(request(Method::GET, &empty))))));
    });
    group.finish();

    let mut group = c.benchmark_group("GET with three headers");
    group.bench_function("bare service", |b| {
        b.iter(|| black_box(ready(plain.call(black_box(browser_get(&empty))))));
    });
    group.bench_function("with RetryLayer", |b| {
        b.iter(|| black_box(ready(layered.call(black_box(browser_get(&empty))))));
    });
    group.finish();

    let mut group = c.benchmark_group("POST body buffered for replay");
    for size in [4 * 1024, 64 * 1024] {
        let body = Bytes::from(vec![b'x'; size]);
        let mut plain = service_fn(bare::<Full<Bytes>>);
        group.bench_with_input(BenchmarkId::new("bare service", size), &body, |b, body| {
            b.iter(|| black_box(ready(plain.call(black_box(request(Method::POST, body))))));
        });
        let mut layered = RetryLayer::new().layer(service_fn(bare::<RetryBody<Full<Bytes>>>));
        group.bench_with_input(
            BenchmarkId::new("with RetryLayer", size),
            &body,
            |b, body| {
                b.iter(|| black_box(ready(layered.call(black_box(request(Method::POST, body))))));
            },
        );
    }
    group.finish();
}

/// Makes one benchmarked request.
type MakeRequest = fn(&Bytes) -> Request<Full<Bytes>>;

/// Median nanoseconds per call of `bare` and `layered`, measured in alternating rounds.
fn overhead(make: fn(&Bytes) -> Request<Full<Bytes>>) -> (f64, f64) {
    let empty = Bytes::new();
    let mut plain = service_fn(bare::<Full<Bytes>>);
    let mut layered = RetryLayer::new().layer(service_fn(bare::<RetryBody<Full<Bytes>>>));
    const CALLS: u32 = 100_000;
    let (mut bare_ns, mut layer_ns) = (Vec::new(), Vec::new());
    for _ in 0..21 {
        let started = std::time::Instant::now();
        for _ in 0..CALLS {
            let _ = black_box(ready(plain.call(black_box(make(&empty)))));
        }
        bare_ns.push(started.elapsed().as_nanos() as f64 / f64::from(CALLS));
        let started = std::time::Instant::now();
        for _ in 0..CALLS {
            let _ = black_box(ready(layered.call(black_box(make(&empty)))));
        }
        layer_ns.push(started.elapsed().as_nanos() as f64 / f64::from(CALLS));
    }
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    (median(bare_ns), median(layer_ns))
}

fn summary() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    println!("\nretry layer overhead, median of 21 alternating rounds (goal: at most 120 ns)");
    let cases: [(&str, MakeRequest); 2] = [
        ("bodiless GET", |body| request(Method::GET, body)),
        ("GET with three headers", browser_get),
    ];
    for (name, make) in cases {
        let (bare, layered) = overhead(make);
        println!(
            "  {name:<24} bare {bare:>6.0} ns  layered {layered:>6.0} ns  overhead {:>5.0} ns",
            layered - bare
        );
    }
}

criterion_group!(benches, success_path);

fn main() {
    benches();
    summary();
    Criterion::default().configure_from_args().final_summary();
}
