//! Reads that scale out, against a private primary and its streaming replica: reads go to a
//! fresh replica; a replica stopped under read load costs no read (with the retries the retry
//! layer makes) and takes reads again once it is back; a replica lagging past
//! `max_replica_lag` takes none.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_pool::{PoolConfig, ReplicaSet, SharedPool};
use ballast_testkit::cluster::PrivateCluster;
use ballast_testkit::db;
use diesel::sql_types::Bool;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

type Pool = SharedPool<AsyncPgConnection>;

fn pool(url: &str) -> Pool {
    SharedPool::new(
        PoolConfig::from_url(&format!("{url}?connect_timeout=1&pool_timeout=2")).unwrap(),
    )
    .unwrap()
}

#[derive(diesel::QueryableByName)]
struct Recovery {
    #[diesel(sql_type = Bool)]
    standby: bool,
}

/// One read through the set: whether a standby served it.
async fn read(set: &ReplicaSet<AsyncPgConnection>) -> Result<bool, ballast_core::Failure> {
    let mut conn = set.get_read().await?;
    let recovery: Recovery = diesel::sql_query("SELECT pg_is_in_recovery() AS standby")
        .get_result(&mut *conn)
        .await?;
    Ok(recovery.standby)
}

/// A read as a client behind the retry layer sees it: a retryable failure (the replica's
/// connection cut under the statement) is repeated, up to the layer's default two retries, and
/// the set chooses again each time.
async fn read_with_retries(
    set: &ReplicaSet<AsyncPgConnection>,
) -> Result<bool, ballast_core::Failure> {
    let mut answer = read(set).await;
    for _ in 0..2 {
        match answer {
            Err(failure) if failure.retryable() => answer = read(set).await,
            _ => break,
        }
    }
    answer
}

async fn wait_fresh(
    set: &ReplicaSet<AsyncPgConnection>,
    fresh: bool,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    while set.stats().replicas[0].fresh != fresh {
        assert!(
            started.elapsed() < within,
            "replica never {}: {:?}",
            if fresh { "fresh" } else { "stale" },
            set.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_use_a_fresh_replica_and_a_stopped_one_costs_nothing() {
    if db::postgres_url("reads_use_a_fresh_replica").is_none() {
        return;
    }
    let primary = blocking(PrivateCluster::start).await.unwrap();
    let replica = PrivateCluster::replica_of(&primary, &[]).unwrap();
    let interval = Duration::from_millis(200);
    let set = ReplicaSet::builder(pool(&primary.url()))
        .replica(pool(&replica.url()))
        .lag_check_interval(interval)
        .build();
    wait_fresh(&set, true, Duration::from_secs(5)).await;

    // Reads without a token: the replica serves them.
    let mut on_replica = 0;
    for _ in 0..200 {
        on_replica += usize::from(read(&set).await.unwrap());
    }
    println!(
        "replicas: {on_replica} of 200 reads on the replica; {:?}",
        set.stats()
    );
    assert!(on_replica >= 180, "{on_replica} of 200");

    // A handler's `ReadConn` reads from the set the request carries.
    {
        use axum::{routing::get, Router};
        use tower::ServiceExt;
        async fn standby(
            mut db: ballast_pool::ReadConn<AsyncPgConnection>,
        ) -> Result<String, ballast_error::Error> {
            let recovery: Recovery = diesel::sql_query("SELECT pg_is_in_recovery() AS standby")
                .get_result(&mut *db)
                .await?;
            Ok(recovery.standby.to_string())
        }
        let app: Router = Router::new().route("/standby", get(standby)).layer(
            tower_http::add_extension::AddExtensionLayer::new(set.clone()),
        );
        let response = app
            .oneshot(
                http::Request::get("/standby")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let body = axum::body::to_bytes(response.into_body(), 64)
            .await
            .unwrap();
        assert_eq!(&body[..], b"true", "ReadConn took the replica's connection");
    }

    // The replica stops under read load, and comes back.
    let failed = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (set, failed, done) = (set.clone(), Arc::clone(&failed), Arc::clone(&done));
            let failures = Arc::clone(&failures);
            tokio::spawn(async move {
                let mut reads = 0u64;
                while !std::sync::atomic::AtomicBool::load(&done, Ordering::Relaxed) {
                    if let Err(failure) = read_with_retries(&set).await {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.lock().unwrap().push(failure.report());
                    }
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut replica = blocking(move || {
        let mut replica = replica;
        replica.stop().unwrap();
        replica
    })
    .await;
    wait_fresh(&set, false, interval * 10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    replica = blocking(move || {
        replica.run().unwrap();
        replica
    })
    .await;
    let back = wait_fresh(&set, true, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    done.store(true, Ordering::Relaxed);
    let mut reads = 0;
    for reader in readers {
        reads += reader.await.unwrap();
    }
    let failed = AtomicU64::load(&failed, Ordering::Relaxed);
    println!(
        "replicas: {reads} reads while the replica stopped and started, {failed} failed; fresh again {back:?} after it was up"
    );
    assert_eq!(failed, 0, "no read failed: {:?}", failures.lock().unwrap());
    assert!(back <= interval * 5, "{back:?}");
    assert!(read(&set).await.unwrap(), "reads are back on the replica");
    drop(replica);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_lagging_past_the_bound_takes_no_reads() {
    if db::postgres_url("a_replica_lagging_past_the_bound").is_none() {
        return;
    }
    let primary = blocking(PrivateCluster::start).await.unwrap();
    let replica =
        PrivateCluster::replica_of(&primary, &["recovery_min_apply_delay = '2s'"]).unwrap();
    let interval = Duration::from_millis(200);
    let primary_pool = pool(&primary.url());
    let set = ReplicaSet::builder(primary_pool.clone())
        .replica(pool(&replica.url()))
        .max_replica_lag(Duration::from_secs(1))
        .lag_check_interval(interval)
        .build();
    let admin = db::pg_connect(&primary.url()).await;
    admin
        .batch_execute("CREATE TABLE t (id serial)")
        .await
        .unwrap();
    // Writes keep the primary ahead; the replica applies them 2 s late.
    let writing = tokio::spawn(async move {
        for _ in 0..200 {
            admin
                .batch_execute("INSERT INTO t DEFAULT VALUES")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!set.stats().replicas[0].fresh, "{:?}", set.stats());
    let mut on_replica = 0;
    for _ in 0..50 {
        on_replica += usize::from(read(&set).await.unwrap());
    }
    println!(
        "lagging replica: {on_replica} of 50 reads on it; {:?}",
        set.stats().replicas[0].lag_seconds
    );
    assert_eq!(on_replica, 0);
    writing.await.unwrap();
    drop(replica);
}
