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

/// Captures WARN and above process-wide (the server's tasks run on every worker).
fn capture_warnings() -> ballast_testkit::logs::Captured {
    static CAPTURED: std::sync::OnceLock<ballast_testkit::logs::Captured> =
        std::sync::OnceLock::new();
    CAPTURED
        .get_or_init(|| {
            let captured = ballast_testkit::logs::Captured::default();
            let writer = captured.clone();
            let _ = tracing::subscriber::set_global_default(
                tracing_subscriber::fmt()
                    .with_max_level(tracing::Level::WARN)
                    .with_ansi(false)
                    .with_writer(move || writer.clone())
                    .finish(),
            );
            captured
        })
        .clone()
}

/// Busy connections are never closed for the cap: past it, with every connection in a request,
/// a new connection waits until one is free, and the log says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_with_every_connection_busy_new_connections_wait() {
    let captured = capture_warnings();
    let config = ServeConfig::default().max_connections(2);
    let (addr, _handle, _task) = serve(Shutdown::builder().build(), config).await;
    let started = Instant::now();
    let busy = |addr| {
        tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            get(&mut stream, "/slow").await
        })
    };
    let (first, second) = (busy(addr), busy(addr));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(addr).await.unwrap();
    let waiting = tokio::spawn(async move {
        let answer = get(&mut third, "/").await;
        (answer, Instant::now())
    });
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert!(
        first.unwrap().ends_with("slow"),
        "a busy connection was closed"
    );
    assert!(
        second.unwrap().ends_with("slow"),
        "a busy connection was closed"
    );
    let (answer, at) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served once a connection was idle")
        .unwrap();
    assert!(answer.unwrap().starts_with("HTTP/1.1 200"));
    assert!(
        at - started >= Duration::from_millis(900),
        "served past the cap while every connection was busy ({:?})",
        at - started
    );
    let log = captured.take();
    assert!(
        log.contains("connection cap reached with every connection busy"),
        "the cap is said in the log: {log}"
    );
}

/// Silent connections do not hold the cap: a new connection gets the header timeout from accept
/// (one that never sends anything is closed after `header_read_timeout`, not `idle_timeout`),
/// and at the cap the connection idle longest is closed to admit a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_speaks_is_closed_at_the_header_timeout() {
    let config = ServeConfig::default().header_read_timeout(Duration::from_millis(300));
    let (addr, _handle, _task) = serve(Shutdown::builder().build(), config).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let took = closed_after(&mut silent, Duration::from_secs(10)).await;
    println!("a silent connection closed after {took:?}");
    let took = took.expect("a silent connection stayed open past the header timeout");
    assert!(
        took < Duration::from_secs(5),
        "{took:?}: the idle timeout, not the header's"
    );
}

/// Twice the cap of silent connections (and keep-alive connections between requests) held open:
/// a new client is still answered, by closing the connections idle longest; the log says how
/// many and why. Each timeout is left at its default (10 s, 75 s): nothing is waited out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_idle_connections_are_closed_to_admit_new_ones() {
    let captured = capture_warnings();
    const CAP: usize = 16;
    let config = ServeConfig::default().max_connections(CAP);
    let (addr, _handle, _task) = serve(Shutdown::builder().build(), config).await;
    let mut held = Vec::new();
    // Keep-alive connections between requests, then silent ones: twice the cap in all.
    for _ in 0..4 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert!(get(&mut stream, "/")
            .await
            .unwrap()
            .starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    for _ in 4..2 * CAP {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    let started = Instant::now();
    let mut client = TcpStream::connect(addr).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), get(&mut client, "/"))
        .await
        .expect("answered with twice the cap of idle connections open");
    println!("answered after {:?}", started.elapsed());
    assert!(answer.unwrap().starts_with("HTTP/1.1 200"));
    // The keep-alive connections were idle longest: closed first.
    for stream in &mut held[..4] {
        assert!(
            closed_after(stream, Duration::from_secs(2)).await.is_some(),
            "an idle keep-alive connection was kept while new ones waited"
        );
    }
    let log = captured.take();
    assert!(
        log.contains("connection cap reached: closed") && log.contains("idle_between_requests="),
        "the log says how many were closed and why: {log}"
    );
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

/// Sends `request` as is on a new connection and reads until the server closes it or `within`.
async fn raw(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host`, any request with two, and an empty or
/// invalid one are answered 400 problem+json, and the connection is closed; HTTP/1.0 may omit it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_exactly_one_valid_host_is_a_bad_request() {
    let (addr, _handle, _task) = serve(Shutdown::builder().build(), ServeConfig::default()).await;
    for (what, request) in [
        ("no Host", "GET / HTTP/1.1\r\n\r\n"),
        (
            "two Hosts",
            "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        ),
        ("an empty Host", "GET / HTTP/1.1\r\nHost:\r\n\r\n"),
        (
            "a Host with user info",
            "GET / HTTP/1.1\r\nHost: user@a.test\r\n\r\n",
        ),
        (
            "two Hosts on HTTP/1.0",
            "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
        ),
    ] {
        let response = raw(addr, request).await;
        assert_eq!(
            response.split(' ').nth(1),
            Some("400"),
            "{what}: {response}"
        );
        let lower = response.to_ascii_lowercase();
        assert!(
            lower.contains("content-type: application/problem+json"),
            "{what}: {response}"
        );
        assert!(
            lower.contains("cache-control: no-store"),
            "{what}: {response}"
        );
        assert!(
            response.contains("\"code\":\"BAD_REQUEST\""),
            "{what}: {response}"
        );
    }
    for (what, request) in [
        (
            "a Host",
            "GET / HTTP/1.1\r\nHost: a.test:8080\r\nConnection: close\r\n\r\n",
        ),
        (
            "an IPv6 Host",
            "GET / HTTP/1.1\r\nHost: [::1]:80\r\nConnection: close\r\n\r\n",
        ),
        ("HTTP/1.0 without Host", "GET / HTTP/1.0\r\n\r\n"),
    ] {
        let response = raw(addr, request).await;
        assert_eq!(
            response.split(' ').nth(1),
            Some("200"),
            "{what}: {response}"
        );
    }
}

/// Slow clients do not hold the drain: a connection that sent part of a header, and one that sent
/// nothing, are closed when the drain begins (after a second's grace for a header under way), a
/// request in progress still finishes, and the exit code is 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_header_does_not_hold_the_drain() {
    let shutdown = Shutdown::builder()
        .pre_drain_delay(Duration::ZERO)
        .drain_deadline(Duration::from_secs(20))
        .build();
    let (addr, handle, task) = serve(shutdown, ServeConfig::default()).await;
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial
        .write_all(b"GET / HTTP/1.1\r\nHost: a")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut busy = TcpStream::connect(addr).await.unwrap();
    let slow = tokio::spawn(async move { get(&mut busy, "/slow").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    handle.trigger();
    let answer = slow.await.unwrap().expect("the request in flight finished");
    assert!(answer.ends_with("slow"), "{answer}");
    assert!(closed_after(&mut partial, Duration::from_secs(5))
        .await
        .is_some());
    assert!(closed_after(&mut silent, Duration::from_secs(5))
        .await
        .is_some());
    let exit = tokio::time::timeout(Duration::from_secs(8), task)
        .await
        .expect("the drain was held by a partial header")
        .unwrap();
    println!("drained in {:?}", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(code(&exit), code(&ExitCode::SUCCESS));
}
