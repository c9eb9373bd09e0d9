//! Clients that never read, through `Shutdown::serve_with`, in-process over real sockets: HTTP/2
//! connections that hold their flow-control window shut, HTTP/2 streams that stall on it, an
//! HTTP/1.1 client that stops reading its response, and clients that reconnect with half a
//! header. Each holds something — a connection slot, a stream, a response's bytes — and each must
//! let go of it in bounded time and bytes, while new clients are served.

use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use axum::routing;
use axum::Router;
use ballast_shutdown::{ServeConfig, Shutdown, ShutdownHandle, ShutdownLayer};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The size of `/big`'s body.
const BIG: usize = 1_000_000;

/// How many of `/big`'s bodies exist at once, and the most that ever did.
#[derive(Default)]
struct Bodies {
    alive: AtomicUsize,
    peak: AtomicUsize,
    made: AtomicUsize,
}

/// A response body that counts itself in [`Bodies`] while it exists.
struct Counted {
    inner: Full<Bytes>,
    bodies: Arc<Bodies>,
}

impl Counted {
    fn new(bytes: Bytes, bodies: Arc<Bodies>) -> Self {
        let alive = bodies.alive.fetch_add(1, Ordering::SeqCst) + 1;
        bodies.peak.fetch_max(alive, Ordering::SeqCst);
        bodies.made.fetch_add(1, Ordering::SeqCst);
        Counted {
            inner: Full::new(bytes),
            bodies,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.bodies.alive.fetch_sub(1, Ordering::SeqCst);
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> SizeHint {
        http_body::Body::size_hint(&self.inner)
    }
}

fn app(handle: &ShutdownHandle, bodies: &Arc<Bodies>, huge: usize) -> Router {
    let big = Bytes::from(vec![b'x'; BIG]);
    let huge = Bytes::from(vec![b'y'; huge]);
    let bodies = Arc::clone(bodies);
    Router::new()
        .route("/", routing::get(|| async { "ok" }))
        .route(
            "/big",
            routing::get(move || {
                let body = Counted::new(big.clone(), Arc::clone(&bodies));
                async move { Response::new(Body::new(body)) }
            }),
        )
        .route(
            "/huge",
            routing::get(move || {
                let huge = huge.clone();
                async move { huge }
            }),
        )
        .layer(ShutdownLayer::new(handle.clone()))
}

struct Server {
    addr: SocketAddr,
    handle: ShutdownHandle,
    task: JoinHandle<ExitCode>,
    bodies: Arc<Bodies>,
}

async fn serve(config: ServeConfig) -> Server {
    serve_with(config, 1).await
}

/// Serves [`app`] with `config`, a 10 s drain deadline and no pre-drain delay; `/huge` is
/// `huge` bytes.
async fn serve_with(config: ServeConfig, huge: usize) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::builder()
        .drain_deadline(Duration::from_secs(10))
        .build();
    let handle = shutdown.handle();
    let bodies = Arc::new(Bodies::default());
    let task = tokio::spawn(shutdown.serve_with(listener, app(&handle, &bodies, huge), config));
    Server {
        addr,
        handle,
        task,
        bodies,
    }
}

/// An HTTP/2 connection whose streams start with a flow-control window of `window` bytes
/// (`SETTINGS_INITIAL_WINDOW_SIZE`) and whose connection window is 16 MiB. Its task answers the
/// server's pings and never sends a `WINDOW_UPDATE` the test does not ask for.
async fn h2_client(
    addr: SocketAddr,
    window: u32,
) -> (h2::client::SendRequest<Bytes>, JoinHandle<()>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(window)
        .initial_connection_window_size(16 << 20)
        .handshake(tcp)
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (send, task)
}

/// Opens a `GET path` stream.
async fn h2_get(
    send: &h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    path: &str,
) -> h2::client::ResponseFuture {
    let request = http::Request::get(format!("http://{addr}{path}"))
        .body(())
        .unwrap();
    let mut send = send.clone().ready().await.unwrap();
    send.send_request(request, true).unwrap().0
}

/// An HTTP/1.1 `GET /` on a new connection: how long its answer took, or `None` after `within`.
async fn probe(addr: SocketAddr, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let answer = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        answer.starts_with(b"HTTP/1.1 200").then_some(())
    };
    tokio::time::timeout(within, answer).await.ok().flatten()?;
    Some(started.elapsed())
}

