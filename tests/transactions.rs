//! Transactions through `Conn`, as the README's "Transactions" section shows them: a failure
//! inside one rolls back every write of it and answers with that failure; a request whose
//! transaction committed is never run again by the retry layer, even when it fails afterwards.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use axum::Router;
use ballast::pool::{Conn, PoolConfig, SharedPool};
use ballast::prelude::*;
use ballast::{Error, Stack};
use ballast_testkit::db::{self, PgDatabase};
use diesel::sql_types::Integer;
use tower::{Layer, ServiceExt};

type Pool = SharedPool<AsyncPgConnection>;

/// Moves `amount` from one account to another: both writes or neither.
async fn transfer(
    Path((from, to, amount)): Path<(i32, i32, i32)>,
    mut db: Conn<AsyncPgConnection>,
) -> Result<&'static str, Error> {
    db.transaction::<_, Error, _>(async |conn| {
        diesel::sql_query("UPDATE accounts SET balance = balance - $1 WHERE id = $2")
            .bind::<Integer, _>(amount)
            .bind::<Integer, _>(from)
            .execute(conn)
            .await?;
        let credited =
            diesel::sql_query("UPDATE accounts SET balance = balance + $1 WHERE id = $2")
                .bind::<Integer, _>(amount)
                .bind::<Integer, _>(to)
                .execute(conn)
                .await?;
        if credited == 0 {
            return Err(Error::new(
                StatusCode::NOT_FOUND,
                "ACCOUNT_NOT_FOUND",
                "No account has that id.",
            ));
        }
        Ok(())
    })
    .await?;
    Ok("moved")
}

async fn balances(pool: &Pool) -> Vec<(i32, i32)> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = Integer)]
        id: i32,
        #[diesel(sql_type = Integer)]
        balance: i32,
    }
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query("SELECT id, balance FROM accounts ORDER BY id")
        .load::<Row>(&mut *conn)
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.id, row.balance))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_inside_a_transaction_rolls_it_back_and_is_the_answer() {
    let Some(url) = db::postgres_url("a_failure_inside_a_transaction_rolls_it_back") else {
        return;
    };
    let database = PgDatabase::create(&url).await;
    db::pg_execute(
        database.url(),
        "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL CHECK (balance >= 0));
         INSERT INTO accounts VALUES (1, 100), (2, 100);",
    )
    .await;
    let pool = Pool::new(PoolConfig::from_url(database.url()).unwrap()).unwrap();
    let stack = Stack::builder(pool.clone()).build();
    let app = stack
        .layer()
        .layer(Router::new().route("/transfer/{from}/{to}/{amount}", post(transfer)));
    let send = |uri: &str| {
        let app = app.clone();
        let request = Request::post(uri).body(Body::empty()).unwrap();
        async move {
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(Body::new(response.into_body()), 1 << 16)
                .await
                .unwrap();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };

    assert_eq!(send("/transfer/1/2/10").await.0, StatusCode::OK);
    assert_eq!(balances(&pool).await, [(1, 90), (2, 110)]);

    // The second write finds no account: the application's own problem, the first write undone.
    let (status, body) = send("/transfer/1/99/10").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("ACCOUNT_NOT_FOUND"), "{body}");
    assert_eq!(balances(&pool).await, [(1, 90), (2, 110)]);

    // The first write breaks the CHECK: a classified failure (422), nothing written, not retried.
    let (status, body) = send("/transfer/1/2/1000").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("\"retryable\":false"), "{body}");
    assert_eq!(balances(&pool).await, [(1, 90), (2, 110)]);
    assert_eq!(stack.retry().stats().retries, 0);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_transaction_is_never_run_again_by_a_retry() {
    let Some(url) = db::postgres_url("a_committed_transaction_is_never_run_again") else {
        return;
    };
    let database = PgDatabase::create(&url).await;
    db::pg_execute(
        database.url(),
        "CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL)",
    )
    .await;
    // One connection: the handler's second checkout, while it holds the first, cannot be served.
    let config = PoolConfig::from_url(&format!(
        "{}?connection_limit=1&pool_timeout=0.3",
        database.url()
    ))
    .unwrap();
    let pool = Pool::new(config).unwrap();
    let stack = Stack::builder(pool.clone()).build();
    let second = pool.clone();
    let app = stack.layer().layer(Router::new().route(
        "/orders",
        post(move |mut db: Conn<AsyncPgConnection>| {
            let second = second.clone();
            async move {
                db.transaction::<_, Error, _>(async |conn| {
                    diesel::sql_query("INSERT INTO orders (item) VALUES ('lamp')")
                        .execute(conn)
                        .await?;
                    Ok(())
                })
                .await?;
                // Committed. Then a retryable failure: the pool cannot give a second
                // connection in time (nothing of *this* checkout was sent).
                let _audit = second.get().await?;
                Ok::<_, Error>("ordered")
            }
        }),
    ));
    let request = Request::post("/orders").body(Body::empty()).unwrap();
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(Body::new(response.into_body()), 1 << 16)
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // The request already wrote: a repeat may order twice, so the client is not invited to.
    assert!(body.contains("\"retryable\":false"), "{body}");
    assert!(body.contains("\"outcome\":\"unknown\""), "{body}");
    assert_eq!(stack.retry().stats().retries, 0, "the transaction ran once");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let rows = db::pg_connect(database.url())
        .await
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(rows, 1);
    pool.close().await;
}
