//! PostgreSQL: SQLSTATE codes to causes.
//!
//! PostgreSQL localises its messages but never its SQLSTATE codes, so this table is the only place
//! PostgreSQL errors are classified. An exact code wins; otherwise the two-character class decides;
//! otherwise the error is [`Cause::Query`] (the statement itself was rejected).
//!
//! | SQLSTATE | name | cause | code | retryable | why |
//! |---|---|---|---|---|---|
//! | `08001`, `08004` | unable to establish / server rejected establishment | `Unreachable` | `DB_CONNECTION_ERROR` | yes | no connection was made; a later attempt may succeed |
//! | class `08` otherwise (`08000`, `08003`, `08006`, `08007`, `08P01`) | connection exception | `ConnectionLost` | `DB_CONNECTION_ERROR` | yes | the connection broke; a new one may work |
//! | `53300` | too_many_connections | `TooManyConnections` | `DB_CONNECTION_ERROR` | yes | the incident's own error: slots free up as other clients leave |
//! | `53200` | out_of_memory | `OutOfMemory` | `MEMORY_ERROR` | yes | memory frees up as other queries end |
//! | `53100` | disk_full | `DiskFull` | `MEMORY_ERROR` | no | an operator has to free space; retrying only adds load |
//! | class `53` otherwise (`53000`, `53400`) | insufficient resources | `ResourceExhausted` | `MEMORY_ERROR` | yes | like memory, resources free up |
//! | `57P01` | admin_shutdown (backend terminated, server stopping) | `ConnectionLost` | `DB_CONNECTION_ERROR` | yes | this connection is gone; a new one usually works |
//! | `57P02` | crash_shutdown | `ConnectionLost` | `DB_CONNECTION_ERROR` | yes | the server restarts; a new connection works once it is up |
//! | `57P03` | cannot_connect_now (starting up, shutting down, in recovery) | `ServerUnavailable` | `DB_CONNECTION_ERROR` | yes | the server will accept connections shortly |
//! | `57P04` | database_dropped | `ConnectionLost` | `DB_CONNECTION_ERROR` | yes | the session is over; reconnecting reports `3D000` if the database is really gone |
//! | `57P05` | idle_session_timeout | `ConnectionLost` | `DB_CONNECTION_ERROR` | yes | the server closed an idle session; a new one works |
//! | `25P03` | idle_in_transaction_session_timeout | `ConnectionLost` | `DB_CONNECTION_ERROR` | yes | the server ended the session; a new one works |
//! | `57014` | query_canceled (statement timeout) | `StatementTimeout` | `DB_CONNECTION_ERROR` | no | repeating a query that timed out repeats the load that made it slow |
//! | `28P01` | invalid_password | `AuthFailed` | `DB_INIT_ERROR` | no | a wrong password stays wrong; retrying is a connection storm |
//! | `28000` | invalid_authorization_specification (no `pg_hba.conf` entry, role may not log in) | `AuthFailed` | `DB_INIT_ERROR` | no | the deployment has to change |
//! | `3D000` | invalid_catalog_name (no such database) | `DatabaseMissing` | `DB_INIT_ERROR` | no | the deployment has to change |
//! | `40001` | serialization_failure | `Conflict` | `DB_CONNECTION_ERROR` | yes | the server rolled the transaction back; running it again usually succeeds |
//! | `40P01` | deadlock_detected | `Conflict` | `DB_CONNECTION_ERROR` | yes | as above |
//! | class `40` otherwise | transaction rollback | `Conflict` | `DB_CONNECTION_ERROR` | yes | as above |
//! | `55P03` | lock_not_available | `Busy` | `DB_CONNECTION_ERROR` | yes | the lock holder will finish |
//! | `25006` | read_only_sql_transaction | `ReadOnly` | `DB_CONNECTION_ERROR` | yes | usually a standby after a failover; a new connection may reach the primary |
//! | `23505`, `23P01` | unique_violation, exclusion_violation | `UniqueViolation` | `CONSTRAINT_VIOLATION` (409) | no | the row conflicts with one that exists; the client has to change the request |
//! | `23503`, `23001` | foreign_key_violation, restrict_violation | `ForeignKeyViolation` | `CONSTRAINT_VIOLATION` (409) | no | the row refers to one that does not exist, or is still referred to |
//! | `23502`, `23514` | not_null_violation, check_violation | `InvalidData` | `INVALID_DATA` (422) | no | a value of the request breaks a rule of the table |
//! | class `22` (`22001` too long, `22003` out of range, `22021` invalid byte sequence, `22P02` invalid text, ...) | data exception | `InvalidData` | `INVALID_DATA` (422) | no | a value of the request is not one the column can hold |
//! | anything else (syntax `42601`, undefined table `42P01`, ...) | | `Query` | `CRITICAL_ERROR` | no | the statement itself is wrong |
//!
//! Reach: `08001`, `08004`, `53300`, `57P03`, `28P01`, `28000` and `3D000` are only ever sent while
//! a connection starts up, so they are [`Reach::NotSent`]; so is `25006`: a server that only
//! accepts reads refused the write before doing anything, and none of the connection's earlier
//! statements can have written either. The rest arrive in answer to a statement, so they are
//! [`Reach::MaybeSent`] — even a rolled-back transaction may follow others in the same request
//! that committed.

