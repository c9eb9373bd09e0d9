//! Checkout plus one trivial query, from 64 concurrent tasks on a pool of 10: ballast-pool
//! against stock bb8 + diesel-async with their defaults, alternated in one run so machine drift
//! cancels out.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo bench -p ballast-pool --bench checkout
//! ```
//!
//! Stock bb8 tests every connection on checkout (`test_on_check_out`) and diesel-async's manager
//! does it with `SELECT 1` (`RecyclingMethod::Verified`): two round trips per request. ballast
//! tests only connections idle longer than `check_idle_after`. Goal: at least 1.15x the stock
//! throughput.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_pool::{PoolConfig, SharedPool};
use diesel_async::pooled_connection::bb8::Pool as StockPool;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::AsyncPgConnection;

/// Concurrent tasks issuing requests.
const CONCURRENCY: usize = 64;
/// Pool size of both pools.
const POOL_SIZE: u32 = 10;
/// How long each measured run lasts.
const RUN: Duration = Duration::from_secs(3);
/// Runs of each pool, alternated.
const ROUNDS: usize = 3;

#[derive(Clone)]
enum Subject {
    Ballast(SharedPool<AsyncPgConnection>),
    Stock(StockPool<AsyncPgConnection>),
}

impl Subject {
    async fn request(&self) {
        // Scoped here: `RunQueryDsl` would claim the atomics' `load`.
        use diesel_async::RunQueryDsl;
        let query = diesel::sql_query("SELECT 1");
        match self {
            Subject::Ballast(pool) => {
                let mut conn = pool.get().await.expect("ballast checkout");
                query.execute(&mut *conn).await.expect("query");
            }
            Subject::Stock(pool) => {
                let mut conn = pool.get().await.expect("stock checkout");
                query.execute(&mut *conn).await.expect("query");
            }
        }
    }
}

/// Requests per second over `duration` with `CONCURRENCY` tasks.
async fn measure(subject: &Subject, duration: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let subject = subject.clone();
            let done = Arc::clone(&done);
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    subject.request().await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let count = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    for task in tasks {
        task.await.expect("task");
    }
    count as f64 / elapsed.as_secs_f64()
}

fn main() {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        println!("skipping the checkout bench: DATABASE_URL is unset");
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let config = PoolConfig::from_url(&url)
            .expect("DATABASE_URL")
            .with_connection_limit(POOL_SIZE);
        let ballast = Subject::Ballast(SharedPool::new(config).expect("ballast pool"));
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url.as_str());
        let stock = Subject::Stock(
            StockPool::builder()
                .max_size(POOL_SIZE)
                .build(manager)
                .await
                .expect("stock pool"),
        );
        // Warm both pools up to their full size.
        measure(&ballast, Duration::from_millis(500)).await;
        measure(&stock, Duration::from_millis(500)).await;

        println!("checkout + SELECT 1, {CONCURRENCY} tasks, pool of {POOL_SIZE}, {ROUNDS} x {RUN:?} each");
        let (mut ballast_total, mut stock_total) = (0.0, 0.0);
        for round in 1..=ROUNDS {
            let b = measure(&ballast, RUN).await;
            let s = measure(&stock, RUN).await;
            println!("round {round}: ballast-pool {b:>8.0} req/s   stock bb8+diesel-async {s:>8.0} req/s   ratio {:.2}", b / s);
            ballast_total += b;
            stock_total += s;
        }
        let (b, s) = (ballast_total / ROUNDS as f64, stock_total / ROUNDS as f64);
        println!("mean:    ballast-pool {b:>8.0} req/s   stock bb8+diesel-async {s:>8.0} req/s   ratio {:.2} (goal >= 1.15)", b / s);
    });
}
