//! The checkout itself: admission, the queue of turns, bb8, and the failures a checkout can
//! end with.

use std::fmt;
use std::panic::Location;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_core::scope::RequestScope;
use ballast_core::{Cause, Failure, Reach};

use crate::admission::{Reason, Refusal};
use crate::connect::Connect;
use crate::manager::Manager;
use crate::pool::SharedPool;
use crate::pooled::PooledConnection;
use crate::shared::Shared;

impl<C: Connect> SharedPool<C> {
    pub(crate) async fn get_for(
        &self,
        caller: &'static Location<'static>,
    ) -> Result<PooledConnection<C>, Failure> {
        let started = Instant::now();
        let shared = &self.inner.shared;
        let scope = RequestScope::current();
        if shared.is_closed() {
            return Err(Failure::new(Cause::PoolClosed));
        }
        // Connecting has been failing and the gate is closed: the database is known to be
        // down, and waiting cannot help. Answer at once (an outage costs the client nothing but
        // the answer), unless open connections may still serve.
        if self.bb8_pool().state().connections == 0 {
            if let Some(failure) = shared.known_outage() {
                shared.counters.failed_fast.fetch_add(1, Ordering::Relaxed);
                return Err(self.honest(failure, scope.as_deref()));
            }
        }
        let (_waiting, ahead) = Waiting::start(shared);
        // The time the checkout has: `pool_timeout`, and never past the request's own deadline
        // where a layer set one (`RequestScope`).
        let pool_timeout = shared.config.pool_timeout();
        let time_left = match scope.as_ref().and_then(|scope| scope.deadline()) {
            Some(deadline) => deadline
                .saturating_duration_since(started)
                .min(pool_timeout),
            None => pool_timeout,
        };
        let deadline = started + time_left;
        if let Err(refusal) = shared.admission.admit(ahead, time_left, started) {
            // Like an outage, an overload is answered without waiting, and retrying within the
            // request would only join the queue again.
            return Err(self.honest(self.refused(&refusal), scope.as_deref()));
        }
        let _waiting_mark = scope.as_ref().map(RequestScope::waiting);
        let result = match self.take_turn(started, deadline).await {
            Ok(turn) => self
                .checkout(started, deadline)
                .await
                .map(|conn| (turn, conn)),
            Err(failure) => Err(failure),
        };
        let waited = started.elapsed();
        shared.counters.record_wait(waited);
        shared
            .admission
            .waited(waited, self.behind(), started + waited);
        tracing::debug!(
            db.client.connection.pool.name = "ballast",
            pool.wait_us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX),
            pool.outcome = match &result {
                Ok(_) => "checked_out",
                Err(failure) => failure.code().as_str(),
            },
            "checkout"
        );
        match result {
            Ok((turn, conn)) => {
                if waited > SLOW_CHECKOUT {
                    tracing::debug!(waited_ms = waited.as_millis() as u64, "slow checkout");
                }
                Ok(self.hand_out(turn, conn, scope, caller))
            }
            Err(failure) => {
                let failure = self.honest(failure, scope.as_deref());
                // A connect failure says when the pool will try again.
                let connecting = !matches!(
                    failure.cause(),
                    Cause::PoolExhausted | Cause::PoolClosed | Cause::Overloaded
                );
                Err(match shared.retry_in() {
                    Some(after) if connecting && failure.retry_after().is_none() => {
                        failure.with_retry_after(after)
                    }
                    _ => failure,
                })
            }
        }
    }

    /// Waits for a turn at a connection (see `Admission::turn`) until the deadline, giving up
    /// early when its wait turns out longer than admission allows.
    async fn take_turn(
        &self,
        started: Instant,
        deadline: Instant,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, Failure> {
        let shared = &self.inner.shared;
        if let Some(turn) = shared.admission.try_turn() {
            return Ok(turn);
        }
        let place = shared.admission.join();
        let turn = shared.admission.turn();
        tokio::pin!(turn);
        // Looked at every slice: the deadline, and whether this waiter is overdue.
        let tick = tokio::time::sleep_until(deadline.min(started + CHECKOUT_SLICE).into());
        tokio::pin!(tick);
        loop {
            tokio::select! {
                biased;
                turn = &mut turn => {
                    place.granted();
                    return Ok(turn);
                }
                () = &mut tick => {
                    let now = Instant::now();
                    if now >= deadline {
                        shared.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                        return Err(self.timed_out(started));
                    }
                    // A wait that turned out longer than admission allows: leave now, so the
                    // ones behind are served near the target.
                    if let Some(refusal) = shared.admission.overdue(now - started, place.ahead(), now) {
                        return Err(self.refused(&refusal));
                    }
                    tick.as_mut().reset(deadline.min(now + CHECKOUT_SLICE).into());
                }
            }
        }
    }

    /// With a turn in hand: a connection from bb8 — an idle one, or a new one — until the
    /// deadline, failing early when connecting fails and there is nothing to wait for.
    pub(crate) async fn checkout(
        &self,
        started: Instant,
        deadline: Instant,
    ) -> Result<bb8::PooledConnection<'static, Manager<C>>, Failure> {
        let (shared, pool) = (&self.inner.shared, self.bb8_pool());
        let mut failures = shared.subscribe_failures();
        failures.borrow_and_update();
        'checkout: loop {
            // bb8 asks for a new connection only when a checkout starts (or is woken by a
            // returned one), and a connect that fails wakes nobody. A checkout that started
            // while another's failed connect was still being counted asks for none and would
            // sleep until `pool_timeout`; starting it again every slice, while the pool has
            // room to grow, closes that gap.
            let checkout = pool.get_owned();
            tokio::pin!(checkout);
            let slice =
                tokio::time::sleep_until(deadline.min(Instant::now() + CHECKOUT_SLICE).into());
            tokio::pin!(slice);
            loop {
                tokio::select! {
                    biased;
                    result = &mut checkout => return result.map_err(|error| match error {
                        bb8::RunError::User(failure) => failure,
                        bb8::RunError::TimedOut => self.timed_out(started),
                    }),
                    changed = failures.changed() => {
                        if changed.is_err() {
                            continue;
                        }
                        if let Some(failure) = self.fail_fast() {
                            shared.counters.failed_fast.fetch_add(1, Ordering::Relaxed);
                            return Err(failure);
                        }
                    }
                    () = &mut slice => {
                        if Instant::now() >= deadline {
                            shared.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                            return Err(self.timed_out(started));
                        }
                        // Only a pool that could still grow may have forgotten to connect.
                        if pool.state().connections < shared.config.connection_limit() {
                            continue 'checkout;
                        }
                        slice.as_mut().reset(
                            deadline.min(Instant::now() + CHECKOUT_SLICE).into(),
                        );
                    }
                }
            }
        }
    }

    /// A connection from bb8, with its turn, as the caller gets it.
    pub(crate) fn hand_out(
        &self,
        turn: tokio::sync::SemaphorePermit<'_>,
        conn: bb8::PooledConnection<'static, Manager<C>>,
        scope: Option<Arc<RequestScope>>,
        caller: &'static Location<'static>,
    ) -> PooledConnection<C> {
        let shared = &self.inner.shared;
        // Given back when the connection is back in bb8 (`Drop`, or `reclaim`).
        turn.forget();
        conn.activity.checked_out();
        let holder = shared.config.leak_threshold().map(|_| {
            let path = scope
                .as_ref()
                .and_then(|scope| scope.path().map(str::to_owned));
            shared.holders.checked_out(caller, path)
        });
        PooledConnection {
            conn: Some(conn),
            shared: Arc::clone(shared),
            checked_out: Instant::now(),
            holder,
            _holding: scope.as_ref().map(RequestScope::holding),
            scope,
            lender: None,
        }
    }

    /// Checkouts waiting behind one that is itself still counted as waiting.
    fn behind(&self) -> u64 {
        let waiting = self.inner.shared.counters.waiting.load(Ordering::Relaxed);
        waiting.saturating_sub(1)
    }

    /// The failure for a checkout admission refused: counted by reason, with a public message
    /// that names the expected wait against what was allowed, and the estimate as its
    /// `Retry-After`.
    fn refused(&self, refusal: &Refusal) -> Failure {
        let shared = &self.inner.shared;
        let counters = &shared.counters;
        let (counter, public) = match refusal.reason {
            Reason::ExpectedWait => (
                &counters.refused_expected_wait,
                format!(
                    "the database is at capacity: a connection would take about {} to free up, \
                     longer than the {} this request has",
                    Human(refusal.expected),
                    Human(refusal.allowed)
                ),
            ),
            Reason::StandingQueue => (
                &counters.refused_standing_queue,
                format!(
                    "the database is at capacity: a connection would take about {} to free up, \
                     and waits are held to {} while it is overloaded",
                    Human(refusal.expected),
                    Human(refusal.allowed)
                ),
            ),
            Reason::Overdue => (
                &counters.refused_overdue,
                format!(
                    "the database is at capacity: this request would have waited about {} for a \
                     connection, far past the {} waits are held to while it is overloaded",
                    Human(refusal.expected),
                    Human(refusal.allowed)
                ),
            ),
            Reason::QueueLimit => (
                &counters.refused_queue_limit,
                format!(
                    "the database is at capacity: {} requests are already waiting for a \
                     connection",
                    refusal.ahead
                ),
            ),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // Refusals come by the thousand a second in an overload: one string for the operator,
        // built in one go.
        Failure::new(Cause::Overloaded)
            .with_known_outage(true)
            .with_retry_after(refusal.retry_in)
            .with_detail(format!(
                "{:?}: {} waiting, {} connections held {:?} each on average",
                refusal.reason,
                refusal.ahead,
                shared.config.connection_limit(),
                shared.admission.hold().unwrap_or_default(),
            ))
            .with_public_message(public)
    }

    /// Where a checkout failure leaves the request: nothing was sent for it — unless an earlier
    /// connection of the same request ran statements, and then a repeat may write twice
    /// (unless an idempotency key guards the request).
    fn honest(&self, failure: Failure, scope: Option<&RequestScope>) -> Failure {
        let Some(scope) = scope else {
            return failure.with_reach(Reach::NotSent);
        };
        let database = scope.database();
        let reach = if database.statement_sent {
            Reach::MaybeSent
        } else {
            Reach::NotSent
        };
        failure.with_reach(reach).with_idempotent(database.guarded)
    }

    /// The connect failure a waiting checkout should report now, if waiting is pointless: no
    /// connection is open and no connect attempt is under way.
    fn fail_fast(&self) -> Option<Failure> {
        let shared = &self.inner.shared;
        let failure = shared.last_connect_failure()?;
        let nothing_to_wait_for =
            self.bb8_pool().state().connections == 0 && !shared.is_connecting();
        (nothing_to_wait_for || !failure.retryable()).then_some(failure)
    }

    /// The failure for a checkout that waited the whole `pool_timeout`.
    fn timed_out(&self, started: Instant) -> Failure {
        let waited = started.elapsed();
        let state = self.bb8_pool().state();
        let max = self.inner.shared.config.connection_limit();
        let in_use = state.connections - state.idle_connections;
        // Connecting failed while this checkout waited: that, not a busy pool, is why it
        // waited in vain (the pool could not grow).
        match self.inner.shared.connect_failure_since(started) {
            Some(failure) => {
                let detail = format!(
                    "no connection within {waited:?} ({in_use} of {max} in use, {} open); \
                     connecting failed: {}",
                    state.connections,
                    failure.report()
                );
                failure.with_detail(detail)
            }
            None => Failure::new(Cause::PoolExhausted).with_detail(format!(
                "pool exhausted ({in_use} of {max} in use, waited {waited:?})"
            )),
        }
    }
}

