//! SQLite failures provoked on a real (bundled) SQLite file, classified as diesel reports them.
//! SQLite needs no server, so these tests always run.

use ballast_core::{Cause, Code, DriverCode, Failure};
use diesel::connection::SimpleConnection;
use diesel::{Connection, RunQueryDsl, SqliteConnection};

/// A database file in a fresh temporary directory, removed at the end.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(ballast_testkit::db::unique_name("ballast_sqlite"));
        std::fs::create_dir_all(&dir).unwrap();
        TempFile(dir)
    }

    fn path(&self) -> String {
        self.0.join("test.db").to_string_lossy().into_owned()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_held_write_lock_is_busy_and_retryable() {
    let file = TempFile::new();
    let mut holder = SqliteConnection::establish(&file.path()).unwrap();
    holder
        .batch_execute(
            "CREATE TABLE t (id INTEGER PRIMARY KEY); BEGIN IMMEDIATE; INSERT INTO t VALUES (1);",
        )
        .unwrap();

    let mut writer = SqliteConnection::establish(&file.path()).unwrap();
    writer.batch_execute("PRAGMA busy_timeout = 0").unwrap();
    let error = diesel::sql_query("INSERT INTO t VALUES (2)")
        .execute(&mut writer)
        .unwrap_err();
    let failure = Failure::from(error);
    assert_eq!(failure.cause(), Cause::Busy, "{failure:?}");
    assert_eq!(failure.code(), Code::DbConnection);
    assert!(failure.retryable());
    assert_eq!(failure.driver_code(), Some(DriverCode::Sqlite(5)));

    // Once the holder commits, the same write goes through.
    holder.batch_execute("COMMIT").unwrap();
    diesel::sql_query("INSERT INTO t VALUES (2)")
        .execute(&mut writer)
        .unwrap();
}

#[test]
fn statement_errors_are_critical() {
    let file = TempFile::new();
    let mut conn = SqliteConnection::establish(&file.path()).unwrap();
    conn.batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        .unwrap();
    for sql in ["SELEC 1", "INSERT INTO missing VALUES (1)"] {
        let failure = Failure::from(conn.batch_execute(sql).unwrap_err());
        assert_eq!(failure.cause(), Cause::Query, "{sql}: {failure:?}");
        assert_eq!(failure.code(), Code::Critical);
        assert!(!failure.retryable());
    }
}

/// The errors a request's data causes are the client's: 409 for a conflict with stored rows,
/// 422 for a value the table refuses.
#[test]
fn constraint_errors_are_the_clients() {
    let file = TempFile::new();
    let mut conn = SqliteConnection::establish(&file.path()).unwrap();
    conn.batch_execute(
        "PRAGMA foreign_keys = ON;
         CREATE TABLE parent (id INTEGER PRIMARY KEY);
         CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE CHECK (length(name) < 5),
                         parent INTEGER REFERENCES parent (id));
         INSERT INTO parent VALUES (1);
         INSERT INTO t VALUES (1, 'a', 1);",
    )
    .unwrap();
    for (sql, cause, code) in [
        (
            "INSERT INTO t VALUES (1, 'b', NULL)",
            Cause::UniqueViolation,
            Code::ConstraintViolation,
        ),
        (
            "INSERT INTO t VALUES (2, 'a', NULL)",
            Cause::UniqueViolation,
            Code::ConstraintViolation,
        ),
        (
            "INSERT INTO t VALUES (2, 'b', 7)",
            Cause::ForeignKeyViolation,
            Code::ConstraintViolation,
        ),
        (
            "DELETE FROM parent",
            Cause::ForeignKeyViolation,
            Code::ConstraintViolation,
        ),
        (
            "INSERT INTO t VALUES (2, NULL, NULL)",
            Cause::InvalidData,
            Code::InvalidData,
        ),
        (
            "INSERT INTO t VALUES (2, 'toolong', NULL)",
            Cause::InvalidData,
            Code::InvalidData,
        ),
    ] {
        let failure = Failure::from(conn.batch_execute(sql).unwrap_err());
        assert_eq!(
            (failure.cause(), failure.code()),
            (cause, code),
            "{sql}: {failure:?}"
        );
        assert!(!failure.retryable());
    }
}

#[test]
fn a_file_that_cannot_be_opened_is_an_init_error() {
    let file = TempFile::new();
    let inside_missing_dir = format!("{}/no/such/dir/test.db", file.0.display());
    let Err(error) = SqliteConnection::establish(&inside_missing_dir) else {
        panic!("opened a file in a directory that does not exist");
    };
    let failure = Failure::from(error);
    assert_eq!(failure.cause(), Cause::DatabaseMissing, "{failure:?}");
    assert_eq!(failure.code(), Code::DbInit);
    assert!(!failure.retryable());

    // A file that is not a database.
    let not_a_db = file.0.join("garbage.db");
    std::fs::write(&not_a_db, vec![0x42; 4096]).unwrap();
    let mut conn = SqliteConnection::establish(&not_a_db.to_string_lossy()).unwrap();
    let failure = Failure::from(
        conn.batch_execute("SELECT * FROM sqlite_master")
            .unwrap_err(),
    );
    assert_eq!(failure.cause(), Cause::InvalidConfig, "{failure:?}");
    assert_eq!(failure.driver_code(), Some(DriverCode::Sqlite(26)));
}
