//! Admission by time: whether a checkout may join the queue for a connection, and when a
//! waiting one gives up.
//!
//! A count of waiters says nothing about how long they wait: 100 waiters are 0.2 s of work with
//! 20 ms queries on a pool of 10 and 5 s with 500 ms ones. A fixed count (the old default,
//! 10 × `connection_limit`) refused 97% of a load the database served in 0.4 s. So the pool
//! decides by time, with two rules:
//!
//! 1. **Never queue what cannot be served in time.** A checkout is refused at once when the wait
//!    it can expect is longer than the time it has: the smaller of `pool_timeout` and the
//!    request's remaining deadline ([`RequestScope`](ballast_core::scope::RequestScope)).
//! 2. **No standing queue above the target.** A burst that drains is good queueing and is served.
//!    A queue whose waits stay above `queue_target` (1 s) for an interval (half the target) is
//!    overload (CoDel's test: the least wait over an interval is above the target), and a
//!    standing queue's waits are held to the target. So a checkout is refused at once when it
//!    expects to wait longer than one and a half targets (such a wait could not end before the
//!    queue counted as standing), and, while the queue stands, longer than the target. A waiter
//!    whose wait, by what the pool learns while it waits, will run past that (it was admitted
//!    before the pool knew its hold time, or before the database slowed down) gives up as soon
//!    as that is known. The admitted are served near the target, and the rest are told at once,
//!    not after waiting, to come back later.
//!
//! **The estimate.** With `ahead` checkouts before it, a checkout waits for `ahead` connections to
//! come back; `connection_limit` connections come back every hold time, so the expected wait is
//! `ahead × hold / connection_limit`. The hold time is what the pool measures: a moving average
//! of how long connections stayed checked out (weight 1/16 per return, so it follows a database
//! that slows down within a few dozen returns). With nothing ahead, or before the first
//! connection has come back, the expected wait is zero: a burst on an idle pool is admitted
//! whole.
//!
//! **The standing queue** is recognised from waits the pool saw, not from the estimate: waits
//! above the target (a checkout served or giving up after longer, or one still waiting past it)
//! start the clock; a wait within the target clears it, unless the queue behind it is still
//! long (bb8 hands a returned connection to whoever asks first, so a checkout that slipped past
//! the queue says nothing about it). Once standing, the queue stays so until a checkout finishes
//! with a queue behind it expected to drain within half the target — admission itself keeps the
//! queue at the target, so a lower bar keeps the state from flapping. For eight targets after
//! that (CoDel remembers a recent dropping state too), arrivals are still held to the target at
//! once: clients told to come back later come back in waves, and a wave admitted past the target
//! would only give up later, after waiting.
//!
//! **The queue** is FIFO: turns at a connection are handed out in arrival order, so the
//! estimate holds for each waiter (bb8's own queue lets a returned connection go to whoever asks
//! first).
//!
//! **Why not adaptive LIFO.** Facebook's and Envoy's answer to a standing queue is to serve the
//! newest waiter first, and let the oldest time out. Here the same effect comes from the edges,
//! and earlier: the ones that would wait longest are refused before they join, so nobody waits
//! only to be refused.
//!
//! Everything here is a few relaxed atomics: a checkout with nobody ahead reads none of them, a
//! return updates the average, and the state changes only at the edges of an overload.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

/// The weight of one return in the hold-time average: 1/16, so the average follows a change in
/// the database within a few dozen returns (a third of a second at 100 returns a second) and
/// one slow query among fast ones moves it little. Until sixteen connections have come back it
/// is the plain mean of them: a pool that has seen three warm-up queries knows little, and must
/// not take three hundred returns to learn better.
const HOLD_WEIGHT: u64 = 16;

/// Why a checkout was refused (or gave up) rather than served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Rule 1: the expected wait was longer than the time the checkout had.
    ExpectedWait,
    /// Rule 2 at arrival: the expected wait was longer than one and a half targets, or, the
    /// queue standing (or having stood moments ago), longer than the target.
    StandingQueue,
    /// Rule 2 in the queue: the checkout's wait, by what the pool learned while it waited, will
    /// be longer than admission allows, or it waited two targets in a standing queue.
    Overdue,
    /// The explicit cap on waiting checkouts (`queue_limit`).
    QueueLimit,
}

/// A refused checkout: why, and the figures that say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) reason: Reason,
    /// The wait the checkout could expect (for [`Reason::Overdue`], the time it waited).
    pub(crate) expected: Duration,
    /// What it was allowed: the time it had left, the target, or for
    /// [`Reason::QueueLimit`] nothing (zero).
    pub(crate) allowed: Duration,
    /// Checkouts ahead of it (for [`Reason::Overdue`], still waiting behind it).
    pub(crate) ahead: u64,
    /// How long until the queue has shrunk enough to take it: its `Retry-After`.
    pub(crate) retry_in: Duration,
}

