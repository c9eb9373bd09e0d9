//! What each connection is doing: its state for the timeouts and the cap, the watchdog that
//! enforces them, and the registry the cap picks idle connections from.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::LOG_EVERY;
use crate::ServeConfig;

/// How long a connection may go on sending a request's header once the drain has begun: a
/// client in the middle of an ordinary one is done within it; one that is not is a slow or
/// stalled client, closed rather than waited for.
pub(super) const DRAIN_HEADER_GRACE: Duration = Duration::from_secs(1);

/// How often a new connection held at the cap looks again for an idle connection to close, when
/// every connection was busy.
pub(super) const CAP_RETRY: Duration = Duration::from_millis(50);

/// What a connection is doing, for its timeouts and for the cap.
/// Between requests: closed after `idle_timeout`, or to admit a new connection at the cap.
pub(super) const IDLE: u8 = 0;
/// Reading a request's header: closed after `header_read_timeout`.
pub(super) const READING_HEAD: u8 = 1;
/// A request in progress: never closed by a timeout or for the cap.
pub(super) const BUSY: u8 = 2;
/// Accepted, nothing received yet: closed after `header_read_timeout`, or for the cap.
pub(super) const FRESH: u8 = 3;
/// Chosen to be closed for the cap.
pub(super) const CLOSING: u8 = 4;
/// Upgraded (a WebSocket): the application's now; closed only at the drain.
pub(super) const UPGRADED: u8 = 5;

/// [`Activity::upgrade`]: not upgraded.
pub(super) const NOT_UPGRADED: u8 = 0;
/// [`Activity::upgrade`]: answered `101` to an upgrade to another protocol than WebSocket.
pub(super) const UPGRADE_PENDING: u8 = 1;
/// [`Activity::upgrade`]: answered `101` to an upgrade to WebSocket.
pub(super) const WEBSOCKET: u8 = 2;

/// [`Activity::drain`]: an upgraded connection is to say goodbye (a WebSocket close frame).
pub(super) const GOODBYE: u8 = 1;
/// [`Activity::drain`]: an upgraded connection is cut: reads end, writes fail.
pub(super) const KILLED: u8 = 2;

/// One connection's activity: shared by its I/O (which sees the first byte of a request), its
/// service (which sees a request start and its response end), its watchdog and the cap.
pub(super) struct Activity {
    pub(super) opened: Instant,
    pub(super) state: AtomicU8,
    /// When the state last changed, in milliseconds since `opened`.
    pub(super) since: AtomicU64,
    pub(super) in_flight: AtomicUsize,
    /// Told when the connection is chosen to be closed for the cap.
    pub(super) close: Notify,
    /// HTTP/2: streams come and go on it; bytes between them (pings, window updates) are not
    /// a request's header.
    pub(super) multiplexed: AtomicBool,
    /// Whether (and to what) the connection was upgraded: [`NOT_UPGRADED`], [`UPGRADE_PENDING`],
    /// [`WEBSOCKET`].
    pub(super) upgrade: AtomicU8,
    /// What the drain asks of an upgraded connection: nothing, [`GOODBYE`], [`KILLED`].
    pub(super) drain: AtomicU8,
    /// The task using an upgraded connection's socket, woken when the drain asks something.
    waker: Mutex<Option<Waker>>,
    /// Told when the socket is dropped (an upgraded connection's end).
    pub(super) io_closed: Notify,
}

impl Activity {
    pub(super) fn new() -> Self {
        Activity {
            opened: Instant::now(),
            state: AtomicU8::new(FRESH),
            since: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            close: Notify::new(),
            multiplexed: AtomicBool::new(false),
            upgrade: AtomicU8::new(NOT_UPGRADED),
            drain: AtomicU8::new(0),
            waker: Mutex::new(None),
            io_closed: Notify::new(),
        }
    }

