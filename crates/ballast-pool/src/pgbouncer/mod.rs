//! `pgbouncer=true`: PostgreSQL through PgBouncer in transaction mode.
//!
//! In transaction mode PgBouncer lends a server connection for one transaction at a time — for a
//! statement outside a transaction, until the server's next `ReadyForQuery`. tokio-postgres (and
//! so diesel-async) prepares a *named* statement in one exchange (`Parse`, `Describe`, `Sync`) and
//! runs it in the next (`Bind`, `Execute`, `Sync`): the second exchange may reach another server,
//! which answers `prepared statement "s3" does not exist`, and a name left behind on a server
//! collides with another process's statement of the same name. PgBouncer 1.21 can track
//! statements itself (`max_prepared_statements`); older ones, and poolers that cannot, need the
//! client not to rely on them.
//!
//! [`Rewrite`] sits between tokio-postgres and the socket (under TLS's plaintext side, when TLS is
//! on) and keeps every statement within one exchange, without touching diesel-async:
//!
//! - `Parse` of a named statement is sent as a `Parse` of the *unnamed* statement, and its text
//!   and parameter types are kept under the name;
//! - `Bind` or `Describe` of a named statement is sent as the kept `Parse` of the unnamed
//!   statement followed by the `Bind` (or `Describe`) of the unnamed statement, within the same
//!   exchange, and the server's extra `ParseComplete` is dropped from the answer;
//! - `Close` of a named statement forgets it (the server is asked to close the unnamed one, which
//!   answers in kind and never fails).
//!
//! Every statement is then parsed by the server each time it runs — the cost of transaction
//! pooling: no server-side plan cache. The client's statement cache (diesel-async's) stays on and
//! still saves the separate `Describe` exchange. Session state does not outlive a transaction
//! (`SET`, advisory locks, `LISTEN`), which is why the pool refuses `schema` and
//! `statement_timeout` with `pgbouncer=true`.

mod rewrite;

pub(crate) use rewrite::Rewrite;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::config::PoolConfig;

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for Rewrite<Link<S>> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

