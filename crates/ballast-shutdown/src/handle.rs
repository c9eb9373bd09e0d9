//! [`ShutdownHandle`]: the shutdown state layers, handlers and tasks share — the phase, the
//! requests in flight, the background jobs.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ballast_core::scope::DrainSignal;
use serde::Serialize;
use tokio::sync::{watch, Notify};

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Phase {
    /// Serving and ready.
    Running,
    /// Shutdown started: not ready (readiness probes fail) but still serving, for the
    /// pre-drain delay while load balancers notice.
    NotReady,
    /// Draining: new requests are refused with 503, in-flight ones finish.
    Draining,
    /// Drained (or the deadline passed): teardown hooks run; nothing is served.
    Stopped,
}

/// A cheap handle to the shutdown state, for layers, handlers and background tasks.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    pub(crate) shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) phase: watch::Sender<Phase>,
    /// Whether the drain has begun, for the jobs' [`DrainSignal`].
    pub(crate) draining: watch::Sender<bool>,
    /// The phase again, for the per-request check: a load, where the watch takes a lock that
    /// every request on every core would share.
    pub(crate) phase_now: AtomicU8,
    pub(crate) in_flight: AtomicUsize,
    /// Notified whenever the in-flight count drops to zero.
    pub(crate) idle: Notify,
    pub(crate) rejected: AtomicU64,
    pub(crate) started: Mutex<Option<Instant>>,
    /// Set by [`ShutdownHandle::interrupt`].
    pub(crate) interrupted: watch::Sender<bool>,
    pub(crate) pre_drain_delay: Duration,
    pub(crate) drain_deadline: Duration,
    /// Background jobs started with [`ShutdownHandle::spawn`], by name.
    pub(crate) tasks: Mutex<Vec<(String, tokio::task::JoinHandle<()>)>>,
}

/// A snapshot for `/stats` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ShutdownStats {
    /// The current phase.
    pub phase: Phase,
    /// Requests in flight now (until their response body is finished).
    pub in_flight: usize,
    /// Requests refused while draining.
    pub rejected: u64,
}

impl Shared {
    pub(crate) fn current_phase(&self) -> Phase {
        match self.phase_now.load(Ordering::Acquire) {
            0 => Phase::Running,
            1 => Phase::NotReady,
            2 => Phase::Draining,
            _ => Phase::Stopped,
        }
    }

    /// Moves the phase forward to `next`, never back; whether it moved.
    pub(crate) fn advance(&self, next: Phase) -> bool {
        let advanced = self.phase.send_if_modified(|current| {
            if *current < next {
                *current = next;
                self.phase_now.store(next as u8, Ordering::Release);
                true
            } else {
                false
            }
        });
        if advanced && next >= Phase::Draining {
            self.draining.send_replace(true);
        }
        advanced
    }
}

