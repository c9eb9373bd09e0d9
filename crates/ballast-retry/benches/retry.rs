//! The retry layer's success path against the bare service, and the cost of buffering request
//! bodies so they can be replayed, in one run.
//!
//! ```text
//! cargo bench -p ballast-retry --bench retry
//! ```
//!
//! The services answer at once, so each future is polled once with a no-op waker: what is
//! measured is the layer's own work (the per-request policy, tower's `Retry`, buffering). Goal:
//! at most 200 ns over the bare service, median, for a bodiless `GET`.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use ballast_retry::{RetryBody, RetryLayer};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
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

criterion_group!(benches, success_path);
criterion_main!(benches);
