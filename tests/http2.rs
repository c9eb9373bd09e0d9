//! The example server, unchanged, over HTTP/2 with prior knowledge: 100 streams on one
//! connection while SIGTERM arrives all finish, the drain ends within its deadline, and the
//! process exits 0.

mod support;

use std::time::Duration;

use ballast_testkit::db;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{start, terminate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_http2_streams_finish_through_sigterm() {
    let Some(url) = db::postgres_url("a_hundred_http2_streams_finish_through_sigterm") else {
        return;
    };
    let database = db::PgDatabase::create(&url).await;
    let mut server = start(&[(
        "DATABASE_URL",
        &format!("{}?connection_limit=20", database.url()),
    )])
    .await;
    let addr = server.addr;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let get = |path: &str| {
        let mut sender = sender.clone();
        let request = http::Request::get(format!("http://{addr}{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        async move {
            let response = sender.send_request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, hyper::Error>((parts, body))
        }
    };
    let (ready, _) = get("/healthz").await.unwrap();
    assert_eq!(
        (ready.status.as_u16(), ready.version),
        (200, http::Version::HTTP_2)
    );

    // 100 streams of a 0.3 s query each (20 connections), on the one connection; SIGTERM while they run.
    let streams: Vec<_> = (0..100)
        .map(|_| tokio::spawn(get("/sleep?ms=300")))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, took) = terminate(&mut server, Duration::from_secs(30)).await;
    let mut statuses = std::collections::BTreeMap::new();
    for stream in streams {
        let status = match stream.await.unwrap() {
            Ok((parts, _)) => parts.status.as_u16().to_string(),
            Err(error) => format!("error: {error}"),
        };
        *statuses.entry(status).or_insert(0) += 1;
    }
    println!("http2 through SIGTERM: {statuses:?}; exit {status} after {took:?}");
    assert_eq!(
        statuses.get("200"),
        Some(&100),
        "{statuses:?}\n{}",
        server.log()
    );
    assert_eq!(status.code(), Some(0), "{}", server.log());
    assert!(
        took < Duration::from_secs(25),
        "within the drain deadline: {took:?}"
    );
}
