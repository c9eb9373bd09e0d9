//! The whole lifecycle in one call: serve HTTP/1.1 with protective timeouts and a connection
//! cap, and shut down in order on a signal (feature `serve`).
//!
//! `mod.rs` holds the settings and the accept loop; `connection.rs` what each connection is
//! doing (its state, its watchdog, the registry the connection cap chooses from); `service.rs`
//! the application's service as each connection runs it (the `Host` check, the request's
//! start and its response's end).

mod connection;
mod service;

use std::convert::Infallible;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_service::Service;

use crate::coordinator::Shutdown;
use crate::handle::ShutdownHandle;

/// Default [`ServeConfig::header_read_timeout`].
const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ServeConfig::idle_timeout`]: longer than the 60 s idle timeout of the common load
/// balancers, so they close first and never send a request on a connection being closed.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// Default [`ServeConfig::max_connections`], nginx's `worker_connections` default: far below the
/// usual 1024 open files, so the pool, the log and the listener always get theirs.
const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// How often a repeated condition (the cap reached, accept failing) is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

use crate::serve::connection::Activity;
use crate::serve::connection::CapLog;
use crate::serve::connection::Registry;
use crate::serve::connection::Watched;
use crate::serve::connection::CAP_RETRY;
use crate::serve::connection::DRAIN_HEADER_GRACE;
use crate::serve::service::Tracked;
use ballast_core::BoxError;

/// The HTTP server's protective settings for [`Shutdown::serve_with`]; every setter has a safe
/// default, so [`Shutdown::serve`] needs none.
///
/// `axum::serve` has none of these: a client that sends one header byte every few seconds holds
/// its connection forever, silent connections are never closed, and once the process runs out of
/// file descriptors it stops serving without a log line.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl ServeConfig {
    /// How long a client may take to send a request's header (10 s by default): from its first
    /// byte, and on a new connection from the moment it is accepted, so a connection that never
    /// sends anything is closed after this long too. A connection that takes longer is closed:
    /// the slowloris attack, and silent connections held open to fill the connection cap.
    /// `Duration::ZERO` turns the limit off (a new connection then has the idle timeout).
    #[must_use]
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// How long a connection may sit without a request: after it opened, or after its last
    /// response, until the next request's first byte (75 s by default — longer than a load
    /// balancer's usual 60 s, so the balancer closes first). A request in progress, however slow,
    /// is never cut by it. `Duration::ZERO` turns the limit off.
    #[must_use]
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// The most connections served at once (512 by default; at least 1). At the cap, a new
    /// connection is admitted by closing the connection that has been idle longest — one that
    /// never sent a request, or a keep-alive connection between requests (nginx reuses its
    /// "reusable" connections the same way); a connection reading a request or being answered
    /// is never closed for it. Only when every connection is busy does a new one wait, in the
    /// listen backlog, for one to close. A warning says how many were closed and why, or that
    /// connections wait (at most every 10 s).
    #[must_use]
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }
}

impl Shutdown {
    /// Serves `service` on `listener` for the process's whole life, with the default
    /// [`ServeConfig`]; see [`serve_with`](Self::serve_with).
    pub async fn serve<S, B>(self, listener: TcpListener, service: S) -> ExitCode
    where
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.serve_with(listener, service, ServeConfig::default())
            .await
    }

    /// Serves `service` (an axum `Router`, or any Tower service of HTTP requests) over HTTP/1.1
    /// on `listener` until shutdown, and returns the process's exit code. (HTTP/1.1 only, without
    /// protocol upgrades such as WebSocket: the shape of a service behind a load balancer.)
    ///
    /// 1. listens for SIGTERM and SIGINT (Ctrl-C where Unix signals do not exist);
    /// 2. serves, with `config`'s header-read and idle timeouts and connection cap, `TCP_NODELAY`
    ///    on every connection;
    /// 3. on the first signal (or [`ShutdownHandle::trigger`]) runs the sequence of
    ///    [`run`](Self::run): readiness fails, the pre-drain delay passes while requests are
    ///    still served, the listener closes, idle connections close and busy ones finish their
    ///    request (until the drain deadline), the hooks run in order;
    /// 4. returns [`Summary::exit_code`](crate::Summary::exit_code) as an `ExitCode` — return it
    ///    from `main`. It is 2 when the signal handlers could not be installed.
    ///
    /// The service should carry a [`ShutdownLayer`](crate::ShutdownLayer) on this same
    /// coordinator, which counts the requests in flight for the drain and refuses new ones while
    /// draining.
    pub async fn serve_with<S, B>(
        self,
        listener: TcpListener,
        service: S,
        config: ServeConfig,
    ) -> ExitCode
    where
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if let Err(error) = self.listen_for_signals() {
            tracing::error!(%error, "cannot listen for signals");
            return ExitCode::from(2);
        }
        let server = accept_loop(listener, service, config, self.handle());
        let summary = self.run(server).await;
        ExitCode::from(u8::try_from(summary.exit_code()).unwrap_or(1))
    }
}

/// Accepts connections until draining starts, then closes the listener and waits for the open
/// connections to finish (each after its request in progress).
async fn accept_loop<S, B>(
    listener: TcpListener,
    service: S,
    config: ServeConfig,
    handle: ShutdownHandle,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let open = Arc::new(Registry::default());
    let draining = handle.draining();
    tokio::pin!(draining);
    let mut cap_log = CapLog::default();
    let mut last_accept_warning: Option<Instant> = None;
    'serve: loop {
        let (stream, _peer) = tokio::select! {
            biased;
            () = &mut draining => break 'serve,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or a connection that died in the backlog:
                    // say so (not on every attempt) and try again shortly.
                    if last_accept_warning.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                        last_accept_warning = Some(Instant::now());
                        tracing::warn!(%error, "accepting a connection failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            // At the cap, with a connection to admit: make room by closing an idle one, or wait
            // (this one connection past the cap held, the rest in the backlog) until one closes
            // or becomes idle.
            Err(_) => loop {
                let closed = open.close_longest_idle();
                cap_log.note(closed, config.max_connections);
                let wait = if closed.is_some() {
                    Duration::from_secs(1)
                } else {
                    CAP_RETRY
                };
                tokio::select! {
                    biased;
                    () = &mut draining => break 'serve,
                    slot = Arc::clone(&slots).acquire_owned() => match slot {
                        Ok(slot) => break slot,
                        Err(_) => break 'serve,
                    },
                    () = tokio::time::sleep(wait) => {}
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let entry = open.insert(Arc::clone(&activity));
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: Arc::clone(&activity),
        });
        let service = Tracked {
            inner: service.clone(),
            activity: Arc::clone(&activity),
        };
        let connection = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, hyper_util::service::TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        let config = config.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _entry = entry;
            tokio::select! {
                result = connection => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                }
                limit = activity.expired(&config) => {
                    // Dropping the connection closes the socket.
                    tracing::debug!(limit, "closing a connection");
                }
                () = activity.close.notified() => {
                    tracing::debug!("closing an idle connection to admit a new one");
                }
            }
        });
    }
    // Stop accepting: the socket closes, new connections are refused by the OS.
    drop(listener);
    // hyper closes connections between requests; those that have sent nothing, or part of a
    // header for a while, would hold the drain until their header timeout: close them too.
    let drained = graceful.shutdown();
    tokio::pin!(drained);
    loop {
        open.close_waiting(DRAIN_HEADER_GRACE);
        tokio::select! {
            () = &mut drained => break,
            () = tokio::time::sleep(DRAIN_HEADER_GRACE / 4) => {}
        }
    }
}
