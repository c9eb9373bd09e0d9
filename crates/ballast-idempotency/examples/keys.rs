//! Keyed writes on an in-memory SQLite database: `cargo run -p ballast-idempotency --example keys`.
//!
//! Prints what a client sees for a keyed write, its repeat, the same key reused for another
//! request, and a request without a key.

use ballast_idempotency::{Idempotency, IdempotencyKey, Outcome};
use ballast_pool::{PoolConfig, SharedPool};
use diesel::sql_types::{BigInt, Text};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use http::StatusCode;

type Sqlite = SyncConnectionWrapper<diesel::SqliteConnection>;

#[derive(serde::Serialize, diesel::QueryableByName)]
struct Item {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(serde::Serialize)]
struct NewItem {
    name: String,
}

async fn create(
    pool: &SharedPool<Sqlite>,
    keys: &Idempotency,
    key: Option<&str>,
    name: &str,
) -> Result<Outcome, ballast_error::Error> {
    let key = key.map(IdempotencyKey::new).transpose()?;
    let mut conn = pool.get().await?;
    let request = NewItem {
        name: name.to_owned(),
    };
    let name = name.to_owned();
    keys.run(&mut *conn, key.as_ref(), &request, |conn| {
        Box::pin(async move {
            let item: Item =
                diesel::sql_query("INSERT INTO items (name) VALUES (?) RETURNING id, name")
                    .bind::<Text, _>(name)
                    .get_result(conn)
                    .await?;
            Ok((StatusCode::CREATED, item))
        })
    })
    .await
}

fn show(what: &str, result: Result<Outcome, ballast_error::Error>) {
    match result {
        Ok(outcome) => println!(
            "{what:<42} -> {} {}{}",
            outcome.status().as_u16(),
            String::from_utf8_lossy(outcome.body()),
            if outcome.is_replayed() {
                "  (Idempotent-Replayed: true)"
            } else {
                ""
            }
        ),
        Err(error) => {
            let problem = error.problem();
            println!("{what:<42} -> {} {}", problem.status.as_u16(), problem.code);
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool: SharedPool<Sqlite> = SharedPool::new(PoolConfig::from_url("sqlite::memory:")?)?;
    pool.get()
        .await?
        .batch_execute(
            "CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL)",
        )
        .await?;
    let keys = Idempotency::new();

    show(
        "POST lamp, Idempotency-Key: a1",
        create(&pool, &keys, Some("a1"), "lamp").await,
    );
    show(
        "POST lamp, Idempotency-Key: a1 (a repeat)",
        create(&pool, &keys, Some("a1"), "lamp").await,
    );
    show(
        "POST chair, Idempotency-Key: a1 (reused)",
        create(&pool, &keys, Some("a1"), "chair").await,
    );
    show(
        "POST lamp, no key",
        create(&pool, &keys, None, "lamp").await,
    );
    show(
        "POST desk, Idempotency-Key: (empty)",
        create(&pool, &keys, Some(""), "desk").await,
    );
    Ok(())
}
