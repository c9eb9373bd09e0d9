//! The whole lifecycle in one call: serve HTTP/1.1 with protective timeouts and a connection
//! cap, and shut down in order on a signal (feature `serve`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use ballast_core::http::Problem;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tower_service::Service;

use crate::coordinator::{Shutdown, ShutdownHandle};

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

type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

/// How long a connection may go on sending a request's header once the drain has begun: a
/// client in the middle of an ordinary one is done within it; one that is not is a slow or
/// stalled client, closed rather than waited for.
const DRAIN_HEADER_GRACE: Duration = Duration::from_secs(1);

/// How often a new connection held at the cap looks again for an idle connection to close, when
/// every connection was busy.
const CAP_RETRY: Duration = Duration::from_millis(50);

/// What a connection is doing, for its timeouts and for the cap.
/// Between requests: closed after `idle_timeout`, or to admit a new connection at the cap.
const IDLE: u8 = 0;
/// Reading a request's header: closed after `header_read_timeout`.
const READING_HEAD: u8 = 1;
/// A request in progress: never closed by a timeout or for the cap.
const BUSY: u8 = 2;
/// Accepted, nothing received yet: closed after `header_read_timeout`, or for the cap.
const FRESH: u8 = 3;
/// Chosen to be closed for the cap.
const CLOSING: u8 = 4;

/// One connection's activity: shared by its I/O (which sees the first byte of a request), its
/// service (which sees a request start and its response end), its watchdog and the cap.
struct Activity {
    opened: Instant,
    state: AtomicU8,
    /// When the state last changed, in milliseconds since `opened`.
    since: AtomicU64,
    in_flight: AtomicUsize,
    /// Told when the connection is chosen to be closed for the cap.
    close: Notify,
}

impl Activity {
    fn new() -> Self {
        Activity {
            opened: Instant::now(),
            state: AtomicU8::new(FRESH),
            since: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            close: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn set(&self, state: u8) {
        self.since.store(self.now(), Ordering::Release);
        self.state.store(state, Ordering::Release);
    }

    /// Moves from `from` to `to` unless the state changed meanwhile (the cap chose it, or a
    /// request began).
    fn change(&self, from: u8, to: u8) -> bool {
        let changed = self
            .state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if changed {
            self.since.store(self.now(), Ordering::Release);
        }
        changed
    }

    /// Bytes arrived: on an idle or new connection they start a request's header.
    fn read(&self) {
        if let state @ (IDLE | FRESH) = self.state.load(Ordering::Acquire) {
            self.change(state, READING_HEAD);
        }
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.set(BUSY);
    }

    fn response_done(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.set(IDLE);
        }
    }

    /// Resolves, with the name of the limit, when the connection has been idle or reading a
    /// header for longer than `config` allows.
    ///
    /// Nothing wakes it when the state changes (that would cost every request a task wake-up):
    /// it looks at least every half of the shorter limit, so a limit is enforced within one and a
    /// half times its length.
    async fn expired(&self, config: &ServeConfig) -> &'static str {
        let tick = [config.idle_timeout, config.header_read_timeout]
            .into_iter()
            .filter(|limit| !limit.is_zero())
            .min()
            .map_or(Duration::from_secs(3600), |limit| limit / 2);
        loop {
            let since = Duration::from_millis(self.since.load(Ordering::Acquire));
            let (limit, name) = match self.state.load(Ordering::Acquire) {
                IDLE => (config.idle_timeout, "idle_timeout"),
                READING_HEAD => (config.header_read_timeout, "header_read_timeout"),
                // Nothing sent since accept: both limits run from it; the shorter one applies.
                FRESH
                    if config.header_read_timeout.is_zero()
                        || (!config.idle_timeout.is_zero()
                            && config.idle_timeout < config.header_read_timeout) =>
                {
                    (config.idle_timeout, "idle_timeout")
                }
                FRESH => (
                    config.header_read_timeout,
                    "header_read_timeout (nothing sent since accept)",
                ),
                _ => (Duration::ZERO, ""),
            };
            let now = Instant::now();
            let next_look = now + tick;
            if !limit.is_zero() {
                let deadline = self.opened + since + limit;
                if now >= deadline {
                    return name;
                }
                tokio::time::sleep_until(deadline.min(next_look).into()).await;
            } else {
                tokio::time::sleep_until(next_look.into()).await;
            }
        }
    }
}

/// The open connections' activities, for the cap to choose one to close.
#[derive(Default)]
struct Registry {
    open: Mutex<HashMap<u64, Arc<Activity>>>,
    next: AtomicU64,
}

