//! The retry budget, without a lock: every request deposits, so its cost is on every request.
//!
//! The rule is tower's [`TpsBudget`](tower::retry::budget::TpsBudget)'s (Finagle's): within a
//! sliding window of `ttl`, split into ten slots, a retry may be withdrawn while
//! `min_per_sec × ttl` plus `percent` of the window's requests exceeds the retries already
//! withdrawn. tower's takes a mutex and reads the clock on every deposit (about 50 ns on this
//! project's machine); this one is two atomic operations on a clock reading the request already
//! made for its deadline.
//!
//! Each slot is one `AtomicU64` holding its window's number (high 32 bits) and its count (low
//! 32 bits), so a slot is claimed for a new window and counted into with one compare-and-swap,
//! and a slot left over from an older window is simply not summed: nothing has to be cleared
//! on time, and no deposit is lost to a clearing race.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Slots in a window, as in tower's budget.
const SLOTS: u64 = 10;

/// A lock-free retry budget shared by every clone of a layer.
#[derive(Debug)]
pub(crate) struct Budget {
    started: Instant,
    slot_nanos: u64,
    /// Deposits per slot, tagged with the slot's window number.
    deposits: [AtomicU64; SLOTS as usize],
    /// Withdrawals per slot, tagged likewise.
    withdrawals: [AtomicU64; SLOTS as usize],
    /// What a window always allows (`min_per_sec × ttl`), in withdrawal units.
    reserve: u64,
    deposit_amount: u32,
    withdraw_amount: u32,
}

impl Budget {
    /// A budget whose deposits expire after `ttl` (1 to 60 s); `min_per_sec` retries a second
    /// are always allowed, and on top `percent` (0 to 1000) of requests. The caller checks the
    /// ranges ([`Settings::check`](crate::policy::Settings::check)).
    pub(crate) fn new(ttl: Duration, min_per_sec: u32, percent: f32) -> Self {
        // tower's integer amounts: a deposit is worth `percent` of a withdrawal.
        let (deposit_amount, withdraw_amount) = if percent == 0.0 {
            (0, 1)
        } else if percent <= 1.0 {
            (1, (1.0 / percent) as u32)
        } else {
            (1000, (1000.0 / percent) as u32)
        };
        let window_nanos = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
        Budget {
            started: Instant::now(),
            slot_nanos: (window_nanos / SLOTS).max(1),
            deposits: Default::default(),
            withdrawals: Default::default(),
            reserve: u64::from(min_per_sec)
                .saturating_mul(ttl.as_secs())
                .saturating_mul(u64::from(withdraw_amount.max(1))),
            deposit_amount,
            withdraw_amount: withdraw_amount.max(1),
        }
    }

    /// The number of the slot-long window `now` falls in (wraps after about 13 years of 0.1 s
    /// slots; comparisons are wrapping).
    fn window(&self, now: Instant) -> u32 {
        let nanos = u64::try_from(now.saturating_duration_since(self.started).as_nanos())
            .unwrap_or(u64::MAX);
        (nanos / self.slot_nanos) as u32
    }

    /// Counts one request made at `now`.
    pub(crate) fn deposit(&self, now: Instant) {
        if self.deposit_amount > 0 {
            let window = self.window(now);
            add(&self.deposits[slot(window)], window, self.deposit_amount);
        }
    }

    /// Takes one retry made at `now`, if the window allows it. Under contention two
    /// withdrawals may both see the last unit: the budget may be overdrawn by the racing
    /// retries, never by more.
    pub(crate) fn withdraw(&self, now: Instant) -> bool {
        let window = self.window(now);
        let sum = |slots: &[AtomicU64; SLOTS as usize]| -> u64 {
            slots
                .iter()
                .map(|slot| live_count(slot.load(Ordering::Acquire), window))
                .sum()
        };
        let available = self.reserve.saturating_add(sum(&self.deposits));
        let spent = sum(&self.withdrawals);
        if available.saturating_sub(spent) < u64::from(self.withdraw_amount) {
            return false;
        }
        add(
            &self.withdrawals[slot(window)],
            window,
            self.withdraw_amount,
        );
        true
    }
}

