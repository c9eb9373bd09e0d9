//! Keyed writes against the real PostgreSQL and MariaDB, and SQLite: written once, replayed,
//! refused when reused or in use, forgotten after the TTL.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ballast_idempotency::{Idempotency, IdempotencyKey, KeyStore, Work};
use ballast_pool::{Connect, PoolConfig, SharedPool};
use ballast_testkit::db::{self, MysqlDatabase, PgDatabase};
use diesel::sql_types::{BigInt, Text};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use http::StatusCode;

#[derive(Debug, serde::Serialize, diesel::QueryableByName)]
struct Item {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(Debug, serde::Serialize)]
struct NewItem<'a> {
    name: &'a str,
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

type Counting<'c> = Pin<Box<dyn Future<Output = i64> + Send + 'c>>;

/// One backend: its pool, its `items` table, how it inserts and counts.
struct Backend<C: Connect> {
    pool: SharedPool<C>,
    insert: for<'c> fn(&'c mut C, String, Arc<AtomicUsize>) -> Work<'c, Item>,
    count: for<'c> fn(&'c mut C, String) -> Counting<'c>,
    /// Whether a concurrent repeat is refused (409) rather than made to wait.
    refuses_concurrent: bool,
}

async fn count<C: Connect>(backend: &Backend<C>, name: &str) -> i64 {
    let mut conn = backend.pool.get().await.unwrap();
    (backend.count)(&mut *conn, name.to_owned()).await
}

fn runs_of(runs: &AtomicUsize) -> usize {
    runs.load(Ordering::SeqCst)
}

fn key(text: &str) -> IdempotencyKey {
    IdempotencyKey::new(text).unwrap()
}

async fn write<C: Connect + KeyStore>(
    backend: &Backend<C>,
    keys: &Idempotency,
    key_text: Option<&str>,
    name: &str,
    runs: &Arc<AtomicUsize>,
) -> Result<ballast_idempotency::Outcome, ballast_error::Error> {
    let mut conn = backend.pool.get().await.unwrap();
    let insert = backend.insert;
    let (name_owned, runs) = (name.to_owned(), Arc::clone(runs));
    keys.run(
        &mut *conn,
        key_text.map(key).as_ref(),
        &NewItem { name },
        move |conn| insert(conn, name_owned, runs),
    )
    .await
}

