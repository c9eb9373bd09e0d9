//! Server messages diesel passes on without their code, mapped back to the code.
//!
//! diesel keeps a coarse [`DatabaseErrorKind`](diesel::result::DatabaseErrorKind) and the
//! message: constraint kinds survive, but a PostgreSQL backend terminated under a query (`57P01`),
//! a value too long (`22001`) or an invalid byte sequence (`22021`), and every MySQL error that is
//! not a constraint, arrive as `Unknown`. Handlers that use plain `?` on diesel's error get only
//! this, so the messages the servers send for the codes that change the answer — a lost
//! connection (retryable 503) and invalid data (422) instead of a 500 — are recognised here.
//!
//! PostgreSQL translates its messages when `lc_messages` is not English; a translated message is
//! not recognised, and the error stays `Query` (500). The pool's own code paths never depend on
//! this table (they convert the drivers' errors, which keep the code), and
//! `PooledConnection::classify` in `ballast-pool` still tells a dead connection from a bad
//! statement by asking the connection. MySQL and MariaDB send English unless `lc_messages` is set.
//!
//! | message (start, or the part quoted) | driver code | cause |
//! |---|---|---|
//! | `terminating connection due to administrator command` | PostgreSQL `57P01` | `ConnectionLost` |
//! | `terminating connection because of crash of another server process` | `57P02` | `ConnectionLost` |
//! | `terminating connection due to idle-session timeout` | `57P05` | `ConnectionLost` |
//! | `terminating connection due to idle-in-transaction timeout` | `25P03` | `ConnectionLost` |
//! | `the database system is …` (starting up, shutting down, in recovery) | `57P03` | `ServerUnavailable` |
//! | `sorry, too many clients already`, `remaining connection slots are reserved …`, `too many connections for role …` | `53300` | `TooManyConnections` |
//! | `canceling statement due to statement timeout` | `57014` | `StatementTimeout` |
//! | `canceling statement due to lock timeout`, `could not obtain lock …` | `55P03` | `Busy` |
//! | `deadlock detected` | `40P01` | `Conflict` |
//! | `value too long for type …` | `22001` | `InvalidData` |
//! | `invalid byte sequence for encoding …` | `22021` | `InvalidData` |
//! | `invalid input syntax for …`, `invalid input value for enum …` | `22P02` | `InvalidData` |
//! | `… out of range …`, `numeric field overflow` | `22003` | `InvalidData` |
//! | `date/time field value out of range …` | `22008` | `InvalidData` |
//! | `division by zero` | `22012` | `InvalidData` |
//! | `unsupported Unicode escape sequence`, `… has no equivalent in encoding …` | `22P05` | `InvalidData` |
//! | `Data too long for column …` | MySQL 1406 | `InvalidData` |
//! | `Incorrect … value …` | 1366 | `InvalidData` |
//! | `Out of range value for column …` | 1264 | `InvalidData` |
//! | `Data truncated for column …` | 1265 | `InvalidData` |
//! | `Check constraint '…' is violated.` | 3819 | `InvalidData` |
//! | `CONSTRAINT `…` failed for `…`` (MariaDB) | 4025 | `InvalidData` |
//! | `… (max_statement_time exceeded)` (MariaDB), `… maximum statement execution time exceeded` (MySQL) | 1969, 3024 | `StatementTimeout` |
//! | `Deadlock found when trying to get lock …` | 1213 | `Conflict` |
//! | `Lock wait timeout exceeded …` | 1205 | `Busy` |
//! | `Connection was killed` (MariaDB) | 1927 | `ConnectionLost` |
//! | `Server shutdown in progress` | 1053 | `ConnectionLost` |
//! | `Too many connections` | 1040 | `TooManyConnections` |
//! | `Input/output error: …`, `Driver error: `Connection to the server is closed.'` (mysql_async) | 2013 | `ConnectionLost` |

use crate::{mysql, sqlstate, Failure};