/// The connection under [`Rewrite`]: the socket, or TLS over it.
pub(crate) enum Link<S> {
    Plain(S),
    #[cfg(feature = "tls")]
    Tls(crate::tls::RustlsStream<S>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Link<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            Link::Tls(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Link<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Link::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            Link::Tls(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Plain(stream) => Pin::new(stream).poll_flush(cx),
            #[cfg(feature = "tls")]
            Link::Tls(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            Link::Tls(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

/// tokio-postgres's TLS hook, used to put [`Rewrite`] under every connection: the pool sets
/// `sslnegotiation=direct` on the driver's configuration so tokio-postgres hands the raw socket
/// here, and this does PostgreSQL's own TLS negotiation (`SSLRequest`) when the URL asks for TLS.
#[derive(Clone)]
pub(crate) struct Bouncer {
    #[cfg(feature = "tls")]
    tls: Option<(crate::config::SslMode, crate::tls::MakeRustls)>,
}

impl Bouncer {
    /// The hook for `config`'s TLS settings.
    pub(crate) fn new(config: &PoolConfig) -> Result<Self, ballast_core::Failure> {
        #[cfg(feature = "tls")]
        {
            let tls = match config.tls() {
                Some(settings) => Some((
                    settings.mode,
                    crate::tls::MakeRustls(crate::tls::client_config(settings)?),
                )),
                None => None,
            };
            Ok(Bouncer { tls })
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = config;
            Ok(Bouncer {})
        }
    }
}

/// [`Bouncer`] for one server name.
pub(crate) struct BouncerConnect {
    #[cfg(feature = "tls")]
    tls: Option<(crate::config::SslMode, crate::tls::Rustls)>,
}

impl<S> MakeTlsConnect<S> for Bouncer
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Rewrite<Link<S>>;
    type TlsConnect = BouncerConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<BouncerConnect> {
        #[cfg(feature = "tls")]
        {
            let tls = match &mut self.tls {
                Some((mode, make)) => Some((
                    *mode,
                    <crate::tls::MakeRustls as MakeTlsConnect<S>>::make_tls_connect(make, domain)
                        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?,
                )),
                None => None,
            };
            Ok(BouncerConnect { tls })
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = domain;
            Ok(BouncerConnect {})
        }
    }
}

/// The answer to an `SSLRequest` when TLS is required and the server has none.
pub(crate) const NO_TLS: &str = "the server does not support TLS";

impl<S> TlsConnect<S> for BouncerConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Rewrite<Link<S>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Rewrite<Link<S>>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            #[cfg(feature = "tls")]
            if let Some((mode, tls)) = self.tls {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut stream = stream;
                // PostgreSQL's SSLRequest: length 8, code 80877103.
                stream
                    .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
                    .await?;
                let answer = stream.read_u8().await?;
                if answer == b'S' {
                    let stream = TlsConnect::<S>::connect(tls, stream).await?;
                    return Ok(Rewrite::new(Link::Tls(stream)));
                }
                if mode != crate::config::SslMode::Prefer {
                    return Err(io::Error::new(io::ErrorKind::Unsupported, NO_TLS));
                }
                return Ok(Rewrite::new(Link::Plain(stream)));
            }
            Ok(Rewrite::new(Link::Plain(stream)))
        })
    }
}

/// Connects to PgBouncer with [`Rewrite`] under the connection.
pub(crate) async fn connect(
    config: &PoolConfig,
    mut pg_config: tokio_postgres::Config,
) -> Result<diesel_async::AsyncPgConnection, ballast_core::Failure> {
    use ballast_core::{Cause, Failure};
    use tokio_postgres::config::{Host, SslMode, SslNegotiation};

    let bouncer = Bouncer::new(config)?;
    #[cfg(feature = "tls")]
    let tls_wanted = config.tls().is_some();
    #[cfg(not(feature = "tls"))]
    let tls_wanted = false;
    if !tls_wanted && pg_config.get_ssl_mode() == SslMode::Require {
        return Err(Failure::new(Cause::InvalidConfig)
            .with_detail("sslmode=require needs ballast-pool's `tls` feature"));
    }
    let classify = |error: tokio_postgres::Error| {
        #[cfg(feature = "tls")]
        if crate::tls::rustls_in_chain(&error) {
            return Failure::new(Cause::InvalidConfig)
                .with_detail(format!("TLS: {error}"))
                .with_source(error);
        }
        if std::error::Error::source(&error).is_some_and(|source| source.to_string() == NO_TLS) {
            return Failure::new(Cause::InvalidConfig)
                .with_detail(format!("TLS: {NO_TLS}"))
                .with_source(error);
        }
        Failure::from(error)
    };
    // A Unix socket never carries TLS, and tokio-postgres hands a TLS hook no socket without a
    // host name: open it here.
    #[cfg(unix)]
    if let [Host::Unix(dir)] = pg_config.get_hosts() {
        let port = pg_config.get_ports().first().copied().unwrap_or(5432);
        let socket = tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{port}")))
            .await
            .map_err(Failure::from)?;
        pg_config.ssl_mode(SslMode::Disable);
        let (client, connection) = pg_config
            .connect_raw(Rewrite::new(Link::Plain(socket)), tokio_postgres::NoTls)
            .await
            .map_err(classify)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!("a connection to PgBouncer ended: {error}");
            }
        });
        return Ok(diesel_async::AsyncPgConnection::try_from(client).await?);
    }
    // `require` and `direct` make tokio-postgres give the socket to `Bouncer` at once, which
    // then negotiates TLS the usual way, or not at all.
    pg_config
        .ssl_mode(SslMode::Require)
        .ssl_negotiation(SslNegotiation::Direct);
    let (client, connection) = pg_config.connect(bouncer).await.map_err(classify)?;
    Ok(diesel_async::AsyncPgConnection::try_from_client_and_connection(client, connection).await?)
}
