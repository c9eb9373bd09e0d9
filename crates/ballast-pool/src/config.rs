//! Pool settings, from code or from a database URL's query parameters.

pub use ballast_core::ConfigError;
use std::fmt;
use std::time::Duration;

use ballast_core::redact;

/// Default `connection_limit`: the seed's pool size, and Prisma's default for a 2-core machine
/// (`num_cpus * 2 + 1` rounded up).
const DEFAULT_CONNECTION_LIMIT: u32 = 10;
/// Default `pool_timeout`: the longest a request waits for a connection (Prisma's default).
const DEFAULT_POOL_TIMEOUT: Duration = Duration::from_secs(20);
/// Default `connect_timeout`: the longest one connect may take, TCP and startup (Prisma's default).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `idle_timeout`: idle connections are closed after this long (bb8's default).
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Default `max_lifetime`: connections are replaced after this long (bb8's default), so server-side
/// memory growth and configuration changes do not live forever.
const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(1800);
/// Default `check_idle_after`: a connection idle this long is tested with one round trip before it
/// is handed out. Shorter idles are trusted: a connection that broke since is caught by the query
/// itself and dropped when it comes back.
const DEFAULT_CHECK_IDLE_AFTER: Duration = Duration::from_secs(30);
/// Default `queue_target`: the wait a standing queue is held to. About a second: long enough
/// that 200 clients on a pool of 10 with 20 ms queries (waits of 0.4 s) and a burst that drains
/// within a second and a half are never refused, short enough that a user who is admitted is
/// answered in a couple of seconds however far the load exceeds the database.
const DEFAULT_QUEUE_TARGET: Duration = Duration::from_secs(1);
/// The largest accepted `queue_limit`.
const MAX_QUEUE_LIMIT: u32 = 100_000;
/// The largest accepted `connection_limit`. PostgreSQL's default `max_connections` is 100; a pool
/// of more than a thousand is a configuration mistake.
const MAX_CONNECTION_LIMIT: u32 = 1000;
/// The largest accepted duration setting, in seconds (one day).
const MAX_SECONDS: f64 = 86_400.0;

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// `postgres://` or `postgresql://`.
    Postgres,
    /// `mysql://` or `mariadb://`.
    Mysql,
    /// `sqlite://path`, `sqlite:path`, `sqlite::memory:`, or a SQLite `file:` URI.
    Sqlite,
}

