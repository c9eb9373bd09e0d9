//! What each connection is doing: its state for the timeouts and the cap, the watchdog that
//! enforces them, and the registry the cap picks connections to close from.

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

/// How long a response may wait on its client before it counts as stalled: an HTTP/2 stream
/// whose flow-control window stays shut, or a socket that takes no bytes. A connection whose
/// every request is stalled can be closed for the cap; at the drain, or while its connection
/// holds more unsent bytes than allowed, a stalled HTTP/2 stream is reset. A client that reads
/// at all opens its window again within a round trip; one that has not for a second is not
/// reading.
pub(super) const STALL_GRACE: Duration = Duration::from_secs(1);

/// What a connection is doing, for its timeouts and for the cap.
/// Between requests: closed after `idle_timeout`, or to admit a new connection at the cap.
pub(super) const IDLE: u8 = 0;
/// Reading a request's header: closed after `header_read_timeout`.
pub(super) const READING_HEAD: u8 = 1;
/// A request in progress: closed only when its response waits on the client (`send_timeout`,
/// or for the cap once stalled).
pub(super) const BUSY: u8 = 2;
/// Accepted, nothing received yet: closed after `header_read_timeout`, or for the cap.
pub(super) const FRESH: u8 = 3;
/// Chosen to be closed for the cap.
pub(super) const CLOSING: u8 = 4;
/// Upgraded (a WebSocket): the application's now; closed only at the drain.
pub(super) const UPGRADED: u8 = 5;
/// What [`Registry::close_for_cap`] reports for a connection closed because every request of
/// it waited on its client.
pub(super) const STALLED: u8 = 6;

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
    /// Since when the socket's pending write has waited for the client to take bytes, in
    /// milliseconds since `opened` plus one; 0 while no write waits.
    write_waiting: AtomicU64,
    /// The drain has begun (the connection was told to finish).
    pub(super) draining: AtomicBool,
    /// HTTP/2: its streams' response bytes not yet handed to the connection
    /// (`serve::stream`), counted against `max_unsent`.
    pub(super) unsent: AtomicUsize,
    /// [`ServeConfig::send_timeout`].
    pub(super) send_timeout: Duration,
    /// HTTP/2: the most unsent bytes before a new stream's handler waits
    /// ([`ServeConfig::http2_max_unsent_bytes`]).
    pub(super) max_unsent: usize,
    /// HTTP/2: streams whose handler waits for the unsent bytes to fall.
    pub(super) starting: AtomicUsize,
    /// HTTP/2: told when the unsent bytes fall while streams wait to start.
    pub(super) room: Arc<Notify>,
    /// HTTP/2: streams stalled on the client's window for [`STALL_GRACE`].
    pub(super) stalled: AtomicUsize,
    /// When a stream last became stalled, in milliseconds since `opened`.
    pub(super) stalled_since: AtomicU64,
    /// HTTP/2: told when stalled streams should look again (the drain began, or the unsent
    /// bytes went past the bound).
    pub(super) wake_stalled: Arc<Notify>,
}

