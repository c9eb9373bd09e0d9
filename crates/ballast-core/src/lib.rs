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
//! PostgreSQL localises its messages (the incident that started ballast logged
//! `lo siento, ya tenemos demasiados clientes`), so failures are classified by the driver's code:
//! SQLSTATE for PostgreSQL ([`sqlstate`]), error numbers for MySQL and MariaDB ([`mysql`]), result
//! codes for SQLite ([`sqlite`]), and [`std::io::ErrorKind`] for the network ([`io`]). Each module
//! documents its table and the reason for every entry.
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

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

pub mod io;
pub mod mysql;
#[cfg(feature = "scope")]
pub mod scope;
pub mod sqlite;
pub mod sqlstate;

mod redact;
pub use redact::redact;

#[cfg(feature = "bb8")]
mod bb8_impl;
#[cfg(feature = "diesel")]
mod diesel_impl;
#[cfg(feature = "mysql")]
mod mysql_impl;
#[cfg(feature = "postgres")]
mod postgres_impl;

/// A boxed error that can cross threads: the type of a [`Failure`]'s private source.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What failed, in the terms clients already understand.
///
/// These are the codes of the service ballast grew out of. Each has a fixed HTTP status; whether a
/// failure is worth retrying is a separate question ([`Failure::retryable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code {
    /// `DB_CONNECTION_ERROR` (503): the database could not be reached or used right now.
    DbConnection,
    /// `DB_INIT_ERROR` (503): the database rejected the configuration (credentials, database name,
    /// URL). Someone has to fix the deployment; retrying does not help.
    DbInit,
    /// `MEMORY_ERROR` (503): the database ran out of memory or another resource.
    Memory,
    /// `CRITICAL_ERROR` (500): anything else — a bug, a bad query, an unexpected error.
    Critical,
}

