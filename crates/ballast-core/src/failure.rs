//! [`Failure`]: the classified failure every crate shares, and the driver code it may carry.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use crate::{redact, Cause, Code, Reach, SqlState};

/// A boxed error that can cross threads: the type of a [`Failure`]'s private source.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;
/// The database driver's own code for a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DriverCode {
    /// A PostgreSQL SQLSTATE.
    Postgres(SqlState),
    /// A MySQL or MariaDB error number (server `ER_*` or client `CR_*`).
    MySql(u16),
    /// A SQLite primary result code.
    Sqlite(i32),
}

impl fmt::Display for DriverCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverCode::Postgres(state) => write!(f, "SQLSTATE {state}"),
            DriverCode::MySql(number) => write!(f, "MySQL error {number}"),
            DriverCode::Sqlite(code) => write!(f, "SQLite result code {code}"),
        }
    }
}

/// A classified database failure: what failed, whether to retry, whether the statement could have
/// run, and the private error behind it.
///
/// Build one from a driver error with `From`/`?` (see the crate docs for the features), from a
/// driver code with [`sqlstate::failure`](crate::sqlstate::failure), [`mysql::failure`](crate::mysql::failure) or [`sqlite::failure`](crate::sqlite::failure), or from a
/// [`Cause`] with [`Failure::new`], then refine it with the `with_*` methods.
pub struct Failure {
    // Boxed so `Result<T, Failure>` stays one pointer wide on the happy path.
    inner: Box<Inner>,
}

struct Inner {
    cause: Cause,
    code: Code,
    retryable: bool,
    reach: Reach,
    idempotent: bool,
    retry_after: Option<Duration>,
    known_outage: bool,
    driver_code: Option<DriverCode>,
    public_message: Cow<'static, str>,
    detail: Option<String>,
    source: Option<BoxError>,
}

impl Failure {
    /// A failure of the given cause, with that cause's code, retryability, reach and public
    /// message.
    pub fn new(cause: Cause) -> Self {
        Failure {
            inner: Box::new(Inner {
                cause,
                code: cause.code(),
                retryable: cause.retryable(),
                reach: cause.default_reach(),
                idempotent: false,
                retry_after: None,
                known_outage: false,
                driver_code: None,
                public_message: Cow::Borrowed(cause.public_message()),
                detail: None,
                source: None,
            }),
        }
    }

    /// Sets where the failure happened. Code that knows a failure happened while connecting says
    /// [`Reach::NotSent`] here.
    #[must_use]
    pub fn with_reach(mut self, reach: Reach) -> Self {
        self.inner.reach = reach;
        self
    }

    /// Says whether the failed work may run again without a second effect whatever its reach —
    /// because an idempotency key guards it, say: a repeat with the same key returns the first
    /// outcome instead of writing again. [`may_retry`](Self::may_retry) then allows a repeat of a
    /// statement that may have run.
    #[must_use]
    pub fn with_idempotent(mut self, idempotent: bool) -> Self {
        self.inner.idempotent = idempotent;
        self
    }

