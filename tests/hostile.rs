//! The example server, unchanged, against HTTP/2 clients that never accept a response's body:
//! streams for an uncached ~1 MB `GET /items` opened at 60 a second on connections whose
//! flow-control window stays at zero. The server's memory stays within the documented bound
//! (about 1 MiB unsent per connection plus one response), not one body per stream, and a fresh
//! client is served throughout.
//!
//! `BALLAST_ATTACK_SECONDS` (10) sets how long the attack lasts; the figure is for 30.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ballast_testkit::db;
use bytes::Bytes;
use support::{get, request, start, terminate, wait_ready};
use tokio::net::TcpStream;

/// Rows in `items`: about 1 MB of JSON for `GET /items`.
const ROWS: u32 = 15_000;
/// New streams a second.
const RATE: u32 = 60;
/// Streams per connection before the client opens another (the server's limit is 128).
const STREAMS_PER_CONNECTION: u32 = 128;
/// The example server's pool: queries running at once.
const POOL: u64 = 10;

/// The server's resident set, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// A connection whose streams' windows start at zero and are never opened; its task answers
/// pings.
async fn zero_window(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake(tcp)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_http2_streams_keep_the_servers_memory_bounded() {
    if !cfg!(target_os = "linux") {
        println!("skipped: reads the server's memory from /proc");
        return;
    }
    let Some(url) = db::postgres_url("stalled_http2_streams_keep_the_servers_memory_bounded")
    else {
        return;
    };
    let seconds: u32 = std::env::var("BALLAST_ATTACK_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(10);
    let database = db::PgDatabase::create(&url).await;
    let server = start(&[("DATABASE_URL", database.url())]).await;
    let addr = server.addr;
    wait_ready(addr, Duration::from_secs(30)).await;
    // The schema is the server's; the rows are ours.
    assert_eq!(get(addr, "/items").await.status, 200);
    db::pg_execute(
        database.url(),
        &format!(
            "INSERT INTO items (name) SELECT 'chair number ' || g FROM generate_series(1, {ROWS}) g"
        ),
    )
    .await;
    let pid = server.child.id().expect("running");
    let size = {
        let answer = request(addr, "GET", "/items", &[("cookie", "session=me")], None).await;
        assert_eq!(answer.status, 200);
        answer.body.len()
    };
    assert!(size > 900_000, "{size}");
    let before = rss(pid);

    // The attack: a cookie keeps the cache out of it (each stream is a query and a new body).
    let started = Instant::now();
    let mut connections = Vec::new();
    let mut streams = Vec::new();
    let mut peak = before;
    let mut probes = Vec::new();
    let mut opened = 0;
    while started.elapsed() < Duration::from_secs(seconds.into()) {
        if opened % STREAMS_PER_CONNECTION == 0 {
            connections.push(zero_window(addr).await);
        }
        let send = connections.last().expect("a connection").clone();
        let request = http::Request::get(format!("http://{addr}/items"))
            .header(http::header::COOKIE, "session=attacker")
            .body(())
            .unwrap();
        // Past the server's stream limit the client waits for a stream of its own: the pace is
        // the attack's, not the server's.
        if let Ok(Ok(mut send)) =
            tokio::time::timeout(Duration::from_millis(100), send.ready()).await
        {
            if let Ok((response, _)) = send.send_request(request, true) {
                streams.push(tokio::spawn(async move {
                    // The head is read; the body is kept and never accepted.
                    let response = response.await.ok()?;
                    let body = response.into_body();
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Some(body)
                }));
            }
        }
        opened += 1;
        if opened % (RATE / 2) == 0 {
            peak = peak.max(rss(pid));
            let probe = Instant::now();
            let answer = tokio::time::timeout(Duration::from_secs(5), get(addr, "/healthz")).await;
            probes.push((answer.map(|answer| answer.status).ok(), probe.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(u64::from(1000 / RATE))).await;
    }
    peak = peak.max(rss(pid));
    let grew = peak.saturating_sub(before);
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    // The documented bound: per connection about 1 MiB unsent plus one response; the handlers
    // running at the moment, which hold their rows and their JSON until they answer (at most the
    // pool's ten with rows in hand, the default `connection_limit`: about three responses'
    // worth each in this debug build); 64 MiB for the allocator's slack and the rest of the
    // process.
    let bound =
        connections.len() as u64 * ((1 << 20) + size as u64) + POOL * 3 * size as u64 + (64 << 20);
    let slowest = probes
        .iter()
        .map(|(_, took)| *took)
        .max()
        .unwrap_or_default();
    println!(
        "{opened} streams of {size} bytes at {RATE}/s for {seconds} s on {} zero-window connections: \
         server RSS {:.0} MiB → peak {:.0} MiB (+{:.0} MiB; bound {:.0} MiB); \
         {} /healthz probes, slowest {slowest:?}",
        connections.len(),
        mib(before),
        mib(peak),
        mib(grew),
        mib(bound),
        probes.len(),
    );
    assert!(grew < bound, "grew {:.0} MiB", mib(grew));
    // The attack keeps both cores building 1 MB bodies (in a debug build): a probe waits for
    // CPU, not for a slot (the in-process tests hold the one-second figure).
    for (status, took) in &probes {
        assert_eq!(*status, Some(200), "a fresh client is served");
        assert!(*took < Duration::from_secs(2), "{took:?}");
    }
    for stream in &streams {
        stream.abort();
    }
    drop(connections);
    let mut server = server;
    let (status, took) = terminate(&mut server, Duration::from_secs(30)).await;
    println!("SIGTERM after the attack: {status} after {took:?}");
    assert_eq!(status.code(), Some(0), "{}", server.log());
}
