//! What read replicas cost and give, in process, on a private primary and its streaming replica,
//! alternated in one run so machine drift cancels out (64 tasks, pools of 10):
//!
//! - reads: `primary.get()` + `SELECT 1`, against `ReplicaSet::get_read()` + `SELECT 1` with
//!   the primary named as its own replica (the routing alone, same server), and with the real
//!   replica (the read throughput one replica gives on this machine);
//! - writes: an `INSERT` alone, against the `INSERT` and the read-your-writes token after it
//!   (`ReplicaSet::position_after_write`, shared by the writes that ask at once).
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo bench -p ballast-pool --bench replicas
//! ```
//!
//! `DATABASE_URL` only says the machine has PostgreSQL: the bench makes its own primary and
//! replica (`ballast_testkit::cluster`). Both share this machine's cores, so the replica's
//! figure is what routing reads to a second server on the same machine gives, not what a second
//! machine adds.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_pool::{PoolConfig, ReplicaSet, SharedPool};
use ballast_testkit::cluster::PrivateCluster;
use diesel_async::AsyncPgConnection;

const CONCURRENCY: usize = 64;
const RUN: Duration = Duration::from_secs(3);
const ROUNDS: usize = 3;

type Pool = SharedPool<AsyncPgConnection>;
type Set = ReplicaSet<AsyncPgConnection>;

fn pool(url: &str) -> Pool {
    SharedPool::new(PoolConfig::from_url(&format!("{url}?connection_limit=10")).unwrap()).unwrap()
}

#[derive(Clone)]
enum Subject {
    PrimaryRead(Pool),
    SetRead(Set),
    Write(Pool),
    WriteWithToken(Set),
}

impl Subject {
    async fn request(&self) {
        // Scoped here: `RunQueryDsl` would claim the atomics' `load`.
        use diesel_async::RunQueryDsl;
        let read = diesel::sql_query("SELECT 1");
        let write = diesel::sql_query("INSERT INTO bench_writes DEFAULT VALUES");
        match self {
            Subject::PrimaryRead(pool) => {
                let mut conn = pool.get().await.expect("checkout");
                read.execute(&mut *conn).await.expect("read");
            }
            Subject::SetRead(set) => {
                let mut conn = set.get_read().await.expect("checkout");
                read.execute(&mut *conn).await.expect("read");
            }
            Subject::Write(pool) => {
                let mut conn = pool.get().await.expect("checkout");
                write.execute(&mut *conn).await.expect("write");
            }
            Subject::WriteWithToken(set) => {
                {
                    let mut conn = set.primary().get().await.expect("checkout");
                    write.execute(&mut *conn).await.expect("write");
                }
                set.position_after_write().await.expect("token");
            }
        }
    }
}

/// Requests a second over `RUN` with `CONCURRENCY` tasks.
async fn measure(subject: &Subject) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (subject, done, stop) = (subject.clone(), Arc::clone(&done), Arc::clone(&stop));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    subject.request().await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let started = Instant::now();
    tokio::time::sleep(RUN).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn until<F: Future<Output = bool>>(mut check: impl FnMut() -> F) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < Duration::from_secs(10), "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

#[tokio::main]
async fn main() {
    if std::env::var("DATABASE_URL").is_err() {
        println!("skipping the replica bench: DATABASE_URL (PostgreSQL) is unset");
        return;
    }
    let primary = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap()
        .unwrap();
    let replica = PrivateCluster::replica_of(&primary, &[]).unwrap();
    let admin = ballast_testkit::db::pg_connect(&primary.url()).await;
    admin
        .batch_execute("CREATE TABLE bench_writes (id bigserial PRIMARY KEY)")
        .await
        .unwrap();
    let alone = pool(&primary.url());
    let itself = ReplicaSet::builder(pool(&primary.url()))
        .replica(pool(&primary.url()))
        .build();
    let replicated = ReplicaSet::builder(pool(&primary.url()))
        .replica(pool(&replica.url()))
        .build();
    for set in [&itself, &replicated] {
        until(|| async { set.stats().replicas[0].fresh }).await;
    }

    let groups: [(&str, Vec<(&str, Subject)>); 2] = [
        (
            "reads: a checkout and SELECT 1",
            vec![
                ("primary.get()", Subject::PrimaryRead(alone.clone())),
                (
                    "get_read(), the primary as its own replica (routing only)",
                    Subject::SetRead(itself.clone()),
                ),
                (
                    "get_read(), one streaming replica (same machine)",
                    Subject::SetRead(replicated.clone()),
                ),
            ],
        ),
        (
            "writes: a checkout and an INSERT",
            vec![
                ("the INSERT alone", Subject::Write(alone.clone())),
                (
                    "the INSERT, then its read-your-writes token",
                    Subject::WriteWithToken(replicated.clone()),
                ),
            ],
        ),
    ];
    println!(
        "Read replicas, in process: {CONCURRENCY} tasks, pools of 10, {}s runs, {ROUNDS} rounds alternated; median",
        RUN.as_secs()
    );
    for (title, subjects) in &groups {
        // Warm up: connections open, statements prepared.
        for (_, subject) in subjects {
            let warm = subject.clone();
            let _ = tokio::time::timeout(Duration::from_secs(1), async move {
                loop {
                    warm.request().await;
                }
            })
            .await;
        }
        let mut rates = vec![Vec::new(); subjects.len()];
        for _ in 0..ROUNDS {
            for (index, (_, subject)) in subjects.iter().enumerate() {
                rates[index].push(measure(subject).await);
            }
        }
        println!("\n{title}");
        let base = median(rates[0].clone());
        for ((name, _), rates) in subjects.iter().zip(rates) {
            let rate = median(rates);
            println!("  {name:<60} {rate:>8.0}/s  {:.2}x", rate / base);
        }
    }
    println!(
        "\nroutes of the replicated set: {:?}",
        replicated.stats().routes
    );
    drop(replica);
}
