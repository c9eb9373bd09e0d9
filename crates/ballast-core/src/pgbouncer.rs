//! PgBouncer's own errors: every one arrives as SQLSTATE `08P01` (protocol violation) with a
//! fixed English message, and most close the client connection. The message, not the code, says
//! what happened — whether PostgreSQL behind the pooler is down, the pooler is full, or the
//! statement was running when the connection went — and so whether anyone may retry.
//!
//! Matched only for `08P01` (a message PostgreSQL itself sends under that code keeps the class's
//! default, `ConnectionLost`). The messages are PgBouncer 1.18's to 1.24's (`src/*.c`); PgBouncer
//! also passes PostgreSQL's own login errors on under `08P01` (`too many connections for role`,
//! `sorry, too many clients already`), matched by the table of PostgreSQL's messages that diesel passes on without their code.
//!
//! | message (start) | cause | reach | why |
//! |---|---|---|---|
//! | `no more connections allowed (max_client_conn)` | `TooManyConnections` | not sent | the pooler's client slots are full; they free up |
//! | `query_wait_timeout` | `PoolExhausted` | not sent | the statement waited for a server connection and was never sent |
//! | `server login has been failing, try again later (server_login_retry)` | `ServerUnavailable` | not sent | PostgreSQL behind the pooler refuses logins or is down |
//! | `client_login_timeout` (`… (server down)`) | `ServerUnavailable` | not sent | as above |
//! | `pgbouncer cannot connect to server` | `Unreachable` | not sent | as above (PgBouncer 1.20 and later) |
//! | `database "…" is disabled`, `pause failed`, `pgbouncer is shutting down` | `ServerUnavailable` | not sent | an operator paused the pooler, or it is restarting |
//! | `bouncer resources exhaustion`, `no memory for pool` | `ResourceExhausted` | not sent | the pooler ran out of memory or file descriptors |
//! | `no such database: …` | `DatabaseMissing` | not sent | the URL names a database the pooler does not know |
//! | `no such user`, `password authentication failed`, `SASL authentication failed`, `login rejected`, `"trust" authentication failed`, `certificate authentication failed`, `PAM authentication failed` | `AuthFailed` | not sent | a wrong login stays wrong |
//! | `unsupported startup parameter: …` | `InvalidConfig` | not sent | the URL sets a parameter the pooler refuses (add it to `ignore_startup_parameters`) |
//! | `SSL required` | `InvalidConfig` | not sent | the pooler requires TLS and the URL has no `sslmode` |
//! | `query_timeout` | `StatementTimeout` | maybe sent | the statement ran past the pooler's limit and its connection was closed: its outcome is unknown |
//! | `client_idle_timeout` | `ConnectionLost` | not sent | the pooler closed an idle connection: nothing was running |
//! | `server conn crashed?`, `server closed the connection unexpectedly`, `idle transaction timeout` and the rest | `ConnectionLost` | maybe sent | the server connection died under the statement |

use crate::{Cause, Failure, Reach};

/// The table of the module docs, in the order it is tried: a prefix, its cause and reach.
const MESSAGES: &[(&str, Cause, Reach)] = &[
    (
        "no more connections allowed (max_client_conn)",
        Cause::TooManyConnections,
        Reach::NotSent,
    ),
    ("query_wait_timeout", Cause::PoolExhausted, Reach::NotSent),
    (
        "server login has been failing",
        Cause::ServerUnavailable,
        Reach::NotSent,
    ),
    (
        "client_login_timeout",
        Cause::ServerUnavailable,
        Reach::NotSent,
    ),
    (
        "pgbouncer cannot connect to server",
        Cause::Unreachable,
        Reach::NotSent,
    ),
    ("pause failed", Cause::ServerUnavailable, Reach::NotSent),
    (
        "pgbouncer is shutting down",
        Cause::ServerUnavailable,
        Reach::NotSent,
    ),
    (
        "bouncer resources exhaustion",
        Cause::ResourceExhausted,
        Reach::NotSent,
    ),
    (
        "no memory for pool",
        Cause::ResourceExhausted,
        Reach::NotSent,
    ),
    ("no such database", Cause::DatabaseMissing, Reach::NotSent),
    ("no such user", Cause::AuthFailed, Reach::NotSent),
    (
        "password authentication failed",
        Cause::AuthFailed,
        Reach::NotSent,
    ),
    (
        "SASL authentication failed",
        Cause::AuthFailed,
        Reach::NotSent,
    ),
    ("login rejected", Cause::AuthFailed, Reach::NotSent),
    (
        "\"trust\" authentication failed",
        Cause::AuthFailed,
        Reach::NotSent,
    ),
    (
        "certificate authentication failed",
        Cause::AuthFailed,
        Reach::NotSent,
    ),
    (
        "PAM authentication failed",
        Cause::AuthFailed,
        Reach::NotSent,
    ),
    (
        "unsupported startup parameter",
        Cause::InvalidConfig,
        Reach::NotSent,
    ),
    ("SSL required", Cause::InvalidConfig, Reach::NotSent),
    ("query_timeout", Cause::StatementTimeout, Reach::MaybeSent),
    ("client_idle_timeout", Cause::ConnectionLost, Reach::NotSent),
];

