//! Test infrastructure shared by the ballast crates and the end-to-end tests (`publish = false`).
//!
//! ballast's tests talk to real databases and provoke real faults. This crate holds what they
//! share:
//!
//! - [`proxy::FaultProxy`]: a TCP proxy in front of a database port whose [`proxy::Mode`] switches
//!   at run time between pass, refuse (the kernel refuses connects), stall (accept, never
//!   forward; freeze open connections) and added latency, and that can reset every open
//!   connection. It counts the connections it accepted.
//! - [`fake::FakeServer`]: a PostgreSQL or MySQL server that answers a connection attempt with
//!   any SQLSTATE or MySQL error number, for failures a shared server cannot produce safely
//!   (`57P03`, `28P01` on a server that trusts every login, `53300` in Spanish, `1040`).
//! - [`db`]: `DATABASE_URL`/`MYSQL_URL` discovery with the skip-or-fail rule, throwaway databases,
//!   roles with `CONNECTION LIMIT n` and users with `MAX_USER_CONNECTIONS n`, and counting one
//!   test's own sessions in `pg_stat_activity` or the MySQL process list.
//! - [`pgbouncer::PgBouncer`]: a private PgBouncer (transaction mode) on a free port in front of
//!   a PostgreSQL server, with a generated configuration.
//! - [`redis::PrivateRedis`]: a private `redis-server` on a free port that a test can stop and
//!   start again.
//! - [`logs::Captured`]: an in-memory writer for a log subscriber, to check what is logged.
//! - [`process::example_binary`]: an example program `cargo test` built, to run as a real
//!   process (the servers the process tests send signals to).
//! - [`measure`]: latency percentiles and the process's resident memory, for load tests and
//!   benches.
//! - [`http::Client`]: a keep-alive HTTP/1.1 client for load tests and benches: status, latency
//!   and `Retry-After` of each answer.
//!
//! # The skip-or-fail rule
//!
//! A database test starts with
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let Some(url) = ballast_testkit::db::postgres_url("my_test") else {
//!     return; // skipped: the reason was printed
//! };
//! # }
//! ```
//!
//! When `DATABASE_URL` is unset the test prints why it is skipped and passes; when
//! `BALLAST_REQUIRE_DB=1` it fails instead, so CI cannot pass by skipping. An unreachable database
//! always fails: the test's own connect reports it.
//!
//! # Parallel tests
//!
//! Every fixture has a unique name ([`db::unique_name`]) and every count is filtered to one role,
//! database or `application_name`, so tests can run at once against one server without seeing
//! each other.

#[cfg(unix)]
pub mod cluster;
pub mod db;
pub mod fake;
pub mod http;
pub mod logs;
#[cfg(unix)]
pub mod mariadb;
pub mod measure;
#[cfg(unix)]
pub mod pgbouncer;
pub mod process;
pub mod proxy;
pub mod redis;
