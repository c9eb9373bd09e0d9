//! `From<mysql_async::Error> for Failure` (feature `mysql`).
//!
//! A server error is classified by its number ([`crate::mysql`]); an I/O error by its kind
//! ([`crate::io`]); a URL error is [`Cause::InvalidConfig`]; of the driver's own errors, a closed
//! connection is [`Cause::ConnectionLost`] and a disconnected `mysql_async` pool
//! [`Cause::PoolClosed`]; everything else is [`Cause::Internal`].

use mysql_async::{DriverError, Error};

use crate::{find_in_chain, io, mysql, Cause, Failure};

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        classify(&error).with_source(error)
    }
}

fn classify(error: &Error) -> Failure {
    match error {
        Error::Server(server) => mysql::failure(server.code),
        Error::Url(_) => Failure::new(Cause::InvalidConfig),
        Error::Driver(DriverError::ConnectionClosed) => Failure::new(Cause::ConnectionLost),
        Error::Driver(DriverError::PoolDisconnected) => Failure::new(Cause::PoolClosed),
        Error::Io(_) => match find_in_chain::<std::io::Error>(error) {
            Some(io_error) => io::failure(io_error.kind()),
            // A TLS failure (when mysql_async is built with TLS): the settings have to change.
            None => Failure::new(Cause::InvalidConfig),
        },
        Error::Driver(_) | Error::Other(_) => Failure::new(Cause::Internal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DriverCode, Reach};

    #[test]
    fn server_errors_use_the_number() {
        let error = Error::Server(mysql_async::ServerError {
            code: 1040,
            message: "Too many connections".into(),
            state: "08004".into(),
        });
        let failure = Failure::from(error);
        assert_eq!(failure.cause(), Cause::TooManyConnections);
        assert_eq!(failure.reach(), Reach::NotSent);
        assert_eq!(failure.driver_code(), Some(DriverCode::MySql(1040)));
    }

    #[test]
    fn driver_and_io_errors() {
        let closed = Failure::from(Error::Driver(DriverError::ConnectionClosed));
        assert_eq!(closed.cause(), Cause::ConnectionLost);
        let pool = Failure::from(Error::Driver(DriverError::PoolDisconnected));
        assert_eq!(pool.cause(), Cause::PoolClosed);
        let refused = Failure::from(Error::Io(mysql_async::IoError::Io(
            std::io::ErrorKind::ConnectionRefused.into(),
        )));
        assert_eq!(refused.cause(), Cause::Unreachable);
        let other = Failure::from(Error::Driver(DriverError::MixedParams));
        assert_eq!(other.cause(), Cause::Internal);
    }

    #[test]
    fn url_errors_never_show_the_password() {
        let error = mysql_async::Opts::from_url("mysql://root:canary-pw@host:notaport/db")
            .expect_err("bad port");
        let failure = Failure::from(Error::Url(error));
        assert_eq!(failure.cause(), Cause::InvalidConfig);
        let debug = format!("{failure:?}");
        assert!(!debug.contains("canary-pw"), "{debug}");
    }
}
