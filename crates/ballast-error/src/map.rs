//! How a classified failure becomes a problem document, and when clients should come back.

use std::time::Duration;

use ballast_core::{Code, Failure};
use http::StatusCode;

use crate::problem::{sentence, Problem};

/// Turns a classified failure into the problem document a client receives.
///
/// Implemented by [`DefaultProblems`] and by any `Fn(&Failure) -> Problem`, so an application
/// that wants other statuses or extra members writes a closure (starting from
/// [`DefaultProblems::problem_for`] if it only adds to the defaults).
pub trait MapProblem: Clone + Send + Sync + 'static {
    /// The document for `failure`. It must not contain the failure's source or detail: those
    /// are for logs.
    fn problem(&self, failure: &Failure) -> Problem;
}

impl<F> MapProblem for F
where
    F: Fn(&Failure) -> Problem + Clone + Send + Sync + 'static,
{
    fn problem(&self, failure: &Failure) -> Problem {
        self(failure)
    }
}

/// The default mapping: the failure's code and its HTTP status (`DB_CONNECTION_ERROR`,
/// `DB_INIT_ERROR` and `MEMORY_ERROR` are 503, `CRITICAL_ERROR` 500), its public message as the
/// detail, and its retryability.
///
/// `MEMORY_ERROR` covers the database's own out-of-memory codes (PostgreSQL 53200, MySQL
/// 1037/1038/1041, SQLite NOMEM), its other resource exhaustion (PostgreSQL class 53 but 53300,
/// which is a connection limit; disk full: PostgreSQL 53100, MySQL 1021/1114, SQLite FULL, not
/// retryable), and an I/O error of kind `OutOfMemory` in this process: in every case the
/// request was sound and the service lacked resources, so the answer is 503 rather than 500.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultProblems;

impl DefaultProblems {
    /// The default document for `failure` (what [`MapProblem::problem`] returns).
    pub fn problem_for(failure: &Failure) -> Problem {
        let status =
            StatusCode::from_u16(failure.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // Every failure of a 500 says the same thing: the cause of a bug is nobody's business
        // outside the service.
        let detail = if failure.code() == Code::Critical {
            "An internal error occurred.".to_owned()
        } else {
            sentence(failure.public_message())
        };
        Problem::new(status, failure.code().as_str(), detail).with_retryable(failure.retryable())
    }
}

impl MapProblem for DefaultProblems {
    fn problem(&self, failure: &Failure) -> Problem {
        Self::problem_for(failure)
    }
}

/// When a client told to come back (a 503) should: `base` plus a random whole number of seconds
/// up to `jitter`, so clients refused together do not return together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter {
    base: Duration,
    jitter: Duration,
}

/// Default `Retry-After` base: the seed's one-second retry delay.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Default `Retry-After` jitter: spread returning clients over three seconds.
pub const DEFAULT_RETRY_AFTER_JITTER: Duration = Duration::from_secs(2);

impl Default for RetryAfter {
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

    /// The `Retry-After` for a response of `status`: a value for a 503, `None` otherwise.
    pub fn for_status(&self, status: StatusCode) -> Option<Duration> {
        (status == StatusCode::SERVICE_UNAVAILABLE).then(|| self.pick())
    }

    /// A value to send now.
    pub fn pick(&self) -> Duration {
        let jitter = fastrand::u64(0..=self.jitter.as_secs());
        Duration::from_secs(self.base.as_secs().max(1) + jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_core::Cause;

    #[test]
    fn retry_after_stays_within_base_and_jitter_and_varies() {
        let policy = RetryAfter::new(Duration::from_secs(2), Duration::from_secs(3));
        let picks: Vec<u64> = (0..200).map(|_| policy.pick().as_secs()).collect();
        assert!(picks.iter().all(|secs| (2..=5).contains(secs)));
        assert!(picks.iter().any(|secs| *secs != picks[0]), "jittered");
        let none = RetryAfter::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(none.pick(), Duration::from_secs(1), "never zero");
    }

    #[test]
    fn critical_failures_never_say_why() {
        let problem = DefaultProblems::problem_for(&Failure::new(Cause::Query));
        assert_eq!(problem.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(problem.detail, "An internal error occurred.");
        assert!(!problem.retryable);
    }
}