/// How a message is matched.
#[derive(Clone, Copy)]
enum Match {
    Prefix(&'static str),
    Contains(&'static str),
}

#[derive(Clone, Copy)]
enum Code {
    Postgres(&'static str),
    MySql(u16),
}

use Code::{MySql, Postgres};
use Match::{Contains, Prefix};

/// The table of the module docs, in the order it is tried.
const MESSAGES: &[(Match, Code)] = &[
    // PostgreSQL.
    (
        Prefix("terminating connection due to administrator command"),
        Postgres("57P01"),
    ),
    (
        Prefix("terminating connection because of crash of another server process"),
        Postgres("57P02"),
    ),
    (
        Prefix("terminating connection due to idle-session timeout"),
        Postgres("57P05"),
    ),
    (
        Prefix("terminating connection due to idle-in-transaction timeout"),
        Postgres("25P03"),
    ),
    (Prefix("the database system is "), Postgres("57P03")),
    (Prefix("sorry, too many clients already"), Postgres("53300")),
    (Prefix("too many connections for role "), Postgres("53300")),
    (
        Prefix("remaining connection slots are reserved"),
        Postgres("53300"),
    ),
    (
        Prefix("canceling statement due to statement timeout"),
        Postgres("57014"),
    ),
    (
        Prefix("canceling statement due to lock timeout"),
        Postgres("55P03"),
    ),
    (Prefix("could not obtain lock "), Postgres("55P03")),
    (Prefix("deadlock detected"), Postgres("40P01")),
    (Prefix("value too long for type "), Postgres("22001")),
    (
        Prefix("invalid byte sequence for encoding "),
        Postgres("22021"),
    ),
    (Prefix("invalid input syntax for "), Postgres("22P02")),
    (Prefix("invalid input value for enum "), Postgres("22P02")),
    (
        Prefix("date/time field value out of range"),
        Postgres("22008"),
    ),
    (Prefix("numeric field overflow"), Postgres("22003")),
    (Prefix("division by zero"), Postgres("22012")),
    (
        Prefix("unsupported Unicode escape sequence"),
        Postgres("22P05"),
    ),
    (
        Contains(" has no equivalent in encoding "),
        Postgres("22P05"),
    ),
    (Contains(" out of range"), Postgres("22003")),
    // MySQL and MariaDB.
    (Prefix("Data too long for column "), MySql(1406)),
    (Prefix("Out of range value for column "), MySql(1264)),
    (Prefix("Data truncated for column "), MySql(1265)),
    (Prefix("Check constraint '"), MySql(3819)),
    (Contains("` failed for `"), MySql(4025)),
    (Contains("max_statement_time exceeded"), MySql(1969)),
    (
        Contains("maximum statement execution time exceeded"),
        MySql(3024),
    ),
    (
        Prefix("Deadlock found when trying to get lock"),
        MySql(1213),
    ),
    (Prefix("Lock wait timeout exceeded"), MySql(1205)),
    (Prefix("Connection was killed"), MySql(1927)),
    (Prefix("Server shutdown in progress"), MySql(1053)),
    (Prefix("Too many connections"), MySql(1040)),
    (Prefix("Input/output error: "), MySql(2013)),
    (
        Prefix("Driver error: `Connection to the server is closed."),
        MySql(2013),
    ),
    // Last: "Incorrect" starts other messages too ("Incorrect table name").
    (Prefix("Incorrect "), MySql(1366)),
];

/// The failure for a server message from the table, or `None`.
pub(crate) fn failure(message: &str) -> Option<Failure> {
    let (_, code) = MESSAGES.iter().find(|(pattern, code)| {
        let matched = match *pattern {
            Prefix(text) => message.starts_with(text),
            Contains(text) => message.contains(text),
        };
        // "Incorrect … value": only the value errors.
        matched && (!matches!(code, MySql(1366)) || message.contains(" value"))
    })?;
    Some(match *code {
        Postgres(state) => sqlstate::failure(state),
        MySql(number) => mysql::failure(number),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cause, DriverCode};

    #[test]
    fn the_servers_messages_map_to_their_codes() {
        let cases = [
            (
                "terminating connection due to administrator command",
                Cause::ConnectionLost,
            ),
            (
                "the database system is shutting down",
                Cause::ServerUnavailable,
            ),
            ("sorry, too many clients already", Cause::TooManyConnections),
            (
                "canceling statement due to statement timeout",
                Cause::StatementTimeout,
            ),
            ("deadlock detected", Cause::Conflict),
            (
                "invalid byte sequence for encoding \"UTF8\": 0x00",
                Cause::InvalidData,
            ),
            (
                "value too long for type character varying(255)",
                Cause::InvalidData,
            ),
            (
                "invalid input syntax for type integer: \"x\"",
                Cause::InvalidData,
            ),
            ("integer out of range", Cause::InvalidData),
            (
                "value \"99999999999\" is out of range for type integer",
                Cause::InvalidData,
            ),
            (
                "Data too long for column 'name' at row 1",
                Cause::InvalidData,
            ),
            (
                "Incorrect string value: '\\xF0\\x9F' for column 'name' at row 1",
                Cause::InvalidData,
            ),
            (
                "CONSTRAINT `items_name` failed for `test`.`items`",
                Cause::InvalidData,
            ),
            ("Connection was killed", Cause::ConnectionLost),
            (
                "Query execution was interrupted (max_statement_time exceeded)",
                Cause::StatementTimeout,
            ),
            (
                "Input/output error: Connection reset by peer (os error 104)",
                Cause::ConnectionLost,
            ),
        ];
        for (message, cause) in cases {
            let failure = failure(message).unwrap_or_else(|| panic!("{message}: not recognised"));
            assert_eq!(failure.cause(), cause, "{message}");
            assert!(failure.driver_code().is_some(), "{message}");
        }
        assert_eq!(
            failure("invalid byte sequence for encoding \"UTF8\": 0x00")
                .unwrap()
                .driver_code(),
            Some(DriverCode::Postgres(crate::SqlState::new("22021").unwrap()))
        );
    }

    #[test]
    fn other_messages_are_not_guessed() {
        for message in [
            "syntax error at or near \"SELEC\"",
            "relation \"nope\" does not exist",
            "Incorrect table name 'x'",
            "You have an error in your SQL syntax",
            "la conexión terminó",
        ] {
            assert!(failure(message).is_none(), "{message}");
        }
    }
}
