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

use tokio_postgres::NoTls;

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

fn parse(url: &str) -> url::Url {
    url::Url::parse(url).unwrap_or_else(|error| panic!("not a URL ({error})"))
}

/// Runs `future` to completion on a fresh runtime in its own thread: used by `Drop` impls, which
/// cannot `.await` and may run inside another runtime.
fn block_on_thread<F>(future: F)
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

/// Connects to PostgreSQL and drives the connection in the background.
///
/// # Panics
///
/// If the connection fails.
pub async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|error| panic!("cannot connect to PostgreSQL: {error}"));
    tokio::spawn(connection);
    client
}

/// Runs one statement on the server at `url`.
///
/// # Panics
///
/// If the connection or the statement fails.
pub async fn pg_execute(url: &str, sql: &str) {
    let client = pg_connect(url).await;
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|error| panic!("`{sql}` failed: {error}"));
}

/// A throwaway PostgreSQL database, dropped (with its connections) when this value is dropped.
#[derive(Debug)]
pub struct PgDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl PgDatabase {
    /// Creates a database with a unique name on the server at `admin_url` (a superuser URL).
    ///
    /// # Panics
    ///
    /// If the database cannot be created.
    pub async fn create(admin_url: &str) -> Self {
        let name = unique_name("ballast_db");
        pg_execute(admin_url, &format!("CREATE DATABASE {name}")).await;
        PgDatabase {
            admin_url: admin_url.to_owned(),
            url: with_database(admin_url, &name),
            name,
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The admin URL with this database selected.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        block_on_thread(async move {
            if let Ok((client, connection)) = tokio_postgres::connect(&admin_url, NoTls).await {
                tokio::spawn(connection);
                let _ = client.batch_execute(&sql).await;
            }
        });
    }
}

/// A throwaway PostgreSQL login role, optionally with `CONNECTION LIMIT n`, dropped (after its
/// sessions are terminated) when this value is dropped.
///
/// The local test server trusts every login, so the role has no password.
#[derive(Debug)]
pub struct PgRole {
    admin_url: String,
    name: String,
    url: String,
}

impl PgRole {
    /// Creates a login role with a unique name; `connection_limit` becomes its
    /// `CONNECTION LIMIT` (the server answers `53300` past it).
    ///
    /// # Panics
    ///
    /// If the role cannot be created.
    pub async fn create(admin_url: &str, connection_limit: Option<u32>) -> Self {
        let name = unique_name("ballast_role");
        let limit = connection_limit.map_or(-1, i64::from);
        pg_execute(
            admin_url,
            &format!("CREATE ROLE {name} LOGIN CONNECTION LIMIT {limit}"),
        )
        .await;
        PgRole {
            admin_url: admin_url.to_owned(),
            url: with_user(admin_url, &name, None),
            name,
        }
    }

    /// The role's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The admin URL logged in as this role.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// This role's current sessions.
    pub async fn backends(&self) -> Vec<PgBackend> {
        pg_backends(&self.admin_url, &Backends::Role(self.name.clone())).await
    }
}

impl Drop for PgRole {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        block_on_thread(async move {
            if let Ok((client, connection)) = tokio_postgres::connect(&admin_url, NoTls).await {
                tokio::spawn(connection);
                let _ = client
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                        &[&name],
                    )
                    .await;
                let _ = client
                    .batch_execute(&format!("DROP ROLE IF EXISTS {name}"))
                    .await;
            }
        });
    }
}

/// Which PostgreSQL sessions to look at: always one test's own.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backends {
    /// Sessions of this role.
    Role(String),
    /// Sessions that set this `application_name`.
    ApplicationName(String),
    /// Sessions connected to this database.
    Database(String),
}

impl Backends {
    fn filter(&self) -> (&'static str, &str) {
        match self {
            Backends::Role(name) => ("usename", name),
            Backends::ApplicationName(name) => ("application_name", name),
            Backends::Database(name) => ("datname", name),
        }
    }
}

/// One PostgreSQL session, from `pg_stat_activity`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgBackend {
    /// The server process id.
    pub pid: i32,
    /// `active`, `idle`, `idle in transaction`, ... (`None` while the session starts).
    pub state: Option<String>,
    /// The session's current statement, or its last one when idle.
    pub query: Option<String>,
}

