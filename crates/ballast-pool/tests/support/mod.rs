//! What the pool's database tests share: a statement that holds its connection, and the server
//! process a pooled connection talks to.
#![allow(dead_code, unreachable_pub)]

use ballast_core::Failure;
use ballast_pool::SharedPool;
use diesel_async::RunQueryDsl;

/// Runs `SELECT pg_sleep(seconds)` on a pooled connection, holding it for that long.
pub async fn hold_postgres(
    pool: &SharedPool<diesel_async::AsyncPgConnection>,
    seconds: f64,
) -> Result<(), Failure> {
    let mut conn = pool.get().await?;
    diesel::sql_query(format!("SELECT pg_sleep({seconds})"))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Runs `SELECT SLEEP(seconds)` on a pooled MySQL or MariaDB connection, holding it for that
/// long.
pub async fn hold_mysql(
    pool: &SharedPool<diesel_async::AsyncMysqlConnection>,
    seconds: f64,
) -> Result<(), Failure> {
    let mut conn = pool.get().await?;
    diesel::sql_query(format!("SELECT SLEEP({seconds})"))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The PostgreSQL backend process id of a pooled connection.
pub async fn backend_pid(pool: &SharedPool<diesel_async::AsyncPgConnection>) -> i32 {
    #[derive(diesel::QueryableByName)]
    struct Pid {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        pid: i32,
    }
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result::<Pid>(&mut *conn)
        .await
        .unwrap()
        .pid
}
