//! A keep-alive HTTP/1.1 client for load tests and benches: one connection, one request at a
//! time, the status, latency and `Retry-After` of each answer.
//!
//! Load is measured with connections kept open, as browsers and proxies keep them: a new
//! connection per request would measure the kernel's accept queue, not the server (500 connects
//! at once can overflow it, and a dropped SYN is retried after a second).
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use ballast_testkit::http::Client;
//!
//! let mut client = Client::new("127.0.0.1:3000".parse().unwrap());
//! if let Some(reply) = client.get("/healthz").await {
//!     assert_eq!(reply.status, 200);
//! }
//! # }
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// From writing the request to reading the whole answer.
    pub took: Duration,
    /// `Retry-After`, in seconds, when the answer had one.
    pub retry_after: Option<u64>,
    /// The body.
    pub body: String,
}

/// A keep-alive connection to one server; it reconnects when the server closed it.
#[derive(Debug)]
pub struct Client {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
    /// Reused for every request and answer: a load generator should spend its CPU on load.
    request: String,
    line: String,
    body: Vec<u8>,
}

impl Client {
    /// A client of `addr`; nothing connects yet.
    pub fn new(addr: SocketAddr) -> Self {
        Client {
            addr,
            stream: None,
            request: String::new(),
            line: String::new(),
            body: Vec::new(),
        }
    }

    /// Opens the connection now (if it is not open), so the first measured request does not
    /// include a connect. Whether it is open.
    pub async fn connect(&mut self) -> bool {
        if self.stream.is_none() {
            self.stream = TcpStream::connect(self.addr).await.ok().map(BufReader::new);
        }
        self.stream.is_some()
    }

    /// Closes the connection: after a request abandoned mid-way (a client's timeout), its
    /// answer may still come, and the next request must not read it.
    pub fn disconnect(&mut self) {
        self.stream = None;
    }

    /// `GET path`: the answer, or `None` when the connection failed (it is closed then, and the
    /// next request opens another).
    pub async fn get(&mut self, path: &str) -> Option<Reply> {
        let (status, took, retry_after) = self.get_status(path).await?;
        Some(Reply {
            status,
            took,
            retry_after,
            body: String::from_utf8_lossy(&self.body).into_owned(),
        })
    }

    /// `GET path`, without keeping the body: the status, how long the answer took and its
    /// `Retry-After` (what a load generator needs, at no allocation), or `None` when the
    /// connection failed.
    pub async fn get_status(&mut self, path: &str) -> Option<(u16, Duration, Option<u64>)> {
        let started = Instant::now();
        let answer = self.exchange(path).await;
        if answer.is_none() {
            self.stream = None;
        }
        let (status, retry_after, close) = answer?;
        if close {
            self.stream = None;
        }
        Some((status, started.elapsed(), retry_after))
    }

    async fn exchange(&mut self, path: &str) -> Option<(u16, Option<u64>, bool)> {
        if !self.connect().await {
            return None;
        }
        let stream = self.stream.as_mut()?;
        self.request.clear();
        self.request.push_str("GET ");
        self.request.push_str(path);
        self.request.push_str(" HTTP/1.1\r\nHost: ballast\r\n\r\n");
        stream
            .get_mut()
            .write_all(self.request.as_bytes())
            .await
            .ok()?;
        let mut status = None;
        let mut length = 0usize;
        let mut retry_after = None;
        let mut close = false;
        let line = &mut self.line;
        loop {
            line.clear();
            if stream.read_line(line).await.ok()? == 0 {
                return None;
            }
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if status.is_none() {
                status = trimmed.get(9..12)?.parse().ok();
            } else if let Some((name, value)) = trimmed.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse().ok()?;
                } else if name.eq_ignore_ascii_case("retry-after") {
                    retry_after = value.parse().ok();
                } else if name.eq_ignore_ascii_case("connection") {
                    close = value.eq_ignore_ascii_case("close");
                }
            }
        }
        self.body.resize(length, 0);
        stream.read_exact(&mut self.body).await.ok()?;
        Some((status?, retry_after, close))
    }
}
