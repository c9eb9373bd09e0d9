//! When to retry: the classified failure, the request's safety, the budget, the deadline.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_core::{Cause, ConfigError, Failure};
use serde::Serialize;
use tower::retry::backoff::{Backoff, ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff};
use tower::util::rng::HasherRng;

use crate::budget::Budget;

/// Default number of retries after the first attempt (the seed's 3).
pub(crate) const DEFAULT_MAX_RETRIES: u32 = 3;
/// Default first delay (the seed's 1 s); later delays double.
pub(crate) const DEFAULT_BASE_DELAY: Duration = Duration::from_secs(1);
/// Default longest delay between two attempts.
pub(crate) const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(5);
/// The HTTP layer's default number of retries: in-request retries are for blips (a killed
/// backend, a momentary refusal), and a client waits for every one of them.
pub(crate) const DEFAULT_LAYER_MAX_RETRIES: u32 = 2;
/// The HTTP layer's default first delay; with jitter and doubling, two retries sleep at most
/// 600 ms in all.
pub(crate) const DEFAULT_LAYER_BASE_DELAY: Duration = Duration::from_millis(100);
/// The HTTP layer's default longest delay between two attempts.
pub(crate) const DEFAULT_LAYER_MAX_DELAY: Duration = Duration::from_millis(500);
/// The HTTP layer's default deadline from the first attempt: together with the delays, retries
/// add at most about a second to a request that fails fast.
pub(crate) const DEFAULT_LAYER_DEADLINE: Duration = Duration::from_secs(2);
/// Default jitter: each delay is stretched by a random factor from 0 to this (tower's
/// `ExponentialBackoff` semantics), so clients that failed together do not return together.
pub(crate) const DEFAULT_JITTER: f64 = 1.0;
/// Default overall deadline from the first attempt: no attempt starts that could not finish by
/// then.
pub(crate) const DEFAULT_DEADLINE: Duration = Duration::from_secs(15);
/// Default largest request body that is buffered so the request can be replayed (64 KiB).
pub(crate) const DEFAULT_BODY_CAP: usize = 64 * 1024;
/// Default budget window: deposits expire after this long.
pub(crate) const DEFAULT_BUDGET_TTL: Duration = Duration::from_secs(10);
/// Default retries per second allowed whatever the traffic, so a quiet service can still retry.
pub(crate) const DEFAULT_BUDGET_MIN_PER_SEC: u32 = 10;
/// Default share of requests that may be retried on top: an outage adds at most 20 % load.
pub(crate) const DEFAULT_BUDGET_PERCENT: f32 = 0.2;

/// Why a request was not retried or was, for counters and logs.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    attempts: AtomicU64,
    retries: AtomicU64,
    given_up: AtomicU64,
    budget_exhausted: AtomicU64,
    not_retryable: AtomicU64,
    unsafe_to_repeat: AtomicU64,
    not_replayable: AtomicU64,
    outages: AtomicU64,
}

/// A snapshot of the retry layer's counters since it was built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RetryStats {
    /// Calls to the inner service, retries included.
    pub attempts: u64,
    /// Retries started.
    pub retries: u64,
    /// Retryable failures sent on because the retries or the deadline ran out.
    pub given_up: u64,
    /// Retryable failures sent on because the budget was spent.
    pub budget_exhausted: u64,
    /// Failures that are not worth retrying (wrong password, bad query).
    pub not_retryable: u64,
    /// Retryable failures of non-idempotent requests whose statement may have run.
    pub unsafe_to_repeat: u64,
    /// Requests whose body was too large or of unknown length to replay.
    pub not_replayable: u64,
    /// Retryable failures sent on at once because the pool already knew the database was down
    /// (an outage is answered at once; the client is told when to come back).
    pub outages: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> RetryStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        RetryStats {
            attempts: get(&self.attempts),
            retries: get(&self.retries),
            given_up: get(&self.given_up),
            budget_exhausted: get(&self.budget_exhausted),
            not_retryable: get(&self.not_retryable),
            unsafe_to_repeat: get(&self.unsafe_to_repeat),
            not_replayable: get(&self.not_replayable),
            outages: get(&self.outages),
        }
    }

    pub(crate) fn attempt(&self) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn not_replayable(&self) {
        self.not_replayable.fetch_add(1, Ordering::Relaxed);
    }
}

