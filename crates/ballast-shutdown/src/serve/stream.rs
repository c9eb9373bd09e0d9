//! An HTTP/2 stream's response as the server watches it: its body's bytes counted against its
//! connection's unsent-bytes bound and handed on in pieces, a handler that waits to start while
//! the connection holds too many, and the task that runs the stream, which resets it once it
//! has waited on the client's flow-control window too long.
//!
//! hyper runs each stream as a task of its own, spawned through the connection's executor right
//! after it calls the service for the stream. The service leaves the stream's [`Stream`] in a
//! thread-local slot and [`StreamExecutor`] picks it up: hyper's server makes the call and the
//! spawn one after the other on the connection's task with nothing between them. Dropping a
//! stream's task drops hyper's handle on the stream, and h2 resets a stream no handle is left
//! on (`RST_STREAM` with `CANCEL`), discarding what it had queued for it.

#![cfg_attr(not(feature = "http2"), allow(dead_code))]

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::futures::OwnedNotified;
use tokio::time::Sleep;

use super::connection::{Activity, STALL_GRACE};

/// How much of a body is handed to the connection at a time: one DATA frame at HTTP/2's
/// default `SETTINGS_MAX_FRAME_SIZE`. hyper hands each chunk of a body whole to h2, which keeps
/// it until the client's window lets it out; in pieces this size, what waits there is small and
/// the rest stays counted here.
pub(super) const PIECE: usize = 16 * 1024;

thread_local! {
    /// The stream the service was just called for, for the task hyper spawns next.
    static NEXT: Cell<Option<Arc<Stream>>> = const { Cell::new(None) };
}

/// One HTTP/2 stream's response, shared by the service's future and body (which move it along)
/// and the stream's task (which resets it when it stops moving).
pub(super) struct Stream {
    pub(super) activity: Arc<Activity>,
    /// The bytes this stream counts in its connection's unsent bytes: what its body has not
    /// handed on. Only the body changes it (and the drop of the last handle).
    counted: AtomicUsize,
    /// Bumped each time the body is asked for a frame.
    polls: AtomicU32,
    /// The body's last piece went to the connection and the next has not been asked for: the
    /// response waits on the client, not on the application.
    waiting: AtomicBool,
}

impl Stream {
    /// A new stream on `activity`'s connection, left for the task hyper spawns next.
    pub(super) fn announce(activity: &Arc<Activity>) -> Arc<Stream> {
        let stream = Arc::new(Stream {
            activity: Arc::clone(activity),
            counted: AtomicUsize::new(0),
            polls: AtomicU32::new(0),
            waiting: AtomicBool::new(false),
        });
        NEXT.with(|next| next.set(Some(Arc::clone(&stream))));
        stream
    }

    /// Whether the handler may start: its connection's unsent bytes are within the bound. A
    /// handler's response is counted once it answers ([`answered`](Self::answered)); nothing is
    /// reserved for it before, so a connection's handlers run side by side as long as it takes
    /// its responses. `false`: the handler waits ([`Room`]).
    pub(super) fn may_start(&self) -> bool {
        let activity = &self.activity;
        activity.unsent.load(Ordering::Acquire) <= activity.max_unsent
    }

    /// The handler answered with a body of `size` bytes (what its size hint is sure of): they
    /// count in the connection's unsent bytes, and the response waits for the connection to ask
    /// for its body.
    pub(super) fn answered(&self, size: usize) {
        let activity = &self.activity;
        if size > 0 {
            self.counted.store(size, Ordering::Relaxed);
            let before = activity.unsent.fetch_add(size, Ordering::AcqRel);
            if before <= activity.max_unsent && before.saturating_add(size) > activity.max_unsent {
                // Past the bound: streams already stalled are reset without waiting longer.
                activity.wake_stalled.notify_waiters();
            }
        }
        self.waiting.store(true, Ordering::Release);
    }

    /// The body is being asked for a frame.
    pub(super) fn asked(&self) {
        self.polls.fetch_add(1, Ordering::Relaxed);
        self.waiting.store(false, Ordering::Release);
    }

    /// The body handed `len` bytes to the connection: they leave the unsent count, and the
    /// response waits for the connection to ask again.
    pub(super) fn handed(&self, len: usize) {
        let counted = self.counted.load(Ordering::Relaxed);
        let len = len.min(counted);
        if len > 0 {
            self.counted.store(counted - len, Ordering::Relaxed);
            self.uncount(len);
        }
        self.waiting.store(true, Ordering::Release);
    }

    fn uncount(&self, bytes: usize) {
        let activity = &self.activity;
        activity.unsent.fetch_sub(bytes, Ordering::AcqRel);
        if activity.starting.load(Ordering::Acquire) > 0 {
            activity.room.notify_waiters();
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let counted = *self.counted.get_mut();
        if counted > 0 {
            self.uncount(counted);
        }
    }
}

/// Cuts `data` to one [`PIECE`], leaving the rest in `rest`.
pub(super) fn piece(mut data: Bytes, rest: &mut Bytes) -> Bytes {
    if data.len() > PIECE {
        *rest = data.split_off(PIECE);
    }
    data
}

/// A handler waiting for its connection's unsent bytes to fall below the bound.
pub(super) struct Room {
    stream: Arc<Stream>,
    notified: Option<Pin<Box<OwnedNotified>>>,
}

impl Room {
    pub(super) fn new(stream: Arc<Stream>) -> Self {
        stream.activity.starting.fetch_add(1, Ordering::AcqRel);
        Room {
            stream,
            notified: None,
        }
    }

