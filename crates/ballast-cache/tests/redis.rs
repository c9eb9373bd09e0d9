//! Invalidation shared through Redis (feature `redis`): two caches — two instances — on one
//! channel. The channel's latency on the machine's Redis (`REDIS_URL`), and Redis stopped and
//! started again under a private `redis-server`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_cache::redis::SharedInvalidation;
use ballast_cache::{CacheLayer, ResponseCache};
use ballast_testkit::db;
use ballast_testkit::redis::PrivateRedis;
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use tower::{service_fn, Layer, Service, ServiceExt};

/// One instance: a cache in front of an origin that counts its calls.
struct Instance {
    cache: ResponseCache,
    shared: SharedInvalidation,
    calls: Arc<AtomicUsize>,
}

impl Instance {
    fn start(url: &str, channel: &str, fallback: Duration) -> Self {
        let cache = ResponseCache::builder()
            .ttl(Duration::from_secs(3600))
            .build()
            .unwrap();
        let shared = SharedInvalidation::builder(url)
            .channel(channel)
            .fallback_ttl(fallback)
            .start(&cache)
            .unwrap();
        Instance {
            cache,
            shared,
            calls: Arc::default(),
        }
    }

    /// Sends `method path` through this instance's cache; the status.
    async fn send(&self, method: Method, path: &str) -> u16 {
        let calls = Arc::clone(&self.calls);
        let origin = service_fn(move |_request: Request<String>| {
            calls.fetch_add(1, Ordering::Relaxed);
            async {
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("cache-control", "max-age=3600")
                        .body(Full::new(Bytes::from_static(b"[]")))
                        .unwrap(),
                )
            }
        });
        let mut service = CacheLayer::new(self.cache.clone()).layer(origin);
        let request = Request::builder()
            .method(method)
            .uri(format!("http://shop{path}"))
            .body(String::new())
            .unwrap();
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        response.status().as_u16()
    }

    async fn entries(&self) -> u64 {
        self.cache.stats().await.entries
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_reaches_the_other_instance_within_100_ms_p99() {
    let Some(url) = db::redis_url("redis_invalidation_latency") else {
        return;
    };
    let channel = db::unique_name("ballast_cache");
    let a = Instance::start(&url, &channel, Duration::from_secs(5));
    let b = Instance::start(&url, &channel, Duration::from_secs(5));
    assert!(a.shared.wait_connected(Duration::from_secs(5)).await);
    assert!(b.shared.wait_connected(Duration::from_secs(5)).await);
    let mut latencies = Vec::new();
    for round in 0..200 {
        assert_eq!(b.send(Method::GET, "/items").await, 200);
        assert_eq!(b.entries().await, 1, "round {round}");
        let started = Instant::now();
        // Explicit on even rounds, after a write (RFC 9111 §4.4) on odd ones.
        if round % 2 == 0 {
            a.cache.invalidate_path("/items").await;
        } else {
            assert_eq!(a.send(Method::POST, "/items").await, 200);
        }
        while b.entries().await != 0 {
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "round {round}: never arrived"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() * 99 / 100];
    println!("invalidation A → B over Redis: p50 {p50:?}, p99 {p99:?}");
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");
    let (a_stats, b_stats) = (a.shared.stats(), b.shared.stats());
    assert_eq!(a_stats.published, 200, "{a_stats:?}");
    assert_eq!(b_stats.received, 200, "{b_stats:?}");
    a.shared.stop().await;
    b.shared.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_no_request_and_invalidation_resumes_when_it_is_back() {
    let Some(_) = db::redis_url("redis_down_and_back") else {
        return;
    };
    let mut redis = PrivateRedis::start().unwrap();
    let fallback = Duration::from_millis(300);
    let a = Instance::start(&redis.url(), "shop", fallback);
    let b = Instance::start(&redis.url(), "shop", fallback);
    assert!(a.shared.wait_connected(Duration::from_secs(5)).await);
    assert!(b.shared.wait_connected(Duration::from_secs(5)).await);
    assert_eq!(b.send(Method::GET, "/items").await, 200);

    redis.stop();
    // Noticed within a ping.
    let noticed = Instant::now();
    while b.shared.stats().connected || a.shared.stats().connected {
        assert!(
            noticed.elapsed() < Duration::from_secs(3),
            "the loss went unnoticed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Requests go on; a write's local invalidation too; its message is lost.
    assert_eq!(a.send(Method::POST, "/items").await, 200);
    assert_eq!(a.send(Method::GET, "/items").await, 200);
    // B still answers from its cache — what it held before, and what it stores now — but
    // nothing for longer than the fallback TTL, since A's invalidations no longer reach it.
    let before = b.calls.load(Ordering::Relaxed);
    for path in ["/items", "/orders", "/items", "/orders"] {
        assert_eq!(b.send(Method::GET, path).await, 200);
    }
    assert_eq!(
        b.calls.load(Ordering::Relaxed),
        before + 1,
        "/orders once, /items cached"
    );
    tokio::time::sleep(fallback + Duration::from_millis(100)).await;
    for path in ["/items", "/orders"] {
        assert_eq!(b.send(Method::GET, path).await, 200);
    }
    assert_eq!(
        b.calls.load(Ordering::Relaxed),
        before + 3,
        "both outlived the fallback TTL"
    );
    assert!(a.shared.stats().lost >= 1, "{:?}", a.shared.stats());

    redis.resume().unwrap();
    assert!(a.shared.wait_connected(Duration::from_secs(10)).await);
    assert!(b.shared.wait_connected(Duration::from_secs(10)).await);
    // A could not publish its write's invalidation: once back (before it counts as connected)
    // it asks everyone to clear; B clears on reconnecting anyway. Let that message land.
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Back: invalidations reach the other instance again, and entries live their full TTL.
    assert_eq!(b.send(Method::GET, "/items").await, 200);
    tokio::time::sleep(fallback + Duration::from_millis(100)).await;
    assert_eq!(b.entries().await, 1, "the full TTL again");
    a.cache.invalidate_path("/items").await;
    let started = Instant::now();
    while b.entries().await != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "invalidation did not resume"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let stats = b.shared.stats();
    assert!(stats.disconnects >= 1 && stats.cleared >= 2, "{stats:?}");
}
