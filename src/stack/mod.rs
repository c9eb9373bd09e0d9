//! [`Stack`]: every layer in the right order, health, and the whole lifecycle in one call.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use ballast_cache::{Cache, CacheLayer, CleanupTask, ResponseCache};
use ballast_error::timeout::{RequestTimeout, RequestTimeoutLayer};
use ballast_error::{ErrorResponse, ErrorResponseLayer};
use ballast_pool::{AddPool, AddPoolLayer, Connect, SharedPool};
use ballast_retry::{Retry, RetryHandle, RetryLayer};
use ballast_shutdown::{
    Health, ServeConfig, Shutdown, ShutdownBuilder, ShutdownHandle, ShutdownLayer, ShutdownService,
};
use bytes::Bytes;
use http::{Request, Response};

use crate::startup::{Startup, State as StartupState};
use routes::HealthRoutes;

mod routes;
use tower_layer::Layer;
use tower_service::Service;

/// The longest a request may take by default, retries included.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long each standard teardown step may take.
const HOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// The request body the application's service receives under [`Stack::serve`]: hyper's, bounded
/// by the request timeout and kept for a replay by the retry layer. An axum `Router` takes any
/// body.
pub type AppBody =
    ballast_retry::RetryBody<ballast_error::timeout::TimedBody<hyper::body::Incoming>>;

/// Builds a [`Stack`]; every setting has a default.
pub struct StackBuilder<C: Connect> {
    pool: SharedPool<C>,
    cache: Option<ResponseCache>,
    retry: Option<RetryLayer>,
    request_timeout: Duration,
    x_cache: bool,
    shutdown: ShutdownBuilder,
    serve: ServeConfig,
    startup: Startup,
    #[cfg(feature = "metrics")]
    metrics: Option<&'static str>,
}