impl Code {
    /// The code as clients see it, e.g. `"DB_CONNECTION_ERROR"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Code::DbConnection => "DB_CONNECTION_ERROR",
            Code::DbInit => "DB_INIT_ERROR",
            Code::Memory => "MEMORY_ERROR",
            Code::Critical => "CRITICAL_ERROR",
        }
    }

    /// The HTTP status that goes with the code: 503 for the database codes, 500 for
    /// `CRITICAL_ERROR`.
    pub const fn status(self) -> u16 {
        match self {
            Code::DbConnection | Code::DbInit | Code::Memory => 503,
            Code::Critical => 500,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the failed statement could have reached the database.
///
/// This decides whether a write may be repeated: a statement that was never sent cannot have run,
/// so repeating it cannot write twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reach {
    /// The failure happened while acquiring or opening a connection: nothing was sent, so any
    /// request, a `POST` included, may be repeated.
    NotSent,
    /// The connection failed during or after sending, or nobody knows: the statement may have run.
    /// Only idempotent work may be repeated.
    MaybeSent,
}

/// Why the operation failed, in more detail than [`Code`]: the words an operator needs.
///
/// Each cause has a default [`Code`], retryability and public message; the tables in
/// [`sqlstate`], [`mysql`], [`sqlite`] and [`io`] map driver codes to causes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cause {
    /// Every pooled connection was in use for the whole wait (`DB_CONNECTION_ERROR`, retryable).
    PoolExhausted,
    /// The pool was closed, usually because the process is shutting down (`DB_CONNECTION_ERROR`,
    /// retryable: another instance can answer).
    PoolClosed,
    /// The connection was refused or the host could not be reached (`DB_CONNECTION_ERROR`,
    /// retryable).
    Unreachable,
    /// The database did not answer in time (`DB_CONNECTION_ERROR`, retryable).
    TimedOut,
    /// An established connection was closed, reset or terminated by the server
    /// (`DB_CONNECTION_ERROR`, retryable on a new connection).
    ConnectionLost,
    /// The server refuses new connections because it has too many (PostgreSQL 53300, MySQL 1040,
    /// 1203) (`DB_CONNECTION_ERROR`, retryable).
    TooManyConnections,
    /// The server is starting up, shutting down or in recovery (PostgreSQL 57P03)
    /// (`DB_CONNECTION_ERROR`, retryable).
    ServerUnavailable,
    /// The server rejected the connection for a reason the driver did not say with a code
    /// (`DB_CONNECTION_ERROR`, not retryable: it may be a wrong password, and retrying that is a
    /// connection storm).
    Rejected,
    /// Wrong password or a role that may not log in (PostgreSQL 28P01, 28000; MySQL 1045)
    /// (`DB_INIT_ERROR`, not retryable).
    AuthFailed,
    /// The database named in the configuration does not exist (PostgreSQL 3D000, MySQL 1049)
    /// (`DB_INIT_ERROR`, not retryable).
    DatabaseMissing,
    /// The connection settings are malformed (`DB_INIT_ERROR`, not retryable).
    InvalidConfig,
    /// The database ran out of memory (PostgreSQL 53200, MySQL 1037/1038/1041, SQLite NOMEM)
    /// (`MEMORY_ERROR`, retryable: memory frees up as other work ends).
    OutOfMemory,
    /// The database ran out of disk (PostgreSQL 53100, MySQL 1021, SQLite FULL) (`MEMORY_ERROR`,
    /// not retryable: an operator must free space).
    DiskFull,
    /// Another resource ran out (PostgreSQL class 53 otherwise) (`MEMORY_ERROR`, retryable).
    ResourceExhausted,
    /// The transaction lost a serialization conflict or a deadlock and was rolled back
    /// (PostgreSQL 40001, 40P01; MySQL 1213) (`DB_CONNECTION_ERROR`, retryable).
    Conflict,
    /// A lock could not be taken in time (PostgreSQL 55P03, MySQL 1205, SQLite BUSY/LOCKED)
    /// (`DB_CONNECTION_ERROR`, retryable).
    Busy,
    /// The database only accepts reads, e.g. a standby after a failover (PostgreSQL 25006,
    /// MySQL 1290) (`DB_CONNECTION_ERROR`, retryable: a new connection may reach the primary).
    ReadOnly,
    /// The statement ran past the server's time limit (PostgreSQL 57014, MySQL 3024)
    /// (`DB_CONNECTION_ERROR`, not retryable: repeating it at once repeats the load that caused it).
    StatementTimeout,
    /// The database rejected the statement itself: syntax, constraint, type (`CRITICAL_ERROR`,
    /// not retryable).
    Query,
    /// Anything else: a bug, a panic, an error nobody classified (`CRITICAL_ERROR`, not retryable).
    Internal,
}

impl Cause {
    /// The client-facing code of this cause.
    pub const fn code(self) -> Code {
        match self {
            Cause::AuthFailed | Cause::DatabaseMissing | Cause::InvalidConfig => Code::DbInit,
            Cause::OutOfMemory | Cause::DiskFull | Cause::ResourceExhausted => Code::Memory,
            Cause::Query | Cause::Internal => Code::Critical,
            Cause::PoolExhausted
            | Cause::PoolClosed
            | Cause::Unreachable
            | Cause::TimedOut
            | Cause::ConnectionLost
            | Cause::TooManyConnections
            | Cause::ServerUnavailable
            | Cause::Rejected
            | Cause::Conflict
            | Cause::Busy
            | Cause::ReadOnly
            | Cause::StatementTimeout => Code::DbConnection,
        }
    }

    /// Whether a failure of this cause is, by default, worth trying again.
    pub const fn retryable(self) -> bool {
        match self {
            Cause::PoolExhausted
            | Cause::PoolClosed
            | Cause::Unreachable
            | Cause::TimedOut
            | Cause::ConnectionLost
            | Cause::TooManyConnections
            | Cause::ServerUnavailable
            | Cause::OutOfMemory
            | Cause::ResourceExhausted
            | Cause::Conflict
            | Cause::Busy
            | Cause::ReadOnly => true,
            Cause::Rejected
            | Cause::AuthFailed
            | Cause::DatabaseMissing
            | Cause::InvalidConfig
            | Cause::DiskFull
            | Cause::StatementTimeout
            | Cause::Query
            | Cause::Internal => false,
        }
    }

