//! PostgreSQL failures provoked for real (and, where a shared server cannot produce them, by the
//! testkit's fake server), classified through `From<tokio_postgres::Error>` and diesel-async.

use std::time::Duration;

use ballast_core::{Cause, Code, DriverCode, Failure, Reach, SqlState};
use ballast_testkit::db::{self, Backends, PgDatabase, PgRole};
use ballast_testkit::fake::FakeServer;
use ballast_testkit::proxy::{FaultProxy, Mode};
use tokio_postgres::{Client, NoTls};

async fn connect(url: &str) -> Result<Client, Failure> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

fn assert_failure(failure: &Failure, cause: Cause, code: Code, retryable: bool, reach: Reach) {
    assert_eq!(failure.cause(), cause, "{failure:?}");
    assert_eq!(failure.code(), code, "{failure:?}");
    assert_eq!(failure.retryable(), retryable, "{failure:?}");
    assert_eq!(failure.reach(), reach, "{failure:?}");
}

fn sqlstate(code: &str) -> Option<DriverCode> {
    Some(DriverCode::Postgres(SqlState::new(code).unwrap()))
}

#[tokio::test]
async fn too_many_connections_for_a_role_is_53300_retryable_not_sent() {
    let Some(url) = db::postgres_url("too_many_connections_for_a_role") else {
        return;
    };
    let role = PgRole::create(&url, Some(1)).await;
    let _held = connect(role.url()).await.unwrap();
    let failure = connect(role.url()).await.expect_err("over the limit");
    assert_failure(
        &failure,
        Cause::TooManyConnections,
        Code::DbConnection,
        true,
        Reach::NotSent,
    );
    assert_eq!(failure.driver_code(), sqlstate("53300"));
    assert!(
        failure.may_retry(false),
        "nothing ran: a POST may be retried"
    );
}

#[tokio::test]
async fn missing_database_is_3d000_init_error_not_retryable() {
    let Some(url) = db::postgres_url("missing_database_is_3d000") else {
        return;
    };
    let missing = db::with_database(&url, &db::unique_name("ballast_missing"));
    let failure = connect(&missing).await.expect_err("no such database");
    assert_failure(
        &failure,
        Cause::DatabaseMissing,
        Code::DbInit,
        false,
        Reach::NotSent,
    );
    assert_eq!(failure.driver_code(), sqlstate("3D000"));
    assert_eq!(failure.status(), 503);
}

#[tokio::test]
async fn refused_connection_is_unreachable_not_sent() {
    let Some(url) = db::postgres_url("refused_connection_is_unreachable") else {
        return;
    };
    let proxy = FaultProxy::start(db::socket_addr(&url)).await.unwrap();
    proxy.set_mode(Mode::Refuse);
    proxy.wait_for_mode().await;
    let failure = connect(&proxy.url(&url)).await.expect_err("refused");
    assert_failure(
        &failure,
        Cause::Unreachable,
        Code::DbConnection,
        true,
        Reach::NotSent,
    );
}

