//! SQLite: result codes to causes.
//!
//! | code | name | cause | code | retryable | why |
//! |---|---|---|---|---|---|
//! | 5 | SQLITE_BUSY ("database is locked") | `Busy` | `DB_CONNECTION_ERROR` | yes | another connection holds the write lock; it will finish |
//! | 6 | SQLITE_LOCKED ("database table is locked") | `Busy` | `DB_CONNECTION_ERROR` | yes | as above, inside one shared cache |
//! | 15 | SQLITE_PROTOCOL ("locking protocol") | `Busy` | `DB_CONNECTION_ERROR` | yes | a lock race between processes; retrying resolves it |
//! | 17 | SQLITE_SCHEMA ("database schema has changed") | `Conflict` | `DB_CONNECTION_ERROR` | yes | the statement is prepared again on the next try |
//! | 7 | SQLITE_NOMEM ("out of memory") | `OutOfMemory` | `MEMORY_ERROR` | yes | memory frees up as other work ends |
//! | 13 | SQLITE_FULL ("database or disk is full") | `DiskFull` | `MEMORY_ERROR` | no | an operator has to free space |
//! | 14 | SQLITE_CANTOPEN ("unable to open database file") | `DatabaseMissing` | `DB_INIT_ERROR` | no | the path or its permissions have to change |
//! | 8 | SQLITE_READONLY ("attempt to write a readonly database") | `InvalidConfig` | `DB_INIT_ERROR` | no | the file's permissions have to change |
//! | 26 | SQLITE_NOTADB ("file is not a database") | `InvalidConfig` | `DB_INIT_ERROR` | no | the path names the wrong file |
//! | 23 | SQLITE_AUTH | `AuthFailed` | `DB_INIT_ERROR` | no | the authorizer refused |
//! | 9 | SQLITE_INTERRUPT ("interrupted") | `StatementTimeout` | `DB_CONNECTION_ERROR` | no | the application interrupted a slow statement |
//! | 2, 10, 11, 21 | INTERNAL, IOERR, CORRUPT, MISUSE | `Internal` | `CRITICAL_ERROR` | no | a bug or a damaged file; retrying does not help |
//! | 2067, 1555 | SQLITE_CONSTRAINT_UNIQUE, SQLITE_CONSTRAINT_PRIMARYKEY | `UniqueViolation` | `CONSTRAINT_VIOLATION` (409) | no | the row conflicts with one that exists |
//! | 787 | SQLITE_CONSTRAINT_FOREIGNKEY | `ForeignKeyViolation` | `CONSTRAINT_VIOLATION` (409) | no | the row refers to one that does not exist, or is still referred to |
//! | 1299, 275, 20 | SQLITE_CONSTRAINT_NOTNULL, SQLITE_CONSTRAINT_CHECK, SQLITE_MISMATCH | `InvalidData` | `INVALID_DATA` (422) | no | a value breaks a rule of the table |
//! | anything else (1 ERROR, 19 CONSTRAINT otherwise, ...) | | `Query` | `CRITICAL_ERROR` | no | the statement itself is wrong |
//!
//! The constraint codes above are extended result codes and decide first; any other extended
//! result code (`SQLITE_BUSY_SNAPSHOT` = 517, ...) is reduced to its primary code (the low eight
//! bits).
//!
//! # Why SQLite is classified by its message as well
//!
//! Diesel reports SQLite failures as `DatabaseError(Unknown, message)` and drops the result code.
//! SQLite's messages for the codes above are the fixed English strings of `sqlite3_errstr()`: SQLite
//! does not localise them, so they are codes in all but type. [`code_for_message`] maps them back;
//! it is the one place ballast reads an error message, and only SQLite's.

use crate::{Cause, DriverCode, Failure};

/// SQLite's fixed messages for the result codes that do not mean "the statement is wrong".
const MESSAGES: [(&str, i32); 11] = [
    ("database is locked", 5),
    ("database table is locked", 6),
    ("out of memory", 7),
    ("attempt to write a readonly database", 8),
    ("interrupted", 9),
    ("database or disk is full", 13),
    ("unable to open database file", 14),
    ("locking protocol", 15),
    ("database schema has changed", 17),
    ("file is not a database", 26),
    ("disk I/O error", 10),
];