    /// The reach a failure of this cause has when nothing else is known.
    ///
    /// Causes that can only arise before a statement is sent (a full pool, a refused connection,
    /// an authentication failure) are [`Reach::NotSent`]; everything else is
    /// [`Reach::MaybeSent`], the answer that never lets a write run twice.
    pub const fn default_reach(self) -> Reach {
        match self {
            Cause::PoolExhausted
            | Cause::PoolClosed
            | Cause::Unreachable
            | Cause::TooManyConnections
            | Cause::ServerUnavailable
            | Cause::Rejected
            | Cause::AuthFailed
            | Cause::DatabaseMissing
            | Cause::InvalidConfig => Reach::NotSent,
            _ => Reach::MaybeSent,
        }
    }

    /// A short message that is safe to show a client: it names what happened, never where.
    pub const fn public_message(self) -> &'static str {
        match self {
            Cause::PoolExhausted => "no database connection became free in time",
            Cause::PoolClosed => "the database pool is closed because the service is shutting down",
            Cause::Unreachable => "the database could not be reached",
            Cause::TimedOut => "the database did not answer in time",
            Cause::ConnectionLost => "the connection to the database was lost",
            Cause::TooManyConnections => "the database has too many open connections",
            Cause::ServerUnavailable => "the database is starting up or shutting down",
            Cause::Rejected => "the database rejected the connection",
            Cause::AuthFailed => "the database rejected the service's credentials",
            Cause::DatabaseMissing => "the configured database does not exist",
            Cause::InvalidConfig => "the database connection settings are invalid",
            Cause::OutOfMemory => "the database ran out of memory",
            Cause::DiskFull => "the database ran out of disk space",
            Cause::ResourceExhausted => "the database ran out of resources",
            Cause::Conflict => {
                "the database transaction conflicted with another and was rolled back"
            }
            Cause::Busy => "the database is busy",
            Cause::ReadOnly => "the database is read-only right now",
            Cause::StatementTimeout => "the database query took too long",
            Cause::Query => "the database rejected the query",
            Cause::Internal => "an internal error occurred",
        }
    }
}

/// The database driver's own code for a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DriverCode {
    /// A PostgreSQL SQLSTATE.
    Postgres(SqlState),
    /// A MySQL or MariaDB error number (server `ER_*` or client `CR_*`).
    MySql(u16),
    /// A SQLite primary result code.
    Sqlite(i32),
}

impl fmt::Display for DriverCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverCode::Postgres(state) => write!(f, "SQLSTATE {state}"),
            DriverCode::MySql(number) => write!(f, "MySQL error {number}"),
            DriverCode::Sqlite(code) => write!(f, "SQLite result code {code}"),
        }
    }
}

/// A five-character PostgreSQL SQLSTATE, such as `53300`.
///
/// Stored inline, so a [`DriverCode`] is `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SqlState([u8; 5]);

impl SqlState {
    /// Parses a SQLSTATE: exactly five ASCII digits or upper-case letters.
    ///
    /// Returns `None` for anything else.
    pub fn new(code: &str) -> Option<Self> {
        let bytes: [u8; 5] = code.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
            .then_some(SqlState(bytes))
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored (checked in `new`).
        std::str::from_utf8(&self.0).unwrap_or("?????")
    }

    /// The class: the first two characters (`"53"` for `53300`).
    pub fn class(&self) -> &str {
        &self.as_str()[..2]
    }
}

impl fmt::Display for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SqlState({})", self.as_str())
    }
}

