//! The whole lifecycle in one call: serve HTTP/1.1, HTTP/2 (feature `http2`) and upgrades
//! with protective timeouts and a connection cap, on any listener, and shut down in order on a
//! signal (feature `serve`).
//!
//! `mod.rs` holds the settings and the accept loop; `listener.rs` the listeners; `connection.rs`
//! what each connection is doing (its state, its watchdog, the registry the connection cap
//! chooses from); `io.rs` its socket (the first byte of a request, writes the client does not
//! take, a WebSocket's goodbye); `service.rs` the application's service as each connection runs
//! it (the `Host` check, the request's start and its response's end); `stream.rs` an HTTP/2
//! stream's response (its unsent bytes, the task that resets it once stalled).

mod connection;
mod io;
mod listener;
mod service;
mod stream;

pub use listener::Listener;

use std::convert::Infallible;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
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
/// Default [`ServeConfig::send_timeout`]: half of nginx's 60 s `send_timeout`, as long as a
/// client may stall before a platform's 30 s grace period would cut it anyway.
const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`ServeConfig::http2_max_unsent_bytes`]: Envoy's default
/// `per_connection_buffer_limit_bytes`.
#[cfg(feature = "http2")]
const DEFAULT_H2_MAX_UNSENT: usize = 1 << 20;
/// How often a repeated condition (the cap reached, accept failing) is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Default [`ServeConfig::http2_max_concurrent_streams`] (nginx's `http2_max_concurrent_streams`).
#[cfg(feature = "http2")]
const DEFAULT_H2_STREAMS: u32 = 128;
/// Default [`ServeConfig::http2_keep_alive_interval`], and how long a ping's answer may take.
#[cfg(feature = "http2")]
const DEFAULT_H2_PING: Duration = Duration::from_secs(20);
/// How long an upgraded connection (a WebSocket) has, once told the server is going away, to
/// close before its socket is cut.
const UPGRADED_GRACE: Duration = Duration::from_secs(5);

use crate::serve::connection::Activity;
use crate::serve::connection::CapLog;
use crate::serve::connection::Registry;
use crate::serve::connection::CAP_RETRY;
use crate::serve::connection::DRAIN_HEADER_GRACE;
use crate::serve::connection::{GOODBYE, KILLED, NOT_UPGRADED, UPGRADED};
use crate::serve::io::Watched;
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
    send_timeout: Duration,
    #[cfg(feature = "http2")]
    h2_streams: u32,
    #[cfg(feature = "http2")]
    h2_ping: Option<Duration>,
    #[cfg(feature = "http2")]
    h2_max_unsent: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            #[cfg(feature = "http2")]
            h2_streams: DEFAULT_H2_STREAMS,
            #[cfg(feature = "http2")]
            h2_ping: Some(DEFAULT_H2_PING),
            #[cfg(feature = "http2")]
            h2_max_unsent: DEFAULT_H2_MAX_UNSENT,
        }
    }
}

