//! The process's one pool (scenario 3). Its own test binary: the pool is process-wide.

use ballast_pool::{PoolConfig, PoolError, SharedPool};
use diesel_async::AsyncPgConnection;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_inits_make_one_pool() {
    // Nothing connects at init, so no database is needed.
    let config =
        PoolConfig::from_url("postgres://postgres@127.0.0.1:5432/test?connection_limit=8").unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let config = config.clone();
            tokio::spawn(async move { SharedPool::<AsyncPgConnection>::init(config) })
        })
        .collect();
    let mut pools = Vec::new();
    for task in tasks {
        pools.push(task.await.unwrap().expect("same config: the same pool"));
    }
    assert!(
        pools.iter().all(|pool| *pool == pools[0]),
        "exactly one pool"
    );
    println!("scenario 3 (one pool): 50 concurrent inits, 1 pool");

    // The same configuration again: the same pool.
    let again = SharedPool::<AsyncPgConnection>::init(config.clone()).unwrap();
    assert_eq!(again, pools[0]);

    // A different configuration: an error, and the pool is untouched.
    let other = config.clone().with_connection_limit(9);
    assert_eq!(
        SharedPool::<AsyncPgConnection>::init(other).unwrap_err(),
        PoolError::AlreadyInitialized
    );
    assert_eq!(pools[0].config().connection_limit(), 8);

    // A setting out of range fails the build, named; the setters themselves never fail.
    match SharedPool::<AsyncPgConnection>::new(config.with_connection_limit(0)) {
        Err(PoolError::Config(error)) => assert_eq!(error.setting, "connection_limit"),
        other => panic!("expected a configuration error, got {other:?}"),
    }

    // A configuration for another backend is refused by the connection type itself.
    let mysql = PoolConfig::from_url("mysql://root@127.0.0.1:3306/test").unwrap();
    assert!(matches!(
        SharedPool::<AsyncPgConnection>::new(mysql),
        Err(PoolError::WrongBackend { .. })
    ));
}
