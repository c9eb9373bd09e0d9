//! `IdempotencyLayer` around ordinary axum handlers, against the real PostgreSQL and MariaDB:
//! the handler keeps its `Conn` and its typed response, its writes commit with the key, a repeat
//! is replayed with the handler's own headers, a failure records nothing and rolls the writes
//! back, keys are scoped, and a key in use is refused.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::{CONTENT_TYPE, LOCATION};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use ballast_idempotency::{IdempotencyLayer, KeyStore};
use ballast_pool::{AddPoolLayer, Conn, Connect, PoolConfig, SharedPool};
use ballast_testkit::db::{self, MysqlDatabase, PgDatabase};
use diesel::sql_types::{BigInt, Text};
use diesel_async::RunQueryDsl;
use http_body_util::BodyExt;
use tokio::sync::Semaphore;
use tower::ServiceExt;

#[derive(Debug, serde::Serialize, diesel::QueryableByName)]
struct Item {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// What a test asks the handler to do after its insert.
#[derive(serde::Deserialize, serde::Serialize)]
struct NewItem {
    name: String,
    /// `"fail"`: answer 500 after the insert; `"conflict"`: answer 409 after the insert;
    /// `"hold"`: wait for the test's permit before answering.
    #[serde(default)]
    then: String,
}

/// The handler's shared state: how often it ran, and the gate `"hold"` waits at.
#[derive(Clone)]
struct App {
    runs: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

/// A handler and a row count per backend: the same code, each backend's SQL.
macro_rules! backend {
    ($module:ident, $conn:ty, $insert:expr, $count:expr) => {
        mod $module {
            use super::*;

            pub(crate) async fn create(
                State(app): State<App>,
                mut db: Conn<$conn>,
                Json(new): Json<NewItem>,
            ) -> Result<
                (
                    StatusCode,
                    [(axum::http::HeaderName, String); 1],
                    Json<Item>,
                ),
                ballast_error::Error,
            > {
                app.runs.fetch_add(1, Ordering::SeqCst);
                let item: Item = diesel::sql_query($insert)
                    .bind::<Text, _>(&new.name)
                    .get_result(&mut *db)
                    .await?;
                match new.then.as_str() {
                    "fail" => {
                        return Err(ballast_error::Error::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "CRITICAL_ERROR",
                            "made to fail",
                        ))
                    }
                    "conflict" => {
                        return Err(ballast_error::Error::new(
                            StatusCode::CONFLICT,
                            "CONFLICT",
                            "made to conflict",
                        ))
                    }
                    "hold" => drop(app.gate.acquire().await.unwrap()),
                    _ => {}
                }
                let location = format!("/items/{}", item.id);
                Ok((StatusCode::CREATED, [(LOCATION, location)], Json(item)))
            }

            pub(crate) async fn count(pool: &SharedPool<$conn>, name: &str) -> i64 {
                let mut conn = pool.get().await.unwrap();
                let count: Count = diesel::sql_query($count)
                    .bind::<Text, _>(name)
                    .get_result(&mut *conn)
                    .await
                    .unwrap();
                count.count
            }
        }
    };
}

backend!(
    pg,
    diesel_async::AsyncPgConnection,
    "INSERT INTO items (name) VALUES ($1) RETURNING id",
    "SELECT COUNT(*) AS count FROM items WHERE name = $1"
);
backend!(
    maria,
    diesel_async::AsyncMysqlConnection,
    "INSERT INTO items (name) VALUES (?) RETURNING id",
    "SELECT CAST(COUNT(*) AS SIGNED) AS count FROM items WHERE name = ?"
);

fn request(
    key: Option<&str>,
    user: Option<&str>,
    name: &str,
    then: &str,
) -> Request<axum::body::Body> {
    let mut request = Request::post("/items").header(CONTENT_TYPE, "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    if let Some(user) = user {
        request = request.header("x-user", user);
    }
    let body = serde_json::to_vec(&NewItem {
        name: name.to_owned(),
        then: then.to_owned(),
    })
    .unwrap();
    request.body(axum::body::Body::from(body)).unwrap()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: serde_json::Value,
}

async fn send(app: &Router, request: Request<axum::body::Body>) -> Answer {
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    }
}

