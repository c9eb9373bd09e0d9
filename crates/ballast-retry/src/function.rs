//! The seed's function form: retry database work outside HTTP.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ballast_core::Failure;
use tower::retry::Policy;
use tower::ServiceExt;

use crate::policy::{
    self, Attempts, Decision, RetryStats, Shared, DEFAULT_BASE_DELAY, DEFAULT_DEADLINE,
    DEFAULT_JITTER, DEFAULT_MAX_DELAY, DEFAULT_MAX_RETRIES,
};

/// Runs `operation`, retrying it up to `retries` times, `base_delay` apart at first (doubling,
/// jittered, capped at 5 s), while its failure is retryable and nothing may have been written:
/// [`Reach::NotSent`](ballast_core::Reach::NotSent) failures only. Use [`Retrying`] to mark the
/// operation idempotent or change the other settings.
///
/// # Errors
///
/// The last attempt's failure, unchanged.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// use ballast_core::{Cause, Failure};
///
/// let calls = AtomicU32::new(0);
/// let result = ballast_retry::with_retry(
///     || async {
///         // Refused twice (nothing was sent), then it works.
///         match calls.fetch_add(1, Ordering::SeqCst) {
///             0 | 1 => Err(Failure::new(Cause::Unreachable)),
///             _ => Ok("backed up"),
///         }
///     },
///     3,
///     Duration::from_millis(10),
/// )
/// .await;
/// assert_eq!(result.unwrap(), "backed up");
/// assert_eq!(calls.load(Ordering::SeqCst), 3);
/// # }
/// ```
pub async fn with_retry<T, F, Fut>(
    operation: F,
    retries: u32,
    base_delay: Duration,
) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let retrying = Retrying::new().retries(retries);
    // A base above the cap would be an invalid backoff: lift the cap with it.
    let retrying = match retrying
        .clone()
        .delays(base_delay, base_delay.max(DEFAULT_MAX_DELAY))
    {
        Some(retrying) => retrying,
        None => retrying,
    };
    retrying.run(operation).await
}

/// The function form's settings, for when [`with_retry`]'s are not enough.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use ballast_core::{Cause, Failure, Reach};
/// use ballast_retry::Retrying;
///
/// // An upsert may run twice: a connection lost mid-statement is retried too.
/// let retrying = Retrying::new()
///     .retries(2)
///     .delays(Duration::from_millis(5), Duration::from_millis(20))
///     .expect("base below cap")
///     .idempotent(true);
/// let result: Result<(), Failure> = retrying
///     .run(|| async { Err(Failure::new(Cause::ConnectionLost).with_reach(Reach::MaybeSent)) })
///     .await;
/// assert!(result.is_err());
/// assert_eq!(retrying.stats().retries, 2);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Retrying {
    retries: u32,
    base_delay: Duration,
    max_delay: Duration,
    deadline: Duration,
    idempotent: bool,
    shared: Arc<Shared>,
}

impl Default for Retrying {
    fn default() -> Self {
        Self::new()
    }
}

impl Retrying {
    /// The defaults: 3 retries, 1 s doubling to 5 s with jitter, a 15 s deadline, not
    /// idempotent, no budget (one caller cannot storm).
    pub fn new() -> Self {
        Self::build(
            DEFAULT_MAX_RETRIES,
            DEFAULT_BASE_DELAY,
            DEFAULT_MAX_DELAY,
            DEFAULT_DEADLINE,
            false,
        )
        .unwrap_or_else(|| unreachable!("the defaults are valid"))
    }

    fn build(
        retries: u32,
        base_delay: Duration,
        max_delay: Duration,
        deadline: Duration,
        idempotent: bool,
    ) -> Option<Self> {
        let shared = policy::shared(
            retries,
            base_delay,
            max_delay,
            DEFAULT_JITTER,
            deadline,
            None,
            false,
        )
        .ok()?;
        Some(Retrying {
            retries,
            base_delay,
            max_delay,
            deadline,
            idempotent,
            shared: Arc::new(shared),
        })
    }

    /// Sets the number of retries after the first attempt.
    #[must_use]
    pub fn retries(self, retries: u32) -> Self {
        Self::build(
            retries,
            self.base_delay,
            self.max_delay,
            self.deadline,
            self.idempotent,
        )
        .unwrap_or(self)
    }

    /// Sets the first and the longest delay. Returns `None` when `base` exceeds `cap` or `cap`
    /// is zero.
    #[must_use]
    pub fn delays(self, base: Duration, cap: Duration) -> Option<Self> {
        Self::build(self.retries, base, cap, self.deadline, self.idempotent)
    }

    /// Sets the overall deadline.
    #[must_use]
    pub fn deadline(self, deadline: Duration) -> Self {
        Self::build(
            self.retries,
            self.base_delay,
            self.max_delay,
            deadline,
            self.idempotent,
        )
        .unwrap_or(self)
    }

    /// Marks the operation as safe to run twice: failures whose statement may have reached the
    /// database are retried too.
    #[must_use]
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// The counters of every run so far.
    pub fn stats(&self) -> RetryStats {
        self.shared.counters.snapshot()
    }

    /// Runs `operation` under these settings.
    ///
    /// # Errors
    ///
    /// The last attempt's failure, unchanged.
    pub async fn run<T, F, Fut>(&self, operation: F) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        self.shared.counters.attempt();
        // tower's `Retry` clones its service; the operation is shared between the clones and
        // locked only to start each attempt.
        let operation = Arc::new(Mutex::new(operation));
        let service = tower::service_fn(move |()| {
            let mut operation = operation.lock().unwrap_or_else(PoisonError::into_inner);
            operation()
        });
        let policy = FnPolicy {
            attempts: Attempts::new(Arc::clone(&self.shared), self.idempotent),
        };
        tower::retry::Retry::new(policy, service).oneshot(()).await
    }
}

/// The policy of one run of the function form.
#[derive(Clone)]
struct FnPolicy {
    attempts: Attempts,
}

impl<T> Policy<(), T, Failure> for FnPolicy {
    type Future = tokio::time::Sleep;

    fn retry(&mut self, _: &mut (), result: &mut Result<T, Failure>) -> Option<Self::Future> {
        let failure = result.as_ref().err();
        match self.attempts.decide(failure) {
            Decision::Retry(sleep) => Some(sleep),
            Decision::Stop => None,
        }
    }

    fn clone_request(&mut self, _: &()) -> Option<()> {
        Some(())
    }
}
