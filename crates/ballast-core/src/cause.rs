//! What failed ([`Code`], [`Cause`]) and whether it could have run ([`Reach`]).

use std::fmt;

/// What failed, in the terms clients already understand.
///
/// These are the codes of the service ballast grew out of. Each has a fixed HTTP status; whether a
/// failure is worth retrying is a separate question ([`Failure::retryable`](crate::Failure::retryable)).
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
    /// `CONSTRAINT_VIOLATION` (409): the request conflicts with data the database holds — a
    /// duplicate of a unique value, a reference to a row that does not exist, or a row still
    /// referred to. The client has to change the request (or the data) first.
    ConstraintViolation,
    /// `INVALID_DATA` (422): the database refused a value of the request — too long, out of
    /// range, malformed, missing where required, failing a `CHECK`. The client has to fix it.
    InvalidData,
}

impl Code {
    /// The code as clients see it, e.g. `"DB_CONNECTION_ERROR"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Code::DbConnection => "DB_CONNECTION_ERROR",
            Code::DbInit => "DB_INIT_ERROR",
            Code::Memory => "MEMORY_ERROR",
            Code::Critical => "CRITICAL_ERROR",
            Code::ConstraintViolation => "CONSTRAINT_VIOLATION",
            Code::InvalidData => "INVALID_DATA",
        }
    }

    /// The HTTP status that goes with the code: 503 for the database codes, 500 for
    /// `CRITICAL_ERROR`, 409 for `CONSTRAINT_VIOLATION` and 422 for `INVALID_DATA`.
    pub const fn status(self) -> u16 {
        match self {
            Code::DbConnection | Code::DbInit | Code::Memory => 503,
            Code::Critical => 500,
            Code::ConstraintViolation => 409,
            Code::InvalidData => 422,
        }
    }

    /// Whether the code blames the request rather than the service (a 4xx status): the client
    /// has to change the request, and the failure is no operator's concern.
    pub const fn is_client_error(self) -> bool {
        matches!(self, Code::ConstraintViolation | Code::InvalidData)
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
/// [`sqlstate`](crate::sqlstate), [`mysql`](crate::mysql), [`sqlite`](crate::sqlite) and
/// [`io`](crate::io) map driver codes to causes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cause {
    /// Every pooled connection was in use for the whole wait (`DB_CONNECTION_ERROR`, retryable).
    PoolExhausted,
    /// The pool refused to queue the checkout: the wait it could expect was longer than the
    /// request had left, or than a standing queue is held to (`DB_CONNECTION_ERROR`, retryable:
    /// nothing was sent; come back after `Retry-After`).
    Overloaded,
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
    /// A unique constraint refused a duplicate (PostgreSQL 23505, 23P01; MySQL 1062, 1586, 1859;
    /// SQLite `CONSTRAINT_UNIQUE`, `CONSTRAINT_PRIMARYKEY`) (`CONSTRAINT_VIOLATION`, 409, not
    /// retryable: the same request fails the same way).
    UniqueViolation,
    /// A foreign key refused the row: it refers to a row that does not exist, or a row still
    /// referred to was to be deleted (PostgreSQL 23503, 23001; MySQL 1216, 1217, 1451, 1452;
    /// SQLite `CONSTRAINT_FOREIGNKEY`) (`CONSTRAINT_VIOLATION`, 409, not retryable).
    ForeignKeyViolation,
    /// The database refused a value: too long, out of range, malformed, an invalid byte sequence,
    /// `NULL` where it may not be, a failed `CHECK` (PostgreSQL class 22, 23502, 23514; MySQL
    /// 1048, 1364, 1406, 1366, 1264, 1292, 3819, MariaDB 4025; SQLite `CONSTRAINT_NOTNULL`,
    /// `CONSTRAINT_CHECK`) (`INVALID_DATA`, 422, not retryable).
    InvalidData,
    /// The database rejected the statement itself: syntax, an unknown table, a type mismatch in
    /// the query (`CRITICAL_ERROR`, not retryable).
    Query,
    /// Anything else: a bug, a panic, an error nobody classified (`CRITICAL_ERROR`, not retryable).
    Internal,
}

/// What every cause means by default: one row per cause.
struct Row {
    code: Code,
    retryable: bool,
    reach: Reach,
    message: &'static str,
}

/// One row of the table: `code`, retryable, default reach, public message.
const fn row(code: Code, retryable: bool, reach: Reach, message: &'static str) -> Row {
    Row {
        code,
        retryable,
        reach,
        message,
    }
}

