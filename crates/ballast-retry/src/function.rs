//! The function form: retry database work outside HTTP.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ballast_core::scope::DrainSignal;
use ballast_core::{ConfigError, Failure};
use tower::retry::Policy;
use tower::ServiceExt;

use crate::builder::{FunctionForm, RetryBuilder, RetryingBuilder};
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
    // A base above the default cap lifts the cap with it, so these settings are always in
    // range: nothing to check.
    let retrying = Retrying::builder()
        .max_retries(retries)
        .delays(base_delay, base_delay.max(DEFAULT_MAX_DELAY))
        .into_runner();
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
        // The defaults are in range: nothing to check.
        Self::builder().into_runner()
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
            form: FunctionForm { idempotent: false },
        }
    }

    /// A handle on the counters of every run of this runner and its clones.
    pub fn handle(&self) -> RetryHandle {
        RetryHandle::new(Arc::clone(&self.shared.counters))
    }

    /// Runs `operation` under these settings.
    ///
    /// Inside a drain signal — a job of `ShutdownHandle::spawn` (ballast-shutdown), or any future
    /// run with [`DrainSignal::run`] — no retry starts once the service begins to drain: a
    /// backoff in progress ends and the last failure is returned, so a job's retries never hold
    /// the shutdown up.
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
        let drain = DrainSignal::current();
        // The last failure, for the attempt the drain stops before it starts.
        let last: Arc<Mutex<Option<Failure>>> = Arc::default();
        // tower's `Retry` clones its service; the operation is shared between the clones and
        // locked only to start each attempt.
        let operation = Arc::new(Mutex::new(operation));
        let service = {
            let (drain, last) = (drain.clone(), Arc::clone(&last));
            tower::service_fn(move |()| {
                let stopped = drain
                    .as_ref()
                    .filter(|drain| drain.is_draining())
                    .and_then(|_| last.lock().unwrap_or_else(PoisonError::into_inner).take());
                let attempt = match stopped {
                    Some(failure) => Err(failure),
                    None => Ok(operation.lock().unwrap_or_else(PoisonError::into_inner)()),
                };
                async move {
                    match attempt {
                        Ok(attempt) => attempt.await,
                        Err(failure) => Err(failure),
                    }
                }
            })
        };
        let policy = FnPolicy {
            attempts: Attempts::start(Arc::clone(&self.shared), self.idempotent),
            drain,
            last,
        };
        tower::retry::Retry::new(policy, service).oneshot(()).await
    }
}

impl RetryBuilder<FunctionForm> {
    /// Marks the operation as safe to run twice: failures whose statement may have reached the
    /// database are retried too. Defaults to `false`.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.form.idempotent = idempotent;
        self
    }

    /// The runner, with counters of its own.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first setting out of range (`delays`, `jitter`).
    pub fn build(self) -> Result<Retrying, ConfigError> {
        self.settings.check()?;
        Ok(self.into_runner())
    }

    /// The runner from settings known to be in range.
    fn into_runner(self) -> Retrying {
        Retrying {
            idempotent: self.form.idempotent,
            shared: Arc::new(self.settings.shared(false)),
        }
    }
}

/// The policy of one run of the function form.
#[derive(Clone)]
struct FnPolicy {
    attempts: Attempts,
    /// The drain of the service the run belongs to, when it runs inside one
    /// ([`DrainSignal::run`], `ShutdownHandle::spawn`): no retry starts once it begins.
    drain: Option<DrainSignal>,
    /// The last failure, kept while the backoff runs under a drain signal.
    last: Arc<Mutex<Option<Failure>>>,
}

impl<T> Policy<(), T, Failure> for FnPolicy {
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn retry(&mut self, _: &mut (), result: &mut Result<T, Failure>) -> Option<Self::Future> {
        let failure = result.as_ref().err();
        if let (Some(drain), Some(failure)) = (&self.drain, failure) {
            if drain.is_draining() {
                // The service is shutting down: the job ends with what it has.
                return None;
            }
            *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(failure.detached());
        }
        let Decision::Retry(sleep) = self.attempts.decide(failure) else {
            return None;
        };
        Some(match self.drain.clone() {
            None => Box::pin(sleep),
            // The wait ends early when the drain begins; the attempt it leads to then stops at
            // once with the last failure.
            Some(drain) => Box::pin(async move {
                tokio::select! {
                    () = sleep => {}
                    () = drain.draining() => {}
                }
            }),
        })
    }

    fn clone_request(&mut self, _: &()) -> Option<()> {
        Some(())
    }
}
