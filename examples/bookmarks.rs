//! A user's second service on ballast: a bookmarks API on PostgreSQL — users and their
//! bookmarks (a foreign key), a paginated list with a tag filter, a two-table transaction, a
//! cached public route that writes invalidate, a background job, health, shutdown, exactly-once
//! creates with an `Idempotency-Key`, and metrics.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --example bookmarks
//! curl -i -X POST localhost:3000/users -H 'content-type: application/json' -d '{"name":"ada"}'
//! curl -i -X POST localhost:3000/users/1/bookmarks -H 'idempotency-key: 7c1e' \
//!      -H 'content-type: application/json' -d '{"url":"https://www.rust-lang.org","tag":"rust"}'
//! curl -i 'localhost:3000/users/1/bookmarks?tag=rust&page=1'
//! curl -i localhost:3000/popular               # cached; a new bookmark or a delete refreshes it
//! curl -i -X DELETE localhost:3000/bookmarks/1
//! curl -s localhost:3000/metrics
//! ```
//!
//! `BIND` (default `127.0.0.1:3000`) sets the address, `RECOUNT_EVERY` (300) the background
//! job's period in seconds. The ballast-specific code is 25 lines: the 18 marked `// ballast`
//! (the route lines a ballast layer is added to among them), and the seven signatures that take
//! a `Conn`, return `ballast::Error` or take the pool, the cache and the shutdown handle. It starts before its database does: the schema is a
//! startup step, and `/readyz` answers 503 until it is created.

use std::process::ExitCode;
use std::time::Duration;

use axum::extract::{Path, Query};
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use ballast::diesel; // ballast
use ballast::prelude::*; // ballast
use diesel::{ExpressionMethods, QueryDsl, SelectableHelper};
use serde::{Deserialize, Serialize};

/// The tables, as diesel sees them.
#[allow(missing_docs)] // diesel's macros make items without docs
mod schema {
    diesel::table! {
        users (id) {
            id -> BigInt,
            name -> Text,
            bookmarks -> BigInt,
        }
    }
    diesel::table! {
        bookmarks (id) {
            id -> BigInt,
            user_id -> BigInt,
            url -> Text,
            tag -> Text,
        }
    }
    diesel::joinable!(bookmarks -> users (user_id));
    diesel::allow_tables_to_appear_in_same_query!(users, bookmarks);
}
use schema::{bookmarks, users};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 50),
    bookmarks BIGINT NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS bookmarks (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id),
    url TEXT NOT NULL CHECK (url ~ '^https?://'),
    tag TEXT NOT NULL CHECK (length(tag) BETWEEN 1 AND 30));
CREATE INDEX IF NOT EXISTS bookmarks_by_user_tag ON bookmarks (user_id, tag, id);";

/// Bookmarks per page.
const PER_PAGE: i64 = 20;

#[derive(Serialize, diesel::Queryable, diesel::Selectable)]
#[diesel(table_name = users)]
struct User {
    id: i64,
    name: String,
    bookmarks: i64,
}

#[derive(Deserialize, diesel::Insertable)]
#[diesel(table_name = users)]
struct NewUser {
    name: String,
}

#[derive(Serialize, diesel::Queryable, diesel::Selectable)]
#[diesel(table_name = bookmarks)]
struct Bookmark {
    id: i64,
    user_id: i64,
    url: String,
    tag: String,
}

#[derive(Deserialize)]
struct NewBookmark {
    url: String,
    tag: String,
}

#[derive(Deserialize)]
struct Page {
    tag: Option<String>,
    page: Option<i64>,
}

#[derive(Serialize)]
struct Popular {
    tag: String,
    bookmarks: i64,
}

/// The schema, created once the service listens; retried while the database is not there yet.
async fn schema(pool: SharedPool<AsyncPgConnection>) -> Result<(), Failure> {
    Ok(pool.get().await?.batch_execute(SCHEMA).await?) // ballast
}