/// The failure for PgBouncer's message `message`, sent under `08P01`; `None` when it is not one
/// of the table's (the class default then applies).
pub(crate) fn failure(message: &str) -> Option<Failure> {
    if let Some(failure) = crate::messages::failure(message) {
        // PostgreSQL's own login error, passed on by the pooler (`too many connections for
        // role`): sent while the pooler logged in, before any statement of ours.
        let startup = matches!(
            failure.driver_code(),
            Some(crate::DriverCode::Postgres(state)) if crate::sqlstate::is_startup_only(state.as_str())
        );
        return Some(if startup {
            failure.with_reach(Reach::NotSent)
        } else {
            failure
        });
    }
    // `database "…" is disabled`; PostgreSQL's `database "…" does not exist` is not the pooler's.
    if message.starts_with("database \"") && message.ends_with("\" is disabled") {
        return Some(Failure::new(Cause::ServerUnavailable).with_reach(Reach::NotSent));
    }
    let (_, cause, reach) = MESSAGES
        .iter()
        .find(|(prefix, _, _)| message.starts_with(prefix))?;
    Some(Failure::new(*cause).with_reach(*reach))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_poolers_messages_decide_cause_and_reach() {
        let cases = [
            (
                "no more connections allowed (max_client_conn)",
                Cause::TooManyConnections,
                Reach::NotSent,
                true,
            ),
            (
                "query_wait_timeout",
                Cause::PoolExhausted,
                Reach::NotSent,
                true,
            ),
            (
                "server login has been failing, try again later (server_login_retry)",
                Cause::ServerUnavailable,
                Reach::NotSent,
                true,
            ),
            (
                "client_login_timeout (server down)",
                Cause::ServerUnavailable,
                Reach::NotSent,
                true,
            ),
            (
                "no such database: nope",
                Cause::DatabaseMissing,
                Reach::NotSent,
                false,
            ),
            (
                "password authentication failed",
                Cause::AuthFailed,
                Reach::NotSent,
                false,
            ),
            (
                "unsupported startup parameter: options",
                Cause::InvalidConfig,
                Reach::NotSent,
                false,
            ),
            (
                "query_timeout",
                Cause::StatementTimeout,
                Reach::MaybeSent,
                false,
            ),
            (
                "too many connections for role \"app\"",
                Cause::TooManyConnections,
                Reach::NotSent,
                true,
            ),
            (
                "sorry, too many clients already",
                Cause::TooManyConnections,
                Reach::NotSent,
                true,
            ),
        ];
        for (message, cause, reach, retryable) in cases {
            let failure = failure(message).unwrap_or_else(|| panic!("{message}: not recognised"));
            assert_eq!(failure.cause(), cause, "{message}");
            assert_eq!(failure.reach(), reach, "{message}");
            assert_eq!(failure.retryable(), retryable, "{message}");
        }
        assert!(
            failure("server conn crashed?").is_none(),
            "the class default"
        );
        assert_eq!(
            failure("database \"shop\" is disabled").map(|f| f.cause()),
            Some(Cause::ServerUnavailable)
        );
        assert!(failure("database \"shop\" does not exist").is_none());
    }
}
