//! Reading a database URL: the backend, the pool's own parameters, the TLS parameters, and the
//! URL the driver is given (checked by the driver at once).

use ballast_core::redact;

use super::check::{limit_error, optional_seconds, positive_seconds, queue_limit_error, seconds};
use super::libpq::TargetBuilder;
use super::percent;
use super::tls::TlsParameters;
use super::{Backend, ConfigError, PoolConfig};

/// The pool's own URL parameters, removed before the URL reaches the driver.
const POOL_PARAMETERS: [&str; 14] = [
    "connection_limit",
    "leak_threshold",
    "queue_target",
    "pool_timeout",
    "connect_timeout",
    "idle_timeout",
    "max_lifetime",
    "check_idle_after",
    "queue_limit",
    "statement_cache_size",
    "schema",
    "statement_timeout",
    "socket_timeout",
    "pgbouncer",
];

impl PoolConfig {
    /// Settings from a database URL and its query parameters (see the type's table); other query
    /// parameters are kept for the driver.
    ///
    /// Accepted forms: `postgres://...`, `postgresql://...`, `mysql://...`, `mariadb://...`,
    /// `sqlite://path`, `sqlite:path`, `sqlite::memory:` (one in-memory database shared by the
    /// pool's connections) and a SQLite `file:` URI (`file:data.db?mode=ro`). Nothing else is a
    /// database URL: a bare word, a path without `sqlite:` or a libpq keyword string
    /// (`host=... password=...`) is refused rather than taken for a SQLite file name, and no
    /// file is created. A parameter given twice is refused too, rather than one of them winning.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting and the reason; it never contains the password.
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let url = url.trim();
        if url.is_empty() {
            return Err(ConfigError::new("url", "is empty"));
        }
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, query),
            None => (url, ""),
        };
        let backend = backend_of(base)?;
        let mut kept = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        let mut tls = TlsParameters::default();
        let mut config = Self::defaults(backend, String::new());
        // PostgreSQL's URI is read as libpq reads it; MySQL's and SQLite's go to their drivers.
        let mut target = match backend {
            Backend::Postgres => Some(TargetBuilder::from_base(base)?),
            _ => None,
        };
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            // Keys and values are percent-decoded, strictly: a malformed escape is refused by
            // name, as libpq refuses it, rather than passed on literally.
            let key = percent::decode("url", raw_key)?;
            let key = key.as_str();
            let value = percent::decode_param(key, raw_value)?;
            let value = value.as_str();
            if seen.iter().any(|seen| seen == key) {
                // The name only: a value may be a password.
                return Err(ConfigError::new(
                    "url",
                    format!("parameter `{}` is given twice", redact(key)),
                ));
            }
            seen.push(key.to_owned());
            match key {
                "connection_limit" => {
                    config.connection_limit = value
                        .parse::<u32>()
                        .map_err(|_| limit_error(&format!("{value:?}")))?;
                }
                "pool_timeout" => config.pool_timeout = positive_seconds("pool_timeout", value)?,
                "connect_timeout" => {
                    config.connect_timeout = positive_seconds("connect_timeout", value)?;
                }
                "idle_timeout" => config.idle_timeout = optional_seconds("idle_timeout", value)?,
                "max_lifetime" => config.max_lifetime = optional_seconds("max_lifetime", value)?,
                "check_idle_after" => {
                    config.check_idle_after = seconds("check_idle_after", value)?;
                }
                "queue_target" => config.queue_target = optional_seconds("queue_target", value)?,
                "leak_threshold" => {
                    config.leak_threshold = optional_seconds("leak_threshold", value)?;
                }
                "queue_limit" => {
                    let limit = value
                        .parse::<u32>()
                        .map_err(|_| queue_limit_error(&format!("{value:?}")))?;
                    config.queue_limit = Some(limit);
                }
                "statement_cache_size" => {
                    let size = value.parse::<u32>().map_err(|_| {
                        ConfigError::new(
                            "statement_cache_size",
                            format!(
                                "must be a whole number, 0 to turn the cache off (got {value:?})"
                            ),
                        )
                    })?;
                    config.statement_cache = size > 0;
                }
                "schema" => {
                    if backend != Backend::Postgres {
                        return Err(ConfigError::new(
                            "schema",
                            "is PostgreSQL's search_path; MySQL and SQLite name the database in the URL",
                        ));
                    }
                    let schema = value.to_owned();
                    if schema.is_empty() {
                        return Err(ConfigError::new("schema", "is empty"));
                    }
                    config.schema = Some(schema);
                }
                "statement_timeout" if value == "deadline" => {
                    if backend == Backend::Sqlite {
                        return Err(ConfigError::new(
                            "statement_timeout",
                            "deadline is applied on PostgreSQL and MariaDB; SQLite runs in the process",
                        ));
                    }
                    config.statement_deadline = true;
                }
                "statement_timeout" => {
                    if backend != Backend::Postgres {
                        return Err(ConfigError::new(
                            "statement_timeout",
                            "is applied on PostgreSQL only; for MariaDB set max_statement_time (MySQL: max_execution_time) with PoolConfig::with_after_connect",
                        ));
                    }
                    config.statement_timeout = Some(positive_seconds("statement_timeout", value)?);
                }
                "socket_timeout" => {
                    return Err(ConfigError::new(
                        "socket_timeout",
                        "is not supported: bound requests with the request timeout, and queries on the server with statement_timeout",
                    ));
                }
                "pgbouncer" => {
                    config.pgbouncer = match value {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(ConfigError::new(
                                "pgbouncer",
                                format!("must be true or false (got {value:?})"),
                            ))
                        }
                    };
                }
                _ if tls.read(key, value, backend)? => {}
                _ => match target.as_mut() {
                    Some(target) => target.param(key, value.to_owned())?,
                    None => kept.push(pair),
                },
            }
        }
        debug_assert!(POOL_PARAMETERS.iter().all(|name| !kept.contains(name)));
        let (settings, driver_sslmode) = tls.settings(backend)?;
        config.tls = settings;
        if let Some(target) = target {
            let mut target = target.build()?;
            if let Some((key, value)) = driver_sslmode.and_then(|mode| mode.split_once('=')) {
                target.push_param(key, value);
            }
            let url = target.url(None);
            check_driver_url(backend, &url)?;
            for i in 0..target.hosts.len() {
                check_driver_url(backend, &target.url(Some(i)))?;
            }
            config.driver_url = url;
            config.target = Some(std::sync::Arc::new(target));
            config.check()?;
            return Ok(config);
        }
        if let Some(mode) = driver_sslmode {
            kept.push(mode);
        }
        config.driver_url = driver_url(backend, base, &kept.join("&"))?;
        config.check()?;
        Ok(config)
    }
}