impl<C: Connect> StackBuilder<C> {
    /// The response cache routes opt into (`CacheRouteLayer`); by default an empty one with the
    /// cache's defaults (100 entries, 10 MiB, 60 s). Pass your own to invalidate it after writes.
    #[must_use]
    pub fn cache(mut self, cache: ResponseCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The retry layer; by default `RetryLayer::new()` (one quick retry of what cannot write
    /// twice).
    #[must_use]
    pub fn retry(mut self, retry: RetryLayer) -> Self {
        self.retry = Some(retry);
        self
    }

    /// The longest a request may take, retries included (30 s by default): past it the client
    /// gets a 408 for a body that stopped arriving or a 503 for the database.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Adds `x-cache: HIT|MISS|STALE` to cacheable responses (off by default).
    #[must_use]
    pub fn x_cache_header(mut self, enabled: bool) -> Self {
        self.x_cache = enabled;
        self
    }

    /// How long the service keeps serving after SIGTERM with readiness failing, so a load
    /// balancer stops sending traffic first (0 by default; a few seconds on Kubernetes).
    #[must_use]
    pub fn pre_drain_delay(mut self, delay: Duration) -> Self {
        self.shutdown = self.shutdown.pre_drain_delay(delay);
        self
    }

    /// The longest the drain may take (25 s by default).
    #[must_use]
    pub fn drain_deadline(mut self, deadline: Duration) -> Self {
        self.shutdown = self.shutdown.drain_deadline(deadline);
        self
    }

    /// Adds a teardown hook; it runs after the drain and before the standard ones (stop the
    /// cache cleanup, clear the cache, close the pool).
    #[must_use]
    pub fn hook<F, Fut, E>(mut self, name: impl Into<String>, timeout: Duration, hook: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display,
    {
        self.shutdown = self.shutdown.hook(name, timeout, hook);
        self
    }

    /// Answers `path` (`"/metrics"`) under [`Stack::serve`] with the pool's, the cache's, the
    /// retry layer's and the shutdown's figures in Prometheus's text format
    /// ([`Stack::metrics`]), in front of the stack like the health routes. Off by default:
    /// they are figures about the service that not every client should read.
    #[cfg(feature = "metrics")]
    #[must_use]
    pub fn metrics_route(mut self, path: &'static str) -> Self {
        self.metrics = Some(path);
        self
    }

    /// The HTTP server's timeouts and connection cap for [`Stack::serve`].
    #[must_use]
    pub fn serve_config(mut self, config: ServeConfig) -> Self {
        self.serve = config;
        self
    }

    /// Adds a startup step — creating the schema, running migrations — that
    /// [`Stack::serve`] runs once it is listening, so a service started before its database
    /// (an orchestrator that starts both at once, a database restarting) waits for it instead of
    /// exiting and being restarted in a loop:
    ///
    /// - the steps run in the order added, each until it succeeds; a failure that retrying may
    ///   fix (the database unreachable, starting up, too many connections) is retried after
    ///   0.2 s, doubling up to 5 s, with jitter, for as long as it takes, and logged when it
    ///   starts failing and every 30 s after, not at each attempt;
    /// - until every step succeeded, `/healthz` answers `200` (the process is alive: do not
    ///   restart it), `/readyz` answers `503` naming the step, and every other request a
    ///   retryable `503` `DB_CONNECTION_ERROR` with `Retry-After` — no handler runs against a
    ///   database without its schema;
    /// - a failure retrying cannot fix (a wrong password, a statement the database refuses) is
    ///   logged with its cause and shuts the service down: `serve` returns exit code 1;
    /// - SIGTERM during startup stops it at once and shuts down as usual (exit code 0).
    ///
    /// A step may run more than once (an attempt can fail after its statement ran), so it must
    /// be safe to repeat: `CREATE TABLE IF NOT EXISTS`, a migration runner that records what it
    /// applied.
    ///
    /// The step is given the stack's pool.
    ///
    /// ```no_run
    /// use ballast::prelude::*;
    ///
    /// const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS notes (id BIGSERIAL PRIMARY KEY)";
    ///
    /// # fn stack(pool: SharedPool<AsyncPgConnection>) -> Stack<AsyncPgConnection> {
    /// Stack::builder(pool)
    ///     .startup("schema", |pool| async move {
    ///         Ok::<_, Failure>(pool.get().await?.batch_execute(SCHEMA).await?)
    ///     })
    ///     .build()
    /// # }
    /// ```
    #[must_use]
    pub fn startup<F, Fut, E>(mut self, name: impl Into<String>, mut step: F) -> Self
    where
        F: FnMut(SharedPool<C>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<ballast_core::Failure>,
    {
        let pool = self.pool.clone();
        self.startup.push(name.into(), move || step(pool.clone()));
        self
    }

    /// Builds the stack and starts the cache's cleanup task.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (the cleanup task is spawned).
    pub fn build(self) -> Stack<C> {
        let cache = self.cache.unwrap_or_default();
        let retry = self.retry.unwrap_or_default();
        let cleanup: CleanupTask = cache.spawn_cleanup();
        let (clearing, closing) = (cache.clone(), self.pool.clone());
        let shutdown = self
            .shutdown
            .hook("stop cache cleanup", HOOK_TIMEOUT, move || async move {
                cleanup.stop().await;
                Ok::<_, Infallible>(())
            })
            .hook("clear cache", HOOK_TIMEOUT, move || async move {
                clearing.clear().await;
                Ok::<_, Infallible>(())
            })
            .hook("close pool", HOOK_TIMEOUT, move || async move {
                closing.close().await;
                Ok::<_, Infallible>(())
            })
            .build();
        let handle = shutdown.handle();
        let starting = (!self.startup.is_empty()).then(|| self.startup.state());
        let mut health = Health::new(handle.clone());
        if let Some(state) = &starting {
            let state = std::sync::Arc::clone(state);
            health = health.check("startup", move || {
                let ready = state.check();
                async move { ready }
            });
        }
        let health = health.check("database", self.pool.clone());
        Stack {
            layer: StackLayer {
                shutdown: ShutdownLayer::new(handle.clone()),
                error: ErrorResponseLayer::new(),
                // A body that stalled is answered 408 when the drain begins, not at the deadline.
                timeout: RequestTimeoutLayer::new(self.request_timeout)
                    .draining(move || handle.phase() >= ballast_shutdown::Phase::Draining),
                cache: CacheLayer::new(cache.clone()).x_cache_header(self.x_cache),
                retry: retry.clone(),
                pool: AddPoolLayer::new(self.pool.clone()),
            },
            shutdown,
            health,
            cache,
            retry: retry.handle(),
            pool: self.pool,
            serve: self.serve,
            startup: self.startup,
            starting,
            #[cfg(feature = "metrics")]
            metrics: self.metrics,
        }
    }
}

impl<C: Connect> fmt::Debug for StackBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackBuilder")
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// The whole ballast stack for one service, in the one order that is right:
///
/// health → shutdown → error → request timeout → cache → retry → pool → your handlers
///
/// - **health** answers `/healthz` (alive) and `/readyz` (not shutting down, and the database
///   reachable — a busy pool is ready) before anything else, so a probe never waits behind
///   requests;
/// - **shutdown** counts requests for the drain and refuses new ones while draining;
/// - **error** renders every failure and every plain error response as problem+json, once, with
///   the method in mind (`retryable` only when repeating is safe), and turns panics into 500s;
/// - **request timeout** bounds each request, retries included, and tells the client what ran
///   out;
/// - **cache** answers the routes that opted in (`CacheRouteLayer`) before any retry
///   bookkeeping;
/// - **retry** sits next to the handlers, whose `ballast::Error` leaves the classified failure
///   for it to read;
/// - **pool** puts the [`SharedPool`] in each request for the [`Conn`](crate::pool::Conn)
///   extractor.
///
/// [`serve`](Self::serve) runs it all: signals, the HTTP server with its protective timeouts,
/// the drain, background jobs ([`ShutdownHandle::spawn`]), and the teardown (your hooks, then
/// stop the cache cleanup, clear the cache, close the pool), and returns the exit code.
///
/// ```no_run
/// use axum::{routing::get, Router};
/// use ballast::prelude::*;
///
/// #[tokio::main]
/// async fn main() -> std::process::ExitCode {
///     let url = std::env::var("DATABASE_URL").unwrap_or_default();
///     let pool = match PoolConfig::from_url(&url).map_err(PoolError::Config).and_then(SharedPool::<AsyncPgConnection>::init) {
///         Ok(pool) => pool,
///         Err(error) => { eprintln!("error: DATABASE_URL: {error}"); return std::process::ExitCode::from(2) }
///     };
///     let stack = Stack::builder(pool).build();
///     let app = Router::new().route("/", get(|| async { "hello" }));
///     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await.expect("bind");
///     stack.serve(listener, app).await
/// }
/// ```
pub struct Stack<C: Connect> {
    layer: StackLayer<C>,
    shutdown: Shutdown,
    health: Health,
    cache: ResponseCache,
    retry: RetryHandle,
    pool: SharedPool<C>,
    serve: ServeConfig,
    startup: Startup,
    /// Where startup stands, when there are steps.
    starting: Option<std::sync::Arc<StartupState>>,
    #[cfg(feature = "metrics")]
    metrics: Option<&'static str>,
}

impl<C: Connect> Stack<C> {
    /// A builder for the stack of the service whose database is `pool`.
    pub fn builder(pool: SharedPool<C>) -> StackBuilder<C> {
        StackBuilder {
            pool,
            cache: None,
            retry: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            x_cache: false,
            startup: Startup::new(),
            shutdown: Shutdown::builder(),
            serve: ServeConfig::default(),
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }

    /// The shutdown state, for background jobs ([`ShutdownHandle::spawn`]) and `/stats`.
    pub fn handle(&self) -> ShutdownHandle {
        self.shutdown.handle()
    }

    /// The layers (without health), for serving the stack yourself or calling it in tests.
    pub fn layer(&self) -> StackLayer<C> {
        self.layer.clone()
    }

    /// Liveness and readiness.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The response cache, to invalidate after writes and read its stats.
    pub fn cache(&self) -> &ResponseCache {
        &self.cache
    }

    /// The retry layer's counters.
    pub fn retry(&self) -> &RetryHandle {
        &self.retry
    }

    /// The pool.
    pub fn pool(&self) -> &SharedPool<C> {
        &self.pool
    }

    /// The pool's, the cache's, the retry layer's and the shutdown's figures now, in
    /// Prometheus's text format with the metric families in name order
    /// ([`metrics::render`](crate::metrics::render)); [`StackBuilder::metrics_route`] serves
    /// them.
    #[cfg(feature = "metrics")]
    pub fn metrics(&self) -> impl Future<Output = String> + Send + 'static {
        routes::metrics_of(
            self.pool.clone(),
            self.cache.clone(),
            self.retry.clone(),
            self.shutdown.handle(),
        )
    }

    /// Serves `app` (an axum `Router`, or any Tower service) with the whole stack on `listener`
    /// until SIGTERM or SIGINT, shuts down in order, and returns the exit code for `main`. See
    /// [`Shutdown::serve_with`] for the server and the sequence: HTTP/1.1 with upgrades
    /// (WebSocket), HTTP/2 with prior knowledge (feature `http2`, on by default), on any
    /// [`Listener`](ballast_shutdown::Listener) — a `TcpListener` or a `UnixListener`.
    pub async fn serve<L, S, B>(self, listener: L, app: S) -> ExitCode
    where
        L: ballast_shutdown::Listener,
        S: Service<Request<AppBody>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<ballast_core::BoxError>,
    {
        #[cfg(feature = "metrics")]
        let metrics = self.metrics.map(|path| {
            let render = routes::metrics_answer(
                self.pool.clone(),
                self.cache.clone(),
                self.retry.clone(),
                self.shutdown.handle(),
            );
            (path, render)
        });
        #[cfg(not(feature = "metrics"))]
        let metrics = None;
        let service = HealthRoutes {
            liveness: self.health.liveness(),
            readiness: self.health.readiness(),
            metrics,
            starting: self.starting.clone(),
            inner: self.layer.layer(app),
        };
        if !self.startup.is_empty() {
            let handle = self.shutdown.handle();
            handle.spawn("startup", self.startup.run(handle.clone()));
        }
        let code = self
            .shutdown
            .serve_with(listener, service, self.serve)
            .await;
        match &self.starting {
            Some(state) if state.has_failed() => ExitCode::FAILURE,
            _ => code,
        }
    }
}

impl<C: Connect> fmt::Debug for Stack<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stack")
            .field("health", &self.health)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// The stack's layers in order (see [`Stack`]); apply it to a router or any service.
pub struct StackLayer<C: Connect> {
    shutdown: ShutdownLayer,
    error: ErrorResponseLayer,
    timeout: RequestTimeoutLayer,
    cache: CacheLayer,
    retry: RetryLayer,
    pool: AddPoolLayer<C>,
}

impl<C: Connect> Clone for StackLayer<C> {
    fn clone(&self) -> Self {
        StackLayer {
            shutdown: self.shutdown.clone(),
            error: self.error.clone(),
            timeout: self.timeout.clone(),
            cache: self.cache.clone(),
            retry: self.retry.clone(),
            pool: self.pool.clone(),
        }
    }
}

impl<C: Connect> fmt::Debug for StackLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackLayer").finish_non_exhaustive()
    }
}

/// The service [`StackLayer`] makes.
pub type StackService<S, C> =
    ShutdownService<ErrorResponse<RequestTimeout<Cache<Retry<AddPool<S, C>>>>>>;

impl<S: Clone, C: Connect> Layer<S> for StackLayer<C> {
    type Service = StackService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        let inner = self.pool.layer(inner);
        let inner = self.retry.layer(inner);
        let inner = self.cache.layer(inner);
        let inner = self.timeout.layer(inner);
        let inner = self.error.layer(inner);
        self.shutdown.layer(inner)
    }
}
