//! `From<diesel::result::Error>` and `From<diesel::ConnectionError>` for `Failure` (feature
//! `diesel`).
//!
//! Diesel keeps only a coarse [`DatabaseErrorKind`] and a message: the SQLSTATE or error number is
//! gone (diesel-async maps most codes, 53300 and 57P01 included, to `Unknown`). So:
//!
//! | diesel error | cause | reach |
//! |---|---|---|
//! | `DatabaseError(ClosedConnection \| UnableToSendCommand, _)` | `ConnectionLost` | `MaybeSent` |
//! | `DatabaseError(SerializationFailure, _)` | `Conflict` | `MaybeSent` |
//! | `DatabaseError(ReadOnlyTransaction, _)` | `ReadOnly` | `NotSent`: a read-only server refused the write |
//! | `DatabaseError(UniqueViolation \| ExclusionViolation, _)` | `UniqueViolation` (409) | `MaybeSent` |
//! | `DatabaseError(ForeignKeyViolation \| RestrictViolation, _)` | `ForeignKeyViolation` (409) | `MaybeSent` |
//! | `DatabaseError(NotNullViolation \| CheckViolation, _)` | `InvalidData` (422) | `MaybeSent` |
//! | `DatabaseError(_, message)` with a fixed SQLite message (feature `sqlite`) | see [`crate::sqlite`] | `MaybeSent` |
//! | `DatabaseError(Unknown, message)` with a server message that names its code (`57P01`, `22021`, MySQL 1406, ...: the table in `messages.rs`) | that code's cause | that code's |
//! | `DatabaseError(_, _)` otherwise | `Query` | `MaybeSent` |
//! | `BrokenTransactionManager` | `ConnectionLost`: the connection's state is unknown; a new one repairs it | `MaybeSent` |
//! | `RollbackErrorOnCommit { commit_error, .. }` | as `commit_error` | |
//! | `NotFound` and every other variant | `Internal` | `MaybeSent` |
//! | `ConnectionError::BadConnection` | `Unreachable` | `NotSent` |
//! | `ConnectionError::InvalidConnectionUrl`, `InvalidCString` | `InvalidConfig` | `NotSent` |
//! | `ConnectionError::CouldntSetupConfiguration(e)` | as `e`; an unclassified database error is `Rejected` (not retryable: it may be a wrong password) | `NotSent` |
//!
//! To keep the code, open connections with the driver and convert its error instead (the pool
//! does this), or convert `tokio_postgres::Error`/`mysql_async::Error` directly.
//!
//! `NotFound` is an application outcome rather than a database failure: map it to a 404 before it
//! becomes a `Failure` (ballast's error type does).

use diesel::result::{ConnectionError, DatabaseErrorKind, Error};

use crate::{Cause, Failure, Reach};

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        classify(&error).with_source(error)
    }
}

impl From<ConnectionError> for Failure {
    fn from(error: ConnectionError) -> Self {
        let failure = match &error {
            ConnectionError::BadConnection(message) => connection_message(message),
            ConnectionError::InvalidConnectionUrl(_) | ConnectionError::InvalidCString(_) => {
                Failure::new(Cause::InvalidConfig)
            }
            ConnectionError::CouldntSetupConfiguration(inner) => {
                let failure = classify(inner);
                if failure.cause() == Cause::Query {
                    Failure::new(Cause::Rejected)
                } else {
                    failure
                }
            }
            _ => Failure::new(Cause::Rejected),
        };
        failure.with_reach(Reach::NotSent).with_source(error)
    }
}

/// The classification of a diesel error (as `From<diesel::result::Error> for Failure` makes
/// it), without taking the error: for code that only sees a reference, such as diesel's
/// instrumentation (feature `diesel`).
pub fn classify_diesel(error: &Error) -> Failure {
    classify(error)
}

fn classify(error: &Error) -> Failure {
    match error {
        Error::DatabaseError(kind, info) => match kind {
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand => {
                Failure::new(Cause::ConnectionLost)
            }
            DatabaseErrorKind::SerializationFailure => Failure::new(Cause::Conflict),
            DatabaseErrorKind::ReadOnlyTransaction => {
                Failure::new(Cause::ReadOnly).with_reach(Reach::NotSent)
            }
            DatabaseErrorKind::UniqueViolation | DatabaseErrorKind::ExclusionViolation => {
                Failure::new(Cause::UniqueViolation)
            }
            DatabaseErrorKind::ForeignKeyViolation | DatabaseErrorKind::RestrictViolation => {
                Failure::new(Cause::ForeignKeyViolation)
            }
            DatabaseErrorKind::NotNullViolation | DatabaseErrorKind::CheckViolation => {
                Failure::new(Cause::InvalidData)
            }
            _ => sqlite_message(info.message())
                .or_else(|| crate::messages::failure(info.message()))
                .map(|failure| failure.with_reach(Reach::MaybeSent))
                // PgBouncer's own errors keep the reach their message tells.
                .or_else(|| crate::pgbouncer::failure(info.message()))
                .unwrap_or_else(|| Failure::new(Cause::Query).with_reach(Reach::MaybeSent)),
        },
        Error::BrokenTransactionManager => Failure::new(Cause::ConnectionLost),
        Error::RollbackErrorOnCommit { commit_error, .. } => classify(commit_error),
        _ => Failure::new(Cause::Internal),
    }
}