/// The pool's settings.
///
/// Build one from a URL with [`PoolConfig::from_url`] — the pool's own query parameters use
/// Prisma's names and are removed before the URL reaches the driver — then adjust it from code
/// with the `with_*` setters, which never fail: like bb8's and moka's builders, the settings are
/// checked together when the pool is built ([`SharedPool::new`](crate::SharedPool::new), or
/// [`check`](Self::check) on its own), and the error names the first setting out of range.
/// [`from_url`](Self::from_url) checks what the URL sets at once. Nothing panics on bad input.
///
/// | URL parameter | setter | default | meaning |
/// |---|---|---|---|
/// | `connection_limit` | [`with_connection_limit`](Self::with_connection_limit) | 10 | most connections open at once (1 to 1000) |
/// | `pool_timeout` | [`with_pool_timeout`](Self::with_pool_timeout) | 20 s | longest a checkout waits for a connection |
/// | `connect_timeout` | [`with_connect_timeout`](Self::with_connect_timeout) | 10 s | longest one connect may take, TCP and startup |
/// | `idle_timeout` | [`with_idle_timeout`](Self::with_idle_timeout) | 600 s | idle connections close after this (0: never) |
/// | `max_lifetime` | [`with_max_lifetime`](Self::with_max_lifetime) | 1800 s | connections are replaced after this (0: never) |
/// | `check_idle_after` | [`with_check_idle_after`](Self::with_check_idle_after) | 30 s | connections idle this long are tested before checkout (0: test every checkout) |
/// | `queue_target` | [`with_queue_target`](Self::with_queue_target) | 1 s | admission by time: a checkout that cannot be served within `pool_timeout` (or the request's deadline) is refused at once, and once waits have stayed above this for half as long again, so is one expected to wait longer than this (0: off, checkouts wait up to `pool_timeout`); see the [crate docs](crate#admission-by-time) |
/// | `queue_limit` | [`with_queue_limit`](Self::with_queue_limit) | none | an explicit cap on checkouts waiting at once; one more is refused at once (0: no cap) |
/// | `statement_cache_size` | [`with_statement_cache`](Self::with_statement_cache) | on | each connection keeps diesel's prepared statements (0: off, for PgBouncer's transaction mode; any other number: on — diesel's cache has no size bound) |
/// | `schema` | — | the server's | PostgreSQL: each connection's `search_path` (Prisma's meaning); a schema the database does not have fails the connect as a configuration error |
/// | `statement_timeout` | [`with_statement_timeout`](Self::with_statement_timeout) | the server's | PostgreSQL: longest a statement runs on the server, seconds; applied to each connection |
/// | `statement_timeout=deadline` | [`with_statement_deadline`](Self::with_statement_deadline) | off | PostgreSQL and MariaDB: each checkout inside a request with a deadline bounds its statements on the server by the time the request has left (a pipelined `SET` when the connection's bound is not already within 5% above it); refused with `pgbouncer=true` |
/// | `leak_threshold` | [`with_leak_threshold`](Self::with_leak_threshold) | off | a connection checked out longer than this (seconds) is logged once with where it was checked out and the request's path, and counted (`PoolStats::held_too_long`); 0: off |
/// | `pgbouncer` | [`with_pgbouncer`](Self::with_pgbouncer) | false | PostgreSQL: `true` when the URL points at PgBouncer in transaction (or statement) mode; see the [crate docs](crate#pgbouncer) |
/// | — | [`with_after_connect`](Self::with_after_connect) | none | SQL each connection runs as it opens (`SET TIME ZONE 'UTC'`) |
///
/// TLS (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`, `sslaccept`) is read here and needs the
/// `tls` feature; see the [crate docs](crate#tls-feature-tls). Everything else goes to the driver
/// and is checked by it at once: PostgreSQL's `application_name`, `options`, `host` (a Unix
/// socket directory, which replaces the URL's host as in Prisma), `keepalives`..., MySQL's
/// `socket`, `prefer_socket`... Prisma's parameters ballast cannot honour are refused by name:
/// `socket_timeout` (bound requests with a request timeout),
/// `sslidentity` and `sslpassword` (PKCS#12 and encrypted keys).
///
/// Durations are seconds, fractions allowed (`pool_timeout=0.5`), from 0 to 86400; `pool_timeout`
/// and `connect_timeout` must be greater than 0.
///
/// ```
/// use std::time::Duration;
/// use ballast_pool::PoolConfig;
///
/// let config = PoolConfig::from_url(
///     "postgres://app:secret@db:5432/shop?connection_limit=8&pool_timeout=5&sslmode=disable",
/// )?;
/// assert_eq!(config.connection_limit(), 8);
/// assert_eq!(config.pool_timeout(), Duration::from_secs(5));
/// assert_eq!(config.connect_timeout(), Duration::from_secs(10)); // the default
/// // The password never shows.
/// assert!(!format!("{config:?}").contains("secret"));
///
/// let error = PoolConfig::from_url("postgres://db/shop?connection_limit=lots").unwrap_err();
/// assert_eq!(
///     error.to_string(),
///     "invalid setting `connection_limit`: must be a whole number from 1 to 1000 (got \"lots\")",
/// );
/// # Ok::<(), ballast_pool::ConfigError>(())
/// ```
#[derive(Clone, PartialEq)]
pub struct PoolConfig {
    backend: Backend,
    /// The URL the driver sees: the pool's own parameters removed.
    driver_url: String,
    connection_limit: u32,
    pool_timeout: Duration,
    connect_timeout: Duration,
    idle_timeout: Option<Duration>,
    max_lifetime: Option<Duration>,
    check_idle_after: Duration,
    /// `None`: admission by time is off.
    queue_target: Option<Duration>,
    /// As set: `None` and `Some(0)` are no cap.
    queue_limit: Option<u32>,
    statement_cache: bool,
    /// Prisma's `schema`: the connections' `search_path` (PostgreSQL).
    schema: Option<String>,
    /// Applied to each connection as it opens (PostgreSQL).
    statement_timeout: Option<Duration>,
    /// `statement_timeout=deadline`: each checkout under a request deadline bounds its
    /// statements by the time left.
    statement_deadline: bool,
    /// Connections checked out longer than this are logged; `None`: off.
    leak_threshold: Option<Duration>,
    /// SQL run on each connection as it opens, after the two above.
    after_connect: Vec<String>,
    /// TLS to the server (PostgreSQL); `None`: plain text.
    tls: Option<TlsSettings>,
    /// Prisma's `pgbouncer=true`: the URL points at PgBouncer in transaction mode.
    pgbouncer: bool,
}

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