impl Cause {
    /// Every cause, in declaration order.
    pub const ALL: &'static [Cause] = &[
        Cause::PoolExhausted,
        Cause::Overloaded,
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
        Cause::UniqueViolation,
        Cause::ForeignKeyViolation,
        Cause::InvalidData,
        Cause::Query,
        Cause::Internal,
    ];

    /// The defaults of this cause. A cause is `NotSent` only when it can arise solely before a
    /// statement is sent (a full pool, a refused connection, a failed login); everything else is
    /// `MaybeSent`, the answer that never lets a write run twice.
    #[rustfmt::skip]
    const fn row(self) -> Row {
        use Code::{ConstraintViolation, Critical, DbConnection, DbInit, InvalidData, Memory};
        use Reach::{MaybeSent, NotSent};
        match self {
            Cause::PoolExhausted => row(DbConnection, true, NotSent, "no database connection became free in time"),
            Cause::Overloaded => row(DbConnection, true, NotSent, "the database is at capacity: this request would have waited too long for a connection"),
            Cause::PoolClosed => row(DbConnection, true, NotSent, "the database pool is closed because the service is shutting down"),
            Cause::Unreachable => row(DbConnection, true, NotSent, "the database could not be reached"),
            Cause::TimedOut => row(DbConnection, true, MaybeSent, "the database did not answer in time"),
            Cause::ConnectionLost => row(DbConnection, true, MaybeSent, "the connection to the database was lost"),
            Cause::TooManyConnections => row(DbConnection, true, NotSent, "the database has too many open connections"),
            Cause::ServerUnavailable => row(DbConnection, true, NotSent, "the database is starting up or shutting down"),
            Cause::Rejected => row(DbConnection, false, NotSent, "the database rejected the connection"),
            Cause::AuthFailed => row(DbInit, false, NotSent, "the database rejected the service's credentials"),
            Cause::DatabaseMissing => row(DbInit, false, NotSent, "the configured database does not exist"),
            Cause::InvalidConfig => row(DbInit, false, NotSent, "the database connection settings are invalid"),
            Cause::OutOfMemory => row(Memory, true, MaybeSent, "the database ran out of memory"),
            Cause::DiskFull => row(Memory, false, MaybeSent, "the database ran out of disk space"),
            Cause::ResourceExhausted => row(Memory, true, MaybeSent, "the database ran out of resources"),
            Cause::Conflict => row(DbConnection, true, MaybeSent, "the database transaction conflicted with another and was rolled back"),
            Cause::Busy => row(DbConnection, true, MaybeSent, "the database is busy"),
            Cause::ReadOnly => row(DbConnection, true, MaybeSent, "the database is read-only right now"),
            Cause::StatementTimeout => row(DbConnection, false, MaybeSent, "the database query took too long"),
            Cause::UniqueViolation => row(ConstraintViolation, false, MaybeSent, "a record with the same unique value already exists"),
            Cause::ForeignKeyViolation => row(ConstraintViolation, false, MaybeSent, "the data refers to a record that does not exist, or a record that is still referred to"),
            Cause::InvalidData => row(InvalidData, false, MaybeSent, "the database refused a value of the request as invalid"),
            Cause::Query => row(Critical, false, MaybeSent, "the database rejected the query"),
            Cause::Internal => row(Critical, false, MaybeSent, "an internal error occurred"),
        }
    }

    /// The client-facing code of this cause.
    pub const fn code(self) -> Code {
        self.row().code
    }

    /// Whether a failure of this cause is, by default, worth trying again.
    pub const fn retryable(self) -> bool {
        self.row().retryable
    }

    /// The reach a failure of this cause has when nothing else is known.
    ///
    /// Causes that can only arise before a statement is sent (a full pool, a refused connection,
    /// an authentication failure) are [`Reach::NotSent`]; everything else is
    /// [`Reach::MaybeSent`], the answer that never lets a write run twice.
    pub const fn default_reach(self) -> Reach {
        self.row().reach
    }

    /// A short message that is safe to show a client: it names what happened, never where.
    pub const fn public_message(self) -> &'static str {
        self.row().message
    }
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
            (Code::ConstraintViolation, "CONSTRAINT_VIOLATION", 409),
            (Code::InvalidData, "INVALID_DATA", 422),
        ];
        for (code, name, status) in expected {
            assert_eq!(code.as_str(), name);
            assert_eq!(code.to_string(), name);
            assert_eq!(code.status(), status);
        }
    }

    #[test]
    fn every_cause_has_consistent_defaults() {
        let mut seen = std::collections::HashSet::new();
        for &cause in Cause::ALL {
            assert!(seen.insert(cause), "{cause:?} listed twice");
            let message = cause.public_message();
            assert!(!message.is_empty());
            assert_eq!(message, message.to_lowercase(), "{cause:?}: lowercase");
            // CRITICAL_ERROR is never worth retrying; configuration errors never either.
            if matches!(cause.code(), Code::Critical | Code::DbInit)
                || cause.code().is_client_error()
            {
                assert!(!cause.retryable(), "{cause:?}");
            }
        }
        // A statement that may have run is never one a connection attempt alone can fail with.
        for cause in [Cause::ConnectionLost, Cause::TimedOut, Cause::Query] {
            assert_eq!(cause.default_reach(), Reach::MaybeSent, "{cause:?}");
        }
    }
}
