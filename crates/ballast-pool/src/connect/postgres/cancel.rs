//! Cancelling an abandoned statement as libpq's `PQcancel` does: on the host the connection is
//! on, over TLS where the pool uses it, waiting until the server has acted.

use ballast_core::Failure;

use crate::config::PoolConfig;

/// Sends PostgreSQL's cancel request for `token`'s backend and waits until the server has acted
/// on it.
///
/// tokio-postgres's own `cancel_query` returns as soon as the request is written, before the
/// server has signalled the backend: a `ROLLBACK` sent right after could then run first, and the
/// late cancel would hit the next checkout's statement instead. As libpq's `PQcancel` does, this
/// waits for the server to close the cancel connection, which it does after signalling.
pub(super) async fn postgres_cancel(
    token: &tokio_postgres::CancelToken,
    config: &PoolConfig,
    host: Option<usize>,
) -> Result<(), Failure> {
    use tokio_postgres::config::Host;
    // The host the connection is on, where the pool knows it (a URL with several hosts).
    let pg_config: tokio_postgres::Config = match (host, config.target()) {
        (Some(i), Some(target)) => target.url(Some(i)).parse()?,
        _ => config.driver_url().parse()?,
    };
    let ports = pg_config.get_ports();
    let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    let mut last = None;
    // Without the pool's note of the host (a configuration built without a URL), the first
    // host that answers gets the request (a server ignores a cancel for a backend it does not
    // have).
    for (i, host) in pg_config.get_hosts().iter().enumerate() {
        let sent = match host {
            Host::Tcp(name) => {
                let address = pg_config
                    .get_hostaddrs()
                    .get(i)
                    .map_or_else(|| name.clone(), ToString::to_string);
                match tokio::net::TcpStream::connect((address.as_str(), port(i))).await {
                    Ok(stream) => send_cancel(token, config, name, UntilClosed::new(stream)).await,
                    Err(error) => Err(Failure::from(error)),
                }
            }
            #[cfg(unix)]
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{}", port(i)));
                match tokio::net::UnixStream::connect(path).await {
                    Ok(stream) => {
                        send_cancel(token, config, "localhost", UntilClosed::new(stream)).await
                    }
                    Err(error) => Err(Failure::from(error)),
                }
            }
            #[cfg(not(unix))]
            Host::Unix(_) => continue,
        };
        match sent {
            Ok(()) => return Ok(()),
            Err(failure) => last = Some(failure),
        }
    }
    Err(last.unwrap_or_else(|| {
        Failure::new(ballast_core::Cause::InvalidConfig).with_detail("the URL names no host")
    }))
}

/// Sends the cancel request over `stream`, with the pool's TLS settings when it has any (a server
/// that requires TLS gets the cancel over TLS too).
async fn send_cancel<S>(
    token: &tokio_postgres::CancelToken,
    config: &PoolConfig,
    host: &str,
    stream: S,
) -> Result<(), Failure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if config.pgbouncer() {
        // The connection's own `sslnegotiation=direct` is ours (see `pgbouncer`): the same hook
        // negotiates TLS for the cancel request.
        use tokio_postgres::tls::MakeTlsConnect;
        let mut bouncer = crate::pgbouncer::Bouncer::new(config)?;
        let tls = MakeTlsConnect::<S>::make_tls_connect(&mut bouncer, host)?;
        return match token.cancel_query_raw(stream, tls).await {
            Ok(()) => Ok(()),
            #[cfg(feature = "tls")]
            Err(error) if config.tls().is_some() && closed_after_sending(&error) => Ok(()),
            Err(error) => Err(Failure::from(error)),
        };
    }
    #[cfg(feature = "tls")]
    if let Some(settings) = config.tls() {
        use tokio_postgres::tls::MakeTlsConnect;
        let mut make = crate::tls::MakeRustls(crate::tls::client_config(settings)?);
        let tls = <crate::tls::MakeRustls as MakeTlsConnect<S>>::make_tls_connect(&mut make, host)
            .map_err(|error| {
                Failure::new(ballast_core::Cause::InvalidConfig).with_detail(error.to_string())
            })?;
        return match token.cancel_query_raw(stream, tls).await {
            Ok(()) => Ok(()),
            // PostgreSQL closes the connection as soon as it has read a cancel request, without
            // TLS's close_notify: the reset that follows our own close is not a failure. (Had the
            // request not arrived, the ROLLBACK after it waits behind the statement and the
            // connection is closed at the reclaim deadline.)
            Err(error) if closed_after_sending(&error) => Ok(()),
            Err(error) => Err(Failure::from(error)),
        };
    }
    let _ = (config, host);
    token
        .cancel_query_raw(stream, tokio_postgres::NoTls)
        .await
        .map_err(Failure::from)
}

/// Whether a cancel request's error is the server closing the connection under our TLS close.
#[cfg(feature = "tls")]
fn closed_after_sending(error: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        source = error.source();
    }
    false
}

/// A stream whose shutdown completes only when the peer has closed the connection, without
/// closing our side first: PgBouncer reads a half-close as the client leaving and drops the
/// cancel request it was forwarding (libpq's `PQcancel` waits the same way).
struct UntilClosed<S> {
    stream: S,
}

impl<S> UntilClosed<S> {
    fn new(stream: S) -> Self {
        UntilClosed { stream }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for UntilClosed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite
    for UntilClosed<S>
{
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::{ready, Poll};
        ready!(std::pin::Pin::new(&mut self.stream).poll_flush(cx))?;
        // The server sends nothing back: the read ends when it closes the connection.
        let mut scratch = [0u8; 64];
        loop {
            let mut buf = tokio::io::ReadBuf::new(&mut scratch);
            ready!(std::pin::Pin::new(&mut self.stream).poll_read(cx, &mut buf))?;
            if buf.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
        }
    }
}
