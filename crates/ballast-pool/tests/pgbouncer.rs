//! `pgbouncer=true` through a real PgBouncer 1.18 in transaction mode, started by each test on
//! its own port in front of this machine's PostgreSQL; and PgBouncer's own errors, classified.

use ballast_core::{Cause, Failure, Reach};
use ballast_pool::{PoolConfig, SharedPool};
use ballast_testkit::db;
use ballast_testkit::pgbouncer::{self, PgBouncer};
use diesel::sql_types::{Integer, Text};
use diesel::IntoSql;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

fn bouncer(url: &str, settings: &[(&str, &str)]) -> PgBouncer {
    let server = db::socket_addr(url);
    PgBouncer::start(
        (&server.ip().to_string(), server.port()),
        &["postgres"],
        settings,
    )
    .unwrap_or_else(|error| panic!("{error}"))
}

fn pool(url: &str, query: &str) -> SharedPool<AsyncPgConnection> {
    let separator = if url.contains('?') { '&' } else { '?' };
    SharedPool::new(PoolConfig::from_url(&format!("{url}{separator}{query}")).unwrap()).unwrap()
}

/// A statement diesel caches (prepared once per connection, then only bound).
async fn cached_select(conn: &mut AsyncPgConnection, n: i32) -> Result<i32, diesel::result::Error> {
    diesel::select(n.into_sql::<Integer>())
        .get_result(conn)
        .await
}

/// Connection `a` prepares its statement on the server PgBouncer lends it; `b` then holds that
/// server in a transaction (PgBouncer lends the most recently used server first), so `a`'s next
/// use of its statement reaches another server.
async fn statement_outlives_its_server(
    pool: &SharedPool<AsyncPgConnection>,
) -> Result<(), Failure> {
    let mut a = pool.get().await?;
    let mut b = pool.get().await?;
    cached_select(&mut a, 1).await?;
    b.batch_execute("BEGIN").await?;
    cached_select(&mut b, 2).await?;
    let second = cached_select(&mut a, 3).await;
    b.batch_execute("COMMIT").await?;
    assert_eq!(second?, 3);
    Ok(())
}

