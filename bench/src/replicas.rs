//! The replica bench: the example server on a private PostgreSQL primary alone, against the same
//! server with one streaming replica (`DATABASE_REPLICA_URLS`, read-your-writes on), in one run,
//! rounds alternated: what routing reads to the replica costs (or gains), what the token costs
//! a write, and what a client that reads right after each write pays for seeing it. A third
//! server names the primary as its own replica: the routing and the tokens with no second
//! server, their cost alone.
//!
//! ```text
//! apt-get install wrk
//! cargo build --release --example server
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --release -p ballast-bench --bin replica-bench
//! ```
//!
//! `DATABASE_URL` only says the machine has PostgreSQL (its binaries make the private primary
//! and replica). `BENCH_SECONDS` (5) and `BENCH_ROUNDS` (3) change the run. Reads send a
//! `Cookie`, so the response cache steps aside and every read reaches the database. The
//! primary and the replica share this machine's cores: the read figures show the cost of the
//! routing, not the capacity a replica on its own machine adds.

use std::process::ExitCode;
use std::time::Duration;

use ballast_testkit::cluster::PrivateCluster;
use tokio::process::Child;

use common::{database_url, exit, setting, start_example, wrk_with, Run};

mod common;

#[tokio::main]
async fn main() -> ExitCode {
    exit(run().await)
}

/// A write, then a read of item 1 carrying the write's token (when the server gives one), in
/// turn on each connection.
const WRITE_THEN_READ: &str = r#"
local token = nil
local writes = true
request = function()
  writes = not writes
  if not writes then
    return wrk.format("POST", "/items", {["Content-Type"] = "application/json"}, '{"name":"bench"}')
  end
  local headers = {["Cookie"] = "bench=1"}
  if token then headers["ballast-read-after"] = token end
  return wrk.format("GET", "/items/1", headers)
end
response = function(status, headers, body)
  local given = headers["ballast-read-after"] or headers["Ballast-Read-After"]
  if given then token = given end
end
"#;

/// A write, on every request.
const WRITE: &str = r#"
wrk.method = "POST"
wrk.body = '{"name":"bench"}'
wrk.headers["Content-Type"] = "application/json"
"#;

struct Server {
    name: &'static str,
    base: String,
    _child: Child,
}

/// One load shape: its wrk arguments, and each server's runs.
struct Shape {
    title: &'static str,
    path: &'static str,
    args: Vec<String>,
    runs: Vec<Vec<Run>>,
}

impl Shape {
    fn median(&self, server: usize) -> (f64, Duration, u64) {
        let runs = &self.runs[server];
        let mut rates: Vec<f64> = runs.iter().map(|run| run.rate).collect();
        rates.sort_by(f64::total_cmp);
        let mut p99s: Vec<Duration> = runs.iter().map(|run| run.p99).collect();
        p99s.sort();
        let errors = runs.iter().map(|run| run.errors).sum();
        (rates[rates.len() / 2], p99s[p99s.len() / 2], errors)
    }
}

async fn run() -> Result<(), String> {
    if database_url("replica bench").is_none() {
        return Ok(());
    }
    let (seconds, rounds) = (setting("BENCH_SECONDS", 5), setting("BENCH_ROUNDS", 3));
    let primary = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .map_err(|error| error.to_string())??;
    let replica = PrivateCluster::replica_of(&primary, &[])?;
    let (alone, alone_base) = start_example(&[("DATABASE_URL", &primary.url())]).await?;
    let (with, with_base) = start_example(&[
        ("DATABASE_URL", &primary.url()),
        ("DATABASE_REPLICA_URLS", &replica.url()),
    ])
    .await?;
    // The routing alone: the primary named as its own replica (always fresh, never behind).
    let (routed, routed_base) = start_example(&[
        ("DATABASE_URL", &primary.url()),
        ("DATABASE_REPLICA_URLS", &primary.url()),
    ])
    .await?;
    let servers = [
        Server {
            name: "primary alone",
            base: alone_base,
            _child: alone,
        },
        Server {
            name: "primary + 1 replica, read-your-writes",
            base: with_base,
            _child: with,
        },
        Server {
            name: "primary as its own replica (routing only)",
            base: routed_base,
            _child: routed,
        },
    ];
    let dir = std::env::temp_dir().join(format!("ballast-replica-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|error| error.to_string())?;
    let script = |name: &str, text: &str| -> Result<String, String> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|error| error.to_string())?;
        Ok(path.display().to_string())
    };
    let mut shapes = vec![
        Shape {
            title: "reads: GET /items/1",
            path: "/items/1",
            args: vec!["-H".into(), "Cookie: bench=1".into()],
            runs: vec![Vec::new(); 3],
        },
        Shape {
            title: "writes: POST /items (the token's cost)",
            path: "/items",
            args: vec!["-s".into(), script("write.lua", WRITE)?],
            runs: vec![Vec::new(); 3],
        },
        Shape {
            title: "a write, then a read with its token",
            path: "/",
            args: vec!["-s".into(), script("write_then_read.lua", WRITE_THEN_READ)?],
            runs: vec![Vec::new(); 3],
        },
    ];
    // Warm up: the schema, item 1, connections, and the replica's first lag checks.
    for server in &servers {
        let url = format!("{}/items", server.base);
        let write = script("write.lua", WRITE)?;
        wrk_with(&url, 4, 2, &["-s", &write]).await?;
    }
    for _ in 0..rounds {
        for shape in &mut shapes {
            for (index, server) in servers.iter().enumerate() {
                let url = format!("{}{}", server.base, shape.path);
                let args: Vec<&str> = shape.args.iter().map(String::as_str).collect();
                let run = wrk_with(&url, 32, seconds, &args).await?;
                shape.runs[index].push(run);
            }
        }
    }
    println!(
        "\nRead replicas: the example server on a private primary, alone and with one streaming \
         replica on the same machine; wrk -t1 -c32 -d{seconds}s, {rounds} rounds alternated; median"
    );
    for shape in &shapes {
        println!("\n{}", shape.title);
        let (base, _, _) = shape.median(0);
        for (index, server) in servers.iter().enumerate() {
            let (rate, p99, errors) = shape.median(index);
            println!(
                "  {:<40} {:>8.0} req/s  p99 {:>7.2} ms  {:.2}x  {} errors",
                server.name,
                rate,
                p99.as_secs_f64() * 1000.0,
                rate / base,
                errors
            );
        }
    }
    let stats = routes_of(&servers[1].base).await;
    println!("\nwhere the replica server's reads went: {stats}");
    let _ = std::fs::remove_dir_all(&dir);
    drop(replica);
    Ok(())
}

/// The replica server's `/stats` routes, fetched with a plain HTTP/1.1 request.
async fn routes_of(base: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return "unavailable".to_owned();
    };
    let request = "GET /stats HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).await.is_err() {
        return "unavailable".to_owned();
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    body.find("\"routes\"")
        .and_then(|start| {
            let rest = &body[start..];
            rest.find('}').map(|end| rest[..=end].to_owned())
        })
        .unwrap_or_else(|| "unavailable".to_owned())
}
