//! Every path through the error layer, in axum and in a plain Tower stack.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use ballast_core::{Cause, Failure};
use ballast_error::{DefaultProblems, Error, ErrorResponseLayer, Problem, RetryAfter};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

async fn body_text<B: http_body::Body>(response: Response<B>) -> (http::response::Parts, String)
where
    B::Error: std::fmt::Debug,
{
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (parts, String::from_utf8(bytes.to_vec()).unwrap())
}

fn request(method: Method, path: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .unwrap()
}

/// A router whose `/fail/{state}` handler fails with that SQLSTATE's failure.
fn app() -> Router {
    Router::new()
        .route(
            "/fail/{state}",
            get(
                |axum::extract::Path(state): axum::extract::Path<String>| async move {
                    Err::<String, Error>(ballast_core::sqlstate::failure(&state).into())
                },
            ),
        )
        .route("/ok", get(|| async { "fine" }))
        .route(
            "/missing",
            get(|| async { Err::<String, Error>(diesel::result::Error::NotFound.into()) }),
        )
        .route(
            "/conflict",
            get(|| async {
                Err::<String, Error>(
                    Problem::new(
                        StatusCode::CONFLICT,
                        "ITEM_EXISTS",
                        "An item with that name exists.",
                    )
                    .with_member("name", "lamp")
                    .into(),
                )
            }),
        )
        .route(
            "/panic",
            get(|| async {
                panic!("handler bug with secret canary-panic-text");
                #[allow(unreachable_code)]
                "never"
            }),
        )
        .layer(ErrorResponseLayer::new())
}