impl ServeConfig {
    /// [`http2_max_unsent_bytes`](Self::http2_max_unsent_bytes); without HTTP/2, no bound (a
    /// connection serves one request at a time).
    fn max_unsent(&self) -> usize {
        #[cfg(feature = "http2")]
        return self.h2_max_unsent;
        #[cfg(not(feature = "http2"))]
        return usize::MAX;
    }

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
    /// connection is admitted by closing the connection making the least progress: first the
    /// one that has done nothing for longest — never sent a request, still in its first header,
    /// or a keep-alive connection between requests (nginx reuses its "reusable" connections the
    /// same way) — then one whose every request has waited on its client for longest (stalled
    /// for a second or more; see [`send_timeout`](Self::send_timeout)). A request being handled,
    /// or whose response the client is taking, is never cut for it. Only when every connection
    /// is making progress does a new one wait, in the listen backlog, for one to close. A
    /// warning says how many were closed and why, or that connections wait (at most every
    /// 10 s).
    ///
    /// There is no limit per client address: behind a load balancer every connection comes
    /// from the balancer's few addresses, so such a limit would refuse ordinary traffic.
    #[must_use]
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// How long a response may wait on its client (30 s by default), as nginx's `send_timeout`:
    /// a response whose next bytes the client has not taken for this long is abandoned. Over
    /// HTTP/1.1 (or when an HTTP/2 client's socket takes nothing) the connection is closed; an
    /// HTTP/2 stream whose flow-control window stays shut is reset (`RST_STREAM` with
    /// `CANCEL`) and the connection's other streams go on. The handler's own time does not
    /// count: a slow query, or a streamed body whose next part is not ready, is the
    /// application's to bound (a request timeout). A download that goes on, however slowly, is
    /// never cut by it. `Duration::ZERO` turns the limit off.
    ///
    /// Besides the limit, a response the client has taken nothing of for a second counts as
    /// stalled: a connection whose every request is stalled may be closed to admit a new one at
    /// the cap (see [`max_connections`](Self::max_connections)), and once the drain has begun
    /// an HTTP/2 stream stalled on its window is reset, so a client that stopped reading does
    /// not hold the shutdown to its deadline.
    #[must_use]
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = timeout;
        self
    }

    /// HTTP/2: the most streams a client may have open at once on one connection (128 by
    /// default; at least 1). A client that opens more gets them refused (`REFUSED_STREAM`), and
    /// hyper's protection against rapid resets (CVE-2023-44487) stays on.
    #[cfg(feature = "http2")]
    #[must_use]
    pub fn http2_max_concurrent_streams(mut self, max: u32) -> Self {
        self.h2_streams = max.max(1);
        self
    }

    /// HTTP/2: the most response bytes a connection may hold unsent before a new stream's
    /// handler waits (1 MiB by default, Envoy's per-connection buffer limit; at least 1).
    ///
    /// A handler builds its response in memory; a client that opens streams and never accepts
    /// their bodies would otherwise make the server hold every one (128 streams × a 1 MB body
    /// per connection, and as many connections as the cap allows). Past this figure, a new
    /// stream's handler starts only once the connection's unsent bytes fall back within it — a
    /// client taking its responses sees no more than a short wait — and a stream that has been
    /// stalled on the client's window for a second is reset rather than kept until the
    /// [`send_timeout`](Self::send_timeout). Within it, nothing is held back: handlers run side
    /// by side as the client asks.
    ///
    /// The bytes counted are those a response body's size hint promises and the connection has
    /// not yet taken; bodies are handed on in pieces of 16 KiB, and hyper and the kernel buffer
    /// at most a few pieces per stream beyond them. So a connection that stops reading holds
    /// about this figure plus one response, and a server at its connection cap about
    /// [`max_connections`](Self::max_connections) times that (512 × (1 MiB + the largest
    /// response) by default). A burst of streams that arrives at once, before any of them has
    /// answered, is bounded by [`http2_max_concurrent_streams`](Self::http2_max_concurrent_streams)
    /// instead, for about a second: stalled past the bound, its streams are reset.
    ///
    /// Behind a proxy that multiplexes many clients on one HTTP/2 connection, one slow client
    /// can hold its stream's bytes on the shared connection: raise the figure there so that a
    /// slow download does not hold the other clients' requests back (a streamed body of unknown
    /// length counts nothing).
    #[cfg(feature = "http2")]
    #[must_use]
    pub fn http2_max_unsent_bytes(mut self, max: usize) -> Self {
        self.h2_max_unsent = max.max(1);
        self
    }

    /// HTTP/2: how often an idle connection is pinged (20 s by default); one whose ping is not
    /// answered within as long again is closed, so dead peers do not hold connections. `None`
    /// sends no pings (the idle timeout still applies).
    #[cfg(feature = "http2")]
    #[must_use]
    pub fn http2_keep_alive_interval(mut self, interval: impl Into<Option<Duration>>) -> Self {
        self.h2_ping = interval.into();
        self
    }
}

impl Shutdown {
    /// Serves `service` on `listener` for the process's whole life, with the default
    /// [`ServeConfig`]; see [`serve_with`](Self::serve_with).
    pub async fn serve<L, S, B>(self, listener: L, service: S) -> ExitCode
    where
        L: Listener,
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

