//! MySQL/MariaDB: connections, throwaway databases and users, and a test's own connections.

use super::{block_on_thread, unique_name, with_database, with_user};

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
