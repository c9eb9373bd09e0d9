//! The success path through `ErrorResponseLayer` against the bare service, in one run.
//!
//! ```text
//! cargo bench -p ballast-error --bench layer
//! ```
//!
//! Both services answer at once, so the futures are polled once with a no-op waker: what is
//! measured is the layer's own work per request (capturing the method and URI, `CatchPanic`'s
//! `catch_unwind` and body boxing, the extension lookup). Goal: at most 100 ns over the bare
//! service, median.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use ballast_error::ErrorResponseLayer;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use tower::{service_fn, Layer, Service};

fn request() -> Request<String> {
    Request::get("/items?page=2").body(String::new()).unwrap()
}

/// Polls a future that is ready at once.
fn ready<F: Future>(future: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => unreachable!("the benchmarked services answer at once"),
    }
}

fn handler(_request: Request<String>) -> std::future::Ready<Result<Response<String>, Infallible>> {
    std::future::ready(Ok(Response::new(String::from("[]"))))
}

fn success_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("success path");
    let mut bare = service_fn(handler);
    group.bench_function("bare service", |b| {
        b.iter(|| black_box(ready(bare.call(black_box(request())))));
    });
    let mut layered = ErrorResponseLayer::new().layer(service_fn(handler));
    group.bench_function("with ErrorResponseLayer", |b| {
        b.iter(|| black_box(ready(layered.call(black_box(request())))));
    });
    group.finish();
}

criterion_group!(benches, success_path);
criterion_main!(benches);