    /// Serves `service` (an axum `Router`, or any Tower service of HTTP requests) on `listener`
    /// (TCP, a Unix domain socket, any [`Listener`]) until shutdown, and returns the process's
    /// exit code.
    ///
    /// What it serves is what `axum::serve` serves: HTTP/1.1 with protocol upgrades (axum's
    /// WebSocket), and with the `http2` feature HTTP/2 over cleartext with prior knowledge,
    /// chosen per connection by its first bytes. HTTP/2 gets its own protections: at most
    /// [`http2_max_concurrent_streams`](ServeConfig::http2_max_concurrent_streams) (128) streams
    /// per connection, keep-alive pings that close dead connections, hyper's rapid-reset
    /// protection, and the header-read timeout for a connection that opens no stream.
    ///
    /// 1. listens for SIGTERM and SIGINT (Ctrl-C where Unix signals do not exist);
    /// 2. serves, with `config`'s header-read and idle timeouts and connection cap, `TCP_NODELAY`
    ///    on every connection;
    /// 3. on the first signal (or [`ShutdownHandle::trigger`]) runs the sequence of
    ///    [`run`](Self::run): readiness fails, the pre-drain delay passes while requests are
    ///    still served, the listener closes, idle connections close and busy ones finish their
    ///    request (until the drain deadline); an HTTP/2 connection gets a GOAWAY (new streams
    ///    refused, open ones finish); an upgraded WebSocket gets a close frame, 1001 "going
    ///    away", written between its own frames, and its socket is cut 5 s later if it is still
    ///    open (another upgraded protocol is cut then without a word); the hooks run in order;
    /// 4. returns [`Summary::exit_code`](crate::Summary::exit_code) as an `ExitCode` — return it
    ///    from `main`. It is 2 when the signal handlers could not be installed.
    ///
    /// The service should carry a [`ShutdownLayer`](crate::ShutdownLayer) on this same
    /// coordinator, which counts the requests in flight for the drain and refuses new ones while
    /// draining.
    pub async fn serve_with<L, S, B>(self, listener: L, service: S, config: ServeConfig) -> ExitCode
    where
        L: Listener,
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
async fn accept_loop<L, S, B>(
    mut listener: L,
    service: S,
    config: ServeConfig,
    handle: ShutdownHandle,
) where
    L: Listener,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let open = Arc::new(Registry::default());
    let draining = handle.draining();
    tokio::pin!(draining);
    let mut cap_log = CapLog::default();
    let mut last_accept_warning: Option<Instant> = None;
    #[cfg(feature = "http2")]
    let builder = Arc::new(builder(&config));
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
                let closed = open.close_for_cap();
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
        let activity = Arc::new(Activity::new(&config));
        let entry = open.insert(Arc::clone(&activity));
        let io = TokioIo::new(Watched::new(stream, Arc::clone(&activity)));
        let service = Tracked {
            inner: std::sync::Mutex::new(service.clone()),
            activity: Arc::clone(&activity),
        };
        let config = config.clone();
        let draining = handle.draining();
        #[cfg(feature = "http2")]
        let builder = Arc::clone(&builder);
        tokio::spawn(async move {
            let _slot = slot;
            let _entry = entry;
            #[cfg(feature = "http2")]
            let connection = builder.serve_connection_with_upgrades(io, service);
            #[cfg(not(feature = "http2"))]
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .with_upgrades();
            tokio::pin!(connection);
            drive(
                connection,
                |connection| connection.graceful_shutdown(),
                &activity,
                &config,
                draining,
            )
            .await;
        });
    }
    // Stop accepting: the socket closes, new connections are refused by the OS.
    drop(listener);
    // Each connection was told (hyper closes connections between requests, HTTP/2 ones get a
    // GOAWAY); those that have sent nothing, or part of a header for a while, would hold the
    // drain until their header timeout: close them too.
    loop {
        open.close_waiting(DRAIN_HEADER_GRACE);
        if open.lock().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// hyper-util's builder for HTTP/1.1 and HTTP/2, told apart by a connection's first bytes; each
/// HTTP/2 stream runs as a task watched for stalls ([`stream::StreamExecutor`]).
#[cfg(feature = "http2")]
fn builder(
    config: &ServeConfig,
) -> hyper_util::server::conn::auto::Builder<stream::StreamExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(stream::StreamExecutor);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(config.h2_streams)
        .keep_alive_interval(config.h2_ping)
        .keep_alive_timeout(config.h2_ping.unwrap_or(DEFAULT_H2_PING));
    builder
}

/// Runs one connection: until it ends, its watchdog or the cap closes it, with a graceful
/// shutdown when the drain begins; then, if it was upgraded, until the application drops its
/// socket — a WebSocket told it is going away at the drain, and cut [`UPGRADED_GRACE`] later.
async fn drive<C, E>(
    mut connection: std::pin::Pin<&mut C>,
    mut graceful_shutdown: impl FnMut(std::pin::Pin<&mut C>),
    activity: &Activity,
    config: &ServeConfig,
    draining: impl std::future::Future<Output = ()>,
) where
    C: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(draining);
    let mut told = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                break;
            }
            () = &mut draining, if !told => {
                told = true;
                activity.draining.store(true, std::sync::atomic::Ordering::Release);
                activity.wake_stalled.notify_waiters();
                graceful_shutdown(connection.as_mut());
            }
            limit = activity.expired(config) => {
                // Dropping the connection closes the socket.
                tracing::debug!(limit, "closing a connection");
                return;
            }
            () = activity.close.notified() => {
                tracing::debug!("closing an idle connection to admit a new one");
                return;
            }
        }
    }
    if activity.upgrade.load(std::sync::atomic::Ordering::Acquire) == NOT_UPGRADED {
        return;
    }
    // The application's now (axum's WebSocket): never closed by a timeout or for the cap.
    activity.set(UPGRADED);
    let closed = activity.io_closed.notified();
    tokio::pin!(closed);
    if !told {
        tokio::select! {
            () = &mut closed => return,
            () = &mut draining => {}
        }
    }
    activity.ask(GOODBYE);
    tokio::select! {
        () = &mut closed => {}
        () = tokio::time::sleep(UPGRADED_GRACE) => {
            tracing::debug!("cutting an upgraded connection still open after the drain began");
            activity.ask(KILLED);
        }
    }
}
