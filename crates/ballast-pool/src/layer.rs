//! A layer that puts the shared pool into every request's extensions.

use tower_http::add_extension::{AddExtension, AddExtensionLayer};

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
///         Ok::<_, std::convert::Infallible>(http::Response::new(pool.is_some()))
///     }));
/// assert!(*service.oneshot(http::Request::new(())).await?.body());
/// # Ok(())
/// # }
/// ```
///
/// It is tower-http's [`AddExtensionLayer`] with the pool as its value: the same layer, named
/// for what it adds.
pub type AddPoolLayer<C> = AddExtensionLayer<SharedPool<C>>;

/// The service made by [`AddPoolLayer`]: tower-http's [`AddExtension`] with the pool.
pub type AddPool<S, C> = AddExtension<S, SharedPool<C>>;
