//! How a classified failure becomes a problem document.

use ballast_core::http::Problem;
use ballast_core::Failure;
use http::StatusCode;

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

/// The problem document for an error response that came without one: a code for the status
/// and a fixed detail that never repeats the request's input.
pub(crate) fn problem_for_status(status: StatusCode) -> Problem {
    let (code, detail): (&'static str, &'static str) = match status.as_u16() {
        400 => ("BAD_REQUEST", "The request is malformed."),
        401 => ("UNAUTHORIZED", "The request needs valid credentials."),
        403 => ("FORBIDDEN", "The request is not allowed."),
        404 => ("NOT_FOUND", "The requested resource was not found."),
        405 => (
            "METHOD_NOT_ALLOWED",
            "The method is not allowed for this resource.",
        ),
        406 => (
            "NOT_ACCEPTABLE",
            "No representation matches the request's Accept headers.",
        ),
        408 => ("REQUEST_TIMEOUT", "The request did not arrive in time."),
        409 => (
            "CONFLICT",
            "The request conflicts with the resource's current state.",
        ),
        410 => ("GONE", "The resource is gone."),
        411 => ("LENGTH_REQUIRED", "The request needs a Content-Length."),
        413 => ("PAYLOAD_TOO_LARGE", "The request body is too large."),
        414 => ("URI_TOO_LONG", "The request's URI is too long."),
        415 => (
            "UNSUPPORTED_MEDIA_TYPE",
            "The request body's content type is not supported here.",
        ),
        422 => (
            "UNPROCESSABLE_ENTITY",
            "The request body is not valid for this resource.",
        ),
        429 => ("TOO_MANY_REQUESTS", "Too many requests: slow down."),
        431 => (
            "REQUEST_HEADER_FIELDS_TOO_LARGE",
            "The request's headers are too large.",
        ),
        500 => ("CRITICAL_ERROR", "An internal error occurred."),
        501 => ("NOT_IMPLEMENTED", "The method is not implemented."),
        502 => ("BAD_GATEWAY", "An upstream service answered badly."),
        503 => (
            "SERVICE_UNAVAILABLE",
            "The service is unavailable right now.",
        ),
        504 => (
            "GATEWAY_TIMEOUT",
            "An upstream service did not answer in time.",
        ),
        _ if status.is_client_error() => ("CLIENT_ERROR", "The request cannot be served."),
        _ => ("SERVER_ERROR", "The service could not answer the request."),
    };
    Problem::new(status, code, detail)
}
