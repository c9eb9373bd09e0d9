//! Running a keyed write: once, in one transaction with its key.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ballast_core::scope::RequestScope;
use ballast_error::Error;
use bytes::Bytes;
use diesel_async::TransactionManager;
use http::StatusCode;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::key::IdempotencyKey;
use crate::outcome::Outcome;

use crate::store::{KeyStore, Record};

/// The work a keyed request does, on the connection it is given: a boxed future, so it can
/// borrow the connection (`|conn| Box::pin(async move { ... })`).
pub type Work<'c, T> = Pin<Box<dyn Future<Output = Result<(StatusCode, T), Error>> + Send + 'c>>;

/// How long a key is remembered by default: a day, Stripe's window, longer than any client
/// keeps repeating a request.
const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Exactly-once writes for requests that carry an `Idempotency-Key`: see the [crate docs](crate).
///
/// One per database; cheap to clone (clones share the note that the table exists).
#[derive(Clone)]
pub struct Idempotency {
    ttl: Duration,
    create_table: bool,
    table_ready: Arc<OnceCell<()>>,
}

impl Default for Idempotency {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Idempotency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("ttl", &self.ttl)
            .field("create_table", &self.create_table)
            .finish_non_exhaustive()
    }
}

impl Idempotency {
    /// Keys remembered for a day; the `ballast_idempotency` table created on first use.
    pub fn new() -> Self {
        Idempotency {
            ttl: DEFAULT_TTL,
            create_table: true,
            table_ready: Arc::new(OnceCell::new()),
        }
    }

    /// Sets how long a key is remembered: a repeat after that runs the work again. Defaults to
    /// 24 hours.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets whether the first keyed request creates the `ballast_idempotency` table (`CREATE
    /// TABLE IF NOT EXISTS`). Turn it off when a migration creates it (the statements are
    /// [`POSTGRES_SCHEMA`](crate::POSTGRES_SCHEMA), [`MYSQL_SCHEMA`](crate::MYSQL_SCHEMA) and
    /// [`SQLITE_SCHEMA`](crate::SQLITE_SCHEMA)). Defaults to `true`.
    #[must_use]
    pub fn create_table(mut self, create: bool) -> Self {
        self.create_table = create;
        self
    }

