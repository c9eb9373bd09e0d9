//! A connection a layer holds for a request and lends to the handler's `Conn`.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use crate::connect::Connect;
use crate::pooled::PooledConnection;

/// A connection lent to a request: the request's [`Conn`](crate::Conn) extractor takes it
/// instead of checking one out, and it comes back here when the handler drops it.
///
/// This is how a layer wraps a handler's queries in work of its own on the same connection —
/// ballast-idempotency's `IdempotencyLayer` opens a transaction, lets the handler write in it,
/// then records the key and commits. The layer checks a connection out, lends it with
/// [`new`](Self::new) and [`insert_into`](Self::insert_into) the request's extensions, calls
/// the handler, and takes it back with [`take_back`](Self::take_back).
///
/// The first `Conn` of the request gets the lent connection; a second `Conn` in the same
/// request, or a [`SharedPool::get`](crate::SharedPool::get) of the handler's own, checks out
/// another one as usual, outside whatever the layer began. Dropped while lent — the request was
/// cancelled — the connection is returned to the pool like any other (an open transaction
/// rolled back by closing it).
///
/// ```no_run
/// use ballast_pool::{Lent, PoolConfig, SharedPool};
/// use diesel_async::AsyncPgConnection;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = SharedPool::<AsyncPgConnection>::new(PoolConfig::from_url("postgres://127.0.0.1/app")?)?;
/// let lent = Lent::new(pool.get().await?);
/// let mut request = http::Request::new(());
/// lent.insert_into(request.extensions_mut());
/// // ... the handler's `Conn<AsyncPgConnection>` takes it, runs its queries, and drops it ...
/// let conn = lent.take_back().expect("the handler gave it back");
/// # drop(conn);
/// # Ok(())
/// # }
/// ```
pub struct Lent<C: Connect> {
    slot: Slot<C>,
}

impl<C: Connect> Lent<C> {
    /// Lends `conn`.
    pub fn new(conn: PooledConnection<C>) -> Self {
        Lent {
            slot: Slot(Arc::new(Mutex::new(Some(conn)))),
        }
    }

    /// Puts the loan into a request's extensions, where its `Conn` finds it.
    pub fn insert_into(&self, extensions: &mut http::Extensions) {
        extensions.insert(Lent {
            slot: self.slot.clone(),
        });
    }

    /// The connection, once the handler has given it back (or never took it); `None` while the
    /// handler still holds it — it moved its `Conn` into a task that outlives the request.
    pub fn take_back(self) -> Option<PooledConnection<C>> {
        self.slot.take()
    }

    /// The lent connection for a `Conn`, which gives it back when dropped; `None` when it is
    /// already out.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn borrow(&self) -> Option<PooledConnection<C>> {
        let mut conn = self.slot.take()?;
        conn.lender = Some(self.slot.clone());
        Some(conn)
    }
}

impl<C: Connect> Clone for Lent<C> {
    fn clone(&self) -> Self {
        Lent {
            slot: self.slot.clone(),
        }
    }
}

impl<C: Connect> fmt::Debug for Lent<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lent").finish_non_exhaustive()
    }
}

/// Where a lent connection waits for its lender.
pub(crate) struct Slot<C: Connect>(Arc<Mutex<Option<PooledConnection<C>>>>);

impl<C: Connect> Slot<C> {
    fn take(&self) -> Option<PooledConnection<C>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// Puts a connection the borrower dropped back.
    pub(crate) fn give_back(&self, conn: PooledConnection<C>) {
        let previous = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(conn);
        // A slot holds one connection: there is never a previous one, but dropping it (into
        // the pool) is the right thing if there were.
        drop(previous);
    }
}

impl<C: Connect> Clone for Slot<C> {
    fn clone(&self) -> Self {
        Slot(Arc::clone(&self.0))
    }
}
