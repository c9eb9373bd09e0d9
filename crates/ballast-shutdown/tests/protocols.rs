//! What `axum::serve` serves, through `Shutdown::serve_with`, in-process over real sockets:
//! HTTP/2 with prior knowledge (100 streams on one connection finish at the drain; a client that
//! never finishes its headers is closed at the header timeout), a WebSocket (it echoes, then
//! gets a close frame with 1001 at the drain), and a Unix domain socket listener.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing;
use axum::Router;
use ballast_shutdown::{Listener, ServeConfig, Shutdown, ShutdownHandle, ShutdownLayer};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

async fn echo(socket: WebSocketUpgrade) -> Response {
    socket.on_upgrade(|mut socket: WebSocket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            if let Message::Text(_) | Message::Binary(_) = message {
                if socket.send(message).await.is_err() {
                    break;
                }
            }
        }
    })
}

fn app(handle: &ShutdownHandle) -> Router {
    Router::new()
        .route("/", routing::get(|| async { "ok" }))
        .route(
            "/slow",
            routing::get(|| async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                "slow"
            }),
        )
        .route("/ws", routing::get(echo))
        .layer(ShutdownLayer::new(handle.clone()))
}

/// Serves [`app`] on `listener` with `config` and a 10 s drain deadline; the handle and the task
/// that ends with the exit code.
fn serve<L: Listener>(listener: L, config: ServeConfig) -> (ShutdownHandle, JoinHandle<ExitCode>) {
    let shutdown = Shutdown::builder()
        .drain_deadline(Duration::from_secs(10))
        .build();
    let handle = shutdown.handle();
    let task = tokio::spawn(shutdown.serve_with(listener, app(&handle), config));
    (handle, task)
}

async fn tcp(config: ServeConfig) -> (SocketAddr, ShutdownHandle, JoinHandle<ExitCode>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (handle, task) = serve(listener, config);
    (addr, handle, task)
}