/// The pool's admission state. See the [module docs](self).
pub(crate) struct Admission {
    /// `queue_target`; `None`: admission by time is off, checkouts wait up to `pool_timeout`.
    target: Option<Duration>,
    /// `connection_limit`: the connections that serve the queue.
    connections: u64,
    /// `queue_limit`: the opt-in cap on waiting checkouts.
    queue_limit: Option<u32>,
    /// The origin of the instants kept as numbers below.
    epoch: Instant,
    /// The hold-time average, in nanoseconds; 0 until the first connection came back.
    hold_nanos: AtomicU64,
    /// Connections that came back, up to [`HOLD_WEIGHT`].
    holds_seen: AtomicU64,
    /// Since when (nanoseconds after `epoch`, plus one) waits have stayed above the target; 0
    /// while they do not.
    above_since: AtomicU64,
    /// Whether the queue is standing.
    standing: AtomicBool,
    /// When (nanoseconds after `epoch`, plus one) the last standing queue ended; 0: never.
    ended_at: AtomicU64,
    /// The queue itself: one turn per connection, handed out in arrival order.
    turns: Semaphore,
    /// Checkouts that joined the queue, that were given a turn from it, and that left it (with
    /// a turn or without): see [`Place::ahead`].
    joined: AtomicU64,
    granted: AtomicU64,
    left: AtomicU64,
}

/// A checkout's place in the queue, while it waits for a turn.
#[derive(Debug)]
pub(crate) struct Place<'a> {
    admission: &'a Admission,
    ticket: u64,
}

impl Place<'_> {
    /// About how many waiters are before this one, never fewer: turns are given in the order
    /// tickets were taken, so those before it are its ticket less the turns given — counting
    /// any that left before their turn — and at most the waiters still waiting, less itself.
    /// (Counting departures instead would fall short, to nothing, when the waiters behind it
    /// leave in numbers.)
    pub(crate) fn ahead(&self) -> u64 {
        let admission = self.admission;
        let by_turns = self
            .ticket
            .saturating_sub(admission.granted.load(Ordering::Relaxed));
        let waiting = admission
            .joined
            .load(Ordering::Relaxed)
            .saturating_sub(admission.left.load(Ordering::Relaxed))
            .saturating_sub(1);
        by_turns.min(waiting)
    }

    /// This waiter was given its turn.
    pub(crate) fn granted(&self) {
        self.admission.granted.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.admission.left.fetch_add(1, Ordering::Relaxed);
    }
}

impl Admission {
    pub(crate) fn new(
        target: Option<Duration>,
        connection_limit: u32,
        queue_limit: Option<u32>,
    ) -> Self {
        Admission {
            target,
            connections: u64::from(connection_limit.max(1)),
            queue_limit,
            epoch: Instant::now(),
            hold_nanos: AtomicU64::new(0),
            holds_seen: AtomicU64::new(0),
            above_since: AtomicU64::new(0),
            standing: AtomicBool::new(false),
            ended_at: AtomicU64::new(0),
            turns: Semaphore::new(connection_limit.max(1) as usize),
            joined: AtomicU64::new(0),
            granted: AtomicU64::new(0),
            left: AtomicU64::new(0),
        }
    }

