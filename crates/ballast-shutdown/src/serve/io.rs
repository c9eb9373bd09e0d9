//! A connection's socket as the server sees it: it tells the connection's activity when bytes
//! arrive and when a write waits for the client to take bytes, and once the connection was upgraded to a WebSocket it can say goodbye on drain — a
//! close frame with 1001 "going away" written between the application's own frames — and be
//! cut at the end of the drain.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::connection::{Activity, GOODBYE, KILLED, UPGRADE_PENDING, WEBSOCKET};

/// A WebSocket close frame from a server (unmasked, RFC 6455 §5.5.1): status 1001, "going away".
const GOING_AWAY: [u8; 14] = [
    0x88, 12, 0x03, 0xE9, b'g', b'o', b'i', b'n', b'g', b' ', b'a', b'w', b'a', b'y',
];

pin_project_lite::pin_project! {
    /// A connection's socket that tells its [`Activity`] when bytes arrive, and speaks for an
    /// upgraded WebSocket at the drain.
    pub(super) struct Watched<IO> {
        #[pin]
        pub(super) inner: IO,
        pub(super) activity: Arc<Activity>,
        // Where the application's writes stand in the WebSocket's frames, once upgraded.
        frames: Frames,
        // How much of the close frame went out (`GOING_AWAY.len()`: all of it).
        said: usize,
    }

    impl<IO> PinnedDrop for Watched<IO> {
        fn drop(this: Pin<&mut Self>) {
            this.activity.io_closed.notify_one();
        }
    }
}

impl<IO> Watched<IO> {
    pub(super) fn new(inner: IO, activity: Arc<Activity>) -> Self {
        Watched {
            inner,
            activity,
            frames: Frames::default(),
            said: 0,
        }
    }
}

/// The server's side of a WebSocket's byte stream: the end of the `101` head, then frames (RFC
/// 6455 §5.2), so that a close frame goes in only between two of the application's frames.
#[derive(Default)]
struct Frames {
    /// How many bytes of the head's final `\r\n\r\n` were seen; 4: the head is over.
    head_end: u8,
    header: [u8; 14],
    have: usize,
    /// Bytes of the current frame's payload still to come.
    payload: u64,
}

impl Frames {
    fn at_boundary(&self) -> bool {
        self.head_end == 4 && self.have == 0 && self.payload == 0
    }

    fn feed(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.head_end < 4 {
                let want = b"\r\n\r\n"[usize::from(self.head_end)];
                self.head_end = match rest[0] {
                    byte if byte == want => self.head_end + 1,
                    b'\r' => 1,
                    _ => 0,
                };
                rest = &rest[1..];
                continue;
            }
            if self.payload > 0 {
                let take = usize::try_from(self.payload)
                    .unwrap_or(usize::MAX)
                    .min(rest.len());
                self.payload -= take as u64;
                rest = &rest[take..];
                continue;
            }
            self.header[self.have] = rest[0];
            self.have += 1;
            rest = &rest[1..];
            if self.have < 2 {
                continue;
            }
            let length = self.header[1] & 0x7F;
            let masked = self.header[1] & 0x80 != 0;
            let extended = match length {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            if self.have < 2 + extended + if masked { 4 } else { 0 } {
                continue;
            }
            self.payload = match extended {
                2 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
                8 => u64::from_be_bytes(self.header[2..10].try_into().unwrap_or([0; 8])),
                _ => u64::from(length),
            };
            self.have = 0;
        }
    }
}

impl<IO: AsyncWrite> Watched<IO> {
    /// Writes what is left of the close frame, if it is due and the application's writes are
    /// between frames. `Ready` once it is out, or when it is not due.
    fn say_goodbye(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if this.activity.upgrade.load(Ordering::Acquire) != WEBSOCKET
            || this.activity.drain.load(Ordering::Acquire) != GOODBYE
            || *this.said == GOING_AWAY.len()
            || !this.frames.at_boundary()
        {
            return Poll::Ready(Ok(()));
        }
        while *this.said < GOING_AWAY.len() {
            let written = std::task::ready!(this
                .inner
                .as_mut()
                .poll_write(cx, &GOING_AWAY[*this.said..]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *this.said += written;
        }
        tracing::debug!("told a WebSocket client the server is going away (1001)");
        this.inner.poll_flush(cx)
    }

    fn upgraded(&self) -> bool {
        self.activity.upgrade.load(Ordering::Acquire) >= UPGRADE_PENDING
    }
}

impl<IO: AsyncRead + AsyncWrite> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.upgraded() {
            self.activity.register(cx);
            if self.activity.drain.load(Ordering::Acquire) == KILLED {
                // The end of the drain: the application reads the end of the stream.
                return Poll::Ready(Ok(()));
            }
            // A write the application is not making: the goodbye goes out from here.
            if let Poll::Ready(Err(error)) = self.as_mut().say_goodbye(cx) {
                return Poll::Ready(Err(error));
            }
        }
        let this = self.project();
        let before = buf.filled().len();
        let result = std::task::ready!(this.inner.poll_read(cx, buf));
        if buf.filled().len() > before {
            this.activity.read();
        }
        Poll::Ready(result)
    }
}

impl<IO: AsyncWrite> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if !self.upgraded() {
            let this = self.project();
            let written = this.inner.poll_write(cx, buf);
            this.activity.wrote(written.is_pending());
            return written;
        }
        self.activity.register(cx);
        if self.activity.drain.load(Ordering::Acquire) == KILLED {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        std::task::ready!(self.as_mut().say_goodbye(cx))?;
        let this = self.project();
        if *this.said == GOING_AWAY.len() {
            // After its close frame a server sends nothing more (RFC 6455 §5.5.1): the
            // application's frames, its own close frame included, are not sent, and it is told
            // so rather than led to believe they went out.
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the server is shutting down: the connection was told it is going away (1001)",
            )));
        }
        let written = std::task::ready!(this.inner.poll_write(cx, buf))?;
        this.frames.feed(&buf[..written]);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.upgraded() {
            std::task::ready!(self.as_mut().say_goodbye(cx))?;
        }
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.upgraded() {
            // Frame by frame, through `poll_write`.
            let first = bufs
                .iter()
                .find(|buf| !buf.is_empty())
                .map_or(&[][..], |buf| &buf[..]);
            return self.poll_write(cx, first);
        }
        let this = self.project();
        let written = this.inner.poll_write_vectored(cx, bufs);
        this.activity.wrote(written.is_pending());
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_followed_across_writes() {
        let mut frames = Frames::default();
        frames.feed(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n");
        assert!(!frames.at_boundary(), "inside the head");
        frames.feed(b"\r\n");
        assert!(frames.at_boundary());
        // A text frame of 5 bytes, written in three pieces.
        frames.feed(&[0x81, 5, b'h']);
        assert!(!frames.at_boundary());
        frames.feed(b"ell");
        frames.feed(b"o");
        assert!(frames.at_boundary());
        // A 300-byte binary frame (16-bit length), and an empty ping.
        frames.feed(&[0x82, 126, 0x01]);
        frames.feed(&[0x2C]);
        frames.feed(&[0; 299]);
        assert!(!frames.at_boundary());
        frames.feed(&[0, 0x89, 0]);
        assert!(frames.at_boundary());
    }
}