impl ShutdownHandle {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.shared.current_phase()
    }

    /// Whether the service should look ready: only while [`Phase::Running`].
    pub fn is_ready(&self) -> bool {
        self.phase() == Phase::Running
    }

    /// Starts the shutdown sequence (as a signal does). Later calls do nothing.
    pub fn trigger(&self) {
        {
            // The start time and the log line come first, so the sequence (which starts the
            // moment the phase changes) never runs ahead of them.
            let mut started = self
                .shared
                .started
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if started.is_some() {
                return;
            }
            *started = Some(Instant::now());
        }
        tracing::info!("shutdown started: readiness is failing");
        self.shared.advance(Phase::NotReady);
    }

    /// Cuts the shutdown sequence short, as a second signal does: [`Shutdown::run`](crate::Shutdown::run) stops
    /// draining or running hooks and returns at once, with exit code 130. Starts the sequence
    /// first if it had not started.
    pub fn interrupt(&self) {
        self.trigger();
        self.shared.interrupted.send_replace(true);
    }

    /// Resolves when [`interrupt`](Self::interrupt) is called.
    pub(crate) async fn interrupted(&self) {
        let mut watch = self.shared.interrupted.subscribe();
        // The sender lives as long as `self`.
        let _ = watch.wait_for(|interrupted| *interrupted).await;
    }

    /// When the sequence was triggered.
    pub(crate) fn started(&self) -> Option<Instant> {
        *self
            .shared
            .started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a request in flight until the returned guard is dropped.
    pub(crate) fn request_started(&self) -> InFlight {
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(&self.shared))
    }

    /// Counts a request refused while draining.
    pub(crate) fn count_rejected(&self) {
        self.shared.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs a background job (a scheduler, a queue consumer) as part of the service's life: the
    /// drain waits for it, within the same deadline as the requests, before the hooks run, so a
    /// "close pool" hook never runs while a job still holds a connection. A job that is still
    /// running at the deadline is cancelled (its future dropped: a connection it held goes back
    /// to the pool, its statement cancelled) and counted in [`Summary::tasks_cancelled`](crate::Summary::tasks_cancelled).
    ///
    /// A job sees the shutdown through [`draining`](Self::draining) (or
    /// [`reached`](Self::reached)) and ends on its own:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use ballast_shutdown::Shutdown;
    ///
    /// let shutdown = Shutdown::builder().build();
    /// let handle = shutdown.handle();
    /// let stop = handle.draining();
    /// handle.spawn("backup", async move {
    ///     let mut every = tokio::time::interval(Duration::from_secs(3600));
    ///     tokio::pin!(stop);
    ///     loop {
    ///         tokio::select! {
    ///             _ = &mut stop => break, // finish the current tick first, then stop
    ///             _ = every.tick() => { /* back up */ }
    ///         }
    ///     }
    /// });
    /// handle.trigger();
    /// let summary = shutdown.run(std::future::ready(())).await;
    /// assert_eq!(summary.tasks_cancelled, 0);
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, like `tokio::spawn`.
    pub fn spawn<F>(&self, name: impl Into<String>, job: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let name = name.into();
        // Inside the drain signal: its retries (`ballast_retry::Retrying`) stop at the drain.
        let task = tokio::spawn(self.drain_signal().run(job));
        let mut tasks = self
            .shared
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tasks.retain(|(_, task)| !task.is_finished());
        tasks.push((name, task));
    }

    /// The signal that says this service has begun to drain, for work outside
    /// [`spawn`](Self::spawn) that should stop then: `handle.drain_signal().run(job)` makes
    /// [`Retrying`](https://docs.rs/ballast-retry) inside `job` give up at the drain, as it does
    /// in a spawned job.
    pub fn drain_signal(&self) -> DrainSignal {
        DrainSignal::new(self.shared.draining.subscribe())
    }

    /// Waits for the background jobs to end; returns how many had to be cancelled at
    /// `deadline`.
    pub(crate) async fn tasks_done(&self, deadline: tokio::time::Instant) -> usize {
        let tasks = std::mem::take(
            &mut *self
                .shared
                .tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let mut cancelled = 0;
        for (name, mut task) in tasks {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(())) => tracing::info!(job = %name, "background job finished"),
                Ok(Err(error)) => tracing::warn!(job = %name, %error, "background job failed"),
                Err(_) => {
                    task.abort();
                    let _ = task.await;
                    cancelled += 1;
                    tracing::warn!(job = %name, "drain deadline passed: background job cancelled");
                }
            }
        }
        cancelled
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Acquire)
    }

    /// The figures for `/stats`.
    pub fn stats(&self) -> ShutdownStats {
        ShutdownStats {
            phase: self.phase(),
            in_flight: self.in_flight(),
            rejected: self.shared.rejected.load(Ordering::Relaxed),
        }
    }

    /// Resolves when `phase` is reached.
    pub async fn reached(&self, phase: Phase) {
        let mut watch = self.shared.phase.subscribe();
        // The sender lives as long as `self`.
        let _ = watch.wait_for(|current| *current >= phase).await;
    }

    /// Resolves when draining starts: hand this to `axum::serve(..).with_graceful_shutdown`
    /// (or hyper-util's graceful shutdown) so the server stops accepting connections and closes
    /// idle keep-alive connections then.
    pub fn draining(&self) -> impl Future<Output = ()> + Send + 'static {
        let handle = self.clone();
        async move { handle.reached(Phase::Draining).await }
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.shared.advance(phase);
    }

    /// Waits until no request is in flight.
    pub(crate) async fn drained(&self) {
        loop {
            // Registered before the check, so a drop to zero in between is not missed.
            let notified = self.shared.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One request in flight for as long as it lives; the last one out wakes the drain.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Shared>);

impl InFlight {
    /// The phase now.
    pub(crate) fn phase(&self) -> Phase {
        self.0.current_phase()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The problem a shutting-down service answers with: `503`, code `SHUTTING_DOWN`, `retryable`
/// (another instance can serve). [`ShutdownLayer`](crate::ShutdownLayer) refuses new requests
/// with it while draining and [`Health`](crate::Health)'s readiness fails with it; a readiness
/// route of an application's own can answer with it too.
///
/// ```
/// let problem = ballast_shutdown::shutting_down();
/// assert_eq!(problem.status, http::StatusCode::SERVICE_UNAVAILABLE);
/// assert_eq!(problem.code, "SHUTTING_DOWN");
/// ```
pub fn shutting_down() -> ballast_core::http::Problem {
    ballast_core::http::Problem::new(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "SHUTTING_DOWN",
        "The service is shutting down; try again.",
    )
    .with_retryable(true)
}