/// libpq's `sslmode`s that use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    /// Encrypt when the server offers it; the certificate is not checked.
    Prefer,
    /// Encrypt; the certificate is not checked.
    Require,
    /// Encrypt; the certificate must lead to a trusted root.
    VerifyCa,
    /// Encrypt; the certificate must lead to a trusted root and name the host.
    VerifyFull,
}

/// TLS to PostgreSQL as the URL asks for it, the files already read.
#[derive(Clone, PartialEq)]
pub(crate) struct TlsSettings {
    pub(crate) mode: SslMode,
    /// `sslrootcert`'s certificates (PEM); `None`: the public roots.
    pub(crate) root_pem: Option<Vec<u8>>,
    /// `sslcert` and `sslkey` (PEM).
    pub(crate) client: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("TlsSettings")
            .field("mode", &self.mode)
            .field("sslrootcert", &self.root_pem.is_some())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

/// The TLS parameters of a URL, gathered before they are checked together.
#[derive(Default)]
struct TlsParameters {
    mode: Option<Option<SslMode>>,
    accept: Option<SslMode>,
    root: Option<Vec<u8>>,
    cert: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
}

impl TlsParameters {
    /// The settings, and the `sslmode` the driver is given (it knows disable, prefer and
    /// require; the verification is ballast's).
    fn settings(
        self,
        backend: Backend,
    ) -> Result<(Option<TlsSettings>, Option<&'static str>), ConfigError> {
        let asked = match (self.mode, self.accept) {
            // Prisma: `sslaccept` says how a TLS connection checks the server.
            (Some(Some(mode)), Some(accept)) if mode != SslMode::Prefer => Some(accept),
            (None, Some(accept)) => Some(accept),
            (Some(mode), _) => mode,
            (None, None) => None,
        };
        let client = match (self.cert, self.key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::new("sslkey", "is missing: sslcert needs it"))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new("sslcert", "is missing: sslkey needs it"))
            }
        };
        // mysql_async cannot fall back from TLS to plain text: MySQL's `prefer` is plain text.
        let asked = asked.filter(|mode| backend == Backend::Postgres || *mode != SslMode::Prefer);
        let driver_mode = |mode: &'static str| (backend == Backend::Postgres).then_some(mode);
        let Some(mode) = asked else {
            if client.is_some() || self.root.is_some() {
                return Err(ConfigError::new(
                    "sslmode",
                    "certificates are given but sslmode is not set: say require, verify-ca or verify-full",
                ));
            }
            // `disable`, or nothing: plain text (libpq would prefer TLS; ballast asks for it).
            let driver = self.mode.and_then(|_| driver_mode("sslmode=disable"));
            return Ok((None, driver));
        };
        if !cfg!(feature = "tls") {
            if mode == SslMode::Prefer {
                // As libpq against a server without TLS: plain text.
                return Ok((None, driver_mode("sslmode=prefer")));
            }
            return Err(ConfigError::new(
                "sslmode",
                "TLS needs ballast-pool's `tls` feature (ballast: `tls`), which this build does not have",
            ));
        }
        let driver = if mode == SslMode::Prefer {
            "sslmode=prefer"
        } else {
            "sslmode=require"
        };
        Ok((
            Some(TlsSettings {
                mode,
                root_pem: self.root,
                client,
            }),
            driver_mode(driver),
        ))
    }
}

