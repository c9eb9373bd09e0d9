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
        format!("postgres://app:{CANARY}@/shop"),
        format!("postgres://app:{CANARY}@db:notaport/shop"),
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
    // A Unix socket directory replaces the URL's host, as in Prisma.
    let config =
        PoolConfig::from_url("postgresql://u:p@localhost:5433/db?host=/var/run/postgresql")
            .unwrap();
    assert_eq!(
        config.driver_url(),
        "postgresql://u:p@:5433/db?host=/var/run/postgresql"
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