/// A classified database failure: what failed, whether to retry, whether the statement could have
/// run, and the private error behind it.
///
/// Build one from a driver error with `From`/`?` (see the crate docs for the features), from a
/// driver code with [`sqlstate::failure`], [`mysql::failure`] or [`sqlite::failure`], or from a
/// [`Cause`] with [`Failure::new`], then refine it with the `with_*` methods.
pub struct Failure {
    // Boxed so `Result<T, Failure>` stays one pointer wide on the happy path.
    inner: Box<Inner>,
}

struct Inner {
    cause: Cause,
    code: Code,
    retryable: bool,
    reach: Reach,
    idempotent: bool,
    retry_after: Option<Duration>,
    known_outage: bool,
    driver_code: Option<DriverCode>,
    public_message: Cow<'static, str>,
    detail: Option<String>,
    source: Option<BoxError>,
}

impl Failure {
    /// A failure of the given cause, with that cause's code, retryability, reach and public
    /// message.
    pub fn new(cause: Cause) -> Self {
        Failure {
            inner: Box::new(Inner {
                cause,
                code: cause.code(),
                retryable: cause.retryable(),
                reach: cause.default_reach(),
                idempotent: false,
                retry_after: None,
                known_outage: false,
                driver_code: None,
                public_message: Cow::Borrowed(cause.public_message()),
                detail: None,
                source: None,
            }),
        }
    }

    /// Sets where the failure happened. Code that knows a failure happened while connecting says
    /// [`Reach::NotSent`] here.
    #[must_use]
    pub fn with_reach(mut self, reach: Reach) -> Self {
        self.inner.reach = reach;
        self
    }

    /// Says whether the failed work may run again without a second effect whatever its reach —
    /// because an idempotency key guards it, say: a repeat with the same key returns the first
    /// outcome instead of writing again. [`may_retry`](Self::may_retry) then allows a repeat of a
    /// statement that may have run.
    #[must_use]
    pub fn with_idempotent(mut self, idempotent: bool) -> Self {
        self.inner.idempotent = idempotent;
        self
    }

