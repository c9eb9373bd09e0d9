//! What a pooled connection is doing, as diesel's instrumentation reports it: statements in
//! flight, whether one was sent for the current checkout, whether the connection was lost. The
//! manager installs [`Tracking`] on every connection it opens; the checkout, `reclaim` and the
//! manager read [`Activity`].

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use ballast_core::scope::RequestScope;
use diesel::connection::{Instrumentation, InstrumentationEvent};

/// What one pooled connection is doing, as its instrumentation reports it.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    /// Statements started and not yet finished.
    in_flight: AtomicU32,
    /// Whether a statement was started since the connection was last checked out.
    sent: AtomicBool,
    /// Whether a statement failed because the connection itself is gone (a backend terminated,
    /// a reset), or is on a server that only accepts reads (`25006`: an old primary back as a
    /// standby after a failover): the connection is closed when it comes back, even before the
    /// driver has noticed the socket closing, and whatever the handler did with the error; the
    /// next connect chooses its host again.
    lost: AtomicBool,
}

impl Activity {
    /// Whether a statement may still be running.
    pub(crate) fn in_flight(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// Whether a statement was started since the last [`checked_out`](Self::checked_out).
    pub(crate) fn sent(&self) -> bool {
        self.sent.load(Ordering::Acquire)
    }

    /// Whether a statement failed with the connection gone.
    pub(crate) fn lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// A new checkout begins: nothing sent for it yet.
    pub(crate) fn checked_out(&self) {
        self.sent.store(false, Ordering::Release);
    }

    /// The connection was made idle again: the statements it abandoned are over.
    pub(crate) fn idle(&self) {
        self.in_flight.store(0, Ordering::Release);
    }
}

/// The diesel instrumentation installed on every pooled connection: counts statements in flight
/// and passes every event on to the application's default instrumentation, if it set one.
pub(crate) struct Tracking {
    activity: Arc<Activity>,
    /// The pool's count of connections lost under a statement, raised the moment the statement
    /// fails (before its caller sees the error).
    lost: Arc<std::sync::atomic::AtomicU64>,
    /// Whether the pool is a read replica's: a refused write is then the handler's bug, and the
    /// connection stays.
    reads_only: Arc<AtomicBool>,
    next: Option<Box<dyn Instrumentation>>,
}

impl Tracking {
    pub(crate) fn new(
        activity: Arc<Activity>,
        lost: Arc<std::sync::atomic::AtomicU64>,
        reads_only: Arc<AtomicBool>,
    ) -> Self {
        Tracking {
            activity,
            lost,
            reads_only,
            next: diesel::connection::get_default_instrumentation(),
        }
    }
}

impl Instrumentation for Tracking {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        match &event {
            InstrumentationEvent::StartQuery { .. } => {
                self.activity.in_flight.fetch_add(1, Ordering::AcqRel);
                self.activity.sent.store(true, Ordering::Release);
                // Tell the request at once where the statement starts on its own task (every
                // backend but SQLite, whose statements run on a blocking thread); the checkout
                // tells it again when it ends.
                RequestScope::with_current(RequestScope::sent);
                // For read-your-writes: the request may have written.
                if !self.reads_only.load(Ordering::Relaxed) {
                    crate::replicas::scope::statement_on_primary();
                }
            }
            InstrumentationEvent::FinishQuery { error, .. } => {
                let cause = error.map(|error| ballast_core::classify_diesel(error).cause());
                let refused_write = cause == Some(ballast_core::Cause::ReadOnly)
                    && self.reads_only.load(Ordering::Acquire);
                if refused_write {
                    crate::replicas::scope::refused_write();
                } else if matches!(
                    cause,
                    Some(ballast_core::Cause::ConnectionLost | ballast_core::Cause::ReadOnly)
                ) && !self.activity.lost.swap(true, Ordering::AcqRel)
                {
                    self.lost.fetch_add(1, Ordering::AcqRel);
                }
                // Saturating: an event from before the last reclaim must not wrap the count.
                let _ = self.activity.in_flight.fetch_update(
                    Ordering::AcqRel,
                    Ordering::Acquire,
                    |count| Some(count.saturating_sub(1)),
                );
            }
            _ => {}
        }
        if let Some(next) = &mut self.next {
            next.on_connection_event(event);
        }
    }
}
