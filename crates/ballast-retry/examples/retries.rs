//! Shows what the retry layer retries, and what it refuses to.
//!
//! ```text
//! cargo run -p ballast-retry --example retries
//! ```
//!
//! A service that fails its first two calls: a `GET` refused while connecting is retried and
//! succeeds; a `POST` refused while connecting (nothing was sent) too; a `POST` whose connection
//! broke after sending is answered with the failure at once — it may have written already; and a
//! wrong password is never retried. Then the function form, for work outside HTTP.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ballast_core::{Cause, Failure, Reach};
use ballast_retry::{with_retry, RetryLayer};
use http::{Method, Request, Response, StatusCode};
use tower::{service_fn, Layer, ServiceExt};

/// A case: its name, the method, and the failure of the first two calls.
type Case = (&'static str, Method, fn() -> Failure);

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let retry = RetryLayer::builder()
        .delays(Duration::from_millis(50), Duration::from_millis(200))
        .build()
        .unwrap();
    let cases: [Case; 4] = [
        ("GET, refused while connecting", Method::GET, || {
            Failure::new(Cause::Unreachable)
        }),
        ("POST, refused while connecting", Method::POST, || {
            Failure::new(Cause::TooManyConnections)
        }),
        ("POST, connection lost after sending", Method::POST, || {
            Failure::new(Cause::ConnectionLost).with_reach(Reach::MaybeSent)
        }),
        ("GET, wrong password", Method::GET, || {
            ballast_core::sqlstate::failure("28P01")
        }),
    ];
    for (name, method, failure) in cases {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let service = retry.layer(service_fn(move |_request: Request<_>| {
            let call = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                let mut response = Response::new(String::from("ok"));
                if call < 2 {
                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    response.extensions_mut().insert(Arc::new(failure()));
                }
                Ok::<_, Infallible>(response)
            }
        }));
        let request = Request::builder()
            .method(method)
            .body(String::from("{}"))
            .expect("request");
        let response = service.oneshot(request).await.expect("infallible");
        println!(
            "{name:<40} -> {} after {} call(s)",
            response.status(),
            calls.load(Ordering::SeqCst)
        );
    }
    println!("layer stats: {:?}", retry.handle().stats());

    let attempts = AtomicUsize::new(0);
    let backup = with_retry(
        || async {
            match attempts.fetch_add(1, Ordering::SeqCst) {
                0 => Err(Failure::new(Cause::ServerUnavailable)),
                _ => Ok("backup written"),
            }
        },
        3,
        Duration::from_millis(50),
    )
    .await;
    println!(
        "with_retry: {:?} after {} attempt(s)",
        backup,
        attempts.load(Ordering::SeqCst)
    );
}
