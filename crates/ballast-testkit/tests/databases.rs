//! The database helpers against the real PostgreSQL and MariaDB servers, and the fake servers
//! against the real drivers.

use ballast_testkit::db::{self, Backends, MysqlDatabase, MysqlUser, PgDatabase, PgRole};
use ballast_testkit::fake::FakeServer;
use mysql_async::prelude::Queryable;
use tokio_postgres::NoTls;

#[tokio::test]
async fn pg_database_is_created_used_and_dropped() {
    let Some(url) = db::postgres_url("pg_database_is_created_used_and_dropped") else {
        return;
    };
    let database = PgDatabase::create(&url).await;
    let name = database.name().to_owned();
    let client = db::pg_connect(database.url()).await;
    let row = client
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), name);
    assert_eq!(
        db::pg_backends(&url, &Backends::Database(name.clone()))
            .await
            .len(),
        1
    );
    drop(database);
    let admin = db::pg_connect(&url).await;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap();
    assert!(exists.is_none(), "dropped even with a session open");
}

#[tokio::test]
async fn pg_role_connection_limit_yields_53300() {
    let Some(url) = db::postgres_url("pg_role_connection_limit_yields_53300") else {
        return;
    };
    let role = PgRole::create(&url, Some(2)).await;
    let first = db::pg_connect(role.url()).await;
    let second = db::pg_connect(role.url()).await;
    let error = tokio_postgres::connect(role.url(), NoTls)
        .await
        .err()
        .expect("the third connection is over the limit");
    assert_eq!(error.code().map(|code| code.code()), Some("53300"));
    assert_eq!(role.backends().await.len(), 2);
    drop((first, second));
}

#[tokio::test]
async fn fake_postgres_answers_with_the_chosen_sqlstate() {
    for (state, message) in [
        ("57P03", "the database system is starting up"),
        ("28P01", "password authentication failed for user \"app\""),
        ("53300", "lo siento, ya tenemos demasiados clientes"),
    ] {
        let server = FakeServer::postgres(state, message).await.unwrap();
        let error = tokio_postgres::connect(&server.url("app"), NoTls)
            .await
            .err()
            .expect("refused");
        let db_error = error.as_db_error().expect("a server error");
        assert_eq!(db_error.code().code(), state);
        assert_eq!(db_error.message(), message);
        assert_eq!(db_error.severity(), "FATAL");
        assert_eq!(server.connections(), 1);
    }
}

#[tokio::test]
async fn fake_postgres_declines_tls_requests() {
    let server = FakeServer::postgres("57P03", "starting up").await.unwrap();
    // `sslmode=prefer` with a client that cannot do TLS still sends no SSLRequest; speak the
    // protocol by hand to check the server's answer to one.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    stream.write_all(&8u32.to_be_bytes()).await.unwrap();
    stream
        .write_all(&80_877_103u32.to_be_bytes())
        .await
        .unwrap();
    assert_eq!(stream.read_u8().await.unwrap(), b'N');
}

#[tokio::test]
async fn fake_mysql_answers_with_the_chosen_error_number() {
    let server = FakeServer::mysql(1040, "08004", "Too many connections")
        .await
        .unwrap();
    match mysql_async::Conn::from_url(server.url("test")).await {
        Err(mysql_async::Error::Server(error)) => assert_eq!(error.code, 1040),
        other => panic!("expected a server error, got {:?}", other.map(|_| ())),
    }
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn mysql_user_limit_yields_1226_and_is_counted() {
    let Some(url) = db::mysql_url("mysql_user_limit_yields_1226_and_is_counted") else {
        return;
    };
    let database = MysqlDatabase::create(&url).await;
    let user = MysqlUser::create(&url, database.name(), Some("pw-1"), Some(2)).await;
    let mut first = db::mysql_connect(user.url()).await;
    let second = db::mysql_connect(user.url()).await;
    let current: Option<String> = first.query_first("SELECT DATABASE()").await.unwrap();
    assert_eq!(current.as_deref(), Some(database.name()));
    match mysql_async::Conn::from_url(user.url()).await {
        // A per-account `MAX_USER_CONNECTIONS` answers 1226 (ER_USER_LIMIT_REACHED); the global
        // `max_user_connections` variable would answer 1203. Both are "too many connections".
        Err(mysql_async::Error::Server(error)) => assert_eq!(error.code, 1226),
        other => panic!("expected 1226, got {:?}", other.map(|_| ())),
    }
    assert_eq!(user.connections().await, 2);
    drop((first, second));
}

#[tokio::test]
async fn mysql_database_is_dropped() {
    let Some(url) = db::mysql_url("mysql_database_is_dropped") else {
        return;
    };
    let database = MysqlDatabase::create(&url).await;
    let name = database.name().to_owned();
    drop(database);
    let mut admin = db::mysql_connect(&url).await;
    let found: Option<String> = admin
        .exec_first(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
            (name,),
        )
        .await
        .unwrap();
    assert!(found.is_none());
}

#[test]
fn urls_are_rewritten() {
    let url = "postgres://u:p@db.example:5432/app?sslmode=disable";
    let addr = "127.0.0.1:6000".parse().unwrap();
    assert_eq!(
        db::with_host_port(url, addr),
        "postgres://u:p@127.0.0.1:6000/app?sslmode=disable"
    );
    assert_eq!(
        db::with_database(url, "other"),
        "postgres://u:p@db.example:5432/other?sslmode=disable"
    );
    assert_eq!(
        db::with_user(url, "role", None),
        "postgres://role@db.example:5432/app?sslmode=disable"
    );
    assert_ne!(db::unique_name("x"), db::unique_name("x"));
}