/// Waits for the server to exit; its exit code and how long it took.
async fn exit(task: JoinHandle<ExitCode>, within: Duration) -> (String, Duration) {
    let started = Instant::now();
    let code = tokio::time::timeout(within, task)
        .await
        .expect("the server exits within the deadline")
        .unwrap();
    (format!("{code:?}"), started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_in_flight_at_the_drain_all_finish() {
    let (addr, handle, task) = tcp(ServeConfig::default()).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    // A quick one first: HTTP/2 with prior knowledge works.
    let response = sender
        .clone()
        .send_request(
            http::Request::get(format!("http://{addr}/"))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);

    // 100 streams at once on the one connection, then the drain begins.
    let streams: Vec<_> = (0..100)
        .map(|_| {
            let mut sender = sender.clone();
            tokio::spawn(async move {
                let request = http::Request::get(format!("http://{addr}/slow"))
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let response = sender.send_request(request).await?;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>((status, body))
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    handle.trigger();
    let mut finished = 0;
    for stream in streams {
        let (status, body) = stream.await.unwrap().expect("no stream fails");
        assert_eq!((status.as_u16(), &body[..]), (200, &b"slow"[..]));
        finished += 1;
    }
    let (code, took) = exit(task, Duration::from_secs(10)).await;
    println!("http2: {finished} of 100 streams finished; exit {code} after {took:?}");
    assert_eq!(code, format!("{:?}", ExitCode::SUCCESS));
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_never_finishes_its_headers_is_closed() {
    let config = ServeConfig::default().header_read_timeout(Duration::from_millis(500));
    let (addr, _handle, _task) = tcp(config).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The preface, an empty SETTINGS, and a HEADERS frame on stream 1 without END_HEADERS
    // (a header block that never ends).
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    bytes.extend_from_slice(&[0, 0, 1, 0x1, 0x0, 0, 0, 0, 1, 0x82]);
    stream.write_all(&bytes).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            // The server's SETTINGS and its ACK.
            Ok(Ok(_)) => {}
            Err(_) => panic!("still open after 5 s"),
        }
    }
    let took = started.elapsed();
    println!("http2: a header block that never ended closed after {took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_echoes_then_is_told_the_server_is_going_away() {
    let (addr, handle, task) = tcp(ServeConfig::default()).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    socket
        .send(tokio_tungstenite::tungstenite::Message::text("hello"))
        .await
        .unwrap();
    let echoed = socket.next().await.unwrap().unwrap();
    assert_eq!(echoed.to_text().unwrap(), "hello");

    handle.trigger();
    let started = Instant::now();
    let close = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("a close frame within 5 s")
        .unwrap()
        .unwrap();
    let tokio_tungstenite::tungstenite::Message::Close(Some(frame)) = close else {
        panic!("not a close frame: {close:?}");
    };
    println!(
        "websocket: close {} {:?} after {:?}",
        frame.code,
        frame.reason,
        started.elapsed()
    );
    assert_eq!(u16::from(frame.code), 1001);
    assert_eq!(frame.reason.as_str(), "going away");
    // The client answers the close (tungstenite does as it reads on); the server's side ends,
    // and the process exits, drained.
    let _ = socket.close(None).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the server closed the connection");
    let (code, took) = exit(task, Duration::from_secs(10)).await;
    assert_eq!(code, format!("{:?}", ExitCode::SUCCESS));
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_that_ignores_the_goodbye_is_cut() {
    let (addr, handle, task) = tcp(ServeConfig::default()).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nhost: {addr}\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    handle.trigger();
    let started = Instant::now();
    // The close frame, unmasked, 1001 "going away"; the client never answers it.
    let mut frame = Vec::new();
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break started.elapsed(),
            Ok(Ok(n)) => frame.extend_from_slice(&buf[..n]),
            Err(_) => panic!("never closed"),
        }
    };
    assert_eq!(&frame[..4], &[0x88, 12, 0x03, 0xE9], "{frame:?}");
    println!("websocket: a client ignoring the goodbye was cut after {closed:?}");
    assert!(
        closed >= Duration::from_secs(4) && closed < Duration::from_secs(7),
        "{closed:?}"
    );
    let (code, _) = exit(task, Duration::from_secs(10)).await;
    assert_eq!(code, format!("{:?}", ExitCode::SUCCESS));
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_serves_and_drains() {
    let dir = std::env::temp_dir().join(format!("ballast-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("serve.sock");
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let (handle, task) = serve(listener, ServeConfig::default());

    let mut stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nhost: sidecar\r\n\r\n")
        .await
        .unwrap();
    // The drain begins while the request is in flight: it is answered, then the process exits.
    tokio::time::sleep(Duration::from_millis(100)).await;
    handle.trigger();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("slow"), "{response}");
    let (code, _) = exit(task, Duration::from_secs(10)).await;
    assert_eq!(code, format!("{:?}", ExitCode::SUCCESS));
    // A new connection is refused once the listener closed.
    assert!(tokio::net::UnixStream::connect(&path).await.is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A WebSocket handler that writes after the drain's close frame went out is told its frame was
/// not sent (it was a silent success, the frame dropped, every time after the goodbye).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_write_after_the_goodbye_fails_visibly() {
    let shutdown = Shutdown::builder()
        .drain_deadline(Duration::from_secs(10))
        .build();
    let handle = shutdown.handle();
    let (report, mut reported) = tokio::sync::mpsc::unbounded_channel();
    let draining = handle.clone();
    let app = Router::new()
        .route(
            "/ws",
            routing::get(move |socket: WebSocketUpgrade| {
                let (draining, report) = (draining.clone(), report.clone());
                async move {
                    socket.on_upgrade(move |mut socket: WebSocket| async move {
                        // The application's writes once the drain has begun: those before the
                        // goodbye go out; the goodbye goes out between two of them; the next
                        // one must fail.
                        draining.draining().await;
                        let mut sent = Ok(());
                        for _ in 0..50 {
                            sent = socket.send(Message::Text("late".into())).await;
                            if sent.is_err() {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        let _ = report.send(sent.map_err(|error| error.to_string()));
                    })
                }
            }),
        )
        .layer(ShutdownLayer::new(handle.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(shutdown.serve_with(listener, app, ServeConfig::default()));
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    handle.trigger();
    let sent = tokio::time::timeout(Duration::from_secs(5), reported.recv())
        .await
        .expect("the handler wrote")
        .unwrap();
    println!("websocket: a write after the goodbye: {sent:?}");
    assert!(sent.is_err(), "reported as sent: {sent:?}");
    // The client got the frames sent before the goodbye, then the goodbye.
    let close = loop {
        match socket.next().await.unwrap().unwrap() {
            tokio_tungstenite::tungstenite::Message::Text(text) => {
                assert_eq!(text.as_str(), "late");
            }
            other => break other,
        }
    };
    assert!(
        matches!(
            close,
            tokio_tungstenite::tungstenite::Message::Close(Some(_))
        ),
        "{close:?}"
    );
    drop(socket);
    let (code, _) = exit(task, Duration::from_secs(10)).await;
    assert_eq!(code, format!("{:?}", ExitCode::SUCCESS));
}
