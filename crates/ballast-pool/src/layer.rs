//! A layer that puts the shared pool into every request's extensions.

use std::fmt;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use crate::connect::Connect;
use crate::pool::SharedPool;

/// Inserts a clone of the [`SharedPool`] into each request's extensions, for handlers and inner
/// middleware that read it there (axum: `Extension<SharedPool<C>>`).
///
/// axum applications can use the pool as state instead; this layer is for plain Tower stacks
/// and for middleware that needs the pool. Named after tower-http's `AddExtensionLayer`, which
/// does the same for any value.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use ballast_pool::{AddPoolLayer, PoolConfig, SharedPool};
/// use diesel_async::AsyncPgConnection;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// let config = PoolConfig::from_url("postgres://postgres@127.0.0.1:5432/test")?;
/// let pool = SharedPool::<AsyncPgConnection>::new(config)?;
/// let service = ServiceBuilder::new()
///     .layer(AddPoolLayer::new(pool))
///     .service(service_fn(|request: http::Request<()>| async move {
///         let pool = request.extensions().get::<SharedPool<AsyncPgConnection>>();
///         Ok::<_, std::convert::Infallible>(pool.is_some())
///     }));
/// assert!(service.oneshot(http::Request::new(())).await?);
/// # Ok(())
/// # }
/// ```
pub struct AddPoolLayer<C: Connect> {
    pool: SharedPool<C>,
}

impl<C: Connect> AddPoolLayer<C> {
    /// A layer that hands out `pool`.
    pub fn new(pool: SharedPool<C>) -> Self {
        AddPoolLayer { pool }
    }
}

impl<C: Connect> Clone for AddPoolLayer<C> {
    fn clone(&self) -> Self {
        AddPoolLayer {
            pool: self.pool.clone(),
        }
    }
}

impl<C: Connect> fmt::Debug for AddPoolLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddPoolLayer")
            .field("pool", &self.pool)
            .finish()
    }
}

impl<S, C: Connect> Layer<S> for AddPoolLayer<C> {
    type Service = AddPool<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        AddPool {
            inner,
            pool: self.pool.clone(),
        }
    }
}

/// The service made by [`AddPoolLayer`].
pub struct AddPool<S, C: Connect> {
    inner: S,
    pool: SharedPool<C>,
}

impl<S: Clone, C: Connect> Clone for AddPool<S, C> {
    fn clone(&self) -> Self {
        AddPool {
            inner: self.inner.clone(),
            pool: self.pool.clone(),
        }
    }
}

impl<S: fmt::Debug, C: Connect> fmt::Debug for AddPool<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddPool")
            .field("inner", &self.inner)
            .field("pool", &self.pool)
            .finish()
    }
}

impl<S, C, B> Service<http::Request<B>> for AddPool<S, C>
where
    S: Service<http::Request<B>>,
    C: Connect,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        request.extensions_mut().insert(self.pool.clone());
        self.inner.call(request)
    }
}
