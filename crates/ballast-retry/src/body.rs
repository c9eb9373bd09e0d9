//! The request body the retried service receives: recorded as it is read (replayable) or passed
//! through.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use ballast_core::BoxError;

pin_project! {
    /// A request body as [`Retry`](crate::Retry) hands it on.
    ///
    /// A body whose length is known and within the cap is recorded as the service reads it, so
    /// the request can be sent again (a retry reads the recording, then whatever the first
    /// attempt left unread); any other body streams through untouched, and that request is not
    /// retried. Nothing is read before the service asks: a handler that never reads the body is
    /// answered as soon as it returns, even when the client never sends the body it declared.
    #[project = RetryBodyProj]
    pub struct RetryBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Buffered { data: Option<Bytes> },
        Recorded { tape: Arc<Mutex<Tape<B>>>, at: usize },
        Streaming { #[pin] body: B },
    }
}

/// A body recorded as it is read, for every attempt to read from the start.
pub(crate) struct Tape<B> {
    /// What is left to read of the client's body; `None` once it ended.
    source: Option<Pin<Box<B>>>,
    frames: Vec<Bytes>,
    /// The bytes recorded.
    len: usize,
    cap: usize,
    /// Reading failed, or the body grew past the cap: no attempt after this one.
    broken: bool,
}

impl<B> RetryBody<B> {
    pub(crate) fn buffered(data: Bytes) -> Self {
        RetryBody {
            kind: Kind::Buffered {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// A body recorded as it is read, up to `cap` bytes.
    pub(crate) fn recorded(body: B, cap: usize) -> Self {
        RetryBody {
            kind: Kind::Recorded {
                tape: Arc::new(Mutex::new(Tape {
                    source: Some(Box::pin(body)),
                    frames: Vec::new(),
                    len: 0,
                    cap,
                    broken: false,
                })),
                at: 0,
            },
        }
    }

    pub(crate) fn streaming(body: B) -> Self {
        RetryBody {
            kind: Kind::Streaming { body },
        }
    }

    /// The same body from its start, for another attempt, when it can be replayed.
    pub(crate) fn replay(&self) -> Option<Self> {
        match &self.kind {
            Kind::Buffered { data } => Some(RetryBody {
                kind: Kind::Buffered { data: data.clone() },
            }),
            Kind::Recorded { tape, .. } => Some(RetryBody {
                kind: Kind::Recorded {
                    tape: Arc::clone(tape),
                    at: 0,
                },
            }),
            Kind::Streaming { .. } => None,
        }
    }

    /// Whether another attempt can read this body again: it is kept (or being kept) in memory,
    /// and reading it has not failed.
    pub fn is_buffered(&self) -> bool {
        match &self.kind {
            Kind::Buffered { .. } => true,
            Kind::Recorded { tape, .. } => !lock(tape).broken,
            Kind::Streaming { .. } => false,
        }
    }
}

fn lock<B>(tape: &Mutex<Tape<B>>) -> std::sync::MutexGuard<'_, Tape<B>> {
    tape.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<B> Body for RetryBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Buffered { data } => {
                Poll::Ready(data.take().map(|data| Ok(Frame::data(data))))
            }
            KindProj::Recorded { tape, at } => {
                let mut tape = lock(tape);
                if let Some(frame) = tape.frames.get(*at) {
                    *at += 1;
                    return Poll::Ready(Some(Ok(Frame::data(frame.clone()))));
                }
                let Some(source) = tape.source.as_mut() else {
                    return Poll::Ready(None);
                };
                loop {
                    match ready!(source.as_mut().poll_frame(cx)) {
                        None => {
                            tape.source = None;
                            return Poll::Ready(None);
                        }
                        Some(Err(error)) => {
                            tape.source = None;
                            tape.broken = true;
                            return Poll::Ready(Some(Err(error.into())));
                        }
                        Some(Ok(frame)) => {
                            // Trailers are not kept: a request's trailers are not replayed.
                            let Ok(data) = frame.into_data() else {
                                continue;
                            };
                            tape.len += data.len();
                            if tape.len > tape.cap {
                                tape.broken = true;
                                tape.frames.clear();
                            } else if !tape.broken {
                                tape.frames.push(data.clone());
                                *at += 1;
                            }
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                    }
                }
            }
            KindProj::Streaming { body } => body.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Buffered { data } => data.is_none(),
            Kind::Recorded { tape, at } => {
                let tape = lock(tape);
                *at >= tape.frames.len()
                    && tape
                        .source
                        .as_ref()
                        .is_none_or(|source| source.is_end_stream())
            }
            Kind::Streaming { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Buffered { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |data| data.len() as u64))
            }
            Kind::Recorded { tape, at } => {
                let tape = lock(tape);
                let recorded: u64 = tape.frames[(*at).min(tape.frames.len())..]
                    .iter()
                    .map(|frame| frame.len() as u64)
                    .sum();
                let rest = tape
                    .source
                    .as_ref()
                    .map_or_else(|| SizeHint::with_exact(0), |source| source.size_hint());
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + recorded);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + recorded);
                }
                hint
            }
            Kind::Streaming { body } => body.size_hint(),
        }
    }
}

impl<B> std::fmt::Debug for RetryBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Buffered { .. } => "buffered",
            Kind::Recorded { .. } => "recorded",
            Kind::Streaming { .. } => "streaming",
        };
        f.debug_struct("RetryBody").field("kind", &kind).finish()
    }
}