/// Counts a checkout as waiting for as long as it runs, cancellation included.
struct Waiting<'a>(&'a Shared);

impl<'a> Waiting<'a> {
    /// Starts counting; also says how many were waiting already.
    fn start(shared: &'a Shared) -> (Self, u64) {
        let ahead = shared.counters.waiting.fetch_add(1, Ordering::Relaxed);
        (Waiting(shared), ahead)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.counters.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A duration as people read it in a refusal: `350 ms`, `4.8 s`.
struct Human(Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        if millis < 1000 {
            write!(f, "{millis} ms")
        } else {
            // Integers: a refusal is written thousands of times a second in an overload, and
            // formatting a float costs more than the rest of the message.
            let tenths = (millis + 50) / 100;
            write!(f, "{}.{} s", tenths / 10, tenths % 10)
        }
    }
}

/// How long one bb8 checkout is waited on before it is started again (see `get`): short enough
/// that a checkout bb8 forgot to ask a connection for waits at most this much longer, long enough
/// that restarting costs nothing measurable.
const CHECKOUT_SLICE: Duration = Duration::from_millis(100);

/// A checkout slower than this is logged (at debug level) with its wait.
const SLOW_CHECKOUT: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_durations_as_people_read_them() {
        let said = |ms| Human(Duration::from_millis(ms)).to_string();
        assert_eq!(said(350), "350 ms");
        assert_eq!(said(999), "999 ms");
        assert_eq!(said(1_000), "1.0 s");
        assert_eq!(said(4_649), "4.6 s");
        assert_eq!(said(4_650), "4.7 s");
        assert_eq!(said(61_000), "61.0 s");
    }
}