    /// Says when trying again can first succeed, as the source knows it: the pool, after failed
    /// connects, tries the database again only once its pause is over. The error layer sends
    /// it as `Retry-After`; the retry layer never retries sooner.
    #[must_use]
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.inner.retry_after = Some(after);
        self
    }

    #[doc(hidden)]
    /// Internal to the ballast crates: not part of the stable API, and may change in any release.
    ///
    /// Says the failure was already known when the operation started: the pool answered without
    /// trying — from its closed connect gate, because connecting has been failing, or because
    /// too many checkouts already wait. An outage or an overload, not a blip: retrying within
    /// the same request cannot help, so the HTTP retry layer does not, and the client is
    /// answered at once.
    #[must_use]
    pub fn with_known_outage(mut self, known: bool) -> Self {
        self.inner.known_outage = known;
        self
    }

    #[doc(hidden)]
    /// Internal to the ballast crates: not part of the stable API, and may change in any release.
    ///
    /// Overrides whether the failure is worth retrying.
    #[must_use]
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.inner.retryable = retryable;
        self
    }

    #[doc(hidden)]
    /// Internal to the ballast crates: not part of the stable API, and may change in any release.
    ///
    /// Overrides the client-facing code (and with it the status).
    #[must_use]
    pub fn with_code(mut self, code: Code) -> Self {
        self.inner.code = code;
        self
    }

    #[doc(hidden)]
    /// Internal to the ballast crates: not part of the stable API, and may change in any release.
    ///
    /// Records the driver's code.
    #[must_use]
    pub fn with_driver_code(mut self, code: DriverCode) -> Self {
        self.inner.driver_code = Some(code);
        self
    }

    /// Replaces the client-facing message. It must be safe to show anyone.
    #[must_use]
    pub fn with_public_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.inner.public_message = message.into();
        self
    }

    /// Adds operator-facing detail, such as `"10 of 10 connections in use, waited 20s"`.
    ///
    /// The text is passed through [`redact`], so a URL or password in it never reaches a log.
    #[must_use]
    pub fn with_detail(mut self, detail: impl AsRef<str>) -> Self {
        self.inner.detail = Some(redact(detail.as_ref()).into_owned());
        self
    }

    /// Keeps the error that caused this failure, for logs (see [`std::error::Error::source`]).
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.inner.source = Some(source.into());
        self
    }

    /// Why it failed.
    pub fn cause(&self) -> Cause {
        self.inner.cause
    }

    /// The client-facing code.
    pub fn code(&self) -> Code {
        self.inner.code
    }

    /// The HTTP status of the code (503 or 500).
    pub fn status(&self) -> u16 {
        self.inner.code.status()
    }

    /// Whether the operation is worth trying again, ignoring whether it is safe to.
    pub fn retryable(&self) -> bool {
        self.inner.retryable
    }

    /// Whether the statement could have reached the database.
    pub fn reach(&self) -> Reach {
        self.inner.reach
    }

    /// Whether the work may be run again: the failure is retryable **and** repeating it cannot
    /// apply a write twice — nothing was sent, or the caller says the work is idempotent (an
    /// idempotent HTTP method), or the failure says so itself
    /// ([`with_idempotent`](Self::with_idempotent)).
    ///
    /// This is the answer a client may be given as `retryable`: a promise that repeating the
    /// request cannot do it twice.
    pub fn may_retry(&self, idempotent: bool) -> bool {
        self.inner.retryable
            && (self.inner.reach == Reach::NotSent || idempotent || self.inner.idempotent)
    }

    /// When trying again can first succeed, if the source knows (see
    /// [`with_retry_after`](Self::with_retry_after)).
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// Whether the failure was known before the operation started: an outage (see
    /// [`with_known_outage`](Self::with_known_outage)).
    pub fn is_known_outage(&self) -> bool {
        self.inner.known_outage
    }

    /// Whether the failure says its work is safe to repeat whatever its reach (see
    /// [`with_idempotent`](Self::with_idempotent)).
    pub fn is_idempotent(&self) -> bool {
        self.inner.idempotent
    }

    /// Whether the failure is worth retrying but repeating it may apply a write twice: the
    /// statement may have run and nothing says it is idempotent. Nobody knows whether it took
    /// effect; the client must check before repeating it.
    pub fn outcome_unknown(&self, idempotent: bool) -> bool {
        self.inner.retryable && !self.may_retry(idempotent)
    }

    /// The driver's code, when there was one.
    pub fn driver_code(&self) -> Option<DriverCode> {
        self.inner.driver_code
    }

    /// The message that is safe to show a client.
    pub fn public_message(&self) -> &str {
        &self.inner.public_message
    }

    /// Operator-facing detail, already redacted.
    pub fn detail(&self) -> Option<&str> {
        self.inner.detail.as_deref()
    }

    /// The failure and its whole source chain on one line, redacted: what a log line needs.
    ///
    /// `the database has too many open connections (SQLSTATE 53300): db error: FATAL: ...`
    ///
    /// Only the first line of each error is kept: PostgreSQL's errors put row values in their
    /// `DETAIL` and `WHERE` lines, and those stay out of logs.
    pub fn report(&self) -> String {
        match self.source_chain() {
            Some(chain) => format!("{self}: {chain}"),
            None => self.to_string(),
        }
    }

    /// The source chain, redacted, first line of each error, joined by `": "`.
    fn source_chain(&self) -> Option<String> {
        let mut source = StdError::source(self);
        let mut chain: Option<String> = None;
        while let Some(error) = source {
            let text = error.to_string();
            let first_line = redact(text.lines().next().unwrap_or_default()).into_owned();
            chain = Some(match chain {
                Some(chain) => format!("{chain}: {first_line}"),
                None => first_line,
            });
            source = error.source();
        }
        chain
    }

    /// A copy of this failure for another caller — every waiter of a pool that could not
    /// connect gets its own — whose source is the redacted text of this one's source chain
    /// (the original error itself cannot be cloned).
    pub fn detached(&self) -> Failure {
        let inner = &self.inner;
        Failure {
            inner: Box::new(Inner {
                cause: inner.cause,
                code: inner.code,
                retryable: inner.retryable,
                reach: inner.reach,
                idempotent: inner.idempotent,
                retry_after: inner.retry_after,
                known_outage: inner.known_outage,
                driver_code: inner.driver_code,
                public_message: inner.public_message.clone(),
                detail: inner.detail.clone(),
                source: self
                    .source_chain()
                    .map(|chain| Box::new(DetachedSource(chain)) as BoxError),
            }),
        }
    }
}

