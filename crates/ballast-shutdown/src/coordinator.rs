//! The shutdown sequence: trigger, readiness, pre-drain delay, bounded drain, ordered hooks.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::handle::{Phase, Shared, ShutdownHandle};
use crate::summary::{HookOutcome, HookResult, Summary};

/// Default drain deadline: Kubernetes' default grace period is 30 s; 25 s of draining leaves
/// time for the teardown hooks before the kubelet's SIGKILL.
const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(25);

type HookFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type HookFn = Box<dyn FnOnce() -> HookFuture + Send>;

struct Hook {
    pub(crate) name: String,
    pub(crate) timeout: Duration,
    pub(crate) run: HookFn,
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
    pub(crate) pre_drain_delay: Duration,
    pub(crate) drain_deadline: Duration,
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
                    draining: watch::Sender::new(false),
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
    pub(crate) handle: ShutdownHandle,
    hooks: Vec<Hook>,
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
    pub(crate) async fn sequence<F, T>(self, server: F, done: &Mutex<Vec<HookOutcome>>) -> Summary
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
    pub(crate) terminate: tokio::signal::unix::Signal,
    pub(crate) interrupt: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    pub(crate) fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// The next signal's name.
    pub(crate) async fn recv(&mut self) -> &'static str {
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
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(Signals)
    }

    /// The next Ctrl-C; never, if it cannot be listened for.
    pub(crate) async fn recv(&mut self) -> &'static str {
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
