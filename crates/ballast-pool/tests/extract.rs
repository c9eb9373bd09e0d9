//! The `Conn` extractor in an axum app on the real PostgreSQL, with handlers that use plain `?`
//! on diesel's errors: each answer is the one a client should get.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::routing::{get, post};
use axum::Router;
use ballast_pool::{AddPoolLayer, Conn, PoolConfig, SharedPool};
use ballast_testkit::db::{self, Backends, PgDatabase};
use diesel::sql_types::{Integer, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use http::{Request, StatusCode};
use tower::ServiceExt;

type Pg = AsyncPgConnection;

#[derive(diesel::QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

async fn read(mut conn: Conn<Pg>, Path(id): Path<i32>) -> Result<String, ballast_error::Error> {
    let row: Name = diesel::sql_query("SELECT name FROM t WHERE id = $1")
        .bind::<Integer, _>(id)
        .get_result(&mut *conn)
        .await?;
    Ok(row.name)
}

async fn write(
    mut conn: Conn<Pg>,
    Path(name): Path<String>,
) -> Result<StatusCode, ballast_error::Error> {
    diesel::sql_query("INSERT INTO t (name) VALUES ($1)")
        .bind::<Text, _>(name)
        .execute(&mut *conn)
        .await?;
    Ok(StatusCode::CREATED)
}

async fn slow(mut conn: Conn<Pg>) -> Result<&'static str, ballast_error::Error> {
    diesel::sql_query("SELECT pg_sleep(5)")
        .execute(&mut *conn)
        .await?;
    Ok("slept")
}

fn app(pool: SharedPool<Pg>) -> Router {
    Router::new()
        .route("/t/{id}", get(read))
        .route("/t/new/{name}", post(write))
        .route("/slow", get(slow))
        .layer(AddPoolLayer::new(pool))
        // It knows the method: a GET whose connection died may be repeated.
        .layer(ballast_error::ErrorResponseLayer::new())
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
) -> (StatusCode, http::HeaderMap, serde_json::Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 16).await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::String(
        String::from_utf8_lossy(&bytes).into_owned(),
    ));
    (parts.status, parts.headers, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_question_marks_give_each_client_the_right_answer() {
    let Some(url) = db::postgres_url("plain_question_marks_give_each_client_the_right_answer")
    else {
        return;
    };
    let database = PgDatabase::create(&url).await;
    db::pg_execute(
        database.url(),
        "CREATE TABLE t (id serial PRIMARY KEY, name varchar(5) UNIQUE); INSERT INTO t (name) VALUES ('a');",
    )
    .await;
    let app_name = db::unique_name("ballast_extract");
    let config =
        PoolConfig::from_url(&format!("{}?application_name={app_name}", database.url())).unwrap();
    let app = app(SharedPool::new(config).unwrap());

    let (status, _, body) = call(&app, "GET", "/t/1").await;
    assert_eq!((status, body), (StatusCode::OK, serde_json::json!("a")));
    // A missing row: 404, and no probe of the connection.
    let (status, _, body) = call(&app, "GET", "/t/99").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "NOT_FOUND");
    let (status, _, body) = call(&app, "POST", "/t/new/a").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "CONSTRAINT_VIOLATION");
    assert_eq!(body["retryable"], false);
    let (status, _, body) = call(&app, "POST", "/t/new/toolong").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["code"], "INVALID_DATA");
    let (status, _, body) = call(&app, "POST", "/t/new/a%00b").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // The backend is terminated under the query: a lost connection, retryable for a GET.
    let slow = tokio::spawn({
        let app = app.clone();
        async move { call(&app, "GET", "/slow").await }
    });
    let mut terminated = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let which = Backends::ApplicationName(app_name.clone());
        if db::pg_backends(&url, &which)
            .await
            .iter()
            .any(|backend| backend.is_running("pg_sleep"))
        {
            terminated = db::pg_terminate(&url, &which).await;
            break;
        }
    }
    assert!(terminated >= 1, "the sleeping backend was found");
    let (status, headers, body) = slow.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "DB_CONNECTION_ERROR");
    assert_eq!(body["retryable"], true);
    assert!(headers.contains_key("retry-after"));
    // And the pool replaces it. (Every backend of the pool was terminated: an idle one is found
    // dead by the query that gets it — a retryable 503 again — and dropped.)
    let mut answers = Vec::new();
    for _ in 0..3 {
        let (status, _, _) = call(&app, "GET", "/t/1").await;
        answers.push(status);
        if status == StatusCode::OK {
            break;
        }
    }
    assert_eq!(answers.last(), Some(&StatusCode::OK), "{answers:?}");
}

#[tokio::test]
async fn a_checkout_that_fails_rejects_before_the_handler() {
    // Nothing listens on port 1: the checkout fails, nothing ran, the client may repeat a POST.
    let config = PoolConfig::from_url("postgres://u@127.0.0.1:1/db?connect_timeout=1").unwrap();
    let app = app(SharedPool::new(config).unwrap());
    let (status, headers, body) = call(&app, "POST", "/t/new/x").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "DB_CONNECTION_ERROR");
    assert_eq!(body["retryable"], true);
    assert!(headers.contains_key("retry-after"));

    // Without the layer: a 500 (a bug in the stack), not a panic.
    let bare: Router = Router::new().route("/t/{id}", get(read));
    let (status, _, body) = call(&bare, "GET", "/t/1").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["code"], "CRITICAL_ERROR");
}
