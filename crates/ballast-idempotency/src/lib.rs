//! Exactly-once writes for requests that carry an `Idempotency-Key`.
//!
//! A client that is told `"retryable": true` repeats its request. For a read that is always
//! safe; for a write whose connection broke after the `INSERT` went out, nobody knows whether it
//! committed, and repeating it may write twice. The standard answer is an idempotency key (the
//! IETF httpapi `Idempotency-Key` header draft; Stripe's API is its best-known user): the client
//! sends a unique key with the write and the same key with every repeat, and the service records
//! the key **in the same transaction as the write**, so a repeat finds the first outcome instead
//! of writing again.
//!
//! # Contract
//!
//! [`IdempotencyLayer`] makes a route exactly-once for keyed requests, around an ordinary handler
//! that takes its connection as `Conn` and answers its own typed response (see its docs and the
//! example below). [`Idempotency::run`] does the same for one piece of work, where there is no
//! route to wrap (a queue consumer, a handler that chooses per request):
//!
//! | the request | what happens |
//! |---|---|
//! | has no key | the work runs as usual; nothing is recorded |
//! | has a new key | the work runs in a transaction that also records the key, a fingerprint of the request and the outcome (status and body) |
//! | repeats a recorded key, same request | the work does not run; the recorded outcome is answered again, with `Idempotent-Replayed: true` |
//! | repeats a key whose first request still runs | 409 `IDEMPOTENCY_KEY_IN_USE`, `retryable: true` (SQLite: waits, then replays) |
//! | reuses a key for another request | 422 `IDEMPOTENCY_KEY_REUSED` |
//! | has a malformed key | 400 `INVALID_IDEMPOTENCY_KEY` |
//!
//! Because the key guards it, a database failure of a keyed request is
//! [idempotent](ballast_core::Failure::with_idempotent): a `POST` whose `COMMIT` may or may not
//! have happened is answered `503` with `"retryable": true`, and repeating it with the same key
//! either replays the committed outcome or writes once. Inside a request scope (ballast-error's
//! `RequestTimeoutLayer`), the key guards the whole request: a checkout that fails after an
//! attempt of the work ran is safe to repeat too. Keys expire after a day (a setting);
//! [`Idempotency::purge_expired`] deletes old ones.
//!
//! The keys live in a table, `ballast_idempotency`, in the same database as the writes (that is
//! what makes the write and its key one transaction). The first keyed request creates it, or a
//! migration does ([`POSTGRES_SCHEMA`], [`MYSQL_SCHEMA`], [`SQLITE_SCHEMA`]). A concurrent
//! repeat is detected with PostgreSQL's transaction-scoped advisory lock or MySQL's `GET_LOCK`,
//! neither of which waits.
//!
//! # Example
//!
//! A keyed write is as short as an unkeyed one: the handler is the same, the route gets the
//! layer.
//!
//! ```
//! use axum::{http::StatusCode, routing::post, Json, Router};
//! use ballast_idempotency::IdempotencyLayer;
//! use ballast_pool::{AddPoolLayer, Conn, PoolConfig, SharedPool};
//! use diesel::sql_types::{BigInt, Text};
//! use diesel_async::{AsyncPgConnection, RunQueryDsl};
//!
//! #[derive(serde::Deserialize)]
//! struct NewItem {
//!     name: String,
//! }
//!
//! #[derive(serde::Serialize, diesel::QueryableByName)]
//! struct Item {
//!     #[diesel(sql_type = BigInt)]
//!     id: i64,
//! }
//!
//! async fn create(
//!     mut db: Conn<AsyncPgConnection>,
//!     Json(new): Json<NewItem>,
//! ) -> Result<(StatusCode, Json<Item>), ballast_error::Error> {
//!     let item = diesel::sql_query("INSERT INTO items (name) VALUES ($1) RETURNING id")
//!         .bind::<Text, _>(new.name)
//!         .get_result(&mut *db)
//!         .await?;
//!     Ok((StatusCode::CREATED, Json(item)))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = SharedPool::<AsyncPgConnection>::new(PoolConfig::from_url("postgres://127.0.0.1/app")?)?;
//! let app: Router = Router::new()
//!     .route("/items", post(create).layer(IdempotencyLayer::<AsyncPgConnection>::new()))
//!     .layer(AddPoolLayer::new(pool));
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! `cargo run -p ballast-idempotency --example keys` shows a keyed write, its replay, a reused
//! key, a write without a key and a malformed key, on an in-memory SQLite database.

#![cfg_attr(docsrs, feature(doc_auto_cfg))]

mod key;
mod keys;
#[cfg(feature = "axum")]
mod layer;
mod outcome;
mod store;

pub use key::{IdempotencyKey, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
pub use keys::{Idempotency, Work};
#[cfg(feature = "axum")]
pub use layer::{IdempotencyLayer, IdempotencyService};
pub use outcome::Outcome;
pub use store::{KeyStore, MYSQL_SCHEMA, POSTGRES_SCHEMA, SQLITE_SCHEMA, TABLE};
