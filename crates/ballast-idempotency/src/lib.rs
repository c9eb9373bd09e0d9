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
//! [`Idempotency::run`] runs a handler's write for a request:
//!
//! | the request | what happens |
//! |---|---|
//! | has no key | the work runs as usual; nothing is recorded |
//! | has a new key | the work runs in a transaction that also records the key, a fingerprint of the request and the outcome (status and JSON body) |
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
//! ```
//! use axum::extract::State;
//! use axum::http::StatusCode;
//! use axum::Json;
//! use ballast_idempotency::{Idempotency, IdempotencyKey, Outcome};
//! use ballast_pool::SharedPool;
//! use diesel::sql_types::{BigInt, Text};
//! use diesel_async::{AsyncPgConnection, RunQueryDsl};
//!
//! #[derive(serde::Deserialize, serde::Serialize)]
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
//!     State((pool, keys)): State<(SharedPool<AsyncPgConnection>, Idempotency)>,
//!     key: Option<IdempotencyKey>,
//!     Json(new): Json<NewItem>,
//! ) -> Result<Outcome, ballast_error::Error> {
//!     let mut conn = pool.get().await?;
//!     let name = new.name.clone();
//!     keys.run(&mut *conn, key.as_ref(), &new, |conn| {
//!         Box::pin(async move {
//!             let item: Item = diesel::sql_query("INSERT INTO items (name) VALUES ($1) RETURNING id")
//!                 .bind::<Text, _>(name)
//!                 .get_result(conn)
//!                 .await?;
//!             Ok((StatusCode::CREATED, item))
//!         })
//!     })
//!     .await
//! }
//! # let _ = axum::routing::post(create);
//! ```
//!
//! `cargo run -p ballast-idempotency --example keys` shows a keyed write, its replay, a reused
//! key, a write without a key and a malformed key, on an in-memory SQLite database.

#![cfg_attr(docsrs, feature(doc_auto_cfg))]

mod key;
mod keys;
mod outcome;
mod store;

pub use key::{IdempotencyKey, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
pub use keys::{Idempotency, Work};
pub use outcome::Outcome;
pub use store::{KeyStore, MYSQL_SCHEMA, POSTGRES_SCHEMA, SQLITE_SCHEMA, TABLE};
