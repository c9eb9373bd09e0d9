//! Resident memory after 1,000,000 distinct keys, and LRU against TinyLFU on a Zipf trace.
//!
//! ```text
//! cargo bench -p ballast-cache --bench memory
//! ```
//!
//! 1. A cache of 100,000 entries / 64 MiB takes 1,000,000 distinct 1 KiB responses through the
//!    layer; the process's resident memory grows by at most `max_bytes × 1.25 + 16 MiB` (goal).
//! 2. 1,000,000 requests over 100,000 keys drawn from a Zipf distribution (s = 1.0) against a
//!    cache of 1,000 entries: the hit ratio of each eviction policy.

use ballast_testkit::measure::resident_bytes;
use std::convert::Infallible;

use ballast_cache::{CacheLayer, Eviction, ResponseCache};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{service_fn, Layer, ServiceExt};

const KEYS: usize = 1_000_000;
const MAX_ENTRIES: u64 = 100_000;
const MAX_BYTES: u64 = 64 * 1024 * 1024;
const ZIPF_KEYS: usize = 100_000;
const ZIPF_REQUESTS: usize = 1_000_000;
const ZIPF_CACHE: u64 = 1_000;

fn request(key: usize) -> Request<String> {
    Request::get(format!("http://example.com/items/{key}"))
        .body(String::new())
        .unwrap()
}

async fn memory() {
    let body = Bytes::from(vec![b'x'; 1024]);
    let cache = ResponseCache::builder()
        .store_unmarked(true)
        .max_entries(MAX_ENTRIES)
        .max_bytes(MAX_BYTES)
        .build()
        .unwrap();
    let service =
        CacheLayer::new(cache.clone()).layer(service_fn(move |_request: Request<String>| {
            // A fresh copy per response, as a handler serialising its answer would make.
            let body = Bytes::copy_from_slice(&body);
            async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
        }));
    let before = resident_bytes();
    for key in 0..KEYS {
        service.clone().oneshot(request(key)).await.unwrap();
    }
    let stats = cache.stats().await;
    let grown = resident_bytes().saturating_sub(before);
    let goal = MAX_BYTES * 5 / 4 + 16 * 1024 * 1024;
    println!(
        "memory: {KEYS} distinct keys of 1 KiB, cache {MAX_ENTRIES} entries / {} MiB: \
         {} entries, {:.1} MiB counted; resident memory grew {:.1} MiB (goal <= {:.1} MiB): {}",
        MAX_BYTES >> 20,
        stats.entries,
        stats.bytes as f64 / 1048576.0,
        grown as f64 / 1048576.0,
        goal as f64 / 1048576.0,
        if grown <= goal { "met" } else { "MISSED" }
    );
}

/// Keys drawn from a Zipf distribution over `n` keys with exponent `s`.
fn zipf_trace(n: usize, s: f64, count: usize, seed: u64) -> Vec<usize> {
    let mut cdf = Vec::with_capacity(n);
    let mut total = 0.0;
    for rank in 1..=n {
        total += 1.0 / (rank as f64).powf(s);
        cdf.push(total);
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..count)
        .map(|_| {
            let target = rng.f64() * total;
            cdf.partition_point(|&value| value < target)
        })
        .collect()
}

async fn hit_ratio(eviction: Eviction, trace: &[usize]) -> f64 {
    let cache = ResponseCache::builder()
        .store_unmarked(true)
        .max_entries(ZIPF_CACHE)
        .max_bytes(ZIPF_CACHE * 4096)
        .max_entry_bytes(4096)
        .eviction(eviction)
        .build()
        .unwrap();
    let service =
        CacheLayer::new(cache.clone()).layer(service_fn(|_request: Request<String>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
        }));
    for &key in trace {
        service.clone().oneshot(request(key)).await.unwrap();
    }
    cache.stats().await.hit_ratio
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        memory().await;
        let trace = zipf_trace(ZIPF_KEYS, 1.0, ZIPF_REQUESTS, 7);
        let lru = hit_ratio(Eviction::Lru, &trace).await;
        let tiny_lfu = hit_ratio(Eviction::TinyLfu, &trace).await;
        println!(
            "zipf (s = 1.0, {ZIPF_KEYS} keys, {ZIPF_REQUESTS} requests, {ZIPF_CACHE} entries): \
             hit ratio LRU {lru:.3}, TinyLFU {tiny_lfu:.3}"
        );
    });
}