#[tokio::test]
async fn pgbouncer_true_makes_prepared_statements_work_in_transaction_mode() {
    let Some(url) = db::postgres_url("pgbouncer_true_statements") else {
        return;
    };
    if pgbouncer::require("pgbouncer_true_statements").is_none() {
        return;
    }
    let bouncer = bouncer(&url, &[("default_pool_size", "2")]);
    let through = bouncer.url(&url);

    // The reproduction: without the parameter, the statement is missing on the second server
    // (or, once a server kept one from an earlier try, already exists there). Which server
    // PgBouncer lends is its choice, and a busy machine can change it: a few tries.
    let mut failure = None;
    for _ in 0..5 {
        let plain = pool(&through, "connection_limit=2");
        if let Err(error) = statement_outlives_its_server(&plain).await {
            failure = Some(error);
            break;
        }
    }
    let failure =
        failure.expect("a named statement cannot outlive its transaction behind PgBouncer");
    assert!(
        failure.report().contains("prepared statement"),
        "{}",
        failure.report()
    );

    let fixed = pool(&through, "connection_limit=2&pgbouncer=true");
    statement_outlives_its_server(&fixed).await.unwrap();
    statement_outlives_its_server(&fixed).await.unwrap();
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[tokio::test]
async fn many_tasks_share_three_server_connections() {
    let Some(url) = db::postgres_url("pgbouncer_many_tasks") else {
        return;
    };
    if pgbouncer::require("pgbouncer_many_tasks").is_none() {
        return;
    }
    let database = db::PgDatabase::create(&url).await;
    let bouncer = bouncer(&url, &[("default_pool_size", "3")]);
    let pool = pool(
        &bouncer.url(database.url()),
        "connection_limit=10&pgbouncer=true",
    );
    {
        let mut conn = pool.get().await.unwrap();
        conn.batch_execute("CREATE TABLE items (id serial PRIMARY KEY, task int NOT NULL, name text NOT NULL UNIQUE)")
            .await
            .unwrap();
    }
    const TASKS: i32 = 20;
    const ROUNDS: i32 = 25;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                let mut conn = pool.get().await.unwrap();
                assert_eq!(cached_select(&mut conn, round).await.unwrap(), round);
                // A statement diesel does not cache, with binds.
                let name: String = diesel::select(format!("{task}-{round}").into_sql::<Text>())
                    .get_result(&mut *conn)
                    .await
                    .unwrap();
                // A transaction: one server for all of it; the failed one leaves nothing.
                let inserted = name.clone();
                conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                    diesel::sql_query("INSERT INTO items (task, name) VALUES ($1, $2)")
                        .bind::<Integer, _>(task)
                        .bind::<Text, _>(inserted)
                        .execute(conn)
                        .await?;
                    Ok(())
                })
                .await
                .unwrap();
                let duplicate = conn
                    .transaction::<(), diesel::result::Error, _>(async move |conn| {
                        diesel::sql_query("INSERT INTO items (task, name) VALUES ($1, $2)")
                            .bind::<Integer, _>(task)
                            .bind::<Text, _>(format!("{name}'"))
                            .execute(&mut *conn)
                            .await?;
                        diesel::sql_query("INSERT INTO items (task, name) VALUES ($1, $2)")
                            .bind::<Integer, _>(task)
                            .bind::<Text, _>(name)
                            .execute(&mut *conn)
                            .await?;
                        Ok(())
                    })
                    .await
                    .expect_err("the name exists");
                assert_eq!(Failure::from(duplicate).cause(), Cause::UniqueViolation);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut conn = pool.get().await.unwrap();
    let count = diesel::sql_query("SELECT count(*) AS n FROM items")
        .get_result::<Count>(&mut *conn)
        .await
        .unwrap();
    assert_eq!(
        count.n,
        i64::from(TASKS * ROUNDS),
        "each insert once, no rolled-back row"
    );
    drop(conn);
    drop(pool);
}

#[tokio::test]
async fn query_wait_timeout_is_pool_exhaustion_not_sent() {
    let Some(url) = db::postgres_url("pgbouncer_query_wait_timeout") else {
        return;
    };
    if pgbouncer::require("pgbouncer_query_wait_timeout").is_none() {
        return;
    }
    let bouncer = bouncer(
        &url,
        &[("default_pool_size", "1"), ("query_wait_timeout", "1")],
    );
    let through = bouncer.url(&url);
    let pool = pool(&through, "connection_limit=2&pgbouncer=true");
    let mut waiting = pool.get().await.unwrap();
    // Another client holds PgBouncer's only server connection.
    let mut holder = pool.get().await.unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let error = cached_select(&mut waiting, 1)
        .await
        .expect_err("no server connection frees up");
    let failure = Failure::from(error);
    assert_eq!(
        failure.cause(),
        Cause::PoolExhausted,
        "{}",
        failure.report()
    );
    assert_eq!(failure.reach(), Reach::NotSent);
    assert!(failure.retryable());
    holder.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test]
