//! Where keys are kept: the `ballast_idempotency` table, and each backend's SQL for it.

use std::future::Future;

use diesel::result::QueryResult;
use diesel::sql_types::{BigInt, Binary, Nullable, SmallInt, Text};

/// The table's name.
pub const TABLE: &str = "ballast_idempotency";

/// The table for PostgreSQL, as the helper creates it (or as a migration may).
pub const POSTGRES_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS ballast_idempotency (
    idempotency_key TEXT PRIMARY KEY,
    fingerprint BYTEA NOT NULL,
    status SMALLINT NOT NULL,
    body BYTEA NOT NULL,
    created_at BIGINT NOT NULL)";

/// The table for MySQL and MariaDB, as the helper creates it (or as a migration may).
///
/// The key column is compared byte for byte (`utf8mb4_bin`): with the server's default collation
/// (`utf8mb4_general_ci`) `Key-1` and `key-1` would be one key, and a client could replay another
/// client's response by changing a key's case. A table made by an earlier version is altered to
/// it when the helper first uses it; a table made by a migration needs the same column type.
pub const MYSQL_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS ballast_idempotency (
    idempotency_key VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
    fingerprint VARBINARY(32) NOT NULL,
    status SMALLINT NOT NULL,
    body LONGBLOB NOT NULL,
    created_at BIGINT NOT NULL) ENGINE = InnoDB";

/// The table for SQLite, as the helper creates it (or as a migration may).
pub const SQLITE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS ballast_idempotency (
    idempotency_key TEXT PRIMARY KEY NOT NULL,
    fingerprint BLOB NOT NULL,
    status INTEGER NOT NULL,
    body BLOB NOT NULL,
    created_at INTEGER NOT NULL)";

/// A recorded outcome.
#[derive(Debug, diesel::QueryableByName)]
pub struct Recorded {
    #[diesel(sql_type = Binary)]
    pub(crate) fingerprint: Vec<u8>,
    #[diesel(sql_type = SmallInt)]
    pub(crate) status: i16,
    #[diesel(sql_type = Binary)]
    pub(crate) body: Vec<u8>,
}

/// The answer of a lock attempt: 1 when this transaction holds the key's lock.
#[derive(Debug, diesel::QueryableByName)]
struct Locked {
    #[diesel(sql_type = Nullable<BigInt>)]
    locked: Option<i64>,
}

/// A row to record.
#[derive(Debug)]
pub struct Record<'a> {
    pub(crate) key: &'a str,
    pub(crate) fingerprint: &'a [u8],
    pub(crate) status: i16,
    pub(crate) body: &'a [u8],
    pub(crate) created_at: i64,
}

pub(crate) mod sealed {
    use super::*;

    /// The operations on the keys table, written once per backend (see `store!`).
    pub trait Store: diesel_async::AsyncConnection + Send + 'static {
        fn create_table(&mut self) -> impl Future<Output = QueryResult<()>> + Send;
        /// Takes the key's lock for the current transaction without waiting: `false` when a
        /// request with the same key holds it.
        fn try_lock(&mut self, key: &str) -> impl Future<Output = QueryResult<bool>> + Send;
        /// Lets the key's lock go, where it outlives the transaction (MySQL's `GET_LOCK`).
        fn unlock(&mut self, key: &str) -> impl Future<Output = QueryResult<()>> + Send;
        fn delete_expired(
            &mut self,
            key: &str,
            cutoff: i64,
        ) -> impl Future<Output = QueryResult<usize>> + Send;
        fn find(&mut self, key: &str)
            -> impl Future<Output = QueryResult<Option<Recorded>>> + Send;
        fn record(&mut self, row: &Record<'_>) -> impl Future<Output = QueryResult<()>> + Send;
        fn purge(&mut self, cutoff: i64) -> impl Future<Output = QueryResult<usize>> + Send;
    }
}

/// A diesel-async connection whose database can keep idempotency keys: PostgreSQL (feature
/// `postgres`), MySQL and MariaDB (`mysql`), SQLite (`sqlite`). Sealed.
pub trait KeyStore: sealed::Store {}

impl<C: sealed::Store> KeyStore for C {}

/// Each backend's statements. The three differ in placeholders, types and locking, not in shape,
/// so one body serves them; a macro is the plain way to compile it once per connection type
/// (diesel's generic bounds for `sql_query` over any backend are longer than the code).
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
macro_rules! store {
    (
        $conn:ty,
        schema: $schema:expr,
        lock: $lock:expr,
        unlock: $unlock:expr,
        delete_expired: $delete_expired:expr,
        find: $find:expr,
        record: $record:expr,
        purge: $purge:expr $(,)?
    ) => {
        impl sealed::Store for $conn {
            async fn create_table(&mut self) -> QueryResult<()> {
                use diesel_async::SimpleAsyncConnection;
                self.batch_execute($schema).await?;
                UpgradeTable::upgrade_table(self).await
            }

            async fn try_lock(&mut self, key: &str) -> QueryResult<bool> {
                use diesel_async::RunQueryDsl;
                let lock: Option<&str> = $lock;
                let Some(sql) = lock else {
                    return Ok(true);
                };
                let locked: Locked = diesel::sql_query(sql)
                    .bind::<Text, _>(key)
                    .get_result(self)
                    .await?;
                Ok(locked.locked == Some(1))
            }

            async fn unlock(&mut self, key: &str) -> QueryResult<()> {
                use diesel_async::RunQueryDsl;
                let unlock: Option<&str> = $unlock;
                if let Some(sql) = unlock {
                    diesel::sql_query(sql)
                        .bind::<Text, _>(key)
                        .execute(self)
                        .await?;
                }
                Ok(())
            }

            async fn delete_expired(&mut self, key: &str, cutoff: i64) -> QueryResult<usize> {
                use diesel_async::RunQueryDsl;
                diesel::sql_query($delete_expired)
                    .bind::<Text, _>(key)
                    .bind::<BigInt, _>(cutoff)
                    .execute(self)
                    .await
            }

            async fn find(&mut self, key: &str) -> QueryResult<Option<Recorded>> {
                use diesel::OptionalExtension;
                use diesel_async::RunQueryDsl;
                diesel::sql_query($find)
                    .bind::<Text, _>(key)
                    .get_result(self)
                    .await
                    .optional()
            }

            async fn record(&mut self, row: &Record<'_>) -> QueryResult<()> {
                use diesel_async::RunQueryDsl;
                diesel::sql_query($record)
                    .bind::<Text, _>(row.key)
                    .bind::<Binary, _>(row.fingerprint)
                    .bind::<SmallInt, _>(row.status)
                    .bind::<Binary, _>(row.body)
                    .bind::<BigInt, _>(row.created_at)
                    .execute(self)
                    .await?;
                Ok(())
            }

            async fn purge(&mut self, cutoff: i64) -> QueryResult<usize> {
                use diesel_async::RunQueryDsl;
                diesel::sql_query($purge)
                    .bind::<BigInt, _>(cutoff)
                    .execute(self)
                    .await
            }
        }
    };
}