/// Reads a PEM file a TLS parameter names; a file that cannot be read, or holds no PEM, fails
/// at startup with the parameter's name.
fn read_pem(setting: &'static str, path: &str) -> Result<Vec<u8>, ConfigError> {
    let path = percent_decode(path);
    let bytes = std::fs::read(&path)
        .map_err(|error| ConfigError::new(setting, format!("cannot read {path}: {error}")))?;
    if !bytes.windows(11).any(|window| window == b"-----BEGIN ") {
        return Err(ConfigError::new(
            setting,
            format!("{path} holds no PEM data"),
        ));
    }
    Ok(bytes)
}

/// Prisma's TLS parameters and libpq's, which need TLS support ballast does not have yet.
const TLS_PARAMETERS: [&str; 6] = [
    "sslcert",
    "sslidentity",
    "sslpassword",
    "sslaccept",
    "sslrootcert",
    "sslkey",
];

impl PoolConfig {
    fn defaults(backend: Backend, driver_url: String) -> Self {
        PoolConfig {
            backend,
            driver_url,
            connection_limit: DEFAULT_CONNECTION_LIMIT,
            pool_timeout: DEFAULT_POOL_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            max_lifetime: Some(DEFAULT_MAX_LIFETIME),
            check_idle_after: DEFAULT_CHECK_IDLE_AFTER,
            queue_target: Some(DEFAULT_QUEUE_TARGET),
            queue_limit: None,
            statement_cache: true,
            schema: None,
            statement_timeout: None,
            statement_deadline: false,
            leak_threshold: None,
            after_connect: Vec::new(),
            tls: None,
            pgbouncer: false,
        }
    }

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
        let mut seen: Vec<&str> = Vec::new();
        let mut tls = TlsParameters::default();
        let mut config = Self::defaults(backend, String::new());
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if seen.contains(&key) {
                // The name only: a value may be a password.
                return Err(ConfigError::new(
                    "url",
                    format!("parameter `{}` is given twice", redact(key)),
                ));
            }
            seen.push(key);
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
                    let schema = percent_decode(value);
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
                "sslmode" if backend != Backend::Sqlite => {
                    tls.mode = Some(match value {
                        "disable" => None,
                        "prefer" => Some(SslMode::Prefer),
                        "require" => Some(SslMode::Require),
                        "verify-ca" => Some(SslMode::VerifyCa),
                        "verify-full" => Some(SslMode::VerifyFull),
                        _ => {
                            return Err(ConfigError::new(
                                "sslmode",
                                "must be disable, prefer, require, verify-ca or verify-full",
                            ))
                        }
                    });
                }
                "sslaccept" if backend != Backend::Sqlite => {
                    tls.accept = Some(match value {
                        "strict" => SslMode::VerifyFull,
                        "accept_invalid_certs" => SslMode::Require,
                        _ => {
                            return Err(ConfigError::new(
                                "sslaccept",
                                "must be strict or accept_invalid_certs",
                            ))
                        }
                    });
                }
                "sslrootcert" if backend != Backend::Sqlite => {
                    tls.root = Some(read_pem("sslrootcert", value)?);
                }
                "sslcert" if backend == Backend::Postgres => {
                    tls.cert = Some(read_pem("sslcert", value)?);
                }
                // Prisma's MySQL `sslcert` is the server's certificate (or its CA): a root.
                "sslcert" if backend == Backend::Mysql => {
                    tls.root = Some(read_pem("sslcert", value)?);
                }
                "sslkey" if backend == Backend::Postgres => {
                    tls.key = Some(read_pem("sslkey", value)?);
                }
                "sslidentity" | "sslpassword" if backend != Backend::Sqlite => {
                    return Err(ConfigError::new(
                        if key == "sslidentity" { "sslidentity" } else { "sslpassword" },
                        "PKCS#12 identities and encrypted keys are not supported (PostgreSQL: give sslcert and sslkey as PEM files)",
                    ));
                }
                tls_parameter if TLS_PARAMETERS.contains(&tls_parameter) => {
                    return Err(ConfigError::new(
                        "url",
                        format!("parameter `{tls_parameter}` is for PostgreSQL (MySQL: sslmode, sslaccept, sslrootcert or Prisma's sslcert)"),
                    ));
                }
                _ => kept.push(pair),
            }
        }
        debug_assert!(POOL_PARAMETERS.iter().all(|name| !kept.contains(name)));
        let (settings, driver_sslmode) = tls.settings(backend)?;
        config.tls = settings;
        if let Some(mode) = driver_sslmode {
            kept.push(mode);
        }
        config.driver_url = driver_url(backend, base, &kept.join("&"))?;
        config.check()?;
        Ok(config)
    }

    /// Checks every setting, naming the first one out of range. [`from_url`](Self::from_url)
    /// and [`SharedPool::new`](crate::SharedPool::new) call it: the setters below never fail.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting and the accepted range.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_CONNECTION_LIMIT).contains(&self.connection_limit) {
            return Err(limit_error(&self.connection_limit.to_string()));
        }
        positive_duration("pool_timeout", self.pool_timeout)?;
        positive_duration("connect_timeout", self.connect_timeout)?;
        if let Some(timeout) = self.idle_timeout {
            positive_duration("idle_timeout", timeout)?;
        }
        if let Some(lifetime) = self.max_lifetime {
            positive_duration("max_lifetime", lifetime)?;
        }
        if self.check_idle_after.as_secs_f64() > MAX_SECONDS {
            let got = format!("{:?}", self.check_idle_after);
            return Err(seconds_error("check_idle_after", &got));
        }
        if let Some(target) = self.queue_target {
            positive_duration("queue_target", target)?;
        }
        if let Some(threshold) = self.leak_threshold {
            positive_duration("leak_threshold", threshold)?;
        }
        if self.statement_deadline && self.backend == Backend::Sqlite {
            return Err(ConfigError::new(
                "statement_timeout",
                "deadline is applied on PostgreSQL and MariaDB; SQLite runs in the process",
            ));
        }
        if let Some(limit) = self.queue_limit.filter(|limit| *limit > MAX_QUEUE_LIMIT) {
            return Err(queue_limit_error(&limit.to_string()));
        }
        if self.pgbouncer {
            if self.backend != Backend::Postgres {
                return Err(ConfigError::new(
                    "pgbouncer",
                    "PgBouncer pools PostgreSQL connections only",
                ));
            }
            // Session settings last one transaction behind PgBouncer's transaction mode.
            let session = "a SET lasts one transaction behind PgBouncer in transaction mode: set it on the role (ALTER ROLE ... SET) or in the database entry of pgbouncer.ini";
            if self.schema.is_some() {
                return Err(ConfigError::new("schema", session));
            }
            if self.statement_timeout.is_some() {
                return Err(ConfigError::new("statement_timeout", session));
            }
            if self.statement_deadline {
                return Err(ConfigError::new(
                    "statement_timeout",
                    "deadline sets statement_timeout on the session, which PgBouncer in transaction mode hands to other clients: bound statements with PgBouncer's query_timeout instead",
                ));
            }
        }
        Ok(())
    }

    /// Sets the most connections the pool opens at once: 1 to 1000. Defaults to 10.
    #[must_use]
    pub fn with_connection_limit(mut self, limit: u32) -> Self {
        self.connection_limit = limit;
        self
    }

    /// Sets the longest a checkout waits for a connection: more than zero, at most a day.
    /// Defaults to 20 s.
    #[must_use]
    pub fn with_pool_timeout(mut self, timeout: Duration) -> Self {
        self.pool_timeout = timeout;
        self
    }

    /// Sets the longest one connect may take, TCP and startup included: more than zero, at most
    /// a day. Defaults to 10 s.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets how long a connection may stay idle before it is closed (more than zero, at most a
    /// day); `None` keeps idle connections open. Defaults to 600 s.
    #[must_use]
    pub fn with_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets how long a connection lives before it is replaced (more than zero, at most a day);
    /// `None` keeps it forever. Defaults to 1800 s.
    #[must_use]
    pub fn with_max_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.max_lifetime = lifetime;
        self
    }

    /// Sets how long a connection may sit idle before it is tested with a round trip at
    /// checkout (at most a day); zero tests every checkout (bb8's and diesel-async's default
    /// behaviour). Defaults to 30 s.
    #[must_use]
    pub fn with_check_idle_after(mut self, after: Duration) -> Self {
        self.check_idle_after = after;
        self
    }

    /// Sets the wait a standing queue is held to, turning admission by time on (`Some`, the
    /// default, 1 s; more than zero, at most a day) or off (`None`).
    ///
    /// On, a checkout is refused at once — `Overloaded`, a 503 that says `retryable` with a
    /// `Retry-After` from the estimate — when the wait it can expect is longer than the time it
    /// has (`pool_timeout`, or less inside a request with a deadline); and once waits have stayed
    /// above the target for half the target, also when it expects to wait longer than the
    /// target, while checkouts that already waited past it give up. A burst that drains is
    /// served; see the [crate docs](crate#admission-by-time). Off, every checkout waits up to
    /// `pool_timeout`, as bb8 does.
    #[must_use]
    pub fn with_queue_target(mut self, target: Option<Duration>) -> Self {
        self.queue_target = target;
        self
    }

    /// Sets an explicit cap on checkouts waiting for a connection at once (at most 100 000); a
    /// checkout beyond it is refused at once with `Overloaded`. 0 sets no cap, the default:
    /// admission by time ([`with_queue_target`](Self::with_queue_target)) decides what waits,
    /// and a count cannot tell a queue of 20 ms queries from one of 2 s queries.
    #[must_use]
    pub fn with_queue_limit(mut self, limit: u32) -> Self {
        self.queue_limit = Some(limit);
        self
    }

    /// Sets whether each connection keeps diesel's prepared statements, so a query diesel may
    /// cache is parsed once per connection rather than on every run. Turn it off behind a
    /// pooler that hands each transaction another server connection (PgBouncer's transaction
    /// mode): a statement prepared on one is unknown on the next. Defaults to on.
    ///
    /// diesel never caches `diesel::sql_query` (raw SQL is marked unsafe to cache); queries
    /// built with the DSL are cached.
    #[must_use]
    pub fn with_statement_cache(mut self, enabled: bool) -> Self {
        self.statement_cache = enabled;
        self
    }

    /// Whether connections keep prepared statements.
    pub fn statement_cache(&self) -> bool {
        self.statement_cache
    }

    /// Adds SQL to run on each connection as it opens, such as `SET TIME ZONE 'UTC'`: after
    /// the URL's `schema` and `statement_timeout`, within `connect_timeout`. A statement the
    /// server refuses makes the connect fail as a configuration error (`DB_INIT_ERROR`), not
    /// retried.
    #[must_use]
    pub fn with_after_connect(mut self, sql: impl Into<String>) -> Self {
        self.after_connect.push(sql.into());
        self
    }

    /// Sets the longest a statement may run on the server (PostgreSQL's `statement_timeout`,
    /// applied to each connection as it opens); `None`, the default, leaves the server's.
    #[must_use]
    pub fn with_statement_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// Sets whether the URL points at PgBouncer in transaction (or statement) mode, as the URL's
    /// `pgbouncer=true` does: every statement is then sent so that it runs within one exchange
    /// with the server (see the [crate docs](crate#pgbouncer)). PostgreSQL only; `schema` and
    /// `statement_timeout` are refused with it, and statements of
    /// [`with_after_connect`](Self::with_after_connect) last only their own transaction. Defaults
    /// to `false`.
    #[must_use]
    pub fn with_pgbouncer(mut self, pgbouncer: bool) -> Self {
        self.pgbouncer = pgbouncer;
        self
    }

    /// Whether the URL points at PgBouncer in transaction mode (`pgbouncer=true`).
    pub fn pgbouncer(&self) -> bool {
        self.pgbouncer
    }

    /// The connections' `search_path` (Prisma's `schema`), if set.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// TLS to the server as the URL asks for it; `None`: plain text.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn tls(&self) -> Option<&TlsSettings> {
        self.tls.as_ref()
    }

    /// The server-side statement timeout, if set.
    pub fn statement_timeout(&self) -> Option<Duration> {
        self.statement_timeout
    }

    /// Sets whether each checkout inside a request with a deadline
    /// ([`RequestScope`](ballast_core::scope::RequestScope), set by a request-timeout layer)
    /// bounds its statements on the server by the time the request has left, as the URL's
    /// `statement_timeout=deadline` does: a statement then stops on the server when its request
    /// can no longer use the answer, even when the process dies before it can send a cancel.
    ///
    /// PostgreSQL: `SET statement_timeout` before the connection is handed out, the smaller of
    /// the time left and a fixed [`statement_timeout`](Self::with_statement_timeout); a checkout
    /// without a deadline puts the connection's own value back. MariaDB: `SET SESSION
    /// max_statement_time` the same way (MySQL has no such variable: its first checkout fails
    /// as a configuration error). The bound set is the time left and a fortieth more, and a
    /// connection whose bound already lies between the time left and a twentieth more keeps it
    /// (no statement is stopped before its deadline; none outlives it by more than 5% of the time
    /// that was left), so a route whose requests have about the same time left sends one `SET`
    /// per connection; on PostgreSQL it is pipelined ahead of the first statement.
    /// Refused with `pgbouncer=true`: a session setting would reach other clients'
    /// transactions. Defaults to off.
    #[must_use]
    pub fn with_statement_deadline(mut self, deadline: bool) -> Self {
        self.statement_deadline = deadline;
        self
    }

    /// Whether checkouts bound their statements by the request's deadline.
    pub fn statement_deadline(&self) -> bool {
        self.statement_deadline
    }

    /// Sets how long a connection may stay checked out before it is logged as held too long
    /// (once per checkout, with the caller's source location and the request's path, and
    /// counted in [`PoolStats::held_too_long`](crate::PoolStats::held_too_long)); `None`, the
    /// default, is off. More than zero, at most a day. HikariCP calls it
    /// `leakDetectionThreshold`.
    #[must_use]
    pub fn with_leak_threshold(mut self, threshold: Option<Duration>) -> Self {
        self.leak_threshold = threshold;
        self
    }

    /// How long a checkout may last before it is logged, if that is on.
    pub fn leak_threshold(&self) -> Option<Duration> {
        self.leak_threshold
    }

    /// The statements each new connection runs before it is used, in order.
    pub(crate) fn after_connect_statements(&self) -> Vec<String> {
        let mut statements = Vec::new();
        if let Some(schema) = &self.schema {
            statements.push(format!(
                "SET search_path TO \"{}\"",
                schema.replace('"', "\"\"")
            ));
        }
        if let Some(timeout) = self.statement_timeout {
            statements.push(format!(
                "SET statement_timeout = {}",
                timeout.as_millis().max(1)
            ));
        }
        statements.extend(self.after_connect.iter().cloned());
        statements
    }

    /// The wait a standing queue is held to, or `None` when admission by time is off.
    pub fn queue_target(&self) -> Option<Duration> {
        self.queue_target
    }

    /// The cap on checkouts waiting at once, or `None` for no cap.
    pub fn queue_limit(&self) -> Option<u32> {
        self.queue_limit.filter(|limit| *limit > 0)
    }

    /// The database the URL names.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The most connections open at once.
    pub fn connection_limit(&self) -> u32 {
        self.connection_limit
    }

    /// The longest a checkout waits.
    pub fn pool_timeout(&self) -> Duration {
        self.pool_timeout
    }

    /// The longest one connect may take.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// How long an idle connection is kept.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }

    /// How long a connection lives.
    pub fn max_lifetime(&self) -> Option<Duration> {
        self.max_lifetime
    }

    /// How long a connection may idle before it is tested at checkout.
    pub fn check_idle_after(&self) -> Duration {
        self.check_idle_after
    }

    /// The URL the driver receives: the pool's parameters removed. It contains the password:
    /// never log it.
    pub fn driver_url(&self) -> &str {
        &self.driver_url
    }
}