    /// Ready once the handler may start.
    pub(super) fn poll_start(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            // Listening before the look: a fall between the look and the wait wakes it.
            let room = Arc::clone(&self.stream.activity.room);
            let notified = self
                .notified
                .get_or_insert_with(|| Box::pin(room.notified_owned()));
            if self.stream.may_start() {
                self.notified = None;
                return Poll::Ready(());
            }
            std::task::ready!(notified.as_mut().poll(cx));
            self.notified = None;
        }
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        self.stream.activity.starting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs hyper's HTTP/2 stream tasks, each watched by the [`Stream`] its service call left.
#[cfg(feature = "http2")]
#[derive(Debug, Clone, Copy)]
pub(super) struct StreamExecutor;

#[cfg(feature = "http2")]
impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, task: F) {
        let watch = NEXT.with(Cell::take).map(Watch::new);
        tokio::spawn(Watched {
            task: Some(task),
            watch,
        });
    }
}

pin_project_lite::pin_project! {
    /// A stream's task, dropped (the stream reset) once its response has stalled too long.
    struct Watched<F> {
        #[pin]
        task: Option<F>,
        watch: Option<Watch>,
    }
}

impl<F: Future> Future for Watched<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let Some(task) = this.task.as_mut().as_pin_mut() else {
            return Poll::Ready(());
        };
        if task.poll(cx).is_ready() {
            this.task.set(None);
            return Poll::Ready(());
        }
        if let Some(watch) = this.watch {
            if let Poll::Ready(waited) = watch.poll_stalled(cx) {
                tracing::debug!(
                    waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                    "resetting an HTTP/2 stream whose client has taken none of its response"
                );
                this.task.set(None);
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

/// What a stream's task knows of its response's wait on the client.
struct Watch {
    stream: Arc<Stream>,
    /// The body's poll count when the current wait began.
    seen: u32,
    /// When the current wait on the client began.
    since: Option<Instant>,
    /// Counted in the connection's stalled streams.
    stalled: bool,
    timer: Option<Pin<Box<Sleep>>>,
    armed: Option<Instant>,
    /// While stalled: told when the drain begins or the unsent bytes pass the bound.
    wake: Option<Pin<Box<OwnedNotified>>>,
}

impl Watch {
    fn new(stream: Arc<Stream>) -> Self {
        Watch {
            stream,
            seen: 0,
            since: None,
            stalled: false,
            timer: None,
            armed: None,
            wake: None,
        }
    }

    /// Ready, with how long it waited, when the stream is to be reset: its response has waited
    /// on the client for the send timeout, or — stalled on the client's window — for
    /// [`STALL_GRACE`] while the drain is on or the connection is over its unsent bytes.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<Duration> {
        if !self.stream.waiting.load(Ordering::Acquire) {
            // The application's turn (a handler running, a body producing its next part).
            self.moving();
            return Poll::Pending;
        }
        let polls = self.stream.polls.load(Ordering::Acquire);
        let mut now = Instant::now();
        if self.since.is_none() || polls != self.seen {
            self.moving();
            self.seen = polls;
            self.since = Some(now);
        }
        let since = self.since.unwrap_or(now);
        let activity = Arc::clone(&self.stream.activity);
        loop {
            let waited = now.saturating_duration_since(since);
            // A socket that takes nothing is the send timeout's alone: the window is not what
            // holds the response.
            if !self.stalled && waited >= STALL_GRACE && activity.write_waiting_since().is_none() {
                self.mark(since);
            }
            if self.stalled && self.wake.is_none() {
                let wake = Arc::clone(&activity.wake_stalled);
                self.wake = Some(Box::pin(wake.notified_owned()));
            }
            let pressed = self.stalled
                && (activity.draining.load(Ordering::Acquire)
                    || activity.unsent.load(Ordering::Acquire) > activity.max_unsent);
            let limit = if pressed {
                STALL_GRACE
            } else {
                activity.send_timeout
            };
            if !limit.is_zero() && waited >= limit {
                return Poll::Ready(waited);
            }
            let mut next = if self.stalled || waited < STALL_GRACE {
                since + STALL_GRACE
            } else {
                now + STALL_GRACE
            };
            if !limit.is_zero() {
                next = if self.stalled {
                    since + limit
                } else {
                    next.min(since + limit)
                };
            }
            if !(self.stalled && limit.is_zero()) {
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(next.into())));
                if self.armed != Some(next) {
                    timer.as_mut().reset(next.into());
                    self.armed = Some(next);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    now = Instant::now();
                    continue;
                }
            }
            if let Some(wake) = &mut self.wake {
                if wake.as_mut().poll(cx).is_ready() {
                    self.wake = None;
                    now = Instant::now();
                    continue;
                }
            }
            return Poll::Pending;
        }
    }

    /// The response is moving (or waits on the application): no wait on the client.
    fn moving(&mut self) {
        self.since = None;
        if self.stalled {
            self.stalled = false;
            self.wake = None;
            self.stream.activity.stalled.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn mark(&mut self, since: Instant) {
        let activity = &self.stream.activity;
        self.stalled = true;
        let at = since.saturating_duration_since(activity.opened);
        activity.stalled_since.store(
            u64::try_from(at.as_millis()).unwrap_or(u64::MAX),
            Ordering::Release,
        );
        activity.stalled.fetch_add(1, Ordering::AcqRel);
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.moving();
    }
}
