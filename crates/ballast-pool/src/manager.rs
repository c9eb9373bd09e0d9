//! The bb8 connection manager: opens connections through [`Connect`], gates connects after a
//! failure, checks only long-idle connections, and drops broken ones.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ballast_core::{Cause, Failure};

use crate::activity::{Activity, Tracking};
use crate::connect::Connect;
use crate::shared::Shared;

/// A pooled connection, what it is doing, and when it last went idle.
#[derive(Debug)]
pub(crate) struct Idle<C> {
    pub(crate) conn: C,
    idle_since: Instant,
    /// Fed by the connection's instrumentation: statements in flight.
    pub(crate) activity: Arc<Activity>,
    /// Set when the connection must be closed rather than reused (an abandoned statement that
    /// could not be stopped).
    pub(crate) discard: bool,
    /// The bound an earlier checkout's deadline set on its statements
    /// (`statement_timeout=deadline`), to keep for a checkout with about as much time left, or
    /// to put back for a checkout without one.
    pub(crate) bound: Option<Duration>,
    /// The URL's host it is on (PostgreSQL with several hosts): where a cancel request goes.
    pub(crate) host: Option<usize>,
}

/// bb8's view of the pool's connections.
pub(crate) struct Manager<C> {
    pub(crate) shared: Arc<Shared>,
    /// The connection the probe opened when the database answered again, for the pool's next
    /// connect. At most one, and only while bb8 has room for it: the probe runs only while the
    /// gate keeps bb8 from connecting. (bb8's `Pool::add` would hand it over directly, but the
    /// manager cannot reach the pool that owns it.)
    probed: Arc<Mutex<Option<crate::connect::Opened<C>>>>,
}

impl<C> Manager<C> {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Manager {
            shared,
            probed: Arc::new(Mutex::new(None)),
        }
    }
}

impl<C> fmt::Debug for Manager<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl<C: Connect> Manager<C> {
    /// A freshly opened connection, instrumented, as the pool keeps it.
    fn adopt(&self, (mut conn, host): crate::connect::Opened<C>) -> Idle<C> {
        self.shared
            .counters
            .connects
            .fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::default());
        conn.set_instrumentation(Tracking::new(
            Arc::clone(&activity),
            Arc::clone(&self.shared.counters.lost),
            Arc::clone(&self.shared.reads_only),
        ));
        if !self.shared.config.statement_cache() {
            conn.set_prepared_statement_cache_size(diesel::connection::CacheSize::Disabled);
        }
        Idle {
            conn,
            idle_since: Instant::now(),
            activity,
            discard: false,
            bound: None,
            host,
        }
    }

    /// Starts the background probe: after each pause it tries to connect, until the database
    /// answers (the connection is kept for the pool's next connect and the gate opens) or the
    /// pool is closed or gone.
    fn spawn_probe(&self) {
        let shared = Arc::downgrade(&self.shared);
        let probed = Arc::clone(&self.probed);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.shared.lock_gate().probe_running = false;
            return;
        };
        runtime.spawn(async move {
            loop {
                // Only a weak handle across the pause: a pool dropped without `close` ends the
                // probe too.
                let retry_at = match shared.upgrade() {
                    Some(shared) => shared.lock_gate().retry_at,
                    None => return,
                };
                if let Some(at) = retry_at {
                    tokio::time::sleep_until(at.into()).await;
                }
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                {
                    // Closed, or a connect of the pool's own got through meanwhile.
                    let mut gate = shared.lock_gate();
                    if shared.is_closed() || gate.failure.is_none() {
                        gate.probe_running = false;
                        return;
                    }
                }
                match shared.open::<C>().await {
                    Ok(conn) => {
                        *probed.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn);
                        shared.lock_gate().probe_running = false;
                        shared.connect_succeeded();
                        return;
                    }
                    Err(failure) => {
                        // The probe is this task: no second one is started.
                        shared.connect_failed(&failure);
                    }
                }
            }
        });
    }
}

impl<C: Connect> bb8::ManageConnection for Manager<C> {
    type Connection = Idle<C>;
    type Error = Failure;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        let shared = &*self.shared;
        if shared.is_closed() {
            return Err(Failure::new(Cause::PoolClosed));
        }
        let probed = self
            .probed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(conn) = probed {
            return Ok(self.adopt(conn));
        }
        let known = shared.lock_gate().failure.as_ref().map(Failure::detached);
        if let Some(failure) = known {
            shared
                .counters
                .connects_skipped
                .fetch_add(1, Ordering::Relaxed);
            // The checkout that asked for this connect is waiting for it: tell it.
            shared.failures.send_modify(|count| *count += 1);
            return Err(failure);
        }
        shared.connecting.fetch_add(1, Ordering::AcqRel);
        let opening = Instant::now();
        let opened = shared.open::<C>().await;
        if opened.is_ok() {
            shared.counters.create_time.record(opening.elapsed());
        }
        // Before the failure is announced, so a waiter that hears of it sees this attempt over.
        shared.connecting.fetch_sub(1, Ordering::AcqRel);
        match opened {
            Ok(mut conn) => {
                shared.read_budget(&mut conn.0).await;
                // Another attempt may have failed while this one was under way: this one says
                // the database answers.
                shared.connect_succeeded();
                Ok(self.adopt(conn))
            }
            Err(failure) => {
                if shared.connect_failed(&failure) {
                    self.spawn_probe();
                }
                Err(failure)
            }
        }
    }

    async fn is_valid(&self, idle: &mut Self::Connection) -> Result<(), Self::Error> {
        if self.shared.is_closed() {
            return Err(Failure::new(Cause::PoolClosed));
        }
        // A connection used moments ago is trusted: a round trip per checkout would double the
        // cost of every short request. If it died since, its query fails and it is dropped when
        // it comes back broken.
        if idle.idle_since.elapsed() < self.shared.config.check_idle_after() {
            return Ok(());
        }
        idle.conn.batch_execute("SELECT 1").await?;
        Ok(())
    }

    fn has_broken(&self, idle: &mut Self::Connection) -> bool {
        // Called when a connection comes back. diesel-async reports a closed connection and a
        // transaction left open (a request cancelled mid-transaction) as broken; an abandoned
        // statement that could not be stopped marks it for discarding (see `reclaim`). Checkouts
        // hand abandoned connections to `reclaim` first; one still busy here was dropped inside
        // bb8 (a checkout cancelled during its idle check) and is closed.
        let broken = idle.discard
            || idle.activity.in_flight()
            || idle.activity.lost()
            || idle.conn.is_broken();
        if broken {
            self.shared
                .counters
                .closed_broken
                .fetch_add(1, Ordering::Relaxed);
        }
        idle.idle_since = Instant::now();
        broken || self.shared.is_closed()
    }
}
