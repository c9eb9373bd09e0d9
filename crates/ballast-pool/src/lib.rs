//! One shared, bounded, honest pool of diesel-async connections per process.
//!
//! The service ballast grew out of died of `FATAL: sorry, too many clients already`: every module
//! built its own pool until PostgreSQL refused everyone. This crate is the fix's heart.
//!
//! # Contract
//!
//! - **One pool.** [`SharedPool::init`] builds the process's pool once; concurrent first calls
//!   build exactly one; a later call with the same [`PoolConfig`] returns it, with another is an
//!   error. Components take a [`PoolProvider`] instead of building pools.
//! - **Bounded.** Never more than `connection_limit` connections open; a checkout never waits
//!   longer than `pool_timeout`; one connect never takes longer than `connect_timeout`, TCP
//!   *and* startup (tokio-postgres's own timeout covers only TCP).
//! - **Honest failures.** Connections are opened with the driver itself ([`Connect`]), so a
//!   failed checkout returns the classified [`Failure`](ballast_core::Failure) with its driver
//!   code — too many connections (`53300`, MySQL `1040`/`1203`/`1226`), refused, timed out,
//!   starting up, wrong password, missing database — never a bare "timed out". A checkout that
//!   ran out of time says which: `pool exhausted (10 of 10 in use, waited 20s)` or the connect
//!   failure that kept the pool from growing. Every checkout failure is `NotSent`: nothing ran,
//!   so even a `POST` may be retried.
//! - **Fails fast, never storms.** When connecting fails and there is no open connection to wait
//!   for — or the failure is not retryable — waiting checkouts get the failure at once instead of
//!   hanging for `pool_timeout`. After a failed connect the next attempt waits 50 ms, doubling up
//!   to 500 ms, and only one attempt probes at a time; meanwhile connects are answered with the
//!   last failure without touching the network. An outage costs a couple of connect attempts per
//!   second whatever the request rate, and recovery is noticed within half a second. While the
//!   gate is closed (or its one probe is under way — against a hung database that takes
//!   `connect_timeout`) and no connection is open, a checkout fails at once, marked a known
//!   outage ([`Failure::is_known_outage`](ballast_core::Failure::is_known_outage)); every
//!   connect failure says when the pool will try again
//!   ([`Failure::retry_after`](ballast_core::Failure::retry_after)), which the error layer sends
//!   as `Retry-After`.
//! - **No round trip per checkout.** bb8 with diesel-async's defaults runs `SELECT 1` on every
//!   checkout. Here only connections idle longer than `check_idle_after` (30 s) are tested; a
//!   connection that comes back broken — closed by the server, or with a transaction left open
//!   because its request was cancelled mid-transaction — is dropped, never reused.
//! - **Abandoned statements never reach the next checkout.** A request's future can be dropped
//!   mid-query (the client hung up, a timeout fired, a handler panicked). A connection that comes
//!   back with a statement still running stays checked out — counted against the bound — while
//!   the statement is cancelled on the server (PostgreSQL's cancel request, then `ROLLBACK`;
//!   MySQL's `KILL QUERY`, then the connection is closed); it returns to the pool only once it is
//!   idle, so no later request waits behind it. [`PoolStats::cancelled`] counts these.
//!   [`SharedPool::close`] waits for them to wind down.
//! - **Overload is shed.** Past `queue_limit` waiting checkouts (10 × `connection_limit`), one
//!   more fails at once with `PoolExhausted` instead of queueing for `pool_timeout`, and inside a
//!   [`RequestScope`](ballast_core::scope::RequestScope) (set by a request-timeout layer) no
//!   checkout waits past the request's deadline. A checkout failure is `NotSent` unless the same
//!   request already ran statements on another connection.
//! - **Busy is ready.** [`SharedPool::readiness`] answers whether the database can be reached; a
//!   pool whose every connection is busy is ready.
//! - **A real close.** bb8 has no close. [`SharedPool::close`] takes the pool out and drops it:
//!   idle connections close at once, later checkouts fail with `PoolClosed`, connections checked
//!   out close when they come back.
//! - **Stats.** [`SharedPool::stats`] returns a serialisable [`PoolStats`].
//!
//! # Configuration
//!
//! Settings come from the database URL's query parameters, with Prisma's names, and from code;
//! see [`PoolConfig`] for the table. The pool strips its own parameters before the URL reaches
//! the driver, and no `Display`, `Debug`, error or log line contains the password.
//!
//! | backend | feature | URL | connection type |
//! |---|---|---|---|
//! | PostgreSQL | `postgres` (default) | `postgres://` | `diesel_async::AsyncPgConnection` |
//! | MySQL, MariaDB | `mysql` | `mysql://`, `mariadb://` | `diesel_async::AsyncMysqlConnection` |
//! | SQLite (bundled) | `sqlite` | `sqlite:path`, `sqlite::memory:`, a `file:` URI | `SyncConnectionWrapper<SqliteConnection>` |
//!
//! # TLS (feature `tls`)
//!
//! PostgreSQL over TLS with rustls (ring; no OpenSSL), by libpq's `sslmode`: `prefer` and
//! `require` encrypt without checking the certificate; `verify-ca` checks that it leads to a root
//! in `sslrootcert` (a PEM file; without it, the public roots managed databases use); `verify-full`
//! also checks that it names the host. `sslcert` and `sslkey` (PEM) are a client certificate;
//! Prisma's `sslaccept=strict` means `verify-full`, `accept_invalid_certs` means `require`. The
//! files are read when the URL is, so an unreadable one fails at startup naming the parameter; a
//! certificate the server's does not satisfy fails every connect as `DB_INIT_ERROR`, not retried.
//! The pool's cancel requests go over the same TLS. Without `sslmode` the connection is plain text
//! (libpq would try TLS first; ballast waits to be asked). Without the feature, `prefer` connects
//! in plain text and the other modes fail at startup.
//!
//! MySQL and MariaDB take the same `sslmode` (`require`, `verify-ca`, `verify-full`; `prefer` is
//! plain text, since mysql_async cannot fall back), `sslrootcert` or Prisma's `sslcert` (the CA
//! that signed the server's certificate), and `sslaccept`; client certificates there are not
//! supported.
//!
//! # PgBouncer
//!
//! Behind PgBouncer in transaction mode (`pool_mode = transaction`), add Prisma's
//! `pgbouncer=true` to the URL. PgBouncer then lends a server connection per transaction, while
//! diesel-async (through tokio-postgres) prepares each statement in one exchange with the server
//! and runs it in the next: the second may reach another server, which answers
//! `prepared statement "s3" does not exist`. With `pgbouncer=true` the pool puts a small protocol
//! rewriter under each connection: a prepared statement is sent as PostgreSQL's unnamed statement,
//! parsed again in the same exchange as each execution, so every statement — in explicit
//! transactions or not, the pool's readiness probe, `batch_execute`, diesel's cached and uncached
//! queries alike — runs on whichever server PgBouncer lends. Nothing in the application changes.
//!
//! The cost: the server parses each statement every time it runs (no server-side plan cache);
//! diesel's client-side statement cache stays on and still saves the separate `Describe` round
//! trip. `cargo run --release -p ballast-bench --bin fleet-bench` measures it (the README has the
//! figures). Session state lasts one transaction behind
//! transaction pooling, so `schema` and `statement_timeout` are refused with `pgbouncer=true`
//! (set them on the role, `ALTER ROLE app SET search_path = ...`, or in `pgbouncer.ini`), and
//! `LISTEN`, session advisory locks and `SET` do not work (`SET LOCAL` inside a transaction
//! does). PgBouncer's own errors (all SQLSTATE `08P01`) are classified by their message:
//! `query_wait_timeout` and `no more connections allowed` are retryable and were never sent; see
//! `ballast_core::pgbouncer`. Cancel requests for abandoned statements go through
//! PgBouncer, which forwards them to the server running the statement; `sslmode` works as it does
//! without PgBouncer (its `client_tls_*` settings), cancel requests included.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let Ok(url) = std::env::var("DATABASE_URL") else { return Ok(()) };
//! use ballast_pool::{PoolConfig, SharedPool};
//! use diesel_async::{AsyncPgConnection, RunQueryDsl};
//!
//! // e.g. postgres://postgres@127.0.0.1:5432/test?connection_limit=10&pool_timeout=20
//! let config = PoolConfig::from_url(&url)?;
//! let pool = SharedPool::<AsyncPgConnection>::init(config)?;
//!
//! let mut conn = pool.get().await?;
//! let rows = diesel::sql_query("SELECT 1").execute(&mut *conn).await?;
//! assert_eq!(rows, 1);
//! drop(conn);
//!
//! let stats = pool.stats();
//! assert_eq!((stats.open, stats.in_use), (1, 0));
//!
//! pool.close().await;
//! assert_eq!(pool.stats().open, 0);
//! # Ok(())
//! # }
//! ```
//!
//! # Performance
//!
//! `cargo bench -p ballast-pool --bench checkout` runs checkout plus one trivial query from 64
//! concurrent tasks on a pool of 10, against stock bb8 + diesel-async with their defaults, in
//! one run: on this project's 2-core machine ballast-pool served 23,100 requests per second
//! against stock's 15,400 (1.50x; goal 1.15x).

#![cfg_attr(docsrs, feature(doc_auto_cfg))]

mod admission;
mod budget;
mod config;
mod connect;
#[cfg(feature = "axum")]
mod extract;
mod layer;
mod leak;
mod manager;
#[cfg(feature = "postgres")]
mod pgbouncer;
mod pool;
mod reclaim;
mod stats;
#[cfg(feature = "tls")]
mod tls;

pub use budget::ServerBudget;
pub use config::{Backend, ConfigError, PoolConfig};
pub use connect::Connect;
#[cfg(feature = "axum")]
pub use extract::Conn;
pub use layer::{AddPool, AddPoolLayer};
pub use pool::{PoolError, PoolProvider, PooledConnection, SharedPool};
pub use stats::{PoolStats, Refusals, Timings};
