//! The seed's function form: retry database work outside HTTP.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ballast_core::{ConfigError, Failure};
use tower::retry::Policy;
use tower::ServiceExt;

use crate::layer::RetryHandle;
use crate::policy::{
    Attempts, Decision, Settings, Shared, DEFAULT_BASE_DELAY, DEFAULT_DEADLINE, DEFAULT_JITTER,
    DEFAULT_MAX_DELAY, DEFAULT_MAX_RETRIES,
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
    // A base above the default cap lifts the cap with it: these settings are always valid.
    let retrying = Retrying::builder()
        .max_retries(retries)
        .delays(base_delay, base_delay.max(DEFAULT_MAX_DELAY))
        .build()
        .unwrap_or_else(|_| unreachable!("the base never exceeds the cap, which is never zero"));
    retrying.run(operation).await
}

/// The function form's settings, for when [`with_retry`]'s are not enough.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), ballast_retry::ConfigError> {
/// use std::time::Duration;
/// use ballast_core::{Cause, Failure, Reach};
/// use ballast_retry::Retrying;
///
/// // An upsert may run twice: a connection lost mid-statement is retried too.
/// let retrying = Retrying::builder()
///     .max_retries(2)
///     .delays(Duration::from_millis(5), Duration::from_millis(20))
///     .idempotent(true)
///     .build()?;
/// let result: Result<(), Failure> = retrying
///     .run(|| async { Err(Failure::new(Cause::ConnectionLost).with_reach(Reach::MaybeSent)) })
///     .await;
/// assert!(result.is_err());
/// assert_eq!(retrying.handle().stats().retries, 2);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Retrying {
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
        Self::builder()
            .build()
            .unwrap_or_else(|_| unreachable!("the defaults are valid"))
    }

    /// A builder starting from the defaults of [`Retrying::new`].
    pub fn builder() -> RetryingBuilder {
        RetryingBuilder {
            settings: Settings {
                max_retries: DEFAULT_MAX_RETRIES,
                base_delay: DEFAULT_BASE_DELAY,
                max_delay: DEFAULT_MAX_DELAY,
                jitter: DEFAULT_JITTER,
                deadline: DEFAULT_DEADLINE,
                budget: None,
            },
            idempotent: false,
        }
    }

    /// A handle on the counters of every run of this runner and its clones.
    pub fn handle(&self) -> RetryHandle {
        RetryHandle::new(Arc::clone(&self.shared.counters))
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
            attempts: Attempts::start(Arc::clone(&self.shared), self.idempotent),
        };
        tower::retry::Retry::new(policy, service).oneshot(()).await
    }
}

/// Collects a [`Retrying`]'s settings; [`build`](Self::build) checks them together. The
/// setters never fail; they mean what the [`RetryLayerBuilder`](crate::RetryLayerBuilder)'s
/// of the same name mean.
#[derive(Debug, Clone)]
#[must_use]
pub struct RetryingBuilder {
    settings: Settings,
    idempotent: bool,
}

impl RetryingBuilder {
    /// Sets how many times the operation may be retried after its first attempt. Defaults to 3.
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.settings.max_retries = retries;
        self
    }

    /// Sets the first delay and the longest one (the first must not exceed the longest, which
    /// must be above zero). Defaults to 1 s and 5 s.
    pub fn delays(mut self, base: Duration, cap: Duration) -> Self {
        self.settings.base_delay = base;
        self.settings.max_delay = cap;
        self
    }

    /// Sets the jitter factor, from 0 to 100. Defaults to 1.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.settings.jitter = jitter;
        self
    }

    /// Sets the overall deadline from the first attempt. Defaults to 15 s.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.settings.deadline = deadline;
        self
    }

    /// Marks the operation as safe to run twice: failures whose statement may have reached the
    /// database are retried too. Defaults to `false`.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// The runner, with counters of its own.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first setting out of range (`delays`, `jitter`).
    pub fn build(self) -> Result<Retrying, ConfigError> {
        self.settings.check()?;
        Ok(Retrying {
            idempotent: self.idempotent,
            shared: Arc::new(self.settings.shared(false)),
        })
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
