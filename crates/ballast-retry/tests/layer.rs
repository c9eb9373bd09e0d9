//! The retry rules with in-process services: what is retried, how often, when, and what is not.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballast_core::{Cause, Failure, Reach};
use ballast_retry::{with_retry, RetryBody, RetryLayer, RetryLayerBuilder, Retrying};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, Layer, ServiceExt};

type Res = Response<String>;

/// A service that fails with `failure()` for the first `failures` calls, then answers 200 with
/// the length of the body it read; it records when each call came.
#[derive(Clone)]
struct Flaky {
    failures: usize,
    failure: fn() -> Failure,
    calls: Arc<Mutex<Vec<(Instant, usize)>>>,
}

impl Flaky {
    fn new(failures: usize, failure: fn() -> Failure) -> Self {
        Flaky {
            failures,
            failure,
            calls: Arc::default(),
        }
    }

    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    fn service<B>(
        &self,
    ) -> impl tower::Service<
        Request<RetryBody<B>>,
        Response = Res,
        Error = Infallible,
        Future = impl Send,
    > + Clone
           + Send
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<ballast_error::BoxError>,
    {
        let this = self.clone();
        service_fn(move |request: Request<RetryBody<B>>| {
            let this = this.clone();
            async move {
                let body = request.into_body().collect().await.map(|b| b.to_bytes());
                let length = body.as_ref().map_or(usize::MAX, Bytes::len);
                let call = {
                    let mut calls = this.calls.lock().unwrap();
                    calls.push((Instant::now(), length));
                    calls.len()
                };
                if call <= this.failures {
                    let mut response = Response::new(String::new());
                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    response.extensions_mut().insert(Arc::new((this.failure)()));
                    Ok::<_, Infallible>(response)
                } else {
                    Ok(Response::new(length.to_string()))
                }
            }
        })
    }
}

fn refused() -> Failure {
    Failure::new(Cause::Unreachable)
}

fn lost() -> Failure {
    Failure::new(Cause::ConnectionLost).with_reach(Reach::MaybeSent)
}

fn fast() -> RetryLayerBuilder {
    RetryLayer::builder().delays(Duration::from_millis(20), Duration::from_millis(80))
}

