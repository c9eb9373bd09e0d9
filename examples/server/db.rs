//! The example's database: one pool of whichever backend `DATABASE_URL` names, and the
//! example's queries on it. Each backend's connection is its own type, so the `match`es over
//! the backend live here, behind `Db`'s methods; the handlers never see them.

use std::marker::PhantomData;
use std::time::Duration;

use ballast::idempotency::{Idempotency, IdempotencyKey, Outcome};
use ballast::pool::{Backend, PoolConfig, PoolError, PoolStats, SharedPool};
use ballast::{Error, Failure};
use diesel::backend::Backend as DieselBackend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Double, HasSqlType, Text, Untyped};
use diesel::QueryResult;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncMysqlConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use http::StatusCode;
use serde::{Deserialize, Serialize};

type SqlitePool = SharedPool<SyncConnectionWrapper<diesel::SqliteConnection>>;

/// The process's pool, whichever backend the URL names.
#[derive(Clone)]
pub(crate) enum Db {
    Postgres(SharedPool<AsyncPgConnection>),
    Mysql(SharedPool<AsyncMysqlConnection>),
    Sqlite(SqlitePool),
}

/// What `POST /items` reads, and what the idempotency record keeps of the request.
#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct NewItem {
    pub(crate) name: String,
}

/// Runs `$body` with `$pool` bound to the pool of whichever backend `$db` is, and `$dialect` to
/// that backend's SQL; the body is compiled once per backend.
macro_rules! on_pool {
    ($db:expr, |$pool:ident, $dialect:ident| $body:expr) => {
        match $db {
            Db::Postgres($pool) => {
                let $dialect: &'static Dialect = &POSTGRES;
                $body
            }
            Db::Mysql($pool) => {
                let $dialect: &'static Dialect = &MYSQL;
                $body
            }
            Db::Sqlite($pool) => {
                let $dialect: &'static Dialect = &SQLITE;
                $body
            }
        }
    };
}

/// The SQL that differs between backends. A statement with a parameter is the text before it
/// and after it ([`Statement`] puts the backend's placeholder between).
struct Dialect {
    schema: &'static str,
    list: &'static str,
    one: (&'static str, &'static str),
    insert: (&'static str, &'static str),
    /// Holds the connection for a number of seconds inside the database; `None` where the
    /// backend has no sleep function (SQLite: the connection is held while the request waits).
    sleep: Option<(&'static str, &'static str)>,
}

const POSTGRES: Dialect = Dialect {
    schema: "CREATE TABLE IF NOT EXISTS items (
        id BIGSERIAL PRIMARY KEY,
        name TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    list: "SELECT id, name, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS created_at FROM items ORDER BY id",
    one: ("SELECT id, name, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS created_at FROM items WHERE id = ", ""),
    insert: ("INSERT INTO items (name) VALUES (", ") RETURNING id, name, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS created_at"),
    sleep: Some(("SELECT pg_sleep(", ")")),
};

const MYSQL: Dialect = Dialect {
    schema: "CREATE TABLE IF NOT EXISTS items (
        id BIGINT AUTO_INCREMENT PRIMARY KEY,
        name VARCHAR(255) NOT NULL,
        created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)",
    list: "SELECT id, name, DATE_FORMAT(created_at, '%Y-%m-%dT%H:%i:%sZ') AS created_at FROM items ORDER BY id",
    one: ("SELECT id, name, DATE_FORMAT(created_at, '%Y-%m-%dT%H:%i:%sZ') AS created_at FROM items WHERE id = ", ""),
    // MariaDB 10.5+ (this project's server) returns the inserted row.
    insert: ("INSERT INTO items (name) VALUES (", ") RETURNING id, name, DATE_FORMAT(created_at, '%Y-%m-%dT%H:%i:%sZ') AS created_at"),
    sleep: Some(("SELECT SLEEP(", ")")),
};

const SQLITE: Dialect = Dialect {
    schema: "CREATE TABLE IF NOT EXISTS items (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')))",
    list: "SELECT id, name, created_at FROM items ORDER BY id",
    one: ("SELECT id, name, created_at FROM items WHERE id = ", ""),
    insert: (
        "INSERT INTO items (name) VALUES (",
        ") RETURNING id, name, created_at",
    ),
    sleep: None,
};

/// An item, as stored and as sent.
#[derive(Debug, Serialize, diesel::QueryableByName)]
pub(crate) struct Item {
    #[diesel(sql_type = BigInt)]
    pub(crate) id: i64,
    #[diesel(sql_type = Text)]
    pub(crate) name: String,
    #[diesel(sql_type = Text)]
    pub(crate) created_at: String,
}

/// All items, read on a fresh replica (or the primary).
pub(crate) async fn replica_items(
    reads: &ballast::pool::ReplicaSet<AsyncPgConnection>,
) -> Result<Vec<Item>, Error> {
    let mut conn = reads.get_read().await?;
    Ok(
        Statement::<Text, _>::new((POSTGRES.list, ""), None::<String>)
            .load::<Item>(&mut *conn)
            .await?,
    )
}

/// One item, read on a fresh replica (or the primary); a missing one is a 404.
pub(crate) async fn replica_item(
    reads: &ballast::pool::ReplicaSet<AsyncPgConnection>,
    id: i64,
) -> Result<Item, Error> {
    let mut conn = reads.get_read().await?;
    Ok(Statement::<BigInt, _>::new(POSTGRES.one, Some(id))
        .get_result::<Item>(&mut *conn)
        .await?)
}