async fn a_full_pooler_and_a_missing_server_are_retryable_connect_failures() {
    let Some(url) = db::postgres_url("pgbouncer_full") else {
        return;
    };
    if pgbouncer::require("pgbouncer_full").is_none() {
        return;
    }
    let bouncer = bouncer(&url, &[("max_client_conn", "2")]);
    let through = bouncer.url(&url);
    // PgBouncer counts its own bookkeeping against the limit too: connect until refused.
    let mut clients = Vec::new();
    let refused = loop {
        match db::pg_connect_result(&through).await {
            Ok(client) if clients.len() < 5 => clients.push(client),
            Ok(_) => panic!("max_client_conn = 2 let 6 clients in"),
            Err(error) => break error,
        }
    };
    let failure = Failure::from(refused);
    assert_eq!(
        failure.cause(),
        Cause::TooManyConnections,
        "{}",
        failure.report()
    );
    assert_eq!(failure.reach(), Reach::NotSent);
    assert!(failure.retryable());

    // PostgreSQL behind the pooler is gone: a closed port.
    let port = db::free_port().unwrap();
    let nowhere = PgBouncer::start(
        ("127.0.0.1", port),
        &["postgres"],
        &[("query_wait_timeout", "2"), ("server_login_retry", "1")],
    )
    .unwrap();
    let through = nowhere.url(&url);
    let mut failures = Vec::new();
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let failure = match db::pg_connect_result(&through).await {
            Ok(client) => Failure::from(
                client
                    .simple_query("SELECT 1")
                    .await
                    .expect_err("no server"),
            ),
            Err(error) => Failure::from(error),
        };
        println!("{:?} after {:?}", failure.report(), started.elapsed());
        failures.push(failure);
    }
    for failure in failures {
        assert!(failure.retryable(), "{}", failure.report());
        assert_eq!(failure.reach(), Reach::NotSent, "{}", failure.report());
        assert!(
            matches!(
                failure.cause(),
                Cause::ServerUnavailable | Cause::Unreachable | Cause::PoolExhausted
            ),
            "{}",
            failure.report()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_statement_is_cancelled_through_pgbouncer() {
    let Some(url) = db::postgres_url("pgbouncer_abandoned") else {
        return;
    };
    if pgbouncer::require("pgbouncer_abandoned").is_none() {
        return;
    }
    let bouncer = bouncer(&url, &[("default_pool_size", "2")]);
    let pool = pool(
        &bouncer.url(&url),
        "connection_limit=1&pool_timeout=30&pgbouncer=true",
    );
    let marker = db::unique_name("abandoned");
    let sleeping = async {
        let mut conn = pool.get().await?;
        diesel::sql_query(format!("SELECT pg_sleep(20), '{marker}'"))
            .execute(&mut *conn)
            .await?;
        Ok::<_, Failure>(())
    };
    let abandoned = tokio::time::timeout(std::time::Duration::from_millis(300), sleeping);
    assert!(abandoned.await.is_err(), "the statement was still running");
    let dropped = std::time::Instant::now();
    // The pool's only connection comes back once the statement has stopped on the server.
    let mut conn = pool.get().await.unwrap();
    assert_eq!(cached_select(&mut conn, 7).await.unwrap(), 7);
    let next = dropped.elapsed();
    let admin = db::pg_connect(&url).await;
    let running: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%' || $1 || '%' AND state = 'active' AND pid <> pg_backend_pid()",
            &[&marker],
        )
        .await
        .unwrap()
        .get(0);
    println!(
        "the next checkout ran {next:?} after the drop; {:?}",
        pool.stats()
    );
    assert_eq!(running, 0, "the statement was cancelled on the server");
    assert!(next < std::time::Duration::from_secs(2), "{next:?}");
    assert_eq!(pool.stats().cancelled, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarting_behind_pgbouncer_keeps_the_pools_connections() {
    let Some(_) = db::postgres_url("pgbouncer_server_restart") else {
        return;
    };
    if pgbouncer::require("pgbouncer_server_restart").is_none() {
        return;
    }
    let cluster = ballast_testkit::cluster::PrivateCluster::start().unwrap();
    let bouncer = PgBouncer::start(
        ("127.0.0.1", cluster.port()),
        &["postgres"],
        &[("default_pool_size", "2"), ("query_wait_timeout", "10")],
    )
    .unwrap();
    let pool = pool(
        &bouncer.url(&cluster.url()),
        "connection_limit=2&pgbouncer=true",
    );
    {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(cached_select(&mut conn, 1).await.unwrap(), 1);
    }
    let connects = pool.stats().connects;
    cluster.restart().unwrap();
    // PgBouncer notices its server connections are gone and opens new ones; the pool's own
    // connection to PgBouncer stays. Any failure on the way is classified retryable.
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    loop {
        let attempt = async {
            let mut conn = pool.get().await?;
            Ok::<_, Failure>(cached_select(&mut conn, 2).await?)
        }
        .await;
        match attempt {
            Ok(n) => {
                assert_eq!(n, 2);
                break;
            }
            Err(failure) => {
                assert!(failure.retryable(), "{}", failure.report());
                failures.push(failure.report());
            }
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{failures:?}"
        );
    }
    println!(
        "back after {:?}; failures on the way: {failures:?}; connects {} -> {}",
        started.elapsed(),
        connects,
        pool.stats().connects
    );
    assert!(failures.len() <= 2, "{failures:?}");
    assert_eq!(pool.stats().connects, connects + failures.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_pgbouncer_with_pgbouncer_true() {
    use rcgen::{CertificateParams, DnType, KeyPair};
    let Some(url) = db::postgres_url("pgbouncer_tls") else {
        return;
    };
    if pgbouncer::require("pgbouncer_tls").is_none() {
        return;
    }
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.self_signed(&key).unwrap();
    let server = db::socket_addr(&url);
    let tls_bouncer = PgBouncer::start_with_files(
        (&server.ip().to_string(), server.port()),
        &["postgres"],
        &[
            ("client_tls_sslmode", "require"),
            ("client_tls_key_file", "{dir}/key.pem"),
            ("client_tls_cert_file", "{dir}/cert.pem"),
            ("default_pool_size", "2"),
        ],
        &[
            ("key.pem", key.serialize_pem().as_bytes()),
            ("cert.pem", cert.pem().as_bytes()),
        ],
    )
    .unwrap();
    let root = std::env::temp_dir().join(db::unique_name("pgbouncer_root"));
    std::fs::write(&root, cert.pem()).unwrap();
    // `localhost`, the name the certificate carries.
    let through = tls_bouncer.url(&url).replace("127.0.0.1", "localhost");
    let verified = pool(
        &through,
        &format!(
            "connection_limit=1&pgbouncer=true&sslmode=verify-full&sslrootcert={}",
            root.display()
        ),
    );
    {
        let mut conn = verified.get().await.unwrap();
        assert_eq!(cached_select(&mut conn, 5).await.unwrap(), 5);
    }
    // An abandoned statement is cancelled over TLS through PgBouncer too.
    let abandoned = tokio::time::timeout(std::time::Duration::from_millis(300), async {
        let mut conn = verified.get().await?;
        diesel::sql_query("SELECT pg_sleep(20)")
            .execute(&mut *conn)
            .await?;
        Ok::<_, Failure>(())
    });
    assert!(abandoned.await.is_err());
    let dropped = std::time::Instant::now();
    let mut conn = verified.get().await.unwrap();
    assert_eq!(cached_select(&mut conn, 6).await.unwrap(), 6);
    assert!(
        dropped.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        dropped.elapsed()
    );
    drop(conn);

    // Without sslmode PgBouncer refuses the login; a TLS-less PgBouncer refuses `require`:
    // both are the deployment's to fix, not retried.
    let plain = pool(
        &through,
        "connection_limit=1&pgbouncer=true&connect_timeout=2",
    );
    let failure = plain.get().await.map(drop).unwrap_err();
    assert_eq!(
        failure.cause(),
        Cause::InvalidConfig,
        "{}",
        failure.report()
    );
    let no_tls = bouncer(&url, &[]);
    let required = pool(
        &no_tls.url(&url),
        "connection_limit=1&pgbouncer=true&sslmode=require&connect_timeout=2",
    );
    let failure = required.get().await.map(drop).unwrap_err();
    assert_eq!(
        failure.cause(),
        Cause::InvalidConfig,
        "{}",
        failure.report()
    );
    let _ = std::fs::remove_file(root);
}
