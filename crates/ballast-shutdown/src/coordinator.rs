//! The shutdown sequence: trigger, readiness, pre-drain delay, bounded drain, ordered hooks.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{watch, Notify};

/// Default drain deadline: Kubernetes' default grace period is 30 s; 25 s of draining leaves
/// time for the teardown hooks before the kubelet's SIGKILL.
const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(25);
/// Exit code after a second signal: 128 + SIGINT, what shells report for an interrupted
/// program.
const EXIT_SECOND_SIGNAL: i32 = 130;

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

type HookFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type HookFn = Box<dyn FnOnce() -> HookFuture + Send>;

struct Hook {
    name: String,
    timeout: Duration,
    run: HookFn,
}

impl fmt::Debug for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hook")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownBuilder {
    pre_drain_delay: Duration,
    drain_deadline: Duration,
    hooks: Vec<Hook>,
}

impl ShutdownBuilder {
    /// Keeps serving this long after shutdown starts, with readiness already failing, so load
    /// balancers stop sending traffic before requests are refused. Defaults to zero.
    #[must_use]
    pub fn pre_drain_delay(mut self, delay: Duration) -> Self {
        self.pre_drain_delay = delay;
        self
    }

    /// The longest the drain may take: in-flight requests that have not finished by then are
    /// abandoned and teardown starts. Defaults to 25 s.
    #[must_use]
    pub fn drain_deadline(mut self, deadline: Duration) -> Self {
        self.drain_deadline = deadline;
        self
    }

    /// Adds a teardown hook, run after the drain in the order added, with its own timeout. A
    /// hook that fails or times out is logged and the next one still runs.
    #[must_use]
    pub fn hook<F, Fut, E>(mut self, name: impl Into<String>, timeout: Duration, hook: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display,
    {
        self.hooks.push(Hook {
            name: name.into(),
            timeout,
            run: Box::new(move || {
                let future = hook();
                Box::pin(async move { future.await.map_err(|error| error.to_string()) })
            }),
        });
        self
    }

    /// Builds the coordinator. Nothing listens for signals until
    /// [`Shutdown::listen_for_signals`].
    pub fn build(self) -> Shutdown {
        let (phase, _) = watch::channel(Phase::Running);
        Shutdown {
            handle: ShutdownHandle {
                shared: Arc::new(Shared {
                    phase,
                    phase_now: AtomicU8::new(Phase::Running as u8),
                    in_flight: AtomicUsize::new(0),
                    idle: Notify::new(),
                    rejected: AtomicU64::new(0),
                    started: Mutex::new(None),
                    interrupted: watch::channel(false).0,
                    pre_drain_delay: self.pre_drain_delay,
                    drain_deadline: self.drain_deadline,
                    tasks: Mutex::new(Vec::new()),
                }),
            },
            hooks: self.hooks,
        }
    }
}

/// The shutdown coordinator: owns the teardown hooks and runs the sequence.
///
/// See the [crate docs](crate) for the sequence and an example.
#[derive(Debug)]
pub struct Shutdown {
    handle: ShutdownHandle,
    hooks: Vec<Hook>,
}

/// A cheap handle to the shutdown state, for layers, handlers and background tasks.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    pub(crate) shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    phase: watch::Sender<Phase>,
    /// The phase again, for the per-request check: a load, where the watch takes a lock that
    /// every request on every core would share.
    phase_now: AtomicU8,
    in_flight: AtomicUsize,
    /// Notified whenever the in-flight count drops to zero.
    idle: Notify,
    rejected: AtomicU64,
    started: Mutex<Option<Instant>>,
    /// Set by [`ShutdownHandle::interrupt`].
    interrupted: watch::Sender<bool>,
    pre_drain_delay: Duration,
    drain_deadline: Duration,
    /// Background jobs started with [`ShutdownHandle::spawn`], by name.
    tasks: Mutex<Vec<(String, tokio::task::JoinHandle<()>)>>,
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
    fn advance(&self, next: Phase) -> bool {
        self.phase.send_if_modified(|current| {
            if *current < next {
                *current = next;
                self.phase_now.store(next as u8, Ordering::Release);
                true
            } else {
                false
            }
        })
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

    /// Cuts the shutdown sequence short, as a second signal does: [`Shutdown::run`] stops
    /// draining or running hooks and returns at once, with exit code 130. Starts the sequence
    /// first if it had not started.
    pub fn interrupt(&self) {
        self.trigger();
        self.shared.interrupted.send_replace(true);
    }

    /// Resolves when [`interrupt`](Self::interrupt) is called.
    async fn interrupted(&self) {
        let mut watch = self.shared.interrupted.subscribe();
        // The sender lives as long as `self`.
        let _ = watch.wait_for(|interrupted| *interrupted).await;
    }

    /// When the sequence was triggered.
    fn started(&self) -> Option<Instant> {
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
    /// to the pool, its statement cancelled) and counted in [`Summary::tasks_cancelled`].
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
        let task = tokio::spawn(job);
        let mut tasks = self
            .shared
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tasks.retain(|(_, task)| !task.is_finished());
        tasks.push((name, task));
    }

    /// Waits for the background jobs to end; returns how many had to be cancelled at
    /// `deadline`.
    async fn tasks_done(&self, deadline: tokio::time::Instant) -> usize {
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

    fn set_phase(&self, phase: Phase) {
        self.shared.advance(phase);
    }

    /// Waits until no request is in flight.
    async fn drained(&self) {
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

/// What the shutdown sequence did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Summary {
    /// Whether every in-flight request finished before the deadline.
    pub drained: bool,
    /// Requests still in flight when the deadline passed.
    pub abandoned: usize,
    /// Each hook: name, result and how long it took.
    pub hooks: Vec<HookOutcome>,
    /// From the trigger to the end of the last hook.
    pub total: Duration,
    /// Whether a second signal cut the sequence short (see [`Shutdown::listen_for_signals`]):
    /// the rest of the drain and the hooks not yet run were skipped.
    pub interrupted: bool,
    /// Background jobs ([`ShutdownHandle::spawn`]) still running at the drain deadline, and so
    /// cancelled.
    pub tasks_cancelled: usize,
}

/// How one teardown hook went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HookOutcome {
    /// The hook's name.
    pub name: String,
    /// How it ended.
    pub result: HookResult,
    /// How long it ran.
    pub took: Duration,
}

/// How a teardown hook ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HookResult {
    /// It finished and returned `Ok`.
    Ok,
    /// It returned an error, shown here.
    Failed(String),
    /// It did not finish within its timeout.
    TimedOut,
}

impl fmt::Display for HookResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookResult::Ok => f.write_str("ok"),
            HookResult::Failed(error) => write!(f, "failed: {error}"),
            HookResult::TimedOut => f.write_str("timed out"),
        }
    }
}