/// `From<tokio_postgres::Error> for Failure`, by this table.
#[cfg(feature = "postgres")]
mod driver;

use std::fmt;

use crate::{Cause, DriverCode, Failure, Reach};

/// The cause of a PostgreSQL error with this SQLSTATE (see the module table).
///
/// A string that is not a SQLSTATE is [`Cause::Internal`].
pub fn cause(sqlstate: &str) -> Cause {
    if SqlState::new(sqlstate).is_none() {
        return Cause::Internal;
    }
    match sqlstate {
        "08001" | "08004" => Cause::Unreachable,
        "53300" => Cause::TooManyConnections,
        "53200" => Cause::OutOfMemory,
        "53100" => Cause::DiskFull,
        "57P01" | "57P02" | "57P04" | "57P05" | "25P03" => Cause::ConnectionLost,
        "57P03" => Cause::ServerUnavailable,
        "57014" => Cause::StatementTimeout,
        "28P01" | "28000" => Cause::AuthFailed,
        "3D000" => Cause::DatabaseMissing,
        "55P03" => Cause::Busy,
        "25006" => Cause::ReadOnly,
        "23505" | "23P01" => Cause::UniqueViolation,
        "23503" | "23001" => Cause::ForeignKeyViolation,
        "23502" | "23514" => Cause::InvalidData,
        _ => match &sqlstate[..2] {
            "08" => Cause::ConnectionLost,
            "53" => Cause::ResourceExhausted,
            "40" => Cause::Conflict,
            "22" => Cause::InvalidData,
            _ => Cause::Query,
        },
    }
}

/// Whether PostgreSQL sends this SQLSTATE only while a connection starts up, before any statement.
pub fn is_startup_only(sqlstate: &str) -> bool {
    matches!(
        sqlstate,
        "08001" | "08004" | "53300" | "57P03" | "28P01" | "28000" | "3D000"
    )
}