    /// Waits for a turn at a connection: `connection_limit` turns, handed out in the order they
    /// were asked for. bb8's own waiters are woken in order but a returned connection goes to
    /// whoever asks first, so a client that gives a connection back and asks again at once
    /// would overtake everyone waiting (a few waited 3.4 s while 200 clients of 20 ms queries
    /// averaged 0.4 s); with a turn in hand, bb8 always has a connection, or room for one.
    ///
    /// The turn is [forgotten](SemaphorePermit::forget) once the checkout succeeds and
    /// [given back](Self::give_back) when the connection is back in bb8.
    pub(crate) async fn turn(&self) -> SemaphorePermit<'_> {
        match self.turns.acquire().await {
            Ok(permit) => permit,
            Err(_) => unreachable!("the semaphore is never closed"),
        }
    }

    /// A turn if one is free now, without queueing (readiness probes).
    pub(crate) fn try_turn(&self) -> Option<SemaphorePermit<'_>> {
        self.turns.try_acquire().ok()
    }

    /// Gives back the turn of a connection that is back in bb8.
    pub(crate) fn give_back(&self) {
        self.turns.add_permits(1);
    }

    /// The hold-time average, if a connection has come back.
    pub(crate) fn hold(&self) -> Option<Duration> {
        match self.hold_nanos.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    /// The wait a checkout can expect with `ahead` checkouts before it.
    pub(crate) fn expected_wait(&self, ahead: u64) -> Duration {
        let hold = self.hold_nanos.load(Ordering::Relaxed);
        Duration::from_nanos(ahead.saturating_mul(hold) / self.connections)
    }

    /// Whether a checkout with `ahead` checkouts before it and `time_left` to wait may join the
    /// queue.
    pub(crate) fn admit(
        &self,
        ahead: u64,
        time_left: Duration,
        now: Instant,
    ) -> Result<(), Refusal> {
        if let Some(limit) = self.queue_limit {
            if ahead >= u64::from(limit) {
                let expected = self.expected_wait(ahead);
                return Err(Refusal {
                    reason: Reason::QueueLimit,
                    expected,
                    allowed: Duration::ZERO,
                    ahead,
                    retry_in: self.expected_wait(ahead + 1 - u64::from(limit)),
                });
            }
        }
        let Some(target) = self.target else {
            return Ok(());
        };
        if ahead == 0 {
            return Ok(());
        }
        let expected = self.expected_wait(ahead);
        let (reason, allowed) = if expected > time_left {
            (Reason::ExpectedWait, time_left)
        } else if expected > admitted_at_most(target)
            || expected > target
                && (self.is_standing(target, now) || self.recently_standing(target, now))
        {
            // Past one and a half targets the wait could not end before the queue counts as
            // standing, and a standing queue would end it: refused now rather than after
            // waiting.
            (Reason::StandingQueue, target)
        } else {
            return Ok(());
        };
        Err(Refusal {
            reason,
            expected,
            allowed,
            ahead,
            retry_in: expected - allowed,
        })
    }

    /// A connection came back after being checked out for `held`.
    pub(crate) fn returned(&self, held: Duration) {
        if self.target.is_none() && self.queue_limit.is_none() {
            return;
        }
        let sample = nanos(held).max(1);
        let old = self.hold_nanos.load(Ordering::Relaxed);
        let mut seen = self.holds_seen.load(Ordering::Relaxed);
        if seen < HOLD_WEIGHT {
            seen += 1;
            self.holds_seen.store(seen, Ordering::Relaxed);
        }
        let average = if sample >= old {
            old + (sample - old) / seen
        } else {
            old - (old - sample) / seen
        };
        // Racing returns may overwrite each other's update: one sample lost among dozens.
        self.hold_nanos.store(average.max(1), Ordering::Relaxed);
    }

    /// A checkout stopped waiting after `waited` — served, timed out or given up — with
    /// `behind` checkouts still waiting.
    pub(crate) fn waited(&self, waited: Duration, behind: u64, now: Instant) {
        let Some(target) = self.target else {
            return;
        };
        if waited > target {
            self.mark_above(now);
            return;
        }
        let above = self.above_since.load(Ordering::Relaxed) != 0;
        let standing = self.standing.load(Ordering::Relaxed);
        if !above && !standing {
            return;
        }
        let queue = self.expected_wait(behind);
        if above && queue <= target {
            self.above_since.store(0, Ordering::Relaxed);
        }
        if standing && queue <= target / 2 && self.standing.swap(false, Ordering::Relaxed) {
            self.ended_at.store(self.stamp(now), Ordering::Relaxed);
            tracing::info!(
                db.client.connection.pool.name = "ballast",
                queue_target_ms = millis(target),
                "waits for a connection are back within half of queue_target: the overload is over"
            );
        }
    }

    /// Whether a checkout that has waited `waited`, with `ahead` still before it, should give
    /// up: its whole wait, by what the pool knows now, will be longer than the one and a half
    /// targets admission allows (by more than one hold time: connections come back in bunches,
    /// not one by one) — it was admitted before the pool knew how long connections are held, or
    /// before the database slowed down — or, nothing known to be ahead of it, it already waited
    /// two targets in a standing queue (connections stopped coming back).
    pub(crate) fn overdue(&self, waited: Duration, ahead: u64, now: Instant) -> Option<Refusal> {
        let target = self.target?;
        let remaining = self.expected_wait(ahead);
        if waited > target {
            self.mark_above(now);
        }
        let doomed = if remaining > Duration::ZERO {
            let slack = self.hold().unwrap_or_default();
            waited + remaining > admitted_at_most(target) + slack
        } else {
            waited > cut_after(target) && self.is_standing(target, now)
        };
        if !doomed {
            return None;
        }
        Some(Refusal {
            reason: Reason::Overdue,
            expected: waited + remaining,
            allowed: target,
            ahead,
            retry_in: (waited + remaining).saturating_sub(target),
        })
    }

    /// Joins the queue of checkouts waiting for a turn; leaving it (with a turn or without) is
    /// dropping the place.
    pub(crate) fn join(&self) -> Place<'_> {
        Place {
            ticket: self.joined.fetch_add(1, Ordering::Relaxed),
            admission: self,
        }
    }

    /// Whether the queue is standing now.
    #[cfg(test)]
    pub(crate) fn standing(&self, now: Instant) -> bool {
        self.target
            .is_some_and(|target| self.is_standing(target, now))
    }

    /// Whether a standing queue ended less than [`memory`] ago: the load that made it may be
    /// coming back (clients that waited their `Retry-After`), and a wave admitted past the
    /// target now would have to give up later, after waiting.
    fn recently_standing(&self, target: Duration, now: Instant) -> bool {
        match self.ended_at.load(Ordering::Relaxed) {
            0 => false,
            ended => self.stamp(now).saturating_sub(ended) < nanos(memory(target)),
        }
    }

    fn mark_above(&self, now: Instant) {
        let stamp = self.stamp(now);
        let _ = self
            .above_since
            .compare_exchange(0, stamp, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn is_standing(&self, target: Duration, now: Instant) -> bool {
        if self.standing.load(Ordering::Relaxed) {
            return true;
        }
        let since = self.above_since.load(Ordering::Relaxed);
        if since == 0 {
            return false;
        }
        let above_for = self.stamp(now).saturating_sub(since);
        if above_for < nanos(interval(target)) {
            return false;
        }
        if !self.standing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                db.client.connection.pool.name = "ballast",
                queue_target_ms = millis(target),
                hold_ms = self.hold().map_or(0, millis),
                "waits for a connection stayed above queue_target ({target:?}) for {:?}: \
                 the database is overloaded; checkouts expected to wait longer are refused at \
                 once",
                Duration::from_nanos(above_for)
            );
        }
        true
    }

    /// `now` as nanoseconds after the epoch, plus one (so that 0 means "none").
    fn stamp(&self, now: Instant) -> u64 {
        nanos(now.saturating_duration_since(self.epoch)) + 1
    }
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("target", &self.target)
            .field("queue_limit", &self.queue_limit)
            .field("hold", &self.hold())
            .field("standing", &self.standing.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The longest wait admitted: one and a half targets. A longer one could not end before the
/// queue counted as standing.
fn admitted_at_most(target: Duration) -> Duration {
    target + interval(target)
}

/// A wait nothing is known to be ahead of is cut short past two targets in a standing queue:
/// connections are no longer coming back.
fn cut_after(target: Duration) -> Duration {
    admitted_at_most(target) + interval(target)
}

/// How long waits must stay above the target before the queue counts as standing: half the
/// target. A burst that drains within one and a half targets is served whole (500 requests of
/// 20 ms on a pool of 10 drain in about a second), and a standing overload is recognised one and
/// a half targets after it began.
fn interval(target: Duration) -> Duration {
    target / 2
}

/// How long after a standing queue ends arrivals are still held to the target at once: sixteen
/// intervals (eight targets), CoDel's own memory of a recent dropping state. Clients told to
/// come back (`Retry-After`, one to three seconds and a jitter) come back within it, and are
/// refused at arrival rather than admitted past the target and dropped after waiting; a burst
/// within it is served up to the target.
fn memory(target: Duration) -> Duration {
    interval(target) * 16
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    const TARGET: Duration = Duration::from_secs(1);
    const POOL_TIMEOUT: Duration = Duration::from_secs(20);

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn admission() -> Admission {
        Admission::new(Some(TARGET), 10, None)
    }

    #[test]
    fn nothing_is_refused_before_the_pool_knows_its_hold_time_or_with_nobody_ahead() {
        let admission = admission();
        let now = Instant::now();
        assert_eq!(
            admission.admit(10_000, ms(1), now),
            Ok(()),
            "no estimate yet"
        );
        admission.returned(ms(100));
        assert_eq!(admission.admit(0, Duration::ZERO, now), Ok(()));
    }

    #[test]
    fn rule_one_refuses_what_cannot_be_served_in_the_time_left() {
        let admission = admission();
        let now = Instant::now();
        admission.returned(ms(100));
        // 50 ahead, 10 connections, 100 ms each: 500 ms.
        assert_eq!(admission.expected_wait(50), ms(500));
        assert_eq!(admission.admit(50, ms(500), now), Ok(()));
        let refusal = admission.admit(50, ms(300), now).unwrap_err();
        assert_eq!(refusal.reason, Reason::ExpectedWait);
        assert_eq!(
            (refusal.expected, refusal.allowed, refusal.retry_in),
            (ms(500), ms(300), ms(200))
        );
        // A queue of up to one and a half targets that fits in pool_timeout is not refused:
        // nothing stands yet.
        assert_eq!(admission.admit(150, POOL_TIMEOUT, now), Ok(()));
    }

    #[test]
    fn rule_two_needs_waits_above_the_target_for_an_interval() {
        let admission = admission();
        let start = Instant::now();
        admission.returned(ms(100));
        // 120 ahead: 1.2 s expected, within pool_timeout, above the target.
        assert_eq!(admission.admit(120, POOL_TIMEOUT, start), Ok(()));
        admission.waited(ms(1100), 150, start);
        assert!(
            !admission.standing(start + ms(400)),
            "above for less than the interval"
        );
        assert_eq!(admission.admit(120, POOL_TIMEOUT, start + ms(400)), Ok(()));
        let refusal = admission
            .admit(120, POOL_TIMEOUT, start + ms(500))
            .unwrap_err();
        assert_eq!(refusal.reason, Reason::StandingQueue);
        assert_eq!((refusal.allowed, refusal.retry_in), (TARGET, ms(200)));
        // Within the target, a standing queue still admits.
        assert_eq!(admission.admit(100, POOL_TIMEOUT, start + ms(600)), Ok(()));
    }

    #[test]
    fn a_wait_a_standing_queue_would_end_is_refused_before_it_begins() {
        let admission = admission();
        admission.returned(ms(100));
        // 200 ahead: 2 s. Nothing stands yet, but a wait that long would be above the target
        // for more than the interval before it ended: the queue would stand, and end it.
        let refusal = admission
            .admit(200, POOL_TIMEOUT, Instant::now())
            .unwrap_err();
        assert_eq!(refusal.reason, Reason::StandingQueue);
        assert_eq!(refusal.retry_in, ms(1_000));
    }

    #[test]
    fn a_short_wait_clears_the_clock_only_with_a_short_queue_behind_it() {
        let admission = admission();
        let start = Instant::now();
        admission.returned(ms(100));
        admission.waited(ms(1100), 300, start);
        // A checkout that slipped past a long queue says nothing about it.
        admission.waited(Duration::ZERO, 300, start + ms(100));
        assert!(admission.standing(start + ms(500)));
        // Standing: a wait within the target with a queue of about the target behind keeps it.
        admission.waited(ms(900), 90, start + ms(600));
        assert!(admission.standing(start + ms(600)));
        // A queue that drains within half the target ends it.
        admission.waited(ms(900), 40, start + ms(700));
        assert!(!admission.standing(start + ms(700)));

        let admission = self::admission();
        admission.returned(ms(100));
        admission.waited(ms(1100), 300, start);
        admission.waited(ms(200), 50, start + ms(100));
        assert!(!admission.standing(start + ms(600)), "the queue drained");
    }

    #[test]
    fn after_a_standing_queue_a_wave_is_held_to_the_target_at_once_for_a_while() {
        let admission = admission();
        let start = Instant::now();
        admission.returned(ms(100));
        admission.waited(ms(1100), 300, start);
        assert!(admission.standing(start + ms(500)));
        admission.waited(ms(100), 10, start + ms(2_000));
        assert!(!admission.standing(start + ms(2_000)), "the queue drained");
        // A wave of clients coming back after their Retry-After: nothing waits past the target,
        // and nothing waits at all when it would.
        assert_eq!(admission.admit(90, POOL_TIMEOUT, start + ms(3_000)), Ok(()));
        let refusal = admission
            .admit(120, POOL_TIMEOUT, start + ms(3_000))
            .unwrap_err();
        assert_eq!(refusal.reason, Reason::StandingQueue);
        assert_eq!(admission.overdue(ms(1_100), 10, start + ms(4_000)), None);
        admission.waited(ms(100), 5, start + ms(4_100));
        // Eight targets after it ended, a burst is a burst again.
        assert_eq!(
            admission.admit(120, POOL_TIMEOUT, start + ms(10_001)),
            Ok(())
        );
    }

    #[test]
    fn a_waiter_leaves_as_soon_as_its_wait_is_known_to_be_too_long() {
        let admission = admission();
        let start = Instant::now();
        // Admitted on what the pool knew: connections held for a millisecond.
        admission.returned(ms(1));
        assert_eq!(admission.admit(300, POOL_TIMEOUT, start), Ok(()));
        // A waiter whose whole wait still fits stays.
        assert_eq!(admission.overdue(ms(100), 10, start + ms(100)), None);
        // Then connections come back after 100 ms: 290 ahead is three seconds more.
        for _ in 0..64 {
            admission.returned(ms(100));
        }
        let refusal = admission.overdue(ms(100), 290, start + ms(100)).unwrap();
        assert_eq!(refusal.reason, Reason::Overdue);
        assert!(refusal.expected > ms(2_900), "{refusal:?}");
        assert_eq!(admission.overdue(ms(100), 10, start + ms(100)), None);
    }

    #[test]
    fn a_place_counts_those_before_it_whoever_leaves() {
        let admission = admission();
        let places: Vec<Place<'_>> = (0..10).map(|_| admission.join()).collect();
        let mut places = places.into_iter();
        // The first three get their turns and go.
        for place in places.by_ref().take(3) {
            place.granted();
        }
        let (fourth, fifth) = (places.next().unwrap(), places.next().unwrap());
        assert_eq!((fourth.ahead(), fifth.ahead()), (0, 1));
        // The five behind them give up: nothing changes for those before them.
        drop(places);
        assert_eq!((fourth.ahead(), fifth.ahead()), (0, 1));
    }

    #[test]
    fn a_waiter_past_two_targets_gives_up_only_in_a_standing_queue() {
        let admission = admission();
        let start = Instant::now();
        admission.returned(ms(100));
        // Nothing known ahead of it (the estimate was wrong, or connections stopped coming
        // back): it starts the clock, and is not refused before the queue stands.
        assert_eq!(admission.overdue(ms(1_001), 0, start), None);
        assert_eq!(admission.overdue(ms(1_900), 0, start + ms(900)), None);
        let refusal = admission.overdue(ms(2_100), 0, start + ms(1_100)).unwrap();
        assert_eq!(refusal.reason, Reason::Overdue);
        assert_eq!(refusal.retry_in, ms(1_100));
    }

    #[test]
    fn off_admits_everything_and_the_queue_limit_is_a_plain_cap() {
        let off = Admission::new(None, 10, None);
        off.returned(ms(100));
        let now = Instant::now();
        assert_eq!(off.admit(100_000, ms(1), now), Ok(()));
        assert_eq!(off.overdue(ms(60_000), 100, now), None);
        let capped = Admission::new(None, 10, Some(5));
        capped.returned(ms(100));
        assert_eq!(capped.admit(4, POOL_TIMEOUT, now), Ok(()));
        let refusal = capped.admit(5, POOL_TIMEOUT, now).unwrap_err();
        assert_eq!(refusal.reason, Reason::QueueLimit);
        assert_eq!(refusal.retry_in, ms(10), "one connection must come back");
    }

    #[test]
    fn the_hold_average_follows_the_database() {
        let admission = admission();
        // Three warm-up queries, then the real ones: the average is theirs within a few.
        for _ in 0..3 {
            admission.returned(ms(1));
        }
        for _ in 0..10 {
            admission.returned(ms(100));
        }
        let hold = admission.hold().unwrap();
        assert!(hold > ms(75), "{hold:?}");
        admission.returned(ms(5));
        for _ in 0..64 {
            admission.returned(ms(200));
        }
        let hold = admission.hold().unwrap();
        assert!(hold > ms(190) && hold <= ms(200), "{hold:?}");
        for _ in 0..64 {
            admission.returned(ms(5));
        }
        let hold = admission.hold().unwrap();
        assert!(hold < ms(15), "{hold:?}");
    }

    /// What a simulated run saw.
    #[derive(Default)]
    struct Run {
        served: usize,
        refused: usize,
        dropped: usize,
        /// When each drop happened.
        drops_at: Vec<Duration>,
        /// The waits of the checkouts that were served.
        waits: Vec<Duration>,
        /// The most checkouts waiting at once.
        longest_queue: usize,
    }

    impl fmt::Debug for Run {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let mut waits = self.waits.clone();
            waits.sort();
            let at = |q: f64| {
                waits.get(((waits.len() as f64 * q) as usize).min(waits.len().saturating_sub(1)))
            };
            write!(
                f,
                "served {} refused {} dropped {} longest queue {} waits p50 {:?} p99 {:?} max {:?}",
                self.served,
                self.refused,
                self.dropped,
                self.longest_queue,
                at(0.5),
                at(0.99),
                waits.last()
            )
        }
    }

    impl Run {
        fn wait_quantile(&mut self, quantile: f64) -> Duration {
            self.waits.sort();
            let index = ((self.waits.len() as f64 * quantile).ceil() as usize).max(1) - 1;
            self.waits[index]
        }
    }

    /// Arrivals: `clients` closed-loop clients that send again as soon as they are answered
    /// (refused or served), or an open loop of one arrival every `every`.
    #[derive(Clone, Copy)]
    enum Load {
        Closed {
            clients: usize,
        },
        /// Closed-loop clients that, refused, come back after a `Retry-After` of one to three
        /// seconds.
        Polite {
            clients: usize,
        },
        Open {
            every: Duration,
        },
        Burst {
            size: usize,
        },
    }

    /// A discrete-event model of the pool: 10 connections, each checkout holds its connection
    /// for `hold(now)`, waiters in FIFO order, each waiter checking every 100 ms whether it is
    /// overdue (as `SharedPool::get` does). Runs `run_for` of virtual time, in steps of 0.5 ms.
    /// The pool starts knowing its hold time (the harder case: nothing is admitted blind).
    fn simulate(load: Load, hold: impl Fn(Duration) -> Duration, run_for: Duration) -> Run {
        let known = hold(Duration::ZERO);
        simulate_knowing(load, hold, run_for, known)
    }

    /// [`simulate`], the pool starting out believing connections are held for `known`.
    fn simulate_knowing(
        load: Load,
        hold: impl Fn(Duration) -> Duration,
        run_for: Duration,
        known: Duration,
    ) -> Run {
        const TICK: Duration = Duration::from_millis(100);
        let admission = admission();
        admission.returned(known);
        let epoch = admission.epoch;
        let mut run = Run::default();
        // Waiters: when each arrived. Connections: when each comes back (None: idle).
        let mut queue: VecDeque<Duration> = VecDeque::new();
        let mut busy: Vec<Option<Duration>> = vec![None; 10];
        // Pending arrivals (virtual times).
        let mut arrivals: Vec<Duration> = match load {
            Load::Closed { clients } | Load::Polite { clients } => vec![Duration::ZERO; clients],
            Load::Open { .. } => vec![Duration::ZERO],
            Load::Burst { size } => vec![Duration::ZERO; size],
        };
        let mut now = Duration::ZERO;
        let mut next_tick = TICK;
        while now < run_for {
            // Connections coming back now serve the queue's head.
            for slot in &mut busy {
                if slot.is_some_and(|back| back <= now) {
                    let held = hold(now);
                    admission.returned(held);
                    *slot = None;
                    if let Load::Closed { .. } | Load::Polite { .. } = load {
                        arrivals.push(now);
                    }
                }
                if slot.is_none() {
                    if let Some(arrived) = queue.pop_front() {
                        let waited = now - arrived;
                        admission.waited(waited, queue.len() as u64, epoch + now);
                        run.waits.push(waited);
                        run.served += 1;
                        *slot = Some(now + hold(now));
                    }
                }
            }
            // Arrivals now.
            let (due, later): (Vec<_>, Vec<_>) = arrivals.iter().partition(|at| **at <= now);
            arrivals = later;
            for _ in due {
                if let Load::Open { every } = load {
                    arrivals.push(now + every);
                }
                let ahead = queue.len() as u64;
                match admission.admit(ahead, POOL_TIMEOUT, epoch + now) {
                    Ok(()) => match busy.iter_mut().find(|slot| slot.is_none()) {
                        Some(slot) if queue.is_empty() => {
                            admission.waited(Duration::ZERO, 0, epoch + now);
                            run.waits.push(Duration::ZERO);
                            run.served += 1;
                            *slot = Some(now + hold(now));
                        }
                        _ => queue.push_back(now),
                    },
                    Err(_) => {
                        run.refused += 1;
                        match load {
                            // A refused client comes back at once, as the worst clients do.
                            Load::Closed { .. } => arrivals.push(now + Duration::from_micros(500)),
                            Load::Polite { .. } => arrivals.push(now + retry_after(run.refused)),
                            _ => {}
                        }
                    }
                }
            }
            run.longest_queue = run.longest_queue.max(queue.len());
            // Waiters look at the clock.
            if now >= next_tick {
                next_tick += TICK;
                let mut kept = VecDeque::new();
                while let Some(arrived) = queue.pop_front() {
                    let ahead = kept.len() as u64;
                    match admission.overdue(now - arrived, ahead, epoch + now) {
                        Some(_) => {
                            let behind = queue.len() as u64;
                            admission.waited(now - arrived, behind, epoch + now);
                            run.dropped += 1;
                            run.drops_at.push(now);
                            match load {
                                Load::Closed { .. } => arrivals.push(now),
                                Load::Polite { .. } => {
                                    arrivals.push(now + retry_after(run.dropped));
                                }
                                _ => {}
                            }
                        }
                        None => kept.push_back(arrived),
                    }
                }
                queue = kept;
            }
            now += Duration::from_micros(500);
        }
        run
    }

    /// One to three seconds, as the error layer's `Retry-After` jitters them.
    fn retry_after(nth: usize) -> Duration {
        ms(1_000 + (nth as u64 * 7_919) % 2_000)
    }

    #[test]
    fn model_polite_clients_are_refused_at_arrival_not_after_waiting() {
        // Shape b's clients, but each refused one waits its Retry-After: they come back in
        // waves. Only the first overload drops waiters; after it, a wave is held to the target
        // at arrival.
        let mut run = simulate(Load::Polite { clients: 500 }, |_| ms(100), ms(20_000));
        println!("shape b, polite clients: {run:?}");
        let late = run.drops_at.iter().filter(|at| **at > ms(3_000)).count();
        assert_eq!(
            late, 0,
            "drops after the first overload: {:?}",
            run.drops_at
        );
        assert!(run.served >= 1_900, "{}", run.served);
        assert!(run.wait_quantile(0.99) <= ms(1_600));
    }

    #[test]
    fn model_a_wrong_estimate_costs_a_short_wait_not_a_long_one() {
        // Shape b's polite clients on a pool that believes connections are held for a
        // millisecond (its warm-up): the first wave is admitted whole, and the waiters that
        // cannot be served in one and a half targets leave as soon as the first connections
        // come back, not after waiting a second and a half.
        let run = simulate_knowing(
            Load::Polite { clients: 500 },
            |_| ms(100),
            ms(10_000),
            ms(1),
        );
        println!("shape b, polite clients, a wrong estimate: {run:?}");
        assert!(run.dropped > 0, "{run:?}");
        let latest = run.drops_at.iter().max().copied().unwrap_or_default();
        assert!(latest <= ms(700), "the last drop at {latest:?}");
    }

    #[test]
    fn model_many_clients_within_capacity_are_never_refused() {
        // Shape a: 200 clients, 20 ms holds, 10 connections: waits about 0.4 s.
        let mut run = simulate(Load::Closed { clients: 200 }, |_| ms(20), ms(10_000));
        println!("shape a: {run:?}");
        assert_eq!((run.refused, run.dropped), (0, 0), "{run:?}");
        assert!(run.served > 4_800, "{}", run.served);
        assert!(run.wait_quantile(0.99) < ms(450));
    }

    #[test]
    fn model_a_burst_that_drains_is_served_whole() {
        // Shape e: 500 at once, 20 ms holds, on a pool that already knows its hold time: the
        // queue drains in a second.
        let run = simulate(Load::Burst { size: 500 }, |_| ms(20), ms(3_000));
        println!("shape e: {run:?}");
        assert_eq!(
            (run.served, run.refused, run.dropped),
            (500, 0, 0),
            "{run:?}"
        );
        // Twice that takes two seconds: its last quarter could only wait past one and a half
        // targets, and is turned away at once rather than after waiting.
        let run = simulate(Load::Burst { size: 1_000 }, |_| ms(20), ms(3_000));
        println!("a burst of twice shape e: {run:?}");
        assert!(run.served >= 700 && run.refused > 0, "{run:?}");
        assert_eq!(run.dropped, 0, "{run:?}");
    }

    #[test]
    fn model_standing_overload_keeps_admitted_waits_near_the_target() {
        // Shape b: 500 clients, 100 ms holds: 5 s of work queued without admission.
        let mut run = simulate(Load::Closed { clients: 500 }, |_| ms(100), ms(20_000));
        println!("shape b: {run:?}");
        assert!(
            run.served >= 1_900,
            "capacity is 2,000 in 20 s: {}",
            run.served
        );
        assert!(run.refused > 0);
        assert_eq!(
            run.dropped, 0,
            "the hold time known, nobody waits to be refused"
        );
        let p99 = run.wait_quantile(0.99);
        assert!(p99 <= ms(1_600), "p99 {p99:?}");
        assert!(run.wait_quantile(1.0) <= ms(1_700));
    }

    #[test]
    fn model_open_loop_overload_serves_capacity_and_the_queue_stays_bounded() {
        // Shape c: three times capacity (300 a second against 100).
        let mut run = simulate(
            Load::Open {
                every: Duration::from_micros(3_333),
            },
            |_| ms(100),
            ms(10_000),
        );
        println!("shape c: {run:?}");
        assert!(run.served >= 950, "{}", run.served);
        assert!(run.longest_queue < 400, "{}", run.longest_queue);
        assert!(run.wait_quantile(1.0) <= ms(1_700));
    }

    #[test]
    fn model_a_database_that_slows_down_and_recovers() {
        // Shape d: holds go from 5 ms to 200 ms for 10 s, then back.
        let slow = |now: Duration| {
            if now >= ms(5_000) && now < ms(15_000) {
                ms(200)
            } else {
                ms(5)
            }
        };
        let run = simulate(Load::Closed { clients: 500 }, slow, ms(20_000));
        println!("shape d: {run:?}");
        // 5 s at 2,000 a second, 10 s at 50, 5 s at 2,000: 20,500 at full capacity.
        assert!(run.served as f64 >= 0.85 * 20_500.0, "{}", run.served);
    }
}
