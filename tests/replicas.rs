//! The example server with `DATABASE_REPLICA_URLS`: `GET /items` is served by the replica while
//! it is fresh, and by the primary when it is stopped, with no failed read.

mod support;

use std::time::{Duration, Instant};

use ballast_testkit::cluster::PrivateCluster;
use ballast_testkit::db;
use support::{get, keyed_post, start, wait_ready};

/// Reads the server's `/stats` figure of reads routed to the replicas and to the primary.
async fn routed(addr: std::net::SocketAddr) -> (u64, u64) {
    let stats = get(addr, "/stats").await.json();
    let replicas = &stats["replicas"];
    (
        replicas["reads_to_replicas"].as_u64().unwrap(),
        replicas["reads_to_primary"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_items_is_served_by_a_fresh_replica() {
    if db::postgres_url("get_items_is_served_by_a_fresh_replica").is_none() {
        return;
    }
    let primary = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap()
        .unwrap();
    let mut replica = PrivateCluster::replica_of(&primary, &[]).unwrap();
    let server = start(&[
        ("DATABASE_URL", &primary.url()),
        (
            "DATABASE_REPLICA_URLS",
            &format!("{}?connect_timeout=1", replica.url()),
        ),
        // Every GET reaches the database: the cache keeps nothing for long.
        ("CACHE_TTL", "0.001"),
    ])
    .await;
    let addr = server.addr;
    wait_ready(addr, Duration::from_secs(10)).await;
    assert_eq!(keyed_post(addr, "k-1", "lamp").await.status, 201);
    // The replica is fresh once its first lag check has run (every second).
    let started = Instant::now();
    while routed(addr).await.0 == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no read reached the replica"
        );
        assert_eq!(get(addr, "/items").await.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = routed(addr).await;
    for _ in 0..100 {
        let items = get(addr, "/items").await;
        assert_eq!(items.status, 200, "{}", items.body);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let after = routed(addr).await;
    let (to_replica, to_primary) = (after.0 - before.0, after.1 - before.1);
    println!("example server: {to_replica} reads on the replica, {to_primary} on the primary");
    assert!(
        to_replica * 10 >= (to_replica + to_primary) * 9,
        "{to_replica} of {}",
        to_replica + to_primary
    );

    // The replica stops: reads go on, from the primary.
    replica = tokio::task::spawn_blocking(move || {
        replica.stop().unwrap();
        replica
    })
    .await
    .unwrap();
    for _ in 0..100 {
        let items = get(addr, "/items").await;
        assert_eq!(items.status, 200, "{}", items.body);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(replica);
}