impl Summary {
    /// The process exit code: 0 after a clean drain with every hook ok, 130 (128 + SIGINT, what
    /// shells report for an interrupted program) when a second signal cut it short, 1
    /// otherwise. Return it from `main` (`std::process::ExitCode::from(code as u8)`) or pass it
    /// to `std::process::exit`: the library never exits the process itself.
    pub fn exit_code(&self) -> i32 {
        if self.interrupted {
            return EXIT_SECOND_SIGNAL;
        }
        let hooks_ok = self.hooks.iter().all(|hook| hook.result == HookResult::Ok);
        i32::from(!(self.drained && hooks_ok))
    }
}

impl Shutdown {
    /// A builder with no pre-drain delay, a 25 s drain deadline and no hooks.
    pub fn builder() -> ShutdownBuilder {
        ShutdownBuilder {
            pre_drain_delay: Duration::ZERO,
            drain_deadline: DEFAULT_DRAIN_DEADLINE,
            hooks: Vec::new(),
        }
    }

    /// A handle to the state, for [`ShutdownLayer`](crate::ShutdownLayer), readiness handlers
    /// and background tasks.
    pub fn handle(&self) -> ShutdownHandle {
        self.handle.clone()
    }

    /// Listens for SIGTERM and SIGINT (Ctrl-C alone where Unix signals do not exist): the first
    /// starts the sequence; a second [interrupts](ShutdownHandle::interrupt) it, so
    /// [`run`](Self::run) returns at once with exit code 130. The process is never exited from
    /// here: `main` returns the code.
    ///
    /// # Errors
    ///
    /// The signal handlers could not be installed.
    pub fn listen_for_signals(&self) -> std::io::Result<()> {
        let mut signals = Signals::new()?;
        let handle = self.handle();
        tokio::spawn(async move {
            let name = signals.recv().await;
            tracing::info!(signal = name, "signal received");
            handle.trigger();
            let again = signals.recv().await;
            tracing::warn!(signal = again, "second signal: stopping at once");
            handle.interrupt();
        });
        Ok(())
    }

