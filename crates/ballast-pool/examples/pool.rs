//! Runs 100 concurrent queries through one shared pool and prints its stats.
//!
//! ```text
//! cargo run -p ballast-pool --example pool                       # embedded SQLite in memory
//! cargo run -p ballast-pool --example pool -- "postgres://postgres@127.0.0.1:5432/test?connection_limit=5"
//! cargo run -p ballast-pool --example pool -- "mysql://root@127.0.0.1:3306/test"
//! cargo run -p ballast-pool --example pool -- "postgres://postgres@127.0.0.1:1/test?pool_timeout=2"
//! ```
//!
//! The last one shows an honest failure: the database is not there, so every request fails at
//! once with `DB_CONNECTION_ERROR` (retryable), and the stats show a handful of connect attempts
//! rather than one per request.

use std::process::ExitCode;

use ballast_core::Failure;
use ballast_pool::{Backend, Connect, PoolConfig, SharedPool};
use diesel_async::RunQueryDsl;

/// Requests sent at once.
const REQUESTS: usize = 100;

#[tokio::main]
async fn main() -> ExitCode {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "sqlite::memory:".to_owned());
    let config = match PoolConfig::from_url(&url) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    println!("{config:?}");
    match config.backend() {
        Backend::Postgres => run::<diesel_async::AsyncPgConnection>(config).await,
        Backend::Mysql => run::<diesel_async::AsyncMysqlConnection>(config).await,
        _ => {
            run::<
                diesel_async::sync_connection_wrapper::SyncConnectionWrapper<
                    diesel::SqliteConnection,
                >,
            >(config)
            .await
        }
    }
}

async fn run<C: Connect>(config: PoolConfig) -> ExitCode
where
    diesel::query_builder::SqlQuery: diesel_async::methods::ExecuteDsl<C>,
{
    let pool = match SharedPool::<C>::init(config) {
        Ok(pool) => pool,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    let tasks: Vec<_> = (0..REQUESTS)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut conn = pool.get().await?;
                diesel::sql_query("SELECT 1").execute(&mut *conn).await?;
                Ok::<_, Failure>(())
            })
        })
        .collect();
    let mut failures = Vec::new();
    for task in tasks {
        if let Err(failure) = task.await.expect("task") {
            failures.push(failure);
        }
    }
    println!(
        "{} of {REQUESTS} requests succeeded",
        REQUESTS - failures.len()
    );
    if let [failure, ..] = failures.as_slice() {
        println!(
            "first failure: {} (code {}, retryable {}, {:?})",
            failure.report(),
            failure.code(),
            failure.retryable(),
            failure.reach()
        );
    }
    println!(
        "stats: {}",
        serde_json::to_string_pretty(&pool.stats()).expect("stats serialise")
    );
    pool.close().await;
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
