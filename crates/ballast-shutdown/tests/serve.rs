//! `Shutdown::serve_with` in-process over real sockets: the header-read and idle timeouts, the
//! connection cap, the pre-drain delay and the drain.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use axum::routing;
use axum::Router;
use ballast_shutdown::{ServeConfig, Shutdown, ShutdownHandle, ShutdownLayer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Serves a small app (`/` answers at once, `/slow` after a second) with `config`; returns its
/// address, the handle and the task that ends with the exit code.
async fn serve(
    shutdown: Shutdown,
    config: ServeConfig,
) -> (SocketAddr, ShutdownHandle, JoinHandle<ExitCode>) {
    let handle = shutdown.handle();
    let app = Router::new()
        .route("/", routing::get(|| async { "ok" }))
        .route(
            "/slow",
            routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                "slow"
            }),
        )
        .layer(ShutdownLayer::new(handle.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(shutdown.serve_with(listener, app, config));
    (addr, handle, task)
}

/// Sends one keep-alive GET and reads its whole response; `None` if the connection closed.
async fn get(stream: &mut TcpStream, path: &str) -> Option<String> {
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        response.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&response);
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|line| {
                    line.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if response.len() >= end + 4 + length {
                return Some(text.into_owned());
            }
        }
    }
}

/// How long until the server closes `stream` (reads EOF or an error), waiting at most `within`.
async fn closed_after(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(within, stream.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => Some(started.elapsed()),
        Ok(Ok(_)) => panic!("unexpected bytes"),
        Err(_) => None,
    }
}

fn code(code: &ExitCode) -> String {
    format!("{code:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_sent_byte_by_byte_is_cut_off() {
    let config = ServeConfig::default().header_read_timeout(Duration::from_millis(300));
    let (addr, _handle, _task) = serve(Shutdown::builder().build(), config).await;
    // The slowloris: a header byte every 100 ms, never finished.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut closed = false;
    for byte in b"GET / HTTP/1.1\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
        if stream.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 16];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await
        {
            closed = true;
            break;
        }
    }
    let took = started.elapsed();
    println!("slow header: closed after {took:?}");
    assert!(closed, "the connection stayed open for {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // Everyone else is served.
    let mut other = TcpStream::connect(addr).await.unwrap();
    assert!(get(&mut other, "/")
        .await
        .unwrap()
        .starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_but_slow_requests_finish() {
    let config = ServeConfig::default().idle_timeout(Duration::from_millis(400));
    let (addr, _handle, _task) = serve(Shutdown::builder().build(), config).await;
    // Silent from the start.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let took = closed_after(&mut silent, Duration::from_secs(5)).await;
    assert!(took.is_some(), "a silent connection stayed open");
    // Idle after a response.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    assert!(get(&mut kept, "/")
        .await
        .unwrap()
        .starts_with("HTTP/1.1 200"));
    let took = closed_after(&mut kept, Duration::from_secs(5)).await;
    println!("idle keep-alive connection closed after {took:?}");
    assert!(took.is_some(), "an idle keep-alive connection stayed open");
    // A request that takes longer than the idle timeout is not idle.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let answer = get(&mut slow, "/slow")
        .await
        .expect("the slow request was answered");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("slow"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_new_connections_wait_for_a_free_slot() {
    // The server's tasks run on every worker: capture the log process-wide.
    let captured = ballast_testkit::logs::Captured::default();
    let writer = captured.clone();
    let _ = tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || writer.clone())
            .finish(),
    );
    let config = ServeConfig::default().max_connections(2);
    let (addr, _handle, _task) = serve(Shutdown::builder().build(), config).await;
    let mut first = TcpStream::connect(addr).await.unwrap();
    assert!(get(&mut first, "/").await.is_some());
    let second = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The kernel completes the handshake; the server does not take the connection yet.
    let mut third = TcpStream::connect(addr).await.unwrap();
    let waiting = tokio::spawn(async move { get(&mut third, "/").await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!waiting.is_finished(), "served past the cap");
    let log = captured.take();
    assert!(
        log.contains("connection cap reached"),
        "the cap is said in the log: {log}"
    );
    drop(second);
    let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served once a slot was free")
        .unwrap();
    assert!(answer.unwrap().starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_fails_readiness_keeps_serving_for_the_delay_then_drains() {
    let shutdown = Shutdown::builder()
        .pre_drain_delay(Duration::from_millis(500))
        .drain_deadline(Duration::from_secs(5))
        .build();
    let (addr, handle, task) = serve(shutdown, ServeConfig::default()).await;
    let mut busy = TcpStream::connect(addr).await.unwrap();
    let slow = tokio::spawn(async move { get(&mut busy, "/slow").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut idle = TcpStream::connect(addr).await.unwrap();
    assert!(get(&mut idle, "/").await.is_some());

    handle.trigger();
    assert!(!handle.is_ready(), "readiness fails at once");
    // During the pre-drain delay, new connections are still served.
    let mut late = TcpStream::connect(addr).await.unwrap();
    assert!(get(&mut late, "/")
        .await
        .unwrap()
        .starts_with("HTTP/1.1 200"));

    // Then the listener closes, idle connections close, the slow request finishes.
    let answer = slow.await.unwrap().expect("the request in flight finished");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed_after(&mut idle, Duration::from_secs(3))
        .await
        .is_some());
    let exit = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("serve returned")
        .unwrap();
    assert_eq!(code(&exit), code(&ExitCode::SUCCESS));
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}
