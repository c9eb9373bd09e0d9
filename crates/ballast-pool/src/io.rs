//! The thread PostgreSQL connections are driven on.
//!
//! tokio-postgres splits a connection in two: the `Client` a handler sends statements through,
//! and a `Connection` task that reads and writes the socket. On the application's runtime that
//! task is one among every HTTP connection's tasks: under a flood of requests (clients sent away
//! by admission and coming straight back) a database answer waits behind hundreds of them before
//! it is read, and every connection is held that much longer — about a tenth more for 100 ms
//! statements on two cores, which is a tenth less served. So the pool opens its PostgreSQL
//! connections on a thread of its own, with a single-threaded runtime that does nothing but
//! drive them: an answer is read as soon as it arrives, whatever the HTTP side is doing. Handlers
//! still run on the application's runtime; only the socket work moves (framing and TLS, a few
//! microseconds a message).
//!
//! MySQL and MariaDB connections (mysql_async) and SQLite have no such task: they do their I/O in
//! the caller's task and are not affected.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use ballast_core::{Cause, Failure};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// The driving runtime's handle, started on first use; `None` if its thread could not start.
static DRIVER: OnceLock<Option<Handle>> = OnceLock::new();

fn driver() -> Option<&'static Handle> {
    DRIVER
        .get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|error| tracing::warn!("no thread for database I/O: {error}"))
                .ok()?;
            let handle = runtime.handle().clone();
            std::thread::Builder::new()
                .name("ballast-pg-io".to_owned())
                .spawn(move || runtime.block_on(std::future::pending::<()>()))
                .map_err(|error| tracing::warn!("no thread for database I/O: {error}"))
                .ok()?;
            Some(handle)
        })
        .as_ref()
}

/// Runs `open` — a connect, whose socket and connection task then belong to the driving thread —
/// there, and hands back what it made. Dropping the returned future drops `open` too (a connect
/// timed out). Without the thread, `open` runs where it is awaited.
pub(crate) async fn open_on_driver<T, F>(open: F) -> Result<T, Failure>
where
    T: Send + 'static,
    F: Future<Output = Result<T, Failure>> + Send + 'static,
{
    let Some(driver) = driver() else {
        return open.await;
    };
    match AbortOnDrop(driver.spawn(open)).await {
        Ok(result) => result,
        Err(error) => Err(Failure::new(Cause::Internal)
            .with_detail(format!("opening a connection failed: {error}"))
            .with_source(error)),
    }
}

/// A task that is aborted when nobody waits for it any more.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connect_runs_on_the_driving_thread() {
        let name = open_on_driver(async {
            Ok::<_, Failure>(std::thread::current().name().map(str::to_owned))
        })
        .await
        .unwrap();
        assert_eq!(name.as_deref(), Some("ballast-pg-io"));
    }

    #[tokio::test]
    async fn a_connect_given_up_on_is_dropped_on_the_driving_thread() {
        struct Flag(tokio::sync::mpsc::UnboundedSender<()>);
        impl Drop for Flag {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let (dropped, mut was_dropped) = tokio::sync::mpsc::unbounded_channel();
        let flag = Flag(dropped);
        let hung = open_on_driver(async move {
            let _flag = flag;
            std::future::pending::<Result<(), Failure>>().await
        });
        // A connect timed out: the caller stops waiting.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), hung)
                .await
                .is_err()
        );
        tokio::time::timeout(std::time::Duration::from_secs(5), was_dropped.recv())
            .await
            .expect("the abandoned connect is dropped")
            .expect("dropped, not leaked");
    }
}
