//! libpq's URL forms against real servers: Unix sockets the libpq way, several hosts (a dead one
//! skipped), `target_session_attrs` choosing between a private primary and its streaming
//! replica, `load_balance_hosts=random`, and a cancel request sent to the host the connection
//! is on.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ballast_pool::{PoolConfig, SharedPool};
use ballast_testkit::cluster::PrivateCluster;
use ballast_testkit::db;
use diesel::sql_types::{Bool, Integer};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

type Pool = SharedPool<AsyncPgConnection>;

fn pool(url: &str) -> Pool {
    SharedPool::new(PoolConfig::from_url(url).unwrap_or_else(|error| panic!("{url}: {error}")))
        .unwrap()
}

#[derive(diesel::QueryableByName)]
struct Server {
    #[diesel(sql_type = Bool)]
    standby: bool,
    #[diesel(sql_type = Integer)]
    port: i32,
}

/// Whether the pool's connection is on a standby, and the port of its server.
async fn server(pool: &Pool) -> (bool, u16) {
    let mut conn = pool.get().await.unwrap();
    let server: Server = diesel::sql_query(
        "SELECT pg_is_in_recovery() AS standby, current_setting('port')::int AS port",
    )
    .get_result(&mut *conn)
    .await
    .unwrap();
    (server.standby, u16::try_from(server.port).unwrap())
}

/// Makes the server `admin` is connected to accept only reads (as a demoted primary does), or
/// writes again.
async fn read_only(admin: &tokio_postgres::Client, on: bool) {
    let setting = if on {
        "ALTER SYSTEM SET default_transaction_read_only = on"
    } else {
        "ALTER SYSTEM RESET default_transaction_read_only"
    };
    // ALTER SYSTEM runs outside a transaction: one statement per call.
    admin.batch_execute(setting).await.unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn unix_sockets_the_libpq_way() {
    let Some(url) = db::postgres_url("unix_sockets_the_libpq_way") else {
        return;
    };
    let port = db::socket_addr(&url).port();
    let socket = format!("/var/run/postgresql/.s.PGSQL.{port}");
    assert!(
        std::path::Path::new(&socket).exists(),
        "the machine's PostgreSQL has no socket at {socket}"
    );
    for form in [
        format!("postgres://postgres@/test?port={port}"),
        format!("postgres:///test?user=postgres&port={port}"),
        format!("postgres://postgres@/test?host=/var/run/postgresql&port={port}"),
        format!("postgres://postgres@:{port}/test?host=/var/run/postgresql"),
        format!("postgresql://postgres@%2Fvar%2Frun%2Fpostgresql:{port}/test"),
    ] {
        let pool = pool(&form);
        let mut conn = pool
            .get()
            .await
            .unwrap_or_else(|failure| panic!("{form}: {}", failure.report()));
        diesel::sql_query("SELECT 1")
            .execute(&mut *conn)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_host_that_refuses_is_skipped() {
    let Some(url) = db::postgres_url("a_host_that_refuses_is_skipped") else {
        return;
    };
    let live = db::socket_addr(&url);
    let dead = db::free_port().unwrap();
    let pool = pool(&format!(
        "postgres://postgres@127.0.0.1:{dead},127.0.0.1:{}/test?connect_timeout=2",
        live.port()
    ));
    let started = Instant::now();
    assert_eq!(server(&pool).await.1, live.port());
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_session_attrs_choose_between_primary_and_replica() {
    if db::postgres_url("target_session_attrs_choose_between_primary_and_replica").is_none() {
        return;
    }
    let primary = PrivateCluster::start().unwrap();
    let mut replica = PrivateCluster::replica_of(&primary, &[]).unwrap();
    let (p, r) = (primary.port(), replica.port());
    // The replica first: `any` takes it, the others choose.
    let url = |attrs: &str| {
        format!("postgres://postgres@127.0.0.1:{r},127.0.0.1:{p}/postgres?target_session_attrs={attrs}&connect_timeout=3")
    };
    for (attrs, standby, port) in [
        ("any", true, r),
        ("read-write", false, p),
        ("primary", false, p),
        ("read-only", true, r),
        ("standby", true, r),
        ("prefer-standby", true, r),
    ] {
        assert_eq!(server(&pool(&url(attrs))).await, (standby, port), "{attrs}");
    }

    // The abandoned statement of a connection on the second host is cancelled there: the
    // cancel request goes to the host the connection is on.
    let standby_pool = pool(&format!(
        "postgres://postgres@127.0.0.1:{p},127.0.0.1:{r}/postgres?target_session_attrs=standby&connection_limit=1&application_name=ballast_cancel"
    ));
    assert_eq!(server(&standby_pool).await, (true, r));
    let abandoned = tokio::time::timeout(
        Duration::from_millis(300),
        support::hold_postgres(&standby_pool, 30.0),
    );
    assert!(abandoned.await.is_err(), "the statement was still running");
    let dropped = Instant::now();
    assert_eq!(
        server(&standby_pool).await,
        (true, r),
        "the same connection, idle again"
    );
    println!(
        "cancel on the second host: next checkout {:?} after the drop",
        dropped.elapsed()
    );
    assert!(dropped.elapsed() < Duration::from_secs(2));
    assert_eq!(standby_pool.stats().cancelled, 1);

    // `load_balance_hosts=random`: new pools spread over both hosts.
    let mut seen = HashSet::new();
    for _ in 0..24 {
        let pool = pool(&format!(
            "postgres://postgres@127.0.0.1:{p},127.0.0.1:{r}/postgres?load_balance_hosts=random"
        ));
        seen.insert(server(&pool).await.1);
        pool.close().await;
    }
    assert_eq!(seen, HashSet::from([p, r]), "both hosts chosen");

    // A server that turned read-only under a read-write pool (an old primary back as a
    // standby): a write is refused with `25006`, a retryable failure that ran nothing, the
    // connection is closed rather than reused, and readiness says there is no writable primary.
    let admin = db::pg_connect(&primary.url()).await;
    admin
        .batch_execute("CREATE TABLE t (id int)")
        .await
        .unwrap();
    let writer = pool(&url("read-write"));
    assert_eq!(server(&writer).await, (false, p));
    writer.readiness().await.unwrap();
    read_only(&admin, true).await;
    let closed_before = writer.stats().closed_broken;
    let mut conn = writer.get().await.unwrap();
    let failure = ballast_core::Failure::from(
        diesel::sql_query("INSERT INTO t VALUES (1)")
            .execute(&mut *conn)
            .await
            .unwrap_err(),
    );
    drop(conn);
    assert_eq!(
        failure.cause(),
        ballast_core::Cause::ReadOnly,
        "{}",
        failure.report()
    );
    assert_eq!(failure.reach(), ballast_core::Reach::NotSent);
    assert!(failure.may_retry(false), "a POST may repeat it");
    assert_eq!(
        writer.stats().closed_broken,
        closed_before + 1,
        "not reused"
    );
    let not_ready = writer.readiness().await.unwrap_err();
    assert_eq!(
        not_ready.code().as_str(),
        "DB_CONNECTION_ERROR",
        "{}",
        not_ready.report()
    );
    println!("readiness with no writable primary: {}", not_ready.report());
    read_only(&admin, false).await;

    // With no standby left, `prefer-standby` takes the primary; `standby` finds none.
    replica.stop().unwrap();
    assert_eq!(server(&pool(&url("prefer-standby"))).await, (false, p));
    let none = pool(&url("standby"));
    let failure = none.get().await.unwrap_err();
    assert_eq!(
        failure.code().as_str(),
        "DB_CONNECTION_ERROR",
        "{}",
        failure.report()
    );
}
