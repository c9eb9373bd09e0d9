//! SQLite through diesel's `SqliteConnection` on a blocking thread.

use ballast_core::Failure;
use diesel_async::AsyncConnection;

use super::{bounded, Connect};
use crate::config::{Backend, PoolConfig};

impl Connect
    for diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>
{
    const BACKEND: Backend = Backend::Sqlite;

    async fn open(config: &PoolConfig) -> Result<(Self, Option<usize>), Failure> {
        use diesel_async::SimpleAsyncConnection;
        // Pooled SQLite connections contend for one file: a writer waits for the lock as long
        // as a checkout may wait for a connection, instead of failing at once with BUSY.
        let setup = format!(
            "PRAGMA busy_timeout = {}; PRAGMA foreign_keys = ON;",
            config.pool_timeout().as_millis()
        );
        bounded(config, async move {
            let mut conn = Self::establish(config.driver_url()).await?;
            conn.batch_execute(&setup).await?;
            Ok((conn, None))
        })
        .await
    }

    /// diesel cannot interrupt SQLite, and diesel-async's wrapper does not let go of an
    /// abandoned statement: dropping its future blocks (in place) until the statement's blocking
    /// thread is done, so the connection comes back idle. A transaction left open closes it.
    async fn cancel_abandoned(
        &mut self,
        _config: &PoolConfig,
        _host: Option<usize>,
        _in_flight: bool,
    ) -> Result<bool, Failure> {
        use diesel_async::pooled_connection::PoolableConnection;
        Ok(!self.is_broken())
    }
}