/// The settings and shared state of one retry layer (or one function-form runner).
pub(crate) struct Shared {
    pub(crate) max_retries: u32,
    pub(crate) deadline: Duration,
    base_delay: Duration,
    pub(crate) max_delay: Duration,
    jitter: f64,
    pub(crate) budget: Option<Budget>,
    /// Whether a known outage ends the retries (the HTTP layer) or is waited out like any other
    /// failure (the function form: a background job has time).
    pub(crate) stop_on_outage: bool,
    pub(crate) counters: Arc<Counters>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("max_retries", &self.max_retries)
            .field("deadline", &self.deadline)
            .field("max_delay", &self.max_delay)
            .field("budget", &self.budget.is_some())
            .finish_non_exhaustive()
    }
}

/// Why [`Shared::decide`] said no, or yes.
pub(crate) enum Decision {
    Retry(tokio::time::Sleep),
    Stop,
}

/// The per-request retry state, made as the request starts: the backoff is only built when a
/// first retry is decided.
#[derive(Debug, Clone)]
pub(crate) struct Attempts {
    pub(crate) shared: Arc<Shared>,
    /// Whether the work may run twice: an idempotent method, or the caller says so.
    pub(crate) idempotent: bool,
    retries: u32,
    backoff: Option<ExponentialBackoff>,
    deadline: Instant,
    attempt_started: Instant,
}

impl Attempts {
    /// Starts the count for a new request: its first attempt begins now, and the request is
    /// deposited into the budget (one clock reading for both).
    pub(crate) fn start(shared: Arc<Shared>, idempotent: bool) -> Self {
        let now = Instant::now();
        if let Some(budget) = &shared.budget {
            budget.deposit(now);
        }
        Attempts {
            deadline: now + shared.deadline,
            shared,
            idempotent,
            retries: 0,
            backoff: None,
            attempt_started: now,
        }
    }

    fn next_delay(&mut self) -> tokio::time::Instant {
        let shared = &self.shared;
        self.backoff
            .get_or_insert_with(|| {
                // A maker with a fresh random source per request: a cloned maker hands every
                // request the same "random" delays, and clients would return in step.
                ExponentialBackoffMaker::new(
                    shared.base_delay,
                    shared.max_delay,
                    shared.jitter,
                    HasherRng::default(),
                )
                .map_or_else(
                    |_| unreachable!("checked in `shared`"),
                    |mut maker| maker.make_backoff(),
                )
            })
            .next_backoff()
            .deadline()
    }

    /// Decides about one failed attempt (or a success: `failure` is `None`).
    pub(crate) fn decide(&mut self, failure: Option<&Failure>) -> Decision {
        let Some(failure) = failure else {
            return Decision::Stop;
        };
        let shared = Arc::clone(&self.shared);
        let counters = &shared.counters;
        if !failure.retryable() {
            counters.not_retryable.fetch_add(1, Ordering::Relaxed);
            return Decision::Stop;
        }
        if !failure.may_retry(self.idempotent) {
            counters.unsafe_to_repeat.fetch_add(1, Ordering::Relaxed);
            return Decision::Stop;
        }
        // A request that meets an outage the pool already knew of is answered at once. One that
        // met the failure first-hand may be seeing a blip: its retries wait for the pool's next
        // attempt (the hint below), within the usual limits.
        if failure.is_known_outage() && self.shared.stop_on_outage && self.retries == 0 {
            counters.outages.fetch_add(1, Ordering::Relaxed);
            return Decision::Stop;
        }
        if self.retries >= self.shared.max_retries {
            counters.given_up.fetch_add(1, Ordering::Relaxed);
            return Decision::Stop;
        }
        let now = Instant::now();
        // tower's backoff hands out a sleep; its deadline is the jittered delay.
        let planned = self.next_delay();
        // Never sooner than the source says trying again can succeed (the pool's connect gate).
        let delay = hinted_delay(
            planned.into_std().saturating_duration_since(now),
            failure.cause(),
            self.shared.max_delay,
        )
        .max(failure.retry_after().unwrap_or_default());
        // The next attempt may take as long as the last one did.
        let last_attempt = now.saturating_duration_since(self.attempt_started);
        if now + delay + last_attempt > self.deadline {
            counters.given_up.fetch_add(1, Ordering::Relaxed);
            return Decision::Stop;
        }
        if let Some(budget) = &self.shared.budget {
            if !budget.withdraw(now) {
                counters.budget_exhausted.fetch_add(1, Ordering::Relaxed);
                return Decision::Stop;
            }
        }
        self.retries += 1;
        counters.retries.fetch_add(1, Ordering::Relaxed);
        counters.attempt();
        tracing::info!(
            retry.attempt = self.retries + 1,
            retry.delay_ms = delay.as_millis() as u64,
            code = failure.code().as_str(),
            cause = ?failure.cause(),
            reach = ?failure.reach(),
            "retrying after: {failure}"
        );
        self.attempt_started = now + delay;
        Decision::Retry(tokio::time::sleep(delay))
    }
}

