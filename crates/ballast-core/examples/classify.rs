//! Connects to a database URL and prints how ballast classifies what happened.
//!
//! ```text
//! cargo run -p ballast-core --example classify -- postgres://postgres@127.0.0.1:5432/test
//! cargo run -p ballast-core --example classify -- postgres://postgres@127.0.0.1:5432/no_such_db
//! cargo run -p ballast-core --example classify -- postgres://postgres@127.0.0.1:1/test
//! cargo run -p ballast-core --example classify -- mysql://root@127.0.0.1:3306/test
//! ```
//!
//! With no argument it uses `DATABASE_URL`. A failure prints its code, HTTP status, cause,
//! whether it is worth retrying, whether the statement could have run, and the driver's code —
//! the answers every ballast layer acts on. The URL itself is never printed.

use std::process::ExitCode;
use std::time::Duration;

use ballast_core::{Cause, Failure, Reach};

/// How long the example waits for a whole connect (TCP and startup) before it gives up.
const CONNECT_DEADLINE: Duration = Duration::from_secs(5);

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let Some(url) = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("DATABASE_URL").ok())
    else {
        eprintln!("usage: classify <database URL>   (or set DATABASE_URL)");
        return ExitCode::from(2);
    };
    let outcome = tokio::time::timeout(CONNECT_DEADLINE, probe(&url))
        .await
        .unwrap_or_else(|_| Err(Failure::new(Cause::TimedOut).with_reach(Reach::NotSent)));
    match outcome {
        Ok(version) => {
            println!("connected: {version}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            println!("failure:     {failure}");
            println!(
                "code:        {} (HTTP {})",
                failure.code(),
                failure.status()
            );
            println!("cause:       {:?}", failure.cause());
            println!("retryable:   {}", failure.retryable());
            println!("reach:       {:?}", failure.reach());
            match failure.driver_code() {
                Some(code) => println!("driver code: {code}"),
                None => println!("driver code: none"),
            }
            ExitCode::FAILURE
        }
    }
}

/// Connects and asks the server for its version.
async fn probe(url: &str) -> Result<String, Failure> {
    if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        use mysql_async::prelude::Queryable;
        let mut conn = mysql_async::Conn::from_url(url).await?;
        let version: Option<String> = conn.query_first("SELECT VERSION()").await?;
        let _ = conn.disconnect().await;
        Ok(version.unwrap_or_default())
    } else {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        let row = client.query_one("SELECT version()", &[]).await?;
        Ok(row.get(0))
    }
}
