//! MySQL and MariaDB: error numbers to causes.
//!
//! Server errors (`ER_*`, 1000–1999 and 3000+) and the classic client errors (`CR_*`, 2000–2999)
//! share one number space. `mysql_async` reports client-side conditions as I/O or driver errors
//! rather than `CR_*` numbers; those are classified in the `mysql` feature's conversion, and the
//! `CR_*` entries here serve other drivers and logs that carry the numbers.
//!
//! | number | name | cause | code | retryable | why |
//! |---|---|---|---|---|---|
//! | 1040 | ER_CON_COUNT_ERROR (too many connections) | `TooManyConnections` | `DB_CONNECTION_ERROR` | yes | slots free up as other clients leave |
//! | 1203 | ER_TOO_MANY_USER_CONNECTIONS (`MAX_USER_CONNECTIONS`) | `TooManyConnections` | `DB_CONNECTION_ERROR` | yes | as above, for one user |
//! | 1226 | ER_USER_LIMIT_REACHED (`max_user_connections` resource) | `TooManyConnections` | `DB_CONNECTION_ERROR` | yes | as above |
//! | 1045 | ER_ACCESS_DENIED_ERROR (wrong password) | `AuthFailed` | `DB_INIT_ERROR` | no | a wrong password stays wrong |
//! | 1044 | ER_DBACCESS_DENIED_ERROR | `AuthFailed` | `DB_INIT_ERROR` | no | grants have to change |
//! | 1698 | ER_ACCESS_DENIED_NO_PASSWORD_ERROR | `AuthFailed` | `DB_INIT_ERROR` | no | as 1045 |
//! | 1130 | ER_HOST_NOT_PRIVILEGED | `AuthFailed` | `DB_INIT_ERROR` | no | grants have to change |
//! | 1049 | ER_BAD_DB_ERROR (unknown database) | `DatabaseMissing` | `DB_INIT_ERROR` | no | the deployment has to change |
//! | 1037, 1038 | ER_OUTOFMEMORY, ER_OUT_OF_SORTMEMORY | `OutOfMemory` | `MEMORY_ERROR` | yes | memory frees up as other queries end |
//! | 1041 | ER_OUT_OF_RESOURCES | `OutOfMemory` | `MEMORY_ERROR` | yes | the server's message for this one is "out of memory" |
//! | 1021 | ER_DISK_FULL | `DiskFull` | `MEMORY_ERROR` | no | an operator has to free space |
//! | 1114 | ER_RECORD_FILE_FULL (table is full) | `DiskFull` | `MEMORY_ERROR` | no | as above |
//! | 1213 | ER_LOCK_DEADLOCK | `Conflict` | `DB_CONNECTION_ERROR` | yes | the transaction was rolled back; running it again usually succeeds |
//! | 1205 | ER_LOCK_WAIT_TIMEOUT | `Busy` | `DB_CONNECTION_ERROR` | yes | the lock holder will finish |
//! | 1290 | ER_OPTION_PREVENTS_STATEMENT (`--read-only`) | `ReadOnly` | `DB_CONNECTION_ERROR` | yes | usually a replica after a failover |
//! | 1792 | ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION | `ReadOnly` | `DB_CONNECTION_ERROR` | yes | as above |
//! | 1053 | ER_SERVER_SHUTDOWN | `ConnectionLost` | `DB_CONNECTION_ERROR` | yes | a new connection works once the server is back |
//! | 1927 | ER_CONNECTION_KILLED (MariaDB) | `ConnectionLost` | `DB_CONNECTION_ERROR` | yes | this connection was killed; a new one works |
//! | 1152, 1153, 1154, 1156, 1157, 1158, 1159, 1160, 1161 | ER_ABORTING_CONNECTION, ER_NET_* | `ConnectionLost` | `DB_CONNECTION_ERROR` | yes | the connection broke |
//! | 3024, 1969 | ER_QUERY_TIMEOUT (MySQL), ER_STATEMENT_TIMEOUT (MariaDB) | `StatementTimeout` | `DB_CONNECTION_ERROR` | no | repeating a slow query repeats the load |
//! | 2002, 2003 | CR_CONNECTION_ERROR, CR_CONN_HOST_ERROR (refused) | `Unreachable` | `DB_CONNECTION_ERROR` | yes | no connection was made |
//! | 2005 | CR_UNKNOWN_HOST | `Unreachable` | `DB_CONNECTION_ERROR` | yes | name resolution fails during outages too |
//! | 2006, 2013 | CR_SERVER_GONE_ERROR, CR_SERVER_LOST | `ConnectionLost` | `DB_CONNECTION_ERROR` | yes | the connection broke |
//! | 2026 | CR_SSL_CONNECTION_ERROR | `InvalidConfig` | `DB_INIT_ERROR` | no | TLS settings have to change |
//! | 1062, 1586, 1859 | ER_DUP_ENTRY, ER_DUP_ENTRY_WITH_KEY_NAME, ER_DUP_UNKNOWN_IN_INDEX | `UniqueViolation` | `CONSTRAINT_VIOLATION` (409) | no | the row conflicts with one that exists |
//! | 1216, 1217, 1451, 1452, 1830, 1834 | ER_NO_REFERENCED_ROW(_2), ER_ROW_IS_REFERENCED(_2), ... | `ForeignKeyViolation` | `CONSTRAINT_VIOLATION` (409) | no | the row refers to one that does not exist, or is still referred to |
//! | 1048, 1364 | ER_BAD_NULL_ERROR, ER_NO_DEFAULT_FOR_FIELD | `InvalidData` | `INVALID_DATA` (422) | no | a required value is missing |
//! | 1406, 1366, 1264, 1265, 1292, 1367 | ER_DATA_TOO_LONG, ER_TRUNCATED_WRONG_VALUE_FOR_FIELD (incorrect string value), ER_WARN_DATA_OUT_OF_RANGE, WARN_DATA_TRUNCATED, ER_TRUNCATED_WRONG_VALUE, ER_ILLEGAL_VALUE_FOR_TYPE | `InvalidData` | `INVALID_DATA` (422) | no | a value is not one the column can hold (strict mode) |
//! | 3819, 4025 | ER_CHECK_CONSTRAINT_VIOLATED (MySQL), ER_CONSTRAINT_FAILED (MariaDB) | `InvalidData` | `INVALID_DATA` (422) | no | a value fails a `CHECK` |
//! | anything else (syntax 1064, unknown table 1146, ...) | | `Query` | `CRITICAL_ERROR` | no | the statement itself is wrong |
//!
//! Reach: 1040, 1203, 1226, 1045, 1044, 1698, 1130, 1049, 2002, 2003, 2005 and 2026 only happen while a
//! connection is being made, so they are [`Reach::NotSent`]; the rest are [`Reach::MaybeSent`].

