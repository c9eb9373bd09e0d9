//! Pool settings, from code or from a database URL's query parameters.
//!
//! `mod.rs` holds the settings, their defaults and their checks; `url.rs` reads a database URL
//! (the pool's parameters, the driver's URL); `tls.rs` the TLS parameters and their files.

mod check;
mod libpq;
mod percent;
mod tls;
mod url;

pub use libpq::SessionAttrs;
pub(crate) use libpq::Target;

#[cfg_attr(not(feature = "tls"), allow(unused_imports))]
pub(crate) use tls::{SslMode, TlsSettings};

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
    /// TLS to the server (PostgreSQL, MySQL or MariaDB); `None`: plain text.
    tls: Option<TlsSettings>,
    /// Prisma's `pgbouncer=true`: the URL points at PgBouncer in transaction mode.
    pgbouncer: bool,
    /// PostgreSQL: the URI as libpq reads it (its hosts, how to choose among them).
    target: Option<std::sync::Arc<Target>>,
}

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
            target: None,
        }
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

    /// What a PostgreSQL server must be for a connection to it to be kept (libpq's
    /// `target_session_attrs`): with several hosts, the pool connects to the first, in order (or
    /// in random order with `load_balance_hosts=random`), that is. [`SessionAttrs::Any`] for
    /// other backends.
    pub fn target_session_attrs(&self) -> SessionAttrs {
        self.target
            .as_ref()
            .map_or(SessionAttrs::Any, |target| target.session_attrs)
    }

    /// PostgreSQL: the URI as libpq reads it.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn target(&self) -> Option<&Target> {
        self.target.as_deref()
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
#[cfg(test)]
mod tests;