    /// Installs a panic hook that starts the shutdown sequence when a panic happens outside a
    /// request (in a background task such as the cache cleanup), instead of leaving a half-dead
    /// process; panics inside requests (served through [`ShutdownLayer`](crate::ShutdownLayer))
    /// are the error layer's to answer. The previous hook still runs.
    pub fn install_panic_hook(&self) {
        let handle = self.handle();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            if !crate::request::in_request() {
                tracing::error!("panic outside a request: starting an orderly shutdown");
                handle.trigger();
            }
        }));
    }

    /// Runs the sequence around `server`, which must stop accepting connections when
    /// [`ShutdownHandle::draining`] resolves (`axum::serve(..).with_graceful_shutdown(..)`):
    /// waits for the trigger, keeps serving for the pre-drain delay, drains until `server` has
    /// finished and no request is in flight — or the drain deadline passes — then runs the
    /// hooks in order. Returns what happened; [`Summary::exit_code`] is the process's exit code.
    ///
    /// If `server` ends on its own before any trigger, the sequence starts then.
    pub async fn run<F, T>(self, server: F) -> Summary
    where
        F: Future<Output = T> + Send,
    {
        let handle = self.handle();
        let done = Mutex::new(Vec::new());
        tokio::select! {
            biased;
            () = handle.interrupted() => {
                let started = handle.started().unwrap_or_else(Instant::now);
                let summary = Summary {
                    drained: false,
                    abandoned: handle.in_flight(),
                    hooks: done.into_inner().unwrap_or_else(PoisonError::into_inner),
                    total: started.elapsed(),
                    interrupted: true,
                    tasks_cancelled: 0,
                };
                tracing::warn!(
                    abandoned = summary.abandoned,
                    exit_code = summary.exit_code(),
                    "shutdown interrupted"
                );
                summary
            }
            summary = self.sequence(server, &done) => summary,
        }
    }

    /// The sequence [`run`](Self::run) runs; each hook's outcome goes into `done` as it ends.
    async fn sequence<F, T>(self, server: F, done: &Mutex<Vec<HookOutcome>>) -> Summary
    where
        F: Future<Output = T> + Send,
    {
        let handle = self.handle();
        let mut server = std::pin::pin!(server);
        let mut server_done = false;
        tokio::select! {
            _ = handle.reached(Phase::NotReady) => {}
            _ = &mut server => {
                server_done = true;
                handle.trigger();
            }
        }
        let started = handle.started().unwrap_or_else(Instant::now);

        if !handle.shared.pre_drain_delay.is_zero() && !server_done {
            let step = Instant::now();
            tokio::select! {
                _ = tokio::time::sleep(handle.shared.pre_drain_delay) => {}
                _ = &mut server => server_done = true,
            }
            tracing::info!(took_ms = millis(step.elapsed()), "pre-drain delay over");
        }

        handle.set_phase(Phase::Draining);
        let step = Instant::now();
        let in_flight = handle.in_flight();
        tracing::info!(in_flight, "draining: refusing new requests");
        let deadline = tokio::time::Instant::now() + handle.shared.drain_deadline;
        let drain = async {
            if !server_done {
                (&mut server).await;
            }
            handle.drained().await;
        };
        let requests_drained = tokio::time::timeout_at(deadline, drain).await.is_ok();
        let abandoned = handle.in_flight();
        // Background jobs end before the hooks (a "close pool" hook must not run under them).
        let tasks_cancelled = handle.tasks_done(deadline).await;
        let drained = requests_drained && tasks_cancelled == 0;
        if drained {
            tracing::info!(took_ms = millis(step.elapsed()), "drained");
        } else {
            tracing::warn!(
                took_ms = millis(step.elapsed()),
                abandoned,
                tasks_cancelled,
                "drain deadline passed: abandoning the requests and jobs still running"
            );
        }
        handle.set_phase(Phase::Stopped);

        for hook in self.hooks {
            let step = Instant::now();
            let result = match tokio::time::timeout(hook.timeout, (hook.run)()).await {
                Ok(Ok(())) => HookResult::Ok,
                Ok(Err(error)) => HookResult::Failed(error),
                Err(_) => HookResult::TimedOut,
            };
            let took = step.elapsed();
            if result == HookResult::Ok {
                tracing::info!(hook = %hook.name, took_ms = millis(took), "shutdown step done");
            } else {
                tracing::warn!(hook = %hook.name, took_ms = millis(took), outcome = %result, "shutdown step did not finish cleanly");
            }
            done.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(HookOutcome {
                    name: hook.name,
                    result,
                    took,
                });
        }
        let hooks = std::mem::take(&mut *done.lock().unwrap_or_else(PoisonError::into_inner));
        let summary = Summary {
            drained,
            abandoned,
            hooks,
            total: started.elapsed(),
            interrupted: false,
            tasks_cancelled,
        };
        tracing::info!(
            drained = summary.drained,
            abandoned = summary.abandoned,
            took_ms = millis(summary.total),
            exit_code = summary.exit_code(),
            "shutdown complete"
        );
        summary
    }
}

/// The signals that stop the process: SIGTERM and SIGINT on Unix.
#[cfg(unix)]
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// The next signal's name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

/// The signal that stops the process where Unix signals do not exist: Ctrl-C.
#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Signals)
    }

    /// The next Ctrl-C; never, if it cannot be listened for.
    async fn recv(&mut self) -> &'static str {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
        "Ctrl-C"
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
