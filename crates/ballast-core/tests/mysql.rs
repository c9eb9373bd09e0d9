//! MySQL/MariaDB failures provoked on the real server (and `1040` by the testkit's fake server),
//! classified through `From<mysql_async::Error>`.

use ballast_core::{Cause, Code, DriverCode, Failure, Reach};
use ballast_testkit::db::{self, MysqlDatabase, MysqlUser};
use ballast_testkit::fake::FakeServer;
use ballast_testkit::proxy::{FaultProxy, Mode};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

async fn connect(url: &str) -> Result<Conn, Failure> {
    Ok(Conn::from_url(url).await?)
}

fn assert_failure(failure: &Failure, cause: Cause, code: Code, retryable: bool, reach: Reach) {
    assert_eq!(failure.cause(), cause, "{failure:?}");
    assert_eq!(failure.code(), code, "{failure:?}");
    assert_eq!(failure.retryable(), retryable, "{failure:?}");
    assert_eq!(failure.reach(), reach, "{failure:?}");
}

#[tokio::test]
async fn user_connection_limit_is_too_many_connections() {
    let Some(url) = db::mysql_url("user_connection_limit_is_too_many_connections") else {
        return;
    };
    let database = MysqlDatabase::create(&url).await;
    let user = MysqlUser::create(&url, database.name(), None, Some(1)).await;
    let _held = connect(user.url()).await.unwrap();
    let failure = connect(user.url()).await.expect_err("over the limit");
    assert_failure(
        &failure,
        Cause::TooManyConnections,
        Code::DbConnection,
        true,
        Reach::NotSent,
    );
    assert_eq!(failure.driver_code(), Some(DriverCode::MySql(1226)));
}

#[tokio::test]
async fn server_wide_too_many_connections_from_the_fake_server() {
    let server = FakeServer::mysql(1040, "08004", "Too many connections")
        .await
        .unwrap();
    let failure = connect(&server.url("test")).await.expect_err("refused");
    assert_failure(
        &failure,
        Cause::TooManyConnections,
        Code::DbConnection,
        true,
        Reach::NotSent,
    );
    assert_eq!(failure.driver_code(), Some(DriverCode::MySql(1040)));
}

#[tokio::test]
async fn wrong_password_and_missing_database_are_init_errors() {
    let Some(url) = db::mysql_url("wrong_password_and_missing_database") else {
        return;
    };
    const CANARY: &str = "canary-s3cret";
    let database = MysqlDatabase::create(&url).await;
    let user = MysqlUser::create(&url, database.name(), Some("right-password"), None).await;
    let wrong = db::with_user(user.url(), user.name(), Some(CANARY));
    let failure = connect(&wrong).await.expect_err("wrong password");
    assert_failure(
        &failure,
        Cause::AuthFailed,
        Code::DbInit,
        false,
        Reach::NotSent,
    );
    assert_eq!(failure.driver_code(), Some(DriverCode::MySql(1045)));
    assert!(!format!("{failure:?}").contains(CANARY));
    assert!(!failure.to_string().contains(CANARY));

    let missing = db::with_database(&url, &db::unique_name("ballast_missing"));
    let failure = connect(&missing).await.expect_err("no such database");
    assert_failure(
        &failure,
        Cause::DatabaseMissing,
        Code::DbInit,
        false,
        Reach::NotSent,
    );
    assert_eq!(failure.driver_code(), Some(DriverCode::MySql(1049)));
}

