//! TLS to the real PostgreSQL (feature `tls`): this machine's server has `ssl = on` with Debian's
//! self-signed certificate for `localhost`, which serves as its own root here.

use std::path::Path;
use std::time::Duration;

use ballast_core::{Cause, Code};
use ballast_pool::{PoolConfig, SharedPool};
use ballast_testkit::db;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

mod support;

use support::backend_pid;

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

/// Certificates made for the test: a CA, a server certificate for `localhost`, a client
/// certificate for the `postgres` role.
struct Certificates {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn certificates() -> Certificates {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "ballast test CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let server = server.signed_by(&server_key, &ca, &ca_key).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client
        .distinguished_name
        .push(DnType::CommonName, "postgres");
    let client = client.signed_by(&client_key, &ca, &ca_key).unwrap();
    Certificates {
        ca: ca.pem(),
        server: (server.pem(), server_key.serialize_pem()),
        client: (client.pem(), client_key.serialize_pem()),
    }
}

/// A private cluster that speaks only TLS and logs in by client certificate: `verify-full` with
/// the test CA and a client certificate connects; without the certificate the server refuses
/// (a configuration error, not retried); a server whose certificate the root does not sign is
/// refused by the client.
#[tokio::test]
async fn client_certificates_against_a_private_cluster() {
    use ballast_testkit::cluster::PrivateCluster;
    if db::postgres_url("client_certificates_against_a_private_cluster").is_none() {
        return;
    }
    let certs = certificates();
    let cluster = tokio::task::spawn_blocking(move || {
        let mut cluster = PrivateCluster::init()?;
        cluster.write_file("server.crt", certs.server.0.as_bytes(), 0o600)?;
        cluster.write_file("server.key", certs.server.1.as_bytes(), 0o600)?;
        cluster.write_file("ca.crt", certs.ca.as_bytes(), 0o600)?;
        cluster.configure(&[
            "ssl = on",
            "ssl_cert_file = 'server.crt'",
            "ssl_key_file = 'server.key'",
            "ssl_ca_file = 'ca.crt'",
        ])?;
        cluster.set_hba("hostssl all all 127.0.0.1/32 cert\n")?;
        cluster.run()?;
        Ok::<_, String>((cluster, certs))
    })
    .await
    .unwrap();
    let (cluster, certs) = match cluster {
        Ok(started) => started,
        Err(reason) if !db::databases_required() => {
            eprintln!("skipping client_certificates_against_a_private_cluster: {reason}");
            return;
        }
        Err(reason) => panic!("cannot start a private PostgreSQL: {reason}"),
    };
    let dir = std::env::temp_dir().join(db::unique_name("ballast_client_certs"));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let (ca, cert, key) = (
        write("ca.pem", &certs.ca),
        write("client.pem", &certs.client.0),
        write("client.key", &certs.client.1),
    );
    let url = format!("postgres://postgres@localhost:{}/postgres", cluster.port());

    #[derive(diesel::QueryableByName)]
    struct ClientDn {
        #[diesel(sql_type = diesel::sql_types::Text)]
        dn: String,
    }
    let with_cert = pool(
        &url,
        &format!("sslmode=verify-full&sslrootcert={ca}&sslcert={cert}&sslkey={key}"),
    );
    let mut conn = with_cert
        .get()
        .await
        .unwrap_or_else(|failure| panic!("{}\n{}", failure.report(), cluster.log()));
    let dn: ClientDn =
        diesel::sql_query("SELECT client_dn AS dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .get_result(&mut *conn)
            .await
            .unwrap();
    assert_eq!(dn.dn, "/CN=postgres");
    drop(conn);

    let without = pool(
        &url,
        &format!("sslmode=verify-full&sslrootcert={ca}&pool_timeout=2"),
    );
    let failure = without.get().await.expect_err("no client certificate");
    assert_eq!(failure.code(), Code::DbInit, "{}", failure.report());
    assert!(!failure.retryable());

    // Another CA than the one that signed the server's certificate.
    let other_ca = write("other-ca.pem", &certificates().ca);
    let wrong_root = pool(
        &url,
        &format!(
            "sslmode=verify-full&sslrootcert={other_ca}&sslcert={cert}&sslkey={key}&pool_timeout=2"
        ),
    );
    let failure = wrong_root
        .get()
        .await
        .expect_err("the server's certificate is not signed by that CA");
    assert_eq!(
        failure.cause(),
        Cause::InvalidConfig,
        "{}",
        failure.report()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// TLS to MariaDB: a private server with certificates the test makes. `verify-full` (or Prisma's
/// `sslcert` + `sslaccept=strict`) with the CA connects encrypted to `localhost`; against
/// 127.0.0.1 the name check fails as a configuration error; `require` does not check; and the
/// shared server, which has no TLS, refuses `require` as a configuration error too.
#[tokio::test]
async fn tls_to_mariadb() {
    use ballast_testkit::mariadb::PrivateMariaDb;
    use diesel_async::AsyncMysqlConnection;
    let Some(shared_url) = db::mysql_url("tls_to_mariadb") else {
        return;
    };
    let certs = certificates();
    let started = tokio::task::spawn_blocking(move || {
        PrivateMariaDb::start(
            &[
                ("ca.pem", certs.ca.as_bytes()),
                ("server.pem", certs.server.0.as_bytes()),
                ("server.key", certs.server.1.as_bytes()),
            ],
            &[
                "--ssl-ca={dir}/ca.pem",
                "--ssl-cert={dir}/server.pem",
                "--ssl-key={dir}/server.key",
            ],
        )
        .map(|server| (server, certs.ca))
    })
    .await
    .unwrap();
    let (server, ca) = match started {
        Ok(started) => started,
        Err(reason) if !db::databases_required() => {
            eprintln!("skipping tls_to_mariadb: {reason}");
            return;
        }
        Err(reason) => panic!("cannot start a private MariaDB: {reason}"),
    };
    let ca_path = std::env::temp_dir().join(db::unique_name("ballast_mariadb_ca"));
    std::fs::write(&ca_path, ca).unwrap();
    let ca_path = ca_path.display().to_string();

    #[derive(diesel::QueryableByName)]
    struct Cipher {
        #[diesel(sql_type = diesel::sql_types::Text)]
        value: String,
    }
    async fn cipher(pool: &SharedPool<AsyncMysqlConnection>) -> String {
        let mut conn = pool
            .get()
            .await
            .unwrap_or_else(|failure| panic!("{}", failure.report()));
        diesel::sql_query("SELECT VARIABLE_VALUE AS value FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'SSL_CIPHER'")
            .get_result::<Cipher>(&mut *conn)
            .await
            .unwrap()
            .value
    }
    let mysql = |host: &str, query: &str| {
        let url = format!("mysql://root@{host}:{}/mysql?{query}", server.port());
        SharedPool::<AsyncMysqlConnection>::new(PoolConfig::from_url(&url).unwrap()).unwrap()
    };
    let verified = mysql(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca_path}"),
    );
    assert!(!cipher(&verified).await.is_empty(), "encrypted");
    let prisma = mysql("localhost", &format!("sslcert={ca_path}&sslaccept=strict"));
    assert!(!cipher(&prisma).await.is_empty(), "Prisma's form");
    let unchecked = mysql("127.0.0.1", "sslmode=require");
    assert!(
        !cipher(&unchecked).await.is_empty(),
        "require does not check the certificate"
    );

    let wrong_name = mysql(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca_path}&pool_timeout=2"),
    );
    let failure = wrong_name
        .get()
        .await
        .expect_err("127.0.0.1 is not the certificate's name");
    assert_eq!(
        failure.cause(),
        Cause::InvalidConfig,
        "{}",
        failure.report()
    );
    assert!(!failure.retryable());

    let separator = if shared_url.contains('?') { '&' } else { '?' };
    let config = PoolConfig::from_url(&format!(
        "{shared_url}{separator}sslmode=require&pool_timeout=2"
    ))
    .unwrap();
    let no_tls = SharedPool::<AsyncMysqlConnection>::new(config).unwrap();
    let failure = no_tls
        .get()
        .await
        .expect_err("the shared server has no TLS");
    assert_eq!(failure.code(), Code::DbInit, "{}", failure.report());
    let _ = std::fs::remove_file(&ca_path);
    drop(server);
}
