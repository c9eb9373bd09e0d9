//! PostgreSQL: connections, throwaway databases and roles, and a test's own sessions.

use tokio_postgres::NoTls;

use super::{block_on_thread, unique_name, with_database, with_user};

/// Connects to PostgreSQL and drives the connection in the background.
///
/// # Panics
///
/// If the connection fails.
pub async fn pg_connect(url: &str) -> tokio_postgres::Client {
    pg_connect_result(url)
        .await
        .unwrap_or_else(|error| panic!("cannot connect to PostgreSQL: {error}"))
}

/// Connects to PostgreSQL (or a pooler in front of it) and drives the connection in the
/// background; the driver's error when the connect fails.
pub async fn pg_connect_result(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
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
