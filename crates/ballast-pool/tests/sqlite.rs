//! The pool over embedded SQLite: the same API on a file and in memory. Always runs.

use ballast_pool::{Backend, PoolConfig, SharedPool};
use diesel::sql_types::{BigInt, Text};
use diesel::sqlite::SqliteConnection;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};

type Pool = SharedPool<SyncConnectionWrapper<SqliteConnection>>;

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

async fn exercise(pool: &Pool) {
    let mut conn = pool.get().await.unwrap();
    conn.batch_execute(
        "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)",
    )
    .await
    .unwrap();
    drop(conn);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut conn = pool.get().await.unwrap();
                diesel::sql_query("INSERT INTO items (name) VALUES (?)")
                    .bind::<Text, _>(format!("item {i}"))
                    .execute(&mut *conn)
                    .await
                    .unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    // Another pooled connection sees every row.
    let mut conn = pool.get().await.unwrap();
    let count: Count = diesel::sql_query("SELECT count(*) AS count FROM items")
        .get_result(&mut *conn)
        .await
        .unwrap();
    assert_eq!(count.count, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_database_works_through_the_same_api() {
    let dir = std::env::temp_dir().join(ballast_testkit::db::unique_name("ballast_pool_sqlite"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!(
        "sqlite://{}?connection_limit=4",
        dir.join("app.db").display()
    );
    let config = PoolConfig::from_url(&url).unwrap();
    assert_eq!(config.backend(), Backend::Sqlite);
    let pool = Pool::new(config).unwrap();
    exercise(&pool).await;
    assert!(pool.stats().open <= 4);
    pool.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_database_is_shared_by_the_pool() {
    let pool =
        Pool::new(PoolConfig::from_url("sqlite::memory:?connection_limit=3").unwrap()).unwrap();
    exercise(&pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_statement_never_reaches_the_next_checkout() {
    let dir = std::env::temp_dir().join(ballast_testkit::db::unique_name("ballast_sqlite"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!(
        "sqlite://{}?connection_limit=1",
        dir.join("abandon.db").display()
    );
    let pool = Pool::new(PoolConfig::from_url(&url).unwrap()).unwrap();
    drop(pool.get().await.unwrap());
    // A statement SQLite spends a while on; diesel cannot interrupt it. diesel-async's wrapper
    // waits for it when its future is dropped, so the connection comes back idle.
    let busy = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) \
                SELECT count(*) AS count FROM c";
    let abandoned = tokio::time::timeout(std::time::Duration::from_millis(20), async {
        let mut conn = pool.get().await.unwrap();
        diesel::sql_query(busy)
            .get_result::<Count>(&mut *conn)
            .await
    });
    assert!(abandoned.await.is_err(), "abandoned");
    let mut conn = pool.get().await.unwrap();
    let count: Count = diesel::sql_query("SELECT 7 AS count")
        .get_result(&mut *conn)
        .await
        .unwrap();
    assert_eq!(count.count, 7, "the next checkout's own answer");
    drop(conn);
    let stats = pool.stats();
    assert_eq!((stats.open, stats.closed_broken, stats.connects), (1, 0, 1));
    let _ = std::fs::remove_dir_all(&dir);
}
