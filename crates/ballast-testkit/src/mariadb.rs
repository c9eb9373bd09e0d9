//! A private MariaDB server in a temporary directory, on its own port, with settings (TLS
//! certificates) the shared one does not have.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private MariaDB: `mariadb-install-db`, then `mariadbd` as the `mysql` user, on 127.0.0.1 and
/// its own port; `root` logs in without a password. Stopped and removed when dropped.
#[derive(Debug)]
pub struct PrivateMariaDb {
    dir: PathBuf,
    port: u16,
    server: Child,
}

impl PrivateMariaDb {
    /// Installs and starts one; `files` are written into its directory first (owned by `mysql`,
    /// readable only by it) and `options` passed to `mariadbd` (`--ssl-cert=NAME` names a file
    /// of `files` by its name: `{dir}` is replaced with the directory). `Err` says why it could
    /// not start.
    pub fn start(files: &[(&str, &[u8])], options: &[&str]) -> Result<Self, String> {
        let port = crate::db::free_port()?;
        let dir = std::env::temp_dir().join(crate::db::unique_name("ballast_mariadb"));
        std::fs::create_dir_all(dir.join("data")).map_err(|error| error.to_string())?;
        for (name, contents) in files {
            write_private(&dir.join(name), contents)?;
        }
        chown_mysql(&dir)?;
        let install = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .args([
                "--user=mysql",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .output()
            .map_err(|error| format!("mariadb-install-db: {error}"))?;
        if !install.status.success() {
            return Err(format!(
                "mariadb-install-db failed: {}",
                String::from_utf8_lossy(&install.stderr)
            ));
        }
        let dir_text = dir.display().to_string();
        let server = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={dir_text}/data"))
            .arg(format!("--socket={dir_text}/mysqld.sock"))
            .arg(format!("--pid-file={dir_text}/mysqld.pid"))
            .arg(format!("--port={port}"))
            .args(["--bind-address=127.0.0.1", "--user=mysql"])
            .args(
                options
                    .iter()
                    .map(|option| option.replace("{dir}", &dir_text)),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).map_err(|error| error.to_string())?)
            .spawn()
            .map_err(|error| format!("mariadbd: {error}"))?;
        let mut db = PrivateMariaDb { dir, port, server };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!("mariadbd did not listen within 30 s: {}", db.log()));
            }
            if let Ok(Some(status)) = db.server.try_wait() {
                return Err(format!("mariadbd exited ({status}): {}", db.log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(db)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its directory (where `files` were written).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).map_err(|error| error.to_string())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|error| error.to_string())
}

fn chown_mysql(path: &Path) -> Result<(), String> {
    let chown = Command::new("chown")
        .args(["-R", "mysql:mysql", &path.to_string_lossy()])
        .status()
        .map_err(|error| error.to_string())?;
    if chown.success() {
        Ok(())
    } else {
        Err("cannot hand the files to the mysql user (not root?)".into())
    }
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
