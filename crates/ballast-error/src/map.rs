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

/// The member a problem carries when the failed request may or may not have taken effect.
pub(crate) const OUTCOME_MEMBER: &str = "outcome";

/// Makes a problem's `retryable` a promise: `true` only when repeating the request cannot do it
/// twice — the failure is retryable **and** its statement never reached the database, or the
/// request is `idempotent`, or an idempotency key guards it ([`Failure::may_retry`]).
///
/// A failure worth retrying whose statement may have run is still a 503, but says
/// `"retryable": false` and `"outcome": "unknown"`, with a detail that tells the client to check
/// before repeating it (and, without `retryable`, no `Retry-After` invites it to).
pub(crate) fn keep_promise(problem: &mut Problem, failure: &Failure, idempotent: bool) {
    if failure.outcome_unknown(idempotent) {
        problem.retryable = false;
        problem.detail = format!(
            "{} The request may or may not have taken effect: check before repeating it.",
            sentence(failure.public_message())
        )
        .into();
        problem
            .members
            .insert(OUTCOME_MEMBER.to_owned(), "unknown".into());
    } else if !failure.may_retry(idempotent) {
        problem.retryable = false;
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

    /// The `Retry-After` for `problem`: a value for a 503 that says `"retryable": true`, `None`
    /// otherwise — a failure not worth repeating, or one whose outcome is unknown, gets no
    /// invitation to come back.
    ///
    /// `hint` is when trying again can first succeed, where the failure knows
    /// ([`Failure::retry_after`]: the pool's next connect attempt); it replaces the base, rounded
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
    fn retryable_is_a_promise() {
        let lost = Failure::new(Cause::ConnectionLost);
        let mut post = DefaultProblems::problem_for(&lost);
        keep_promise(&mut post, &lost, false);
        assert!(!post.retryable, "the INSERT may have run");
        assert_eq!(post.members[OUTCOME_MEMBER], "unknown");
        assert!(post.detail.contains("may or may not have taken effect"));
        assert_eq!(RetryAfter::default().for_problem(&post, None), None);

        let mut get = DefaultProblems::problem_for(&lost);
        keep_promise(&mut get, &lost, true);
        assert!(get.retryable, "a GET may repeat");
        assert!(get.members.is_empty());
        assert!(RetryAfter::default().for_problem(&get, None).is_some());

        let keyed = Failure::new(Cause::ConnectionLost).with_idempotent(true);
        let mut keyed_post = DefaultProblems::problem_for(&keyed);
        keep_promise(&mut keyed_post, &keyed, false);
        assert!(keyed_post.retryable, "an idempotency key guards it");

        let refused = Failure::new(Cause::Unreachable);
        let mut refused_post = DefaultProblems::problem_for(&refused);
        keep_promise(&mut refused_post, &refused, false);
        assert!(refused_post.retryable, "nothing was sent");

        let auth = Failure::new(Cause::AuthFailed);
        let mut auth_problem = DefaultProblems::problem_for(&auth);
        keep_promise(&mut auth_problem, &auth, true);
        assert!(!auth_problem.retryable);
        assert!(auth_problem.members.is_empty());
        assert_eq!(RetryAfter::default().for_problem(&auth_problem, None), None);

        // The pool will try again in 2.3 s: come back after that, spread over the jitter.
        let policy = RetryAfter::new(Duration::from_secs(1), Duration::from_secs(1));
        let hinted: Vec<u64> = (0..100)
            .map(|_| {
                policy
                    .for_problem(&get, Some(Duration::from_millis(2300)))
                    .unwrap()
                    .as_secs()
            })
            .collect();
        assert!(
            hinted.iter().all(|secs| (3..=4).contains(secs)),
            "{hinted:?}"
        );
    }

    #[test]
    fn critical_failures_never_say_why() {
        let problem = DefaultProblems::problem_for(&Failure::new(Cause::Query));
        assert_eq!(problem.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(problem.detail, "An internal error occurred.");
        assert!(!problem.retryable);
    }
}
