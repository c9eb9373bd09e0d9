//! One shared, bounded, honest pool of diesel-async connections per process.
//!
//! A process that lets every module build its own pool ends with `FATAL: sorry, too many clients
//! already`: together they open more connections than the server allows. This crate gives the
//! process one pool, bounded, shared by everything that talks to the database.
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
//!   as `Retry-After`. The log tells the outage, not each attempt: one `WARN` when connects start
//!   failing (and when the failure changes), one every 10 s while it lasts with the attempts
//!   since, one `INFO` when they succeed again with how long it lasted; every attempt is counted
//!   ([`PoolStats::connect_failures`]).
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
//! - **Admission by time.** A checkout that cannot be served in the time it has — the smaller of
//!   `pool_timeout` and its request's deadline — is refused at once, and a queue whose waits stay
//!   above `queue_target` (1 s) is held to it; a burst that drains is served. Waiting checkouts
//!   are served in arrival order. See [below](#admission-by-time). A refusal is
//!   [`Cause::Overloaded`](ballast_core::Cause::Overloaded): `NotSent`, retryable, with the
//!   expected wait as its `Retry-After`. A checkout failure is `NotSent` unless the same request
//!   already ran statements on another connection.
//! - **Busy is ready.** [`SharedPool::readiness`] answers whether the database can be reached; a
//!   pool whose every connection is busy is ready, at once: a readiness probe never waits in the
//!   queue.
//! - **Hold-time warnings** (`leak_threshold`, off by default): a connection checked out longer
//!   is logged once with the caller's source location and the request's path, and counted
//!   ([`PoolStats::held_too_long`]).
//! - **A real close.** bb8 has no close. [`SharedPool::close`] closes the pool: idle connections
//!   close at once, later checkouts fail with `PoolClosed`, connections checked out close when
//!   they come back.
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
//! A PostgreSQL URL is read as libpq reads it: Unix sockets (`postgres:///db`, `?host=/dir`),
//! several hosts (`postgres://h1,h2:5433/db`), `hostaddr`, `port`, `dbname`, `user` and
//! `password` as parameters, strict percent-decoding. With several hosts each new connection
//! tries them in order (`load_balance_hosts=random`: shuffled) and keeps the first whose server
//! is what `target_session_attrs` asks for (`any`, `read-write`, `read-only`, `primary`,
//! `standby`, `prefer-standby`); a cancel request goes to the host the connection is on. A write
//! refused by a read-only server (`25006`) is a retryable failure that ran nothing, and its
//! connection is closed so the next connect chooses again: a failover is a short outage.
//!
//! # Admission by time
//!
//! A count of waiters says nothing about how long they wait: 100 waiters are 0.2 s of work with
//! 20 ms queries on a pool of 10 and 5 s with 500 ms ones, and a cap on their count refuses load
//! the database could serve in well under a second. So the pool decides by time, with what it
//! measures:
//!
//! - **The estimate.** Waiting checkouts are served in arrival order; with `ahead` before it, a
//!   checkout can expect to wait `ahead × hold / connection_limit`, where `hold` is how long
//!   connections have recently stayed checked out (a moving average). Nothing ahead, or no
//!   connection back yet: no wait.
//! - **Rule 1: never queue what cannot be served in time.** A checkout whose expected wait is
//!   longer than the time it has — `pool_timeout`, or less inside a request with a deadline
//!   ([`RequestScope`](ballast_core::scope::RequestScope)) — is refused at once, instead of
//!   waiting in vain.
//! - **Rule 2: no standing queue above the target.** Queueing that drains is good: a burst of
//!   500 requests of 20 ms on a pool of 10 waits up to a second and is served whole. A queue
//!   whose waits stay above `queue_target` (1 s) for half the target again is overload (CoDel's
//!   test), held to the target. So a checkout expected to wait longer than one and a half
//!   targets is refused at once (that wait could not end before the queue counted as standing),
//!   and so is one expected to wait longer than the target while the queue stands (or stood in
//!   the last eight targets: clients told to come back come back in waves). A waiter whose wait
//!   turns out longer — admitted before the pool knew its hold time, or before the database
//!   slowed down — gives up as soon as the pool knows it. The admitted are served near the
//!   target, and nobody waits long only to be refused. The queue stands until a checkout leaves a
//!   queue behind it expected to drain within half the target.
//!
//! What that does under load, measured on the example server (`cargo run --release -p
//! ballast-bench --bin admission-bench`; docs/benchmarks.md has the figures): 200 clients of 20 ms on a
//! pool of 10 are all served; 500 clients of 100 ms (5 s of work) are served at 0.9 of
//! capacity with a p99 of 1.5 s and the rest refused in milliseconds, where without admission
//! every one waits 5 s; a database that slows from 5 ms to 200 ms per query keeps its
//! throughput, and is back to full rate about a second after it recovers.
//!
//! Facebook's and Envoy's answer to a standing queue is to serve the newest waiter first and let
//! the oldest time out (adaptive LIFO); here the same effect comes from the edges, earlier: the
//! ones that would wait longest are refused before they join. A latency-driven concurrency limit below `connection_limit`
//! (Gradient2, Vegas) was measured and not adopted: see docs/architecture.md.
//!
//! `queue_target=0` turns it off (every checkout waits up to `pool_timeout`, as bb8 does);
//! `queue_limit` adds an explicit cap on waiting checkouts, off by default.
//!
//! A hold time is only as short as the application lets it be: under a flood of requests (the
//! refused coming straight back), a database answer read by a task of the application's runtime
//! waits behind hundreds of HTTP tasks, and every connection is held that much longer. So
//! PostgreSQL connections are driven — their sockets read and written — on a thread of the
//! pool's own (`ballast-pg-io`, a single-threaded runtime per pool, stopped with it);
//! handlers still run on the application's runtime. Under a standing overload that serves more
//! of the database's capacity, and an unloaded round trip costs the same (docs/benchmarks.md has
//! the figures). MySQL and MariaDB connections do their I/O in the caller's task and are not
//! moved.
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
//! trip. `cargo run --release -p ballast-bench --bin fleet-bench` measures it (docs/benchmarks.md has the
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
//! # Read replicas and read-your-writes
//!
//! [`ReplicaSet`] puts PostgreSQL streaming replicas beside the primary, each a pool of its own;
//! a task reads each replica's lag every second and a replica more than `max_replica_lag` behind,
//! down or refusing connections takes no reads. [`ReadConn`] (feature `axum`) takes a fresh
//! replica's connection, or the primary's, with no 503 and no wait when a replica is away.
//! [`ReadYourWritesLayer`] (feature `axum`) gives every client read-your-writes over HTTP: a
//! write's answer carries the primary's WAL position after it ([`WalPosition`], the header and
//! cookie [`READ_AFTER`]), and a read that sends it back is served by a replica only once it has
//! replayed that far (after waiting at most `max_token_wait`), else by the primary. A write
//! through a read connection is a `500`: a bug, not an outage. MySQL and MariaDB replicas are
//! never fresh: reads use the primary there.
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
//! one run (goal: 1.15× stock's requests a second). The figures are in the workspace's
//! `docs/benchmarks.md`.

