//! The thread PostgreSQL connections are driven on.
//!
//! tokio-postgres splits a connection in two: the `Client` a handler sends statements through,
//! and a `Connection` task that reads and writes the socket. On the application's runtime that
//! task is one among every HTTP connection's tasks: under a flood of requests (clients sent away
//! by admission and coming straight back) a database answer waits behind hundreds of them before
//! it is read, and every connection is held that much longer — about a tenth more for 100 ms
//! statements on two cores, which is a tenth less served. So each pool opens its PostgreSQL
//! connections on a thread of its own, with a single-threaded runtime that does nothing but
//! drive them: an answer is read as soon as it arrives, whatever the HTTP side is doing. Handlers
//! still run on the application's runtime; only the socket work moves (framing and TLS, a few
//! microseconds a message).
//!
//! MySQL and MariaDB connections (mysql_async) and SQLite have no such task: they do their I/O in
//! the caller's task and are not affected.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use ballast_core::{Cause, Failure};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A pool's driving thread: a single-threaded runtime that only drives its connections. One per
/// pool (not one per process): a thread gets its share of the CPU beside the application's
/// workers, and one thread for every pool of a busy process would get too little of it. It
/// stops when the pool is dropped; its connections are gone by then.
#[derive(Debug)]
pub(crate) struct Driver {
    handle: Handle,
    _stop: oneshot::Sender<()>,
}

impl Driver {
    /// Starts the thread; `None` (connections then run on the caller's runtime) if it cannot.
    pub(crate) fn start() -> Option<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| tracing::warn!("no thread for database I/O: {error}"))
            .ok()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("ballast-pg-io".to_owned())
            .spawn(move || {
                // Ends when the pool drops its `Driver` (the sender).
                let _ = runtime.block_on(stopped);
            })
            .map_err(|error| tracing::warn!("no thread for database I/O: {error}"))
            .ok()?;
        Some(Driver {
            handle,
            _stop: stop,
        })
    }

    /// Runs `open` — a connect, whose socket and connection task then belong to the driving
    /// thread — there, and hands back what it made. Dropping the returned future drops `open`
    /// too (a connect timed out).
    pub(crate) async fn run<T, F>(&self, open: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, Failure>> + Send + 'static,
    {
        match AbortOnDrop(self.handle.spawn(open)).await {
            Ok(result) => result,
            Err(error) => Err(Failure::new(Cause::Internal)
                .with_detail(format!("opening a connection failed: {error}"))
                .with_source(error)),
        }
    }
}

tokio::task_local! {
    /// The driver of the pool whose connect is running.
    static DRIVER: Option<std::sync::Arc<Driver>>;
}

/// Runs `connect` with `driver` as the one [`open_on_driver`] uses.
pub(crate) async fn with_driver<T>(
    driver: Option<std::sync::Arc<Driver>>,
    connect: impl Future<Output = T>,
) -> T {
    DRIVER.scope(driver, connect).await
}

/// Runs `open` on the driving thread of the pool connecting (see [`with_driver`]), or where it
/// is awaited outside a pool.
pub(crate) async fn open_on_driver<T, F>(open: F) -> Result<T, Failure>
where
    T: Send + 'static,
    F: Future<Output = Result<T, Failure>> + Send + 'static,
{
    match DRIVER.try_with(Clone::clone).ok().flatten() {
        Some(driver) => driver.run(open).await,
        None => open.await,
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
    use std::sync::Arc;

    #[tokio::test]
    async fn a_connect_runs_on_its_pools_driving_thread() {
        let driver = Driver::start().map(Arc::new);
        assert!(driver.is_some());
        let open = open_on_driver(async {
            Ok::<_, Failure>(std::thread::current().name().map(str::to_owned))
        });
        let name = with_driver(driver, open).await.unwrap();
        assert_eq!(name.as_deref(), Some("ballast-pg-io"));
        // Outside a pool: where it is awaited.
        let here = open_on_driver(async {
            Ok::<_, Failure>(std::thread::current().name().map(str::to_owned))
        })
        .await
        .unwrap();
        assert_ne!(here.as_deref(), Some("ballast-pg-io"));
    }

    #[tokio::test]
    async fn a_connect_given_up_on_is_dropped_on_the_driving_thread() {
        struct Flag(tokio::sync::mpsc::UnboundedSender<()>);
        impl Drop for Flag {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let driver = Driver::start().map(Arc::new);
        let (dropped, mut was_dropped) = tokio::sync::mpsc::unbounded_channel();
        let flag = Flag(dropped);
        let hung = with_driver(
            driver,
            open_on_driver(async move {
                let _flag = flag;
                std::future::pending::<Result<(), Failure>>().await
            }),
        );
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
