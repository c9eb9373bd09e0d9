//! The evaluation of adaptive concurrency: does a concurrency limit below `connection_limit`
//! serve more, or faster, when the database itself is saturated?
//!
//! A latency-driven limit (Netflix's Gradient2, TCP Vegas) lowers the statements in flight when
//! they slow down, on the theory that a saturated database finishes more with fewer. The best
//! such a limit can do is to settle at the right fixed value, so this measures fixed values: a
//! pool in this process, 200 closed-loop tasks, pool sizes from 10 (the default) down to 2 (this
//! machine's cores), for two ways statements get slow: a query that keeps a core busy
//! (`generate_series`: the database saturated), and shape d's slow phase (`pg_sleep(0.2)`: a
//! slow statement that takes no resource). Served/s, the p99 of the whole checkout-and-query,
//! and the median statement time, side by side.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballast_pool::{PoolConfig, SharedPool};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::report::{quantile, short};

/// A query that keeps a core busy: about 15 ms of one on this project's machine.
const WORK: &str = "SELECT count(*) FROM generate_series(1, 400000)";
/// Shape d's slow statement: 200 ms that take nothing from the server.
const SLOW: &str = "SELECT pg_sleep(0.2)";
/// Closed-loop tasks.
const TASKS: usize = 200;

/// What one pool size did.
#[derive(Debug, Default)]
struct Outcome {
    served: usize,
    refused: usize,
    total: Vec<Duration>,
    statement: Vec<Duration>,
}

async fn run_with(
    url: &str,
    query: &'static str,
    limit: u32,
    run: Duration,
) -> Result<(Outcome, Duration), String> {
    let separator = if url.contains('?') { '&' } else { '?' };
    let config = PoolConfig::from_url(&format!("{url}{separator}connection_limit={limit}"))
        .map_err(|error| error.to_string())?;
    let pool = SharedPool::<AsyncPgConnection>::new(config).map_err(|error| error.to_string())?;
    // Open the connections first.
    for _ in 0..limit {
        let mut conn = pool.get().await.map_err(|error| error.to_string())?;
        diesel::sql_query("SELECT 1")
            .execute(&mut *conn)
            .await
            .map_err(|error| error.to_string())?;
    }
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let started = Instant::now();
    let until = started + run;
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (pool, outcome) = (pool.clone(), Arc::clone(&outcome));
            tokio::spawn(async move {
                while Instant::now() < until {
                    let asked = Instant::now();
                    match pool.get().await {
                        Ok(mut conn) => {
                            let running = Instant::now();
                            if diesel::sql_query(query).execute(&mut *conn).await.is_ok() {
                                let mut outcome = outcome.lock().unwrap();
                                outcome.served += 1;
                                outcome.total.push(asked.elapsed());
                                outcome.statement.push(running.elapsed());
                            }
                        }
                        Err(_) => {
                            outcome.lock().unwrap().refused += 1;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let took = started.elapsed();
    pool.close().await;
    let outcome = Arc::into_inner(outcome)
        .ok_or("a task still holds the outcome")?
        .into_inner()
        .map_err(|error| error.to_string())?;
    Ok((outcome, took))
}

/// Runs the evaluation and prints it.
pub(crate) async fn evaluate(url: &str, run: Duration) -> Result<(), String> {
    println!(
        "\nf. evaluation, adaptive concurrency: {TASKS} closed-loop tasks on a pool in this process, \
         {} s per pool size",
        run.as_secs_f64()
    );
    println!(
        "  {:<26} {:<10} {:>9} {:>8} {:>10} {:>10} {:>14}",
        "statements", "pool size", "served/s", "refused", "total p50", "total p99", "statement p50"
    );
    let runs = [
        ("a core busy (saturated)", WORK, [10, 6, 4, 2]),
        ("pg_sleep(0.2) (shape d)", SLOW, [10, 8, 5, 2]),
    ];
    for (label, query, limits) in runs {
        for limit in limits {
            let (mut outcome, took) = run_with(url, query, limit, run).await?;
            println!(
                "  {:<26} {:<10} {:>9.1} {:>8} {:>10} {:>10} {:>14}",
                label,
                limit,
                outcome.served as f64 / took.as_secs_f64(),
                outcome.refused,
                short(quantile(&mut outcome.total, 0.5)),
                short(quantile(&mut outcome.total, 0.99)),
                short(quantile(&mut outcome.statement, 0.5)),
            );
        }
    }
    Ok(())
}
