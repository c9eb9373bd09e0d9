//! The cost of one checkout and return with nothing else in the way: an in-memory SQLite pool,
//! one task, `leak_threshold` off (the default) and on, alternated in one run.
//!
//! ```text
//! cargo bench -p ballast-pool --bench hold
//! ```
//!
//! Goal: with `leak_threshold` off, watching holds costs at most 20 ns a checkout. Off, a
//! checkout pays one branch when it is handed out and one when it comes back (compare the
//! figure with the same bench on the commit before hold-time warnings); on, it notes the holder
//! (a lock and a map insert) and removes it again.
//!
//! Timings on a shared machine move by more than 20 ns from run to run; instruction counts do
//! not. `HOLD_BATCH=n HOLD_ONLY=off|on` runs one batch of `n` of one subject, for
//! `valgrind --tool=callgrind`: the difference between two batch sizes, divided by the
//! difference in checkouts, is the instructions per checkout. `HOLD_SIZE=1` prints the size of
//! `SharedPool::get`'s future (every byte of it is copied when it is created and moved).
//!
//! 2026-12-03: off 3,949 instructions per checkout and return, the commit before hold-time
//! warnings and `statement_timeout=deadline` 3,898 (+51, about 15 ns at this machine's 3.3
//! instructions a nanosecond); on 4,394. Timed: off 1,279 ns, on 1,443 ns.

use std::time::Instant;

use ballast_pool::{PoolConfig, SharedPool};
use diesel::SqliteConnection;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;

type Pool = SharedPool<SyncConnectionWrapper<SqliteConnection>>;

/// Checkouts per measured batch (`HOLD_BATCH` changes it).
const BATCH: u32 = 200_000;
/// Batches of each subject, alternated.
const ROUNDS: usize = 7;

fn pool(runtime: &tokio::runtime::Runtime, params: &str) -> Pool {
    let config = PoolConfig::from_url(&format!("sqlite::memory:?connection_limit=1{params}"))
        .expect("a valid URL");
    runtime.block_on(async {
        let pool = SharedPool::new(config).expect("a pool");
        // Open the connection before measuring.
        drop(pool.get().await.expect("a connection"));
        pool
    })
}

/// Nanoseconds per checkout and return, over one batch of `size`.
fn batch(runtime: &tokio::runtime::Runtime, pool: &Pool, size: u32) -> f64 {
    runtime.block_on(async {
        let started = Instant::now();
        for _ in 0..size {
            drop(pool.get().await.expect("a connection"));
        }
        started.elapsed().as_nanos() as f64 / f64::from(size)
    })
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    if std::env::var("HOLD_SIZE").is_ok() {
        let pool = pool(&runtime, "");
        println!("get future: {} bytes", size_of_val(&pool.get()));
        return;
    }
    if let Ok(size) = std::env::var("HOLD_BATCH") {
        let size = size.parse().expect("HOLD_BATCH is a number");
        let params = match std::env::var("HOLD_ONLY").as_deref() {
            Ok("on") => "&leak_threshold=60",
            _ => "",
        };
        batch(&runtime, &pool(&runtime, params), size);
        return;
    }
    let off = pool(&runtime, "");
    let on = pool(&runtime, "&leak_threshold=60");
    // Warm up both.
    batch(&runtime, &off, BATCH);
    batch(&runtime, &on, BATCH);
    let (mut offs, mut ons) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        offs.push(batch(&runtime, &off, BATCH));
        ons.push(batch(&runtime, &on, BATCH));
    }
    let (off_ns, on_ns) = (median(offs), median(ons));
    println!(
        "checkout and return, in-memory SQLite, one task, median of {ROUNDS} batches of {BATCH}:"
    );
    println!("  leak_threshold off: {off_ns:.0} ns");
    println!(
        "  leak_threshold on:  {on_ns:.0} ns (+{:.0} ns)",
        on_ns - off_ns
    );
}