/// The backoff's delay adjusted by what the failure says about the server, within the cap.
///
/// - `ServerUnavailable` (PostgreSQL 57P03: starting up, shutting down, in recovery): the server
///   needs seconds, not milliseconds: the wait doubles.
/// - `PoolExhausted`: connections come back within milliseconds; the checkout itself already
///   waited: the wait halves.
/// - Everything else keeps the backoff's delay.
fn hinted_delay(delay: Duration, cause: Cause, cap: Duration) -> Duration {
    match cause {
        Cause::ServerUnavailable => delay.saturating_mul(2),
        Cause::PoolExhausted => delay / 2,
        _ => delay,
    }
    .min(cap)
}

/// The settings the layer and the function form share, as their builders collect them.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) max_retries: u32,
    pub(crate) base_delay: Duration,
    pub(crate) max_delay: Duration,
    pub(crate) jitter: f64,
    pub(crate) deadline: Duration,
    /// `ttl`, `min_per_sec`, `percent`; `None` for no budget.
    pub(crate) budget: Option<(Duration, u32, f32)>,
}

impl Settings {
    /// Checks every setting, naming the first one out of range (the ranges are tower's, whose
    /// backoff each request builds from these).
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.base_delay > self.max_delay || self.max_delay.is_zero() {
            return Err(ConfigError::new(
                "delays",
                format!(
                    "the first delay must not exceed the longest, which must be above zero \
                     (got {:?} and {:?})",
                    self.base_delay, self.max_delay
                ),
            ));
        }
        if !(0.0..=100.0).contains(&self.jitter) {
            return Err(ConfigError::new(
                "jitter",
                format!("must be from 0 to 100 (got {})", self.jitter),
            ));
        }
        if let Some((ttl, _, percent)) = self.budget {
            if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&ttl)
                || !(0.0..=1000.0).contains(&percent)
            {
                return Err(ConfigError::new(
                    "budget",
                    format!(
                        "ttl must be 1 to 60 seconds and percent 0 to 1000 (got {ttl:?}, {percent})"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The shared state of one built layer or runner, with counters of its own. Call after
    /// [`check`](Self::check).
    pub(crate) fn shared(&self, stop_on_outage: bool) -> Shared {
        debug_assert!(self.check().is_ok());
        Shared {
            max_retries: self.max_retries,
            deadline: self.deadline,
            base_delay: self.base_delay,
            max_delay: self.max_delay,
            jitter: self.jitter,
            budget: self
                .budget
                .map(|(ttl, min_per_sec, percent)| Budget::new(ttl, min_per_sec, percent)),
            stop_on_outage,
            counters: Arc::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_adjust_within_the_cap() {
        let cap = Duration::from_secs(5);
        let second = Duration::from_secs(1);
        assert_eq!(
            hinted_delay(second, Cause::ServerUnavailable, cap),
            Duration::from_secs(2)
        );
        assert_eq!(
            hinted_delay(Duration::from_secs(4), Cause::ServerUnavailable, cap),
            cap
        );
        assert_eq!(
            hinted_delay(second, Cause::PoolExhausted, cap),
            Duration::from_millis(500)
        );
        assert_eq!(hinted_delay(second, Cause::Unreachable, cap), second);
    }
}
