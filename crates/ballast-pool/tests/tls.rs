//! TLS to the real PostgreSQL (feature `tls`): this machine's server has `ssl = on` with Debian's
//! self-signed certificate for `localhost`, which serves as its own root here.

use std::path::Path;
use std::time::Duration;

use ballast_core::{Cause, Code};
use ballast_pool::{PoolConfig, SharedPool};
use ballast_testkit::db;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

#[derive(diesel::QueryableByName)]
struct Encrypted {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    ssl: bool,
}

fn pool(url: &str, query: &str) -> SharedPool<AsyncPgConnection> {
    let separator = if url.contains('?') { '&' } else { '?' };
    SharedPool::new(PoolConfig::from_url(&format!("{url}{separator}{query}")).unwrap()).unwrap()
}

async fn encrypted(pool: &SharedPool<AsyncPgConnection>) -> bool {
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .get_result::<Encrypted>(&mut *conn)
        .await
        .unwrap()
        .ssl
}

/// The server's certificate and whether it speaks TLS: without both there is nothing to test.
async fn server_has_tls(url: &str) -> bool {
    if !Path::new(SNAKEOIL).exists() {
        println!("skipping: {SNAKEOIL} is missing");
        return false;
    }
    let client = db::pg_connect(url).await;
    let on = client
        .query_one("SHOW ssl", &[])
        .await
        .unwrap()
        .get::<_, String>(0)
        == "on";
    if !on {
        println!("skipping: the server has ssl = off");
    }
    on
}

#[tokio::test]
async fn sslmode_require_encrypts_and_disable_does_not() {
    let Some(url) = db::postgres_url("sslmode_require_encrypts") else {
        return;
    };
    if !server_has_tls(&url).await {
        return;
    }
    assert!(encrypted(&pool(&url, "sslmode=require")).await, "require");
    assert!(
        encrypted(&pool(&url, "sslmode=prefer")).await,
        "prefer, with TLS built in"
    );
    assert!(!encrypted(&pool(&url, "sslmode=disable")).await, "disable");
    assert!(
        !encrypted(&pool(&url, "")).await,
        "nothing said: plain text"
    );
}

#[tokio::test]
async fn verify_full_checks_the_name_and_verify_ca_the_chain() {
    let Some(url) = db::postgres_url("verify_full_checks_the_name") else {
        return;
    };
    if !server_has_tls(&url).await {
        return;
    }
    let localhost = url.replacen("127.0.0.1", "localhost", 1);
    let root = format!("sslrootcert={SNAKEOIL}");
    // The certificate names localhost.
    assert!(encrypted(&pool(&localhost, &format!("sslmode=verify-full&{root}"))).await);
    // verify-ca checks the chain only: the IP address is fine.
    assert!(encrypted(&pool(&url, &format!("sslmode=verify-ca&{root}"))).await);

    // verify-full against 127.0.0.1: not the certificate's name. A configuration error, not
    // retried, and no storm of connects.
    let refused = pool(
        &url,
        &format!("sslmode=verify-full&{root}&pool_timeout=2&connect_timeout=2"),
    );
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let failure = refused.get().await.expect_err("the name does not match");
        assert_eq!(
            failure.cause(),
            Cause::InvalidConfig,
            "{}",
            failure.report()
        );
        assert_eq!(failure.code(), Code::DbInit);
        assert!(!failure.retryable());
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failed fast: {:?}",
        started.elapsed()
    );
    let stats = refused.stats();
    assert!(
        stats.connects + stats.connect_failures <= 5,
        "no connect storm: {stats:?}"
    );

    // verify-full with the public roots only: this self-signed certificate is not trusted.
    let untrusted = pool(&localhost, "sslmode=verify-full&pool_timeout=2");
    let failure = untrusted.get().await.expect_err("not a public CA");
    assert_eq!(failure.code(), Code::DbInit, "{}", failure.report());
}

/// The cancel request for an abandoned statement goes with the same TLS settings as the
/// connection: the statement stops and the encrypted connection is kept.
#[tokio::test]
async fn an_abandoned_statement_is_cancelled_over_tls() {
    let Some(url) = db::postgres_url("an_abandoned_statement_is_cancelled_over_tls") else {
        return;
    };
    if !server_has_tls(&url).await {
        return;
    }
    let app = db::unique_name("ballast_tls_cancel");
    let pool = pool(
        &url,
        &format!("sslmode=require&application_name={app}&connection_limit=1&pool_timeout=30"),
    );
    assert!(encrypted(&pool).await);
    let pid = backend_pid(&pool).await;
    let abandoned = tokio::time::timeout(Duration::from_millis(200), async {
        let mut conn = pool.get().await.unwrap();
        diesel::sql_query("SELECT pg_sleep(20)")
            .execute(&mut *conn)
            .await
    });
    assert!(abandoned.await.is_err(), "the statement was still running");
    let dropped = std::time::Instant::now();
    assert_eq!(
        backend_pid(&pool).await,
        pid,
        "the same connection, kept: the cancel got through"
    );
    let next = dropped.elapsed();
    assert!(encrypted(&pool).await);
    let running = db::pg_backends(&url, &db::Backends::ApplicationName(app))
        .await
        .iter()
        .filter(|backend| backend.is_running("pg_sleep"))
        .count();
    assert!(next < Duration::from_secs(2), "{next:?}");
    assert_eq!(running, 0, "the statement was cancelled on the server");
    let stats = pool.stats();
    assert_eq!((stats.cancelled, stats.closed_broken), (1, 0), "{stats:?}");
}

async fn backend_pid(pool: &SharedPool<AsyncPgConnection>) -> i32 {
    #[derive(diesel::QueryableByName)]
    struct Pid {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        pid: i32,
    }
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result::<Pid>(&mut *conn)
        .await
        .unwrap()
        .pid
}
