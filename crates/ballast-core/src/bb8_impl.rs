//! `From<bb8::RunError<E>> for Failure` (feature `bb8`).
//!
//! bb8 runs connects while a caller waits for a connection, so every error it returns happened
//! before a statement was sent: both variants are [`Reach::NotSent`].
//!
//! - `RunError::User(e)`: the connection manager's error, converted with `E: Into<Failure>`.
//! - `RunError::TimedOut`: no connection within the pool's timeout, [`Cause::PoolExhausted`]. bb8
//!   does not say whether the pool was full or connects were failing (those errors go to its error
//!   sink); a pool that knows better builds its own failure.

use crate::{Cause, Failure, Reach};

impl<E: Into<Failure>> From<bb8::RunError<E>> for Failure {
    fn from(error: bb8::RunError<E>) -> Self {
        match error {
            bb8::RunError::User(error) => error.into(),
            bb8::RunError::TimedOut => Failure::new(Cause::PoolExhausted),
        }
        .with_reach(Reach::NotSent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_is_pool_exhausted_and_not_sent() {
        let failure = Failure::from(bb8::RunError::<Failure>::TimedOut);
        assert_eq!(failure.cause(), Cause::PoolExhausted);
        assert_eq!(failure.reach(), Reach::NotSent);
        assert!(failure.may_retry(false));
    }

    #[test]
    fn user_errors_convert_and_are_not_sent() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let failure = Failure::from(bb8::RunError::User(reset));
        assert_eq!(failure.cause(), Cause::ConnectionLost);
        assert_eq!(
            failure.reach(),
            Reach::NotSent,
            "bb8 errors happen before sending"
        );
    }
}
