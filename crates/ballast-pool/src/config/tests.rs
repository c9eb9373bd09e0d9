//! The settings' URL forms, ranges and errors.

use super::*;

const CANARY: &str = "canary-Pa55";

#[test]
fn defaults_and_prisma_parameters() {
    let config = PoolConfig::from_url("postgres://u@h/db").unwrap();
    assert_eq!(config.backend(), Backend::Postgres);
    assert_eq!(config.connection_limit(), 10);
    assert_eq!(config.pool_timeout(), Duration::from_secs(20));
    assert_eq!(config.connect_timeout(), Duration::from_secs(10));
    assert_eq!(config.idle_timeout(), Some(Duration::from_secs(600)));
    assert_eq!(config.max_lifetime(), Some(Duration::from_secs(1800)));
    assert_eq!(config.check_idle_after(), Duration::from_secs(30));
    assert_eq!(config.queue_target(), Some(Duration::from_secs(1)));
    assert_eq!(config.queue_limit(), None, "admission by time, no count");
    let config = PoolConfig::from_url("postgres://u@h/db?queue_target=0.25").unwrap();
    assert_eq!(config.queue_target(), Some(Duration::from_millis(250)));
    let config = PoolConfig::from_url("postgres://u@h/db?queue_target=0").unwrap();
    assert_eq!(config.queue_target(), None, "off");
    assert_eq!(config.driver_url(), "postgres://u@h/db");
    let config = PoolConfig::from_url("postgres://u@h/db?queue_limit=0").unwrap();
    assert_eq!(config.queue_limit(), None, "no limit");
    assert_eq!(config.leak_threshold(), None, "off by default");
    assert!(!config.statement_deadline(), "off by default");
    let config =
        PoolConfig::from_url("mysql://u@h/db?leak_threshold=30&statement_timeout=deadline")
            .unwrap();
    assert_eq!(config.leak_threshold(), Some(Duration::from_secs(30)));
    assert!(config.statement_deadline());
    assert_eq!(config.statement_timeout(), None, "no fixed bound");
    assert_eq!(config.driver_url(), "mysql://u@h/db");
    let config = PoolConfig::from_url("postgres://u@h/db?queue_limit=7").unwrap();
    assert_eq!(config.queue_limit(), Some(7));
    assert!(config.statement_cache(), "on by default");
    let config = PoolConfig::from_url("postgres://u@h/db?statement_cache_size=0").unwrap();
    assert!(!config.statement_cache());
    assert_eq!(config.driver_url(), "postgres://u@h/db");
    let error = PoolConfig::from_url("postgres://u@h/db?statement_cache_size=x").unwrap_err();
    assert_eq!(error.setting, "statement_cache_size");
    assert_eq!(config.driver_url(), "postgres://u@h/db");

    let config = PoolConfig::from_url(
        "postgresql://u:p@h:5433/db?sslmode=disable&connection_limit=3&pool_timeout=0.5\
         &connect_timeout=2&idle_timeout=0&max_lifetime=60&check_idle_after=0&application_name=x",
    )
    .unwrap();
    assert_eq!(config.connection_limit(), 3);
    assert_eq!(config.pool_timeout(), Duration::from_millis(500));
    assert_eq!(config.connect_timeout(), Duration::from_secs(2));
    assert_eq!(config.idle_timeout(), None);
    assert_eq!(config.max_lifetime(), Some(Duration::from_secs(60)));
    assert_eq!(config.check_idle_after(), Duration::ZERO);
    assert_eq!(
        config.driver_url(),
        "postgresql://u:p@h:5433/db?application_name=x&sslmode=disable"
    );
}

#[test]
fn a_sqlite_file_in_a_missing_directory_is_refused_naming_it() {
    let error = PoolConfig::from_url("sqlite:/nonexistent/dir/x.db").unwrap_err();
    assert!(error.to_string().contains("url"), "{error}");
    assert!(error.to_string().contains("/nonexistent/dir"), "{error}");
    let error = PoolConfig::from_url("file:/nonexistent/dir/x.db?mode=rwc").unwrap_err();
    assert!(error.to_string().contains("/nonexistent/dir"), "{error}");
    for fine in [
        "sqlite:/tmp/x.db",
        "sqlite:x.db",
        "sqlite::memory:",
        "file:x.db",
    ] {
        assert!(PoolConfig::from_url(fine).is_ok(), "{fine}");
    }
}

