//! What a request tells the replica routing, and what the routing tells the request: the
//! request's read-your-writes token, and whether a write reached a replica under it. A Tokio
//! task-local, set by [`ReadYourWritesLayer`](crate::ReadYourWritesLayer) around the request, so
//! that [`ReplicaSet::get_read`](crate::ReplicaSet::get_read) and [`ReadConn`](crate::ReadConn)
//! honour the token wherever the handler takes its connection.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::WalPosition;

tokio::task_local! {
    static SCOPE: Arc<ReadScope>;
}

/// One request's view of the replicas.
#[derive(Debug, Default)]
pub(crate) struct ReadScope {
    /// The position its reads must see (the client's token), if it sent one.
    pub(crate) after: Option<WalPosition>,
    /// Whether a statement of the request was refused by a replica as a write (`25006`).
    pub(crate) refused_write: AtomicBool,
    /// Whether a statement of the request ran on a pool that is not a replica's: only then may
    /// it have written.
    pub(crate) on_primary: AtomicBool,
}

impl ReadScope {
    /// Runs `future` inside this scope.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn run<F: Future>(
        self: Arc<Self>,
        future: F,
    ) -> tokio::task::futures::TaskLocalFuture<Arc<Self>, F> {
        SCOPE.scope(self, future)
    }

    /// The current request's token, if any.
    pub(crate) fn after() -> Option<WalPosition> {
        SCOPE.try_with(|scope| scope.after).ok().flatten()
    }
}

/// A statement starts on a pool that is not a replica's, for the current request.
pub(crate) fn statement_on_primary() {
    let _ = SCOPE.try_with(|scope| scope.on_primary.store(true, Ordering::Release));
}

/// A replica refused a statement as a write: a handler wrote through a read connection. Logged
/// here, and marked on the request, whose layer answers it as the bug it is.
pub(crate) fn refused_write() {
    let marked = SCOPE
        .try_with(|scope| scope.refused_write.store(true, Ordering::Release))
        .is_ok();
    tracing::error!(
        marked,
        "a read replica refused a write (25006): the handler wrote through a read connection \
         (ReadConn, ReplicaSet::get_read); writes need Conn, the primary's"
    );
}
