//! `Conn`: an axum extractor that checks a connection out for the handler (feature `axum`).

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use axum_core::extract::FromRequestParts;
use axum_core::response::{IntoResponse, Response};
use ballast_core::http::{failure_response, RetryAfter};
use ballast_core::{Cause, Failure};
use http::request::Parts;

use crate::connect::Connect;
use crate::lend::Lent;
use crate::pool::SharedPool;
use crate::pooled::PooledConnection;

/// A connection of the request's pool, checked out before the handler runs.
///
/// The pool comes from the request's extensions, where [`AddPoolLayer`](crate::AddPoolLayer)
/// puts it; a connection a layer [lent](crate::Lent) to the request (an idempotency key's
/// transaction) is taken instead. A checkout that fails (the pool is exhausted, the database is down) rejects the
/// request with the classified failure as a problem+json response — a 503 with `Retry-After`,
/// nothing run, so the client may repeat it — and the handler never runs. Without an
/// `AddPoolLayer` in the stack the request gets a 500 and the log says what is missing.
///
/// Dereferences to the diesel-async connection: queries take `&mut *conn`. Errors from them
/// convert with plain `?` into `ballast::Error`, which classifies them: a missing row is a 404, a
/// duplicate or a dangling reference a 409, an invalid value a 422, a connection that died under
/// the query a retryable 503.
///
/// ```
/// use axum::{extract::Path, routing::get, Router};
/// use ballast_pool::{AddPoolLayer, Conn, PoolConfig, SharedPool};
/// use diesel_async::{AsyncPgConnection, RunQueryDsl};
///
/// #[derive(diesel::QueryableByName)]
/// struct Answer {
///     #[diesel(sql_type = diesel::sql_types::Integer)]
///     n: i32,
/// }
///
/// async fn double(mut conn: Conn<AsyncPgConnection>, Path(n): Path<i32>) -> Result<String, ballast_error::Error> {
///     let answer: Answer = diesel::sql_query("SELECT $1 * 2 AS n")
///         .bind::<diesel::sql_types::Integer, _>(n)
///         .get_result(&mut *conn)
///         .await?;
///     Ok(answer.n.to_string())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = SharedPool::<AsyncPgConnection>::new(PoolConfig::from_url("postgres://postgres@127.0.0.1:5432/test")?)?;
/// let app: Router = Router::new()
///     .route("/double/{n}", get(double))
///     .layer(AddPoolLayer::new(pool));
/// # let _ = app;
/// # Ok(())
/// # }
/// ```
pub struct Conn<C: Connect>(pub PooledConnection<C>);

impl<S, C> FromRequestParts<S> for Conn<C>
where
    S: Send + Sync,
    C: Connect,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let method = parts.method.clone();
        let reject = |failure: Failure| rejection(&method, failure);
        // A layer that holds the request's connection (a transaction of its own) lends it.
        if let Some(conn) = parts.extensions.get::<Lent<C>>().and_then(Lent::borrow) {
            return Ok(Conn(conn));
        }
        let Some(pool) = parts.extensions.get::<SharedPool<C>>().cloned() else {
            return Err(reject(Failure::new(Cause::Internal).with_detail(format!(
                "no SharedPool<{}> in the request's extensions: add AddPoolLayer to the stack",
                std::any::type_name::<C>()
            ))));
        };
        match pool.get().await {
            Ok(conn) => Ok(Conn(conn)),
            Err(failure) => Err(reject(failure)),
        }
    }
}

impl<C: Connect> Deref for Conn<C> {
    type Target = C;

    fn deref(&self) -> &C {
        &self.0
    }
}

impl<C: Connect> DerefMut for Conn<C> {
    fn deref_mut(&mut self) -> &mut C {
        &mut self.0
    }
}

impl<C: Connect> fmt::Debug for Conn<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Conn").field(&self.0).finish()
    }
}

/// A connection for a read: a fresh replica's where the request's [`ReplicaSet`](crate::ReplicaSet)
/// has one, else the primary's, checked out before the handler runs.
///
/// The set comes from the request's extensions, where
/// [`ReadYourWritesLayer`](crate::ReadYourWritesLayer) puts it (with read-your-writes: a request
/// that carries its client's last write token reads from a replica only once the replica has
/// replayed it); without one, it is the primary's connection of
/// [`AddPoolLayer`](crate::AddPoolLayer)'s pool, as [`Conn`] would take. Use it in handlers that
/// only read and may see data a little behind the primary (at most `max_replica_lag`, unless the
/// client's own write); writes go through [`Conn`] — a replica refuses them, and under the layer
/// the request is answered `500`. A checkout that fails rejects the request as `Conn`'s does.
///
/// ```
/// use axum::{extract::Path, routing::get, Router};
/// use ballast_pool::ReadConn;
/// use diesel_async::{AsyncPgConnection, RunQueryDsl};
///
/// async fn count(mut db: ReadConn<AsyncPgConnection>) -> Result<String, ballast_error::Error> {
///     #[derive(diesel::QueryableByName)]
///     struct Count {
///         #[diesel(sql_type = diesel::sql_types::BigInt)]
///         n: i64,
///     }
///     let count: Count = diesel::sql_query("SELECT COUNT(*) AS n FROM items")
///         .get_result(&mut *db)
///         .await?;
///     Ok(count.n.to_string())
/// }
/// # let _: Router = Router::new().route("/items/count", get(count));
/// ```
pub struct ReadConn<C: Connect>(pub PooledConnection<C>);

impl<S, C> FromRequestParts<S> for ReadConn<C>
where
    S: Send + Sync,
    C: Connect,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Some(replicas) = parts.extensions.get::<crate::ReplicaSet<C>>().cloned() else {
            return Conn::<C>::from_request_parts(parts, state)
                .await
                .map(|conn| ReadConn(conn.0));
        };
        match replicas.get_read().await {
            Ok(conn) => Ok(ReadConn(conn)),
            Err(failure) => Err(rejection(&parts.method, failure)),
        }
    }
}

/// A checkout's failure as the request's answer: the classified problem, with the promise its
/// method allows and a `Retry-After`; nothing ran, so the client may repeat it.
fn rejection(method: &http::Method, failure: Failure) -> Response {
    failure_response(
        Arc::new(failure),
        method.is_idempotent(),
        method == http::Method::HEAD,
        Some(&RetryAfter::default()),
    )
    .into_response()
}

impl<C: Connect> Deref for ReadConn<C> {
    type Target = C;

    fn deref(&self) -> &C {
        &self.0
    }
}

impl<C: Connect> DerefMut for ReadConn<C> {
    fn deref_mut(&mut self) -> &mut C {
        &mut self.0
    }
}

impl<C: Connect> fmt::Debug for ReadConn<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ReadConn").field(&self.0).finish()
    }
}
