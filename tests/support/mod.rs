//! What the process tests share: the example binaries as child processes and a raw HTTP/1.1
//! client that sends exactly what a test says (and can hang up mid-request).
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ballast_testkit::db;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// `cargo test` builds the examples next to the test binaries: `target/<profile>/examples`.
pub fn server_binary() -> PathBuf {
    example_binary("server")
}

pub fn example_binary(name: &str) -> PathBuf {
    ballast_testkit::process::example_binary("ballast", name, &[])
}

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: TempDir,
    log: Arc<Mutex<String>>,
}

pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn command(env: &[(&str, &str)]) -> (Command, TempDir) {
    command_for(server_binary(), env)
}

pub fn command_for(binary: PathBuf, env: &[(&str, &str)]) -> (Command, TempDir) {
    let dir = std::env::temp_dir().join(db::unique_name("ballast_server"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut command = Command::new(binary);
    command
        .current_dir(&dir)
        .env_remove("DATABASE_URL")
        // Redis only for a test that asks: servers sharing CI's `REDIS_URL` would share one
        // invalidation channel, and one test's write would empty another's cache.
        .env_remove("REDIS_URL")
        .env("BIND", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    (command, TempDir(dir))
}

pub async fn start(env: &[(&str, &str)]) -> Server {
    start_command(command(env)).await
}

pub async fn start_command((mut command, dir): (Command, TempDir)) -> Server {
    let mut child = command.spawn().expect("the example server starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the server says where it listens")
        .unwrap()
        .expect("a line");
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected line: {line}"))
        .parse()
        .unwrap();
    // Both pipes are drained for as long as the server runs: a full pipe would block the
    // server's next log line, and with it a request.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let log = Arc::new(Mutex::new(String::new()));
    if let Some(stderr) = child.stderr.take() {
        let log = Arc::clone(&log);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = log.lock().unwrap();
                // The last megabyte is plenty for any assertion on it.
                if log.len() > 1 << 20 {
                    log.clear();
                }
                log.push_str(&line);
                log.push('\n');
            }
        });
    }
    Server {
        child,
        addr,
        dir,
        log,
    }
}

impl Server {
    /// What the server has written to stderr so far (its log).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

pub struct Answer {
    pub status: u16,
    /// The status line and headers, lowercased.
    pub head: String,
    pub body: String,
}

pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<(&str, &str)>,
) -> Answer {
    request(addr, method, path, &[], body).await
}

/// Sends one request with extra headers on a new connection (`Connection: close`) and reads the
/// whole answer.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &str)>,
) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(request_text(method, path, headers, body).as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    parse(&response)
}

/// The text of an HTTP/1.1 request.
pub fn request_text(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &str)>,
) -> String {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: server\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    match body {
        Some((content_type, body)) => request.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )),
        None => request.push_str("\r\n"),
    }
    request
}

/// Parses a whole HTTP/1.1 response (as read until the server closed the connection).
pub fn parse(response: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Answer {
        status: head
            .split_whitespace()
            .nth(1)
            .and_then(|status| status.parse().ok())
            .unwrap_or(0),
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

impl Answer {
    /// The value of header `name` (lowercase), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim())
        })
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.body))
    }
}

/// Sends a request and hangs up after `after`, without reading the answer: a client that gave up.
pub async fn hang_up_after(addr: SocketAddr, path: String, after: Duration) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(request_text("GET", &path, &[], None).as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(after).await;
    drop(stream);
}

pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    send(addr, "GET", path, None).await
}

/// Sends SIGTERM to the server and waits for it to exit: its status and how long it took.
///
/// # Panics
///
/// When it does not exit `within`.
pub async fn terminate(
    server: &mut Server,
    within: Duration,
) -> (std::process::ExitStatus, Duration) {
    let pid = server.child.id().expect("still running").to_string();
    let signalled = std::time::Instant::now();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "kill -TERM {pid}");
    let status = tokio::time::timeout(within, server.child.wait())
        .await
        .unwrap_or_else(|_| panic!("no exit within {within:?}: {}", server.log()))
        .expect("waited");
    (status, signalled.elapsed())
}

/// Waits until `/readyz` answers 200 (a service with startup steps serves before it is ready),
/// as a load balancer does before sending it traffic; panics after `within`.
#[allow(dead_code)] // not every test binary has a service with startup steps
pub async fn wait_ready(addr: SocketAddr, within: Duration) {
    let started = std::time::Instant::now();
    loop {
        let ready = get(addr, "/readyz").await;
        if ready.status == 200 {
            return;
        }
        assert!(started.elapsed() < within, "not ready: {}", ready.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `POST /items` of an item named `name`, with `key` as its `Idempotency-Key`.
pub async fn keyed_post(addr: SocketAddr, key: &str, name: &str) -> Answer {
    let body = format!(r#"{{"name":"{name}"}}"#);
    request(
        addr,
        "POST",
        "/items",
        &[("Idempotency-Key", key)],
        Some(("application/json", &body)),
    )
    .await
}

/// Repeats a keyed POST while its answer says `"retryable": true` (409 while the first is still
/// running, 503 while the outcome is unknown); the final answer and how many repeats it took.
pub async fn post_until_settled(addr: SocketAddr, key: &str, name: &str) -> (Answer, usize) {
    for repeats in 0..200 {
        let answer = keyed_post(addr, key, name).await;
        if !answer.body.contains(r#""retryable":true"#) {
            return (answer, repeats);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{key} never settled");
}

/// `promtool check metrics` — what Prometheus users lint scrapes with — accepts `text`. Skipped
/// with a reason when promtool is missing, unless `BALLAST_REQUIRE_PROMTOOL=1` (CI installs it).
pub fn promtool_accepts(text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) => {
            assert!(
                std::env::var("BALLAST_REQUIRE_PROMTOOL").as_deref() != Ok("1"),
                "promtool is required: {error}"
            );
            println!("skipping the promtool check: {error}");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
