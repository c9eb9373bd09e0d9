//! [`Rewrite`]: the PostgreSQL protocol stream that keeps every named statement within one
//! exchange (see the module above).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Rewritten requests queued past this many bytes make a write wait for the socket.
const HIGH_WATER: usize = 64 * 1024;

/// The protocol rewriting of the module docs, over a connection to PgBouncer.
pub(crate) struct Rewrite<S> {
    inner: S,
    /// Whether the first (untyped) message — the startup packet, or a cancel request — has gone.
    started: bool,
    /// Whether that message was a cancel request.
    cancel: bool,
    /// Frontend bytes that do not make a whole message yet.
    incoming: BytesMut,
    /// Rewritten frontend bytes not yet written to `inner`.
    outgoing: BytesMut,
    /// Each named statement's `Parse` body after the name: the text and parameter types.
    statements: HashMap<Box<[u8]>, Box<[u8]>>,
    /// Which named statement the server's unnamed statement holds within the current exchange.
    unnamed: Option<Box<[u8]>>,
    /// Backend bytes read and not yet passed on.
    read: BytesMut,
    /// Bytes of the current backend message still to pass on.
    passing: usize,
    /// Per exchange (ended by `Sync` or a simple query), per `Parse` sent in it, whose it is.
    /// The back is the open exchange.
    parses: VecDeque<VecDeque<Parse>>,
}

/// A `Parse` whose answer is awaited.
#[derive(Debug, PartialEq, Eq)]
enum Parse {
    /// Added here: its `ParseComplete` is dropped.
    Ours,
    /// The client's, with the name it prepared (forgotten if the server never parses it).
    Theirs(Option<Box<[u8]>>),
}

impl<S> Rewrite<S> {
    pub(crate) fn new(inner: S) -> Self {
        Rewrite {
            inner,
            started: false,
            cancel: false,
            incoming: BytesMut::new(),
            outgoing: BytesMut::new(),
            statements: HashMap::new(),
            unnamed: None,
            read: BytesMut::new(),
            passing: 0,
            parses: VecDeque::from([VecDeque::new()]),
        }
    }

    /// Rewrites every whole frontend message in `incoming` into `outgoing`.
    fn rewrite(&mut self) -> io::Result<()> {
        loop {
            if !self.started {
                let Some(len) = length(&self.incoming, 0) else {
                    return Ok(());
                };
                if self.incoming.len() < len {
                    return Ok(());
                }
                let message = self.incoming.split_to(len);
                // CancelRequest: length 16, code 80877102.
                self.cancel = message.get(4..8) == Some(&[0x04, 0xd2, 0x16, 0x2e][..]);
                self.outgoing.extend_from_slice(&message);
                self.started = true;
                continue;
            }
            let Some(len) = length(&self.incoming, 1) else {
                return Ok(());
            };
            if self.incoming.len() < 1 + len {
                return Ok(());
            }
            let message = self.incoming.split_to(1 + len);
            self.frontend(message[0], &message[5..])?;
        }
    }

    /// One frontend message: `kind` and its body.
    fn frontend(&mut self, kind: u8, body: &[u8]) -> io::Result<()> {
        match kind {
            b'P' => {
                let (name, rest) = cstr(body)?;
                self.expect_parse(Parse::Theirs((!name.is_empty()).then(|| name.into())));
                if name.is_empty() {
                    self.unnamed = None;
                    put(&mut self.outgoing, b'P', &[body]);
                } else {
                    put(&mut self.outgoing, b'P', &[b"\0", rest]);
                    self.statements.insert(name.into(), rest.into());
                    self.unnamed = Some(name.into());
                }
            }
            b'B' => {
                let (portal, rest) = cstr(body)?;
                let (statement, rest) = cstr(rest)?;
                if self.hold(statement) {
                    put(&mut self.outgoing, b'B', &[portal, b"\0\0", rest]);
                } else {
                    put(&mut self.outgoing, b'B', &[body]);
                }
            }
            b'D' if body.first() == Some(&b'S') => {
                let (statement, _) = cstr(&body[1..])?;
                if self.hold(statement) {
                    put(&mut self.outgoing, b'D', &[b"S\0"]);
                } else {
                    put(&mut self.outgoing, b'D', &[body]);
                }
            }
            b'C' if body.first() == Some(&b'S') => {
                let (statement, _) = cstr(&body[1..])?;
                if !statement.is_empty() {
                    self.statements.remove(statement);
                }
                self.unnamed = None;
                put(&mut self.outgoing, b'C', &[b"S\0"]);
            }
            b'S' | b'Q' => {
                put(&mut self.outgoing, kind, &[body]);
                self.parses.push_back(VecDeque::new());
                self.unnamed = None;
            }
            _ => put(&mut self.outgoing, kind, &[body]),
        }
        Ok(())
    }