/// The cause of a SQLite failure with this (primary or extended) result code.
pub fn cause(result_code: i32) -> Cause {
    match result_code {
        2067 | 1555 => return Cause::UniqueViolation,
        787 => return Cause::ForeignKeyViolation,
        1299 | 275 | 20 => return Cause::InvalidData,
        _ => {}
    }
    match result_code & 0xff {
        5 | 6 | 15 => Cause::Busy,
        17 => Cause::Conflict,
        7 => Cause::OutOfMemory,
        13 => Cause::DiskFull,
        14 => Cause::DatabaseMissing,
        8 | 26 => Cause::InvalidConfig,
        23 => Cause::AuthFailed,
        9 => Cause::StatementTimeout,
        2 | 10 | 11 | 21 => Cause::Internal,
        _ => Cause::Query,
    }
}

/// A [`Failure`] for this result code, with the primary code recorded as the driver code.
pub fn failure(result_code: i32) -> Failure {
    Failure::new(cause(result_code)).with_driver_code(DriverCode::Sqlite(result_code & 0xff))
}

/// The primary result code whose fixed SQLite message `message` is (optionally followed by
/// `": detail"`, as in `database table is locked: main.items`), or `None`.
pub fn code_for_message(message: &str) -> Option<i32> {
    MESSAGES.iter().find_map(|&(text, code)| {
        let rest = message.strip_prefix(text)?;
        (rest.is_empty() || rest.starts_with(':')).then_some(code)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Code;

    const TABLE: &[(i32, Cause, Code, bool)] = &[
        (5, Cause::Busy, Code::DbConnection, true),
        (517, Cause::Busy, Code::DbConnection, true),
        (6, Cause::Busy, Code::DbConnection, true),
        (15, Cause::Busy, Code::DbConnection, true),
        (17, Cause::Conflict, Code::DbConnection, true),
        (7, Cause::OutOfMemory, Code::Memory, true),
        (13, Cause::DiskFull, Code::Memory, false),
        (14, Cause::DatabaseMissing, Code::DbInit, false),
        (8, Cause::InvalidConfig, Code::DbInit, false),
        (26, Cause::InvalidConfig, Code::DbInit, false),
        (23, Cause::AuthFailed, Code::DbInit, false),
        (9, Cause::StatementTimeout, Code::DbConnection, false),
        (2, Cause::Internal, Code::Critical, false),
        (10, Cause::Internal, Code::Critical, false),
        (11, Cause::Internal, Code::Critical, false),
        (21, Cause::Internal, Code::Critical, false),
        (1, Cause::Query, Code::Critical, false),
        (19, Cause::Query, Code::Critical, false),
        (
            2067,
            Cause::UniqueViolation,
            Code::ConstraintViolation,
            false,
        ),
        (
            1555,
            Cause::UniqueViolation,
            Code::ConstraintViolation,
            false,
        ),
        (
            787,
            Cause::ForeignKeyViolation,
            Code::ConstraintViolation,
            false,
        ),
        (1299, Cause::InvalidData, Code::InvalidData, false),
        (275, Cause::InvalidData, Code::InvalidData, false),
        (20, Cause::InvalidData, Code::InvalidData, false),
    ];

    #[test]
    fn every_table_entry() {
        for &(code, cause_expected, client_code, retryable) in TABLE {
            let failure = failure(code);
            assert_eq!(failure.cause(), cause_expected, "{code}");
            assert_eq!(failure.code(), client_code, "{code}");
            assert_eq!(failure.retryable(), retryable, "{code}");
            assert_eq!(failure.driver_code(), Some(DriverCode::Sqlite(code & 0xff)));
        }
    }

    #[test]
    fn messages_map_back_to_codes() {
        for (text, code) in MESSAGES {
            assert_eq!(code_for_message(text), Some(code), "{text}");
        }
        assert_eq!(
            code_for_message("database table is locked: main.items"),
            Some(6)
        );
        assert_eq!(code_for_message("database is locked!"), None);
        assert_eq!(code_for_message("UNIQUE constraint failed: items.id"), None);
        assert_eq!(code_for_message("near \"SELEC\": syntax error"), None);
    }
}
