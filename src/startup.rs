//! Startup work (a schema, migrations) that [`Stack::serve`](crate::Stack::serve) runs while it
//! already serves: retried while the database is not there yet, with `/readyz` saying so.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ballast_core::{Cause, Failure};
use ballast_shutdown::ShutdownHandle;

/// The first wait after a failed attempt; it doubles up to [`LONGEST_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(200);
/// The longest wait between attempts: a database that comes up is found within this.
const LONGEST_WAIT: Duration = Duration::from_secs(5);
/// How often "still waiting" is logged while a step keeps failing.
const STILL_WAITING_EVERY: Duration = Duration::from_secs(30);

type StepFuture = Pin<Box<dyn Future<Output = Result<(), Failure>> + Send>>;
type Step = Box<dyn FnMut() -> StepFuture + Send>;

/// The steps, in order, and where they stand.
pub(crate) struct Startup {
    steps: Vec<(String, Step)>,
    state: Arc<State>,
}

/// Where startup stands, shared with readiness and the request gate.
#[derive(Default)]
pub(crate) struct State {
    done: AtomicBool,
    failed: AtomicBool,
    /// The step running now, for `/readyz` and the 503s.
    waiting: Mutex<Option<String>>,
}

impl Startup {
    pub(crate) fn new() -> Self {
        Startup {
            steps: Vec::new(),
            state: Arc::default(),
        }
    }

    pub(crate) fn push<F, Fut, E>(&mut self, name: String, mut step: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<Failure>,
    {
        let step: Step = Box::new(move || {
            let attempt = step();
            Box::pin(async move { attempt.await.map_err(Into::into) })
        });
        self.steps.push((name, step));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub(crate) fn state(&self) -> Arc<State> {
        Arc::clone(&self.state)
    }

    /// Runs the steps in order, each until it succeeds; stops at the drain. A step that fails
    /// in a way retrying cannot fix (a wrong password, a statement the database refuses) is
    /// logged and starts the shutdown: the service then exits 1.
    pub(crate) async fn run(self, handle: ShutdownHandle) {
        let Startup { steps, state } = self;
        let started = Instant::now();
        let draining = handle.draining();
        tokio::pin!(draining);
        for (name, mut step) in steps {
            state.set_waiting(Some(name.clone()));
            let mut wait = FIRST_WAIT;
            let mut attempts = 0u32;
            let mut last_logged: Option<Instant> = None;
            loop {
                attempts += 1;
                let outcome = tokio::select! {
                    () = &mut draining => return,
                    outcome = step() => outcome,
                };
                let failure = match outcome {
                    Ok(()) => {
                        if attempts > 1 {
                            tracing::info!(step = %name, attempts, "startup step done");
                        }
                        break;
                    }
                    Err(failure) => failure,
                };
                if !failure.retryable() {
                    tracing::error!(
                        step = %name,
                        failure = %failure.report(),
                        "startup step failed, and retrying cannot fix it: shutting down"
                    );
                    state.failed.store(true, Ordering::Release);
                    handle.trigger();
                    return;
                }
                // The first failure, then every half minute: the transition, not each attempt.
                if last_logged.is_none_or(|at| at.elapsed() >= STILL_WAITING_EVERY) {
                    tracing::warn!(
                        step = %name,
                        attempts,
                        waited = ?started.elapsed(),
                        failure = %failure.report(),
                        "startup step waits for the database; not ready until it succeeds"
                    );
                    last_logged = Some(Instant::now());
                }
                // Jitter: instances waiting for the same database do not all come back at once.
                let pause = wait + wait.mul_f64(fastrand::f64() / 4.0);
                tokio::select! {
                    () = &mut draining => return,
                    () = tokio::time::sleep(pause) => {}
                }
                wait = (wait * 2).min(LONGEST_WAIT);
            }
        }
        state.set_waiting(None);
        state.done.store(true, Ordering::Release);
        tracing::info!(took = ?started.elapsed(), "startup done: ready");
    }
}

impl State {
    fn set_waiting(&self, waiting: Option<String>) {
        *self.waiting.lock().unwrap_or_else(PoisonError::into_inner) = waiting;
    }

    /// Whether every step has succeeded.
    pub(crate) fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Whether a step failed for good.
    pub(crate) fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// `Ok` once started; otherwise the failure readiness and the request gate answer with: a
    /// retryable 503 that names the step (never the database's own words, which the log has).
    pub(crate) fn check(&self) -> Result<(), Failure> {
        if self.is_done() {
            return Ok(());
        }
        let step = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| "startup".to_owned());
        Err(Failure::new(Cause::ServerUnavailable)
            .with_public_message(format!(
                "The service is starting: its startup step `{step}` has not finished yet."
            ))
            .with_detail(format!("startup step `{step}` pending")))
    }
}

impl fmt::Debug for Startup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.steps.iter().map(|(name, _)| name).collect();
        f.debug_struct("Startup").field("steps", &names).finish()
    }
}
