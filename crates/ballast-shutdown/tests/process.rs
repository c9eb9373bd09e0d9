//! A real server process (`shutdown-demo`) driven with real signals (acceptance scenarios 22
//! and 23).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ballast_testkit::db::{self, Backends};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::mpsc;

struct Server {
    child: Child,
    addr: SocketAddr,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

async fn start(env: &[(&str, &str)]) -> Server {
    let mut command = Command::new(ballast_testkit::process::example_binary(
        "ballast-shutdown",
        "shutdown-demo",
        &["serve"],
    ));
    command
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("the demo server starts");
    let stdout: ChildStdout = child.stdout.take().unwrap();
    let (send, mut lines) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if send.send(line).is_err() {
                return;
            }
        }
    });
    let first = tokio::time::timeout(Duration::from_secs(30), lines.recv())
        .await
        .expect("the server says where it listens")
        .expect("a line");
    let addr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
        .parse()
        .unwrap();
    Server {
        child,
        addr,
        lines,
        seen: Vec::new(),
    }
}

impl Server {
    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its code and how long it took.
    async fn exit(&mut self, within: Duration) -> (Option<i32>, Duration) {
        let started = Instant::now();
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the server did not exit within {within:?}"))
            .unwrap();
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        // Lines still in the pipe after exit.
        tokio::time::sleep(Duration::from_millis(50)).await;
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        (status.code(), started.elapsed())
    }
}

/// One HTTP/1.1 request on its own connection; the status and body, or the connect error.
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Ok((status, head.to_ascii_lowercase(), body.to_owned()))
}