/// A `BadConnection` message: SQLite's fixed texts are recognised, anything else is a connection
/// that could not be made.
fn connection_message(message: &str) -> Failure {
    sqlite_message(message).unwrap_or_else(|| Failure::new(Cause::Unreachable))
}

#[cfg(feature = "sqlite")]
fn sqlite_message(message: &str) -> Option<Failure> {
    crate::sqlite::code_for_message(message).map(crate::sqlite::failure)
}

#[cfg(not(feature = "sqlite"))]
fn sqlite_message(_message: &str) -> Option<Failure> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database_error(kind: DatabaseErrorKind, message: &str) -> Error {
        Error::DatabaseError(kind, Box::new(message.to_owned()))
    }

    #[test]
    fn kinds_map_to_causes() {
        let cases = [
            (
                database_error(DatabaseErrorKind::ClosedConnection, "x"),
                Cause::ConnectionLost,
            ),
            (
                database_error(DatabaseErrorKind::UnableToSendCommand, "x"),
                Cause::ConnectionLost,
            ),
            (
                database_error(DatabaseErrorKind::SerializationFailure, "x"),
                Cause::Conflict,
            ),
            (
                database_error(DatabaseErrorKind::ReadOnlyTransaction, "x"),
                Cause::ReadOnly,
            ),
            (
                database_error(DatabaseErrorKind::UniqueViolation, "x"),
                Cause::UniqueViolation,
            ),
            (
                database_error(DatabaseErrorKind::ForeignKeyViolation, "x"),
                Cause::ForeignKeyViolation,
            ),
            (
                database_error(DatabaseErrorKind::RestrictViolation, "x"),
                Cause::ForeignKeyViolation,
            ),
            (
                database_error(DatabaseErrorKind::NotNullViolation, "x"),
                Cause::InvalidData,
            ),
            (
                database_error(DatabaseErrorKind::CheckViolation, "x"),
                Cause::InvalidData,
            ),
            (
                database_error(
                    DatabaseErrorKind::Unknown,
                    "terminating connection due to administrator command",
                ),
                Cause::ConnectionLost,
            ),
            (
                database_error(
                    DatabaseErrorKind::Unknown,
                    "invalid byte sequence for encoding \"UTF8\": 0x00",
                ),
                Cause::InvalidData,
            ),
            (
                database_error(DatabaseErrorKind::Unknown, "lo siento"),
                Cause::Query,
            ),
            (Error::BrokenTransactionManager, Cause::ConnectionLost),
            (Error::NotFound, Cause::Internal),
            (
                Error::RollbackErrorOnCommit {
                    rollback_error: Box::new(Error::NotFound),
                    commit_error: Box::new(database_error(
                        DatabaseErrorKind::SerializationFailure,
                        "x",
                    )),
                },
                Cause::Conflict,
            ),
        ];
        for (error, cause) in cases {
            let text = format!("{error:?}");
            let failure = Failure::from(error);
            assert_eq!(failure.cause(), cause, "{text}");
            // A read-only server refused the write before doing anything.
            let reach = if cause == Cause::ReadOnly {
                Reach::NotSent
            } else {
                Reach::MaybeSent
            };
            assert_eq!(failure.reach(), reach, "{text}");
        }
    }

    #[test]
    fn connection_errors_are_not_sent() {
        let cases = [
            (
                ConnectionError::BadConnection("refused".into()),
                Cause::Unreachable,
            ),
            (
                ConnectionError::InvalidConnectionUrl("postgres://u:canary@h/d".into()),
                Cause::InvalidConfig,
            ),
            (
                ConnectionError::CouldntSetupConfiguration(database_error(
                    DatabaseErrorKind::Unknown,
                    "la autentificación password falló",
                )),
                Cause::Rejected,
            ),
            (
                ConnectionError::CouldntSetupConfiguration(database_error(
                    DatabaseErrorKind::ClosedConnection,
                    "closed",
                )),
                Cause::ConnectionLost,
            ),
        ];
        for (error, cause) in cases {
            let failure = Failure::from(error);
            assert_eq!(failure.cause(), cause);
            assert_eq!(failure.reach(), Reach::NotSent);
            assert!(!format!("{failure:?}").contains("canary"));
        }
        assert!(!Failure::new(Cause::Rejected).retryable());
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn sqlite_messages_keep_their_code() {
        let failure = Failure::from(database_error(
            DatabaseErrorKind::Unknown,
            "database is locked",
        ));
        assert_eq!(failure.cause(), Cause::Busy);
        assert_eq!(failure.driver_code(), Some(crate::DriverCode::Sqlite(5)));
        let failure = Failure::from(ConnectionError::BadConnection(
            "unable to open database file".into(),
        ));
        assert_eq!(failure.cause(), Cause::DatabaseMissing);
    }
}
