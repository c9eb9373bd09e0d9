//! Real-database helpers: finding the test databases, throwaway databases, roles and users, and
//! counting a test's own connections.
//!
//! Tests run in parallel against one PostgreSQL and one MariaDB server, so every helper works on
//! objects that belong to one test: a database, a role or a user with a unique name, dropped again
//! when the value is dropped. Counting connections is always filtered to one of those.
//!
//! Setup helpers panic with the reason when the database refuses: a test cannot go on without its
//! fixture, and the panic message is the clearest report.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The variable that names the PostgreSQL server tests use.
pub const POSTGRES_VAR: &str = "DATABASE_URL";
/// The variable that names the MySQL/MariaDB server tests use.
pub const MYSQL_VAR: &str = "MYSQL_URL";
/// Set to `1` to make a missing database a failure instead of a skip (CI sets it).
pub const REQUIRE_VAR: &str = "BALLAST_REQUIRE_DB";

/// The PostgreSQL URL from `DATABASE_URL`, or `None` after printing why `test` is skipped.
///
/// # Panics
///
/// When the variable is unset and `BALLAST_REQUIRE_DB=1`: a required database that is missing
/// fails the test instead of skipping it.
pub fn postgres_url(test: &str) -> Option<String> {
    url_from_env(POSTGRES_VAR, test)
}

/// The MySQL/MariaDB URL from `MYSQL_URL`, or `None` after printing why `test` is skipped.
///
/// # Panics
///
/// When the variable is unset and `BALLAST_REQUIRE_DB=1`.
pub fn mysql_url(test: &str) -> Option<String> {
    url_from_env(MYSQL_VAR, test)
}

/// The Redis URL from `REDIS_URL`, or `None` after printing why `test` is skipped (a failure
/// instead with `BALLAST_REQUIRE_DB=1`).
pub fn redis_url(test: &str) -> Option<String> {
    url_from_env("REDIS_URL", test)
}

/// Whether `BALLAST_REQUIRE_DB=1` is set.
pub fn databases_required() -> bool {
    std::env::var(REQUIRE_VAR).is_ok_and(|value| value == "1")
}

fn url_from_env(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if databases_required() => {
            panic!("{test}: {var} is unset but {REQUIRE_VAR}=1 requires the database")
        }
        _ => {
            // Written to the real stderr, past the test harness's capture, so the skip is seen.
            let _ = writeln!(
                std::io::stderr(),
                "skipping {test}: {var} is unset (set it, and {REQUIRE_VAR}=1 to require it)"
            );
            None
        }
    }
}

/// A TCP port on 127.0.0.1 nothing listens on now, for a server a test starts.
pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|error| error.to_string())
}

/// A name no other test (or test process) uses at the same time: `prefix`, the process id, a
/// counter and the clock.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    format!("{prefix}_{}_{count}_{nanos}", std::process::id())
}

/// `url` with its host and port replaced by `addr`.
///
/// # Panics
///
/// If `url` is not a URL that can have a host.
pub fn with_host_port(url: &str, addr: SocketAddr) -> String {
    let mut parsed = parse(url);
    parsed
        .set_host(Some(&addr.ip().to_string()))
        .expect("the URL takes a host");
    parsed
        .set_port(Some(addr.port()))
        .expect("the URL takes a port");
    parsed.into()
}

/// `url` with its database (path) replaced by `database`.
///
/// # Panics
///
/// If `url` is not a URL.
pub fn with_database(url: &str, database: &str) -> String {
    let mut parsed = parse(url);
    parsed.set_path(&format!("/{database}"));
    parsed.into()
}

/// `url` with its user and password replaced.
///
/// # Panics
///
/// If `url` is not a URL that can have a user.
pub fn with_user(url: &str, user: &str, password: Option<&str>) -> String {
    let mut parsed = parse(url);
    parsed.set_username(user).expect("the URL takes a user");
    parsed
        .set_password(password)
        .expect("the URL takes a password");
    parsed.into()
}

/// The host and port of `url` as a socket address (for [`crate::proxy::FaultProxy::start`]).
///
/// # Panics
///
/// If `url` has no host and port that resolve.
pub fn socket_addr(url: &str) -> SocketAddr {
    let parsed = parse(url);
    let host = parsed.host_str().expect("the URL has a host");
    let port = parsed.port().unwrap_or(match parsed.scheme() {
        "mysql" | "mariadb" => 3306,
        _ => 5432,
    });
    std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("{host}:{port} does not resolve"))
}

pub(crate) fn parse(url: &str) -> url::Url {
    url::Url::parse(url).unwrap_or_else(|error| panic!("not a URL ({error})"))
}

/// Runs `future` to completion on a fresh runtime in its own thread: used by `Drop` impls, which
/// cannot `.await` and may run inside another runtime.
pub(crate) fn block_on_thread<F>(future: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let handle = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for cleanup")
            .block_on(future);
    });
    let _ = handle.join();
}

mod mysql;
mod postgres;

pub use mysql::{
    mysql_connect, mysql_connections, mysql_execute, MysqlDatabase, MysqlProcessList, MysqlUser,
};
pub use postgres::{
    pg_backends, pg_connect, pg_connect_result, pg_execute, pg_terminate, Backends, PgBackend,
    PgDatabase, PgRole,
};
