//! A private PostgreSQL cluster in a temporary directory, on its own port: for tests that restart
//! a real server, or give it settings (TLS certificates, `pg_hba.conf` lines) the shared one must
//! not have.

use std::path::{Path, PathBuf};

/// A private cluster: `initdb` and `pg_ctl` as the `postgres` user (this project's machines run
/// the tests as root). Stopped and removed when dropped.
#[derive(Debug)]
pub struct PrivateCluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    started: bool,
}

impl PrivateCluster {
    /// Creates and starts one with the default settings. `Err` says why it could not.
    pub fn start() -> Result<Self, String> {
        let mut cluster = Self::init()?;
        cluster.pg_ctl("start")?;
        cluster.started = true;
        Ok(cluster)
    }

    /// Creates one (`initdb`, trust authentication) without starting it, so a test can add
    /// files and settings first ([`write_file`](Self::write_file),
    /// [`configure`](Self::configure), [`set_hba`](Self::set_hba)), then [`run`](Self::run) it.
    pub fn init() -> Result<Self, String> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|error| format!("no /usr/lib/postgresql: {error}"))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
            .filter(|bin| bin.join("initdb").exists())
            .max()
            .ok_or("no initdb under /usr/lib/postgresql")?;
        let port = crate::db::free_port()?;
        let dir = std::env::temp_dir().join(crate::db::unique_name("ballast_cluster"));
        std::fs::create_dir_all(&dir).map_err(|error| error.to_string())?;
        chown_postgres(&dir)?;
        let cluster = PrivateCluster {
            bin,
            dir,
            port,
            started: false,
        };
        cluster.as_postgres(&["initdb", "-D", "DATA", "--auth=trust", "-U", "postgres"])?;
        Ok(cluster)
    }

    /// Creates and starts a streaming replica of `primary` (`pg_basebackup -R`, which writes the
    /// `standby.signal` and `primary_conninfo` that make it follow), on its own port. The
    /// primary's defaults (`wal_level = replica`, trust for replication from 127.0.0.1) allow
    /// it. `settings` are appended to its `postgresql.conf` before it starts (the copy of the
    /// primary's): say, no synchronous standby of its own once it is promoted.
    pub fn replica_of(primary: &PrivateCluster, settings: &[&str]) -> Result<Self, String> {
        let port = crate::db::free_port()?;
        let dir = std::env::temp_dir().join(crate::db::unique_name("ballast_replica"));
        std::fs::create_dir_all(&dir).map_err(|error| error.to_string())?;
        chown_postgres(&dir)?;
        let mut replica = PrivateCluster {
            bin: primary.bin.clone(),
            dir,
            port,
            started: false,
        };
        let primary_port = primary.port.to_string();
        replica.as_postgres(&[
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            &primary_port,
            "-U",
            "postgres",
            "-D",
            "DATA",
            "-R",
            "-X",
            "stream",
            "--checkpoint=fast",
        ])?;
        replica.configure(settings)?;
        replica.run()?;
        Ok(replica)
    }

    /// Stops the server (fast shutdown): its clients are disconnected, new ones refused.
    pub fn stop(&mut self) -> Result<(), String> {
        self.pg_ctl("stop")?;
        self.started = false;
        Ok(())
    }

    /// Promotes a replica to a primary (`pg_ctl promote`, waiting until it accepts writes).
    pub fn promote(&self) -> Result<(), String> {
        self.pg_ctl("promote")
    }

    /// Turns a stopped server into a standby of `primary` and starts it: what Patroni does with
    /// an old primary after a failover (without `pg_rewind`, which a clean fast shutdown before
    /// the promotion makes unnecessary).
    pub fn rejoin_as_standby_of(&mut self, primary: &PrivateCluster) -> Result<(), String> {
        self.write_file("standby.signal", b"", 0o600)?;
        self.configure(&[&format!(
            "primary_conninfo = 'host=127.0.0.1 port={} user=postgres'",
            primary.port
        )])?;
        self.run()
    }

    /// Writes a file into the cluster's data directory, owned by `postgres` with `mode` (the
    /// server refuses a key file others can read); returns its path.
    pub fn write_file(&self, name: &str, contents: &[u8], mode: u32) -> Result<PathBuf, String> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.data().join(name);
        std::fs::write(&path, contents).map_err(|error| error.to_string())?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|error| error.to_string())?;
        chown_postgres(&path)?;
        Ok(path)
    }

    /// Appends settings to `postgresql.conf` (`ssl = on`, ...).
    pub fn configure(&self, lines: &[&str]) -> Result<(), String> {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data().join("postgresql.conf"))
            .map_err(|error| error.to_string())?;
        for line in lines {
            writeln!(file, "{line}").map_err(|error| error.to_string())?;
        }
        Ok(())
    }

    /// Replaces `pg_hba.conf`.
    pub fn set_hba(&self, text: &str) -> Result<(), String> {
        std::fs::write(self.data().join("pg_hba.conf"), text).map_err(|error| error.to_string())
    }

    /// Starts the server.
    pub fn run(&mut self) -> Result<(), String> {
        self.pg_ctl("start")?;
        self.started = true;
        Ok(())
    }

    /// Restarts the server (`pg_ctl restart`, fast shutdown).
    pub fn restart(&self) -> Result<(), String> {
        self.pg_ctl("restart")
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for the `postgres` user and database on 127.0.0.1.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn as_postgres(&self, args: &[&str]) -> Result<(), String> {
        let data = self.data();
        let program = self.bin.join(args[0]);
        let args: Vec<String> = args[1..]
            .iter()
            .map(|arg| {
                if *arg == "DATA" {
                    data.to_string_lossy().into_owned()
                } else {
                    (*arg).to_owned()
                }
            })
            .collect();
        let output = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&program)
            .args(&args)
            .output()
            .map_err(|error| format!("{}: {error}", program.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed: {}",
                program.display(),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    fn pg_ctl(&self, action: &str) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log").to_string_lossy().into_owned();
        self.as_postgres(&[
            "pg_ctl", "-D", "DATA", "-m", "fast", "-w", "-l", &log, "-o", &options, action,
        ])
    }
}

pub(crate) fn chown_postgres(path: &Path) -> Result<(), String> {
    let chown = std::process::Command::new("chown")
        .args(["postgres:postgres", &path.to_string_lossy()])
        .status()
        .map_err(|error| error.to_string())?;
    if chown.success() {
        Ok(())
    } else {
        Err("cannot hand the files to the postgres user (not root?)".into())
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if self.started {
            let _ = self.as_postgres(&["pg_ctl", "-D", "DATA", "-m", "immediate", "-w", "stop"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
