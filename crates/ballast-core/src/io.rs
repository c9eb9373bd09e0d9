//! The network: [`std::io::ErrorKind`] to causes.
//!
//! | kind | cause | reach | why |
//! |---|---|---|---|
//! | `ConnectionRefused` | `Unreachable` | `NotSent` | only a connect can be refused: nothing was sent |
//! | `HostUnreachable`, `NetworkUnreachable`, `AddrNotAvailable` | `Unreachable` | `NotSent` | no connection could be made |
//! | `ConnectionReset`, `ConnectionAborted`, `BrokenPipe`, `UnexpectedEof`, `NotConnected` | `ConnectionLost` | `MaybeSent` | the connection broke; a statement may have been on it |
//! | `TimedOut` | `TimedOut` | `MaybeSent` | the peer went silent; it may have received the statement |
//! | `OutOfMemory` | `OutOfMemory` (`MEMORY_ERROR`) | `MaybeSent` | this process ran out of memory |
//! | anything else | `Internal` | `MaybeSent` | not a database condition ballast knows |
//!
//! All of these except `Internal` are retryable; see [`Cause`] for the codes.

use std::io::{Error, ErrorKind};

use crate::{Cause, Failure};

/// The cause of an I/O error of this kind (see the module table).
pub fn cause(kind: ErrorKind) -> Cause {
    match kind {
        ErrorKind::ConnectionRefused
        | ErrorKind::HostUnreachable
        | ErrorKind::NetworkUnreachable
        | ErrorKind::AddrNotAvailable => Cause::Unreachable,
        ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe
        | ErrorKind::UnexpectedEof
        | ErrorKind::NotConnected => Cause::ConnectionLost,
        ErrorKind::TimedOut => Cause::TimedOut,
        ErrorKind::OutOfMemory => Cause::OutOfMemory,
        _ => Cause::Internal,
    }
}

/// A [`Failure`] for an I/O error of this kind, without a source.
pub fn failure(kind: ErrorKind) -> Failure {
    Failure::new(cause(kind))
}

impl From<Error> for Failure {
    /// Classifies by [`ErrorKind`] and keeps the error as the source.
    fn from(error: Error) -> Self {
        failure(error.kind()).with_source(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Code, Reach};

    #[test]
    fn every_table_entry() {
        let table = [
            (
                ErrorKind::ConnectionRefused,
                Cause::Unreachable,
                Reach::NotSent,
                true,
            ),
            (
                ErrorKind::HostUnreachable,
                Cause::Unreachable,
                Reach::NotSent,
                true,
            ),
            (
                ErrorKind::NetworkUnreachable,
                Cause::Unreachable,
                Reach::NotSent,
                true,
            ),
            (
                ErrorKind::AddrNotAvailable,
                Cause::Unreachable,
                Reach::NotSent,
                true,
            ),
            (
                ErrorKind::ConnectionReset,
                Cause::ConnectionLost,
                Reach::MaybeSent,
                true,
            ),
            (
                ErrorKind::ConnectionAborted,
                Cause::ConnectionLost,
                Reach::MaybeSent,
                true,
            ),
            (
                ErrorKind::BrokenPipe,
                Cause::ConnectionLost,
                Reach::MaybeSent,
                true,
            ),
            (
                ErrorKind::UnexpectedEof,
                Cause::ConnectionLost,
                Reach::MaybeSent,
                true,
            ),
            (
                ErrorKind::NotConnected,
                Cause::ConnectionLost,
                Reach::MaybeSent,
                true,
            ),
            (ErrorKind::TimedOut, Cause::TimedOut, Reach::MaybeSent, true),
            (
                ErrorKind::OutOfMemory,
                Cause::OutOfMemory,
                Reach::MaybeSent,
                true,
            ),
            (
                ErrorKind::PermissionDenied,
                Cause::Internal,
                Reach::MaybeSent,
                false,
            ),
            (
                ErrorKind::InvalidData,
                Cause::Internal,
                Reach::MaybeSent,
                false,
            ),
        ];
        for (kind, cause, reach, retryable) in table {
            let failure = Failure::from(Error::from(kind));
            assert_eq!(failure.cause(), cause, "{kind:?}");
            assert_eq!(failure.reach(), reach, "{kind:?}");
            assert_eq!(failure.retryable(), retryable, "{kind:?}");
        }
        assert_eq!(failure(ErrorKind::OutOfMemory).code(), Code::Memory);
    }
}