#[tokio::test]
async fn reset_during_a_query_is_connection_lost_maybe_sent() {
    let Some(url) = db::postgres_url("reset_during_a_query") else {
        return;
    };
    let proxy = FaultProxy::start(db::socket_addr(&url)).await.unwrap();
    let client = connect(&proxy.url(&url)).await.unwrap();
    let query = tokio::spawn(async move {
        client
            .query_one("SELECT pg_sleep(5)", &[])
            .await
            .map_err(Failure::from)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.reset_all();
    let failure = query.await.unwrap().expect_err("reset");
    assert_failure(
        &failure,
        Cause::ConnectionLost,
        Code::DbConnection,
        true,
        Reach::MaybeSent,
    );
    assert!(!failure.may_retry(false), "a write may have run");
    assert!(failure.may_retry(true));
}

#[tokio::test]
async fn terminated_backend_is_connection_lost() {
    let Some(url) = db::postgres_url("terminated_backend_is_connection_lost") else {
        return;
    };
    let app = db::unique_name("ballast_core_term");
    let client = connect(&format!("{url}?application_name={app}"))
        .await
        .unwrap();
    client.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(
        db::pg_terminate(&url, &Backends::ApplicationName(app)).await,
        1
    );
    // The first query sees the server's 57P01 or the closed connection, depending on timing;
    // both are a lost connection, and so is every query after it.
    for _ in 0..2 {
        let failure = Failure::from(client.query_one("SELECT 1", &[]).await.unwrap_err());
        assert_failure(
            &failure,
            Cause::ConnectionLost,
            Code::DbConnection,
            true,
            Reach::MaybeSent,
        );
    }
}

#[tokio::test]
async fn deadlock_is_40p01_conflict() {
    let Some(url) = db::postgres_url("deadlock_is_40p01_conflict") else {
        return;
    };
    let database = PgDatabase::create(&url).await;
    db::pg_execute(
        database.url(),
        "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0), (2, 0);",
    )
    .await;
    let first = connect(database.url()).await.unwrap();
    let second = connect(database.url()).await.unwrap();
    first
        .batch_execute("BEGIN; UPDATE t SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    second
        .batch_execute("BEGIN; UPDATE t SET v = 2 WHERE id = 2")
        .await
        .unwrap();
    // Each now waits for the other's row: the server detects the cycle (deadlock_timeout, 1 s)
    // and aborts one of them.
    let (a, b) = tokio::join!(
        first.batch_execute("UPDATE t SET v = 1 WHERE id = 2"),
        second.batch_execute("UPDATE t SET v = 2 WHERE id = 1"),
    );
    let error = match (a, b) {
        (Err(error), Ok(())) | (Ok(()), Err(error)) => error,
        other => panic!("exactly one side must fail: {other:?}"),
    };
    let failure = Failure::from(error);
    assert_failure(
        &failure,
        Cause::Conflict,
        Code::DbConnection,
        true,
        Reach::MaybeSent,
    );
    assert_eq!(failure.driver_code(), sqlstate("40P01"));
}

#[tokio::test]
async fn serialization_failure_is_40001_conflict_also_through_diesel() {
    let Some(url) = db::postgres_url("serialization_failure_is_40001") else {
        return;
    };
    let database = PgDatabase::create(&url).await;
    db::pg_execute(
        database.url(),
        "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0);",
    )
    .await;
    let reader = connect(database.url()).await.unwrap();
    let writer = connect(database.url()).await.unwrap();
    reader
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT v FROM t")
        .await
        .unwrap();
    writer
        .batch_execute("UPDATE t SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    let error = reader
        .batch_execute("UPDATE t SET v = 2 WHERE id = 1")
        .await
        .unwrap_err();
    let failure = Failure::from(error);
    assert_failure(
        &failure,
        Cause::Conflict,
        Code::DbConnection,
        true,
        Reach::MaybeSent,
    );
    assert_eq!(failure.driver_code(), sqlstate("40001"));

    // diesel-async loses the SQLSTATE but keeps the kind: still a conflict.
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    let mut diesel_reader = AsyncPgConnection::establish(database.url()).await.unwrap();
    diesel::sql_query("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut diesel_reader)
        .await
        .unwrap();
    diesel::sql_query("SELECT v FROM t")
        .execute(&mut diesel_reader)
        .await
        .unwrap();
    writer
        .batch_execute("UPDATE t SET v = 3 WHERE id = 1")
        .await
        .unwrap();
    let error = diesel::sql_query("UPDATE t SET v = 4 WHERE id = 1")
        .execute(&mut diesel_reader)
        .await
        .unwrap_err();
    let failure = Failure::from(error);
    assert_eq!(failure.cause(), Cause::Conflict, "{failure:?}");
    assert!(failure.retryable());
}

#[tokio::test]
async fn read_only_statement_timeout_and_bad_queries() {
    let Some(url) = db::postgres_url("read_only_statement_timeout_and_bad_queries") else {
        return;
    };
    let database = PgDatabase::create(&url).await;
    db::pg_execute(database.url(), "CREATE TABLE t (id int PRIMARY KEY)").await;
    let client = connect(database.url()).await.unwrap();

    // (setup, failing statement): the setup runs first, on its own, because a multi-statement
    // batch is one implicit transaction whose characteristics are already fixed.
    let cases = [
        (
            "SET default_transaction_read_only = on",
            "INSERT INTO t VALUES (1)",
            "25006",
            Cause::ReadOnly,
            Code::DbConnection,
            true,
        ),
        (
            "SET default_transaction_read_only = off; SET statement_timeout = 50",
            "SELECT pg_sleep(2)",
            "57014",
            Cause::StatementTimeout,
            Code::DbConnection,
            false,
        ),
        (
            "RESET statement_timeout",
            "SELEC 1",
            "42601",
            Cause::Query,
            Code::Critical,
            false,
        ),
        (
            "INSERT INTO t VALUES (7)",
            "INSERT INTO t VALUES (7)",
            "23505",
            Cause::UniqueViolation,
            Code::ConstraintViolation,
            false,
        ),
    ];
    for (setup, sql, state, cause, code, retryable) in cases {
        client.batch_execute(setup).await.unwrap();
        let failure = Failure::from(client.batch_execute(sql).await.unwrap_err());
        // A read-only server refused the write before doing anything.
        let reach = if state == "25006" {
            Reach::NotSent
        } else {
            Reach::MaybeSent
        };
        assert_failure(&failure, cause, code, retryable, reach);
        assert_eq!(failure.driver_code(), sqlstate(state), "{sql}");
        assert_eq!(failure.status(), code.status());
    }
}

#[tokio::test]
async fn startup_errors_from_the_fake_server_classify_by_code_in_any_language() {
    let cases = [
        (
            "53300",
            "lo siento, ya tenemos demasiados clientes",
            Cause::TooManyConnections,
            Code::DbConnection,
            true,
        ),
        (
            "57P03",
            "el sistema de base de datos está iniciándose",
            Cause::ServerUnavailable,
            Code::DbConnection,
            true,
        ),
        (
            "57P01",
            "terminating connection due to administrator command",
            Cause::ConnectionLost,
            Code::DbConnection,
            true,
        ),
        (
            "08006",
            "connection failure",
            Cause::ConnectionLost,
            Code::DbConnection,
            true,
        ),
        (
            "28P01",
            "la autentificación password falló para el usuario «app»",
            Cause::AuthFailed,
            Code::DbInit,
            false,
        ),
        (
            "28000",
            "no pg_hba.conf entry for host",
            Cause::AuthFailed,
            Code::DbInit,
            false,
        ),
        (
            "53200",
            "out of memory",
            Cause::OutOfMemory,
            Code::Memory,
            true,
        ),
    ];
    for (state, message, cause, code, retryable) in cases {
        let server = FakeServer::postgres(state, message).await.unwrap();
        let failure = connect(&server.url("app")).await.expect_err("refused");
        assert_eq!(failure.cause(), cause, "{state}");
        assert_eq!(failure.code(), code, "{state}");
        assert_eq!(failure.retryable(), retryable, "{state}");
        assert_eq!(failure.driver_code(), sqlstate(state));
        // The server's message is private: the public one is the cause's generic text.
        assert_eq!(failure.public_message(), cause.public_message());
    }
}

#[tokio::test]
async fn connection_error_through_diesel_is_not_sent() {
    let Some(url) = db::postgres_url("connection_error_through_diesel_is_not_sent") else {
        return;
    };
    use diesel_async::{AsyncConnection, AsyncPgConnection};
    let missing = db::with_database(&url, &db::unique_name("ballast_missing"));
    let error = AsyncPgConnection::establish(&missing).await.err().unwrap();
    let failure = Failure::from(error);
    // diesel-async drops the SQLSTATE (3D000 here): the connect was rejected for a reason it
    // does not say, which is not retried.
    assert_eq!(failure.cause(), Cause::Rejected, "{failure:?}");
    assert_eq!(failure.reach(), Reach::NotSent);
    assert!(!failure.retryable());
}

/// What a handler's plain `?` sees: diesel-async's error, SQLSTATE gone. The request's own data
/// is the client's problem (409, 422); a backend terminated under a query is a lost connection.
#[tokio::test]
async fn data_errors_through_diesel_are_the_clients_and_a_killed_backend_is_lost() {
    let Some(url) = db::postgres_url("data_errors_through_diesel") else {
        return;
    };
    use diesel::sql_types::{Nullable, Text};
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    let database = PgDatabase::create(&url).await;
    db::pg_execute(
        database.url(),
        "CREATE TABLE parent (id int PRIMARY KEY);
         INSERT INTO parent VALUES (1);
         CREATE TABLE t (name varchar(5) UNIQUE CHECK (name <> 'bad'), parent int REFERENCES parent (id), n int, m int NOT NULL DEFAULT 0);
         INSERT INTO t VALUES ('a', 1, 0);",
    )
    .await;
    let mut conn = AsyncPgConnection::establish(database.url()).await.unwrap();
    let insert = "INSERT INTO t (name, parent) VALUES ($1, $2::int)";
    for (name, parent, cause, code) in [
        (Some("a\u{0}b"), None, Cause::InvalidData, Code::InvalidData),
        (Some("toolong"), None, Cause::InvalidData, Code::InvalidData),
        (Some("bad"), None, Cause::InvalidData, Code::InvalidData),
        (None, None, Cause::Query, Code::Critical), // no NOT NULL on name: this one is stored
        (Some("x"), Some("x"), Cause::InvalidData, Code::InvalidData),
        (
            Some("a"),
            None,
            Cause::UniqueViolation,
            Code::ConstraintViolation,
        ),
        (
            Some("c"),
            Some("7"),
            Cause::ForeignKeyViolation,
            Code::ConstraintViolation,
        ),
    ] {
        let result = diesel::sql_query(insert)
            .bind::<Nullable<Text>, _>(name)
            .bind::<Nullable<Text>, _>(parent)
            .execute(&mut conn)
            .await;
        if name.is_none() {
            assert!(result.is_ok(), "{result:?}");
            continue;
        }
        let failure = Failure::from(result.unwrap_err());
        assert_failure(&failure, cause, code, false, Reach::MaybeSent);
        assert_eq!(
            failure.status(),
            if cause == Cause::UniqueViolation || cause == Cause::ForeignKeyViolation {
                409
            } else {
                422
            }
        );
    }
    for (sql, cause) in [
        ("UPDATE t SET m = NULL", Cause::InvalidData),
        ("DELETE FROM parent", Cause::ForeignKeyViolation),
        ("SELECT 1 / n FROM t", Cause::InvalidData),
        ("SELEC 1", Cause::Query),
        ("SELECT * FROM missing", Cause::Query),
    ] {
        let error = diesel::sql_query(sql).execute(&mut conn).await.unwrap_err();
        assert_eq!(Failure::from(error).cause(), cause, "{sql}");
    }

    let app = db::unique_name("ballast_core_diesel_term");
    let mut conn =
        AsyncPgConnection::establish(&format!("{}?application_name={app}", database.url()))
            .await
            .unwrap();
    let sleeping = diesel::sql_query("SELECT pg_sleep(5)").execute(&mut conn);
    let terminate = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        db::pg_terminate(&url, &Backends::ApplicationName(app.clone())).await
    };
    let (result, terminated) = tokio::join!(sleeping, terminate);
    assert_eq!(terminated, 1);
    let failure = Failure::from(result.unwrap_err());
    assert_failure(
        &failure,
        Cause::ConnectionLost,
        Code::DbConnection,
        true,
        Reach::MaybeSent,
    );
}
