//! The failure in HTTP terms (feature `http`): the problem+json document a client receives,
//! when to tell it to come back, and the failure carried from layer to layer in the response's
//! extensions.
//!
//! Every ballast layer that answers or inspects HTTP responses meets here: the error layer
//! renders a [`Failure`] as a [`Problem`] and [`attach`]es it to the response; the retry layer
//! and the cache read it back with [`attached`] (the retry layer also from a service's error,
//! through [`AsFailure`]). A crate that needs only this — retry, cache, shutdown — depends on
//! `ballast-core` with this feature and on no database driver.
//!
//! ```
//! use std::sync::Arc;
//! use ballast_core::http::{attach, attached, Problem};
//! use ballast_core::{Cause, Failure};
//!
//! let failure = Arc::new(Failure::new(Cause::TooManyConnections));
//! let mut response = Problem::for_failure(&failure).to_response(false, None);
//! attach(response.extensions_mut(), Arc::clone(&failure));
//! assert_eq!(response.status(), 503);
//! assert_eq!(attached(response.extensions()).unwrap().cause(), Cause::TooManyConnections);
//! ```

use std::convert::Infallible;
use std::sync::Arc;

use crate::{BoxError, Failure};

mod problem;
mod retry_after;

pub use problem::{Problem, OUTCOME_MEMBER, PROBLEM_JSON};
pub use retry_after::RetryAfter;

#[doc(hidden)]
/// Internal to the ballast crates: not part of the stable API, and may change in any release.
///
/// Puts `failure` into a response's extensions, where the layers around the one that failed
/// find it with [`attached`].
pub fn attach(extensions: &mut http::Extensions, failure: Arc<Failure>) {
    extensions.insert(failure);
}

#[doc(hidden)]
/// Internal to the ballast crates: not part of the stable API, and may change in any release.
///
/// The failure a response carries, if an inner layer [`attach`]ed one.
pub fn attached(extensions: &http::Extensions) -> Option<&Arc<Failure>> {
    extensions.get::<Arc<Failure>>()
}

/// The response the default mapping gives `failure`: [`Problem::for_failure`], its promise kept
/// for a request that is (or is not) `idempotent` ([`Problem::keep_promise`]), a `Retry-After`
/// by `retry_after` (when given) where the document invites a retry, no body when `head`, and
/// the failure [`attach`]ed.
pub fn failure_response(
    failure: Arc<Failure>,
    idempotent: bool,
    head: bool,
    retry_after: Option<&RetryAfter>,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let mut problem = Problem::for_failure(&failure);
    problem.keep_promise(&failure, idempotent);
    let after = retry_after.and_then(|policy| policy.for_problem(&problem, failure.retry_after()));
    let mut response = problem.to_response(head, after);
    attach(response.extensions_mut(), failure);
    response
}

/// Finds the classified failure in a service's error, where there is one.
///
/// Implemented for the error types Tower stacks use: [`Infallible`] (axum), [`Failure`] and
/// [`BoxError`], where a [`Failure`] is found in the error itself or anywhere in its
/// [`source`](std::error::Error::source) chain (so an application's error type that wraps one,
/// or `ballast_error::Error`, is understood).
pub trait AsFailure {
    /// The failure inside, if any.
    fn as_failure(&self) -> Option<&Failure>;
}

impl AsFailure for Infallible {
    fn as_failure(&self) -> Option<&Failure> {
        match *self {}
    }
}

impl AsFailure for Failure {
    fn as_failure(&self) -> Option<&Failure> {
        Some(self)
    }
}

impl AsFailure for BoxError {
    fn as_failure(&self) -> Option<&Failure> {
        crate::find_in_chain::<Failure>(&**self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cause;
    use http::StatusCode;
    use std::time::Duration;

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
        let mut post = Problem::for_failure(&lost);
        post.keep_promise(&lost, false);
        assert!(!post.retryable, "the INSERT may have run");
        assert_eq!(post.members[OUTCOME_MEMBER], "unknown");
        assert!(post.detail.contains("may or may not have taken effect"));
        assert_eq!(RetryAfter::default().for_problem(&post, None), None);

        let mut get = Problem::for_failure(&lost);
        get.keep_promise(&lost, true);
        assert!(get.retryable, "a GET may repeat");
        assert!(get.members.is_empty());
        assert!(RetryAfter::default().for_problem(&get, None).is_some());

        let keyed = Failure::new(Cause::ConnectionLost).with_idempotent(true);
        let mut keyed_post = Problem::for_failure(&keyed);
        keyed_post.keep_promise(&keyed, false);
        assert!(keyed_post.retryable, "an idempotency key guards it");

        let refused = Failure::new(Cause::Unreachable);
        let mut refused_post = Problem::for_failure(&refused);
        refused_post.keep_promise(&refused, false);
        assert!(refused_post.retryable, "nothing was sent");

        let auth = Failure::new(Cause::AuthFailed);
        let mut auth_problem = Problem::for_failure(&auth);
        auth_problem.keep_promise(&auth, true);
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
        let problem = Problem::for_failure(&Failure::new(Cause::Query));
        assert_eq!(problem.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(problem.detail, "An internal error occurred.");
        assert!(!problem.retryable);
    }

    #[test]
    fn failures_are_found_in_extensions_and_error_chains() {
        let mut extensions = http::Extensions::new();
        assert!(attached(&extensions).is_none());
        attach(&mut extensions, Arc::new(Failure::new(Cause::Busy)));
        assert_eq!(attached(&extensions).unwrap().cause(), Cause::Busy);

        let boxed: BoxError = Box::new(Failure::new(Cause::ConnectionLost));
        assert_eq!(boxed.as_failure().unwrap().cause(), Cause::ConnectionLost);
        // An application's error that wraps a failure.
        #[derive(Debug)]
        struct AppError(Failure);
        impl std::fmt::Display for AppError {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("the app failed")
            }
        }
        impl std::error::Error for AppError {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let wrapped: BoxError = Box::new(AppError(Failure::new(Cause::TimedOut)));
        assert_eq!(wrapped.as_failure().unwrap().cause(), Cause::TimedOut);
        let plain: BoxError = "no failure here".into();
        assert!(plain.as_failure().is_none());
    }
}