impl PgBackend {
    /// Whether the session is running a statement that contains `text`.
    pub fn is_running(&self, text: &str) -> bool {
        self.state.as_deref() == Some("active")
            && self
                .query
                .as_deref()
                .is_some_and(|query| query.contains(text))
    }
}

/// The sessions that match `which`, seen from a separate admin connection (not counted).
///
/// # Panics
///
/// If the query fails.
pub async fn pg_backends(admin_url: &str, which: &Backends) -> Vec<PgBackend> {
    let client = pg_connect(admin_url).await;
    let (column, value) = which.filter();
    let sql = format!(
        "SELECT pid, state, query FROM pg_stat_activity WHERE {column} = $1 AND pid <> pg_backend_pid()"
    );
    client
        .query(&sql, &[&value])
        .await
        .unwrap_or_else(|error| panic!("reading pg_stat_activity failed: {error}"))
        .iter()
        .map(|row| PgBackend {
            pid: row.get(0),
            state: row.get(1),
            query: row.get(2),
        })
        .collect()
}

/// Terminates the sessions that match `which` (`pg_terminate_backend`), as an operator or a
/// failover would; returns how many were terminated.
///
/// # Panics
///
/// If the query fails.
pub async fn pg_terminate(admin_url: &str, which: &Backends) -> u64 {
    let client = pg_connect(admin_url).await;
    let (column, value) = which.filter();
    let sql = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE {column} = $1 AND pid <> pg_backend_pid()"
    );
    let rows = client
        .query(&sql, &[&value])
        .await
        .unwrap_or_else(|error| panic!("pg_terminate_backend failed: {error}"));
    rows.iter().filter(|row| row.get::<_, bool>(0)).count() as u64
}

/// Connects to MySQL/MariaDB.
///
/// # Panics
///
/// If the connection fails.
pub async fn mysql_connect(url: &str) -> mysql_async::Conn {
    mysql_async::Conn::from_url(url)
        .await
        .unwrap_or_else(|error| panic!("cannot connect to MySQL: {error}"))
}

/// Runs statements on the server at `url`, one after another.
///
/// # Panics
///
/// If the connection or a statement fails.
pub async fn mysql_execute(url: &str, statements: &[&str]) {
    use mysql_async::prelude::Queryable;
    let mut conn = mysql_connect(url).await;
    for sql in statements {
        conn.query_drop(*sql)
            .await
            .unwrap_or_else(|error| panic!("`{sql}` failed: {error}"));
    }
    let _ = conn.disconnect().await;
}

/// A throwaway MySQL/MariaDB database, dropped when this value is dropped.
#[derive(Debug)]
pub struct MysqlDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl MysqlDatabase {
    /// Creates a database with a unique name on the server at `admin_url`.
    ///
    /// # Panics
    ///
    /// If the database cannot be created.
    pub async fn create(admin_url: &str) -> Self {
        let name = unique_name("ballast_db");
        mysql_execute(admin_url, &[&format!("CREATE DATABASE {name}")]).await;
        MysqlDatabase {
            admin_url: admin_url.to_owned(),
            url: with_database(admin_url, &name),
            name,
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The admin URL with this database selected.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for MysqlDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        block_on_thread(async move {
            use mysql_async::prelude::Queryable;
            if let Ok(mut conn) = mysql_async::Conn::from_url(admin_url).await {
                // Connections the test left open may hold locks that would make the drop wait
                // forever (PostgreSQL's `WITH (FORCE)` does the same).
                kill_connections(&mut conn, "DB", &name).await;
                let _ = conn
                    .query_drop(format!("DROP DATABASE IF EXISTS {name}"))
                    .await;
                let _ = conn.disconnect().await;
            }
        });
    }
}

/// A throwaway MySQL/MariaDB user with all privileges on one database, optionally with a password
/// and `MAX_USER_CONNECTIONS n`, dropped (after its connections are killed) when this value is
/// dropped.
#[derive(Debug)]
pub struct MysqlUser {
    admin_url: String,
    name: String,
    url: String,
}

impl MysqlUser {
    /// Creates the user `name@'%'` with a unique name, granted everything on `database`.
    /// `max_user_connections` becomes `MAX_USER_CONNECTIONS` (the server answers `1226`,
    /// ER_USER_LIMIT_REACHED, past it).
    ///
    /// # Panics
    ///
    /// If the user cannot be created.
    pub async fn create(
        admin_url: &str,
        database: &str,
        password: Option<&str>,
        max_user_connections: Option<u32>,
    ) -> Self {
        let name = unique_name("ballast_user");
        let identified = password.map_or(String::new(), |password| {
            format!(" IDENTIFIED BY '{}'", password.replace('\'', "''"))
        });
        let limit = max_user_connections.unwrap_or(0);
        mysql_execute(
            admin_url,
            &[
                &format!("CREATE USER '{name}'@'%'{identified} WITH MAX_USER_CONNECTIONS {limit}"),
                &format!("GRANT ALL PRIVILEGES ON `{database}`.* TO '{name}'@'%'"),
            ],
        )
        .await;
        MysqlUser {
            admin_url: admin_url.to_owned(),
            url: with_database(&with_user(admin_url, &name, password), database),
            name,
        }
    }

