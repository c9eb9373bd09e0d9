//! A PostgreSQL failover under load, through the example server (ACCEPTANCE: several hosts): a
//! private primary with a synchronous streaming replica, the server on a two-host
//! `target_session_attrs=read-write` URL, a steady mix of keyed writes and reads. The primary
//! stops, the replica is promoted, and later the old primary comes back as a standby. Every
//! answer is a success or an honest retryable 503 (never a 500, never a hang), writes succeed
//! again within 5 s of the promotion, and no acknowledged write is lost or stored twice.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballast_testkit::cluster::PrivateCluster;
use ballast_testkit::db;
use support::{get, keyed_post, start, wait_ready, Answer};

/// Every answer the load got: when, to what, with what.
#[derive(Default)]
struct Log {
    answers: Vec<(Duration, &'static str, u16, String)>,
    /// The keyed writes acknowledged (201), by key: the id they were given.
    acknowledged: HashMap<String, i64>,
}

/// A keyed write of an item named after its key.
async fn write(addr: SocketAddr, key: &str) -> Answer {
    keyed_post(addr, key, key).await
}

/// Blocking cluster work (`pg_ctl`), off the runtime's threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_under_load_loses_and_doubles_nothing() {
    if db::postgres_url("failover_under_load").is_none() {
        return;
    }
    // Synchronous replication: a commit is acknowledged once the replica has it, so "no
    // acknowledged write lost" is a guarantee the test can hold the code to.
    let primary = blocking(|| {
        let mut primary = PrivateCluster::init()?;
        primary.configure(&["synchronous_standby_names = '*'"])?;
        primary.run()?;
        Ok::<_, String>(primary)
    })
    .await
    .unwrap();
    // Once promoted, the replica has no standby of its own to wait for.
    let replica =
        PrivateCluster::replica_of(&primary, &["synchronous_standby_names = ''"]).unwrap();
    let (p, r) = (primary.port(), replica.port());
    let url = format!(
        "postgres://postgres@127.0.0.1:{p},127.0.0.1:{r}/postgres\
         ?target_session_attrs=read-write&connection_limit=8&pool_timeout=2&connect_timeout=1"
    );
    let server = start(&[("DATABASE_URL", &url)]).await;
    let addr = server.addr;
    wait_ready(addr, Duration::from_secs(10)).await;
    assert_eq!(write(addr, "warm-up").await.status, 201);

    let started = Instant::now();
    let log = Arc::new(Mutex::new(Log::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for writer in 0..6 {
        let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let key = format!("w{writer}-{n}");
                // A client repeats a keyed write while its answer says it may.
                loop {
                    let answer = tokio::time::timeout(Duration::from_secs(10), write(addr, &key))
                        .await
                        .expect("an answer within 10 s: no hang");
                    let retry = answer.body.contains(r#""retryable":true"#);
                    {
                        let mut log = log.lock().unwrap();
                        log.answers.push((
                            started.elapsed(),
                            "write",
                            answer.status,
                            answer.body.clone(),
                        ));
                        if answer.status == 201 {
                            let id = answer.json()["id"].as_i64().unwrap();
                            log.acknowledged.insert(key.clone(), id);
                        }
                    }
                    if answer.status == 201 {
                        break;
                    }
                    if !retry || stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    for _ in 0..2 {
        let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
        load.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let answer = tokio::time::timeout(Duration::from_secs(10), get(addr, "/items"))
                    .await
                    .expect("an answer within 10 s: no hang");
                log.lock().unwrap().answers.push((
                    started.elapsed(),
                    "read",
                    answer.status,
                    answer.body,
                ));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    // The primary stops; a second later the replica is promoted (a failover manager's delay).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopped_at = started.elapsed();
    let mut primary = blocking(move || {
        let mut primary = primary;
        primary.stop().unwrap();
        primary
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready_during = get(addr, "/readyz").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let replica = blocking(move || {
        replica.promote().unwrap();
        replica
    })
    .await;
    let promoted_at = started.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;

    // The old primary comes back, as a standby of the new one (as Patroni brings it back).
    let primary = {
        let new_primary = replica;
        let (primary, new_primary) = blocking(move || {
            primary.rejoin_as_standby_of(&new_primary).unwrap();
            (primary, new_primary)
        })
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in load {
            task.await.unwrap();
        }
        (primary, new_primary)
    };
    let (old_primary, new_primary) = primary;

    let log = std::mem::take(&mut *log.lock().unwrap());
    let mut unexpected = Vec::new();
    let mut refused = 0;
    let mut latencies = Vec::new();
    for (at, what, status, body) in &log.answers {
        latencies.push(*at);
        match status {
            200 | 201 => {}
            503 | 409 if body.contains(r#""retryable":true"#) => refused += 1,
            _ => unexpected.push((*at, *what, *status, body.clone())),
        }
    }
    let first_write_after = log
        .answers
        .iter()
        .filter(|(at, what, status, _)| *at > promoted_at && *what == "write" && *status == 201)
        .map(|(at, ..)| *at - promoted_at)
        .min();
    let total = log.answers.len();
    println!(
        "failover: primary stopped at {stopped_at:?}, replica promoted at {promoted_at:?}; \
         {total} answers, {refused} retryable refusals, {} writes acknowledged; first write \
         {first_write_after:?} after the promotion; readiness while no primary: {} {}",
        log.acknowledged.len(),
        ready_during.status,
        ready_during.body.trim()
    );
    assert!(
        unexpected.is_empty(),
        "only successes and retryable refusals: {unexpected:?}"
    );
    let first_write_after = first_write_after.expect("writes succeeded after the promotion");
    assert!(
        first_write_after <= Duration::from_secs(5),
        "{first_write_after:?}"
    );
    assert_eq!(ready_during.status, 503, "{}", ready_during.body);
    assert_eq!(
        ready_during.json()["code"],
        "DB_CONNECTION_ERROR",
        "{}",
        ready_during.body
    );
    assert_eq!(
        ready_during.json()["retryable"],
        true,
        "{}",
        ready_during.body
    );

    // Every acknowledged write is on the new primary, exactly once; nothing is there twice.
    let client = db::pg_connect(&new_primary.url()).await;
    let rows = client
        .query("SELECT name, id FROM items", &[])
        .await
        .unwrap();
    let mut stored: HashMap<String, Vec<i64>> = HashMap::new();
    for row in rows {
        stored.entry(row.get(0)).or_default().push(row.get(1));
    }
    let doubled: Vec<_> = stored.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(doubled.is_empty(), "stored twice: {doubled:?}");
    let lost: Vec<_> = log
        .acknowledged
        .iter()
        .filter(|(key, id)| stored.get(*key).is_none_or(|ids| ids != &vec![**id]))
        .collect();
    assert!(lost.is_empty(), "acknowledged but missing: {lost:?}");
    // The old primary is a standby now: nothing was written there.
    let old = db::pg_connect(&old_primary.url()).await;
    let in_recovery: bool = old
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery, "the old primary came back as a standby");
    drop(server);
}