fn backend_of(base: &str) -> Result<Backend, ConfigError> {
    let scheme = base.split_once("://").map(|(scheme, _)| scheme);
    match scheme {
        Some("postgres" | "postgresql") => Ok(Backend::Postgres),
        Some("mysql" | "mariadb") => Ok(Backend::Mysql),
        Some("sqlite") => Ok(Backend::Sqlite),
        Some(other) => Err(ConfigError::new(
            "url",
            format!(
                "unsupported scheme `{}`: use postgres://, mysql://, sqlite:path or file:path",
                redact(other)
            ),
        )),
        // `sqlite:path`, `sqlite::memory:` and SQLite's `file:` URIs.
        None if base.starts_with("sqlite:") || base.starts_with("file:") => Ok(Backend::Sqlite),
        // Never echoed: a libpq keyword string carries the password.
        None => Err(ConfigError::new(
            "url",
            "is not a database URL: use postgres://, mysql://, sqlite:path or file:path",
        )),
    }
}

fn driver_url(backend: Backend, base: &str, query: &str) -> Result<String, ConfigError> {
    let with_query = |base: &str| {
        if query.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{query}")
        }
    };
    match backend {
        Backend::Postgres | Backend::Mysql => {
            let socket = query.split('&').any(|pair| pair.starts_with("socket="));
            // `mysql://user@/db?socket=...`: the socket is the server; the driver wants a host
            // name beside it (and the URL parser refuses credentials without a host).
            let base = match empty_host(base) {
                Some(at) if socket => format!("{}localhost{}", &base[..at], &base[at..]),
                Some(_) => return Err(ConfigError::new(
                    "url",
                    "has no host: name one, or a Unix socket with `socket=/path/to/mysqld.sock`",
                )),
                None => base.to_owned(),
            };
            let candidate = with_query(&base);
            // Check the URL's shape here so a typo fails at startup with a clear message, and
            // so the message cannot echo the password (the parser's error never includes it).
            let parsed = url::Url::parse(&candidate)
                .map_err(|error| ConfigError::new("url", format!("is not a valid URL: {error}")))?;
            // Its parts are percent-decoded by the driver: a malformed escape is refused here.
            percent::decode("user", parsed.username())?;
            if let Some(password) = parsed.password() {
                percent::decode("password", password)?;
            }
            percent::decode("dbname", parsed.path())?;
            let candidate = if parsed.scheme() == "mariadb" {
                candidate.replacen("mariadb://", "mysql://", 1)
            } else {
                candidate
            };
            check_driver_url(backend, &candidate)?;
            Ok(candidate)
        }
        Backend::Sqlite => {
            let path = base
                .strip_prefix("sqlite://")
                .or_else(|| base.strip_prefix("sqlite:"))
                .unwrap_or(base);
            if path.is_empty() {
                return Err(ConfigError::new("url", "names no SQLite file"));
            }
            if path == ":memory:" {
                // Every pooled connection must see the same database: a named, shared-cache
                // in-memory database lives as long as one connection to it is open.
                let name = format!(
                    "ballast_memory_{}_{}",
                    std::process::id(),
                    MEMORY_DATABASES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                );
                return Ok(format!("file:{name}?mode=memory&cache=shared"));
            }
            check_sqlite_directory(path)?;
            Ok(with_query(path))
        }
    }
}