fn slot(window: u32) -> usize {
    (u64::from(window) % SLOTS) as usize
}

/// Adds `amount` to the slot for `window`, claiming it from an older window if need be.
fn add(slot: &AtomicU64, window: u32, amount: u32) {
    let mut current = slot.load(Ordering::Relaxed);
    loop {
        let (tag, count) = ((current >> 32) as u32, current as u32);
        let next = if tag == window {
            (u64::from(window) << 32) | u64::from(count.saturating_add(amount))
        } else if window.wrapping_sub(tag) < u32::MAX / 2 {
            // The slot still holds an older window's count: this window starts it afresh.
            (u64::from(window) << 32) | u64::from(amount)
        } else {
            // A newer window already took the slot (this caller read the clock earlier and was
            // overtaken): count it there rather than lose it.
            (current & !u64::from(u32::MAX)) | u64::from(count.saturating_add(amount))
        };
        match slot.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return,
            Err(actual) => current = actual,
        }
    }
}

/// The slot's count if it belongs to one of the ten windows ending with `window`.
fn live_count(slot: u64, window: u32) -> u64 {
    let (tag, count) = ((slot >> 32) as u32, slot & u64::from(u32::MAX));
    if window.wrapping_sub(tag) < SLOTS as u32 {
        count
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_and_the_percentage_bound_withdrawals() {
        // 1 s window, 2 a second always, 10 % of requests on top.
        let budget = Budget::new(Duration::from_secs(1), 2, 0.1);
        let now = budget.started;
        let withdrawals = |budget: &Budget| (0..1000).take_while(|_| budget.withdraw(now)).count();
        assert_eq!(withdrawals(&budget), 2, "the reserve alone");
        for _ in 0..100 {
            budget.deposit(now);
        }
        assert_eq!(withdrawals(&budget), 10, "10 % of 100 requests");
    }

    #[test]
    fn deposits_expire_with_their_window() {
        let budget = Budget::new(Duration::from_secs(1), 0, 1.0);
        let start = budget.started;
        for _ in 0..5 {
            budget.deposit(start);
        }
        let later = start + Duration::from_millis(900);
        assert!(budget.withdraw(later), "still inside the window");
        let expired = start + Duration::from_millis(1500);
        assert!(!budget.withdraw(expired), "the deposits have expired");
        // The withdrawal at 900 ms is still inside the window: it takes the first new deposit.
        budget.deposit(expired);
        budget.deposit(expired);
        assert!(budget.withdraw(expired), "fresh deposits count");
        assert!(!budget.withdraw(expired));
    }

    #[test]
    fn a_deposit_overtaken_by_a_newer_window_is_not_lost() {
        let budget = Budget::new(Duration::from_secs(1), 0, 1.0);
        let start = budget.started;
        // Window 10 claims slot 0; a deposit that read the clock in window 0 comes after.
        let newer = start + Duration::from_millis(1000);
        budget.deposit(newer);
        budget.deposit(start);
        assert!(budget.withdraw(newer));
        assert!(budget.withdraw(newer));
        assert!(!budget.withdraw(newer));
    }

    #[test]
    fn concurrent_deposits_are_all_counted() {
        let budget = std::sync::Arc::new(Budget::new(Duration::from_secs(60), 0, 1.0));
        let now = budget.started;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let budget = std::sync::Arc::clone(&budget);
                std::thread::spawn(move || (0..10_000).for_each(|_| budget.deposit(now)))
            })
            .collect();
        threads
            .into_iter()
            .for_each(|thread| thread.join().unwrap());
        let withdrawn = (0..50_000).take_while(|_| budget.withdraw(now)).count();
        assert_eq!(withdrawn, 40_000);
    }
}
