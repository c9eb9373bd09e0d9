//! The error type handlers return.

use std::fmt;
use std::sync::Arc;

use ballast_core::Failure;
use http::StatusCode;

use ballast_core::http::Problem;
#[cfg(feature = "axum")]
use ballast_core::http::{failure_response, RetryAfter};

/// What a handler returns when it fails: a classified database failure, or a problem the
/// application defines itself (a 404, a 409).
///
/// `?` converts the classified [`Failure`], diesel's errors, the drivers' errors (features
/// `postgres`, `mysql`), a rejected setting ([`ConfigError`](ballast_core::ConfigError)) and I/O
/// errors; a pool that cannot be built converts through `Failure::from`. diesel's `NotFound` becomes
/// a 404 `NOT_FOUND` problem: a missing row is an answer, not a failure.
///
/// With the `axum` feature it is `IntoResponse`: it renders a safe problem+json response on its
/// own and stores the failure in the response extensions as an `Arc<Failure>`, where
/// [`ErrorResponseLayer`](crate::ErrorResponseLayer) (which renders it with the configured
/// mapping and logs it once), the retry layer and the cache read it.
///
/// ```
/// use ballast_error::Error;
/// use http::StatusCode;
///
/// let not_found = Error::new(StatusCode::NOT_FOUND, "ITEM_NOT_FOUND", "No item has that id.");
/// assert_eq!(not_found.problem().status, StatusCode::NOT_FOUND);
///
/// let failure = ballast_core::sqlstate::failure("53300");
/// let error = Error::from(failure);
/// assert_eq!(error.problem().code, "DB_CONNECTION_ERROR");
/// assert!(error.failure().is_some());
/// ```
pub struct Error {
    repr: Repr,
}

/// The problem an application's [`Error::new`] rendered, carried in its response's extensions.
#[derive(Clone)]
pub(crate) struct HandlerProblem(pub(crate) Arc<Problem>);

pub(crate) enum Repr {
    Failure(Arc<Failure>),
    Problem(Box<Problem>),
}

impl Error {
    /// An application-defined problem with this status, code and detail (which must be safe to
    /// show anyone).
    pub fn new(
        status: StatusCode,
        code: impl Into<std::borrow::Cow<'static, str>>,
        detail: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Self {
        Problem::new(status, code, detail).into()
    }

    /// The classified failure, when this is one.
    pub fn failure(&self) -> Option<&Arc<Failure>> {
        match &self.repr {
            Repr::Failure(failure) => Some(failure),
            Repr::Problem(_) => None,
        }
    }

    /// The problem document this error renders to with the default mapping, for a request of
    /// unknown method: a failure whose statement may have run is not called retryable
    /// ([`ErrorResponseLayer`](crate::ErrorResponseLayer) knows the method and says `true` for
    /// idempotent ones).
    pub fn problem(&self) -> Problem {
        match &self.repr {
            Repr::Failure(failure) => {
                let mut problem = Problem::for_failure(failure);
                problem.keep_promise(failure, false);
                problem
            }
            Repr::Problem(problem) => (**problem).clone(),
        }
    }

    /// Marks a classified failure as safe to repeat whatever its reach, because an idempotency
    /// key guards the work ([`Failure::with_idempotent`]); an application problem is unchanged.
    #[must_use]
    pub fn with_idempotent(self, idempotent: bool) -> Self {
        match self.repr {
            Repr::Failure(failure) => {
                // Usually the only handle; otherwise a copy carries the mark.
                let failure = Arc::try_unwrap(failure).unwrap_or_else(|shared| shared.detached());
                Error::from(failure.with_idempotent(idempotent))
            }
            repr @ Repr::Problem(_) => Error { repr },
        }
    }

    pub(crate) fn into_repr(self) -> Repr {
        self.repr
    }
}

impl From<Failure> for Error {
    fn from(failure: Failure) -> Self {
        Error {
            repr: Repr::Failure(Arc::new(failure)),
        }
    }
}

impl From<Arc<Failure>> for Error {
    fn from(failure: Arc<Failure>) -> Self {
        Error {
            repr: Repr::Failure(failure),
        }
    }
}

impl From<Problem> for Error {
    fn from(problem: Problem) -> Self {
        Error {
            repr: Repr::Problem(Box::new(problem)),
        }
    }
}

impl From<diesel::result::Error> for Error {
    fn from(error: diesel::result::Error) -> Self {
        match error {
            diesel::result::Error::NotFound => Error::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "The requested resource was not found.",
            ),
            other => Failure::from(other).into(),
        }
    }
}

/// `From` impls that go through [`Failure`].
macro_rules! via_failure {
    ($($(#[$meta:meta])* $error:ty),* $(,)?) => {
        $(
            $(#[$meta])*
            impl From<$error> for Error {
                fn from(error: $error) -> Self {
                    Failure::from(error).into()
                }
            }
        )*
    };
}

via_failure!(
    diesel::ConnectionError,
    std::io::Error,
    #[cfg(feature = "postgres")]
    tokio_postgres::Error,
    #[cfg(feature = "mysql")]
    mysql_async::Error,
    ballast_core::ConfigError,
);

impl ballast_core::http::AsFailure for Error {
    fn as_failure(&self) -> Option<&Failure> {
        self.failure().map(|failure| &**failure)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Failure(failure) => fmt::Display::fmt(failure, f),
            Repr::Problem(problem) => write!(f, "{} ({})", problem.detail, problem.code),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Failure(failure) => f.debug_tuple("Error").field(failure).finish(),
            Repr::Problem(problem) => f.debug_tuple("Error").field(problem).finish(),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.repr {
            Repr::Failure(failure) => Some(&**failure),
            Repr::Problem(_) => None,
        }
    }
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for Error {
    fn into_response(self) -> axum_core::response::Response {
        // Without the request, the method is unknown: it is treated as one that must not run
        // twice. The error layer renders it again knowing the method.
        let response = match self.repr {
            Repr::Failure(failure) => {
                failure_response(failure, false, false, Some(&RetryAfter::default()))
            }
            Repr::Problem(problem) => {
                let mut response = problem.to_response(false, None);
                // For the error layer, which adds what only the request knows (its id).
                response
                    .extensions_mut()
                    .insert(HandlerProblem(Arc::from(problem)));
                response
            }
        };
        response.map(axum_core::body::Body::new)
    }
}