fn request(method: Method, body: &'static str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn a_get_is_retried_until_it_succeeds() {
    let flaky = Flaky::new(2, refused);
    let layer = fast().build().unwrap();
    let service = layer.layer(flaky.service());
    let response = service.oneshot(request(Method::GET, "")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(flaky.calls(), 3);
    let stats = layer.handle().stats();
    assert_eq!((stats.attempts, stats.retries), (3, 2));
}

#[tokio::test]
async fn a_post_not_sent_is_retried_with_its_body_but_maybe_sent_is_not() {
    let flaky = Flaky::new(1, refused);
    let service = fast().build().unwrap().layer(flaky.service());
    let response = service
        .oneshot(request(Method::POST, "{\"name\":\"lamp\"}"))
        .await
        .unwrap();
    assert_eq!(
        response.into_body(),
        "15",
        "the replayed body arrived whole"
    );
    assert_eq!(flaky.calls(), 2);

    let flaky = Flaky::new(1, lost);
    let layer = fast().build().unwrap();
    let response = layer
        .layer(flaky.service())
        .oneshot(request(Method::POST, "{}"))
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "last response unchanged"
    );
    assert_eq!(
        flaky.calls(),
        1,
        "a write that may have run is never repeated"
    );
    assert_eq!(layer.handle().stats().unsafe_to_repeat, 1);

    // The same failure on an idempotent method is retried.
    let flaky = Flaky::new(1, lost);
    let response = fast()
        .build()
        .unwrap()
        .layer(flaky.service())
        .oneshot(request(Method::PUT, "{}"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(flaky.calls(), 2);
}

#[tokio::test]
async fn non_retryable_failures_are_never_retried() {
    for failure in [
        || ballast_core::sqlstate::failure("28P01"),
        || ballast_core::sqlstate::failure("3D000"),
        || ballast_core::sqlstate::failure("42601"),
    ] {
        let flaky = Flaky::new(5, failure);
        let layer = fast().build().unwrap();
        let response = layer
            .layer(flaky.service())
            .oneshot(request(Method::GET, ""))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(flaky.calls(), 1);
        assert_eq!(layer.handle().stats().not_retryable, 1);
    }
}

#[tokio::test]
async fn never_more_attempts_than_set_and_the_last_response_goes_out() {
    let flaky = Flaky::new(100, refused);
    let layer = fast().max_retries(2).build().unwrap();
    let response = layer
        .layer(flaky.service())
        .oneshot(request(Method::GET, ""))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.extensions().get::<Arc<Failure>>().is_some());
    assert_eq!(flaky.calls(), 3);
    assert_eq!(layer.handle().stats().given_up, 1);
}

#[tokio::test]
async fn delays_are_jittered_capped_and_within_the_deadline() {
    let base = Duration::from_millis(30);
    let cap = Duration::from_millis(120);
    let flaky = Flaky::new(100, refused);
    let layer = RetryLayer::builder()
        .max_retries(6)
        .delays(base, cap)
        .deadline(Duration::from_millis(400))
        .without_budget()
        .build()
        .unwrap();
    let started = Instant::now();
    layer
        .layer(flaky.service())
        .oneshot(request(Method::GET, ""))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let calls = flaky.calls.lock().unwrap().clone();
    let gaps: Vec<Duration> = calls.windows(2).map(|pair| pair[1].0 - pair[0].0).collect();
    println!("scenario 15 (jitter): gaps {gaps:?}, total {elapsed:?}");
    assert!(gaps.len() >= 2, "{gaps:?}");
    // Never shorter than the base, never (much) longer than the cap: a timer fires late, not
    // early, so the upper bound gets scheduling slack.
    for gap in &gaps {
        assert!(*gap >= base, "{gap:?} below the base");
        assert!(
            *gap <= cap + Duration::from_millis(150),
            "{gap:?} above the cap"
        );
    }
    assert!(
        elapsed <= Duration::from_millis(400) + Duration::from_millis(150),
        "{elapsed:?}"
    );
    assert!(
        gaps.iter().any(|gap| *gap != gaps[0]),
        "not all equal: {gaps:?}"
    );
    assert!(layer.handle().stats().given_up >= 1);
}

#[tokio::test]
async fn jitter_differs_between_requests() {
    // Across requests failing at the same moment, the first delay differs: clients spread out.
    let layer = RetryLayer::builder()
        .max_retries(1)
        .delays(Duration::from_millis(40), Duration::from_millis(200))
        .without_budget()
        .build()
        .unwrap();
    let mut firsts = Vec::new();
    for _ in 0..8 {
        let flaky = Flaky::new(1, refused);
        layer
            .layer(flaky.service())
            .oneshot(request(Method::GET, ""))
            .await
            .unwrap();
        let calls = flaky.calls.lock().unwrap().clone();
        firsts.push(calls[1].0 - calls[0].0);
    }
    let spread = firsts
        .iter()
        .max()
        .unwrap()
        .saturating_sub(*firsts.iter().min().unwrap());
    println!("first delays: {firsts:?}");
    assert!(spread >= Duration::from_millis(5), "{firsts:?}");
}

#[tokio::test]
async fn a_body_over_the_cap_is_delivered_whole_and_not_retried() {
    let big = "x".repeat(100 * 1024);
    let flaky = Flaky::new(1, refused);
    let layer = fast().build().unwrap();
    let request = Request::post("/")
        .body(Full::new(Bytes::from(big.clone())))
        .unwrap();
    let response = layer.layer(flaky.service()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(flaky.calls.lock().unwrap()[0].1, big.len(), "untruncated");
    assert_eq!(flaky.calls(), 1);
    assert_eq!(layer.handle().stats().not_replayable, 1);

    // A streaming body of unknown length is never buffered either.
    let flaky = Flaky::new(1, refused);
    let response = fast()
        .build()
        .unwrap()
        .layer(flaky.service())
        .oneshot(
            Request::post("/")
                .body(Chunked(vec![Bytes::from_static(b"chunk"); 4]))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(flaky.calls.lock().unwrap()[0].1, 20);
    assert_eq!(flaky.calls(), 1);
}

/// A body of unknown length, as a chunked upload is.
struct Chunked(Vec<Bytes>);

impl http_body::Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let chunks = &mut self.get_mut().0;
        let next = (!chunks.is_empty()).then(|| Ok(http_body::Frame::data(chunks.remove(0))));
        std::task::Poll::Ready(next)
    }
}

#[tokio::test]
async fn dropping_the_response_future_stops_retries() {
    let flaky = Flaky::new(100, refused);
    let layer = RetryLayer::builder()
        .delays(Duration::from_millis(50), Duration::from_millis(50))
        .max_retries(10)
        .build()
        .unwrap();
    let future = layer
        .layer(flaky.service())
        .oneshot(request(Method::GET, ""));
    // Cancel during the first backoff.
    assert!(tokio::time::timeout(Duration::from_millis(25), future)
        .await
        .is_err());
    let calls = flaky.calls();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        flaky.calls(),
        calls,
        "no attempt after the future was dropped"
    );
    assert_eq!(calls, 1);
}