    /// Remembers the task using an upgraded connection's socket.
    pub(super) fn register(&self, cx: &Context<'_>) {
        let mut waker = self.waker.lock().unwrap_or_else(PoisonError::into_inner);
        if !waker
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            *waker = Some(cx.waker().clone());
        }
    }

    /// Asks an upgraded connection to say goodbye ([`GOODBYE`]) or to end ([`KILLED`]).
    pub(super) fn ask(&self, what: u8) {
        self.drain.fetch_max(what, Ordering::AcqRel);
        if let Some(waker) = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            waker.wake();
        }
    }

    pub(super) fn now(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn set(&self, state: u8) {
        self.since.store(self.now(), Ordering::Release);
        self.state.store(state, Ordering::Release);
    }

    /// Moves from `from` to `to` unless the state changed meanwhile (the cap chose it, or a
    /// request began).
    pub(super) fn change(&self, from: u8, to: u8) -> bool {
        let changed = self
            .state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if changed {
            self.since.store(self.now(), Ordering::Release);
        }
        changed
    }

    /// Bytes arrived: on an idle or new connection they start a request's header (on an
    /// HTTP/2 connection, only on a new one).
    pub(super) fn read(&self) {
        match self.state.load(Ordering::Acquire) {
            FRESH => {
                self.change(FRESH, READING_HEAD);
            }
            IDLE if !self.multiplexed.load(Ordering::Relaxed) => {
                self.change(IDLE, READING_HEAD);
            }
            _ => {}
        }
    }

    pub(super) fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.set(BUSY);
    }

    pub(super) fn response_done(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.set(IDLE);
        }
    }

    /// Resolves, with the name of the limit, when the connection has been idle or reading a
    /// header for longer than `config` allows.
    ///
    /// Nothing wakes it when the state changes (that would cost every request a task wake-up):
    /// it looks at least every half of the shorter limit, so a limit is enforced within one and a
    /// half times its length.
    pub(super) async fn expired(&self, config: &ServeConfig) -> &'static str {
        let tick = [config.idle_timeout, config.header_read_timeout]
            .into_iter()
            .filter(|limit| !limit.is_zero())
            .min()
            .map_or(Duration::from_secs(3600), |limit| limit / 2);
        loop {
            let since = Duration::from_millis(self.since.load(Ordering::Acquire));
            let (limit, name) = match self.state.load(Ordering::Acquire) {
                IDLE => (config.idle_timeout, "idle_timeout"),
                READING_HEAD => (config.header_read_timeout, "header_read_timeout"),
                // Nothing sent since accept: both limits run from it; the shorter one applies.
                FRESH
                    if config.header_read_timeout.is_zero()
                        || (!config.idle_timeout.is_zero()
                            && config.idle_timeout < config.header_read_timeout) =>
                {
                    (config.idle_timeout, "idle_timeout")
                }
                FRESH => (
                    config.header_read_timeout,
                    "header_read_timeout (nothing sent since accept)",
                ),
                _ => (Duration::ZERO, ""),
            };
            let now = Instant::now();
            let next_look = now + tick;
            if !limit.is_zero() {
                let deadline = self.opened + since + limit;
                if now >= deadline {
                    return name;
                }
                tokio::time::sleep_until(deadline.min(next_look).into()).await;
            } else {
                tokio::time::sleep_until(next_look.into()).await;
            }
        }
    }
}

/// The open connections' activities, for the cap to choose one to close.
#[derive(Default)]
pub(super) struct Registry {
    pub(super) open: Mutex<HashMap<u64, Arc<Activity>>>,
    pub(super) next: AtomicU64,
}

impl Registry {
    pub(super) fn insert(self: &Arc<Self>, activity: Arc<Activity>) -> Entry {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, activity);
        Entry {
            registry: Arc::clone(self),
            id,
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Chooses the connection idle longest — never sent a request, or between requests — tells
    /// it to close, and says which kind it was; `None` if every connection is busy.
    pub(super) fn close_longest_idle(&self) -> Option<u8> {
        let open = self.lock();
        let mut candidates: Vec<(Instant, u8, &Arc<Activity>)> = open
            .values()
            .filter_map(|activity| {
                let state = activity.state.load(Ordering::Acquire);
                matches!(state, IDLE | FRESH).then(|| {
                    let since = Duration::from_millis(activity.since.load(Ordering::Acquire));
                    (activity.opened + since, state, activity)
                })
            })
            .collect();
        candidates.sort_unstable_by_key(|(since, _, _)| *since);
        // A request may begin between the look and the choice: then the next one.
        candidates.into_iter().find_map(|(_, state, activity)| {
            activity.change(state, CLOSING).then(|| {
                activity.close.notify_one();
                state
            })
        })
    }
}

impl Registry {
    /// While draining: closes every connection that is not in a request — none sent yet, between
    /// requests, or reading a header for longer than `grace`.
    pub(super) fn close_waiting(&self, grace: Duration) {
        let open = self.lock();
        for activity in open.values() {
            let state = activity.state.load(Ordering::Acquire);
            let since = Duration::from_millis(activity.since.load(Ordering::Acquire));
            let waiting = match state {
                FRESH => true,
                // An HTTP/2 connection between streams was sent GOAWAY: it closes itself.
                IDLE => !activity.multiplexed.load(Ordering::Acquire),
                READING_HEAD => activity.opened.elapsed().saturating_sub(since) >= grace,
                _ => false,
            };
            if waiting && activity.change(state, CLOSING) {
                activity.close.notify_one();
            }
        }
    }
}

/// A connection's place in the [`Registry`], given up when its task ends.
pub(super) struct Entry {
    pub(super) registry: Arc<Registry>,
    pub(super) id: u64,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

/// What the cap did since it last said so: logged at most every [`LOG_EVERY`].
#[derive(Default)]
pub(super) struct CapLog {
    pub(super) said: Option<Instant>,
    pub(super) silent: u64,
    pub(super) idle: u64,
    pub(super) waited: u64,
}

impl CapLog {
    pub(super) fn note(&mut self, closed: Option<u8>, max_connections: usize) {
        match closed {
            Some(FRESH) => self.silent += 1,
            Some(_) => self.idle += 1,
            None => self.waited += 1,
        }
        if self.said.is_some_and(|at| at.elapsed() < LOG_EVERY) {
            return;
        }
        self.said = Some(Instant::now());
        if self.silent + self.idle > 0 {
            tracing::warn!(
                max_connections,
                never_sent_a_request = self.silent,
                idle_between_requests = self.idle,
                "connection cap reached: closed {} idle connections to admit new ones",
                self.silent + self.idle
            );
        }
        if self.waited > 0 {
            tracing::warn!(
                max_connections,
                "connection cap reached with every connection busy: new connections wait until one closes"
            );
        }
        (self.silent, self.idle, self.waited) = (0, 0, 0);
    }
}

impl fmt::Debug for Activity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Activity")
            .field("state", &self.state.load(Ordering::Relaxed))
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}
