//! The trace fields each layer writes, through the whole `Stack` on an in-memory SQLite pool.

use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use tower::{Layer, ServiceExt};

use ballast::cache::CacheRouteLayer;
use ballast::pool::{Conn, PoolConfig, SharedPool};
use ballast::prelude::SimpleAsyncConnection;
use ballast::Stack;
use ballast_testkit::logs::Captured;

type Sqlite = SyncConnectionWrapper<diesel::SqliteConnection>;

#[tokio::test(flavor = "current_thread")]
async fn each_layer_writes_its_stable_fields() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let pool = SharedPool::<Sqlite>::new(PoolConfig::from_url("sqlite::memory:").unwrap()).unwrap();
    let stack = Stack::builder(pool).build();
    async fn one(mut conn: Conn<Sqlite>) -> Result<&'static str, ballast::Error> {
        conn.batch_execute("SELECT 1").await?;
        Ok("one")
    }
    async fn refused() -> Result<&'static str, ballast::Error> {
        // Nothing ran: the retry layer may repeat it.
        Err(ballast::sqlstate::failure("53300").into())
    }
    let router = Router::new()
        .route(
            "/one",
            get(one).layer(CacheRouteLayer::ttl(Duration::from_secs(30))),
        )
        .route("/refused", get(refused));
    let app = stack.layer().layer(router);
    for _ in 0..2 {
        let request = http::Request::get("/one").body(Body::empty()).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let request = http::Request::get("/refused").body(Body::empty()).unwrap();
    assert_eq!(app.clone().oneshot(request).await.unwrap().status(), 503);
    let log = captured.take();
    for field in [
        "cache.event=\"miss\"",
        "cache.event=\"hit\"",
        "db.client.connection.pool.name=\"ballast\"",
        "pool.outcome=\"checked_out\"",
        "pool.wait_us=",
        "retry.attempt=2",
        "retry.delay_ms=",
        "code=\"DB_CONNECTION_ERROR\"",
    ] {
        assert!(log.contains(field), "{field} is missing from:\n{log}");
    }
}
