//! When a client told to come back should.

use std::time::Duration;

use http::StatusCode;

use super::Problem;

/// When a client told to come back (a 503) should: `base` plus a random whole number of seconds
/// up to `jitter`, so clients refused together do not return together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter {
    base: Duration,
    jitter: Duration,
}

/// Default `Retry-After` base: the seed's one-second retry delay.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Default `Retry-After` jitter: spread returning clients over three seconds.
const DEFAULT_RETRY_AFTER_JITTER: Duration = Duration::from_secs(2);

impl Default for RetryAfter {
    /// One second plus up to two: clients refused together come back spread over three seconds.
    fn default() -> Self {
        RetryAfter {
            base: DEFAULT_RETRY_AFTER,
            jitter: DEFAULT_RETRY_AFTER_JITTER,
        }
    }
}

impl RetryAfter {
    /// `base` plus up to `jitter`, in whole seconds (at least one).
    pub fn new(base: Duration, jitter: Duration) -> Self {
        RetryAfter { base, jitter }
    }

    /// The `Retry-After` for `problem`: a value for a 503 that says `"retryable": true`, `None`
    /// otherwise — a failure not worth repeating, or one whose outcome is unknown, gets no
    /// invitation to come back.
    ///
    /// `hint` is when trying again can first succeed, where the failure knows
    /// ([`Failure::retry_after`](crate::Failure::retry_after): the pool's next connect attempt); it replaces the base, rounded
    /// up to whole seconds, and the jitter spreads the clients out after it.
    pub fn for_problem(&self, problem: &Problem, hint: Option<Duration>) -> Option<Duration> {
        if problem.status != StatusCode::SERVICE_UNAVAILABLE || !problem.retryable {
            return None;
        }
        Some(match hint {
            Some(hint) => self.after(hint.as_secs() + u64::from(hint.subsec_nanos() > 0)),
            None => self.pick(),
        })
    }

    /// A value to send now.
    pub fn pick(&self) -> Duration {
        self.after(self.base.as_secs())
    }

    /// `seconds` (at least one) plus the jitter.
    fn after(&self, seconds: u64) -> Duration {
        let jitter = fastrand::u64(0..=self.jitter.as_secs());
        Duration::from_secs(seconds.max(1) + jitter)
    }
}