/// `From<mysql_async::Error> for Failure`, by this table.
#[cfg(feature = "mysql")]
mod driver;

use crate::{Cause, DriverCode, Failure, Reach};

/// The cause of a MySQL or MariaDB error with this number (see the module table).
pub fn cause(number: u16) -> Cause {
    match number {
        1040 | 1203 | 1226 => Cause::TooManyConnections,
        1044 | 1045 | 1130 | 1698 => Cause::AuthFailed,
        1049 => Cause::DatabaseMissing,
        1037 | 1038 | 1041 => Cause::OutOfMemory,
        1021 | 1114 => Cause::DiskFull,
        1213 => Cause::Conflict,
        1205 => Cause::Busy,
        1290 | 1792 => Cause::ReadOnly,
        1053 | 1927 | 1152 | 1153 | 1154 | 1156..=1161 | 2006 | 2013 => Cause::ConnectionLost,
        3024 | 1969 => Cause::StatementTimeout,
        2002 | 2003 | 2005 => Cause::Unreachable,
        2026 => Cause::InvalidConfig,
        1062 | 1586 | 1859 => Cause::UniqueViolation,
        1216 | 1217 | 1451 | 1452 | 1830 | 1834 => Cause::ForeignKeyViolation,
        1048 | 1364 | 1406 | 1366 | 1264 | 1265 | 1292 | 1367 | 3819 | 4025 => Cause::InvalidData,
        _ => Cause::Query,
    }
}

/// Whether this error number only happens while a connection is being made.
pub fn is_connect_only(number: u16) -> bool {
    matches!(
        number,
        1040 | 1203 | 1226 | 1044 | 1045 | 1130 | 1698 | 1049 | 2002 | 2003 | 2005 | 2026
    )
}