fn success() -> String {
    format!("{:?}", ExitCode::SUCCESS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_window_connections_at_the_cap_do_not_lock_new_clients_out() {
    // The default cap (512), every slot held by a connection whose one response cannot send a
    // byte of its body.
    let server = serve(ServeConfig::default()).await;
    let mut clients = Vec::new();
    for _ in 0..512 {
        let (send, task) = h2_client(server.addr, 0).await;
        let response = h2_get(&send, server.addr, "/").await;
        clients.push((send, task, response));
    }
    // Each response's head arrives; its body, which the client never accepts, is kept (dropping
    // it would reset the stream).
    let mut held = Vec::new();
    for (_, _, response) in &mut clients {
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("the head goes out")
            .unwrap();
        assert_eq!(response.status(), 200);
        held.push(response);
    }
    // Past the time a stalled response takes to count as stalled.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut took = Vec::new();
    for _ in 0..5 {
        took.push(probe(server.addr, Duration::from_secs(3)).await);
    }
    println!("zero-window lockout: fresh clients answered after {took:?}");
    drop((clients, held));
    for took in took {
        let took = took.expect("a fresh client is served");
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_stalled_on_its_window_is_reset_while_its_neighbour_finishes() {
    let server = serve(ServeConfig::default().send_timeout(Duration::from_secs(1))).await;
    // Stream windows of 64 KiB: a 1 MB body stops after the first 64 KiB until the client
    // gives more.
    let (send, _task) = h2_client(server.addr, 65_535).await;
    let stalled = h2_get(&send, server.addr, "/big").await;
    let reading = h2_get(&send, server.addr, "/big").await;
    let started = Instant::now();
    let mut stalled = stalled.await.unwrap().into_body();
    let mut reading = reading.await.unwrap().into_body();
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while let Some(chunk) = reading.data().await {
            let chunk = chunk.expect("the stream being read is not reset");
            got += chunk.len();
            reading
                .flow_control()
                .release_capacity(chunk.len())
                .unwrap();
        }
        got
    });
    // The stalled stream: read what arrived, give nothing back, until the server resets it.
    let reset = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stalled.data().await {
                Some(Ok(_)) => {}
                Some(Err(error)) => return Some(error),
                None => return None,
            }
        }
    })
    .await
    .expect("the stalled stream is reset within 5 s")
    .expect("it ends with a reset, not with its whole body");
    let took = started.elapsed();
    println!("a stream stalled on its window: {reset} after {took:?}");
    assert_eq!(reset.reason(), Some(h2::Reason::CANCEL), "{reset}");
    assert!(
        took >= Duration::from_millis(900),
        "reset before the send timeout: {took:?}"
    );
    assert!(took < Duration::from_millis(2500), "{took:?}");
    assert_eq!(
        reader.await.unwrap(),
        BIG,
        "the neighbour's body arrives whole"
    );
    assert_eq!(server.bodies.alive.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_holds_a_bounded_number_of_unsent_bytes() {
    let server = serve(ServeConfig::default()).await;
    // 60 new streams a second for 2 s on one connection that accepts no body at all.
    let (send, _task) = h2_client(server.addr, 0).await;
    let mut streams = Vec::new();
    for _ in 0..120 {
        streams.push(h2_get(&send, server.addr, "/big").await);
        tokio::time::sleep(Duration::from_millis(16)).await;
    }
    let bodies = &server.bodies;
    println!(
        "unsent bytes: {} bodies of 1 MB made, at most {} at once, {} now",
        bodies.made.load(Ordering::SeqCst),
        bodies.peak.load(Ordering::SeqCst),
        bodies.alive.load(Ordering::SeqCst)
    );
    // 1 MiB by default: one body of 1 MB fits, a second crosses it, no third handler starts.
    assert!(bodies.peak.load(Ordering::SeqCst) <= 3);
    drop(streams);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_resets_stalled_streams_and_exits_zero() {
    let server = serve(ServeConfig::default()).await;
    // 20 connections × 5 streams, each with its head out and its body held back by the window.
    let mut clients = Vec::new();
    let mut held = Vec::new();
    for _ in 0..20 {
        let (send, task) = h2_client(server.addr, 0).await;
        let mut responses = Vec::new();
        for _ in 0..5 {
            responses.push(h2_get(&send, server.addr, "/").await);
        }
        for response in responses {
            let response = response.await.unwrap();
            assert_eq!(response.status(), 200);
            // Kept: dropping it would reset the stream.
            held.push(response);
        }
        clients.push((send, task));
    }
    let started = Instant::now();
    server.handle.trigger();
    let code = tokio::time::timeout(Duration::from_secs(12), server.task)
        .await
        .expect("the server exits")
        .unwrap();
    let took = started.elapsed();
    println!("drain with 100 stalled streams: exit {code:?} after {took:?}");
    assert_eq!(format!("{code:?}"), success());
    assert!(took < Duration::from_secs(4), "{took:?}");
    drop((clients, held));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_that_stops_reading_is_closed_after_the_send_timeout() {
    const HUGE: usize = 64 << 20;
    let server = serve_with(
        ServeConfig::default().send_timeout(Duration::from_secs(1)),
        HUGE,
    )
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /huge HTTP/1.1\r\nHost: reader\r\n\r\n")
        .await
        .unwrap();
    // Not a byte read for 4 s: the server's writes wait all that time.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut got = 0;
    let mut buf = vec![0; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    println!("an HTTP/1.1 client that stopped reading got {got} of {HUGE} bytes, then the end");
    assert!(ended.is_ok(), "the connection ends");
    assert!(got < HUGE, "the response was abandoned, not finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_http1_download_finishes_across_the_drain() {
    const SIZE: usize = 24 << 20;
    let server = serve_with(ServeConfig::default(), SIZE).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /huge HTTP/1.1\r\nHost: reader\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // About 8 MB a second, in small reads with pauses: slow, but reading.
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = vec![0; 1 << 16];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            tokio::time::sleep(Duration::from_millis(8)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.handle.trigger();
    let got = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the download finishes")
        .unwrap();
    let body = got.len() - (got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4);
    assert_eq!(body, SIZE, "the whole body arrives");
    let code = tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(format!("{code:?}"), success());
}

/// `count` clients that send half a header and reconnect as soon as the server closes them.
fn half_header_attack(addr: SocketAddr, count: usize, bytes: &'static [u8]) -> Vec<JoinHandle<()>> {
    (0..count)
        .map(|_| {
            tokio::spawn(async move {
                loop {
                    let Ok(mut stream) = TcpStream::connect(addr).await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    if stream.write_all(bytes).await.is_err() {
                        continue;
                    }
                    let mut buf = [0; 256];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                }
            })
        })
        .collect()
}

async fn fresh_clients_get_through(bytes: &'static [u8]) {
    let server = serve(ServeConfig::default().max_connections(32)).await;
    let attackers = half_header_attack(server.addr, 48, bytes);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut took = Vec::new();
    for _ in 0..8 {
        took.push(probe(server.addr, Duration::from_secs(3)).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for attacker in attackers {
        attacker.abort();
    }
    println!(
        "half-header attack ({} bytes): fresh clients after {took:?}",
        bytes.len()
    );
    for took in took {
        let took = took.expect("a fresh client is served");
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_half_header_clients_do_not_lock_new_clients_out() {
    fresh_clients_get_through(b"GET / HTTP/1.1\r\nHo").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_http2_preface_only_clients_do_not_lock_new_clients_out() {
    fresh_clients_get_through(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await;
}

/// The status and body of `request` on a new HTTP/2 connection.
async fn h2_answer(addr: SocketAddr, request: http::Request<()>) -> (u16, String) {
    let (send, _task) = h2_client(addr, 65_535).await;
    let mut send = send.ready().await.unwrap();
    let response = send.send_request(request, true).unwrap().0.await.unwrap();
    let status = response.status().as_u16();
    let content_type = response.headers().get(http::header::CONTENT_TYPE).cloned();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        text.extend_from_slice(&chunk);
    }
    if status == 400 {
        assert_eq!(
            content_type.as_ref().map(|value| value.to_str().unwrap()),
            Some("application/problem+json")
        );
    }
    (status, String::from_utf8(text).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_request_whose_host_differs_from_its_authority_is_malformed() {
    let server = serve(ServeConfig::default()).await;
    let addr = server.addr;
    // RFC 9113 §8.3.1: both present and different, or neither: malformed.
    let differ = http::Request::get(format!("http://{addr}/"))
        .header(http::header::HOST, "elsewhere.example")
        .body(())
        .unwrap();
    let (status, body) = h2_answer(addr, differ).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains(":authority"), "{body}");
    let neither = http::Request::get("/").body(()).unwrap();
    let (status, body) = h2_answer(addr, neither).await;
    assert_eq!(status, 400, "{body}");
    // The same name in both (case aside), or only one of them: served.
    let same = http::Request::get(format!("http://{addr}/"))
        .header(http::header::HOST, addr.to_string().to_uppercase())
        .body(())
        .unwrap();
    assert_eq!(h2_answer(addr, same).await, (200, "ok".to_owned()));
    let host_only = http::Request::get("/")
        .header(http::header::HOST, addr.to_string())
        .body(())
        .unwrap();
    assert_eq!(h2_answer(addr, host_only).await, (200, "ok".to_owned()));
}
