//! The classified database failure that every ballast crate shares.
//!
//! Every layer of ballast makes decisions about a failed database operation: the error layer picks a
//! status and a code, the retry layer decides whether to run the request again, the cache refuses to
//! store it. They all read one value, [`Failure`], which answers three questions:
//!
//! 1. **What failed?** A [`Code`] that clients already understand — `DB_CONNECTION_ERROR`,
//!    `DB_INIT_ERROR`, `MEMORY_ERROR` (all HTTP 503) or `CRITICAL_ERROR` (HTTP 500) — refined by a
//!    [`Cause`] for operators (`TooManyConnections`, `AuthFailed`, `PoolExhausted`, ...).
//! 2. **Is it worth retrying?** [`Failure::retryable`]: yes for too many connections, a server that is
//!    starting or shutting down, a refused or reset connection, an exhausted pool; no for a wrong
//!    password, a missing database or a syntax error.
//! 3. **Could the statement have reached the database?** [`Reach::NotSent`] when the failure happened
//!    while a connection was being acquired or opened (nothing ran, so even a `POST` may be repeated),
//!    [`Reach::MaybeSent`] when the connection broke during or after sending (only idempotent work may
//!    be repeated, or a write may happen twice). [`Failure::may_retry`] combines the two answers.
//!
//! # Classify by code, never by message
//!
//! PostgreSQL localises its messages (a Spanish server says
//! `lo siento, ya tenemos demasiados clientes` for `too many clients`), so failures are classified by the driver's code:
//! SQLSTATE for PostgreSQL ([`sqlstate`]), error numbers for MySQL and MariaDB ([`mysql`]), result
//! codes for SQLite ([`sqlite`]), and [`std::io::ErrorKind`] for the network ([`io`]). Each module
//! documents its table and the reason for every entry. One source has no codes to read:
//! PgBouncer sends every error of its own under `08P01`, so its fixed English messages decide
//! (`pgbouncer`, with the `postgres` or `diesel` feature).
//!
//! Conversions from the drivers' own error types sit behind features, so a crate pulls in only the
//! drivers it uses:
//!
//! | feature    | conversion into [`Failure`]                                        |
//! |------------|---------------------------------------------------------------------|
//! | `postgres` | `tokio_postgres::Error` (by SQLSTATE, then closed and I/O errors)    |
//! | `mysql`    | `mysql_async::Error` (by error number, then driver and I/O errors)   |
//! | `diesel`   | `diesel::result::Error` and `diesel::ConnectionError`                |
//! | `sqlite`   | SQLite errors as diesel reports them (implies `diesel`)              |
//! | `bb8`      | `bb8::RunError<E>` for any `E` that converts into a `Failure`        |
//!
//! The feature `scope` adds [`scope::RequestScope`]: a request's deadline and its use of the
//! database, which a timeout layer sets and the pool reads.
//!
//! A conversion infers [`Reach`] from what the error alone can tell (a SQLSTATE that only occurs at
//! connection startup, a refused connection). Code that knows better — the pool, which knows a
//! failure happened while connecting — says so with [`Failure::with_reach`].
//!
//! # Nothing secret
//!
//! A failure carries a [public message](Failure::public_message) that is safe to show a client, an
//! optional [detail](Failure::detail) for operators, and the private [source](std::error::Error::source)
//! error for logs. `Display` and `Debug` never contain a password or a connection URL: details and the
//! rendered source are passed through [`redact`] first.
//!
//! # Example
//!
//! ```
//! use ballast_core::{Cause, Code, Failure, Reach};
//!
//! // What a pool reports when the server refuses new connections (SQLSTATE 53300).
//! let failure = ballast_core::sqlstate::failure("53300");
//! assert_eq!(failure.cause(), Cause::TooManyConnections);
//! assert_eq!(failure.code(), Code::DbConnection);
//! assert_eq!(failure.code().as_str(), "DB_CONNECTION_ERROR");
//! assert_eq!(failure.status(), 503);
//! assert!(failure.retryable());
//! // 53300 is only ever sent during connection startup: no statement ran.
//! assert_eq!(failure.reach(), Reach::NotSent);
//! // So even a POST may be run again.
//! assert!(failure.may_retry(false));
//! assert_eq!(
//!     failure.to_string(),
//!     "the database has too many open connections (SQLSTATE 53300)"
//! );
//! ```

#![cfg_attr(docsrs, feature(doc_auto_cfg))]

mod cause;
mod check;
mod config;
mod failure;
#[cfg(feature = "http")]
pub mod http;
pub mod io;
pub mod mysql;
mod redact;
#[cfg(feature = "scope")]
pub mod scope;
pub mod sqlite;
pub mod sqlstate;

#[cfg(feature = "bb8")]
mod bb8_impl;
#[cfg(feature = "diesel")]
mod diesel_impl;
#[cfg(any(feature = "diesel", feature = "postgres"))]
mod messages;
#[cfg(any(feature = "diesel", feature = "postgres"))]
pub mod pgbouncer;

pub use cause::{Cause, Code, Reach};
pub use check::{CheckFuture, ReadinessCheck};
pub use config::ConfigError;
#[cfg(feature = "diesel")]
pub use diesel_impl::classify_diesel;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "http"))]
pub(crate) use failure::find_in_chain;
pub use failure::{BoxError, DriverCode, Failure};
pub use redact::redact;
pub use sqlstate::SqlState;
