//! What [`Shutdown::serve`](crate::Shutdown::serve) accepts connections from: any listener, as
//! `axum::serve` takes any (`axum::serve::Listener`).

use std::future::Future;
use std::io;

use tokio::io::{AsyncRead, AsyncWrite};

/// A source of connections for [`Shutdown::serve`](crate::Shutdown::serve): TCP
/// ([`tokio::net::TcpListener`], each connection with `TCP_NODELAY`) and Unix domain sockets
/// ([`tokio::net::UnixListener`], for a sidecar proxy or a platform that hands the process a
/// socket) out of the box; implement it for anything else that accepts byte streams. The
/// connection cap, the header-read and idle timeouts and the drain apply to every connection
/// whatever its listener.
pub trait Listener: Send + 'static {
    /// A connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The address of a connection's peer, or of the listener.
    type Addr: std::fmt::Debug + Send;

    /// The next connection. An error (out of file descriptors, a connection that died in the
    /// backlog) is logged at most every 10 s, and accepting goes on after a short pause.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Io, Self::Addr)>> + Send;

    /// The address the listener is bound to.
    ///
    /// # Errors
    ///
    /// The operating system's, when it cannot say.
    fn local_addr(&self) -> io::Result<Self::Addr>;
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> io::Result<(Self::Io, Self::Addr)> {
        let (stream, peer) = tokio::net::TcpListener::accept(self).await?;
        // Responses go out as soon as they are written, not after a delayed ACK.
        let _ = stream.set_nodelay(true);
        Ok((stream, peer))
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        tokio::net::TcpListener::local_addr(self)
    }
}

#[cfg(unix)]
impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> io::Result<(Self::Io, Self::Addr)> {
        tokio::net::UnixListener::accept(self).await
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        tokio::net::UnixListener::local_addr(self)
    }
}
