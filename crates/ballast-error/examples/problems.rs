//! Prints the responses the error layer gives for each kind of failure.
//!
//! ```text
//! cargo run -p ballast-error --example problems
//! ```
//!
//! An axum router with handlers that fail in different ways, driven in-process: a full
//! connection pool's SQLSTATE 53300, a wrong password (28P01), the database out of memory
//! (53200), a syntax error (42601), a missing row, an application's own 409, and a panic. Each
//! prints its status, `Retry-After` and problem+json body — and the log line the layer writes.

use axum::body::Body;
use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use ballast_error::{Error, ErrorResponseLayer};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    tracing_subscriber::fmt().with_target(false).init();
    let app = Router::new()
        .route(
            "/sqlstate/{code}",
            get(|Path(code): Path<String>| async move {
                Err::<(), Error>(ballast_core::sqlstate::failure(&code).into())
            }),
        )
        .route(
            "/missing",
            get(|| async { Err::<(), Error>(diesel::result::Error::NotFound.into()) }),
        )
        .route(
            "/conflict",
            get(|| async {
                Err::<(), Error>(Error::new(
                    StatusCode::CONFLICT,
                    "ITEM_EXISTS",
                    "An item with that name exists.",
                ))
            }),
        )
        .route(
            "/panic",
            get(|| async {
                if true {
                    panic!("a bug");
                }
            }),
        )
        .layer(ErrorResponseLayer::new());

    for path in [
        "/sqlstate/53300",
        "/sqlstate/28P01",
        "/sqlstate/53200",
        "/sqlstate/42601",
        "/missing",
        "/conflict",
        "/panic",
    ] {
        let request = Request::get(path).body(Body::empty()).expect("request");
        let response = app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|value| format!(" (Retry-After: {})", value.to_str().unwrap_or("?")))
            .unwrap_or_default();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        println!("GET {path} -> {status}{retry_after}");
        println!("  {}\n", String::from_utf8_lossy(&body));
    }
}