async fn wait_in_flight(addr: SocketAddr, expected: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // `/stats` counts itself.
        let (_, _, body) = get(addr, "/stats").await.unwrap();
        let in_flight: usize = body.split_whitespace().nth(1).unwrap().parse().unwrap();
        if in_flight > expected {
            return;
        }
        assert!(Instant::now() < deadline, "only {in_flight} in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_complete_new_ones_are_refused_and_hooks_run_in_order() {
    // A pre-drain delay: readiness fails at once while the server still accepts connections,
    // as load balancers need.
    let mut server = start(&[("DRAIN_MS", "10000"), ("PRE_DRAIN_MS", "400")]).await;
    let addr = server.addr;
    let work: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async move { get(addr, "/work?ms=1000").await }))
        .collect();
    wait_in_flight(addr, 19).await;

    let signalled = Instant::now();
    server.signal("TERM");
    // Readiness flips at once; liveness stays; new work is refused.
    let deadline = Instant::now() + Duration::from_millis(500);
    let (ready, _, _) = loop {
        let answer = get(addr, "/readyz").await.unwrap();
        if answer.0 == 503 || Instant::now() > deadline {
            break answer;
        }
    };
    let flipped = signalled.elapsed();
    assert_eq!(ready, 503);
    assert_eq!(get(addr, "/healthz").await.unwrap().0, 200);
    // Once the pre-drain delay is over, new work is refused (503, or the connection itself).
    tokio::time::sleep(Duration::from_millis(500)).await;
    match get(addr, "/work?ms=1").await {
        Ok((status, head, body)) => {
            assert_eq!(status, 503, "{body}");
            assert!(head.contains("connection: close"), "{head}");
            assert!(body.contains("\"retryable\":true"), "{body}");
            assert!(head.contains("retry-after"));
        }
        Err(error) => assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused),
    }
    for request in work {
        let (status, _, body) = request.await.unwrap().unwrap();
        assert_eq!(
            (status, body.as_str()),
            (200, "done"),
            "in-flight work completed"
        );
    }
    let (code, _) = server.exit(Duration::from_secs(10)).await;
    let latency = signalled.elapsed();
    println!(
        "scenario 22 (drain): readiness flipped after {flipped:?}; 20 in-flight requests of 1 s completed; \
         exit {code:?} {latency:?} after SIGTERM"
    );
    assert_eq!(code, Some(0));
    let hooks: Vec<&String> = server
        .seen
        .iter()
        .filter(|line| line.starts_with("hook:"))
        .collect();
    assert_eq!(hooks, ["hook: stop cache cleanup", "hook: close pool"]);
    assert!(server
        .seen
        .iter()
        .any(|line| line.starts_with("summary: drained=true abandoned=0")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_work_the_process_exits_promptly() {
    let mut server = start(&[]).await;
    let signalled = Instant::now();
    server.signal("TERM");
    let (code, _) = server.exit(Duration::from_secs(5)).await;
    let latency = signalled.elapsed();
    println!("exit latency without in-flight work: {latency:?}");
    assert_eq!(code, Some(0));
    assert!(latency < Duration::from_secs(2), "{latency:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_ending_request_and_idle_connections_do_not_hold_the_process() {
    let mut server = start(&[("DRAIN_MS", "1000")]).await;
    let addr = server.addr;
    let forever = tokio::spawn(async move { get(addr, "/forever").await });
    // An idle keep-alive connection: one request answered, then nothing.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: demo\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 1024];
    let read = idle.read(&mut buffer).await.unwrap();
    assert!(String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200"));
    wait_in_flight(addr, 1).await;

    let signalled = Instant::now();
    server.signal("TERM");
    // The idle connection is closed when draining starts.
    let closed = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut buffer)).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "idle connection closed: {closed:?}"
    );
    let (code, _) = server.exit(Duration::from_secs(5)).await;
    let latency = signalled.elapsed();
    println!("scenario 23 (deadline): exit {code:?} {latency:?} after SIGTERM with a never-ending request (deadline 1 s)");
    assert!(
        latency < Duration::from_secs(3),
        "held past the deadline: {latency:?}"
    );
    assert_eq!(code, Some(1), "a drain cut short is not a clean exit");
    assert!(server
        .seen
        .iter()
        .any(|line| line.contains("drained=false abandoned=1")));
    // The never-ending request got no answer: its connection was dropped at exit.
    let answer = forever.await.unwrap();
    assert!(
        answer.is_err() || answer.as_ref().is_ok_and(|(status, _, _)| *status == 0),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_with_a_non_zero_code() {
    let mut server = start(&[("DRAIN_MS", "20000")]).await;
    let addr = server.addr;
    let _forever = tokio::spawn(async move { get(addr, "/forever").await });
    wait_in_flight(addr, 1).await;
    server.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = Instant::now();
    server.signal("INT");
    let (code, _) = server.exit(Duration::from_secs(3)).await;
    println!(
        "second signal: exit {code:?} {:?} after it",
        second.elapsed()
    );
    assert_eq!(code, Some(130));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_hook_is_bounded_and_the_next_still_runs() {
    let mut server = start(&[("SLOW_HOOK_MS", "5000"), ("HOOK_TIMEOUT_MS", "300")]).await;
    let signalled = Instant::now();
    server.signal("TERM");
    let (code, _) = server.exit(Duration::from_secs(5)).await;
    let hooks: Vec<&String> = server
        .seen
        .iter()
        .filter(|line| line.starts_with("hook:"))
        .collect();
    assert_eq!(
        hooks,
        [
            "hook: stop cache cleanup",
            "hook: slow hook",
            "hook: close pool"
        ]
    );
    let summary = server
        .seen
        .iter()
        .find(|line| line.starts_with("summary:"))
        .unwrap();
    assert!(summary.contains("slow hook=timed out"), "{summary}");
    assert!(summary.contains("close pool=ok"), "{summary}");
    assert_eq!(code, Some(1));
    assert!(signalled.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_pool_wired_in_no_backend_remains() {
    let Some(url) = db::postgres_url("with_the_pool_wired_in_no_backend_remains") else {
        return;
    };
    let app = db::unique_name("ballast_shutdown");
    let database_url = format!("{url}?application_name={app}&connection_limit=4");
    let mut server = start(&[("DATABASE_URL", &database_url), ("DRAIN_MS", "10000")]).await;
    let addr = server.addr;
    for _ in 0..4 {
        assert_eq!(get(addr, "/db?ms=1").await.unwrap().0, 200);
    }
    let in_flight = tokio::spawn(async move { get(addr, "/db?ms=700").await });
    wait_in_flight(addr, 1).await;
    let which = Backends::ApplicationName(app);
    assert!(!db::pg_backends(&url, &which).await.is_empty());
    let signalled = Instant::now();
    server.signal("TERM");
    let (status, _, body) = in_flight.await.unwrap().unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "done"),
        "the database request in flight completed"
    );
    let (code, _) = server.exit(Duration::from_secs(10)).await;
    let latency = signalled.elapsed();
    assert_eq!(code, Some(0));
    let remaining = db::pg_backends(&url, &which).await.len();
    println!(
        "scenario 22 (pool): exit {code:?} {latency:?} after SIGTERM; {remaining} backends remain"
    );
    assert_eq!(remaining, 0);
}