/// A [`Failure`] for this SQLSTATE: its cause, the code recorded as the driver code, and its reach
/// (see the module docs).
pub fn failure(sqlstate: &str) -> Failure {
    let reach = if is_startup_only(sqlstate) || sqlstate == "25006" {
        Reach::NotSent
    } else {
        Reach::MaybeSent
    };
    let failure = Failure::new(cause(sqlstate)).with_reach(reach);
    match SqlState::new(sqlstate) {
        Some(state) => failure.with_driver_code(DriverCode::Postgres(state)),
        None => failure,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_parsing() {
        assert_eq!(SqlState::new("57P03").unwrap().as_str(), "57P03");
        assert_eq!(SqlState::new("57P03").unwrap().class(), "57");
        for bad in ["", "5330", "533000", "53 00", "5330x", "ñ5330"] {
            assert!(SqlState::new(bad).is_none(), "{bad:?} accepted");
        }
    }
    use crate::Code;

    /// Every entry of the module table, written out independently of `cause()`.
    const TABLE: &[(&str, Cause, Code, bool, Reach)] = &[
        (
            "08000",
            Cause::ConnectionLost,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            "08001",
            Cause::Unreachable,
            Code::DbConnection,
            true,
            Reach::NotSent,
        ),
        (
            "08003",
            Cause::ConnectionLost,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            "08004",
            Cause::Unreachable,
            Code::DbConnection,
            true,
            Reach::NotSent,
        ),
        (
            "08006",
            Cause::ConnectionLost,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            "08007",
            Cause::ConnectionLost,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            "08P01",
            Cause::ConnectionLost,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            "53300",
            Cause::TooManyConnections,
            Code::DbConnection,
            true,
            Reach::NotSent,
        ),
        (
            "53200",
            Cause::OutOfMemory,
            Code::Memory,
            true,
            Reach::MaybeSent,
        ),
        (
            "53100",
            Cause::DiskFull,
            Code::Memory,
            false,
            Reach::MaybeSent,
        ),
        (
            "53000",
            Cause::ResourceExhausted,
            Code::Memory,
            true,
            Reach::MaybeSent,
        ),
        (
            "53400",
            Cause::ResourceExhausted,
            Code::Memory,
            true,
            Reach::MaybeSent,
        ),
        (
            "57P01",
            Cause::ConnectionLost,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            "57P02",
            Cause::ConnectionLost,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            "57P03",
            Cause::ServerUnavailable,
            Code::DbConnection,
            true,
            Reach::NotSent,
        ),
        (
            "57P04",
            Cause::ConnectionLost,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            "57P05",
            Cause::ConnectionLost,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            "25P03",
            Cause::ConnectionLost,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            "57014",
            Cause::StatementTimeout,
            Code::DbConnection,
            false,
            Reach::MaybeSent,
        ),
        (
            "28P01",
            Cause::AuthFailed,
            Code::DbInit,
            false,
            Reach::NotSent,
        ),
        (
            "28000",
            Cause::AuthFailed,
            Code::DbInit,
            false,
            Reach::NotSent,
        ),
        (
            "3D000",
            Cause::DatabaseMissing,
            Code::DbInit,
            false,
            Reach::NotSent,
        ),
        (
            "40001",
            Cause::Conflict,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            "40P01",
            Cause::Conflict,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            "40002",
            Cause::Conflict,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            "55P03",
            Cause::Busy,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            "25006",
            Cause::ReadOnly,
            Code::DbConnection,
            true,
            Reach::NotSent,
        ),
        (
            "42601",
            Cause::Query,
            Code::Critical,
            false,
            Reach::MaybeSent,
        ),
        (
            "23505",
            Cause::UniqueViolation,
            Code::ConstraintViolation,
            false,
            Reach::MaybeSent,
        ),
        (
            "23P01",
            Cause::UniqueViolation,
            Code::ConstraintViolation,
            false,
            Reach::MaybeSent,
        ),
        (
            "23503",
            Cause::ForeignKeyViolation,
            Code::ConstraintViolation,
            false,
            Reach::MaybeSent,
        ),
        (
            "23001",
            Cause::ForeignKeyViolation,
            Code::ConstraintViolation,
            false,
            Reach::MaybeSent,
        ),
        (
            "23502",
            Cause::InvalidData,
            Code::InvalidData,
            false,
            Reach::MaybeSent,
        ),
        (
            "23514",
            Cause::InvalidData,
            Code::InvalidData,
            false,
            Reach::MaybeSent,
        ),
        (
            "22P02",
            Cause::InvalidData,
            Code::InvalidData,
            false,
            Reach::MaybeSent,
        ),
        (
            "22021",
            Cause::InvalidData,
            Code::InvalidData,
            false,
            Reach::MaybeSent,
        ),
        (
            "22001",
            Cause::InvalidData,
            Code::InvalidData,
            false,
            Reach::MaybeSent,
        ),
        (
            "23000",
            Cause::Query,
            Code::Critical,
            false,
            Reach::MaybeSent,
        ),
        (
            "42P01",
            Cause::Query,
            Code::Critical,
            false,
            Reach::MaybeSent,
        ),
        (
            "XX000",
            Cause::Query,
            Code::Critical,
            false,
            Reach::MaybeSent,
        ),
    ];

    #[test]
    fn every_table_entry() {
        for &(state, cause_expected, code, retryable, reach) in TABLE {
            let failure = failure(state);
            assert_eq!(failure.cause(), cause_expected, "{state}");
            assert_eq!(failure.code(), code, "{state}");
            assert_eq!(failure.retryable(), retryable, "{state}");
            assert_eq!(failure.reach(), reach, "{state}");
            assert_eq!(
                failure.driver_code(),
                Some(DriverCode::Postgres(SqlState::new(state).unwrap())),
                "{state}"
            );
        }
    }

    #[test]
    fn not_a_sqlstate_is_internal() {
        for bad in ["", "533", "hello", "5330000"] {
            assert_eq!(cause(bad), Cause::Internal, "{bad:?}");
            assert_eq!(failure(bad).driver_code(), None);
        }
    }
}