    /// Says when trying again can first succeed, as the source knows it: the pool, after failed
    /// connects, tries the database again only once its pause is over. The error layer sends
    /// it as `Retry-After`; the retry layer never retries sooner.
    #[must_use]
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.inner.retry_after = Some(after);
        self
    }

    /// Says the failure was already known when the operation started: the pool answered without
    /// trying — from its closed connect gate, because connecting has been failing, or because
    /// too many checkouts already wait. An outage or an overload, not a blip: retrying within
    /// the same request cannot help, so the HTTP retry layer does not, and the client is
    /// answered at once.
    #[must_use]
    pub fn with_known_outage(mut self, known: bool) -> Self {
        self.inner.known_outage = known;
        self
    }

    /// Overrides whether the failure is worth retrying.
    #[must_use]
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.inner.retryable = retryable;
        self
    }

    /// Overrides the client-facing code (and with it the status).
    #[must_use]
    pub fn with_code(mut self, code: Code) -> Self {
        self.inner.code = code;
        self
    }

    /// Records the driver's code.
    #[must_use]
    pub fn with_driver_code(mut self, code: DriverCode) -> Self {
        self.inner.driver_code = Some(code);
        self
    }

    /// Replaces the client-facing message. It must be safe to show anyone.
    #[must_use]
    pub fn with_public_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.inner.public_message = message.into();
        self
    }

    /// Adds operator-facing detail, such as `"10 of 10 connections in use, waited 20s"`.
    ///
    /// The text is passed through [`redact`], so a URL or password in it never reaches a log.
    #[must_use]
    pub fn with_detail(mut self, detail: impl AsRef<str>) -> Self {
        self.inner.detail = Some(redact(detail.as_ref()).into_owned());
        self
    }

    /// Keeps the error that caused this failure, for logs (see [`std::error::Error::source`]).
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.inner.source = Some(source.into());
        self
    }

    /// Why it failed.
    pub fn cause(&self) -> Cause {
        self.inner.cause
    }

    /// The client-facing code.
    pub fn code(&self) -> Code {
        self.inner.code
    }

    /// The HTTP status of the code (503 or 500).
    pub fn status(&self) -> u16 {
        self.inner.code.status()
    }

    /// Whether the operation is worth trying again, ignoring whether it is safe to.
    pub fn retryable(&self) -> bool {
        self.inner.retryable
    }

    /// Whether the statement could have reached the database.
    pub fn reach(&self) -> Reach {
        self.inner.reach
    }

    /// Whether the work may be run again: the failure is retryable **and** repeating it cannot
    /// apply a write twice — nothing was sent, or the caller says the work is idempotent (an
    /// idempotent HTTP method), or the failure says so itself
    /// ([`with_idempotent`](Self::with_idempotent)).
    ///
    /// This is the answer a client may be given as `retryable`: a promise that repeating the
    /// request cannot do it twice.
    pub fn may_retry(&self, idempotent: bool) -> bool {
        self.inner.retryable
            && (self.inner.reach == Reach::NotSent || idempotent || self.inner.idempotent)
    }

    /// When trying again can first succeed, if the source knows (see
    /// [`with_retry_after`](Self::with_retry_after)).
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// Whether the failure was known before the operation started: an outage (see
    /// [`with_known_outage`](Self::with_known_outage)).
    pub fn is_known_outage(&self) -> bool {
        self.inner.known_outage
    }

    /// Whether the failure says its work is safe to repeat whatever its reach (see
    /// [`with_idempotent`](Self::with_idempotent)).
    pub fn is_idempotent(&self) -> bool {
        self.inner.idempotent
    }

    /// Whether the failure is worth retrying but repeating it may apply a write twice: the
    /// statement may have run and nothing says it is idempotent. Nobody knows whether it took
    /// effect; the client must check before repeating it.
    pub fn outcome_unknown(&self, idempotent: bool) -> bool {
        self.inner.retryable && !self.may_retry(idempotent)
    }

    /// The driver's code, when there was one.
    pub fn driver_code(&self) -> Option<DriverCode> {
        self.inner.driver_code
    }

    /// The message that is safe to show a client.
    pub fn public_message(&self) -> &str {
        &self.inner.public_message
    }

    /// Operator-facing detail, already redacted.
    pub fn detail(&self) -> Option<&str> {
        self.inner.detail.as_deref()
    }

    /// The failure and its whole source chain on one line, redacted: what a log line needs.
    ///
    /// `the database has too many open connections (SQLSTATE 53300): db error: FATAL: ...`
    ///
    /// Only the first line of each error is kept: PostgreSQL's errors put row values in their
    /// `DETAIL` and `WHERE` lines, and those stay out of logs.
    pub fn report(&self) -> String {
        match self.source_chain() {
            Some(chain) => format!("{self}: {chain}"),
            None => self.to_string(),
        }
    }

    /// The source chain, redacted, first line of each error, joined by `": "`.
    fn source_chain(&self) -> Option<String> {
        let mut source = StdError::source(self);
        let mut chain: Option<String> = None;
        while let Some(error) = source {
            let text = error.to_string();
            let first_line = redact(text.lines().next().unwrap_or_default()).into_owned();
            chain = Some(match chain {
                Some(chain) => format!("{chain}: {first_line}"),
                None => first_line,
            });
            source = error.source();
        }
        chain
    }

    /// A copy of this failure for another caller — every waiter of a pool that could not
    /// connect gets its own — whose source is the redacted text of this one's source chain
    /// (the original error itself cannot be cloned).
    pub fn detached(&self) -> Failure {
        let inner = &self.inner;
        Failure {
            inner: Box::new(Inner {
                cause: inner.cause,
                code: inner.code,
                retryable: inner.retryable,
                reach: inner.reach,
                idempotent: inner.idempotent,
                retry_after: inner.retry_after,
                known_outage: inner.known_outage,
                driver_code: inner.driver_code,
                public_message: inner.public_message.clone(),
                detail: inner.detail.clone(),
                source: self
                    .source_chain()
                    .map(|chain| Box::new(DetachedSource(chain)) as BoxError),
            }),
        }
    }
}

