//! [`ReadYourWritesLayer`]: read-your-writes tokens over HTTP (feature `axum`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum_core::body::Body;
use axum_core::response::IntoResponse;
use ballast_core::http::{attached, failure_response};
use ballast_core::{BoxError, Cause, Failure};
use bytes::Bytes;
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::scope::ReadScope;
use super::{ReplicaSet, WalPosition};
use crate::connect::Connect;

/// The name of the read-your-writes token: the response header a write's answer carries and a
/// client may send back, and the cookie a browser carries with no code.
pub const READ_AFTER: &str = "ballast-read-after";

/// The longest a write's answer waits for the primary's position after it.
const POSITION_LIMIT: Duration = Duration::from_secs(1);

/// Read-your-writes for every client, over HTTP: a write's answer carries the primary's WAL
/// position after it, and a read that sends it back is served by a replica only once the
/// replica has replayed it.
///
/// - **After a write.** A request with an unsafe method (`POST`, `PUT`, `PATCH`, `DELETE`, ...)
///   that ran a statement on the primary (on any pool of this process that is not a replica's)
///   and was answered with a success (2xx, 3xx) committed what it wrote: its response gets the primary's
///   position after it ([`ReplicaSet::position_after_write`]: one statement on the primary,
///   shared by the writes that ask at the same time) as the header `ballast-read-after:
///   16/B374D848` and as the cookie `ballast-read-after=16/B374D848; Max-Age=<token lifetime>;
///   Path=/; HttpOnly; SameSite=Lax`, which a browser sends back with no code. The token lasts
///   [`ReplicaSet::token_lifetime`] (6 s by default): by then every fresh replica has replayed
///   the write. When the primary's position cannot be read within 1 s, the token is the largest
///   position, which a read caps at the primary's position then.
/// - **A read.** The token of a request (the header, else the cookie; one that does not parse is
///   ignored) is what [`ReplicaSet::get_read`] and [`ReadConn`](crate::ReadConn) honour: a
///   replica serves the read only once it has replayed up to it, after waiting at most
///   `max_token_wait`, else the primary does. A request without one reads from any fresh
///   replica.
/// - **A write through a read connection** (a replica refused it, `25006`) is answered `500
///   CRITICAL_ERROR`, not the retryable 503 a read-only primary gets: it is the handler's bug,
///   and the error log says so.
/// - It puts the [`ReplicaSet`] into each request's extensions, where [`ReadConn`](crate::ReadConn)
///   finds it.
///
/// Put it on the router, inside the retry and cache layers (with `Router::layer`, the first
/// layer added): the retry layer then never repeats a refused write, and the cache sees how
/// current a replica's data was ([`DataAsOf`](ballast_core::scope::DataAsOf)).
///
/// ```
/// use axum::{routing::get, Router};
/// use ballast_pool::{PoolConfig, ReadConn, ReadYourWritesLayer, ReplicaSet, SharedPool};
/// use diesel_async::AsyncPgConnection;
///
/// async fn list(_db: ReadConn<AsyncPgConnection>) -> &'static str {
///     "[]"
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let primary = SharedPool::<AsyncPgConnection>::new(PoolConfig::from_url("postgres://app@db-1/shop")?)?;
/// let replica = SharedPool::new(PoolConfig::from_url("postgres://app@db-2/shop")?)?;
/// let reads = ReplicaSet::builder(primary).replica(replica).build();
/// let app: Router = Router::new()
///     .route("/items", get(list))
///     .layer(ReadYourWritesLayer::new(reads));
/// # let _ = app;
/// # Ok(())
/// # }
/// ```
pub struct ReadYourWritesLayer<C: Connect> {
    set: ReplicaSet<C>,
}

impl<C: Connect> ReadYourWritesLayer<C> {
    /// The layer for `set`'s replicas.
    pub fn new(set: ReplicaSet<C>) -> Self {
        ReadYourWritesLayer { set }
    }
}

impl<C: Connect> Clone for ReadYourWritesLayer<C> {
    fn clone(&self) -> Self {
        ReadYourWritesLayer {
            set: self.set.clone(),
        }
    }
}

impl<C: Connect> std::fmt::Debug for ReadYourWritesLayer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadYourWritesLayer")
            .field("set", &self.set)
            .finish()
    }
}

impl<S, C: Connect> Layer<S> for ReadYourWritesLayer<C> {
    type Service = ReadYourWrites<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        ReadYourWrites {
            inner,
            set: self.set.clone(),
        }
    }
}

/// The service made by [`ReadYourWritesLayer`].
pub struct ReadYourWrites<S, C: Connect> {
    inner: S,
    set: ReplicaSet<C>,
}