#[tokio::test]
async fn deadlock_is_1213_conflict_and_lock_wait_is_1205_busy() {
    let Some(url) = db::mysql_url("deadlock_is_1213_conflict") else {
        return;
    };
    let database = MysqlDatabase::create(&url).await;
    db::mysql_execute(
        database.url(),
        &[
            "CREATE TABLE t (id INT PRIMARY KEY, v INT) ENGINE=InnoDB",
            "INSERT INTO t VALUES (1, 0), (2, 0)",
        ],
    )
    .await;
    let mut first = connect(database.url()).await.unwrap();
    let mut second = connect(database.url()).await.unwrap();
    for (conn, id) in [(&mut first, 1), (&mut second, 2)] {
        conn.query_drop("START TRANSACTION").await.unwrap();
        conn.query_drop(format!("UPDATE t SET v = 1 WHERE id = {id}"))
            .await
            .unwrap();
    }
    let (a, b) = tokio::join!(
        first.query_drop("UPDATE t SET v = 1 WHERE id = 2"),
        second.query_drop("UPDATE t SET v = 2 WHERE id = 1"),
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
    assert_eq!(failure.driver_code(), Some(DriverCode::MySql(1213)));
    let _ = first.query_drop("ROLLBACK").await;
    let _ = second.query_drop("ROLLBACK").await;

    // A lock held past innodb_lock_wait_timeout.
    first.query_drop("START TRANSACTION").await.unwrap();
    first
        .query_drop("UPDATE t SET v = 5 WHERE id = 1")
        .await
        .unwrap();
    second
        .query_drop("SET SESSION innodb_lock_wait_timeout = 1")
        .await
        .unwrap();
    let error = second
        .query_drop("UPDATE t SET v = 6 WHERE id = 1")
        .await
        .unwrap_err();
    let failure = Failure::from(error);
    assert_failure(
        &failure,
        Cause::Busy,
        Code::DbConnection,
        true,
        Reach::MaybeSent,
    );
    assert_eq!(failure.driver_code(), Some(DriverCode::MySql(1205)));
}

#[tokio::test]
async fn syntax_error_is_critical_and_refused_port_is_unreachable() {
    let Some(url) = db::mysql_url("syntax_error_is_critical") else {
        return;
    };
    let mut conn = connect(&url).await.unwrap();
    let failure = Failure::from(conn.query_drop("SELEC 1").await.unwrap_err());
    assert_failure(
        &failure,
        Cause::Query,
        Code::Critical,
        false,
        Reach::MaybeSent,
    );
    assert_eq!(failure.driver_code(), Some(DriverCode::MySql(1064)));
    assert_eq!(failure.status(), 500);

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
async fn killed_connection_is_connection_lost() {
    let Some(url) = db::mysql_url("killed_connection_is_connection_lost") else {
        return;
    };
    let mut conn = connect(&url).await.unwrap();
    let id = conn.id();
    let mut admin = connect(&url).await.unwrap();
    admin
        .query_drop(format!("KILL CONNECTION {id}"))
        .await
        .unwrap();
    let failure = Failure::from(conn.query_drop("SELECT 1").await.unwrap_err());
    assert_eq!(failure.cause(), Cause::ConnectionLost, "{failure:?}");
    assert!(failure.retryable());
}

/// What a handler's plain `?` sees on MariaDB: diesel-async's error. The request's own data is
/// the client's problem (409, 422); a connection killed under a query is a lost connection.
#[tokio::test]
async fn data_errors_through_diesel_are_the_clients_and_a_killed_connection_is_lost() {
    let Some(url) = db::mysql_url("data_errors_through_diesel") else {
        return;
    };
    use diesel::sql_types::{Nullable, Text};
    use diesel_async::{AsyncConnection, AsyncMysqlConnection, RunQueryDsl};
    let database = MysqlDatabase::create(&url).await;
    db::mysql_execute(
        database.url(),
        &[
            "CREATE TABLE parent (id INT PRIMARY KEY) ENGINE=InnoDB",
            "INSERT INTO parent VALUES (1)",
            "CREATE TABLE t (name VARCHAR(5) NOT NULL UNIQUE CHECK (name <> 'bad'), parent INT, n INT DEFAULT 0,
                FOREIGN KEY (parent) REFERENCES parent (id)) ENGINE=InnoDB",
            "INSERT INTO t (name, parent) VALUES ('a', 1)",
        ],
    )
    .await;
    let mut conn = AsyncMysqlConnection::establish(database.url())
        .await
        .unwrap();
    for (name, parent, cause) in [
        (Some("toolong"), None, Cause::InvalidData),
        (None, None, Cause::InvalidData),
        (Some("bad"), None, Cause::InvalidData),
        (Some("x"), Some("x"), Cause::InvalidData),
        (Some("a"), None, Cause::UniqueViolation),
        (Some("c"), Some("7"), Cause::ForeignKeyViolation),
    ] {
        let result = diesel::sql_query("INSERT INTO t (name, parent) VALUES (?, ?)")
            .bind::<Nullable<Text>, _>(name)
            .bind::<Nullable<Text>, _>(parent)
            .execute(&mut conn)
            .await;
        let failure = Failure::from(result.unwrap_err());
        assert_eq!(failure.cause(), cause, "{name:?} {parent:?}: {failure:?}");
        assert!(!failure.retryable());
        assert!(failure.code().is_client_error());
    }
    let error = diesel::sql_query("DELETE FROM parent")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(Failure::from(error).cause(), Cause::ForeignKeyViolation);
    let error = diesel::sql_query("SELEC 1")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(Failure::from(error).cause(), Cause::Query);

    let id: u32 = {
        #[derive(diesel::QueryableByName)]
        struct Id {
            #[diesel(sql_type = diesel::sql_types::Unsigned<diesel::sql_types::BigInt>)]
            id: u64,
        }
        let row: Id = diesel::sql_query("SELECT CONNECTION_ID() AS id")
            .get_result(&mut conn)
            .await
            .unwrap();
        u32::try_from(row.id).unwrap()
    };
    let sleeping = diesel::sql_query("SELECT SLEEP(5)").execute(&mut conn);
    let kill = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        db::mysql_execute(&url, &[&format!("KILL CONNECTION {id}")]).await;
    };
    let (result, ()) = tokio::join!(sleeping, kill);
    let failure = Failure::from(result.unwrap_err());
    assert_eq!(failure.cause(), Cause::ConnectionLost, "{failure:?}");
    assert!(failure.retryable());
}
