//! The edges real clients found (`shared/ACCEPTANCE.md` scenarios 24 to 29): the example server as
//! a process, against the real PostgreSQL and MariaDB, driven by a raw HTTP client that hangs up,
//! repeats what it is told it may repeat, and stalls. Each test prints its figures (run with
//! `--nocapture`).

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_testkit::db::{self, Backends, MysqlDatabase, PgDatabase, PgRole};
use support::{get, hang_up_after, send, start, Answer};

/// How long the abandoned statements of scenario 24 would run if nobody stopped them.
const ABANDONED_SLEEP_MS: u64 = 20_000;

/// Waits until `done` holds, checking every 10 ms for at most `limit`; how long it took.
async fn wait_until<F, Fut>(limit: Duration, mut done: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < limit {
        if done().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Five clients start `/sleep?ms=20000` (distinct URLs, so each runs its own statement) and hang
/// up after a second; returns when they have.
async fn five_abandoned_sleeps(addr: std::net::SocketAddr) {
    let clients: Vec<_> = (0..5)
        .map(|client| {
            tokio::spawn(hang_up_after(
                addr,
                format!("/sleep?ms={ABANDONED_SLEEP_MS}&client={client}"),
                Duration::from_secs(1),
            ))
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
}

fn created_id(answer: &Answer) -> i64 {
    assert_eq!(answer.status, 201, "{}", answer.body);
    answer.json()["id"].as_i64().unwrap()
}

async fn create(addr: std::net::SocketAddr, name: &str) -> i64 {
    let body = format!(r#"{{"name":"{name}"}}"#);
    created_id(&send(addr, "POST", "/items", Some(("application/json", &body))).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_24_abandoned_queries_are_cancelled_on_postgresql() {
    let Some(url) = db::postgres_url("scenario_24_abandoned_queries_postgresql") else {
        return;
    };
    // The role allows exactly the pool's five connections: one more would be refused (53300).
    let role = PgRole::create(&url, Some(5)).await;
    let database = PgDatabase::create(&url).await;
    db::pg_execute(
        database.url(),
        &format!("GRANT ALL ON SCHEMA public TO {}", role.name()),
    )
    .await;
    let app = db::unique_name("ballast_abandoned");
    let database_url = format!(
        "{}?connection_limit=5&application_name={app}",
        db::with_database(role.url(), database.name())
    );
    let server = start(&[("DATABASE_URL", &database_url)]).await;
    let addr = server.addr;
    let id = create(addr, "lamp").await;

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (url, role_name) = (url.clone(), role.name().to_owned());
        let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak));
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let backends = db::pg_backends(&url, &Backends::Role(role_name.clone())).await;
                peak.fetch_max(backends.len(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let which = Backends::ApplicationName(app);
    let sleeping = || async {
        db::pg_backends(&url, &which)
            .await
            .iter()
            .filter(|backend| backend.is_running("pg_sleep"))
            .count()
    };

    let clients = tokio::spawn(five_abandoned_sleeps(addr));
    let all_running = wait_until(Duration::from_secs(1), || async { sleeping().await == 5 }).await;
    clients.await.unwrap();
    let hung_up = Instant::now();
    assert!(all_running.is_some(), "the five statements ran at once");

    let next = get(addr, &format!("/items/{id}")).await;
    let next_took = hung_up.elapsed();
    assert_eq!(next.status, 200, "{}", next.body);
    let stopped = wait_until(Duration::from_secs(5), || async { sleeping().await == 0 }).await;
    let stopped = stopped.map(|_| hung_up.elapsed());
    stop.store(true, Ordering::SeqCst);
    sampler.await.unwrap();
    let stats = get(addr, "/stats").await.json();
    let peak = peak.load(Ordering::SeqCst);
    println!(
        "scenario 24 (abandoned queries, PostgreSQL): the next request answered {next_took:?} after \
         the clients hung up; the abandoned statements stopped on the server {stopped:?} after; \
         role sessions peaked at {peak} (limit 5); pool cancelled {}, closed_broken {}",
        stats["pool"]["cancelled"], stats["pool"]["closed_broken"]
    );
    assert!(
        next_took <= Duration::from_millis(100),
        "the next request waited behind an abandoned statement: {next_took:?}"
    );
    assert!(
        stopped.is_some_and(|stopped| stopped <= Duration::from_secs(1)),
        "the statements did not stop on the server within 1 s: {stopped:?}"
    );
    assert!(peak <= 5, "{peak} sessions under a pool of 5");
    assert!(stats["pool"]["cancelled"].as_u64().unwrap() >= 5, "{stats}");
    // The connections were made idle and kept: the pool still serves from them.
    for _ in 0..20 {
        assert_eq!(get(addr, &format!("/items/{id}")).await.status, 200);
    }
    assert!(db::pg_backends(&url, &which).await.len() <= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_24_abandoned_queries_are_cancelled_on_mariadb() {
    let Some(url) = db::mysql_url("scenario_24_abandoned_queries_mariadb") else {
        return;
    };
    let database = MysqlDatabase::create(&url).await;
    let database_url = format!("{}?connection_limit=5", database.url());
    let server = start(&[("DATABASE_URL", &database_url)]).await;
    let addr = server.addr;
    let id = create(addr, "lamp").await;
    let sleeping = || async {
        db::mysql_statements(&url, database.name())
            .await
            .iter()
            .filter(|statement| statement.contains("SLEEP"))
            .count()
    };

    let clients = tokio::spawn(five_abandoned_sleeps(addr));
    let all_running = wait_until(Duration::from_secs(1), || async { sleeping().await == 5 }).await;
    clients.await.unwrap();
    let hung_up = Instant::now();
    assert!(all_running.is_some(), "the five statements ran at once");

    let next = get(addr, &format!("/items/{id}")).await;
    let next_took = hung_up.elapsed();
    assert_eq!(next.status, 200, "{}", next.body);
    let stopped = wait_until(Duration::from_secs(5), || async { sleeping().await == 0 }).await;
    let stopped = stopped.map(|_| hung_up.elapsed());
    let stats = get(addr, "/stats").await.json();
    println!(
        "scenario 24 (abandoned queries, MariaDB): the next request answered {next_took:?} after \
         the clients hung up; the abandoned statements stopped on the server {stopped:?} after; \
         pool cancelled {}, closed_broken {}",
        stats["pool"]["cancelled"], stats["pool"]["closed_broken"]
    );
    assert!(
        next_took <= Duration::from_millis(100),
        "the next request waited behind an abandoned statement: {next_took:?}"
    );
    assert!(
        stopped.is_some_and(|stopped| stopped <= Duration::from_secs(1)),
        "the statements did not stop on the server within 1 s: {stopped:?}"
    );
    assert!(stats["pool"]["cancelled"].as_u64().unwrap() >= 5, "{stats}");
    for _ in 0..20 {
        assert_eq!(get(addr, &format!("/items/{id}")).await.status, 200);
    }
}
