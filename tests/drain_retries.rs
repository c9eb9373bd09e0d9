//! A background job's retries stop at the drain: SIGTERM while the database is down no longer
//! waits out the job's backoff (4.6 s observed, up to its 15 s retry deadline).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast::retry::Retrying;
use ballast::shutdown::Shutdown;
use ballast::{Cause, Failure};

#[tokio::test(flavor = "current_thread")]
async fn a_jobs_retries_stop_when_the_drain_begins() {
    let shutdown = Shutdown::builder().build();
    let handle = shutdown.handle();
    let attempts = Arc::new(AtomicU32::new(0));
    let (done, outcome) = tokio::sync::oneshot::channel();
    {
        let attempts = Arc::clone(&attempts);
        handle.spawn("nightly export", async move {
            // The function form's defaults: 3 retries from 1 s, a 15 s deadline.
            let result = Retrying::new()
                .run(|| {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    // The database is down: refused, nothing sent, worth retrying.
                    async { Err::<(), _>(Failure::new(Cause::Unreachable)) }
                })
                .await;
            let _ = done.send(result);
        });
    }
    // Let the first attempt fail and the backoff start, then shut down.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let triggered = Instant::now();
    handle.trigger();
    let summary = shutdown.run(std::future::ready(())).await;
    let took = triggered.elapsed();

    let failure = outcome
        .await
        .expect("the job ended on its own")
        .unwrap_err();
    assert_eq!(
        failure.cause(),
        Cause::Unreachable,
        "the last failure is the job's answer"
    );
    assert_eq!(summary.tasks_cancelled, 0, "{summary:?}");
    assert!(
        took < Duration::from_secs(1),
        "the drain waited {took:?} for the job's backoff"
    );
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        1,
        "no attempt after the drain began"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn outside_a_drain_signal_retries_run_as_configured() {
    let attempts = AtomicU32::new(0);
    let result = Retrying::builder()
        .max_retries(2)
        .delays(Duration::from_millis(5), Duration::from_millis(10))
        .build()
        .unwrap()
        .run(|| {
            attempts.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(Failure::new(Cause::Unreachable)) }
        })
        .await;
    assert!(result.is_err());
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
}
