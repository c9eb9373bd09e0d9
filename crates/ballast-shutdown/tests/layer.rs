//! The shutdown layer in-process: in-flight counting, refusals while draining, the sequence.

use std::convert::Infallible;
use std::time::Duration;

use ballast_shutdown::{HookResult, Phase, Shutdown, ShutdownLayer};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, Layer, ServiceExt};

fn ok_service() -> impl tower::Service<
    Request<()>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(|_request: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"body"))))
    })
}

#[tokio::test]
async fn a_request_is_in_flight_until_its_body_is_finished() {
    let shutdown = Shutdown::builder().build();
    let handle = shutdown.handle();
    let service = ShutdownLayer::new(handle.clone()).layer(ok_service());
    let response = service.oneshot(Request::new(())).await.unwrap();
    assert_eq!(handle.in_flight(), 1, "the body is still to be sent");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "body");
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test]
async fn while_draining_new_requests_get_a_503_and_exempt_paths_pass() {
    let shutdown = Shutdown::builder()
        .drain_deadline(Duration::from_secs(1))
        .build();
    let handle = shutdown.handle();
    let layer = ShutdownLayer::new(handle.clone()).serve_while_draining(["/healthz"]);
    handle.trigger();
    assert!(!handle.is_ready());
    assert_eq!(handle.phase(), Phase::NotReady);
    // Not draining yet: still served.
    let response = layer
        .layer(ok_service())
        .oneshot(Request::new(()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    drop(response); // a response not yet sent keeps its request in flight

    let run = tokio::spawn(shutdown.run(std::future::ready(())));
    handle.reached(Phase::Draining).await;
    let response = layer
        .layer(ok_service())
        .oneshot(Request::new(()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["connection"], "close");
    assert!(response.headers().contains_key("retry-after"));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("\"retryable\":true"));
    let head = Request::builder()
        .method(Method::HEAD)
        .uri("/items")
        .body(())
        .unwrap();
    let response = layer.layer(ok_service()).oneshot(head).await.unwrap();
    assert!(response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .is_empty());
    let health = Request::builder().uri("/healthz").body(()).unwrap();
    let response = layer.layer(ok_service()).oneshot(health).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["connection"], "close");
    drop(response);
    let summary = run.await.unwrap();
    assert!(
        summary.drained,
        "{summary:?}, in flight {}",
        handle.in_flight()
    );
    assert_eq!(summary.exit_code(), 0);
    assert_eq!(handle.stats().rejected, 2);
}

#[tokio::test]
async fn hooks_run_in_order_each_bounded() {
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (a, b, c) = (order.clone(), order.clone(), order.clone());
    let shutdown = Shutdown::builder()
        .hook("first", Duration::from_secs(1), move || async move {
            a.lock().unwrap().push("first");
            Ok::<_, String>(())
        })
        .hook("fails", Duration::from_secs(1), move || async move {
            b.lock().unwrap().push("fails");
            Err::<(), _>("no".to_owned())
        })
        .hook("hangs", Duration::from_millis(100), || async {
            std::future::pending::<Result<(), String>>().await
        })
        .hook("last", Duration::from_secs(1), move || async move {
            c.lock().unwrap().push("last");
            Ok::<_, String>(())
        })
        .build();
    shutdown.handle().trigger();
    let summary = shutdown.run(std::future::ready(())).await;
    assert_eq!(*order.lock().unwrap(), ["first", "fails", "last"]);
    let outcomes: Vec<&HookResult> = summary.hooks.iter().map(|hook| &hook.result).collect();
    assert_eq!(
        outcomes,
        [
            &HookResult::Ok,
            &HookResult::Failed("no".to_owned()),
            &HookResult::TimedOut,
            &HookResult::Ok
        ]
    );
    assert_eq!(summary.exit_code(), 1);
}

#[tokio::test]
async fn an_interrupt_cuts_the_hooks_short_with_exit_code_130() {
    let shutdown = Shutdown::builder()
        .hook("quick", Duration::from_secs(1), || async {
            Ok::<_, String>(())
        })
        .hook("slow", Duration::from_secs(30), || async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, String>(())
        })
        .hook("never", Duration::from_secs(1), || async {
            Ok::<_, String>(())
        })
        .build();
    let handle = shutdown.handle();
    handle.trigger();
    let interrupter = {
        let handle = handle.clone();
        tokio::spawn(async move {
            handle.reached(Phase::Stopped).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            handle.interrupt();
        })
    };
    let started = std::time::Instant::now();
    let summary = shutdown.run(std::future::ready(())).await;
    interrupter.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(summary.interrupted);
    assert_eq!(summary.exit_code(), 130);
    let names: Vec<&str> = summary
        .hooks
        .iter()
        .map(|hook| hook.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["quick"],
        "the hook that finished is reported, the rest skipped"
    );
}

/// Background jobs are part of the drain: one that stops when asked finishes before the hooks;
/// one that ignores the drain is cancelled at the deadline, before the hooks, and counted.
#[tokio::test]
async fn background_jobs_end_before_the_hooks() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let job_done = Arc::new(AtomicBool::new(false));
    let stubborn_dropped = Arc::new(AtomicBool::new(false));
    let seen_by_hook = Arc::new(std::sync::Mutex::new(None));
    let shutdown = Shutdown::builder()
        .drain_deadline(Duration::from_millis(300))
        .hook("close pool", Duration::from_secs(1), {
            let (job_done, stubborn_dropped, seen) = (
                Arc::clone(&job_done),
                Arc::clone(&stubborn_dropped),
                Arc::clone(&seen_by_hook),
            );
            move || async move {
                *seen.lock().unwrap() = Some((
                    job_done.load(Ordering::SeqCst),
                    stubborn_dropped.load(Ordering::SeqCst),
                ));
                Ok::<_, String>(())
            }
        })
        .build();
    let handle = shutdown.handle();
    let stop = handle.draining();
    let done = Arc::clone(&job_done);
    handle.spawn("polite", async move {
        stop.await;
        // Finishing its current unit of work.
        tokio::time::sleep(Duration::from_millis(50)).await;
        done.store(true, Ordering::SeqCst);
    });
    struct OnDrop(Arc<AtomicBool>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let guard = OnDrop(Arc::clone(&stubborn_dropped));
    handle.spawn("stubborn", async move {
        let _guard = guard;
        std::future::pending::<()>().await;
    });
    handle.trigger();
    let summary = shutdown.run(std::future::ready(())).await;
    assert_eq!(
        *seen_by_hook.lock().unwrap(),
        Some((true, true)),
        "both ended before the hook ran"
    );
    assert_eq!(summary.tasks_cancelled, 1);
    assert!(!summary.drained);
    assert_eq!(summary.exit_code(), 1);
}