    /// Runs `work` for a request with `key` (or without one) and answers with its outcome.
    ///
    /// - **No key:** `work` runs as it is; nothing is recorded.
    /// - **A new key:** `work` runs inside a transaction that also records the key, the
    ///   request's fingerprint (a SHA-256 of `request` as JSON) and the outcome; both commit
    ///   or neither does.
    /// - **A key recorded with the same fingerprint:** `work` does not run; the recorded outcome
    ///   is returned, marked [replayed](Outcome::is_replayed).
    /// - **A key in use by a request still running:** a 409 problem
    ///   (`IDEMPOTENCY_KEY_IN_USE`, `retryable: true`). On SQLite, where writers take turns,
    ///   the repeat waits for the first and replays it instead.
    /// - **A key recorded with another fingerprint:** a 422 problem (`IDEMPOTENCY_KEY_REUSED`).
    ///
    /// A database failure anywhere in a keyed request is marked idempotent
    /// ([`Failure::with_idempotent`](ballast_core::Failure::with_idempotent)): the key makes
    /// repeating it safe, so even a `POST` whose `COMMIT` may have happened is answered
    /// `retryable: true`, and the retry layer may repeat it. An error `work` returns rolls
    /// back and records nothing: the next repeat runs again.
    ///
    /// # Errors
    ///
    /// The problems above, the error of `work`, or the database's failure.
    pub async fn run<C, T, F>(
        &self,
        conn: &mut C,
        key: Option<&IdempotencyKey>,
        request: &impl Serialize,
        work: F,
    ) -> Result<Outcome, Error>
    where
        C: KeyStore,
        T: Serialize,
        F: for<'c> FnOnce(&'c mut C) -> Work<'c, T>,
    {
        let Some(key) = key else {
            let (status, value) = work(conn).await?;
            return Ok(Outcome::new(status, to_json(&value)?, false));
        };
        let key = key.stored();
        let key = &*key;
        // The whole request is guarded now: a failure anywhere in it — a checkout that fails
        // after an attempt of this work ran, say — may be repeated with the same key.
        RequestScope::with_current(RequestScope::guard);
        let fingerprint = fingerprint(request)?;
        if let Opened::Recorded(outcome) = self.open(conn, key, &fingerprint).await? {
            return Ok(outcome);
        }
        let done = match work(conn).await {
            Ok((status, value)) => to_json(&value).map(|body| (status, body)),
            Err(error) => Err(error.with_idempotent(true)),
        };
        match done {
            Ok((status, body)) => {
                let record = Record {
                    key,
                    fingerprint: &fingerprint,
                    status: i16::try_from(status.as_u16()).unwrap_or(i16::MAX),
                    body: &body,
                    created_at: unix_millis(),
                };
                self.close(conn, key, Some(&record)).await?;
                Ok(Outcome::new(status, body, false))
            }
            Err(error) => {
                let _ = self.close(conn, key, None).await;
                Err(error)
            }
        }
    }

    /// Opens a keyed request on `conn`: begins its transaction, takes the key's lock and looks
    /// for the key. A key recorded already ends the transaction and answers its outcome (or
    /// the 422 of a reused key); a new key leaves the transaction open, locked, for the work
    /// and [`close`](Self::close).
    pub(crate) async fn open<C: KeyStore>(
        &self,
        conn: &mut C,
        key: &str,
        fingerprint: &[u8],
    ) -> Result<Opened, Error> {
        self.ensure_table(conn).await.map_err(guarded)?;
        let cutoff =
            unix_millis().saturating_sub(i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX));
        C::TransactionManager::begin_transaction(conn)
            .await
            .map_err(guarded)?;
        let locked = match conn.try_lock(key).await.map_err(guarded) {
            Ok(true) => true,
            Ok(false) => {
                let _ = C::TransactionManager::rollback_transaction(conn).await;
                return Err(in_use());
            }
            Err(error) => {
                let _ = C::TransactionManager::rollback_transaction(conn).await;
                return Err(error);
            }
        };
        let found = async {
            // SQLite, which has no lock to take above, takes its write lock here, before
            // anything is read (see `store`).
            conn.delete_expired(key, cutoff).await?;
            conn.find(key).await
        }
        .await
        .map_err(guarded);
        let opened = match found {
            Ok(None) => return Ok(Opened::New),
            Ok(Some(recorded)) if recorded.fingerprint != fingerprint => Err(reused()),
            Ok(Some(recorded)) => {
                let status = u16::try_from(recorded.status)
                    .ok()
                    .and_then(|status| StatusCode::from_u16(status).ok())
                    .unwrap_or(StatusCode::OK);
                Ok(Opened::Recorded(Outcome::recorded(status, recorded.body)))
            }
            Err(error) => Err(error),
        };
        // Nothing was written: the transaction only read (and dropped an expired key, which
        // the next request drops again).
        let _ = C::TransactionManager::rollback_transaction(conn).await;
        if locked {
            let _ = conn.unlock(key).await;
        }
        opened
    }

    /// Closes a keyed request [`open`](Self::open) left open: records `record` with the work and
    /// commits both, or (`None`, the work failed) rolls the work back and records nothing.
    pub(crate) async fn close<C: KeyStore>(
        &self,
        conn: &mut C,
        key: &str,
        record: Option<&Record<'_>>,
    ) -> Result<(), Error> {
        let result = match record {
            Some(record) => match conn.record(record).await {
                Ok(()) => C::TransactionManager::commit_transaction(conn)
                    .await
                    .map_err(guarded),
                Err(error) => {
                    let _ = C::TransactionManager::rollback_transaction(conn).await;
                    Err(guarded(error))
                }
            },
            // The work's error says what went wrong; a failing ROLLBACK only repeats it (and a
            // connection left in a transaction is rolled back by the pool).
            None => {
                let _ = C::TransactionManager::rollback_transaction(conn).await;
                Ok(())
            }
        };
        // MySQL's lock outlives the transaction; a connection that failed takes it along.
        let _ = conn.unlock(key).await;
        result
    }

    /// Deletes every key older than the TTL: run it now and then (a key is also dropped when a
    /// request finds it expired). Returns how many were deleted.
    ///
    /// # Errors
    ///
    /// The database's failure.
    pub async fn purge_expired<C: KeyStore>(&self, conn: &mut C) -> Result<usize, Error> {
        self.ensure_table(conn).await?;
        let cutoff =
            unix_millis().saturating_sub(i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX));
        Ok(conn.purge(cutoff).await?)
    }

    async fn ensure_table<C: KeyStore>(&self, conn: &mut C) -> diesel::QueryResult<()> {
        if !self.create_table {
            return Ok(());
        }
        self.table_ready
            .get_or_try_init(|| async {
                // Two processes creating it at once can collide in PostgreSQL's catalog even
                // with IF NOT EXISTS: the second attempt finds it.
                match conn.create_table().await {
                    Ok(()) => Ok(()),
                    Err(_) => conn.create_table().await,
                }
            })
            .await
            .map(|_| ())
    }
}

/// What [`Idempotency::open`] found.
pub(crate) enum Opened {
    /// The key is new: its transaction is open and locked.
    New,
    /// The key was recorded for the same request: its outcome, replayed.
    Recorded(Outcome),
}

/// A database failure inside a keyed request: safe to repeat with the same key.
pub(crate) fn guarded(error: diesel::result::Error) -> Error {
    Error::from(error).with_idempotent(true)
}

fn in_use() -> Error {
    ballast_error::Problem::new(
        StatusCode::CONFLICT,
        "IDEMPOTENCY_KEY_IN_USE",
        "A request with this Idempotency-Key is still being processed: repeat it in a moment.",
    )
    .with_retryable(true)
    .into()
}

fn reused() -> Error {
    Error::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "IDEMPOTENCY_KEY_REUSED",
        "This Idempotency-Key was used for a different request.",
    )
}

pub(crate) fn fingerprint(request: &impl Serialize) -> Result<Vec<u8>, Error> {
    let json = serde_json::to_vec(request).map_err(internal)?;
    Ok(Sha256::digest(json).to_vec())
}

fn to_json(value: &impl Serialize) -> Result<Bytes, Error> {
    serde_json::to_vec(value).map(Bytes::from).map_err(internal)
}

pub(crate) fn internal(error: serde_json::Error) -> Error {
    ballast_core::Failure::new(ballast_core::Cause::Internal)
        .with_detail("cannot serialise JSON")
        .with_source(error)
        .into()
}

pub(crate) fn unix_millis() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}
