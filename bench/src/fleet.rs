//! The fleet bench: four example-server instances sharing one server connection budget, either
//! through PgBouncer in transaction mode (`pgbouncer=true`, pools of 10 each, PgBouncer's
//! `default_pool_size` = the budget) or straight to PostgreSQL (pools of budget / 4 each),
//! loaded at once by four `wrk` processes (one per instance, 16 connections each), alternated
//! round by round in one run. Then the cost of `pgbouncer=true` itself: one instance straight to
//! PostgreSQL, through PgBouncer in session mode (the hop alone: named statements work there),
//! and through PgBouncer in transaction mode with `pgbouncer=true`, the same pool.
//!
//! ```text
//! apt-get install wrk pgbouncer
//! cargo build --release --example server
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --release -p ballast-bench --bin fleet-bench
//! ```
//!
//! `BENCH_SECONDS` (8), `BENCH_ROUNDS` (2), `BENCH_BUDGET` (12 server connections) and
//! `BENCH_SLEEP_MS` (2: how long each request holds its server connection, `GET /sleep`)
//! change the run. Each figure is the median of the rounds: requests a second summed over the
//! instances, and the worst instance's p99 latency.

use std::process::ExitCode;
use std::time::Duration;

use ballast_testkit::db::{self, PgDatabase};
use ballast_testkit::pgbouncer::PgBouncer;
use tokio::process::Child;

use common::{database_url, exit, setting, start_example, wrk};

mod common;

const INSTANCES: usize = 4;

#[tokio::main]
async fn main() -> ExitCode {
    exit(run().await)
}

/// Loads every URL at once; the summed rate, the worst p99 and the errors.
async fn load(
    urls: &[String],
    connections: u32,
    seconds: u64,
) -> Result<(f64, Duration, u64), String> {
    let runs: Vec<_> = urls
        .iter()
        .map(|url| {
            let url = url.clone();
            tokio::spawn(async move { wrk(&url, connections, seconds).await })
        })
        .collect();
    let (mut rate, mut p99, mut errors) = (0.0, Duration::ZERO, 0);
    for run in runs {
        let run = run.await.map_err(|error| error.to_string())??;
        rate += run.rate;
        p99 = p99.max(run.p99);
        errors += run.errors;
    }
    Ok((rate, p99, errors))
}

struct Subject {
    name: String,
    urls: Vec<String>,
    connections: u32,
    _servers: Vec<Child>,
    rates: Vec<f64>,
    p99s: Vec<Duration>,
    errors: u64,
}

impl Subject {
    async fn start(
        name: String,
        database_url: &str,
        instances: usize,
        connections: u32,
        path: &str,
    ) -> Result<Self, String> {
        let mut servers = Vec::new();
        let mut urls = Vec::new();
        for _ in 0..instances {
            let (child, base) = start_example(&[("DATABASE_URL", database_url)]).await?;
            servers.push(child);
            urls.push(format!("{base}{path}"));
        }
        Ok(Subject {
            name,
            urls,
            connections,
            _servers: servers,
            rates: Vec::new(),
            p99s: Vec::new(),
            errors: 0,
        })
    }

    fn median(&self) -> (f64, Duration) {
        let mut rates = self.rates.clone();
        rates.sort_by(f64::total_cmp);
        let mut p99s = self.p99s.clone();
        p99s.sort();
        (rates[rates.len() / 2], p99s[p99s.len() / 2])
    }
}

async fn measure(subjects: &mut [Subject], seconds: u64, rounds: u64) -> Result<(), String> {
    for subject in subjects.iter() {
        // Warm up: connections open, statements prepared, the schema created.
        load(&subject.urls, subject.connections, 2).await?;
    }
    for _ in 0..rounds {
        for subject in subjects.iter_mut() {
            let (rate, p99, errors) = load(&subject.urls, subject.connections, seconds).await?;
            subject.rates.push(rate);
            subject.p99s.push(p99);
            subject.errors += errors;
        }
    }
    Ok(())
}

fn report(title: &str, subjects: &[Subject]) {
    println!("\n{title}");
    let (base_rate, _) = subjects[0].median();
    for subject in subjects {
        let (rate, p99) = subject.median();
        println!(
            "  {:<58} {:>8.0} req/s  p99 {:>7.2} ms  {:.2}x  {} errors",
            subject.name,
            rate,
            p99.as_secs_f64() * 1000.0,
            rate / base_rate,
            subject.errors
        );
    }
}

async fn run() -> Result<(), String> {
    let Some(url) = database_url("fleet bench") else {
        return Ok(());
    };
    let (seconds, rounds) = (setting("BENCH_SECONDS", 8), setting("BENCH_ROUNDS", 2));
    let budget = setting("BENCH_BUDGET", 12);
    let sleep_ms = setting("BENCH_SLEEP_MS", 2);
    let path = format!("/sleep?ms={sleep_ms}");
    let database = PgDatabase::create(&url).await;
    let server = db::socket_addr(&url);
    let bouncer = PgBouncer::start(
        (&server.ip().to_string(), server.port()),
        &["postgres"],
        &[
            ("default_pool_size", &budget.to_string()),
            ("max_client_conn", "2000"),
        ],
    )?;
    let through = bouncer.url(database.url());
    let per_instance = (budget / INSTANCES as u64).max(1);

    let mut fleet = vec![
        Subject::start(
            format!("{INSTANCES} instances, pools of {per_instance}, straight to PostgreSQL"),
            &format!("{}?connection_limit={per_instance}", database.url()),
            INSTANCES,
            16,
            &path,
        )
        .await?,
        Subject::start(
            format!("{INSTANCES} instances, pools of 10, PgBouncer (default_pool_size {budget})"),
            &format!("{through}?connection_limit=10&pgbouncer=true"),
            INSTANCES,
            16,
            &path,
        )
        .await?,
    ];
    measure(&mut fleet, seconds, rounds).await?;
    report(
        &format!(
            "Fleet: {INSTANCES} example servers, {budget} server connections in all, GET {path}, \
             wrk -t1 -c16 -d{seconds}s on each at once, {rounds} rounds alternated; median"
        ),
        &fleet,
    );
    drop(fleet);

    // The hop alone: PgBouncer in session mode keeps each client on one server, so named
    // statements work there without `pgbouncer=true`.
    let session = PgBouncer::start(
        (&server.ip().to_string(), server.port()),
        &["postgres"],
        &[("pool_mode", "session"), ("default_pool_size", "10")],
    )?;
    let mut one = vec![
        Subject::start(
            "1 instance, pool of 10, straight to PostgreSQL".to_owned(),
            &format!("{}?connection_limit=10", database.url()),
            1,
            64,
            "/sleep?ms=0",
        )
        .await?,
        Subject::start(
            "1 instance, pool of 10, PgBouncer in session mode".to_owned(),
            &format!("{}?connection_limit=10", session.url(database.url())),
            1,
            64,
            "/sleep?ms=0",
        )
        .await?,
        Subject::start(
            "1 instance, pool of 10, PgBouncer (transaction) with pgbouncer=true".to_owned(),
            &format!("{through}?connection_limit=10&pgbouncer=true"),
            1,
            64,
            "/sleep?ms=0",
        )
        .await?,
    ];
    measure(&mut one, seconds, rounds).await?;
    report(
        &format!(
            "The cost of pgbouncer=true: GET /sleep?ms=0 (a checkout and one cached statement), \
             wrk -t1 -c64 -d{seconds}s, {rounds} rounds alternated; median"
        ),
        &one,
    );
    Ok(())
}
