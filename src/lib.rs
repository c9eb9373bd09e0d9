//! ballast: Tower middleware that keeps a database-backed web service alive when the database is
//! scarce, slow or gone.
//!
//! This facade re-exports the ballast crates: the classified failure every layer shares
//! ([`Failure`], from `ballast-core`) and, behind default features of the same names, the shared
//! connection pool ([`pool`], from `ballast-pool`), the error layer ([`error`], from
//! `ballast-error`, whose handler error type is also [`Error`]), the retry layer ([`retry`],
//! from `ballast-retry`), the response cache ([`cache`], from `ballast-cache`) and graceful
//! shutdown ([`shutdown`], from `ballast-shutdown`).
//!
//! ```
//! use ballast::{Cause, Failure, Reach};
//!
//! let failure = Failure::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
//! assert_eq!(failure.cause(), Cause::Unreachable);
//! assert_eq!(failure.code().as_str(), "DB_CONNECTION_ERROR");
//! assert_eq!(failure.reach(), Reach::NotSent);
//! ```

pub use ballast_core::{
    io, mysql, redact, sqlite, sqlstate, BoxError, Cause, Code, DriverCode, Failure, Reach,
    SqlState,
};

#[cfg(feature = "pool")]
pub use ballast_pool as pool;

#[cfg(feature = "cache")]
pub use ballast_cache as cache;
#[cfg(feature = "error")]
pub use ballast_error as error;
#[cfg(feature = "error")]
pub use ballast_error::Error;
#[cfg(feature = "retry")]
pub use ballast_retry as retry;
#[cfg(feature = "shutdown")]
pub use ballast_shutdown as shutdown;
