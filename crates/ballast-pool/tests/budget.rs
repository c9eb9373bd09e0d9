//! The server's connection budget, read on the pool's first connection: a login whose limit is
//! smaller than the pool's `connection_limit` gets one warning naming the numbers, and the
//! figures are in the pool's stats.

use ballast_pool::{PoolConfig, SharedPool};
use ballast_testkit::db::{self, MysqlDatabase, MysqlUser, PgRole};
use ballast_testkit::logs::Captured;
use diesel_async::{AsyncMysqlConnection, AsyncPgConnection};

fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn a_role_limit_below_connection_limit_is_named_once() {
    let Some(url) = db::postgres_url("budget_role_limit") else {
        return;
    };
    let (captured, _guard) = capture();
    let role = PgRole::create(&url, Some(3)).await;
    let config = PoolConfig::from_url(&format!("{}?connection_limit=10", role.url())).unwrap();
    let pool = SharedPool::<AsyncPgConnection>::new(config).unwrap();
    assert_eq!(pool.stats().budget, None, "read on the first connection");
    let first = pool.get().await.unwrap();
    let second = pool.get().await.unwrap();
    let budget = pool.stats().budget.expect("read on the first connection");
    assert_eq!(budget.login_limit, Some(3));
    assert_eq!(
        budget.login_in_use, 0,
        "the pool's own connection is not counted"
    );
    assert_eq!(budget.available, 3);
    assert!(budget.server_limit > 3);
    drop((first, second));
    let log = captured.take();
    assert_eq!(log.matches("does not fit").count(), 1, "{log}");
    assert!(log.contains("connection_limit=10"), "{log}");
    assert!(log.contains("the login may open 3"), "{log}");
    assert!(log.contains("so 3 are left"), "{log}");

    // A second instance: the first pool's two idle connections count against the role. A pool
    // of 1 fits in what is left and says nothing.
    let fits = PoolConfig::from_url(&format!("{}?connection_limit=1", role.url())).unwrap();
    let fits = SharedPool::<AsyncPgConnection>::new(fits).unwrap();
    drop(fits.get().await.unwrap());
    let budget = fits.stats().budget.unwrap();
    assert_eq!(
        (budget.login_in_use, budget.available),
        (2, 1),
        "{budget:?}"
    );
    assert!(!captured.take().contains("does not fit"));
}

#[tokio::test]
async fn a_mariadb_user_limit_below_connection_limit_is_named() {
    let Some(url) = db::mysql_url("budget_mariadb_user_limit") else {
        return;
    };
    let (captured, _guard) = capture();
    let database = MysqlDatabase::create(&url).await;
    let user = MysqlUser::create(&url, database.name(), None, Some(3)).await;
    let config = PoolConfig::from_url(&format!("{}?connection_limit=10", user.url())).unwrap();
    let pool = SharedPool::<AsyncMysqlConnection>::new(config).unwrap();
    drop(pool.get().await.unwrap());
    let budget = pool.stats().budget.expect("read on the first connection");
    assert_eq!(budget.login_limit, Some(3));
    assert_eq!(budget.available, 3);
    let log = captured.take();
    assert!(log.contains("connection_limit=10 does not fit"), "{log}");
}