impl Registry {
    fn insert(self: &Arc<Self>, activity: Arc<Activity>) -> Entry {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, activity);
        Entry {
            registry: Arc::clone(self),
            id,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Chooses the connection idle longest — never sent a request, or between requests — tells
    /// it to close, and says which kind it was; `None` if every connection is busy.
    fn close_longest_idle(&self) -> Option<u8> {
        let open = self.lock();
        let mut candidates: Vec<(Instant, u8, &Arc<Activity>)> = open
            .values()
            .filter_map(|activity| {
                let state = activity.state.load(Ordering::Acquire);
                matches!(state, IDLE | FRESH).then(|| {
                    let since = Duration::from_millis(activity.since.load(Ordering::Acquire));
                    (activity.opened + since, state, activity)
                })
            })
            .collect();
        candidates.sort_unstable_by_key(|(since, _, _)| *since);
        // A request may begin between the look and the choice: then the next one.
        candidates.into_iter().find_map(|(_, state, activity)| {
            activity.change(state, CLOSING).then(|| {
                activity.close.notify_one();
                state
            })
        })
    }
}

impl Registry {
    /// While draining: closes every connection that is not in a request — none sent yet, between
    /// requests, or reading a header for longer than `grace`.
    fn close_waiting(&self, grace: Duration) {
        let open = self.lock();
        for activity in open.values() {
            let state = activity.state.load(Ordering::Acquire);
            let since = Duration::from_millis(activity.since.load(Ordering::Acquire));
            let waiting = match state {
                FRESH | IDLE => true,
                READING_HEAD => activity.opened.elapsed().saturating_sub(since) >= grace,
                _ => false,
            };
            if waiting && activity.change(state, CLOSING) {
                activity.close.notify_one();
            }
        }
    }
}

/// A connection's place in the [`Registry`], given up when its task ends.
struct Entry {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

/// What the cap did since it last said so: logged at most every [`LOG_EVERY`].
#[derive(Default)]
struct CapLog {
    said: Option<Instant>,
    silent: u64,
    idle: u64,
    waited: u64,
}

impl CapLog {
    fn note(&mut self, closed: Option<u8>, max_connections: usize) {
        match closed {
            Some(FRESH) => self.silent += 1,
            Some(_) => self.idle += 1,
            None => self.waited += 1,
        }
        if self.said.is_some_and(|at| at.elapsed() < LOG_EVERY) {
            return;
        }
        self.said = Some(Instant::now());
        if self.silent + self.idle > 0 {
            tracing::warn!(
                max_connections,
                never_sent_a_request = self.silent,
                idle_between_requests = self.idle,
                "connection cap reached: closed {} idle connections to admit new ones",
                self.silent + self.idle
            );
        }
        if self.waited > 0 {
            tracing::warn!(
                max_connections,
                "connection cap reached with every connection busy: new connections wait until one closes"
            );
        }
        (self.silent, self.idle, self.waited) = (0, 0, 0);
    }
}

impl fmt::Debug for Activity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Activity")
            .field("state", &self.state.load(Ordering::Relaxed))
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

pin_project_lite::pin_project! {
    /// A connection's socket that tells its [`Activity`] when bytes arrive.
    struct Watched {
        #[pin]
        inner: TcpStream,
        activity: Arc<Activity>,
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = ready!(this.inner.poll_read(cx, buf));
        if buf.filled().len() > before {
            this.activity.read();
        }
        Poll::Ready(result)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The application's service, telling the connection's [`Activity`] when a request starts and
/// when its response has been sent.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, B> Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<TrackedBody<Either<B, Full<Bytes>>>>;
    type Error = Infallible;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let guard = ResponseGuard {
            activity: Arc::clone(&self.activity),
        };
        self.activity.request_started();
        let kind = match host_problem(&request) {
            None => Kind::Called {
                future: self.inner.call(request),
            },
            Some(problem) => {
                let head = request.method() == http::Method::HEAD;
                let mut response = problem.to_response(head, None);
                response
                    .headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                Kind::Refused {
                    response: Some(response),
                }
            }
        };
        TrackedFuture {
            kind,
            guard: Some(guard),
        }
    }
}

/// Why a request's `Host` makes it malformed (RFC 9112 §3.2: a server must answer 400 to an
/// HTTP/1.1 request without one, and to any request with more than one or an invalid one; an
/// `http` URI's host may not be empty, RFC 9110 §4.2.1). `Host` names the resource — caches
/// key on it — so a request that gets it wrong is refused before the application sees it.
fn host_problem<B>(request: &Request<B>) -> Option<Problem> {
    let mut hosts = request.headers().get_all(http::header::HOST).iter();
    let detail = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => "The request has more than one Host header.",
        (None, _) if request.version() == http::Version::HTTP_11 => {
            "An HTTP/1.1 request must have a Host header."
        }
        (Some(host), None) if !valid_host(host.as_bytes()) => {
            "The request's Host header is empty or not a valid host."
        }
        _ => return None,
    };
    Some(Problem::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", detail))
}

/// A `Host` value: `uri-host [ ":" port ]`, the host not empty.
fn valid_host(host: &[u8]) -> bool {
    !host.is_empty()
        && std::str::from_utf8(host)
            .ok()
            .and_then(|host| host.parse::<http::uri::Authority>().ok())
            .is_some_and(|authority| {
                !authority.host().is_empty() && !authority.as_str().contains('@')
            })
}

pin_project_lite::pin_project! {
    /// The response future of [`Tracked`]: the guard moves into the response body.
    struct TrackedFuture<F> {
        #[pin]
        kind: Kind<F>,
        guard: Option<ResponseGuard>,
    }
}

pin_project_lite::pin_project! {
    /// The application's answer, or the server's own to a malformed request.
    #[project = KindProj]
    enum Kind<F> {
        Called { #[pin] future: F },
        Refused { response: Option<Response<Full<Bytes>>> },
    }
}

impl<F, B> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = Result<Response<TrackedBody<Either<B, Full<Bytes>>>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match this.kind.project() {
            KindProj::Called { future } => ready!(future.poll(cx))?.map(Either::Left),
            KindProj::Refused { response } => response
                .take()
                .unwrap_or_else(|| unreachable!("polled after completion"))
                .map(Either::Right),
        };
        let guard = this
            .guard
            .take()
            .unwrap_or_else(|| unreachable!("polled after completion"));
        Poll::Ready(Ok(response.map(|body| TrackedBody {
            inner: body,
            _guard: guard,
        })))
    }
}

/// Ends a request's part in its connection's activity when dropped: with its response body (sent
/// or abandoned), or with the request's future if it never answered.
struct ResponseGuard {
    activity: Arc<Activity>,
}

impl Drop for ResponseGuard {
    fn drop(&mut self) {
        self.activity.response_done();
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its request's [`ResponseGuard`] until it is dropped.
    struct TrackedBody<B> {
        #[pin]
        inner: B,
        _guard: ResponseGuard,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