impl Activity {
    pub(super) fn new(config: &ServeConfig) -> Self {
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
            write_waiting: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            unsent: AtomicUsize::new(0),
            send_timeout: config.send_timeout,
            max_unsent: config.max_unsent(),
            starting: AtomicUsize::new(0),
            room: Arc::new(Notify::new()),
            stalled: AtomicUsize::new(0),
            stalled_since: AtomicU64::new(0),
            wake_stalled: Arc::new(Notify::new()),
        }
    }

    /// A write to the socket returned: `pending` when the client's socket took nothing (its
    /// receive buffer full), else it took bytes.
    pub(super) fn wrote(&self, pending: bool) {
        if pending {
            if self.write_waiting.load(Ordering::Relaxed) == 0 {
                self.write_waiting.store(self.now() + 1, Ordering::Release);
            }
        } else if self.write_waiting.load(Ordering::Relaxed) != 0 {
            self.write_waiting.store(0, Ordering::Release);
        }
    }

    /// Since when a write has waited for the client, if one does.
    pub(super) fn write_waiting_since(&self) -> Option<Instant> {
        match self.write_waiting.load(Ordering::Acquire) {
            0 => None,
            at => Some(self.opened + Duration::from_millis(at - 1)),
        }
    }

    /// Since when every request of this connection has waited on its client, once that has
    /// lasted [`STALL_GRACE`]: its socket takes no bytes, or each HTTP/2 stream is stalled on
    /// the client's window (or waits to start behind the stalled ones' bytes).
    pub(super) fn stalled_since(&self) -> Option<Instant> {
        if let Some(since) = self.write_waiting_since() {
            return (since.elapsed() >= STALL_GRACE).then_some(since);
        }
        let stalled = self.stalled.load(Ordering::Acquire);
        let starting = self.starting.load(Ordering::Acquire);
        (stalled > 0 && stalled + starting >= self.in_flight.load(Ordering::Acquire)).then(|| {
            self.opened + Duration::from_millis(self.stalled_since.load(Ordering::Acquire))
        })
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

    /// Resolves, with the name of the limit, when the connection has been idle, reading a
    /// header, or waiting for the client to take a response's bytes for longer than `config`
    /// allows.
    ///
    /// Nothing wakes it when the state changes (that would cost every request a task wake-up):
    /// it looks at least every half of the shorter limit, so a limit is enforced within one and a
    /// half times its length.
    pub(super) async fn expired(&self, config: &ServeConfig) -> &'static str {
        let tick = [
            config.idle_timeout,
            config.header_read_timeout,
            config.send_timeout,
        ]
        .into_iter()
        .filter(|limit| !limit.is_zero())
        .min()
        .map_or(Duration::from_secs(3600), |limit| limit / 2);
        loop {
            let since = self.opened + Duration::from_millis(self.since.load(Ordering::Acquire));
            let (since, limit, name) = match (
                self.state.load(Ordering::Acquire),
                self.write_waiting_since(),
            ) {
                // A response's bytes wait on the client, whether its body is still being
                // produced or only its tail is left to write.
                (IDLE | BUSY, Some(write)) => (write, config.send_timeout, "send_timeout"),
                (IDLE, None) => (since, config.idle_timeout, "idle_timeout"),
                (READING_HEAD, _) => (since, config.header_read_timeout, "header_read_timeout"),
                // Nothing sent since accept: both limits run from it; the shorter one applies.
                (FRESH, _)
                    if config.header_read_timeout.is_zero()
                        || (!config.idle_timeout.is_zero()
                            && config.idle_timeout < config.header_read_timeout) =>
                {
                    (since, config.idle_timeout, "idle_timeout")
                }
                (FRESH, _) => (
                    since,
                    config.header_read_timeout,
                    "header_read_timeout (nothing sent since accept)",
                ),
                _ => (since, Duration::ZERO, ""),
            };
            let now = Instant::now();
            let next_look = now + tick;
            if !limit.is_zero() {
                let deadline = since + limit;
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

    /// Chooses a connection to close for the cap, tells it to close, and says which kind it
    /// was; `None` if every connection is busy and making progress.
    ///
    /// Least progress first: a connection that has done no work for longest — never sent a
    /// request, still in its first header, or between requests — then one whose every request
    /// has waited on its client for longest ([`Activity::stalled_since`]). A request the client
    /// is taking its response from is never cut for it.
    pub(super) fn close_for_cap(&self) -> Option<u8> {
        let open = self.lock();
        let mut candidates: Vec<(bool, Instant, u8, &Arc<Activity>)> = open
            .values()
            .filter_map(|activity| {
                let state = activity.state.load(Ordering::Acquire);
                let since =
                    activity.opened + Duration::from_millis(activity.since.load(Ordering::Acquire));
                let writing = activity.write_waiting_since().is_some();
                match state {
                    FRESH | READING_HEAD => Some((false, since, state, activity)),
                    IDLE if !writing => Some((false, since, state, activity)),
                    IDLE | BUSY => activity
                        .stalled_since()
                        .map(|stalled| (true, stalled, state, activity)),
                    _ => None,
                }
            })
            .collect();
        candidates.sort_unstable_by_key(|(stalled, since, _, _)| (*stalled, *since));
        // A request may begin (or a stalled one move) between the look and the choice: then the
        // next one.
        candidates
            .into_iter()
            .find_map(|(stalled, _, state, activity)| {
                activity.change(state, CLOSING).then(|| {
                    activity.close.notify_one();
                    if stalled {
                        STALLED
                    } else {
                        state
                    }
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
                // An HTTP/2 connection between streams was sent GOAWAY: it closes itself; one
                // whose last response is still being written finishes it.
                IDLE => {
                    !activity.multiplexed.load(Ordering::Acquire)
                        && activity.write_waiting_since().is_none()
                }
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
    pub(super) reading: u64,
    pub(super) idle: u64,
    pub(super) stalled: u64,
    pub(super) waited: u64,
}

impl CapLog {
    pub(super) fn note(&mut self, closed: Option<u8>, max_connections: usize) {
        match closed {
            Some(FRESH) => self.silent += 1,
            Some(READING_HEAD) => self.reading += 1,
            Some(STALLED) => self.stalled += 1,
            Some(_) => self.idle += 1,
            None => self.waited += 1,
        }
        if self.said.is_some_and(|at| at.elapsed() < LOG_EVERY) {
            return;
        }
        self.said = Some(Instant::now());
        let closed = self.silent + self.reading + self.idle + self.stalled;
        if closed > 0 {
            tracing::warn!(
                max_connections,
                never_sent_a_request = self.silent,
                in_their_first_header = self.reading,
                idle_between_requests = self.idle,
                stalled_on_the_client = self.stalled,
                "connection cap reached: closed {closed} connections making no progress to admit new ones"
            );
        }
        if self.waited > 0 {
            tracing::warn!(
                max_connections,
                "connection cap reached with every connection busy: new connections wait until one closes"
            );
        }
        *self = CapLog {
            said: self.said,
            ..CapLog::default()
        };
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