async fn exercise<C: Connect + KeyStore>(backend: Backend<C>, label: &str) {
    let keys = Idempotency::new();
    let runs = Arc::new(AtomicUsize::new(0));

    // A new key: the work runs and its outcome is recorded with the key.
    let first = write(&backend, &keys, Some("k-1"), "lamp", &runs)
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED, "{label}");
    assert!(!first.is_replayed());
    // The same key again: the recorded outcome, and the work does not run.
    let again = write(&backend, &keys, Some("k-1"), "lamp", &runs)
        .await
        .unwrap();
    assert!(again.is_replayed(), "{label}");
    assert_eq!(
        (again.status(), again.body()),
        (first.status(), first.body())
    );
    assert_eq!(runs_of(&runs), 1, "{label}: the work ran once");
    assert_eq!(count(&backend, "lamp").await, 1, "{label}: one row");

    // The same key for another request: refused.
    let reused = write(&backend, &keys, Some("k-1"), "chair", &runs)
        .await
        .unwrap_err();
    assert_eq!(
        reused.problem().status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{label}"
    );
    assert_eq!(reused.problem().code, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(count(&backend, "chair").await, 0);

    // Keys are compared byte for byte on every backend (MariaDB's default collation would make
    // `K-1` the same key as `k-1`): another case is another key.
    let cased = write(&backend, &keys, Some("K-1"), "chair", &runs)
        .await
        .unwrap();
    assert!(!cased.is_replayed(), "{label}: K-1 replayed k-1");
    assert_eq!(cased.status(), StatusCode::CREATED, "{label}");
    assert_eq!(count(&backend, "chair").await, 1, "{label}");

    // Scoped keys: the same key and request from another principal is another key (it runs,
    // and nobody reads Alice's response with her key); the same principal replays.
    let scoped = |scope: &str| Some(key("k-scoped").scoped(scope));
    let mut outcomes = Vec::new();
    for scope in ["alice", "bob", "alice"] {
        let mut conn = backend.pool.get().await.unwrap();
        let insert = backend.insert;
        let runs_now = Arc::clone(&runs);
        let outcome = keys
            .run(
                &mut *conn,
                scoped(scope).as_ref(),
                &NewItem { name: "desk" },
                move |conn| insert(conn, "desk".to_owned(), runs_now),
            )
            .await
            .unwrap();
        outcomes.push(outcome.is_replayed());
    }
    assert_eq!(
        outcomes,
        [false, false, true],
        "{label}: alice, bob, alice again"
    );
    assert_eq!(count(&backend, "desk").await, 2, "{label}: one row each");

    // No key: runs every time, records nothing.
    write(&backend, &keys, None, "stool", &runs).await.unwrap();
    write(&backend, &keys, None, "stool", &runs).await.unwrap();
    assert_eq!(count(&backend, "stool").await, 2);

    // A work that fails rolls back with its key: the repeat runs again.
    let failed = write(&backend, &keys, Some("k-fail"), "fail", &runs)
        .await
        .unwrap_err();
    assert_eq!(failed.problem().code, "REFUSED", "{label}");
    assert_eq!(count(&backend, "fail").await, 0, "{label}: rolled back");
    let before = runs_of(&runs);
    let failed = write(&backend, &keys, Some("k-fail"), "fail", &runs)
        .await
        .unwrap_err();
    assert_eq!(failed.problem().code, "REFUSED");
    assert_eq!(runs_of(&runs), before + 1, "nothing was recorded");

    // A concurrent repeat while the first still runs ("slow" sleeps inside the transaction).
    let first = {
        let keys = keys.clone();
        let (pool, insert, runs) = (backend.pool.clone(), backend.insert, Arc::clone(&runs));
        let count = backend.count;
        tokio::spawn(async move {
            let backend = Backend {
                pool,
                insert,
                count,
                refuses_concurrent: false,
            };
            write(&backend, &keys, Some("k-slow"), "slow", &runs).await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let concurrent = write(&backend, &keys, Some("k-slow"), "slow", &runs).await;
    let first = first.await.unwrap().unwrap();
    assert!(!first.is_replayed());
    if backend.refuses_concurrent {
        let refused = concurrent.unwrap_err();
        let problem = refused.problem();
        assert_eq!(problem.status, StatusCode::CONFLICT, "{label}");
        assert_eq!(problem.code, "IDEMPOTENCY_KEY_IN_USE");
        assert!(problem.retryable, "come back in a moment");
    } else {
        // SQLite: the repeat waited for the first writer and replays it.
        let replayed = concurrent.unwrap();
        assert!(replayed.is_replayed(), "{label}");
        assert_eq!(replayed.body(), first.body());
    }
    assert_eq!(count(&backend, "slow").await, 1, "{label}");

    // After the TTL a key is forgotten: the same key writes again, and purging removes keys.
    let short = Idempotency::new().ttl(Duration::from_millis(200));
    write(&backend, &short, Some("k-ttl"), "ttl", &runs)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = write(&backend, &short, Some("k-ttl"), "ttl", &runs)
        .await
        .unwrap();
    assert!(!later.is_replayed(), "{label}: expired");
    assert_eq!(count(&backend, "ttl").await, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut conn = backend.pool.get().await.unwrap();
    let purged = short.purge_expired(&mut *conn).await.unwrap();
    assert!(purged >= 1, "{label}: {purged}");
    println!("{label}: keyed writes behave; {purged} expired keys purged");
}

/// The work every backend runs — insert `name`, sleep inside the transaction for "slow", fail
/// for "fail" — and how it counts rows of a name.
macro_rules! backend_fns {
    ($name:ident, $count:ident, $conn:ty, $sql:expr, $count_sql:expr) => {
        fn $count(conn: &mut $conn, name: String) -> Counting<'_> {
            Box::pin(async move {
                let row: Count = diesel::sql_query($count_sql)
                    .bind::<Text, _>(name)
                    .get_result(conn)
                    .await
                    .unwrap();
                row.count
            })
        }

        fn $name(conn: &mut $conn, name: String, runs: Arc<AtomicUsize>) -> Work<'_, Item> {
            Box::pin(async move {
                runs.fetch_add(1, Ordering::SeqCst);
                let item: Item = diesel::sql_query($sql)
                    .bind::<Text, _>(&name)
                    .get_result(conn)
                    .await?;
                match name.as_str() {
                    "slow" => tokio::time::sleep(Duration::from_millis(400)).await,
                    "fail" => {
                        return Err(ballast_error::Error::new(
                            StatusCode::CONFLICT,
                            "REFUSED",
                            "The work refused.",
                        ))
                    }
                    _ => {}
                }
                Ok((StatusCode::CREATED, item))
            })
        }
    };
}

backend_fns!(
    insert_postgres,
    count_postgres,
    diesel_async::AsyncPgConnection,
    "INSERT INTO items (name) VALUES ($1) RETURNING id",
    "SELECT COUNT(*) AS count FROM items WHERE name = $1"
);
backend_fns!(
    insert_mysql,
    count_mysql,
    diesel_async::AsyncMysqlConnection,
    "INSERT INTO items (name) VALUES (?) RETURNING id",
    "SELECT COUNT(*) AS count FROM items WHERE name = ?"
);
type Sqlite =
    diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>;
backend_fns!(
    insert_sqlite,
    count_sqlite,
    Sqlite,
    "INSERT INTO items (name) VALUES (?) RETURNING id",
    "SELECT COUNT(*) AS count FROM items WHERE name = ?"
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_writes_on_postgresql() {
    let Some(url) = db::postgres_url("keyed_writes_on_postgresql") else {
        return;
    };
    let database = PgDatabase::create(&url).await;
    db::pg_execute(
        database.url(),
        "CREATE TABLE items (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL)",
    )
    .await;
    let pool = SharedPool::new(PoolConfig::from_url(database.url()).unwrap()).unwrap();
    exercise(
        Backend {
            pool,
            insert: insert_postgres,
            count: count_postgres,
            refuses_concurrent: true,
        },
        "PostgreSQL",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_writes_on_mariadb() {
    let Some(url) = db::mysql_url("keyed_writes_on_mariadb") else {
        return;
    };
    let database = MysqlDatabase::create(&url).await;
    db::mysql_execute(
        database.url(),
        &["CREATE TABLE items (id BIGINT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(255) NOT NULL)"],
    )
    .await;
    let pool = SharedPool::new(PoolConfig::from_url(database.url()).unwrap()).unwrap();
    exercise(
        Backend {
            pool,
            insert: insert_mysql,
            count: count_mysql,
            refuses_concurrent: true,
        },
        "MariaDB",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_writes_on_sqlite() {
    let dir = std::env::temp_dir().join(db::unique_name("ballast_keys"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("keys.db").display());
    let pool: SharedPool<Sqlite> = SharedPool::new(PoolConfig::from_url(&url).unwrap()).unwrap();
    pool.get()
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL)",
        )
        .await
        .unwrap();
    exercise(
        Backend {
            pool,
            insert: insert_sqlite,
            count: count_sqlite,
            refuses_concurrent: false,
        },
        "SQLite",
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}