async fn create_user(
    mut db: Conn<AsyncPgConnection>,
    Json(new): Json<NewUser>,
) -> Result<(StatusCode, Json<User>), Error> {
    let user = diesel::insert_into(users::table)
        .values(&new)
        .returning(User::as_returning())
        .get_result(&mut *db)
        .await?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// A user's bookmarks, newest first, 20 a page, optionally of one tag.
async fn list(
    mut db: Conn<AsyncPgConnection>,
    Path(user): Path<i64>,
    Query(page): Query<Page>,
) -> Result<Json<Vec<Bookmark>>, Error> {
    let mut query = bookmarks::table
        .filter(bookmarks::user_id.eq(user))
        .order(bookmarks::id.desc())
        .limit(PER_PAGE)
        .offset((page.page.unwrap_or(1).max(1) - 1) * PER_PAGE)
        .select(Bookmark::as_select())
        .into_boxed();
    if let Some(tag) = page.tag {
        query = query.filter(bookmarks::tag.eq(tag));
    }
    Ok(Json(query.load(&mut *db).await?))
}

/// Adds a bookmark and counts it on its user, in one transaction: both or neither. An unknown
/// user is a 409 (the foreign key), a URL that is not http(s) a 422 (the CHECK).
async fn add(
    mut db: Conn<AsyncPgConnection>,
    Path(user): Path<i64>,
    Json(new): Json<NewBookmark>,
) -> Result<(StatusCode, Json<Bookmark>), Error> {
    let bookmark = db
        .transaction::<_, Error, _>(async |conn| {
            let bookmark = diesel::insert_into(bookmarks::table)
                .values((
                    bookmarks::user_id.eq(user),
                    bookmarks::url.eq(&new.url),
                    bookmarks::tag.eq(&new.tag),
                ))
                .returning(Bookmark::as_returning())
                .get_result(conn)
                .await?;
            diesel::update(users::table.find(user))
                .set(users::bookmarks.eq(users::bookmarks + 1))
                .execute(conn)
                .await?;
            Ok(bookmark)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(bookmark)))
}

/// Deletes a bookmark and uncounts it, in one transaction.
async fn remove(mut db: Conn<AsyncPgConnection>, Path(id): Path<i64>) -> Result<StatusCode, Error> {
    db.transaction::<_, Error, _>(async |conn| {
        let user: i64 = diesel::delete(bookmarks::table.find(id))
            .returning(bookmarks::user_id)
            .get_result(conn)
            .await?;
        diesel::update(users::table.find(user))
            .set(users::bookmarks.eq(users::bookmarks - 1))
            .execute(conn)
            .await?;
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The ten most used tags: public, cached, refreshed by every write that changes it.
async fn popular(mut db: Conn<AsyncPgConnection>) -> Result<Json<Vec<Popular>>, Error> {
    let count = diesel::dsl::count_star();
    let rows: Vec<(String, i64)> = bookmarks::table
        .group_by(bookmarks::tag)
        .select((bookmarks::tag, count))
        .order((count.desc(), bookmarks::tag))
        .limit(10)
        .load(&mut *db)
        .await?;
    let tags = rows
        .into_iter()
        .map(|(tag, bookmarks)| Popular { tag, bookmarks });
    Ok(Json(tags.collect()))
}

/// The background job: every `every`, repairs each user's count from the bookmarks themselves,
/// and drops the cached `/popular`; stops when the service drains (a failed tick is logged and
/// the next one tries again).
async fn recount(
    pool: SharedPool<AsyncPgConnection>,
    cache: ResponseCache,
    handle: ShutdownHandle,
    every: Duration,
) {
    let stop = handle.draining(); // ballast
    tokio::pin!(stop);
    let mut ticks = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = ticks.tick() => {}
        }
        let counted = async {
            let mut conn = pool.get().await?; // ballast
            let sql = "UPDATE users SET bookmarks = \
                       (SELECT COUNT(*) FROM bookmarks WHERE user_id = users.id)";
            Ok::<usize, Failure>(diesel::sql_query(sql).execute(&mut *conn).await?)
        };
        match counted.await {
            Ok(users) => tracing::info!(users, "recount tick"),
            Err(failure) => tracing::warn!(failure = %failure.report(), "recount tick failed"),
        }
        cache.invalidate_tag("bookmarks").await; // ballast
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
    let stack = Stack::builder(pool.clone()).startup("schema", schema); // ballast
    let stack = stack.metrics_route("/metrics").build(); // ballast
    let every = std::env::var("RECOUNT_EVERY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300.0);
    let every = Duration::from_secs_f64(every);
    let job = recount(pool, stack.cache().clone(), stack.handle(), every); // ballast
    stack.handle().spawn("recount", job); // ballast

    // `/popular` is cached and tagged; the writes that change it name the tag; creates are
    // exactly-once for requests with an `Idempotency-Key`.
    let changes = InvalidateLayer::tag("bookmarks"); // ballast
    let keyed = IdempotencyLayer::<AsyncPgConnection>::new(); // ballast
    let cached = CacheRouteLayer::ttl(Duration::from_secs(60)).tag("bookmarks"); // ballast
    let app = Router::new()
        .route("/users", post(create_user))
        .route(
            "/users/{id}/bookmarks",
            get(list).post(add.layer((keyed, changes.clone()))), // ballast
        )
        .route("/bookmarks/{id}", delete(remove).layer(changes)) // ballast
        .route("/popular", get(popular).layer(cached)); // ballast
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
    // Signals, health (/healthz, /readyz), /metrics, the protective timeouts, the drain, the
    // job, the teardown, and the exit code.
    stack.serve(listener, app).await // ballast
}