#[test]
fn backends_and_sqlite_forms() {
    let cases = [
        ("mysql://root@h/test", Backend::Mysql, "mysql://root@h/test"),
        (
            "mariadb://root@h/test",
            Backend::Mysql,
            "mysql://root@h/test",
        ),
        ("sqlite://app.db", Backend::Sqlite, "app.db"),
        ("sqlite:///tmp/app.db", Backend::Sqlite, "/tmp/app.db"),
        (
            "sqlite:app.db?connection_limit=1",
            Backend::Sqlite,
            "app.db",
        ),
        (
            "file:data.db?mode=ro",
            Backend::Sqlite,
            "file:data.db?mode=ro",
        ),
    ];
    for (url, backend, driver) in cases {
        let config = PoolConfig::from_url(url).unwrap();
        assert_eq!(config.backend(), backend, "{url}");
        assert_eq!(config.driver_url(), driver, "{url}");
    }
    let memory = PoolConfig::from_url("sqlite::memory:").unwrap();
    assert!(memory.driver_url().starts_with("file:ballast_memory_"));
    assert!(memory.driver_url().ends_with("?mode=memory&cache=shared"));
    let other = PoolConfig::from_url("sqlite::memory:").unwrap();
    assert_ne!(memory.driver_url(), other.driver_url(), "each pool its own");
}

#[test]
fn bad_settings_name_the_setting_and_never_the_password() {
    let cases = [
        ("connection_limit=0", "connection_limit"),
        ("connection_limit=1001", "connection_limit"),
        ("connection_limit=-1", "connection_limit"),
        ("connection_limit=2.5", "connection_limit"),
        ("connection_limit=", "connection_limit"),
        ("pool_timeout=0", "pool_timeout"),
        ("pool_timeout=soon", "pool_timeout"),
        ("pool_timeout=-3", "pool_timeout"),
        ("pool_timeout=NaN", "pool_timeout"),
        ("connect_timeout=1e9", "connect_timeout"),
        ("idle_timeout=x", "idle_timeout"),
        ("max_lifetime=-1", "max_lifetime"),
        ("check_idle_after=inf", "check_idle_after"),
        ("leak_threshold=never", "leak_threshold"),
        ("statement_timeout=later", "statement_timeout"),
        ("queue_target=-1", "queue_target"),
        ("queue_target=soon", "queue_target"),
        ("queue_target=86401", "queue_target"),
        ("queue_limit=-1", "queue_limit"),
        ("queue_limit=lots", "queue_limit"),
        ("queue_limit=100001", "queue_limit"),
    ];
    for (query, setting) in cases {
        let url = format!("postgres://app:{CANARY}@db:5432/shop?{query}");
        let error = PoolConfig::from_url(&url).unwrap_err();
        assert_eq!(error.setting, setting, "{query}");
        let text = error.to_string();
        assert!(text.contains(setting), "{text}");
        assert!(!text.contains(CANARY), "{text}");
    }
    for url in [
        format!("redis://app:{CANARY}@db/0"),
        format!("postgres://app:{CANARY}@db/shop?no_such_option=1"),
        format!("mysql://app:{CANARY}@db/shop?pool_min=x"),
        String::new(),
        "sqlite://".to_owned(),
        // Not URLs: never taken for a SQLite file name.
        "garbage".to_owned(),
        "./data/app.db".to_owned(),
        format!("host=db user=app password={CANARY} dbname=shop"),
        format!("app:{CANARY}@db/shop"),
        // A parameter twice: neither wins.
        format!("postgres://app:{CANARY}@db/shop?connection_limit=5&connection_limit=50"),
        format!("postgres://app:{CANARY}@db/shop?sslmode=disable&sslmode=prefer"),
        format!("mysql://app:{CANARY}@db/shop?pool_timeout=1&pool_timeout=2"),
    ] {
        let error = PoolConfig::from_url(&url).unwrap_err();
        assert_eq!(error.setting, "url", "{url}");
        assert!(!error.to_string().contains(CANARY), "{error}");
    }
}