async fn exercise<C, H, T, Count>(pool: SharedPool<C>, create: H, count: Count, label: &str)
where
    C: Connect + KeyStore,
    H: axum::handler::Handler<T, App> + Clone + Send + Sync + 'static,
    T: 'static,
    Count: AsyncFn(&SharedPool<C>, &str) -> i64,
{
    let state = App {
        runs: Arc::new(AtomicUsize::new(0)),
        gate: Arc::new(Semaphore::new(0)),
    };
    let layer = IdempotencyLayer::<C>::new().scope(|request| {
        request
            .headers
            .get("x-user")
            .and_then(|user| user.to_str().ok())
            .map(str::to_owned)
    });
    let app: Router = Router::new()
        .route("/items", post(create).layer(layer))
        .with_state(state.clone())
        .layer(AddPoolLayer::new(pool.clone()));
    let runs = || AtomicUsize::load(&state.runs, Ordering::SeqCst);

    // A new key: the handler's typed response, as it made it.
    let first = send(&app, request(Some("k-1"), None, "lamp", "")).await;
    assert_eq!(
        first.status,
        StatusCode::CREATED,
        "{label}: {:?}",
        first.body
    );
    let id = first.body["id"].as_i64().expect("the handler's JSON");
    assert_eq!(first.headers[LOCATION], format!("/items/{id}"), "{label}");
    assert!(first.headers.get("idempotent-replayed").is_none());
    // The repeat: the recorded response, with the handler's own headers, and no second write.
    let again = send(&app, request(Some("k-1"), None, "lamp", "")).await;
    assert_eq!(again.status, StatusCode::CREATED, "{label}");
    assert_eq!(again.body, first.body, "{label}");
    assert_eq!(again.headers[LOCATION], first.headers[LOCATION], "{label}");
    assert_eq!(again.headers[CONTENT_TYPE], "application/json", "{label}");
    assert_eq!(again.headers["idempotent-replayed"], "true", "{label}");
    assert_eq!(runs(), 1, "{label}: the handler ran once");
    assert_eq!(count(&pool, "lamp").await, 1, "{label}: one row");

    // The same key with another body is another request: refused, nothing written.
    let reused = send(&app, request(Some("k-1"), None, "chair", "")).await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY, "{label}");
    assert_eq!(reused.body["code"], "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(count(&pool, "chair").await, 0, "{label}");

    // Scoped: the same key and request from another user runs for that user; each user's
    // repeat replays their own response.
    let alice = send(&app, request(Some("k-1"), Some("alice"), "lamp", "")).await;
    assert_eq!(alice.status, StatusCode::CREATED, "{label}");
    assert!(
        alice.headers.get("idempotent-replayed").is_none(),
        "{label}: another scope"
    );
    assert_ne!(alice.body, first.body);
    let alice_again = send(&app, request(Some("k-1"), Some("alice"), "lamp", "")).await;
    assert_eq!(alice_again.body, alice.body, "{label}");
    assert_eq!(count(&pool, "lamp").await, 2, "{label}");

    // A handler that wrote and then failed: its write is rolled back, nothing is recorded, and
    // the repeat runs again (and may succeed).
    let before = runs();
    let failed = send(&app, request(Some("k-2"), None, "vase", "fail")).await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR, "{label}");
    let conflict = send(&app, request(Some("k-3"), None, "vase", "conflict")).await;
    assert_eq!(conflict.status, StatusCode::CONFLICT, "{label}");
    assert_eq!(
        count(&pool, "vase").await,
        0,
        "{label}: the writes were rolled back"
    );
    let failed_again = send(&app, request(Some("k-2"), None, "vase", "fail")).await;
    assert_eq!(failed_again.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(failed_again.headers.get("idempotent-replayed").is_none());
    assert_eq!(runs(), before + 3, "{label}: failures are not recorded");

    // While the first request with a key runs, its write is not visible (it commits with the
    // key), and a repeat is refused as in use.
    let held = tokio::spawn({
        let app = app.clone();
        async move { send(&app, request(Some("k-4"), None, "desk", "hold")).await }
    });
    let started = std::time::Instant::now();
    while runs() < before + 4 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{label}: held request"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        count(&pool, "desk").await,
        0,
        "{label}: uncommitted while running"
    );
    let in_use = send(&app, request(Some("k-4"), None, "desk", "hold")).await;
    assert_eq!(in_use.status, StatusCode::CONFLICT, "{label}");
    assert_eq!(in_use.body["code"], "IDEMPOTENCY_KEY_IN_USE");
    assert_eq!(in_use.body["retryable"], true);
    state.gate.add_permits(1);
    let held = held.await.unwrap();
    assert_eq!(held.status, StatusCode::CREATED, "{label}");
    assert_eq!(
        count(&pool, "desk").await,
        1,
        "{label}: committed with the key"
    );

    // Without a key the handler runs as usual, each time.
    send(&app, request(None, None, "rug", "")).await;
    send(&app, request(None, None, "rug", "")).await;
    assert_eq!(count(&pool, "rug").await, 2, "{label}");
    // A malformed key is a 400 problem; nothing runs.
    let malformed = send(&app, request(Some("has space"), None, "rug", "")).await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST, "{label}");
    assert_eq!(count(&pool, "rug").await, 2, "{label}");
}

#[tokio::test]
async fn keyed_routes_on_postgresql() {
    let Some(url) = db::postgres_url("keyed_routes_on_postgresql") else {
        return;
    };
    let database = PgDatabase::create(&url).await;
    db::pg_execute(
        database.url(),
        "CREATE TABLE items (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL)",
    )
    .await;
    let pool = SharedPool::new(PoolConfig::from_url(database.url()).unwrap()).unwrap();
    exercise(pool, pg::create, pg::count, "postgres").await;
}

#[tokio::test]
async fn keyed_routes_on_mariadb() {
    let Some(url) = db::mysql_url("keyed_routes_on_mariadb") else {
        return;
    };
    let database = MysqlDatabase::create(&url).await;
    db::mysql_execute(
        database.url(),
        &["CREATE TABLE items (id BIGINT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(255) NOT NULL)"],
    )
    .await;
    let pool = SharedPool::new(PoolConfig::from_url(database.url()).unwrap()).unwrap();
    exercise(pool, maria::create, maria::count, "mariadb").await;
}