impl fmt::Debug for PoolConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolConfig")
            .field("backend", &self.backend)
            .field("url", &redact(&self.driver_url))
            .field("connection_limit", &self.connection_limit)
            .field("pool_timeout", &self.pool_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_lifetime", &self.max_lifetime)
            .field("check_idle_after", &self.check_idle_after)
            .field("queue_target", &self.queue_target)
            .field("queue_limit", &self.queue_limit())
            .field("statement_cache", &self.statement_cache)
            .field("schema", &self.schema)
            .field("statement_timeout", &self.statement_timeout)
            .field("statement_deadline", &self.statement_deadline)
            .field("leak_threshold", &self.leak_threshold)
            .field("after_connect", &self.after_connect.len())
            .field("tls", &self.tls)
            .finish()
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
            let candidate = with_query(base);
            // Check the URL's shape here so a typo fails at startup with a clear message, and
            // so the message cannot echo the password (the parser's error never includes it).
            let parsed = url::Url::parse(&candidate)
                .map_err(|error| ConfigError::new("url", format!("is not a valid URL: {error}")))?;
            let host_parameter = backend == Backend::Postgres
                && query.split('&').any(|pair| pair.starts_with("host="));
            if parsed.host_str().is_none_or(str::is_empty) && !host_parameter {
                return Err(ConfigError::new("url", "has no host"));
            }
            // Prisma: a `host` parameter (a Unix socket directory) replaces the URL's host;
            // tokio-postgres would try both.
            let candidate = if host_parameter && parsed.host_str().is_some_and(|h| !h.is_empty()) {
                without_host(&parsed, query)
            } else {
                candidate
            };
            let candidate = if backend == Backend::Mysql && parsed.scheme() == "mariadb" {
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

/// `url` without its host (its user, password, port, path and `query` kept).
fn without_host(url: &url::Url, query: &str) -> String {
    let mut text = format!("{}://", url.scheme());
    if !url.username().is_empty() {
        text.push_str(url.username());
        if let Some(password) = url.password() {
            text.push(':');
            text.push_str(password);
        }
        text.push('@');
    }
    if let Some(port) = url.port() {
        text.push(':');
        text.push_str(&port.to_string());
    }
    text.push_str(url.path());
    if !query.is_empty() {
        text.push('?');
        text.push_str(query);
    }
    text
}

/// A query parameter's value, percent-decoded.
fn percent_decode(value: &str) -> String {
    url::form_urlencoded::parse(format!("v={value}").as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
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

fn limit_error(got: &str) -> ConfigError {
    ConfigError::new(
        "connection_limit",
        format!("must be a whole number from 1 to {MAX_CONNECTION_LIMIT} (got {got})"),
    )
}

fn queue_limit_error(got: &str) -> ConfigError {
    ConfigError::new(
        "queue_limit",
        format!("must be a whole number from 0 (no limit) to {MAX_QUEUE_LIMIT} (got {got})"),
    )
}

fn seconds_error(setting: &'static str, got: &str) -> ConfigError {
    ConfigError::new(
        setting,
        format!("must be a number of seconds from 0 to {MAX_SECONDS} (got {got})"),
    )
}

fn seconds(setting: &'static str, value: &str) -> Result<Duration, ConfigError> {
    let got = || format!("{value:?}");
    let secs: f64 = value.parse().map_err(|_| seconds_error(setting, &got()))?;
    if !(0.0..=MAX_SECONDS).contains(&secs) {
        return Err(seconds_error(setting, &got()));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn positive_seconds(setting: &'static str, value: &str) -> Result<Duration, ConfigError> {
    let duration = seconds(setting, value)?;
    positive_duration(setting, duration)
}

fn optional_seconds(setting: &'static str, value: &str) -> Result<Option<Duration>, ConfigError> {
    let duration = seconds(setting, value)?;
    Ok((!duration.is_zero()).then_some(duration))
}

fn positive_duration(setting: &'static str, duration: Duration) -> Result<Duration, ConfigError> {
    if duration.is_zero() || duration.as_secs_f64() > MAX_SECONDS {
        return Err(ConfigError::new(
            setting,
            format!("must be greater than 0 and at most {MAX_SECONDS} seconds (got {duration:?})"),
        ));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
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
        let error =
            PoolConfig::from_url(&url(&format!("sslrootcert={}", pem.display()))).unwrap_err();
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
}
