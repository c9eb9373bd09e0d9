//! A complete small service on ballast: users CRUD on PostgreSQL with diesel, a background job,
//! the whole stack, health checks and a graceful shutdown.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --example quickstart
//! curl -i -X POST localhost:3000/users -H 'content-type: application/json' -d '{"name":"Ada","email":"ada@example.com"}'
//! curl -i localhost:3000/users/1
//! ```
//!
//! `BIND` (default `127.0.0.1:3000`) sets the address, `BACKUP_EVERY` (60) the background job's
//! period in seconds. The ballast-specific code is 21 lines: the 14 marked `// ballast`, and
//! the seven signatures that take a `Db` connection, return `ballast::Error` or take the pool
//! (and the shutdown handle).

use std::process::ExitCode;
use std::time::Duration;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use ballast::diesel; // ballast
use ballast::prelude::*; // ballast
use diesel::{QueryDsl, SelectableHelper};
use serde::{Deserialize, Serialize};

/// The table, as diesel sees it.
#[allow(missing_docs)] // diesel's macro makes items without docs
mod schema {
    diesel::table! {
        users (id) {
            id -> BigInt,
            name -> Text,
            email -> Text,
        }
    }
}
use schema::users;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS users (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    email TEXT NOT NULL UNIQUE)";

#[derive(Serialize, diesel::Queryable, diesel::Selectable)]
#[diesel(table_name = users)]
struct User {
    id: i64,
    name: String,
    email: String,
}

#[derive(Deserialize, diesel::Insertable, diesel::AsChangeset)]
#[diesel(table_name = users)]
struct UserData {
    name: String,
    email: String,
}

/// The connection type of every handler.
type Db = Conn<AsyncPgConnection>; // ballast

// Plain `?` is right: a missing row is a 404, a duplicate email a 409, a name the CHECK refuses a
// 422, a connection lost under the query a retryable 503.

async fn list(mut db: Db) -> Result<Json<Vec<User>>, Error> {
    let query = users::table.order(users::id).select(User::as_select());
    Ok(Json(query.load(&mut *db).await?))
}

async fn show(mut db: Db, Path(id): Path<i64>) -> Result<Json<User>, Error> {
    let query = users::table.find(id).select(User::as_select());
    Ok(Json(query.first(&mut *db).await?))
}

async fn create(mut db: Db, Json(data): Json<UserData>) -> Result<(StatusCode, Json<User>), Error> {
    let user = diesel::insert_into(users::table)
        .values(&data)
        .returning(User::as_returning())
        .get_result(&mut *db)
        .await?;
    Ok((StatusCode::CREATED, Json(user)))
}

async fn update(
    mut db: Db,
    Path(id): Path<i64>,
    Json(data): Json<UserData>,
) -> Result<Json<User>, Error> {
    let user = diesel::update(users::table.find(id))
        .set(&data)
        .returning(User::as_returning())
        .get_result(&mut *db)
        .await?;
    Ok(Json(user))
}

async fn remove(mut db: Db, Path(id): Path<i64>) -> Result<StatusCode, Error> {
    match diesel::delete(users::table.find(id))
        .execute(&mut *db)
        .await?
    {
        0 => Err(diesel::result::Error::NotFound.into()),
        _ => Ok(StatusCode::NO_CONTENT),
    }
}

/// The schema, created once the service listens (`/readyz` says 503 until then), retried while
/// the database is not there yet: an orchestrator may start the service first.
async fn schema(pool: SharedPool<AsyncPgConnection>) -> Result<(), Failure> {
    Ok(pool.get().await?.batch_execute(SCHEMA).await?) // ballast
}

/// The background job: counts the users every `every` until the service drains. A read may be
/// repeated, so a connection killed while idle costs one retry, not a failed tick.
async fn backup(pool: SharedPool<AsyncPgConnection>, handle: ShutdownHandle, every: Duration) {
    let retrying = Retrying::builder().idempotent(true); // ballast
    let retrying = retrying.build().expect("valid settings"); // ballast
    let stop = handle.draining(); // ballast
    tokio::pin!(stop);
    let mut ticks = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = ticks.tick() => {}
        }
        let counted = retrying
            .run(|| async {
                let mut conn = pool.get().await?; // ballast
                Ok::<i64, Failure>(users::table.count().get_result(&mut *conn).await?)
            })
            .await;
        match counted {
            Ok(users) => tracing::info!(users, "backup tick"),
            Err(failure) => tracing::warn!(failure = %failure.report(), "backup tick failed"),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let url = std::env::var("DATABASE_URL").unwrap_or_default();
    let pool = SharedPool::<AsyncPgConnection>::init_from_url(&url); // ballast
    let pool = match pool {
        Ok(pool) => pool,
        Err(error) => {
            eprintln!("error: DATABASE_URL: {error}");
            return ExitCode::from(2);
        }
    };
    let every = std::env::var("BACKUP_EVERY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60.0);

    let stack = Stack::builder(pool.clone()).startup("schema", schema); // ballast
    let stack = stack.build(); // ballast
    let job = backup(pool, stack.handle(), Duration::from_secs_f64(every)); // ballast
    stack.handle().spawn("backup", job); // ballast

    let app = Router::new()
        .route("/users", get(list).post(create))
        .route("/users/{id}", get(show).put(update).delete(remove));
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = match tokio::net::TcpListener::bind(&bind).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("error: BIND: cannot listen on {bind}: {error}");
            return ExitCode::from(2);
        }
    };
    println!(
        "listening on {}",
        listener.local_addr().map_or(bind, |a| a.to_string())
    );
    // Signals, health (/healthz, /readyz), the protective timeouts, the drain, the job, the
    // teardown (cache, pool), and the exit code.
    stack.serve(listener, app).await // ballast
}