/// A [`Failure`] for this error number: its cause, the number as the driver code, and its reach.
pub fn failure(number: u16) -> Failure {
    let reach = if is_connect_only(number) {
        Reach::NotSent
    } else {
        Reach::MaybeSent
    };
    Failure::new(cause(number))
        .with_reach(reach)
        .with_driver_code(DriverCode::MySql(number))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Code;

    /// Every entry of the module table, written out independently of `cause()`.
    const TABLE: &[(u16, Cause, Code, bool, Reach)] = &[
        (
            1040,
            Cause::TooManyConnections,
            Code::DbConnection,
            true,
            Reach::NotSent,
        ),
        (
            1203,
            Cause::TooManyConnections,
            Code::DbConnection,
            true,
            Reach::NotSent,
        ),
        (
            1226,
            Cause::TooManyConnections,
            Code::DbConnection,
            true,
            Reach::NotSent,
        ),
        (1045, Cause::AuthFailed, Code::DbInit, false, Reach::NotSent),
        (1044, Cause::AuthFailed, Code::DbInit, false, Reach::NotSent),
        (1698, Cause::AuthFailed, Code::DbInit, false, Reach::NotSent),
        (1130, Cause::AuthFailed, Code::DbInit, false, Reach::NotSent),
        (
            1049,
            Cause::DatabaseMissing,
            Code::DbInit,
            false,
            Reach::NotSent,
        ),
        (
            1037,
            Cause::OutOfMemory,
            Code::Memory,
            true,
            Reach::MaybeSent,
        ),
        (
            1038,
            Cause::OutOfMemory,
            Code::Memory,
            true,
            Reach::MaybeSent,
        ),
        (
            1041,
            Cause::OutOfMemory,
            Code::Memory,
            true,
            Reach::MaybeSent,
        ),
        (1021, Cause::DiskFull, Code::Memory, false, Reach::MaybeSent),
        (1114, Cause::DiskFull, Code::Memory, false, Reach::MaybeSent),
        (
            1213,
            Cause::Conflict,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            1205,
            Cause::Busy,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            1290,
            Cause::ReadOnly,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            1792,
            Cause::ReadOnly,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            1053,
            Cause::ConnectionLost,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            1927,
            Cause::ConnectionLost,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            1152,
            Cause::ConnectionLost,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            1153,
            Cause::ConnectionLost,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            1154,
            Cause::ConnectionLost,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            1156,
            Cause::ConnectionLost,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            1157,
            Cause::ConnectionLost,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            1158,
            Cause::ConnectionLost,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            1159,
            Cause::ConnectionLost,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            1160,
            Cause::ConnectionLost,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            1161,
            Cause::ConnectionLost,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            2006,
            Cause::ConnectionLost,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            2013,
            Cause::ConnectionLost,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        ),
        (
            3024,
            Cause::StatementTimeout,
            Code::DbConnection,
            false,
            Reach::MaybeSent,
        ),
        (
            1969,
            Cause::StatementTimeout,
            Code::DbConnection,
            false,
            Reach::MaybeSent,
        ),
        (
            2002,
            Cause::Unreachable,
            Code::DbConnection,
            true,
            Reach::NotSent,
        ),
        (
            2003,
            Cause::Unreachable,
            Code::DbConnection,
            true,
            Reach::NotSent,
        ),
        (
            2005,
            Cause::Unreachable,
            Code::DbConnection,
            true,
            Reach::NotSent,
        ),
        (
            2026,
            Cause::InvalidConfig,
            Code::DbInit,
            false,
            Reach::NotSent,
        ),
        (1064, Cause::Query, Code::Critical, false, Reach::MaybeSent),
        (1146, Cause::Query, Code::Critical, false, Reach::MaybeSent),
        (
            1062,
            Cause::UniqueViolation,
            Code::ConstraintViolation,
            false,
            Reach::MaybeSent,
        ),
        (
            1452,
            Cause::ForeignKeyViolation,
            Code::ConstraintViolation,
            false,
            Reach::MaybeSent,
        ),
        (
            1451,
            Cause::ForeignKeyViolation,
            Code::ConstraintViolation,
            false,
            Reach::MaybeSent,
        ),
        (
            1048,
            Cause::InvalidData,
            Code::InvalidData,
            false,
            Reach::MaybeSent,
        ),
        (
            1406,
            Cause::InvalidData,
            Code::InvalidData,
            false,
            Reach::MaybeSent,
        ),
        (
            1366,
            Cause::InvalidData,
            Code::InvalidData,
            false,
            Reach::MaybeSent,
        ),
        (
            3819,
            Cause::InvalidData,
            Code::InvalidData,
            false,
            Reach::MaybeSent,
        ),
        (
            4025,
            Cause::InvalidData,
            Code::InvalidData,
            false,
            Reach::MaybeSent,
        ),
        (1146, Cause::Query, Code::Critical, false, Reach::MaybeSent),
    ];

    #[test]
    fn every_table_entry() {
        for &(number, cause_expected, code, retryable, reach) in TABLE {
            let failure = failure(number);
            assert_eq!(failure.cause(), cause_expected, "{number}");
            assert_eq!(failure.code(), code, "{number}");
            assert_eq!(failure.retryable(), retryable, "{number}");
            assert_eq!(failure.reach(), reach, "{number}");
            assert_eq!(failure.driver_code(), Some(DriverCode::MySql(number)));
        }
    }
}
