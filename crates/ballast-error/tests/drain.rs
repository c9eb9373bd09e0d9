//! `RequestTimeoutLayer::draining`: a request whose body stalled is answered 408 when the service
//! drains, not at its deadline; a body still arriving is left to finish.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::routing::post;
use axum::Router;
use ballast_error::timeout::RequestTimeoutLayer;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body::{Frame, SizeHint};
use tokio::sync::mpsc;
use tower::ServiceExt;

/// A request body the test sends frame by frame; it declares `length` bytes.
struct Sent {
    frames: mpsc::UnboundedReceiver<Bytes>,
    length: u64,
}

impl http_body::Body for Sent {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.frames
            .poll_recv(cx)
            .map(|frame| frame.map(|data| Ok(Frame::data(data))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.length)
    }
}

/// An app whose one route reads the whole body, behind a 30 s deadline that watches `draining`.
fn app(draining: &Arc<AtomicBool>) -> Router {
    let draining = Arc::clone(draining);
    Router::new()
        .route(
            "/upload",
            post(|body: Bytes| async move { body.len().to_string() }),
        )
        .layer(
            RequestTimeoutLayer::new(Duration::from_secs(30))
                .draining(move || draining.load(Ordering::SeqCst)),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_answered_408_when_the_drain_begins() {
    let draining = Arc::new(AtomicBool::new(false));
    let (send, frames) = mpsc::unbounded_channel();
    send.send(Bytes::from_static(b"part of it")).unwrap();
    let request = Request::post("/upload")
        .body(Body::new(Sent {
            frames,
            length: 1000,
        }))
        .unwrap();
    let answer = tokio::spawn(app(&draining).oneshot(request));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    draining.store(true, Ordering::SeqCst);
    let response = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .expect("answered when the drain began, not at the 30 s deadline")
        .unwrap()
        .unwrap();
    println!("408 after {:?} of drain", started.elapsed());
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(response.headers()["connection"], "close");
    drop(send);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_still_arriving_is_not_cut_by_the_drain() {
    let draining = Arc::new(AtomicBool::new(true));
    let (send, frames) = mpsc::unbounded_channel();
    let request = Request::post("/upload")
        .body(Body::new(Sent { frames, length: 20 }))
        .unwrap();
    let answer = tokio::spawn(app(&draining).oneshot(request));
    // A frame every 200 ms for two seconds: slow, but never stalled for the half second.
    for _ in 0..10 {
        send.send(Bytes::from_static(b"ab")).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(send);
    let response = answer.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