impl Failure {
    /// Classifies an error that arrives boxed — a Tower service's error, a handler's `BoxError`
    /// — by what it is: a [`Failure`] as it is (or, found deeper in the source chain, a
    /// [detached](Failure::detached) copy of it); an I/O error by its kind; the drivers' errors
    /// (features `diesel`, `postgres`, `mysql`) by their tables; anything else is
    /// [`Cause::Internal`] with the error as its source.
    ///
    /// This is the one list of foreign error types ballast recognises.
    pub fn from_boxed(error: BoxError) -> Failure {
        let error = match error.downcast::<Failure>() {
            Ok(failure) => return *failure,
            Err(error) => error,
        };
        if let Some(failure) = find_in_chain::<Failure>(&*error) {
            return failure.detached();
        }
        let error = match error.downcast::<std::io::Error>() {
            Ok(error) => return Failure::from(*error),
            Err(error) => error,
        };
        #[cfg(feature = "diesel")]
        let error = match error.downcast::<diesel::result::Error>() {
            Ok(error) => return Failure::from(*error),
            Err(error) => error,
        };
        #[cfg(feature = "diesel")]
        let error = match error.downcast::<diesel::ConnectionError>() {
            Ok(error) => return Failure::from(*error),
            Err(error) => error,
        };
        #[cfg(feature = "postgres")]
        let error = match error.downcast::<tokio_postgres::Error>() {
            Ok(error) => return Failure::from(*error),
            Err(error) => error,
        };
        #[cfg(feature = "mysql")]
        let error = match error.downcast::<mysql_async::Error>() {
            Ok(error) => return Failure::from(*error),
            Err(error) => error,
        };
        Failure::new(Cause::Internal).with_source(error)
    }
}

/// The source of a [`Failure::detached`] copy: the original chain as redacted text.
#[derive(Debug)]
struct DetachedSource(String);

impl fmt::Display for DetachedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for DetachedSource {}

impl From<Cause> for Failure {
    fn from(cause: Cause) -> Self {
        Failure::new(cause)
    }
}

impl fmt::Display for Failure {
    /// The public message, then the detail, then the driver code:
    /// `no database connection became free in time: 10 of 10 in use (SQLSTATE 53300)`.
    ///
    /// The source error is not included; walk [`source`](std::error::Error::source) for it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.public_message)?;
        if let Some(detail) = &self.inner.detail {
            write!(f, ": {detail}")?;
        }
        if let Some(code) = &self.inner.driver_code {
            write!(f, " ({code})")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The source is shown through its redacted `Display`: a driver's `Debug` may print its
        // whole configuration, password included.
        let source = self
            .inner
            .source
            .as_ref()
            .map(|source| redact(&source.to_string()).into_owned());
        f.debug_struct("Failure")
            .field("code", &self.inner.code)
            .field("cause", &self.inner.cause)
            .field("retryable", &self.inner.retryable)
            .field("reach", &self.inner.reach)
            .field("idempotent", &self.inner.idempotent)
            .field("retry_after", &self.inner.retry_after)
            .field("known_outage", &self.inner.known_outage)
            .field("driver_code", &self.inner.driver_code)
            .field("public_message", &self.inner.public_message)
            .field("detail", &self.inner.detail)
            .field("source", &source)
            .finish()
    }
}

