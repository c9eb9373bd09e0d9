//! Every error response of a stack under `ErrorResponseLayer` is problem+json: axum's own 404,
//! 405 and extractor rejections included, none of them echoing the request's input.

use axum::body::Body;
use axum::extract::{Path, Query};
use axum::routing::get;
use axum::{Json, Router};
use ballast_error::ErrorResponseLayer;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

#[derive(serde::Deserialize)]
struct Page {
    #[allow(dead_code)]
    page: u32,
}

fn app() -> Router {
    Router::new()
        .route(
            "/items/{id}",
            get(|Path(id): Path<i64>| async move { id.to_string() }),
        )
        .route(
            "/items",
            get(|Query(_page): Query<Page>| async { "[]" })
                .post(|Json(value): Json<serde_json::Value>| async move { value.to_string() }),
        )
        .route(
            "/text-error",
            get(|| async { (StatusCode::CONFLICT, "a plain conflict") }),
        )
        .layer(ErrorResponseLayer::new())
}

async fn call(
    method: Method,
    uri: &str,
    content_type: Option<&str>,
    body: &str,
) -> (StatusCode, http::HeaderMap, String) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = app()
        .oneshot(request.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn axums_own_errors_become_problems_without_echoing_the_input() {
    let cases = [
        (
            Method::GET,
            "/nowhere",
            None,
            "",
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
        ),
        (
            Method::DELETE,
            "/items",
            None,
            "",
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
        ),
        (
            Method::GET,
            "/items/abc-canary",
            None,
            "",
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
        ),
        (
            Method::GET,
            "/items/%00canary",
            None,
            "",
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
        ),
        (
            Method::GET,
            "/items?page=canary",
            None,
            "",
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
        ),
        (
            Method::POST,
            "/items",
            Some("application/json"),
            "{canary",
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
        ),
        (
            Method::POST,
            "/items",
            Some("text/plain"),
            "canary",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            Method::GET,
            "/text-error",
            None,
            "",
            StatusCode::CONFLICT,
            "CONFLICT",
        ),
    ];
    for (method, uri, content_type, body, status, code) in cases {
        let (got, headers, text) = call(method.clone(), uri, content_type, body).await;
        assert_eq!(got, status, "{method} {uri}: {text}");
        assert_eq!(
            headers["content-type"], "application/problem+json",
            "{method} {uri}"
        );
        let problem: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(problem["code"], code, "{method} {uri}: {text}");
        assert_eq!(problem["status"], status.as_u16());
        assert!(
            !text.contains("canary"),
            "{method} {uri} echoes its input: {text}"
        );
        assert!(!text.contains('\0'));
        assert_eq!(headers["content-length"], text.len().to_string());
        if status == StatusCode::METHOD_NOT_ALLOWED {
            assert!(headers.contains_key("allow"), "Allow is kept");
        }
    }
    // What was fine stays untouched.
    let (status, headers, text) = call(Method::GET, "/items/7", None, "").await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "7"));
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
}

/// With a request id (`x-request-id`, as tower-http's `SetRequestIdLayer` sets it), every problem
/// carries it as `instance` (RFC 9457 §3.1.5), so a user's report matches the log line.
#[tokio::test]
async fn problems_carry_the_request_id_as_instance() {
    let app = Router::new()
        .route(
            "/down",
            get(|| async {
                Err::<String, _>(ballast_error::Error::from(ballast_core::sqlstate::failure(
                    "53300",
                )))
            }),
        )
        .layer(ErrorResponseLayer::new());
    for (path, id, instance) in [
        (
            "/down",
            "7f9c2ba4-e88f-4e4b-9c1f-3c6d5a1b2e0d",
            Some("7f9c2ba4-e88f-4e4b-9c1f-3c6d5a1b2e0d"),
        ),
        ("/nowhere", "req_42", Some("req_42")),
        // Not something a URI carries as is: left out rather than escaped.
        ("/down", "a b<c>", None),
    ] {
        let request = Request::get(path)
            .header("x-request-id", id)
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            problem["instance"].as_str(),
            instance,
            "{path} {id}: {problem}"
        );
    }
}