#[tokio::test]
async fn service_errors_are_read_too() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let service = fast().build().unwrap().layer(service_fn(
        move |_request: Request<RetryBody<Full<Bytes>>>| {
            let call = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if call == 0 {
                    Err::<Res, ballast_error::BoxError>(Box::new(refused()))
                } else {
                    Ok(Response::new("ok".to_owned()))
                }
            }
        },
    ));
    let response = service.oneshot(request(Method::GET, "")).await.unwrap();
    assert_eq!(response.into_body(), "ok");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn with_retry_follows_the_same_rules() {
    let calls = AtomicUsize::new(0);
    let result = with_retry(
        || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(lost())
        },
        3,
        Duration::from_millis(5),
    )
    .await;
    assert_eq!(result.unwrap_err().cause(), Cause::ConnectionLost);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "MaybeSent: not retried by default"
    );

    let retrying = Retrying::builder()
        .max_retries(3)
        .delays(Duration::from_millis(5), Duration::from_millis(10))
        .idempotent(true)
        .build()
        .unwrap();
    let calls = AtomicUsize::new(0);
    let result = retrying
        .run(|| async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(lost()),
                _ => Ok(7),
            }
        })
        .await;
    assert_eq!(result.unwrap(), 7);
    assert_eq!(retrying.handle().stats().retries, 2);

    let calls = AtomicUsize::new(0);
    let result = with_retry(
        || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(ballast_core::sqlstate::failure("28P01"))
        },
        3,
        Duration::from_millis(5),
    )
    .await;
    assert!(result.is_err());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a wrong password is never retried"
    );
}

#[test]
fn bad_settings_are_errors() {
    assert!(RetryLayer::builder()
        .delays(Duration::from_secs(5), Duration::from_secs(1))
        .build()
        .is_err());
    assert!(RetryLayer::builder().jitter(-1.0).build().is_err());
    assert!(RetryLayer::builder()
        .budget(Duration::ZERO, 1, 0.1)
        .build()
        .is_err());
    assert!(Retrying::builder()
        .delays(Duration::from_secs(2), Duration::ZERO)
        .build()
        .is_err());
}

#[tokio::test]
async fn a_known_outage_is_answered_at_once_and_a_hint_delays_the_retry() {
    // The pool answered from its closed connect gate: no retry within the request.
    let flaky = Flaky::new(1, || {
        Failure::new(Cause::Unreachable)
            .with_known_outage(true)
            .with_retry_after(Duration::from_millis(300))
    });
    let layer = RetryLayer::new();
    let response = layer
        .layer(flaky.service())
        .oneshot(request(Method::GET, ""))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(flaky.calls(), 1);
    assert_eq!(layer.handle().stats().outages, 1);

    // This request's own connect attempt failed (not known before): it is retried, but not
    // before the pool will try again.
    let flaky = Flaky::new(1, || {
        Failure::new(Cause::Unreachable).with_retry_after(Duration::from_millis(150))
    });
    let layer = RetryLayer::builder()
        .delays(Duration::from_millis(10), Duration::from_millis(20))
        .build()
        .unwrap();
    let response = layer
        .layer(flaky.service())
        .oneshot(request(Method::GET, ""))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let calls = flaky.calls.lock().unwrap().clone();
    assert!(calls[1].0 - calls[0].0 >= Duration::from_millis(150));

    // The function form has time: it waits an outage out like any other failure.
    let attempts = AtomicUsize::new(0);
    let result = Retrying::builder()
        .max_retries(1)
        .delays(Duration::from_millis(10), Duration::from_millis(20))
        .build()
        .unwrap()
        .run(|| async {
            match attempts.fetch_add(1, Ordering::SeqCst) {
                0 => Err(Failure::new(Cause::Unreachable).with_known_outage(true)),
                _ => Ok(()),
            }
        })
        .await;
    assert!(result.is_ok());
}

#[tokio::test]
async fn the_budget_bounds_retries_of_blips() {
    // Every GET meets a killed backend; 200 of them over about two seconds.
    let layer = RetryLayer::builder()
        .delays(Duration::from_millis(1), Duration::from_millis(2))
        .budget(Duration::from_secs(1), 5, 0.1)
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let service = layer.layer(Flaky::new(usize::MAX, lost).service());
        tasks.push(tokio::spawn(service.oneshot(request(Method::GET, ""))));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let stats = layer.handle().stats();
    println!("scenario 15 (budget): {stats:?}");
    // Without a budget: 400 retries (two each).
    assert!(stats.retries <= 60, "{stats:?}");
    assert!(stats.budget_exhausted > 0, "{stats:?}");
    assert_eq!(stats.attempts, 200 + stats.retries);
}