    /// Makes the server's unnamed statement hold `statement` in this exchange, sending its
    /// `Parse` when it does not yet. Returns whether the message may name the unnamed statement
    /// instead; `false` for the unnamed statement itself and for a name never prepared (the
    /// server then reports it as it would).
    fn hold(&mut self, statement: &[u8]) -> bool {
        if statement.is_empty() {
            return false;
        }
        if self.unnamed.as_deref() == Some(statement) {
            return true;
        }
        let Some(parse) = self.statements.get(statement) else {
            return false;
        };
        put(&mut self.outgoing, b'P', &[b"\0", parse]);
        self.expect_parse(Parse::Ours);
        self.unnamed = Some(statement.into());
        true
    }

    fn expect_parse(&mut self, parse: Parse) {
        if let Some(open) = self.parses.back_mut() {
            open.push_back(parse);
        }
    }

    /// Looks at the backend message starting `read`; returns whether it is dropped.
    fn backend(&mut self, kind: u8) -> bool {
        match kind {
            // ParseComplete.
            b'1' => self.parses.front_mut().and_then(VecDeque::pop_front) == Some(Parse::Ours),
            // ErrorResponse: the server skips the rest of the exchange, our `Parse`s included. A
            // statement of the client's not parsed yet never will be: it is forgotten (the
            // client never closes a statement whose preparation failed).
            b'E' => {
                if let Some(front) = self.parses.front_mut() {
                    for parse in front.drain(..) {
                        if let Parse::Theirs(Some(name)) = parse {
                            self.statements.remove(&name);
                        }
                    }
                }
                false
            }
            // ReadyForQuery: an exchange ended (the one after startup answers none).
            b'Z' => {
                if self.parses.len() > 1 {
                    self.parses.pop_front();
                }
                false
            }
            _ => false,
        }
    }
}

/// The length field of a message whose header starts at `at` (4 bytes, counting itself), if
/// whole; a length under 4 is read as 4 (the message is then malformed and the server says so).
fn length(buf: &[u8], at: usize) -> Option<usize> {
    let field: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
    Some((u32::from_be_bytes(field) as usize).max(4))
}

/// A nul-terminated string at the start of `body`, and the rest after the nul.
fn cstr(body: &[u8]) -> io::Result<(&[u8], &[u8])> {
    let end = body.iter().position(|&b| b == 0).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "malformed frontend message: a string has no terminator",
        )
    })?;
    Ok((&body[..end], &body[end + 1..]))
}

/// Appends a message of `kind` whose body is `parts`, in order.
fn put(out: &mut BytesMut, kind: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|part| part.len()).sum();
    out.reserve(5 + len);
    out.put_u8(kind);
    // Bodies come from messages that had a u32 length; the two added bytes of a rewritten `Bind`
    // cannot overflow one.
    out.put_u32(u32::try_from(4 + len).unwrap_or(u32::MAX));
    for part in parts {
        out.extend_from_slice(part);
    }
}