impl Db {
    /// The process's shared pool for `config`'s backend.
    pub(crate) fn open(config: PoolConfig) -> Result<Db, PoolError> {
        Ok(match config.backend() {
            Backend::Postgres => Db::Postgres(SharedPool::init(config)?),
            Backend::Mysql => Db::Mysql(SharedPool::init(config)?),
            _ => Db::Sqlite(SharedPool::init(config)?),
        })
    }

    /// Whether the database can be reached now (the pool answers; it never waits behind
    /// checkouts).
    pub(crate) async fn readiness(&self) -> Result<(), Failure> {
        match self {
            Db::Postgres(pool) => pool.readiness().await,
            Db::Mysql(pool) => pool.readiness().await,
            Db::Sqlite(pool) => pool.readiness().await,
        }
    }

    /// Closes the pool and every connection in it.
    pub(crate) async fn close(&self) {
        match self {
            Db::Postgres(pool) => pool.close().await,
            Db::Mysql(pool) => pool.close().await,
            Db::Sqlite(pool) => pool.close().await,
        }
    }

    /// The pool's figures.
    pub(crate) fn stats(&self) -> PoolStats {
        match self {
            Db::Postgres(pool) => pool.stats(),
            Db::Mysql(pool) => pool.stats(),
            Db::Sqlite(pool) => pool.stats(),
        }
    }

    /// Creates the table if it is missing.
    pub(crate) async fn create_schema(&self) -> Result<(), Error> {
        on_pool!(self, |pool, dialect| {
            let mut conn = pool.get().await?;
            conn.batch_execute(dialect.schema).await?;
        });
        Ok(())
    }

    /// Every item, oldest first.
    pub(crate) async fn items(&self) -> Result<Vec<Item>, Error> {
        Ok(on_pool!(self, |pool, dialect| {
            let mut conn = pool.get().await?;
            Statement::<Text, _>::new((dialect.list, ""), None::<String>)
                .load::<Item>(&mut *conn)
                .await?
        }))
    }

    /// One item; a missing one is a 404.
    pub(crate) async fn item(&self, id: i64) -> Result<Item, Error> {
        Ok(on_pool!(self, |pool, dialect| {
            let mut conn = pool.get().await?;
            Statement::<BigInt, _>::new(dialect.one, Some(id))
                .get_result::<Item>(&mut *conn)
                .await?
        }))
    }

    /// Inserts an item; with an `Idempotency-Key` the insert is recorded with its key in one
    /// transaction, and a repeat answers the first outcome again.
    pub(crate) async fn create_item(
        &self,
        keys: &Idempotency,
        key: Option<&IdempotencyKey>,
        name: String,
    ) -> Result<Outcome, Error> {
        let request = NewItem { name: name.clone() };
        Ok(on_pool!(self, |pool, dialect| {
            let mut conn = pool.get().await?;
            keys.run(&mut *conn, key, &request, move |conn| {
                Box::pin(async move {
                    let item: Item = Statement::<Text, _>::new(dialect.insert, Some(name))
                        .get_result(conn)
                        .await?;
                    Ok((StatusCode::CREATED, item))
                })
            })
            .await?
        }))
    }

    /// Holds a connection `ms` milliseconds inside the database (SQLite: while the request
    /// waits).
    pub(crate) async fn sleep(&self, ms: u64) -> Result<(), Error> {
        let seconds = ms as f64 / 1000.0;
        on_pool!(self, |pool, dialect| {
            let mut conn = pool.get().await?;
            match dialect.sleep {
                Some(sql) => {
                    Statement::<Double, _>::new(sql, Some(seconds))
                        .execute(&mut *conn)
                        .await?;
                }
                None => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    conn.batch_execute("SELECT 1").await?;
                }
            }
        });
        Ok(())
    }
}

/// Raw SQL with at most one parameter that diesel may keep prepared on each connection.
///
/// `diesel::sql_query` marks itself unsafe to cache, so every run of it parses its statement
/// again: a round trip per query that a prepared statement pays once per connection. This
/// statement is cached under its text (it has no static query id), so its SQL must be the same
/// on every run: values go in the parameter, never into the text.
struct Statement<ST, T> {
    before: &'static str,
    bind: Option<T>,
    after: &'static str,
    sql_type: PhantomData<ST>,
}

impl<ST, T> Statement<ST, T> {
    /// `sql` is the text before and after the parameter, which `bind` fills (`None`: no
    /// parameter, and `sql.1` follows `sql.0` directly).
    fn new(sql: (&'static str, &'static str), bind: Option<T>) -> Self {
        Statement {
            before: sql.0,
            bind,
            after: sql.1,
            sql_type: PhantomData,
        }
    }
}

impl<ST, T> QueryId for Statement<ST, T> {
    type QueryId = ();
    // Not static: diesel keys the cache by the statement's text and parameter types.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<ST, T> Query for Statement<ST, T> {
    type SqlType = Untyped;
}

impl<ST, T, DB> QueryFragment<DB> for Statement<ST, T>
where
    DB: DieselBackend + HasSqlType<ST>,
    T: diesel::serialize::ToSql<ST, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql(self.before);
        if let Some(bind) = &self.bind {
            out.push_bind_param::<ST, T>(bind)?;
        }
        out.push_sql(self.after);
        Ok(())
    }
}
