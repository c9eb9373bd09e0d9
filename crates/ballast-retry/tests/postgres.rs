//! The retry layer in an axum app on the real PostgreSQL, with faults from the testkit proxy.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use ballast_error::{Error, ErrorResponseLayer};
use ballast_pool::{PoolConfig, SharedPool};
use ballast_retry::{RetryLayer, RetryLayerBuilder};
use ballast_testkit::db::{self, PgDatabase};
use ballast_testkit::fake::FakeServer;
use ballast_testkit::proxy::{FaultProxy, Mode};
use diesel::sql_types::{BigInt, Integer, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};

type Pool = SharedPool<AsyncPgConnection>;

#[derive(diesel::QueryableByName)]
struct Id {
    #[diesel(sql_type = Integer)]
    id: i32,
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// `GET /items` counts rows; `POST /items` inserts one (holding the statement `delay` seconds
/// first, so a fault can land while it runs) and answers its id.
fn app(pool: Pool, retry: RetryLayer, delay: f64) -> Router {
    Router::new()
        .route(
            "/items",
            get(|State(pool): State<Pool>| async move {
                let mut conn = pool.get().await?;
                let count: Count = diesel::sql_query("SELECT count(*) AS count FROM items")
                    .get_result(&mut *conn)
                    .await?;
                Ok::<_, Error>(Json(count.count))
            })
            .post(move |State(pool): State<Pool>, body: String| async move {
                let mut conn = pool.get().await?;
                let insert = diesel::sql_query(
                    "INSERT INTO items (name) SELECT $1 FROM pg_sleep($2) RETURNING id",
                )
                .bind::<Text, _>(body)
                .bind::<diesel::sql_types::Double, _>(delay)
                .get_result::<Id>(&mut *conn)
                .await;
                match insert {
                    Ok(row) => Ok((StatusCode::CREATED, Json(row.id))),
                    Err(error) => Err(Error::from(conn.classify(error).await)),
                }
            }),
        )
        .with_state(pool)
        .layer(
            ServiceBuilder::new()
                .layer(ErrorResponseLayer::new())
                .layer(retry),
        )
}

fn fast_retry() -> RetryLayerBuilder {
    RetryLayer::builder()
        .max_retries(5)
        .delays(Duration::from_millis(100), Duration::from_millis(400))
}

async fn send(app: &Router, method: &str, body: &str) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri("/items")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

async fn setup(url: &str) -> (PgDatabase, FaultProxy) {
    let database = PgDatabase::create(url).await;
    db::pg_execute(
        database.url(),
        "CREATE TABLE items (id serial PRIMARY KEY, name text)",
    )
    .await;
    let proxy = FaultProxy::start(db::socket_addr(url)).await.unwrap();
    (database, proxy)
}

fn pool_via(proxy: &FaultProxy, database: &PgDatabase, params: &str) -> Pool {
    let url = format!("{}?{params}", proxy.url(database.url()));
    SharedPool::new(PoolConfig::from_url(&url).unwrap()).unwrap()
}

/// Refuses connections now and lets them through again after `after`.
fn refuse_for(proxy: &FaultProxy, after: Duration) -> impl std::future::Future<Output = ()> + '_ {
    proxy.set_mode(Mode::Refuse);
    async move {
        proxy.wait_for_mode().await;
        let restore = async {
            tokio::time::sleep(after).await;
            proxy.set_mode(Mode::Pass);
        };
        restore.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_refused_for_a_moment_is_retried_and_succeeds() {
    let Some(url) = db::postgres_url("a_get_refused_for_a_moment") else {
        return;
    };
    let (database, proxy) = setup(&url).await;
    let retry = fast_retry().build().unwrap();
    let app = app(
        pool_via(&proxy, &database, "pool_timeout=5"),
        retry.clone(),
        0.0,
    );
    proxy.set_mode(Mode::Refuse);
    proxy.wait_for_mode().await;
    let (result, ()) = tokio::join!(send(&app, "GET", ""), async {
        tokio::time::sleep(Duration::from_millis(250)).await;
        proxy.set_mode(Mode::Pass);
    });
    println!(
        "scenario 13 (safe retry): {result:?}, {:?}",
        retry.handle().stats()
    );
    assert_eq!(result, (StatusCode::OK, "0".to_owned()));
    let stats = retry.handle().stats();
    assert!(stats.retries >= 1);
    assert!(
        stats.attempts <= 6,
        "never more attempts than set: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_could_not_get_a_connection_is_retried_and_writes_once() {
    let Some(url) = db::postgres_url("a_post_that_could_not_get_a_connection") else {
        return;
    };
    let (database, proxy) = setup(&url).await;
    let retry = fast_retry().build().unwrap();
    let app = app(
        pool_via(&proxy, &database, "pool_timeout=5"),
        retry.clone(),
        0.0,
    );
    let refusal = refuse_for(&proxy, Duration::from_millis(250));
    let (result, ()) = tokio::join!(send(&app, "POST", "lamp"), refusal);
    assert_eq!(result.0, StatusCode::CREATED, "{result:?}");
    assert!(retry.handle().stats().retries >= 1);
    assert_eq!(
        send(&app, "GET", "").await,
        (StatusCode::OK, "1".to_owned()),
        "written once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_reset_after_the_insert_was_sent_is_not_retried() {
    let Some(url) = db::postgres_url("a_post_reset_after_the_insert_was_sent") else {
        return;
    };
    let (database, proxy) = setup(&url).await;
    let retry = fast_retry().build().unwrap();
    let app = app(
        pool_via(&proxy, &database, "pool_timeout=5"),
        retry.clone(),
        0.3,
    );
    let (result, ()) = tokio::join!(send(&app, "POST", "lamp"), async {
        // The INSERT is on the server, sleeping, when every connection is reset.
        tokio::time::sleep(Duration::from_millis(150)).await;
        proxy.reset_all();
    });
    assert_eq!(result.0, StatusCode::SERVICE_UNAVAILABLE, "{result:?}");
    assert!(result.1.contains("DB_CONNECTION_ERROR"), "{}", result.1);
    let stats = retry.handle().stats();
    assert_eq!(stats.retries, 0, "{stats:?}");
    assert_eq!(stats.unsafe_to_repeat, 1);
    // The statement may have committed before the server noticed: at most one row.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let rows = count_rows(&database).await;
    assert!(rows <= 1, "{rows} rows");
}

async fn count_rows(database: &PgDatabase) -> i64 {
    let client = db::pg_connect(database.url()).await;
    client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_exist_exactly_once_under_resets() {
    let Some(url) = db::postgres_url("acknowledged_writes_exist_exactly_once") else {
        return;
    };
    let (database, proxy) = setup(&url).await;
    let retry = fast_retry().build().unwrap();
    let app = app(
        pool_via(&proxy, &database, "pool_timeout=5&connection_limit=4"),
        retry.clone(),
        0.02,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let chaos = {
        let stop = Arc::clone(&stop);
        let proxy = &proxy;
        async move {
            while !AtomicBool::load(&stop, Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(37)).await;
                proxy.reset_all();
            }
        }
    };
    let writes = async {
        let tasks: Vec<_> = (0..60)
            .map(|i| {
                let app = app.clone();
                tokio::spawn(async move { (i, send(&app, "POST", &format!("item-{i}")).await) })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        stop.store(true, Ordering::SeqCst);
        results
    };
    let (results, ()) = tokio::join!(writes, chaos);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A Jepsen-style set check: every acknowledged id is in the table exactly once, and no
    // name appears twice (nothing was written twice).
    let client = db::pg_connect(database.url()).await;
    let rows = client
        .query("SELECT id, name FROM items", &[])
        .await
        .unwrap();
    let ids: Vec<i32> = rows.iter().map(|row| row.get(0)).collect();
    let names: Vec<String> = rows.iter().map(|row| row.get(1)).collect();
    let unique_names: HashSet<&String> = names.iter().collect();
    assert_eq!(unique_names.len(), names.len(), "a write ran twice");
    let mut acknowledged = 0;
    for (i, (status, body)) in &results {
        match *status {
            StatusCode::CREATED => {
                acknowledged += 1;
                let id: i32 = body.parse().unwrap();
                assert_eq!(ids.iter().filter(|row| **row == id).count(), 1, "item-{i}");
            }
            // `retryable: true` is a promise that nothing ran: the name is not in the table.
            // Otherwise the outcome is unknown, and the answer says so.
            StatusCode::SERVICE_UNAVAILABLE if body.contains("\"retryable\":true") => {
                let name = format!("item-{i}");
                assert!(!names.contains(&name), "{name} was written: {body}");
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(body.contains("\"outcome\":\"unknown\""), "{body}");
            }
            other => panic!("item-{i}: unexpected {other}: {body}"),
        }
    }
    println!(
        "scenario 14 (no duplicate writes): {acknowledged} of 60 acknowledged, {} rows, {:?}",
        rows.len(),
        retry.handle().stats()
    );
    assert!(rows.len() >= acknowledged);
    assert!(rows.len() <= 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_down_outages_are_answered_at_once_within_the_budget() {
    let Some(url) = db::postgres_url("with_the_database_down_attempts_stay_within_the_budget")
    else {
        return;
    };
    let (database, proxy) = setup(&url).await;
    // A tight budget: 5 retries a second over a 1 s window, plus 10 % of requests.
    let retry = fast_retry()
        .budget(Duration::from_secs(1), 5, 0.1)
        .build()
        .unwrap();
    let app = app(
        pool_via(&proxy, &database, "pool_timeout=2"),
        retry.clone(),
        0.0,
    );
    proxy.set_mode(Mode::Refuse);
    proxy.wait_for_mode().await;
    // Sustained load: 200 requests over about two seconds.
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move { send(&app, "GET", "").await }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("\"retryable\":true"));
    }
    let stats = retry.handle().stats();
    println!("scenario 15 (database down): {stats:?}");

    // Without a budget these 200 requests could retry up to 1,000 times; with the pool's gate
    // closed they are answered at once, and only requests that met a real connect attempt may
    // retry (the budget bounds those; `layer.rs` checks it under blips).
    assert!(stats.retries <= 60, "{stats:?}");
    assert!(stats.outages >= 150, "{stats:?}");
    assert_eq!(stats.attempts, 200 + stats.retries);
}

#[tokio::test]
async fn non_retryable_database_failures_are_never_retried() {
    let Some(url) = db::postgres_url("non_retryable_database_failures") else {
        return;
    };
    let wrong_password = FakeServer::postgres("28P01", "password authentication failed")
        .await
        .unwrap();
    let missing = db::with_database(&url, &db::unique_name("ballast_missing"));
    for pool_url in [wrong_password.url("app"), missing] {
        let retry = fast_retry().build().unwrap();
        let pool = SharedPool::new(PoolConfig::from_url(&pool_url).unwrap()).unwrap();
        let app = app(pool, retry.clone(), 0.0);
        let (status, body) = send(&app, "GET", "").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("DB_INIT_ERROR"), "{body}");
        let stats = retry.handle().stats();
        assert_eq!((stats.attempts, stats.retries), (1, 0), "{stats:?}");
    }
    // A syntax error, through the same stack: 500, one attempt.
    let database = PgDatabase::create(&url).await;
    let pool = SharedPool::new(PoolConfig::from_url(database.url()).unwrap()).unwrap();
    let retry = fast_retry().build().unwrap();
    let app = app(pool, retry.clone(), 0.0); // no `items` table: the query fails
    let (status, _) = send(&app, "GET", "").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(retry.handle().stats().retries, 0);
}