/// A SQLite file in a directory that does not exist can never be opened: every request would
/// fail. Refused when the URL is read, naming the directory.
fn check_sqlite_directory(path: &str) -> Result<(), ConfigError> {
    if path.contains("mode=memory") {
        return Ok(());
    }
    let file = path.strip_prefix("file:").unwrap_or(path);
    let file = file.split('?').next().unwrap_or(file);
    // `file://` with an empty authority: the path follows.
    let file = file.strip_prefix("//").unwrap_or(file);
    if file.is_empty() || file == ":memory:" {
        return Ok(());
    }
    match std::path::Path::new(file).parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => Err(ConfigError::new(
            "url",
            format!(
                "the SQLite file's directory `{}` does not exist (SQLite creates the file, not its directory)",
                dir.display()
            ),
        )),
        _ => Ok(()),
    }
}

/// Where the host of `base` (`scheme://[userinfo@]host[:port][/path]`) would be, when it is
/// empty.
fn empty_host(base: &str) -> Option<usize> {
    let start = base.find("://")? + 3;
    let authority_end = base[start..]
        .find('/')
        .map_or(base.len(), |end| start + end);
    let host_start = base[start..authority_end]
        .rfind('@')
        .map_or(start, |at| start + at + 1);
    let host = &base[host_start..authority_end];
    (host.is_empty() || host.starts_with(':')).then_some(host_start)
}

/// Lets the driver parse the URL now, so a bad option fails at startup rather than at the first
/// connect. The driver's message is redacted: it must not echo the password.
#[cfg_attr(
    not(any(feature = "postgres", feature = "mysql")),
    allow(unused_variables)
)]
fn check_driver_url(backend: Backend, url: &str) -> Result<(), ConfigError> {
    let problem: Option<String> =
        match backend {
            #[cfg(feature = "postgres")]
            Backend::Postgres => url.parse::<tokio_postgres::Config>().err().map(|error| {
                match std::error::Error::source(&error) {
                    Some(source) => format!("{error}: {source}"),
                    None => error.to_string(),
                }
            }),
            #[cfg(feature = "mysql")]
            Backend::Mysql => mysql_async::Opts::from_url(url)
                .err()
                .map(|error| error.to_string()),
            _ => None,
        };
    match problem {
        Some(problem) => Err(ConfigError::new(
            "url",
            format!("is not accepted by the driver: {}", redact(&problem)),
        )),
        None => Ok(()),
    }
}

/// Counter that names each `sqlite::memory:` pool's database.
static MEMORY_DATABASES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
