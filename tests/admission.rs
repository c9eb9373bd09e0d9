//! Admission by time through the example server, as clients see it: a load the database serves
//! in time is served whole, and a standing overload is refused at once with an honest answer.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballast_testkit::db::{self, PgRole};
use ballast_testkit::http::{Client, Reply};
use support::{get, start};

/// Every answer of `clients` keep-alive clients sending `path` again as soon as they are
/// answered (after a refusal, after 5 ms: the test's tasks must not spin) for `run`.
async fn closed_loop(addr: SocketAddr, clients: usize, path: &str, run: Duration) -> Vec<Reply> {
    let replies = Arc::new(Mutex::new(Vec::new()));
    let until = Instant::now() + run;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (replies, path) = (Arc::clone(&replies), path.to_owned());
            tokio::spawn(async move {
                let mut client = Client::new(addr);
                client.connect().await;
                while Instant::now() < until {
                    let Some(reply) = client.get(&path).await else {
                        panic!("the server closed a connection");
                    };
                    let refused = reply.status != 200;
                    replies.lock().unwrap().push(reply);
                    if refused {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    Arc::into_inner(replies).unwrap().into_inner().unwrap()
}

/// The issue's reproduction: a role limited to 12 connections, a pool of 10, 200 clients each
/// sending `GET /sleep?ms=20` again as soon as it has its answer. Each waits about 0.4 s, far
/// inside `pool_timeout`. The old default (at most 10 × the pool waiting) answered most of them
/// with a 503 saying no connection "became free in time"; every one is served now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_the_database_serves_in_time_are_all_served() {
    let Some(url) = db::postgres_url("two_hundred_clients_are_all_served") else {
        return;
    };
    let role = PgRole::create(&url, Some(12)).await;
    let database_url = format!(
        "{}?connection_limit=10&pool_timeout=5&connect_timeout=5",
        role.url()
    );
    let server = start(&[("DATABASE_URL", &database_url)]).await;
    let addr = server.addr;
    assert_eq!(get(addr, "/sleep?ms=1").await.status, 200);
    let replies = closed_loop(addr, 200, "/sleep?ms=20", Duration::from_secs(4)).await;
    let refused: Vec<_> = replies.iter().filter(|reply| reply.status != 200).collect();
    let mut took: Vec<Duration> = replies.iter().map(|reply| reply.took).collect();
    took.sort();
    println!(
        "{} answers, {} not 200, p99 {:?}",
        replies.len(),
        refused.len(),
        took[took.len() * 99 / 100]
    );
    if let Some(first) = refused.first() {
        panic!(
            "{} of {} refused: {} {}",
            refused.len(),
            replies.len(),
            first.status,
            first.body
        );
    }
    assert!(replies.len() >= 1_000, "{} answers", replies.len());
    let stats = get(addr, "/stats").await.json();
    assert_eq!(stats["pool"]["shed"], 0, "{}", stats["pool"]);
}

/// A standing overload — 150 clients on a pool of 5 with 100 ms queries, three seconds of work
/// queued — is answered at once, as a client can act on it: a 503 problem that says
/// `retryable`, names the expected wait against what was allowed, and carries `Retry-After`;
/// `/stats` and `/metrics` count the refusals by reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standing_overload_is_refused_with_an_honest_answer() {
    let Some(url) = db::postgres_url("a_standing_overload_is_refused_with_an_honest_answer") else {
        return;
    };
    let separator = if url.contains('?') { '&' } else { '?' };
    let database_url = format!("{url}{separator}connection_limit=5");
    let server = start(&[("DATABASE_URL", &database_url)]).await;
    let addr = server.addr;
    assert_eq!(get(addr, "/sleep?ms=1").await.status, 200);
    let replies = closed_loop(addr, 150, "/sleep?ms=100", Duration::from_secs(5)).await;
    let served = replies.iter().filter(|reply| reply.status == 200).count();
    let refused: Vec<_> = replies.iter().filter(|reply| reply.status == 503).collect();
    let other = replies.len() - served - refused.len();
    println!(
        "{served} served, {} refused, {other} other; a refusal: {}",
        refused.len(),
        refused.first().map_or("", |reply| reply.body.as_str())
    );
    assert_eq!(other, 0, "only 200 or 503");
    assert!(served >= 150, "the pool kept serving: {served}");
    assert!(!refused.is_empty(), "a standing overload is refused");
    for reply in &refused {
        assert!(reply.retry_after.is_some(), "{}", reply.body);
        assert!(reply.body.contains(r#""retryable":true"#), "{}", reply.body);
        assert!(reply.body.contains(r#""code":"DB_CONNECTION_ERROR""#));
        assert!(reply.body.contains("at capacity"), "{}", reply.body);
        assert!(
            !reply.body.contains("became free in time"),
            "{}",
            reply.body
        );
    }
    let at_once = refused
        .iter()
        .filter(|reply| reply.took < Duration::from_millis(100))
        .count();
    assert!(
        at_once * 2 > refused.len(),
        "{at_once} of {} at once",
        refused.len()
    );
    let stats = get(addr, "/stats").await.json();
    let refusals = &stats["pool"]["refusals"];
    assert!(
        refusals["standing_queue"].as_u64().unwrap() > 0,
        "{refusals}"
    );
    assert_eq!(
        stats["pool"]["shed"].as_u64().unwrap(),
        refused.len() as u64,
        "{refusals}"
    );
    let metrics = get(addr, "/metrics").await.body;
    let standing = metrics
        .lines()
        .find(|line| {
            line.starts_with("ballast_pool_refusals_total{")
                && line.contains(r#"reason="standing_queue""#)
        })
        .unwrap_or_else(|| panic!("no standing_queue refusals in /metrics:\n{metrics}"));
    let count: f64 = standing.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count > 0.0, "{standing}");
}
