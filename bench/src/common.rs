//! What both bench binaries share: the example server as a process, `wrk`, settings.

use std::process::{ExitCode, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// `run`'s outcome as the process's exit code, its error printed.
pub(crate) fn exit(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

/// `DATABASE_URL`, or `None` after saying the bench is skipped; warns about a debug build.
pub(crate) fn database_url(bench: &str) -> Option<String> {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        println!("skipping the {bench}: DATABASE_URL (PostgreSQL) is unset");
        return None;
    };
    if cfg!(debug_assertions) {
        println!("warning: a debug build measures the bench, not the stacks: use --release");
    }
    Some(url)
}

/// A number from the environment, or `default`.
pub(crate) fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// The example server (built next to the bench: `cargo build --release --example server`) as its
/// own process with `env` set; returns it and its base URL.
pub(crate) async fn start_example(env: &[(&str, &str)]) -> Result<(Child, String), String> {
    let exe = std::env::current_exe().map_err(|error| error.to_string())?;
    let server = exe
        .parent()
        .map(|dir| dir.join("examples").join("server"))
        .filter(|path| path.exists())
        .ok_or("the example server is not built: run `cargo build --release --example server`")?;
    let mut command = Command::new(server);
    command
        .env("BIND", "127.0.0.1:0")
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command
        .spawn()
        .map_err(|error| format!("cannot start the example server: {error}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(addr) = line.strip_prefix("listening on ") {
            return Ok((child, format!("http://{addr}")));
        }
    }
    Err("the example server exited before listening".to_owned())
}

/// What one `wrk` run printed (each binary reads its part).
#[derive(Debug, Clone, Copy)]
#[allow(dead_code)]
pub(crate) struct Run {
    /// Requests a second.
    pub(crate) rate: f64,
    /// Requests made.
    pub(crate) requests: u64,
    /// The 99th-percentile latency.
    pub(crate) p99: Duration,
    /// Answers that were not 2xx or 3xx.
    pub(crate) errors: u64,
}

/// One `wrk -t1 -c<connections> -d<seconds>s --latency` run against `url`.
#[allow(dead_code)] // Not every bench binary loads plain GETs.
pub(crate) async fn wrk(url: &str, connections: u32, seconds: u64) -> Result<Run, String> {
    wrk_with(url, connections, seconds, &[]).await
}

/// [`wrk`] with more of its arguments (`-H`, `-s`), before the URL.
pub(crate) async fn wrk_with(
    url: &str,
    connections: u32,
    seconds: u64,
    extra: &[&str],
) -> Result<Run, String> {
    let (connections, seconds) = (format!("-c{connections}"), format!("-d{seconds}s"));
    let mut args = vec!["-t1", &connections, &seconds, "--latency"];
    args.extend_from_slice(extra);
    args.push(url);
    let output = Command::new("wrk")
        .args(&args)
        .output()
        .await
        .map_err(|error| format!("wrk: {error} (apt-get install wrk)"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next().map(str::to_owned))
    };
    let rate = field("Requests/sec:")
        .and_then(|rate| rate.parse().ok())
        .ok_or_else(|| format!("wrk printed no rate: {text}"))?;
    let p99 = field("99%")
        .and_then(|value| duration(&value))
        .ok_or_else(|| format!("wrk printed no p99: {text}"))?;
    let errors = field("Non-2xx or 3xx responses:")
        .and_then(|count| count.parse().ok())
        .unwrap_or(0);
    let requests = text
        .lines()
        .find(|line| line.contains(" requests in "))
        .and_then(|line| line.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .unwrap_or(0);
    Ok(Run {
        rate,
        requests,
        p99,
        errors,
    })
}

/// wrk's `1.23ms`, `850.00us`, `1.02s`.
fn duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}
