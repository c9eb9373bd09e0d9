//! The application's service as a connection runs it: the `Host` check, and telling the
//! connection's activity when a request starts and when its response has been sent.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll, Waker};

use ballast_core::http::Problem;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tower_service::Service;

use super::connection::Activity;
use super::stream::{self, Room, Stream};

/// The application's service, telling the connection's [`Activity`] when a request starts and
/// when its response has been sent.
///
/// One per connection, serving each of its requests with the connection's own copy of the
/// application's service: a request does not clone the whole stack (hyper-util's
/// `TowerToHyperService` and `axum::serve` do, bumping every layer's shared counters on every
/// core). The lock is the connection's own, uncontended: HTTP/1.1 calls one request at a time,
/// and HTTP/2 calls from its connection's task.
pub(super) struct Tracked<S> {
    pub(super) inner: Mutex<S>,
    pub(super) activity: Arc<Activity>,
}

impl<S> Tracked<S>
where
    S: Service<Request<Incoming>, Error = Infallible> + Clone,
{
    /// Calls the connection's service when it is ready now (an axum `Router` always is) and,
    /// for an HTTP/2 stream, its connection's unsent bytes let the handler start; else a copy
    /// of it once both are so.
    fn start(&self, request: Request<Incoming>, stream: Option<&Arc<Stream>>) -> Call<S> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(stream) = stream.filter(|stream| !stream.may_start()) {
            return Call::Waiting {
                service: Some(inner.clone()),
                request: Some(request),
                room: Some(Room::new(Arc::clone(stream))),
            };
        }
        let mut cx = Context::from_waker(Waker::noop());
        match inner.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => Call::Called {
                future: inner.call(request),
            },
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => Call::Waiting {
                service: Some(inner.clone()),
                request: Some(request),
                room: None,
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The service's answer to one request: its future, or a copy of the service waiting to be
    /// ready first (and, on HTTP/2, for room in its connection's unsent bytes).
    #[project = CallProj]
    pub(super) enum Call<S: Service<Request<Incoming>>> {
        Called { #[pin] future: S::Future },
        Waiting {
            service: Option<S>,
            request: Option<Request<Incoming>>,
            room: Option<Room>,
        },
    }
}

impl<S> Future for Call<S>
where
    S: Service<Request<Incoming>>,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let future = match self.as_mut().project() {
                CallProj::Called { future } => return future.poll(cx),
                CallProj::Waiting {
                    service,
                    request,
                    room,
                } => {
                    if let Some(waiting) = room {
                        ready!(waiting.poll_start(cx));
                        *room = None;
                    }
                    let service = service
                        .as_mut()
                        .unwrap_or_else(|| unreachable!("called once"));
                    ready!(service.poll_ready(cx))?;
                    service.call(
                        request
                            .take()
                            .unwrap_or_else(|| unreachable!("called once")),
                    )
                }
            };
            self.set(Call::Called { future });
        }
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<TrackedBody<Either<B, Full<Bytes>>>>;
    type Error = Infallible;
    type Future = TrackedFuture<Call<S>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let guard = ResponseGuard {
            activity: Arc::clone(&self.activity),
        };
        self.activity.request_started();
        let stream = (request.version() == http::Version::HTTP_2).then(|| {
            self.activity
                .multiplexed
                .store(true, std::sync::atomic::Ordering::Relaxed);
            Stream::announce(&self.activity)
        });
        let websocket = request
            .headers()
            .get(http::header::UPGRADE)
            .is_some_and(|upgrade| upgrade.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let kind = match host_problem(&request) {
            None => Kind::Called {
                future: self.start(request, stream.as_ref()),
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
            websocket,
            stream,
        }
    }
}

/// Why a request's `Host` makes it malformed (RFC 9112 §3.2: a server must answer 400 to an
/// HTTP/1.1 request without one, and to any request with more than one or an invalid one; an
/// `http` URI's host may not be empty, RFC 9110 §4.2.1). `Host` names the resource — caches
/// key on it — so a request that gets it wrong is refused before the application sees it.
///
/// An HTTP/2 request names its host in `:authority` (hyper puts it in the URI), or in `Host`:
/// with neither, or with both and different, it is malformed (RFC 9113 §8.3.1), and the
/// application would read one name where a cache keyed on the other.
pub(super) fn host_problem<B>(request: &Request<B>) -> Option<Problem> {
    let mut hosts = request.headers().get_all(http::header::HOST).iter();
    let (host, second) = (hosts.next(), hosts.next());
    let detail = match (host, second) {
        (Some(_), Some(_)) => "The request has more than one Host header.",
        (None, _) if request.version() == http::Version::HTTP_11 => {
            "An HTTP/1.1 request must have a Host header."
        }
        (Some(host), None) if !valid_host(host.as_bytes()) => {
            "The request's Host header is empty or not a valid host."
        }
        _ if request.version() == http::Version::HTTP_2
            && request.method() != http::Method::CONNECT =>
        {
            match (request.uri().authority(), host) {
                (None, None) => "An HTTP/2 request must have an :authority or a Host header.",
                (Some(authority), Some(host))
                    if !authority
                        .as_str()
                        .as_bytes()
                        .eq_ignore_ascii_case(host.as_bytes()) =>
                {
                    "The request's Host header differs from its :authority."
                }
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(Problem::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", detail))
}

/// A `Host` value: `uri-host [ ":" port ]`, the host not empty.
pub(super) fn valid_host(host: &[u8]) -> bool {
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
    pub(super) struct TrackedFuture<F> {
        #[pin]
        kind: Kind<F>,
        guard: Option<ResponseGuard>,
        websocket: bool,
        stream: Option<Arc<Stream>>,
    }
}

pin_project_lite::pin_project! {
    /// The application's answer, or the server's own to a malformed request.
    #[project = KindProj]
    pub(super) enum Kind<F> {
        Called { #[pin] future: F },
        Refused { response: Option<Response<Full<Bytes>>> },
    }
}

impl<F, B> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: Body,
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
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            // The connection becomes the application's once this head is out (the socket
            // follows the WebSocket's frames from the head's end).
            guard.activity.upgrade.store(
                if *this.websocket {
                    super::connection::WEBSOCKET
                } else {
                    super::connection::UPGRADE_PENDING
                },
                std::sync::atomic::Ordering::Release,
            );
        }
        let stream = this.stream.take();
        if let Some(stream) = &stream {
            let hint = match response.body() {
                Either::Left(body) => body.size_hint(),
                Either::Right(body) => body.size_hint(),
            };
            stream.answered(usize::try_from(hint.lower()).unwrap_or(usize::MAX));
        }
        Poll::Ready(Ok(response.map(|body| TrackedBody {
            inner: body,
            _guard: guard,
            stream,
            rest: Bytes::new(),
        })))
    }
}

/// Ends a request's part in its connection's activity when dropped: with its response body (sent
/// or abandoned), or with the request's future if it never answered.
pub(super) struct ResponseGuard {
    pub(super) activity: Arc<Activity>,
}

impl Drop for ResponseGuard {
    fn drop(&mut self) {
        self.activity.response_done();
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its request's [`ResponseGuard`] until it is dropped; on
    /// HTTP/2 it hands its data on in pieces of [`stream::PIECE`] and tells its [`Stream`] how
    /// it moves.
    pub(super) struct TrackedBody<B> {
        #[pin]
        inner: B,
        _guard: ResponseGuard,
        stream: Option<Arc<Stream>>,
        // What is left of a chunk cut into pieces.
        rest: Bytes,
    }
}

impl<B: Body<Data = Bytes>> Body for TrackedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let Some(stream) = this.stream else {
            return this.inner.poll_frame(cx);
        };
        stream.asked();
        let data = if this.rest.is_empty() {
            match ready!(this.inner.poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => stream::piece(data, this.rest),
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                other => return Poll::Ready(other),
            }
        } else {
            stream::piece(std::mem::take(this.rest), this.rest)
        };
        stream.handed(data.len());
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        if !self.rest.is_empty() {
            let rest = self.rest.len() as u64;
            hint.set_lower(hint.lower().saturating_add(rest));
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper.saturating_add(rest));
            }
        }
        hint
    }
}