#[tokio::test]
async fn clones_and_handles_share_one_set_of_counters() {
    let layer = RetryLayer::builder()
        .max_retries(1)
        .delays(Duration::from_millis(5), Duration::from_millis(10))
        .without_budget()
        .build()
        .unwrap();
    let handle = layer.handle();
    let clone = layer.clone();
    let flaky = Flaky::new(1, || Failure::new(Cause::Unreachable));
    let response = clone
        .layer(flaky.service())
        .oneshot(request(Method::GET, ""))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(handle.stats().retries, 1);
    assert_eq!(
        layer.handle().stats(),
        handle.stats(),
        "one set of counters"
    );
    // Another built layer counts on its own.
    assert_eq!(RetryLayer::new().handle().stats().retries, 0);
}

#[test]
fn a_rejected_setting_is_named() {
    let rejected = |builder: RetryLayerBuilder| builder.build().unwrap_err();
    let error =
        rejected(RetryLayer::builder().delays(Duration::from_secs(5), Duration::from_secs(1)));
    assert_eq!(error.setting, "delays");
    assert_eq!(
        rejected(RetryLayer::builder().jitter(f64::NAN)).setting,
        "jitter"
    );
    let error = rejected(RetryLayer::builder().budget(Duration::ZERO, 1, 0.1));
    assert_eq!(error.setting, "budget");
    assert!(
        error.to_string().starts_with("invalid setting `budget`: "),
        "{error}"
    );
    let error = Retrying::builder().jitter(101.0).build().unwrap_err();
    assert_eq!(error.setting, "jitter");
}

/// A body that declares `length` bytes and never sends one (a client that stalls).
struct NeverSent {
    length: u64,
}

impl http_body::Body for NeverSent {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Pending
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.length)
    }
}

/// Nothing is read before the service asks: a handler that never reads the body answers at
/// once, even when the client never sends the body it declared (it used to wait for the body,
/// until the request's timeout replaced its answer).
#[tokio::test]
async fn a_handler_that_does_not_read_the_body_answers_without_it() {
    let service = RetryLayer::new().layer(service_fn(
        |_request: Request<RetryBody<NeverSent>>| async {
            Ok::<_, Infallible>(Response::new("ok".to_owned()))
        },
    ));
    let request = Request::post("/healthz")
        .body(NeverSent { length: 100 })
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(2), service.oneshot(request))
        .await
        .expect("answered without the body")
        .unwrap();
    assert_eq!(response.into_body(), "ok");
}

/// A body of a declared length sent in several frames.
struct Chunks {
    parts: std::collections::VecDeque<Bytes>,
    length: u64,
}

impl Chunks {
    fn new(parts: &[&'static str]) -> Self {
        Chunks {
            parts: parts
                .iter()
                .map(|part| Bytes::from_static(part.as_bytes()))
                .collect(),
            length: parts.iter().map(|part| part.len() as u64).sum(),
        }
    }
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(
            self.parts
                .pop_front()
                .map(|part| Ok(http_body::Frame::data(part))),
        )
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.length)
    }
}

/// A body read in part by a failed attempt is replayed whole: the retry reads what the first
/// attempt read from the recording, then the rest from the client.
#[tokio::test]
async fn a_retry_reads_the_recorded_part_then_the_rest() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = {
        let calls = Arc::clone(&calls);
        service_fn(move |request: Request<RetryBody<Chunks>>| {
            let calls = Arc::clone(&calls);
            async move {
                let mut body = request.into_body();
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    // The first attempt reads one frame, then fails before its statement went
                    // out.
                    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
                    assert_eq!(first, "abc");
                    let mut response = Response::new(String::new());
                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    response.extensions_mut().insert(Arc::new(refused()));
                    return Ok::<_, Infallible>(response);
                }
                let whole = body.collect().await.unwrap().to_bytes();
                Ok(Response::new(String::from_utf8(whole.to_vec()).unwrap()))
            }
        })
    };
    let request = Request::post("/items")
        .body(Chunks::new(&["abc", "def", "ghi"]))
        .unwrap();
    let response = RetryLayer::builder()
        .delays(Duration::from_millis(1), Duration::from_millis(1))
        .build()
        .unwrap()
        .layer(service)
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.into_body(), "abcdefghi");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