impl<S: AsyncWrite + Unpin> Rewrite<S> {
    /// Writes queued bytes; `Ready` once none are left.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.outgoing.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.outgoing))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewrite<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let start = buf.filled().len();
        loop {
            if this.passing > 0 && !this.read.is_empty() {
                let n = this.passing.min(this.read.len()).min(buf.remaining());
                if n == 0 {
                    return Poll::Ready(Ok(()));
                }
                buf.put_slice(&this.read[..n]);
                this.read.advance(n);
                this.passing -= n;
                continue;
            }
            if this.passing == 0 {
                if let Some(len) = length(&this.read, 1) {
                    let kind = this.read[0];
                    if this.backend(kind) {
                        // A `ParseComplete` has no body: it is whole once its header is.
                        this.read.advance(5);
                    } else {
                        this.passing = 1 + len;
                    }
                    continue;
                }
            }
            if buf.filled().len() > start || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // Straight into the caller's buffer while inside a message being passed on.
            if this.passing > 0 {
                let limit = this.passing.min(buf.remaining());
                let mut limited = ReadBuf::new(buf.initialize_unfilled_to(limit));
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut limited))?;
                let n = limited.filled().len();
                buf.advance(n);
                this.passing -= n;
                return Poll::Ready(Ok(()));
            }
            let mut scratch = [0u8; 8192];
            let mut chunk = ReadBuf::new(&mut scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            if chunk.filled().is_empty() {
                // End of stream.
                return Poll::Ready(Ok(()));
            }
            this.read.extend_from_slice(chunk.filled());
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Rewrite<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.poll_drain(cx)?.is_pending() && this.outgoing.len() >= HIGH_WATER {
            return Poll::Pending;
        }
        this.incoming.extend_from_slice(buf);
        this.rewrite()?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// After a cancel request, waits for PgBouncer to close the connection instead of closing
    /// it (TLS's `close_notify` included): PgBouncer reads our close as the client leaving and
    /// drops the cancel it was forwarding.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        if !self.cancel {
            return Pin::new(&mut self.inner).poll_shutdown(cx);
        }
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        let mut scratch = [0u8; 64];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut self.inner).poll_read(cx, &mut buf)) {
                Ok(()) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Ok(()) => {}
                // Closed without TLS's goodbye: closed all the same.
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    return Poll::Ready(Ok(()))
                }
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put(&mut out, kind, &[body]);
        out.to_vec()
    }

    fn messages(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = length(bytes, 1).unwrap();
            out.push((bytes[0], bytes[5..1 + len].to_vec()));
            bytes = &bytes[1 + len..];
        }
        out
    }

    fn started() -> Rewrite<()> {
        let mut rewrite = Rewrite::new(());
        rewrite.started = true;
        rewrite
    }

    fn send(rewrite: &mut Rewrite<()>, bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        rewrite.incoming.extend_from_slice(bytes);
        rewrite.rewrite().unwrap();
        messages(&rewrite.outgoing.split())
    }

    #[test]
    fn a_named_statement_is_sent_unnamed_with_each_use() {
        let mut rewrite = started();
        let parse = b"s1\0SELECT $1\0\0\x01\0\0\0\x17";
        let mut prepare = message(b'P', parse);
        prepare.extend(message(b'D', b"Ss1\0"));
        prepare.extend(message(b'S', b""));
        let sent = send(&mut rewrite, &prepare);
        assert_eq!(
            sent,
            vec![
                (b'P', b"\0SELECT $1\0\0\x01\0\0\0\x17".to_vec()),
                (b'D', b"S\0".to_vec()),
                (b'S', vec![]),
            ]
        );
        // The next exchange may reach another server: the Parse goes again, unnamed.
        let mut run = message(b'B', b"\0s1\0\0\0\0\x01\0\0\0\x01x\0\0");
        run.extend(message(b'E', b"\0\0\0\0\0"));
        run.extend(message(b'S', b""));
        let sent = send(&mut rewrite, &run);
        assert_eq!(sent[0], (b'P', b"\0SELECT $1\0\0\x01\0\0\0\x17".to_vec()));
        assert_eq!(sent[1], (b'B', b"\0\0\0\0\0\x01\0\0\0\x01x\0\0".to_vec()));
        assert_eq!(sent.len(), 4);
        // Answers: the first exchange's ParseComplete passes, the second's is ours.
        assert!(!rewrite.backend(b'1'));
        assert!(!rewrite.backend(b'Z'));
        assert!(rewrite.backend(b'1'));
        assert!(!rewrite.backend(b'2'));
        assert!(!rewrite.backend(b'Z'));
        // Close forgets the statement; a later Bind of it reaches the server under its name.
        let sent = send(&mut rewrite, &message(b'C', b"Ss1\0"));
        assert_eq!(sent, vec![(b'C', b"S\0".to_vec())]);
        let sent = send(&mut rewrite, &message(b'B', b"\0s1\0\0\0\0\0\0\0"));
        assert_eq!(sent, vec![(b'B', b"\0s1\0\0\0\0\0\0\0".to_vec())]);
    }

    #[test]
    fn an_error_drops_the_expectations_of_its_exchange() {
        let mut rewrite = started();
        send(&mut rewrite, &message(b'P', b"s1\0SELECT 1\0\0\0"));
        send(&mut rewrite, &message(b'S', b""));
        let mut run = message(b'B', b"\0s1\0\0\0\0\0\0\0");
        run.extend(message(b'S', b""));
        run.extend(message(b'B', b"\0s1\0\0\0\0\0\0\0"));
        run.extend(message(b'S', b""));
        send(&mut rewrite, &run);
        assert!(!rewrite.backend(b'1'));
        assert!(!rewrite.backend(b'Z'));
        // The injected Parse failed: nothing else of that exchange answers.
        assert!(!rewrite.backend(b'E'));
        assert!(!rewrite.backend(b'Z'));
        // The next exchange's injected ParseComplete is still recognised.
        assert!(rewrite.backend(b'1'));
    }

    #[test]
    fn a_statement_the_server_refused_is_forgotten() {
        let mut rewrite = started();
        let mut prepare = message(b'P', b"s9\0SELEC 1\0\0\0");
        prepare.extend(message(b'D', b"Ss9\0"));
        prepare.extend(message(b'S', b""));
        send(&mut rewrite, &prepare);
        assert!(rewrite.statements.contains_key(&b"s9"[..]));
        assert!(!rewrite.backend(b'E'));
        assert!(!rewrite.backend(b'Z'));
        assert!(rewrite.statements.is_empty());
    }

    #[test]
    fn the_startup_packet_passes_untouched_in_pieces() {
        let mut rewrite = Rewrite::new(());
        let startup = b"\0\0\0\x10\0\x03\0\0user\0u\0\0";
        rewrite.incoming.extend_from_slice(&startup[..3]);
        rewrite.rewrite().unwrap();
        assert!(rewrite.outgoing.is_empty());
        rewrite.incoming.extend_from_slice(&startup[3..]);
        rewrite.rewrite().unwrap();
        assert_eq!(&rewrite.outgoing[..], &startup[..]);
        assert!(rewrite.started);
    }
}
