//! Fake database servers that refuse every connection with a chosen error.
//!
//! Some failures cannot be provoked on a shared test server without disturbing other tests: a
//! server starting up (`57P03`), a wrong password on a server that trusts every local login
//! (`28P01`), a server-wide `max_connections` (`53300`, MySQL `1040`), a message in Spanish. These
//! servers speak just enough of each wire protocol to answer the client's first message with that
//! error, so a real driver reports exactly what it would report against a real server.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The PostgreSQL protocol code of an `SSLRequest` (PostgreSQL protocol docs, "Message Formats").
const SSL_REQUEST: u32 = 80_877_103;
/// The protocol code of a `GSSENCRequest`.
const GSSENC_REQUEST: u32 = 80_877_104;
/// The largest startup message accepted: PostgreSQL itself caps it at 10,000 bytes.
const MAX_STARTUP_LEN: usize = 10_000;

/// A fake database server on `127.0.0.1` that refuses every connection with one chosen error.
///
/// - [`FakeServer::postgres`] answers every startup message with a `FATAL` `ErrorResponse`
///   carrying a SQLSTATE and message (declining TLS and GSS encryption requests first).
/// - [`FakeServer::mysql`] sends an `ERR` packet instead of its handshake — what a real server does
///   when it refuses a connection with `1040 Too many connections`.
///
/// Either way it then closes the connection, and counts it. Dropping the server stops it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use ballast_testkit::fake::FakeServer;
///
/// let server = FakeServer::postgres("53300", "lo siento, ya tenemos demasiados clientes").await?;
/// let error = tokio_postgres::connect(&server.url("app"), tokio_postgres::NoTls)
///     .await
///     .err()
///     .expect("the fake server refuses");
/// assert_eq!(error.code().unwrap().code(), "53300");
///
/// let server = FakeServer::mysql(1040, "08004", "Too many connections").await?;
/// match mysql_async::Conn::from_url(server.url("test")).await {
///     Err(mysql_async::Error::Server(error)) => assert_eq!(error.code, 1040),
///     other => panic!("unexpected {:?}", other.map(|_| ())),
/// }
/// assert_eq!(server.connections(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct FakeServer {
    addr: SocketAddr,
    /// URL scheme and query for [`FakeServer::url`].
    scheme: &'static str,
    query: &'static str,
    connections: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl FakeServer {
    /// A fake PostgreSQL server that answers with `sqlstate` and `message`.
    ///
    /// # Errors
    ///
    /// Binding an ephemeral port failed.
    pub async fn postgres(sqlstate: &str, message: &str) -> io::Result<Self> {
        let response: Arc<[u8]> = postgres_error_response(sqlstate, message).into();
        Self::start("postgres", "?sslmode=disable", move |stream| {
            let response = Arc::clone(&response);
            async move { refuse_postgres(stream, &response).await }
        })
        .await
    }

    /// A fake MySQL/MariaDB server that answers with error `number`; `sqlstate` is the
    /// five-character state MySQL sends with it (`08004` for 1040).
    ///
    /// # Errors
    ///
    /// Binding an ephemeral port failed.
    pub async fn mysql(number: u16, sqlstate: &str, message: &str) -> io::Result<Self> {
        let packet: Arc<[u8]> = mysql_err_packet(number, sqlstate, message).into();
        Self::start("mysql", "", move |mut stream| {
            let packet = Arc::clone(&packet);
            async move {
                stream.write_all(&packet).await?;
                stream.shutdown().await
            }
        })
        .await
    }

    /// Accepts connections until dropped, counting them and running `handle` on each in its own
    /// task.
    async fn start<F, Fut>(scheme: &'static str, query: &'static str, handle: F) -> io::Result<Self>
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = io::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(handle(stream));
            }
        });
        Ok(FakeServer {
            addr,
            scheme,
            query,
            connections,
            task,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A connection URL for the server, as user `app` (PostgreSQL URLs add `sslmode=disable`).
    pub fn url(&self, database: &str) -> String {
        format!(
            "{}://app@{}/{database}{}",
            self.scheme, self.addr, self.query
        )
    }

    /// How many connections the server has accepted.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads the client's startup message (declining TLS and GSS encryption on the way), then sends
/// `response` and closes.
async fn refuse_postgres(mut stream: TcpStream, response: &[u8]) -> io::Result<()> {
    loop {
        let len = stream.read_u32().await? as usize;
        if !(8..=MAX_STARTUP_LEN).contains(&len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad startup length",
            ));
        }
        let code = stream.read_u32().await?;
        let mut rest = vec![0; len - 8];
        stream.read_exact(&mut rest).await?;
        if code == SSL_REQUEST || code == GSSENC_REQUEST {
            // 'N': no encryption here; the client goes on with a plain startup message.
            stream.write_all(b"N").await?;
            continue;
        }
        stream.write_all(response).await?;
        return stream.shutdown().await;
    }
}

/// A PostgreSQL `ErrorResponse` message with severity `FATAL`.
fn postgres_error_response(sqlstate: &str, message: &str) -> Vec<u8> {
    let mut fields = Vec::new();
    for (tag, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', sqlstate),
        (b'M', message),
    ] {
        fields.push(tag);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut out = vec![b'E'];
    let len = u32::try_from(fields.len() + 4).expect("an error response is small");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&fields);
    out
}

/// A MySQL `ERR` packet (protocol 4.1 form) with sequence id 0.
fn mysql_err_packet(number: u16, sqlstate: &str, message: &str) -> Vec<u8> {
    let mut payload = vec![0xff];
    payload.extend_from_slice(&number.to_le_bytes());
    payload.push(b'#');
    payload.extend_from_slice(sqlstate.as_bytes());
    payload.extend_from_slice(message.as_bytes());
    let len = u32::try_from(payload.len()).expect("an error packet is small");
    let mut packet = len.to_le_bytes()[..3].to_vec();
    packet.push(0);
    packet.extend_from_slice(&payload);
    packet
}
