//! How a classified failure becomes a problem document.

use ballast_core::http::Problem;
use ballast_core::Failure;

/// Turns a classified failure into the problem document a client receives.
///
/// Implemented by [`DefaultProblems`] and by any `Fn(&Failure) -> Problem`, so an application
/// that wants other statuses or extra members writes a closure (starting from
/// [`DefaultProblems::problem_for`] if it only adds to the defaults).
pub trait MapProblem: Clone + Send + Sync + 'static {
    /// The document for `failure`. It must not contain the failure's source or detail: those
    /// are for logs.
    fn problem(&self, failure: &Failure) -> Problem;
}

impl<F> MapProblem for F
where
    F: Fn(&Failure) -> Problem + Clone + Send + Sync + 'static,
{
    fn problem(&self, failure: &Failure) -> Problem {
        self(failure)
    }
}

/// The default mapping: the failure's code and its HTTP status (`DB_CONNECTION_ERROR`,
/// `DB_INIT_ERROR` and `MEMORY_ERROR` are 503, `CRITICAL_ERROR` 500), its public message as the
/// detail, and its retryability.
///
/// `MEMORY_ERROR` covers the database's own out-of-memory codes (PostgreSQL 53200, MySQL
/// 1037/1038/1041, SQLite NOMEM), its other resource exhaustion (PostgreSQL class 53 but 53300,
/// which is a connection limit; disk full: PostgreSQL 53100, MySQL 1021/1114, SQLite FULL, not
/// retryable), and an I/O error of kind `OutOfMemory` in this process: in every case the
/// request was sound and the service lacked resources, so the answer is 503 rather than 500.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultProblems;

impl DefaultProblems {
    /// The default document for `failure` (what [`MapProblem::problem`] returns).
    pub fn problem_for(failure: &Failure) -> Problem {
        Problem::for_failure(failure)
    }
}

impl MapProblem for DefaultProblems {
    fn problem(&self, failure: &Failure) -> Problem {
        Self::problem_for(failure)
    }
}