/// The source of a [`Failure::detached`] copy: the original chain as redacted text.
#[derive(Debug)]
struct DetachedSource(String);

impl fmt::Display for DetachedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for DetachedSource {}

impl From<Cause> for Failure {
    fn from(cause: Cause) -> Self {
        Failure::new(cause)
    }
}

impl fmt::Display for Failure {
    /// The public message, then the detail, then the driver code:
    /// `no database connection became free in time: 10 of 10 in use (SQLSTATE 53300)`.
    ///
    /// The source error is not included; walk [`source`](std::error::Error::source) for it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.public_message)?;
        if let Some(detail) = &self.inner.detail {
            write!(f, ": {detail}")?;
        }
        if let Some(code) = &self.inner.driver_code {
            write!(f, " ({code})")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The source is shown through its redacted `Display`: a driver's `Debug` may print its
        // whole configuration, password included.
        let source = self
            .inner
            .source
            .as_ref()
            .map(|source| redact(&source.to_string()).into_owned());
        f.debug_struct("Failure")
            .field("code", &self.inner.code)
            .field("cause", &self.inner.cause)
            .field("retryable", &self.inner.retryable)
            .field("reach", &self.inner.reach)
            .field("idempotent", &self.inner.idempotent)
            .field("retry_after", &self.inner.retry_after)
            .field("known_outage", &self.inner.known_outage)
            .field("driver_code", &self.inner.driver_code)
            .field("public_message", &self.inner.public_message)
            .field("detail", &self.inner.detail)
            .field("source", &source)
            .finish()
    }
}