impl<S: Clone, C: Connect> Clone for ReadYourWrites<S, C> {
    fn clone(&self) -> Self {
        ReadYourWrites {
            inner: self.inner.clone(),
            set: self.set.clone(),
        }
    }
}

impl<S: std::fmt::Debug, C: Connect> std::fmt::Debug for ReadYourWrites<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadYourWrites")
            .field("inner", &self.inner)
            .field("set", &self.set)
            .finish()
    }
}

/// The future of [`ReadYourWrites`]: boxed, as it reads the primary's position after a write.
pub type ReadYourWritesFuture<E> = Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>;

impl<S, C, ReqBody, ResBody> Service<Request<ReqBody>> for ReadYourWrites<S, C>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    C: Connect,
    ReqBody: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ReadYourWritesFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let set = self.set.clone();
        let scope = Arc::new(ReadScope {
            after: token(request.headers()),
            ..ReadScope::default()
        });
        request.extensions_mut().insert(set.clone());
        let method = request.method().clone();
        let answer = Arc::clone(&scope).run(inner.call(request));
        Box::pin(async move {
            let mut response = answer.await?.map(Body::new);
            if scope.refused_write.load(Ordering::Acquire)
                && attached(response.extensions())
                    .is_some_and(|failure| failure.cause() == Cause::ReadOnly)
            {
                let failure = Failure::new(Cause::Internal).with_detail(
                    "a read replica refused a write: the handler wrote through a read \
                     connection (ReadConn, ReplicaSet::get_read); writes need Conn",
                );
                return Ok(failure_response(
                    Arc::new(failure),
                    method.is_idempotent(),
                    method == http::Method::HEAD,
                    None,
                )
                .into_response());
            }
            let status = response.status();
            if !method.is_safe()
                && (status.is_success() || status.is_redirection())
                && scope.on_primary.load(Ordering::Acquire)
                && set.gives_tokens()
            {
                let position = match tokio::time::timeout(
                    POSITION_LIMIT,
                    set.position_after_write(),
                )
                .await
                {
                    Ok(Ok(position)) => position,
                    Ok(Err(failure)) => {
                        tracing::warn!(%failure, "no WAL position after a write: its token says the largest");
                        WalPosition::MAX
                    }
                    Err(_) => {
                        tracing::warn!(
                            "no WAL position after a write within 1 s: its token says the largest"
                        );
                        WalPosition::MAX
                    }
                };
                give_token(response.headers_mut(), position, set.token_lifetime());
            }
            Ok(response)
        })
    }
}

/// The token a request carries: the header, else the cookie.
fn token(headers: &HeaderMap) -> Option<WalPosition> {
    if let Some(position) = headers
        .get(READ_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
    {
        return Some(position);
    }
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == READ_AFTER)
        .filter_map(|(_, value)| value.trim_matches('"').parse().ok())
        .max()
}

fn give_token(headers: &mut HeaderMap, position: WalPosition, lifetime: Duration) {
    let text = position.to_string();
    if let Ok(value) = HeaderValue::from_str(&text) {
        headers.insert(READ_AFTER, value);
    }
    let cookie = format!(
        "{READ_AFTER}={text}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax",
        lifetime.as_secs()
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        headers.append(SET_COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_the_header_else_the_cookie() {
        let mut headers = HeaderMap::new();
        assert_eq!(token(&headers), None);
        headers.insert(
            COOKIE,
            HeaderValue::from_static("a=b; ballast-read-after=0/16B3740"),
        );
        assert_eq!(token(&headers), Some(WalPosition::from(0x16B_3740)));
        headers.insert(READ_AFTER, HeaderValue::from_static("1/0"));
        assert_eq!(token(&headers), Some(WalPosition::from(1 << 32)));
        // Garbage is ignored: no token.
        headers.insert(READ_AFTER, HeaderValue::from_static("999999999/0"));
        headers.insert(COOKIE, HeaderValue::from_static("ballast-read-after=nope"));
        assert_eq!(token(&headers), None);
    }

    #[test]
    fn a_token_is_a_header_and_a_short_lived_cookie() {
        let mut headers = HeaderMap::new();
        give_token(
            &mut headers,
            WalPosition::from(0x3_0000_0060),
            Duration::from_secs(6),
        );
        assert_eq!(headers[READ_AFTER], "3/60");
        assert_eq!(
            headers[SET_COOKIE],
            "ballast-read-after=3/60; Max-Age=6; Path=/; HttpOnly; SameSite=Lax"
        );
    }
}