impl StdError for Failure {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_ref()
            .map(|source| &**source as &(dyn StdError + 'static))
    }
}

/// Finds the first error of type `T` in `error`'s source chain, `error` included.
pub(crate) fn find_in_chain<'a, T: StdError + 'static>(
    error: &'a (dyn StdError + 'static),
) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        current = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn may_retry_needs_retryable_and_safe_to_repeat() {
        let not_sent = Failure::new(Cause::Unreachable);
        assert_eq!(not_sent.reach(), Reach::NotSent);
        assert!(not_sent.may_retry(false), "nothing ran: a POST may repeat");
        assert!(not_sent.may_retry(true));

        let maybe_sent = Failure::new(Cause::ConnectionLost);
        assert_eq!(maybe_sent.reach(), Reach::MaybeSent);
        assert!(!maybe_sent.may_retry(false), "a write may have run");
        assert!(maybe_sent.may_retry(true));

        let fatal = Failure::new(Cause::AuthFailed);
        assert!(!fatal.may_retry(false));
        assert!(!fatal.may_retry(true));

        let overridden = Failure::new(Cause::ConnectionLost).with_reach(Reach::NotSent);
        assert!(overridden.may_retry(false));

        // Guarded by an idempotency key: a write that may have run may be repeated.
        let keyed = Failure::new(Cause::ConnectionLost).with_idempotent(true);
        assert!(keyed.may_retry(false));
        assert!(!keyed.outcome_unknown(false));
        assert!(
            maybe_sent.outcome_unknown(false),
            "a POST that may have run"
        );
        assert!(!maybe_sent.outcome_unknown(true), "a GET may simply repeat");
        assert!(!fatal.outcome_unknown(false), "not worth repeating at all");
    }

    #[test]
    fn display_is_message_detail_and_code() {
        let failure = Failure::new(Cause::PoolExhausted)
            .with_detail("10 of 10 connections in use, waited 20s")
            .with_driver_code(DriverCode::Postgres(SqlState::new("53300").unwrap()));
        assert_eq!(
            failure.to_string(),
            "no database connection became free in time: 10 of 10 connections in use, waited 20s (SQLSTATE 53300)"
        );
    }

    #[test]
    fn source_is_kept_and_chain_is_searchable() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let failure = Failure::new(Cause::ConnectionLost).with_source(io);
        let source = StdError::source(&failure).expect("source kept");
        assert_eq!(source.to_string(), "reset by peer");
        let found = find_in_chain::<std::io::Error>(&failure).expect("io error in chain");
        assert_eq!(found.kind(), std::io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn detached_copies_keep_everything_but_the_original_source() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused by h");
        let failure = Failure::new(Cause::Unreachable)
            .with_detail("connecting")
            .with_driver_code(DriverCode::MySql(2003))
            .with_source(io);
        let copy = failure.detached();
        assert_eq!(copy.cause(), failure.cause());
        assert_eq!(copy.code(), failure.code());
        assert_eq!(copy.reach(), failure.reach());
        assert_eq!(copy.retryable(), failure.retryable());
        assert_eq!(copy.driver_code(), failure.driver_code());
        assert_eq!(copy.to_string(), failure.to_string());
        assert_eq!(copy.report(), failure.report());
        assert_eq!(
            failure.report(),
            "the database could not be reached: connecting (MySQL error 2003): refused by h"
        );
        assert!(Failure::new(Cause::Busy).detached().source().is_none());
    }

    #[test]
    fn canary_password_never_shows() {
        const CANARY: &str = "canary-Pa55w0rd";
        let url = format!("postgres://app:{CANARY}@db.internal:5432/prod");
        let failure = Failure::new(Cause::Unreachable)
            .with_detail(format!("connecting to {url}"))
            .with_source(std::io::Error::other(format!(
                "cannot connect to {url} password={CANARY}"
            )));
        for text in [
            failure.to_string(),
            format!("{failure:?}"),
            failure.report(),
        ] {
            assert!(!text.contains(CANARY), "password leaked: {text}");
            assert!(!text.contains("db.internal"), "URL leaked: {text}");
        }
    }

    #[test]
    fn boxed_errors_are_classified_by_type() {
        let failure = Failure::new(Cause::Busy).with_detail("locked");
        let boxed: BoxError = Box::new(failure);
        assert_eq!(Failure::from_boxed(boxed).cause(), Cause::Busy);

        let refused: BoxError =
            Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(Failure::from_boxed(refused).cause(), Cause::Unreachable);

        // A failure wrapped by an application's own error type is found through `source`.
        #[derive(Debug)]
        struct Wrapper(Failure);
        impl fmt::Display for Wrapper {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("wrapped")
            }
        }
        impl StdError for Wrapper {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let wrapped: BoxError = Box::new(Wrapper(Failure::new(Cause::TooManyConnections)));
        let found = Failure::from_boxed(wrapped);
        assert_eq!(found.cause(), Cause::TooManyConnections);
        assert!(found.may_retry(false));

        let other: BoxError = "something else".into();
        let internal = Failure::from_boxed(other);
        assert_eq!(internal.cause(), Cause::Internal);
        assert_eq!(internal.source().unwrap().to_string(), "something else");
    }
}