#[test]
fn settings_are_checked_together_and_named() {
    let config = PoolConfig::from_url("postgres://u@h/db").unwrap();
    let rejected = |config: PoolConfig| config.check().unwrap_err().setting;
    assert_eq!(
        rejected(config.clone().with_connection_limit(0)),
        "connection_limit"
    );
    assert_eq!(
        rejected(config.clone().with_pool_timeout(Duration::ZERO)),
        "pool_timeout"
    );
    assert_eq!(
        rejected(
            config
                .clone()
                .with_connect_timeout(Duration::from_secs(100_000))
        ),
        "connect_timeout"
    );
    assert_eq!(
        rejected(config.clone().with_idle_timeout(Some(Duration::ZERO))),
        "idle_timeout"
    );
    assert_eq!(
        rejected(config.clone().with_queue_limit(200_000)),
        "queue_limit"
    );
    assert_eq!(
        rejected(config.clone().with_queue_target(Some(Duration::ZERO))),
        "queue_target"
    );
    let config = config.with_connection_limit(4).with_idle_timeout(None);
    assert_eq!(config.check(), Ok(()));
    assert_eq!(config.connection_limit(), 4);
    assert_eq!(config.idle_timeout(), None);
}

#[test]
fn prisma_parameters_have_their_meaning_or_a_named_error() {
    let config = PoolConfig::from_url(
        "postgresql://u:p@localhost:5432/db?schema=my%20app&statement_timeout=2.5&application_name=x&options=-c%20work_mem%3D4MB&sslmode=prefer&pgbouncer=false",
    )
    .unwrap();
    assert_eq!(config.schema(), Some("my app"));
    assert_eq!(
        config.statement_timeout(),
        Some(Duration::from_millis(2500))
    );
    assert_eq!(
        config.driver_url(),
        "postgresql://u:p@localhost:5432/db?application_name=x&options=-c%20work_mem%3D4MB&sslmode=prefer"
    );
    let config = config.with_after_connect("SET TIME ZONE 'UTC'");
    assert_eq!(
        config.after_connect_statements(),
        [
            "SET search_path TO \"my app\"",
            "SET statement_timeout = 2500",
            "SET TIME ZONE 'UTC'"
        ]
    );
    // A Unix socket directory replaces the URL's host, as in Prisma (and libpq).
    let config =
        PoolConfig::from_url("postgresql://u:p@localhost:5433/db?host=/var/run/postgresql")
            .unwrap();
    assert_eq!(
        config.driver_url(),
        "postgresql://u:p@%2Fvar%2Frun%2Fpostgresql:5433/db"
    );
    let config = PoolConfig::from_url("postgres://u@h:6432/db?pgbouncer=true").unwrap();
    assert!(config.pgbouncer());
    assert_eq!(config.driver_url(), "postgres://u@h:6432/db");
    for (url, setting) in [
        ("postgres://u@h/db?socket_timeout=5", "socket_timeout"),
        ("postgres://u@h/db?pgbouncer=yes", "pgbouncer"),
        ("mysql://u@h/db?pgbouncer=true", "pgbouncer"),
        ("postgres://u@h/db?pgbouncer=true&schema=app", "schema"),
        (
            "postgres://u@h/db?statement_timeout=5&pgbouncer=true",
            "statement_timeout",
        ),
        (
            "postgres://u@h/db?statement_timeout=deadline&pgbouncer=true",
            "statement_timeout",
        ),
        (
            "sqlite:app.db?statement_timeout=deadline",
            "statement_timeout",
        ),
        ("postgres://u@h/db?sslmode=sometimes", "sslmode"),
        ("postgres://u@h/db?sslaccept=maybe", "sslaccept"),
        (
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=/no/such/file.pem",
            "sslrootcert",
        ),
        (
            "postgres://u@h/db?sslmode=require&sslcert=/no/such/client.pem",
            "sslcert",
        ),
        ("postgres://u@h/db?sslidentity=id.p12", "sslidentity"),
        ("postgres://u@h/db?sslpassword=x", "sslpassword"),
        ("mysql://u@h/db?sslidentity=id.p12", "sslidentity"),
        ("mysql://u@h/db?sslkey=client.key", "url"),
        ("mysql://u@h/db?schema=public", "schema"),
        ("mysql://u@h/db?statement_timeout=5", "statement_timeout"),
        ("postgres://u@h/db?statement_timeout=0", "statement_timeout"),
        ("postgres://u@h/db?schema=", "schema"),
        ("postgres://u@h/db?no_such_parameter=1", "url"),
    ] {
        let error = PoolConfig::from_url(url).unwrap_err();
        assert_eq!(error.setting, setting, "{url}: {error}");
    }
}