    /// The user's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A URL that logs in as this user (with its password) to its database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How many connections this user has open, seen from a separate admin connection.
    pub async fn connections(&self) -> u64 {
        mysql_connections(&self.admin_url, &self.name).await
    }
}

impl Drop for MysqlUser {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        block_on_thread(async move {
            use mysql_async::prelude::Queryable;
            if let Ok(mut conn) = mysql_async::Conn::from_url(admin_url).await {
                kill_connections(&mut conn, "USER", &name).await;
                let _ = conn
                    .query_drop(format!("DROP USER IF EXISTS '{name}'@'%'"))
                    .await;
                let _ = conn.disconnect().await;
            }
        });
    }
}

/// Kills every other connection whose process-list `column` (`USER` or `DB`) is `value`.
async fn kill_connections(conn: &mut mysql_async::Conn, column: &str, value: &str) {
    use mysql_async::prelude::Queryable;
    let sql = format!(
        "SELECT ID FROM information_schema.PROCESSLIST WHERE {column} = ? AND ID <> CONNECTION_ID()"
    );
    let ids: Vec<u64> = conn.exec(sql, (value,)).await.unwrap_or_default();
    for id in ids {
        let _ = conn.query_drop(format!("KILL CONNECTION {id}")).await;
    }
}

/// One admin connection that reads the MySQL process list again and again: a test that polls it
/// does not pay (or wait for) a connect per look.
#[derive(Debug)]
pub struct MysqlProcessList(mysql_async::Conn);

impl MysqlProcessList {
    /// Connects to the server at `admin_url`.
    ///
    /// # Panics
    ///
    /// If the connection fails.
    pub async fn connect(admin_url: &str) -> Self {
        MysqlProcessList(mysql_connect(admin_url).await)
    }

    /// The statements running now in `database` (the process list's `INFO`), not counting this
    /// connection's own.
    ///
    /// # Panics
    ///
    /// If the query fails.
    pub async fn statements(&mut self, database: &str) -> Vec<String> {
        use mysql_async::prelude::Queryable;
        let statements: Vec<Option<String>> = self
            .0
            .exec(
                "SELECT INFO FROM information_schema.PROCESSLIST \
                 WHERE DB = ? AND ID <> CONNECTION_ID() AND INFO IS NOT NULL",
                (database,),
            )
            .await
            .unwrap_or_else(|error| panic!("reading the process list failed: {error}"));
        statements.into_iter().flatten().collect()
    }

    /// Disconnects.
    pub async fn close(self) {
        let _ = self.0.disconnect().await;
    }
}

/// How many connections `user` has open on the server at `admin_url`, not counting the one
/// asking.
///
/// # Panics
///
/// If the query fails.
pub async fn mysql_connections(admin_url: &str, user: &str) -> u64 {
    use mysql_async::prelude::Queryable;
    let mut conn = mysql_connect(admin_url).await;
    let count: Option<u64> = conn
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
             WHERE USER = ? AND ID <> CONNECTION_ID()",
            (user,),
        )
        .await
        .unwrap_or_else(|error| panic!("reading the process list failed: {error}"));
    let _ = conn.disconnect().await;
    count.unwrap_or(0)
}
