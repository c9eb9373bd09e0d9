//! A panic outside a request starts an orderly shutdown; one inside a request does not. Its own
//! test binary: the panic hook is process-wide.

use std::convert::Infallible;
use std::time::Duration;

use ballast_shutdown::{Phase, Shutdown, ShutdownLayer};
use http::{Request, Response};
use tower::{service_fn, Layer, ServiceExt};

#[tokio::test]
async fn only_a_background_panic_starts_the_shutdown() {
    let shutdown = Shutdown::builder().build();
    shutdown.install_panic_hook();
    let handle = shutdown.handle();

    // A handler that panics, served through the layer: the error layer's business.
    let service =
        ShutdownLayer::new(handle.clone()).layer(service_fn(|_request: Request<()>| async {
            if true {
                panic!("handler bug");
            }
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    let request = tokio::spawn(service.oneshot(Request::new(())));
    assert!(request.await.is_err(), "the handler panicked");
    assert_eq!(handle.phase(), Phase::Running);

    // A background task that panics: the process shuts down in order.
    let task = tokio::spawn(async { panic!("cleanup task bug") });
    assert!(task.await.is_err());
    tokio::time::timeout(Duration::from_secs(1), handle.reached(Phase::NotReady))
        .await
        .expect("shutdown started");
}
