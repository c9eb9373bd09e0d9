//! The fleet: four example-server instances, each with a pool of 10, behind one PgBouncer in
//! transaction mode (`default_pool_size = 10`) in front of PostgreSQL, as a role limited to 15
//! connections — where four pools of 10 straight to the server would need 40.
//!
//! 200 clients for 10 s: the role's server sessions never exceed PgBouncer's pool, every answer
//! is a success or a retryable 503, and every write is stored exactly once.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballast_testkit::db::{self, PgDatabase, PgRole};
use ballast_testkit::pgbouncer::{self, PgBouncer};

const INSTANCES: usize = 4;
const CLIENTS: usize = 200;
const RUN: Duration = Duration::from_secs(10);
const SERVER_POOL: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_behind_pgbouncer_share_ten_server_connections() {
    let Some(url) = db::postgres_url("fleet_four_instances") else {
        return;
    };
    if pgbouncer::require("fleet_four_instances").is_none() {
        return;
    }
    let database = PgDatabase::create(&url).await;
    let role = PgRole::create(&url, Some(15)).await;
    db::pg_execute(
        &url,
        &format!(
            "ALTER DATABASE {} OWNER TO {}",
            database.name(),
            role.name()
        ),
    )
    .await;
    let server = db::socket_addr(&url);
    let bouncer = PgBouncer::start(
        (&server.ip().to_string(), server.port()),
        &["postgres", role.name()],
        &[
            ("default_pool_size", &SERVER_POOL.to_string()),
            ("reserve_pool_size", "0"),
            ("query_wait_timeout", "10"),
        ],
    )
    .unwrap();
    let app_url = format!(
        "{}?connection_limit=10&pgbouncer=true&pool_timeout=5",
        bouncer.url(&db::with_user(database.url(), role.name(), None))
    );
    let env = [("DATABASE_URL", app_url.as_str()), ("CACHE_TTL", "1")];
    // One instance creates the tables first (concurrent CREATE TABLE IF NOT EXISTS can collide).
    let first = support::start(&env).await;
    let warm = support::post_until_settled(first.addr, "warm-up", "warm-up")
        .await
        .0;
    assert_eq!(warm.status, 201, "{}", warm.body);
    let mut servers = vec![first];
    for _ in 1..INSTANCES {
        servers.push(support::start(&env).await);
    }
    let addrs: Vec<_> = servers.iter().map(|server| server.addr).collect();
    for addr in &addrs {
        let ready = support::get(*addr, "/readyz").await;
        assert_eq!(
            ready.status, 200,
            "readiness through PgBouncer: {}",
            ready.body
        );
    }

    // The role's server sessions, sampled throughout.
    let admin = db::pg_connect(&url).await;
    let sampling = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (sampling, peak, role) = (sampling.clone(), peak.clone(), role.name().to_owned());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                let row = admin
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
                        &[&role],
                    )
                    .await
                    .unwrap();
                let sessions = usize::try_from(row.get::<_, i64>(0)).unwrap();
                peak.fetch_max(sessions, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let wrong = Arc::new(Mutex::new(Vec::<String>::new()));
    let acknowledged = Arc::new(Mutex::new(HashSet::<String>::new()));
    let counts = Arc::new(Mutex::new(HashMap::<u16, usize>::new()));
    let deadline = Instant::now() + RUN;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let addr = addrs[client % INSTANCES];
            let (wrong, acknowledged, counts) =
                (wrong.clone(), acknowledged.clone(), counts.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while Instant::now() < deadline {
                    n += 1;
                    let answer = if n % 2 == 0 {
                        let name = format!("c{client}-{n}");
                        let answer =
                            support::post_until_settled(addr, &format!("k{client}-{n}"), &name)
                                .await
                                .0;
                        if matches!(answer.status, 200 | 201) {
                            acknowledged.lock().unwrap().insert(name);
                        }
                        answer
                    } else {
                        support::get(addr, "/sleep?ms=5").await
                    };
                    *counts.lock().unwrap().entry(answer.status).or_default() += 1;
                    let fine = matches!(answer.status, 200 | 201)
                        || (answer.status == 503 && answer.body.contains(r#""retryable":true"#));
                    if !fine {
                        wrong
                            .lock()
                            .unwrap()
                            .push(format!("{}: {}", answer.status, answer.body));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.await.unwrap();

    let counts = counts.lock().unwrap().clone();
    println!("answers by status: {counts:?}");
    let peak = peak.load(Ordering::Relaxed);
    println!("peak server sessions of the role: {peak}");
    let wrong = wrong.lock().unwrap().clone();
    assert!(
        wrong.is_empty(),
        "{} wrong answers: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert!(peak <= SERVER_POOL, "{peak} server sessions");
    assert!(counts.get(&201).copied().unwrap_or(0) > 100, "{counts:?}");

    // Every acknowledged write is stored once; nothing is stored twice.
    let check = db::pg_connect(database.url()).await;
    let rows = check
        .query("SELECT name, count(*) FROM items GROUP BY name", &[])
        .await
        .unwrap();
    let stored: HashMap<String, i64> = rows
        .iter()
        .map(|row| (row.get::<_, String>(0), row.get::<_, i64>(1)))
        .collect();
    let doubled: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "written twice: {doubled:?}");
    let acknowledged = acknowledged.lock().unwrap().clone();
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|name| !stored.contains_key(*name))
        .collect();
    assert!(lost.is_empty(), "acknowledged but missing: {lost:?}");
    drop(servers);
}

/// `/stats`'s `shared_invalidation.connected`.
async fn shared_connected(addr: std::net::SocketAddr) -> bool {
    support::get(addr, "/stats").await.json()["shared_invalidation"]["connected"] == true
}

async fn wait_shared(addrs: &[std::net::SocketAddr], connected: bool, within: Duration) {
    let started = Instant::now();
    for addr in addrs {
        while shared_connected(*addr).await != connected {
            assert!(
                started.elapsed() < within,
                "{addr}: connected never became {connected}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// POSTs a new item on `writer`; how long until `reader`'s `GET /items` lists it.
async fn seen_after(
    writer: std::net::SocketAddr,
    reader: std::net::SocketAddr,
    name: &str,
) -> Duration {
    let created = support::send(
        writer,
        "POST",
        "/items",
        Some(("application/json", &format!(r#"{{"name":"{name}"}}"#))),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let started = Instant::now();
    loop {
        let list = support::get(reader, "/items").await;
        assert_eq!(list.status, 200, "{}", list.body);
        if list.body.contains(name) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{name} never showed on {reader}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_instance_reaches_the_others_cache_through_redis() {
    let Some(url) = db::postgres_url("fleet_shared_invalidation") else {
        return;
    };
    if db::redis_url("fleet_shared_invalidation").is_none() {
        return;
    }
    let mut redis = ballast_testkit::redis::PrivateRedis::start().unwrap();
    let database = PgDatabase::create(&url).await;
    let redis_url = redis.url();
    let env = [
        ("DATABASE_URL", database.url()),
        ("REDIS_URL", redis_url.as_str()),
        ("CACHE_TTL", "60"),
        ("CACHE_FALLBACK_TTL", "1"),
    ];
    let a = support::start(&env).await;
    assert_eq!(
        support::post_until_settled(a.addr, "warm-up", "warm-up")
            .await
            .0
            .status,
        201
    );
    let b = support::start(&env).await;
    let both = [a.addr, b.addr];
    wait_shared(&both, true, Duration::from_secs(10)).await;

    // Steady traffic on both throughout: not one request may fail, Redis or not.
    let running = Arc::new(AtomicBool::new(true));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let traffic: Vec<_> = both
        .iter()
        .map(|addr| {
            let (addr, running, failed) = (*addr, running.clone(), failed.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while running.load(Ordering::Relaxed) {
                    n += 1;
                    let answer = if n % 5 == 0 {
                        support::post_until_settled(
                            addr,
                            &format!("t-{addr}-{n}"),
                            &format!("t{n}"),
                        )
                        .await
                        .0
                    } else {
                        support::get(addr, "/items").await
                    };
                    if !matches!(answer.status, 200 | 201) {
                        failed
                            .lock()
                            .unwrap()
                            .push(format!("{}: {}", answer.status, answer.body));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();

    let mut latencies = Vec::new();
    for n in 0..20 {
        latencies.push(seen_after(a.addr, b.addr, &format!("first-{n}")).await);
    }
    latencies.sort();
    println!(
        "POST on A seen by GET on B after: max {:?}",
        latencies.last().unwrap()
    );
    assert!(
        *latencies.last().unwrap() < Duration::from_millis(200),
        "{latencies:?}"
    );

    // Redis goes away: requests go on, B's copies live at most CACHE_FALLBACK_TTL (1 s).
    redis.stop();
    wait_shared(&both, false, Duration::from_secs(5)).await;
    let without = seen_after(a.addr, b.addr, "during-outage").await;
    println!("with Redis down, seen after {without:?}");
    assert!(without < Duration::from_millis(1500), "{without:?}");

    // Back: invalidation works again.
    redis.resume().unwrap();
    wait_shared(&both, true, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut after = Vec::new();
    for n in 0..10 {
        after.push(seen_after(a.addr, b.addr, &format!("after-{n}")).await);
    }
    after.sort();
    println!(
        "after Redis came back, seen after: max {:?}",
        after.last().unwrap()
    );
    assert!(
        *after.last().unwrap() < Duration::from_millis(200),
        "{after:?}"
    );

    running.store(false, Ordering::Relaxed);
    for task in traffic {
        task.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} failed requests: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}