/// The JSON each code renders to: the stable shape clients parse.
#[tokio::test]
async fn one_snapshot_per_code() {
    let cases = [
        (
            "53300",
            503,
            r#"{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"The database has too many open connections.","code":"DB_CONNECTION_ERROR","retryable":true}"#,
        ),
        (
            "3D000",
            503,
            r#"{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"The configured database does not exist.","code":"DB_INIT_ERROR","retryable":false}"#,
        ),
        (
            "53200",
            503,
            r#"{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"The database ran out of memory.","code":"MEMORY_ERROR","retryable":true}"#,
        ),
        (
            "42601",
            500,
            r#"{"type":"about:blank","title":"Internal Server Error","status":500,"detail":"An internal error occurred.","code":"CRITICAL_ERROR","retryable":false}"#,
        ),
    ];
    for (state, status, json) in cases {
        let response = app()
            .oneshot(request(Method::GET, &format!("/fail/{state}")))
            .await
            .unwrap();
        let (parts, body) = body_text(response).await;
        assert_eq!(parts.status.as_u16(), status, "{state}");
        assert_eq!(parts.headers["content-type"], "application/problem+json");
        assert_eq!(parts.headers["cache-control"], "no-store");
        assert_eq!(body, json, "{state}");
        let failure = parts
            .extensions
            .get::<Arc<Failure>>()
            .expect("failure kept");
        assert_eq!(
            failure.driver_code().unwrap().to_string(),
            format!("SQLSTATE {state}")
        );
        let retryable = json.contains(r#""retryable":true"#);
        match status {
            503 if retryable => {
                let after: u64 = parts.headers["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=3).contains(&after), "{after}");
            }
            _ => assert!(!parts.headers.contains_key("retry-after")),
        }
    }
}

#[tokio::test]
async fn success_passes_untouched() {
    let response = app().oneshot(request(Method::GET, "/ok")).await.unwrap();
    let (parts, body) = body_text(response).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(body, "fine");
    assert!(parts.extensions.get::<Arc<Failure>>().is_none());
}

#[tokio::test]
async fn into_response_alone_is_safe_and_keeps_the_failure() {
    use axum::response::IntoResponse;
    let failure = Failure::new(Cause::Unreachable)
        .with_detail("connecting to 10.1.2.3:5432")
        .with_source(std::io::Error::other(
            "postgres://u:pw@10.1.2.3:5432/db refused",
        ));
    let response = Error::from(failure).into_response();
    let (parts, body) = body_text(response).await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(parts.headers.contains_key("retry-after"));
    assert!(!body.contains("10.1.2.3"), "{body}");
    assert!(body.contains("\"retryable\":true"));
    assert_eq!(
        parts.extensions.get::<Arc<Failure>>().unwrap().cause(),
        Cause::Unreachable
    );
}

#[tokio::test]
async fn application_errors_keep_their_status_and_code() {
    let (parts, body) = body_text(
        app()
            .oneshot(request(Method::GET, "/missing"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        r#"{"type":"about:blank","title":"Not Found","status":404,"detail":"The requested resource was not found.","code":"NOT_FOUND","retryable":false}"#
    );
    let (parts, body) = body_text(
        app()
            .oneshot(request(Method::GET, "/conflict"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, StatusCode::CONFLICT);
    assert_eq!(
        body,
        r#"{"type":"about:blank","title":"Conflict","status":409,"detail":"An item with that name exists.","code":"ITEM_EXISTS","retryable":false,"name":"lamp"}"#
    );
}

#[tokio::test]
async fn a_panic_is_a_500_and_the_service_keeps_serving() {
    let mut service = app().into_service::<Body>();
    let response = service
        .ready()
        .await
        .unwrap()
        .call(request(Method::GET, "/panic"))
        .await
        .unwrap();
    let (parts, body) = body_text(response).await;
    assert_eq!(parts.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.contains("CRITICAL_ERROR"));
    assert!(!body.contains("canary-panic-text"));
    let response = service
        .ready()
        .await
        .unwrap()
        .call(request(Method::GET, "/ok"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

type Plain = Result<Response<String>, tower::BoxError>;

#[tokio::test]
async fn plain_tower_service_errors_become_responses() {
    let cases: Vec<(tower::BoxError, u16, &str)> = vec![
        (
            Box::new(ballast_core::sqlstate::failure("57P03")),
            503,
            "DB_CONNECTION_ERROR",
        ),
        (
            Box::new(Error::new(StatusCode::CONFLICT, "TAKEN", "Taken.")),
            409,
            "TAKEN",
        ),
        (
            Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
            503,
            "DB_CONNECTION_ERROR",
        ),
        (
            Box::new(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::SerializationFailure,
                Box::new("could not serialize access".to_owned()),
            )),
            503,
            "DB_CONNECTION_ERROR",
        ),
        (
            Box::new(tower::timeout::error::Elapsed::new()),
            503,
            "DB_CONNECTION_ERROR",
        ),
        ("some other error".into(), 500, "CRITICAL_ERROR"),
    ];
    for (error, status, code) in cases {
        let error = Mutex::new(Some(error));
        let service = ServiceBuilder::new()
            .layer(ErrorResponseLayer::new())
            .service(service_fn(move |_request: Request<String>| {
                let error = error.lock().unwrap().take().unwrap();
                async move { Plain::Err(error) }
            }));
        let response = service.oneshot(Request::new(String::new())).await.unwrap();
        let (parts, body) = body_text(response).await;
        assert_eq!(parts.status.as_u16(), status, "{body}");
        assert!(body.contains(&format!("\"code\":\"{code}\"")), "{body}");
    }
}

#[tokio::test]
async fn a_panic_in_a_plain_service_call_is_a_500() {
    let service = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .service(service_fn(
            |_request: Request<String>| -> std::future::Ready<Plain> {
                panic!("synchronous panic in call")
            },
        ));
    let response = service.oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn head_requests_get_headers_only() {
    let service = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .service(service_fn(|_request: Request<String>| async {
            Plain::Err(Box::new(ballast_core::sqlstate::failure("53300")))
        }));
    let get = service
        .clone()
        .oneshot(
            Request::builder()
                .method(Method::GET)
                .body(String::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let head = service
        .oneshot(
            Request::builder()
                .method(Method::HEAD)
                .body(String::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let (get_parts, get_body) = body_text(get).await;
    let (head_parts, head_body) = body_text(head).await;
    assert_eq!(head_parts.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(head_body.is_empty());
    assert_eq!(
        head_parts.headers["content-length"],
        get_body.len().to_string().as_str()
    );
    assert_eq!(
        head_parts.headers["content-type"],
        get_parts.headers["content-type"]
    );

    // And through axum, whose router answers HEAD on GET routes.
    let response = app()
        .oneshot(request(Method::HEAD, "/fail/53300"))
        .await
        .unwrap();
    let (parts, body) = body_text(response).await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.is_empty(), "{body}");
}

#[tokio::test]
async fn a_failing_poll_ready_answers_the_next_call() {
    #[derive(Clone)]
    struct NeverReady;
    impl Service<Request<String>> for NeverReady {
        type Response = Response<String>;
        type Error = Failure;
        type Future = std::future::Ready<Result<Response<String>, Failure>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Failure>> {
            std::task::Poll::Ready(Err(Failure::new(Cause::PoolClosed)))
        }
        fn call(&mut self, _: Request<String>) -> Self::Future {
            unreachable!("never called when not ready")
        }
    }
    let service = tower::Layer::layer(&ErrorResponseLayer::new(), NeverReady);
    let response = service.oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_custom_mapping_and_retry_after() {
    let app = Router::new()
        .route(
            "/",
            get(|| async { Err::<String, Error>(ballast_core::sqlstate::failure("28P01").into()) }),
        )
        .route(
            "/busy",
            get(|| async { Err::<String, Error>(ballast_core::sqlstate::failure("53300").into()) }),
        )
        .layer(
            ErrorResponseLayer::new()
                .map_problem(|failure: &Failure| {
                    DefaultProblems::problem_for(failure).with_member("support", "ops@example.com")
                })
                .retry_after(RetryAfter::new(Duration::from_secs(30), Duration::ZERO)),
        );
    let response = app
        .clone()
        .oneshot(request(Method::GET, "/busy"))
        .await
        .unwrap();
    assert_eq!(response.headers()["retry-after"], "30");
    let response = app.oneshot(request(Method::GET, "/")).await.unwrap();
    let (parts, body) = body_text(response).await;
    assert!(
        !parts.headers.contains_key("retry-after"),
        "a wrong password is not an invitation to come back"
    );
    assert!(
        body.ends_with(r#""code":"DB_INIT_ERROR","retryable":false,"support":"ops@example.com"}"#),
        "{body}"
    );
}

/// `retryable` is a promise: a statement that may have run is only called retryable for a method
/// that may run twice, or when an idempotency key guards it (scenario 25).
#[tokio::test]
async fn retryable_only_when_repeating_cannot_write_twice() {
    let lost = || {
        Failure::new(Cause::ConnectionLost)
            .with_detail("the connection broke after the INSERT was sent")
    };
    let app = Router::new()
        .route(
            "/lost",
            get(move || async move { Err::<String, Error>(lost().into()) })
                .post(move || async move { Err::<String, Error>(lost().into()) })
                .put(move || async move { Err::<String, Error>(lost().into()) }),
        )
        .route(
            "/keyed",
            axum::routing::post(move || async move {
                Err::<String, Error>(lost().with_idempotent(true).into())
            }),
        )
        .route(
            "/refused",
            axum::routing::post(|| async {
                Err::<String, Error>(Failure::new(Cause::Unreachable).into())
            }),
        )
        .layer(ErrorResponseLayer::new());
    let cases = [
        (Method::POST, "/lost", false, true),
        (Method::GET, "/lost", true, false),
        (Method::PUT, "/lost", true, false),
        (Method::POST, "/keyed", true, false),
        (Method::POST, "/refused", true, false),
    ];
    for (method, path, retryable, unknown) in cases {
        let response = app
            .clone()
            .oneshot(request(method.clone(), path))
            .await
            .unwrap();
        let (parts, body) = body_text(response).await;
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            parts.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {path}"
        );
        assert_eq!(json["code"], "DB_CONNECTION_ERROR", "{method} {path}");
        assert_eq!(json["retryable"], retryable, "{method} {path}: {body}");
        assert_eq!(
            parts.headers.contains_key("retry-after"),
            retryable,
            "{method} {path}: Retry-After only invites a safe repeat"
        );
        assert_eq!(
            json.get("outcome")
                .is_some_and(|outcome| outcome == "unknown"),
            unknown,
            "{method} {path}: {body}"
        );
        if unknown {
            assert!(
                json["detail"]
                    .as_str()
                    .unwrap()
                    .contains("may or may not have taken effect"),
                "{body}"
            );
        }
    }

    // Without the layer, the method is unknown: the response never promises a repeat is safe.
    let alone = axum::response::IntoResponse::into_response(Error::from(lost()));
    let (parts, body) = body_text(alone).await;
    assert!(body.contains(r#""retryable":false"#), "{body}");
    assert!(!parts.headers.contains_key("retry-after"));
}

/// Every problem carries `Cache-Control: no-store` and, when the request had an id, the id as
/// its `instance`: the router's own (an unknown route, a wrong method), a handler's
/// application problem and a failure alike; a handler's retryable 503 gets a `Retry-After`.
#[tokio::test]
async fn every_problem_has_no_store_and_the_request_id() {
    let app = Router::new()
        .route("/ok", get(|| async { "fine" }))
        .route(
            "/missing",
            get(|| async { Err::<String, Error>(diesel::result::Error::NotFound.into()) }),
        )
        .route(
            "/fail/{state}",
            get(
                |axum::extract::Path(state): axum::extract::Path<String>| async move {
                    Err::<String, Error>(ballast_core::sqlstate::failure(&state).into())
                },
            ),
        )
        .route(
            "/conflict",
            get(|| async {
                Err::<String, Error>(
                    Problem::new(StatusCode::CONFLICT, "ITEM_EXISTS", "It exists.")
                        .with_member("name", "lamp")
                        .into(),
                )
            }),
        )
        .route(
            "/busy",
            get(|| async {
                Err::<String, Error>(
                    Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "SHUTTING_DOWN",
                        "The service is shutting down.",
                    )
                    .with_retryable(true)
                    .into(),
                )
            }),
        )
        .layer(ErrorResponseLayer::new());
    for (method, path, status) in [
        (Method::GET, "/nowhere", StatusCode::NOT_FOUND),
        (Method::DELETE, "/ok", StatusCode::METHOD_NOT_ALLOWED),
        (Method::GET, "/conflict", StatusCode::CONFLICT),
        (Method::GET, "/missing", StatusCode::NOT_FOUND),
        (Method::GET, "/fail/53300", StatusCode::SERVICE_UNAVAILABLE),
        (Method::GET, "/busy", StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let mut request = request(method.clone(), path);
        request
            .headers_mut()
            .insert("x-request-id", "req-7".parse().unwrap());
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), status, "{method} {path}");
        assert_eq!(
            response.headers()["cache-control"],
            "no-store",
            "{method} {path}"
        );
        let retry_after = response.headers().get("retry-after").is_some();
        let (_, body) = body_text(response).await;
        assert!(
            body.contains("\"instance\":\"req-7\""),
            "{method} {path}: {body}"
        );
        if path == "/busy" {
            assert!(retry_after, "a retryable 503 says when to come back");
            assert!(body.contains("SHUTTING_DOWN"), "{body}");
        }
    }
    // Without an id, a handler's problem passes as it was rendered.
    let response = app
        .oneshot(request(Method::GET, "/conflict"))
        .await
        .unwrap();
    let (_, body) = body_text(response).await;
    assert!(!body.contains("instance"), "{body}");
    assert!(body.contains("\"name\":\"lamp\""), "members kept: {body}");
}
