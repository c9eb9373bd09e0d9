//! The fault suite: the scenarios of [`docs/resilience.md`](../docs/resilience.md) that need a
//! whole stack under load, end to end against the real PostgreSQL with `ballast-testkit` faults,
//! sized for a 2-core machine. Each test prints the figures its scenario names
//! (`scenario N: ...`; run with `--nocapture` to see them).
//!
//! Here: 1, 2, 4, 5, 6, 7, 8 (simulated with the proxy, and for real on a private PostgreSQL
//! cluster this test starts and restarts) and 10. `docs/resilience.md` names the test that proves
//! each of the others.

use ballast_testkit::measure::resident_bytes;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::Router;
use ballast::error::ErrorResponseLayer;
use ballast::pool::{PoolConfig, SharedPool};
use ballast::retry::{RetryLayer, RetryLayerBuilder};
use ballast::{Cause, Error, Failure};
use ballast_testkit::cluster::PrivateCluster;
use ballast_testkit::db::{self, Backends, PgDatabase, PgRole};
use ballast_testkit::proxy::{FaultProxy, Mode};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;
use tower::{ServiceBuilder, ServiceExt};

type Pool = SharedPool<AsyncPgConnection>;

/// How long one request may use the database before the handler gives up (scenario 10).
const DB_WORK_DEADLINE: Duration = Duration::from_secs(1);

#[derive(Deserialize)]
struct Work {
    ms: Option<u64>,
}

/// `GET /work?ms=N`: one query holding its connection N ms.
/// Handlers bound their database work by [`DB_WORK_DEADLINE`] and classify a broken connection
/// with the pool's help.
fn app(pool: Pool, retry: RetryLayer) -> Router {
    Router::new()
        .route(
            "/work",
            get(
                |State(pool): State<Pool>, Query(work): Query<Work>| async move {
                    let seconds = work.ms.unwrap_or(0) as f64 / 1000.0;
                    let result = tokio::time::timeout(DB_WORK_DEADLINE, async {
                        let mut conn = pool.get().await?;
                        let sql = format!("SELECT pg_sleep({seconds})");
                        match diesel::sql_query(sql).execute(&mut *conn).await {
                            Ok(_) => Ok(()),
                            Err(error) => Err(conn.classify(error).await),
                        }
                    })
                    .await;
                    match result {
                        Ok(Ok(())) => Ok::<_, Error>("done"),
                        Ok(Err(failure)) => Err(failure.into()),
                        Err(_) => Err(Failure::new(Cause::TimedOut)
                            .with_detail("the database work took longer than its deadline")
                            .into()),
                    }
                },
            ),
        )
        .with_state(pool)
        .layer(
            ServiceBuilder::new()
                .layer(ErrorResponseLayer::new())
                .layer(retry),
        )
}

fn pool(url: &str, params: &str) -> Pool {
    let separator = if url.contains('?') { '&' } else { '?' };
    SharedPool::new(PoolConfig::from_url(&format!("{url}{separator}{params}")).unwrap()).unwrap()
}

/// One request; its status and whether a failure said `"retryable":true`.
async fn call(app: &Router, path: &str) -> (StatusCode, bool) {
    let request = Request::get(path).body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let retry_after = response.headers().contains_key("retry-after");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let retryable = String::from_utf8_lossy(&body).contains("\"retryable\":true") && retry_after;
    // A request through a real server waits on its socket at least once. In process, a 503 for
    // a known outage is ready at once: without this, a loop of them never yields and starves the
    // runtime — the pool's background probe included.
    tokio::task::yield_now().await;
    (status, retryable)
}

/// Statuses of many requests.
#[derive(Default, Debug)]
struct Tally {
    ok: usize,
    retryable_503: usize,
    other: Vec<StatusCode>,
}

impl Tally {
    fn add(&mut self, (status, retryable): (StatusCode, bool)) {
        match status {
            StatusCode::OK => self.ok += 1,
            StatusCode::SERVICE_UNAVAILABLE if retryable => self.retryable_503 += 1,
            other => self.other.push(other),
        }
    }
}

/// Runs `clients` concurrent loops of requests to `path` on `apps` (round robin) for `run`.
async fn load(apps: &[Router], path: &str, clients: usize, run: Duration) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let deadline = Instant::now() + run;
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let app = apps[client % apps.len()].clone();
            let tally = Arc::clone(&tally);
            let path = path.to_owned();
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let answer = call(&app, &path).await;
                    tally.lock().unwrap().add(answer);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(tally).unwrap().into_inner().unwrap()
}

