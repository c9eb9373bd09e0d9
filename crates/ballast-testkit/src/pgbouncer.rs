//! A private PgBouncer on a free port, in front of a PostgreSQL server, with a generated
//! configuration: for tests of `pgbouncer=true` and of the pooler's own errors.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running PgBouncer (Debian's `pgbouncer` package: `/usr/sbin/pgbouncer`), in transaction mode
/// unless the settings say otherwise, trusting the users it is given. Stopped and its directory
/// removed when dropped.
#[derive(Debug)]
pub struct PgBouncer {
    child: Child,
    dir: PathBuf,
    port: u16,
}

/// Where PgBouncer is, or why a test cannot run it: `Err` when it is not installed.
pub fn binary() -> Result<PathBuf, String> {
    ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .ok_or_else(|| "PgBouncer is not installed (apt-get install pgbouncer)".to_owned())
}

/// The PgBouncer binary, or `None` after printing why a test is skipped; panics instead when
/// `BALLAST_REQUIRE_DB=1` (CI installs PgBouncer).
pub fn require(test: &str) -> Option<PathBuf> {
    match binary() {
        Ok(path) => Some(path),
        Err(reason) if crate::db::databases_required() => {
            panic!("{test}: BALLAST_REQUIRE_DB=1 but {reason}")
        }
        Err(reason) => {
            eprintln!("skipping {test}: {reason}");
            None
        }
    }
}

impl PgBouncer {
    /// Starts one that forwards every database to `server` (`host:port` of PostgreSQL), accepts
    /// `users` without a password, and applies `settings` (`("default_pool_size", "10")`, ...)
    /// after its defaults: `pool_mode = transaction`, `default_pool_size = 10`,
    /// `max_client_conn = 1000`. Waits until it accepts connections.
    pub fn start(
        server: (&str, u16),
        users: &[&str],
        settings: &[(&str, &str)],
    ) -> Result<Self, String> {
        Self::start_with_files(server, users, settings, &[])
    }

    /// [`start`](Self::start), with `files` (name, contents) written into its directory first,
    /// readable by PgBouncer only: `{dir}` in a setting's value is that directory
    /// (`("client_tls_key_file", "{dir}/key.pem")`).
    pub fn start_with_files(
        server: (&str, u16),
        users: &[&str],
        settings: &[(&str, &str)],
        files: &[(&str, &[u8])],
    ) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        let binary = binary()?;
        let port = crate::db::free_port()?;
        let dir = std::env::temp_dir().join(crate::db::unique_name("ballast_pgbouncer"));
        std::fs::create_dir_all(&dir).map_err(|error| error.to_string())?;
        let users_file = dir.join("users.txt");
        let users_text: String = users
            .iter()
            .map(|user| format!("\"{user}\" \"\"\n"))
            .collect();
        std::fs::write(&users_file, users_text).map_err(|error| error.to_string())?;
        let mut ini = format!(
            "[databases]\n* = host={} port={}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {}\nlogfile = {}\npool_mode = transaction\ndefault_pool_size = 10\nmax_client_conn = 1000\nignore_startup_parameters = extra_float_digits\nadmin_users = {}\n",
            server.0,
            server.1,
            users_file.display(),
            dir.join("log").display(),
            users.first().copied().unwrap_or("postgres"),
        );
        for (key, value) in settings {
            let value = value.replace("{dir}", &dir.to_string_lossy());
            ini.push_str(&format!("{key} = {value}\n"));
        }
        for (name, contents) in files {
            let path = dir.join(name);
            std::fs::write(&path, contents).map_err(|error| error.to_string())?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|error| error.to_string())?;
            crate::cluster::chown_postgres(&path)?;
        }
        let ini_path = dir.join("pgbouncer.ini");
        std::fs::write(&ini_path, ini).map_err(|error| error.to_string())?;
        crate::cluster::chown_postgres(&dir)?;
        for file in ["users.txt", "pgbouncer.ini"] {
            crate::cluster::chown_postgres(&dir.join(file))?;
        }
        // PgBouncer refuses to run as root; `-u` makes it switch user itself, so the child is
        // PgBouncer and killing it stops it.
        let mut command = Command::new(&binary);
        if is_root() {
            command.args(["-u", "postgres"]);
        }
        let child = command
            .arg(&ini_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| format!("{}: {error}", binary.display()))?;
        let mut bouncer = PgBouncer { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(bouncer);
            }
            if let Ok(Some(status)) = bouncer.child.try_wait() {
                return Err(format!("PgBouncer exited ({status}): {}", bouncer.log()));
            }
            if Instant::now() > deadline {
                return Err(format!("PgBouncer did not start: {}", bouncer.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `url` (a PostgreSQL URL) pointed at this PgBouncer.
    pub fn url(&self, url: &str) -> String {
        crate::db::with_host_port(url, ([127, 0, 0, 1], self.port).into())
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Stops it at once (`SIGKILL`): clients see their connections reset.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| output.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