#![cfg_attr(docsrs, feature(doc_auto_cfg))]

mod activity;
mod admission;
mod budget;
mod checkout;
mod config;
mod connect;
#[cfg(feature = "axum")]
mod extract;
#[cfg(feature = "postgres")]
mod io;
mod layer;
mod leak;
mod lend;
mod manager;
#[cfg(feature = "postgres")]
mod pgbouncer;
mod pool;
mod pooled;
mod reclaim;
mod replicas;
mod shared;
mod stats;
#[cfg(feature = "tls")]
mod tls;

pub use budget::ServerBudget;
pub use config::{Backend, ConfigError, PoolConfig, SessionAttrs};
pub use connect::Connect;
#[cfg(feature = "axum")]
pub use extract::{Conn, ReadConn};
pub use layer::{AddPool, AddPoolLayer};
pub use lend::Lent;
pub use pool::{PoolError, PoolProvider, SharedPool};
pub use pooled::PooledConnection;
pub use replicas::{
    InvalidWalPosition, ReadRoutes, ReplicaSet, ReplicaSetBuilder, ReplicaState, ReplicaStats,
    WalPosition,
};
#[cfg(feature = "axum")]
pub use replicas::{ReadYourWrites, ReadYourWritesFuture, ReadYourWritesLayer, READ_AFTER};
pub use stats::{PoolStats, Refusals, Timings};