/// Samples the backends of each application name until `stop`; the peak of each.
fn sample(
    url: String,
    names: Vec<String>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<usize>> {
    tokio::spawn(async move {
        let admin = db::pg_connect(&url).await;
        let mut peaks = vec![0; names.len()];
        while !AtomicBool::load(&stop, Ordering::SeqCst) {
            for (i, name) in names.iter().enumerate() {
                let row = admin
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                        &[name],
                    )
                    .await
                    .unwrap();
                peaks[i] = peaks[i].max(row.get::<_, i64>(0) as usize);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        peaks
    })
}

fn fast_retry() -> RetryLayerBuilder {
    RetryLayer::builder().delays(Duration::from_millis(50), Duration::from_millis(200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_1_ceiling_two_instances_never_exceed_their_pools() {
    let Some(url) = db::postgres_url("scenario_1_ceiling") else {
        return;
    };
    let role = PgRole::create(&url, Some(20)).await;
    let names = vec![db::unique_name("ballast_a"), db::unique_name("ballast_b")];
    let apps: Vec<Router> = names
        .iter()
        .map(|name| {
            let pool = pool(
                role.url(),
                &format!("application_name={name}&connection_limit=8&pool_timeout=2"),
            );
            app(pool, fast_retry().build().unwrap())
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample(url.clone(), names.clone(), Arc::clone(&stop));
    // 200 concurrent clients for 5 s (the scenario's 30 s, sized for a 2-core CI machine).
    let tally = load(&apps, "/work?ms=5", 200, Duration::from_secs(5)).await;
    stop.store(true, Ordering::SeqCst);
    let peaks = sampler.await.unwrap();
    println!("scenario 1 (ceiling): backends per instance peaked at {peaks:?} (limit 8 each, role 20); {tally:?}");
    assert!(peaks.iter().all(|peak| *peak <= 8), "{peaks:?}");
    assert!(
        tally.other.is_empty(),
        "only 200 or 503 retryable: {:?}",
        tally.other
    );
    assert!(tally.ok > 1000, "the instances served: {}", tally.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_2_incident_replay_only_200_or_503_and_no_reconnect_storm() {
    let Some(url) = db::postgres_url("scenario_2_incident_replay") else {
        return;
    };
    let role = PgRole::create(&url, Some(3)).await;
    let pool = pool(role.url(), "connection_limit=10&pool_timeout=2");
    let app = app(pool.clone(), fast_retry().build().unwrap());
    let tally = load(&[app], "/work?ms=20", 100, Duration::from_secs(4)).await;
    let stats = pool.stats();
    let attempts = stats.connects + stats.connect_failures;
    println!(
        "scenario 2 (incident replay): {tally:?}; connect attempts {attempts} over 4 s \
         (connects {}, refused {:?}, answered from the gate {})",
        stats.connects, stats.connect_failures_by_code, stats.connects_skipped
    );
    assert!(tally.other.is_empty(), "never a 500: {:?}", tally.other);
    assert!(tally.ok > 0);
    assert!(role.backends().await.len() <= 3);
    // Bounded: the gate lets a couple of attempts through per second, whatever the load.
    assert!(attempts <= 60, "{attempts} connect attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_4_cancellation_of_half_of_two_thousand_requests() {
    let Some(url) = db::postgres_url("scenario_4_cancellation") else {
        return;
    };
    let name = db::unique_name("ballast_cancel");
    let pool = pool(
        &url,
        // Admission by time off: this scenario is about cancellation, not overload (every
        // request waits its turn instead of being refused).
        &format!("application_name={name}&connection_limit=10&pool_timeout=5&queue_target=0"),
    );
    let app = app(pool.clone(), fast_retry().build().unwrap());
    let unaborted = Arc::new(Mutex::new(Tally::default()));
    let tasks: Vec<_> = (0..2000)
        .map(|i| {
            let app = app.clone();
            let unaborted = Arc::clone(&unaborted);
            tokio::spawn(async move {
                let request = call(&app, "/work?ms=10");
                if i % 2 == 0 {
                    // Aborted part-way: often while its query runs.
                    let _ =
                        tokio::time::timeout(Duration::from_millis(3 + (i % 7) as u64), request)
                            .await;
                } else {
                    let answer = request.await;
                    unaborted.lock().unwrap().add(answer);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let which = Backends::ApplicationName(name);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let backends = db::pg_backends(&url, &which).await;
    let in_transaction = backends
        .iter()
        .filter(|backend| backend.state.as_deref() == Some("idle in transaction"))
        .count();
    let started = Instant::now();
    for _ in 0..100 {
        assert_eq!(call(&app, "/work?ms=0").await.0, StatusCode::OK);
    }
    let next_100 = started.elapsed();
    let unaborted = unaborted.lock().unwrap();
    let stats = pool.stats();
    println!(
        "scenario 4 (cancellation): unaborted requests {unaborted:?}; {} backends (bound 10), \
         {in_transaction} idle in transaction; {} abandoned checkouts cancelled; the next 100 \
         requests took {next_100:?}",
        backends.len(),
        stats.cancelled
    );
    assert!(backends.len() <= 10);
    assert_eq!(in_transaction, 0);
    // 2,000 requests at once on ten connections: the last in line can outwait the handlers' 1 s
    // deadline; they get a 503 retryable, never anything else. How many that is depends on the
    // machine's load (alone: 15-20 %; beside the rest of the suite on 2 cores, 20-45 %: 1,000
    // tasks and the other scenarios share two cores with the database): a good part is served.
    assert!(unaborted.other.is_empty(), "{unaborted:?}");
    assert!(unaborted.ok >= 400, "{unaborted:?}");
    assert!(stats.open <= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_5_cancelled_transactions_never_poison_a_checkout() {
    let Some(url) = db::postgres_url("scenario_5_poisoned_transactions") else {
        return;
    };
    let database = PgDatabase::create(&url).await;
    db::pg_execute(
        database.url(),
        "CREATE TABLE items (id serial PRIMARY KEY, tag text UNIQUE)",
    )
    .await;
    let pool = pool(database.url(), "connection_limit=4&pool_timeout=5");
    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let tasks: Vec<_> = (0..400)
        .map(|i| {
            let pool = pool.clone();
            let acknowledged = Arc::clone(&acknowledged);
            tokio::spawn(async move {
                let tag = format!("t{i}");
                let insert = {
                    let tag = tag.clone();
                    async move {
                        let mut conn = pool.get().await?;
                        conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                            diesel::sql_query(format!("INSERT INTO items (tag) VALUES ('{tag}')"))
                                .execute(conn)
                                .await?;
                            diesel::sql_query("SELECT pg_sleep(0.002)")
                                .execute(conn)
                                .await?;
                            Ok(())
                        })
                        .await?;
                        Ok::<_, Failure>(())
                    }
                };
                // Cancelled at random points: before, inside or at the end of the transaction.
                let limit = Duration::from_micros(1000 + fastrand_like(i) % 60_000);
                if let Ok(Ok(())) = tokio::time::timeout(limit, insert).await {
                    acknowledged.lock().unwrap().insert(tag);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    // No later checkout sees an open transaction (SAVEPOINT only works inside one).
    for _ in 0..50 {
        let mut conn = pool.get().await.unwrap();
        assert!(
            conn.batch_execute("SAVEPOINT probe").await.is_err(),
            "an open transaction"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = db::pg_connect(database.url()).await;
    let rows: HashSet<String> = client
        .query("SELECT tag FROM items", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let acknowledged = acknowledged.lock().unwrap().clone();
    let unacknowledged = rows.difference(&acknowledged).count();
    println!(
        "scenario 5 (poisoned transactions): {} acknowledged, {} rows; {unacknowledged} rows whose \
         COMMIT reached the server after the client gave up; 50 later checkouts clean",
        acknowledged.len(),
        rows.len()
    );
    assert!(
        acknowledged.is_subset(&rows),
        "an acknowledged insert is missing"
    );
    assert!(rows.len() <= 400);
}

/// A cheap deterministic spread of numbers, without a random number crate.
fn fastrand_like(i: u64) -> u64 {
    i.wrapping_mul(6_364_136_223_846_793_005).rotate_left(17)
}

/// Whether this test should run here: a test that measures the process's memory runs alone, in
/// a child process of this test binary (the other tests of this binary run in parallel threads
/// and would be counted too). In the parent this runs the child, checks it passed, and says no.
fn in_own_process(test: &str) -> bool {
    const CHILD: &str = "BALLAST_TEST_CHILD";
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    print!("{}", String::from_utf8_lossy(&output.stdout));
    assert!(
        output.status.success(),
        "{test} failed in its own process:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_6_database_unreachable_answers_fast_and_flat() {
    let Some(url) = db::postgres_url("scenario_6_database_unreachable") else {
        return;
    };
    if !in_own_process("scenario_6_database_unreachable_answers_fast_and_flat") {
        return;
    }
    let proxy = FaultProxy::start(db::socket_addr(&url)).await.unwrap();
    proxy.set_mode(Mode::Refuse);
    proxy.wait_for_mode().await;
    let pool_timeout = Duration::from_secs(2);
    let pool = pool(&proxy.url(&url), "pool_timeout=2");
    let app = app(
        pool,
        fast_retry()
            .without_budget()
            .max_retries(1)
            .build()
            .unwrap(),
    );
    let before = resident_bytes();
    let slowest = Arc::new(Mutex::new(Duration::ZERO));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (app, slowest, tally) = (app.clone(), Arc::clone(&slowest), Arc::clone(&tally));
            tokio::spawn(async move {
                for _ in 0..20 {
                    let started = Instant::now();
                    let answer = call(&app, "/work").await;
                    let took = started.elapsed();
                    let mut slowest = slowest.lock().unwrap();
                    *slowest = (*slowest).max(took);
                    tally.lock().unwrap().add(answer);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let grown = resident_bytes().saturating_sub(before);
    let slowest = *slowest.lock().unwrap();
    let tally = tally.lock().unwrap();
    println!(
        "scenario 6 (unreachable): 1280 requests, {} 503 retryable, slowest {slowest:?} \
         (deadline {pool_timeout:?} + 250 ms); resident memory grew {} KiB",
        tally.retryable_503,
        grown / 1024
    );
    assert_eq!(tally.retryable_503, 1280, "{tally:?}");
    // One retry's backoff (at most 200 ms) on top of a fast failure.
    assert!(
        slowest <= pool_timeout + Duration::from_millis(250),
        "{slowest:?}"
    );
    assert!(grown < 32 * 1024 * 1024, "memory grew {grown} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_7_backends_killed_under_load() {
    let Some(url) = db::postgres_url("scenario_7_backends_killed") else {
        return;
    };
    let name = db::unique_name("ballast_killed");
    let pool = pool(
        &url,
        &format!("application_name={name}&connection_limit=8&pool_timeout=5"),
    );
    let app = app(pool, fast_retry().build().unwrap());
    let which = Backends::ApplicationName(name);
    let killer = {
        let url = url.clone();
        let which = which.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            db::pg_terminate(&url, &which).await
        })
    };
    let tally = load(&[app], "/work?ms=2", 32, Duration::from_millis(1500)).await;
    let killed = killer.await.unwrap();
    let total = tally.ok + tally.retryable_503 + tally.other.len();
    let success = tally.ok as f64 / total as f64;
    println!(
        "scenario 7 (backends killed): {killed} backends terminated under load; {} of {total} \
         requests ok ({:.2} %), {} failed",
        tally.ok,
        success * 100.0,
        total - tally.ok
    );
    assert!(killed >= 1);
    assert!(success >= 0.99, "{tally:?}");
    assert!(
        total - tally.ok <= 8,
        "no more than pool-size requests fail: {tally:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_8_restart_503_during_the_outage_then_success_within_a_second() {
    let Some(url) = db::postgres_url("scenario_8_restart") else {
        return;
    };
    // A real restart of the shared server would break every test running beside this one: the
    // proxy makes the same outage for this test alone — every connection dropped, new ones
    // refused — and then lets the database answer again.
    let proxy = FaultProxy::start(db::socket_addr(&url)).await.unwrap();
    let pool = pool(&proxy.url(&url), "connection_limit=8&pool_timeout=2");
    let app = app(pool, fast_retry().max_retries(1).build().unwrap());
    assert_eq!(call(&app, "/work").await.0, StatusCode::OK);
    proxy.set_mode(Mode::Refuse);
    proxy.wait_for_mode().await;
    proxy.reset_all();
    let outage = load(
        std::slice::from_ref(&app),
        "/work",
        16,
        Duration::from_millis(1500),
    )
    .await;
    proxy.set_mode(Mode::Pass);
    proxy.wait_for_mode().await;
    let back = Instant::now();
    let first_success = loop {
        if call(&app, "/work").await.0 == StatusCode::OK {
            break back.elapsed();
        }
        assert!(back.elapsed() < Duration::from_secs(5), "never recovered");
    };
    println!(
        "scenario 8 (restart, simulated by the proxy): during the outage {outage:?}; \
         first success {first_success:?} after the database accepted connections again"
    );
    assert!(
        outage.other.is_empty(),
        "only 503 retryable during the outage: {:?}",
        outage.other
    );
    assert!(outage.retryable_503 > 0);
    assert!(first_success <= Duration::from_secs(1), "{first_success:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_10_half_open_connections_fail_within_the_deadline_then_recover() {
    let Some(url) = db::postgres_url("scenario_10_half_open") else {
        return;
    };
    let proxy = FaultProxy::start(db::socket_addr(&url)).await.unwrap();
    let pool = pool(
        &proxy.url(&url),
        "connection_limit=4&pool_timeout=2&connect_timeout=1",
    );
    let app = app(pool, fast_retry().max_retries(0).build().unwrap());
    // Open the connections, then freeze them silently.
    load(
        std::slice::from_ref(&app),
        "/work?ms=1",
        4,
        Duration::from_millis(200),
    )
    .await;
    proxy.set_mode(Mode::Stall);
    let started = Instant::now();
    let stalled = load(
        std::slice::from_ref(&app),
        "/work",
        4,
        Duration::from_millis(100),
    )
    .await;
    let took = started.elapsed();
    println!("scenario 10 (half-open): while stalled {stalled:?} in {took:?}");
    assert_eq!(stalled.ok, 0);
    assert!(
        stalled.other.is_empty(),
        "503 retryable, not hanging: {:?}",
        stalled.other
    );
    assert!(
        took <= DB_WORK_DEADLINE + Duration::from_millis(500) + Duration::from_millis(100),
        "{took:?}"
    );

    proxy.set_mode(Mode::Pass);
    let back = Instant::now();
    loop {
        if call(&app, "/work").await.0 == StatusCode::OK {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "the pool never recovered"
        );
    }
    println!(
        "scenario 10 (half-open): recovered {:?} after the network came back",
        back.elapsed()
    );
    let after = load(&[app], "/work?ms=1", 4, Duration::from_millis(300)).await;
    assert!(after.other.is_empty() && after.ok > 0, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_8_real_restart_of_a_private_postgresql() {
    if db::postgres_url("scenario_8_real_restart").is_none() {
        return;
    }
    let cluster = match tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap()
    {
        Ok(cluster) => Arc::new(cluster),
        Err(reason) if !db::databases_required() => {
            eprintln!("skipping scenario_8_real_restart: {reason}");
            return;
        }
        Err(reason) => panic!("cannot start a private PostgreSQL: {reason}"),
    };
    let pool = pool(&cluster.url(), "connection_limit=8&pool_timeout=2");
    let app = app(pool, fast_retry().max_retries(1).build().unwrap());
    assert_eq!(call(&app, "/work").await.0, StatusCode::OK);

    let started = Instant::now();
    let answers = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (app, answers) = (app.clone(), Arc::clone(&answers));
            tokio::spawn(async move {
                while started.elapsed() < Duration::from_secs(5) {
                    let answer = call(&app, "/work?ms=2").await;
                    answers.lock().unwrap().push((started.elapsed(), answer));
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let restarting = started.elapsed();
    let restarted = {
        let cluster = Arc::clone(&cluster);
        tokio::task::spawn_blocking(move || cluster.restart())
            .await
            .unwrap()
    };
    restarted.expect("pg_ctl restart");
    // When the server accepts connections again, as a new client sees it.
    let ready = loop {
        if tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls)
            .await
            .is_ok()
        {
            break started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    for client in clients {
        client.await.unwrap();
    }
    let answers = answers.lock().unwrap();
    let mut tally = Tally::default();
    for (_, answer) in answers.iter() {
        tally.add(*answer);
    }
    let first_success = answers
        .iter()
        .filter(|(at, (status, _))| *at > ready && *status == StatusCode::OK)
        .map(|(at, _)| *at - ready)
        .min()
        .expect("requests succeeded after the restart");
    println!(
        "scenario 8 (real restart): restart began at {restarting:?}, the server accepted connections \
         again at {ready:?}; {tally:?}; first success {first_success:?} after that"
    );
    assert!(
        tally.other.is_empty(),
        "only 200 or 503 retryable: {:?}",
        tally.other
    );
    assert!(first_success <= Duration::from_secs(1), "{first_success:?}");
}