impl StdError for Failure {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_ref()
            .map(|source| &**source as &(dyn StdError + 'static))
    }
}

/// Finds the first error of type `T` in `error`'s source chain, `error` included.
#[cfg(any(feature = "postgres", feature = "mysql", test))]
pub(crate) fn find_in_chain<'a, T: StdError + 'static>(
    error: &'a (dyn StdError + 'static),
) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        current = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_the_seed_names_and_statuses() {
        let expected = [
            (Code::DbConnection, "DB_CONNECTION_ERROR", 503),
            (Code::DbInit, "DB_INIT_ERROR", 503),
            (Code::Memory, "MEMORY_ERROR", 503),
            (Code::Critical, "CRITICAL_ERROR", 500),
        ];
        for (code, name, status) in expected {
            assert_eq!(code.as_str(), name);
            assert_eq!(code.to_string(), name);
            assert_eq!(code.status(), status);
        }
    }

    #[test]
    fn may_retry_needs_retryable_and_safe_to_repeat() {
        let not_sent = Failure::new(Cause::Unreachable);
        assert_eq!(not_sent.reach(), Reach::NotSent);
        assert!(not_sent.may_retry(false), "nothing ran: a POST may repeat");
        assert!(not_sent.may_retry(true));

        let maybe_sent = Failure::new(Cause::ConnectionLost);
        assert_eq!(maybe_sent.reach(), Reach::MaybeSent);
        assert!(!maybe_sent.may_retry(false), "a write may have run");
        assert!(maybe_sent.may_retry(true));

        let fatal = Failure::new(Cause::AuthFailed);
        assert!(!fatal.may_retry(false));
        assert!(!fatal.may_retry(true));

        let overridden = Failure::new(Cause::ConnectionLost).with_reach(Reach::NotSent);
        assert!(overridden.may_retry(false));

        // Guarded by an idempotency key: a write that may have run may be repeated.
        let keyed = Failure::new(Cause::ConnectionLost).with_idempotent(true);
        assert!(keyed.may_retry(false));
        assert!(!keyed.outcome_unknown(false));
        assert!(
            maybe_sent.outcome_unknown(false),
            "a POST that may have run"
        );
        assert!(!maybe_sent.outcome_unknown(true), "a GET may simply repeat");
        assert!(!fatal.outcome_unknown(false), "not worth repeating at all");
    }

    #[test]
    fn display_is_message_detail_and_code() {
        let failure = Failure::new(Cause::PoolExhausted)
            .with_detail("10 of 10 connections in use, waited 20s")
            .with_driver_code(DriverCode::Postgres(SqlState::new("53300").unwrap()));
        assert_eq!(
            failure.to_string(),
            "no database connection became free in time: 10 of 10 connections in use, waited 20s (SQLSTATE 53300)"
        );
    }

    #[test]
    fn sqlstate_parsing() {
        assert_eq!(SqlState::new("57P03").unwrap().as_str(), "57P03");
        assert_eq!(SqlState::new("57P03").unwrap().class(), "57");
        for bad in ["", "5330", "533000", "53 00", "5330x", "ñ5330"] {
            assert!(SqlState::new(bad).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn source_is_kept_and_chain_is_searchable() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let failure = Failure::new(Cause::ConnectionLost).with_source(io);
        let source = StdError::source(&failure).expect("source kept");
        assert_eq!(source.to_string(), "reset by peer");
        let found = find_in_chain::<std::io::Error>(&failure).expect("io error in chain");
        assert_eq!(found.kind(), std::io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn detached_copies_keep_everything_but_the_original_source() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused by h");
        let failure = Failure::new(Cause::Unreachable)
            .with_detail("connecting")
            .with_driver_code(DriverCode::MySql(2003))
            .with_source(io);
        let copy = failure.detached();
        assert_eq!(copy.cause(), failure.cause());
        assert_eq!(copy.code(), failure.code());
        assert_eq!(copy.reach(), failure.reach());
        assert_eq!(copy.retryable(), failure.retryable());
        assert_eq!(copy.driver_code(), failure.driver_code());
        assert_eq!(copy.to_string(), failure.to_string());
        assert_eq!(copy.report(), failure.report());
        assert_eq!(
            failure.report(),
            "the database could not be reached: connecting (MySQL error 2003): refused by h"
        );
        assert!(Failure::new(Cause::Busy).detached().source().is_none());
    }

    #[test]
    fn canary_password_never_shows() {
        const CANARY: &str = "canary-Pa55w0rd";
        let url = format!("postgres://app:{CANARY}@db.internal:5432/prod");
        let failure = Failure::new(Cause::Unreachable)
            .with_detail(format!("connecting to {url}"))
            .with_source(std::io::Error::other(format!(
                "cannot connect to {url} password={CANARY}"
            )));
        for text in [
            failure.to_string(),
            format!("{failure:?}"),
            failure.report(),
        ] {
            assert!(!text.contains(CANARY), "password leaked: {text}");
            assert!(!text.contains("db.internal"), "URL leaked: {text}");
        }
    }

    #[test]
    fn every_cause_has_consistent_defaults() {
        let all = [
            Cause::PoolExhausted,
            Cause::PoolClosed,
            Cause::Unreachable,
            Cause::TimedOut,
            Cause::ConnectionLost,
            Cause::TooManyConnections,
            Cause::ServerUnavailable,
            Cause::Rejected,
            Cause::AuthFailed,
            Cause::DatabaseMissing,
            Cause::InvalidConfig,
            Cause::OutOfMemory,
            Cause::DiskFull,
            Cause::ResourceExhausted,
            Cause::Conflict,
            Cause::Busy,
            Cause::ReadOnly,
            Cause::StatementTimeout,
            Cause::Query,
            Cause::Internal,
        ];
        for cause in all {
            let message = cause.public_message();
            assert!(!message.is_empty());
            assert_eq!(message, message.to_lowercase(), "{cause:?}: lowercase");
            // CRITICAL_ERROR is never worth retrying; configuration errors never either.
            if matches!(cause.code(), Code::Critical | Code::DbInit) {
                assert!(!cause.retryable(), "{cause:?}");
            }
        }
    }
}
