//! `From<tokio_postgres::Error> for Failure` (feature `postgres`).
//!
//! In order: a server error is classified by its SQLSTATE ([`crate::sqlstate`]); an I/O error in
//! the chain by its kind ([`crate::io`]); a closed connection is [`Cause::ConnectionLost`]. What
//! remains are tokio-postgres's own client-side kinds, which it exposes only as fixed English
//! labels (it has no public kind accessor): those labels, never a server message, decide the rest,
//! and mark connect errors (`error connecting to server`) as [`Reach::NotSent`].
//!
//! tokio-postgres's own `connect_timeout` bounds only the TCP connect, not the startup
//! conversation after it: a server that accepts and never answers hangs the connect. Bound the
//! whole connect yourself (the pool does) and report [`Cause::TimedOut`].

use crate::{find_in_chain, io, sqlstate, Cause, DriverCode, Failure, Reach, SqlState};

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Self {
        let failure = classify(&error);
        // tokio-postgres's `Display` writes exactly its private error kind's label, and this
        // label only marks errors of the TCP (or Unix socket) connect: nothing was sent.
        let failure = if error.to_string() == "error connecting to server" {
            failure.with_reach(Reach::NotSent)
        } else {
            failure
        };
        failure.with_source(error)
    }
}

fn classify(error: &tokio_postgres::Error) -> Failure {
    if let Some(state) = error.code() {
        // PgBouncer says everything under `08P01`; its message tells what happened.
        let pooler = (state.code() == "08P01")
            .then(|| error.as_db_error())
            .flatten()
            .and_then(|db| crate::pgbouncer::failure(db.message()));
        if let Some(failure) = pooler {
            return match SqlState::new(state.code()) {
                Some(code) => failure.with_driver_code(DriverCode::Postgres(code)),
                None => failure,
            };
        }
        return sqlstate::failure(state.code());
    }
    if let Some(io_error) = find_in_chain::<std::io::Error>(error) {
        return io::failure(io_error.kind());
    }
    if error.is_closed() {
        return Failure::new(Cause::ConnectionLost);
    }
    match error.to_string().as_str() {
        // Only `connect_timeout` produces this kind: the connection never started.
        "timeout waiting for server" => Failure::new(Cause::TimedOut).with_reach(Reach::NotSent),
        "invalid connection string"
        | "invalid configuration"
        | "error performing TLS handshake" => Failure::new(Cause::InvalidConfig),
        "authentication error" => Failure::new(Cause::AuthFailed),
        _ => Failure::new(Cause::Internal),
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    #[test]
    fn malformed_connection_string_is_invalid_config() {
        let error = tokio_postgres::Config::from_str("host=h port=notaport password=canary")
            .expect_err("bad port");
        let failure = Failure::from(error);
        assert_eq!(failure.cause(), Cause::InvalidConfig);
        assert!(!failure.retryable());
        assert!(!format!("{failure:?}").contains("canary"));
    }
}
