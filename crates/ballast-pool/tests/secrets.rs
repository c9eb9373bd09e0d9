//! A canary password in the URL never appears in any `Display`, `Debug`, error or log line.

use ballast_core::Failure;
use ballast_pool::{PoolConfig, PoolProvider, SharedPool};
use ballast_testkit::fake::FakeServer;
use ballast_testkit::logs::Captured;
use diesel_async::AsyncPgConnection;

const CANARY: &str = "canary-Pa55w0rd-7431";

/// Collects everything the subscriber writes.
/// A component that shares the process's pool rather than building one.
async fn backup_job(pool: &impl PoolProvider) -> Result<(), Failure> {
    let _conn = pool.get().await?;
    Ok(())
}

#[tokio::test]
async fn the_password_never_shows() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut texts = Vec::new();
    // A server that refuses the password, one that is not there, one that hangs.
    let refusing = FakeServer::postgres("28P01", "password authentication failed")
        .await
        .unwrap();
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    for host in [refusing.addr(), closed_addr] {
        let url = format!("postgres://app:{CANARY}@{host}/shop?connect_timeout=1&sslmode=disable");
        let config = PoolConfig::from_url(&url).unwrap();
        texts.push(format!("{config:?}"));
        let pool = SharedPool::<AsyncPgConnection>::new(config).unwrap();
        texts.push(format!("{pool:?}"));
        let failure = backup_job(&pool).await.unwrap_err();
        texts.extend([
            failure.to_string(),
            format!("{failure:?}"),
            failure.report(),
        ]);
        texts.push(serde_json::to_string(&pool.stats()).unwrap());
    }
    let error = PoolConfig::from_url(&format!("postgres://app:{CANARY}@db/shop?pool_timeout=x"))
        .unwrap_err();
    texts.extend([error.to_string(), format!("{error:?}")]);

    let logs = captured.take();
    assert!(
        logs.contains("database connect failed"),
        "the failures were logged: {logs}"
    );
    texts.push(logs);
    for text in texts {
        assert!(!text.contains(CANARY), "password leaked: {text}");
    }
}