#[test]
fn tls_parameters_need_the_tls_feature_and_readable_files() {
    let dir = std::env::temp_dir().join(format!("ballast_tls_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = dir.join("root.pem");
    std::fs::write(
        &pem,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let not_pem = dir.join("root.txt");
    std::fs::write(&not_pem, "hello").unwrap();
    let url = |query: &str| format!("postgres://u@h/db?{query}");
    let error = PoolConfig::from_url(&url(&format!(
        "sslmode=verify-ca&sslrootcert={}",
        not_pem.display()
    )))
    .unwrap_err();
    assert_eq!(error.setting, "sslrootcert");
    let error = PoolConfig::from_url(&url(&format!("sslrootcert={}", pem.display()))).unwrap_err();
    assert_eq!(error.setting, "sslmode", "certificates without a TLS mode");
    // `prefer` works everywhere: without TLS it is plain text, as against a server without it.
    assert!(PoolConfig::from_url(&url("sslmode=prefer")).is_ok());
    for query in ["sslmode=require", "sslmode=verify-full", "sslaccept=strict"] {
        let result = PoolConfig::from_url(&url(query));
        if cfg!(feature = "tls") {
            let config = result.unwrap();
            assert!(config.tls().is_some(), "{query}");
            assert!(config.driver_url().ends_with("sslmode=require"), "{query}");
        } else {
            assert_eq!(result.unwrap_err().setting, "sslmode", "{query}");
        }
    }
    #[cfg(feature = "tls")]
    {
        let config = PoolConfig::from_url(&url("sslmode=require&sslaccept=strict")).unwrap();
        assert_eq!(config.tls().unwrap().mode, SslMode::VerifyFull);
        let config = PoolConfig::from_url(&url(&format!(
            "sslmode=verify-ca&sslrootcert={}",
            pem.display()
        )))
        .unwrap();
        assert!(config.tls().unwrap().root_pem.is_some());
        assert!(!format!("{config:?}").contains("AAAA"));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn debug_never_shows_the_password() {
    let config = PoolConfig::from_url(&format!("mysql://root:{CANARY}@h/db")).unwrap();
    assert!(!format!("{config:?}").contains(CANARY));
}

/// One accepted form of the table below: what the driver is given, as tokio-postgres reads it.
#[cfg(feature = "postgres")]
struct Reads {
    hosts: &'static [&'static str],
    ports: &'static [u16],
    user: Option<&'static str>,
    password: Option<&'static str>,
    dbname: Option<&'static str>,
}

/// libpq's URI forms (PostgreSQL 15 documentation, §34.1.1.2), each with the hosts, ports,
/// credentials and database the driver is given; and the forms libpq refuses, each refused with
/// the setting named and never the password.
#[cfg(feature = "postgres")]
#[test]
fn libpq_uri_forms_have_libpq_meaning() {
    use tokio_postgres::config::Host;
    let socket = libpq::default_socket_directory();
    let none: Option<&str> = None;
    let accepted: Vec<(&str, Reads)> = vec![
        ("postgresql://", Reads { hosts: &["<socket>"], ports: &[5432], user: none, password: none, dbname: none }),
        ("postgresql://localhost", Reads { hosts: &["localhost"], ports: &[5432], user: none, password: none, dbname: none }),
        ("postgresql://localhost:5433", Reads { hosts: &["localhost"], ports: &[5433], user: none, password: none, dbname: none }),
        ("postgresql://localhost/mydb", Reads { hosts: &["localhost"], ports: &[5432], user: none, password: none, dbname: Some("mydb") }),
        ("postgresql://user@localhost", Reads { hosts: &["localhost"], ports: &[5432], user: Some("user"), password: none, dbname: none }),
        ("postgresql://user:secret@localhost", Reads { hosts: &["localhost"], ports: &[5432], user: Some("user"), password: Some("secret"), dbname: none }),
        ("postgresql://other@localhost/otherdb?application_name=myapp", Reads { hosts: &["localhost"], ports: &[5432], user: Some("other"), password: none, dbname: Some("otherdb") }),
        ("postgresql://host1:123,host2:456/somedb?target_session_attrs=any&application_name=myapp", Reads { hosts: &["host1", "host2"], ports: &[123, 456], user: none, password: none, dbname: Some("somedb") }),
        ("postgresql://h1,h2:5433/db", Reads { hosts: &["h1", "h2"], ports: &[5432, 5433], user: none, password: none, dbname: Some("db") }),
        ("postgresql://h1,h2/db?port=5433", Reads { hosts: &["h1", "h2"], ports: &[5433, 5433], user: none, password: none, dbname: Some("db") }),
        ("postgresql://[::1]:5433/db", Reads { hosts: &["::1"], ports: &[5433], user: none, password: none, dbname: Some("db") }),
        // `port` as a parameter replaces the URI's: one port, not two.
        ("postgresql://localhost/db?port=12345", Reads { hosts: &["localhost"], ports: &[12345], user: none, password: none, dbname: Some("db") }),
        ("postgresql:///mydb?host=localhost&port=5433", Reads { hosts: &["localhost"], ports: &[5433], user: none, password: none, dbname: Some("mydb") }),
        // Unix sockets: an empty host is the default socket directory; a host that starts with
        // `/` (percent-encoded in the URI) is a socket directory.
        ("postgresql://%2Fvar%2Flib%2Fpostgresql/dbname", Reads { hosts: &["/var/lib/postgresql"], ports: &[5432], user: none, password: none, dbname: Some("dbname") }),
        ("postgres:///db", Reads { hosts: &["<socket>"], ports: &[5432], user: none, password: none, dbname: Some("db") }),
        ("postgres://user@/db", Reads { hosts: &["<socket>"], ports: &[5432], user: Some("user"), password: none, dbname: Some("db") }),
        ("postgres://user@/db?host=/var/run/postgresql", Reads { hosts: &["/var/run/postgresql"], ports: &[5432], user: Some("user"), password: none, dbname: Some("db") }),
        ("postgres://:5433/db?host=/run/postgresql", Reads { hosts: &["/run/postgresql"], ports: &[5433], user: none, password: none, dbname: Some("db") }),
        ("postgresql://?hostaddr=127.0.0.1", Reads { hosts: &["127.0.0.1"], ports: &[5432], user: none, password: none, dbname: none }),
        // An empty user name is none: the driver's default applies.
        ("postgres://@host", Reads { hosts: &["host"], ports: &[5432], user: none, password: none, dbname: none }),
        // The URI's parts as parameters replace the URI's own.
        ("postgresql://u@h/db?dbname=other&user=u2&password=p%262", Reads { hosts: &["h"], ports: &[5432], user: Some("u2"), password: Some("p&2"), dbname: Some("other") }),
        ("postgresql://localhost/my%20db", Reads { hosts: &["localhost"], ports: &[5432], user: none, password: none, dbname: Some("my db") }),
        ("postgresql://a%40b:p%3Aw%2Fd@localhost/db", Reads { hosts: &["localhost"], ports: &[5432], user: Some("a@b"), password: Some("p:w/d"), dbname: Some("db") }),
        ("postgresql://:pw@localhost/db", Reads { hosts: &["localhost"], ports: &[5432], user: none, password: Some("pw"), dbname: Some("db") }),
    ];
    for (url, reads) in accepted {
        let config = PoolConfig::from_url(url).unwrap_or_else(|error| panic!("{url}: {error}"));
        let driver: tokio_postgres::Config = config.driver_url().parse().unwrap();
        let hosts: Vec<String> = driver
            .get_hosts()
            .iter()
            .map(|host| match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let expected: Vec<&str> = reads
            .hosts
            .iter()
            .map(|host| if *host == "<socket>" { socket } else { host })
            .collect();
        assert_eq!(hosts, expected, "{url}: hosts ({})", config.driver_url());
        assert_eq!(
            driver.get_ports(),
            reads.ports,
            "{url}: ports ({})",
            config.driver_url()
        );
        assert_eq!(driver.get_user(), reads.user, "{url}: user");
        let password = driver
            .get_password()
            .map(|p| std::str::from_utf8(p).unwrap());
        assert_eq!(password, reads.password, "{url}: password");
        assert_eq!(driver.get_dbname(), reads.dbname, "{url}: dbname");
    }
    let config = PoolConfig::from_url("postgresql://?hostaddr=127.0.0.1").unwrap();
    let driver: tokio_postgres::Config = config.driver_url().parse().unwrap();
    assert_eq!(
        driver.get_hostaddrs(),
        ["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    let config = PoolConfig::from_url(
        "postgresql://h1,h2/db?target_session_attrs=read-write&load_balance_hosts=random",
    )
    .unwrap();
    assert_eq!(config.target_session_attrs(), SessionAttrs::ReadWrite);
    assert!(config.target().unwrap().load_balance);
    assert!(
        !config.driver_url().contains("target_session_attrs"),
        "the pool's to apply"
    );

    let refused = [
        ("postgres://h/%zz", "dbname"),
        ("postgres://h/db?application_name=%1", "application_name"),
        ("postgres://h/db?application_name=%", "application_name"),
        ("postgres://h/db?dbname=%XXfoo", "dbname"),
        ("postgres://h%00x/db", "host"),
        ("postgres://h/db?options=%00", "options"),
        ("postgres://h/db?some%zzkey=1", "url"),
        ("postgres://h:notaport/db", "port"),
        ("postgres://h:0/db", "port"),
        ("postgres://h:70000/db", "port"),
        ("postgres://h1,h2/db?port=1,2,3", "port"),
        ("postgres://h1,h2/db?hostaddr=127.0.0.1", "hostaddr"),
        ("postgres://h/db?hostaddr=nope", "hostaddr"),
        ("postgres://[::1/db", "host"),
        (
            "postgres://h/db?target_session_attrs=master",
            "target_session_attrs",
        ),
        (
            "postgres://h/db?load_balance_hosts=yes",
            "load_balance_hosts",
        ),
        // Unknown parameters: libpq warns and ignores them; ballast refuses them by name, so a
        // typo (`conection_limit`) is not silently a default.
        ("postgres://h/db?no_such_option=1", "url"),
    ];
    for (url, setting) in refused {
        let error = PoolConfig::from_url(url).unwrap_err();
        assert_eq!(error.setting, setting, "{url}: {error}");
    }
    // A malformed password is refused without showing it.
    let error = PoolConfig::from_url(&format!("postgres://u:{CANARY}%zz@h/db")).unwrap_err();
    assert_eq!(error.setting, "password");
    assert!(!error.to_string().contains(CANARY), "{error}");
    let error =
        PoolConfig::from_url(&format!("postgres://u@h/db?password={CANARY}%g1")).unwrap_err();
    assert_eq!(error.setting, "password");
    assert!(!error.to_string().contains(CANARY), "{error}");
}

/// MySQL and MariaDB URLs: a Unix socket by `socket=` with no host, ports and percent-encoding
/// checked.
#[cfg(feature = "mysql")]
#[test]
fn mysql_url_forms() {
    let config = PoolConfig::from_url("mysql://u@/db?socket=/run/mysqld/mysqld.sock").unwrap();
    assert_eq!(
        config.driver_url(),
        "mysql://u@localhost/db?socket=/run/mysqld/mysqld.sock"
    );
    let opts = mysql_async::Opts::from_url(config.driver_url()).unwrap();
    assert_eq!(opts.socket(), Some("/run/mysqld/mysqld.sock"));
    let config = PoolConfig::from_url("mariadb://u:p%40ss@h:3307/db").unwrap();
    let opts = mysql_async::Opts::from_url(config.driver_url()).unwrap();
    assert_eq!((opts.ip_or_hostname(), opts.tcp_port()), ("h", 3307));
    assert_eq!(opts.pass(), Some("p@ss"));
    for (url, setting) in [
        ("mysql://u@/db", "url"),
        ("mysql://u:%zz@h/db", "password"),
        ("mysql://u@h/%zz", "dbname"),
        ("mysql://u@h:70000/db", "url"),
        ("mysql://u@h/db?socket=%zz", "socket"),
    ] {
        let error = PoolConfig::from_url(url).unwrap_err();
        assert_eq!(error.setting, setting, "{url}: {error}");
    }
}