// PostgreSQL: an advisory lock scoped to the transaction, keyed by a 64-bit hash of the key; it
// is released by COMMIT or ROLLBACK, or when the session ends.
#[cfg(feature = "postgres")]
store!(
    diesel_async::AsyncPgConnection,
    schema: POSTGRES_SCHEMA,
    lock: Some(
        "SELECT CASE WHEN pg_try_advisory_xact_lock(hashtextextended($1, 0)) THEN 1 ELSE 0 END::bigint AS locked"
    ),
    unlock: None,
    delete_expired: "DELETE FROM ballast_idempotency WHERE idempotency_key = $1 AND created_at < $2",
    find: "SELECT fingerprint, status, body FROM ballast_idempotency WHERE idempotency_key = $1",
    record: "INSERT INTO ballast_idempotency (idempotency_key, fingerprint, status, body, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
    purge: "DELETE FROM ballast_idempotency WHERE created_at < $1",
);

/// What a backend does to a keys table an earlier version made, after creating it if missing.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
trait UpgradeTable {
    fn upgrade_table(&mut self) -> impl Future<Output = QueryResult<()>> + Send {
        async { Ok(()) }
    }
}

/// PostgreSQL compares text byte for byte already.
#[cfg(feature = "postgres")]
impl UpgradeTable for diesel_async::AsyncPgConnection {}

/// SQLite compares text byte for byte already.
#[cfg(feature = "sqlite")]
impl UpgradeTable
    for diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>
{
}

/// A key column an earlier version made case-insensitive (MariaDB's default collation) is made
/// byte for byte, once.
#[cfg(feature = "mysql")]
impl UpgradeTable for diesel_async::AsyncMysqlConnection {
    async fn upgrade_table(&mut self) -> QueryResult<()> {
        use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
        #[derive(diesel::QueryableByName)]
        struct Collation {
            #[diesel(sql_type = Nullable<Text>)]
            collation: Option<String>,
        }
        let found: Vec<Collation> = diesel::sql_query(
            "SELECT COLLATION_NAME AS collation FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'ballast_idempotency' \
             AND COLUMN_NAME = 'idempotency_key'",
        )
        .load(self)
        .await?;
        if found.iter().any(|column| {
            column
                .collation
                .as_deref()
                .is_some_and(|c| !c.ends_with("_bin"))
        }) {
            self.batch_execute(
                "ALTER TABLE ballast_idempotency MODIFY idempotency_key \
                 VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL",
            )
            .await?;
        }
        Ok(())
    }
}

// MySQL and MariaDB: a named lock of the session (lock names are at most 64 characters: a hash
// of the key), released explicitly after the transaction, or when the session ends.
#[cfg(feature = "mysql")]
store!(
    diesel_async::AsyncMysqlConnection,
    schema: MYSQL_SCHEMA,
    lock: Some("SELECT CAST(GET_LOCK(CONCAT('ballast:', LEFT(SHA2(?, 256), 56)), 0) AS SIGNED) AS locked"),
    unlock: Some("DO RELEASE_LOCK(CONCAT('ballast:', LEFT(SHA2(?, 256), 56)))"),
    delete_expired: "DELETE FROM ballast_idempotency WHERE idempotency_key = ? AND created_at < ?",
    find: "SELECT fingerprint, status, body FROM ballast_idempotency WHERE idempotency_key = ?",
    record: "INSERT INTO ballast_idempotency (idempotency_key, fingerprint, status, body, created_at) \
             VALUES (?, ?, ?, ?, ?)",
    purge: "DELETE FROM ballast_idempotency WHERE created_at < ?",
);

// SQLite: writers take turns on the whole file. The transaction's first statement is a write
// (`delete_expired`), so it holds the write lock before it reads the key: a concurrent repeat
// waits for the first to finish (the pool's `busy_timeout`), then replays its outcome.
#[cfg(feature = "sqlite")]
store!(
    diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>,
    schema: SQLITE_SCHEMA,
    lock: None,
    unlock: None,
    delete_expired: "DELETE FROM ballast_idempotency WHERE idempotency_key = ? AND created_at < ?",
    find: "SELECT fingerprint, status, body FROM ballast_idempotency WHERE idempotency_key = ?",
    record: "INSERT INTO ballast_idempotency (idempotency_key, fingerprint, status, body, created_at) \
             VALUES (?, ?, ?, ?, ?)",
    purge: "DELETE FROM ballast_idempotency WHERE created_at < ?",
);
