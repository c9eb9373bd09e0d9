//! [`Summary`]: what the shutdown sequence did, and the exit code it makes.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// Exit code after a second signal: 128 + SIGINT, what shells report for an interrupted
/// program.
const EXIT_SECOND_SIGNAL: i32 = 130;

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
    /// Whether a second signal cut the sequence short (see [`Shutdown::listen_for_signals`](crate::Shutdown::listen_for_signals)):
    /// the rest of the drain and the hooks not yet run were skipped.
    pub interrupted: bool,
    /// Background jobs ([`ShutdownHandle::spawn`](crate::ShutdownHandle::spawn)) still running at the drain deadline, and so
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

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(drained: bool, hook: HookResult, interrupted: bool) -> Summary {
        Summary {
            drained,
            abandoned: usize::from(!drained),
            hooks: vec![HookOutcome {
                name: "close the pool".into(),
                result: hook,
                took: Duration::from_millis(3),
            }],
            total: Duration::from_millis(40),
            interrupted,
            tasks_cancelled: 0,
        }
    }

    #[test]
    fn the_exit_code_says_how_the_sequence_went() {
        assert_eq!(summary(true, HookResult::Ok, false).exit_code(), 0);
        assert_eq!(summary(false, HookResult::Ok, false).exit_code(), 1);
        assert_eq!(summary(true, HookResult::TimedOut, false).exit_code(), 1);
        assert_eq!(
            summary(true, HookResult::Failed("refused".into()), false).exit_code(),
            1
        );
        // A second signal wins over everything else: the shell's code for an interrupt.
        assert_eq!(summary(true, HookResult::Ok, true).exit_code(), 130);
        assert_eq!(
            HookResult::Failed("refused".into()).to_string(),
            "failed: refused"
        );
    }
}
