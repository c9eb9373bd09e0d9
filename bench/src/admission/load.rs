//! The load generators of the admission bench and what they record: every answer with when it
//! came, its status, its latency and whether it said `Retry-After`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballast_testkit::http::{Client, Reply};

/// One answer (or none).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// When the answer came, from the start of the run.
    pub(crate) at: Duration,
    /// The status; 0 when there was no answer (the connection failed, or the client's timeout).
    pub(crate) status: u16,
    /// How long the answer took.
    pub(crate) took: Duration,
    /// Whether a 503 said `Retry-After`.
    pub(crate) retry_after: bool,
}

/// Every answer of a run. Each client keeps its own answers and hands them over when it is
/// done: a lock per answer would cost the load generator CPU the server should get.
#[derive(Debug)]
pub(crate) struct Recorder {
    start: Instant,
    samples: Mutex<Vec<Sample>>,
    /// One refusal's body, to show what a refused client reads.
    example: std::sync::OnceLock<String>,
}

impl Recorder {
    pub(crate) fn new(start: Instant) -> Arc<Self> {
        Arc::new(Recorder {
            start,
            samples: Mutex::new(Vec::with_capacity(1 << 20)),
            example: std::sync::OnceLock::new(),
        })
    }

    /// A client's answers, when it is done.
    fn hand_over(&self, samples: Vec<Sample>) {
        self.samples.lock().unwrap().extend(samples);
    }

    pub(crate) fn samples(&self) -> Vec<Sample> {
        let mut samples = self.samples.lock().unwrap().clone();
        samples.sort_by_key(|sample| sample.at);
        samples
    }

    pub(crate) fn example(&self) -> Option<String> {
        self.example.get().cloned()
    }
}

/// Sends `path` and notes the answer in `samples`, within the client's `timeout`.
async fn send(
    client: &mut Client,
    recorder: &Recorder,
    samples: &mut Vec<Sample>,
    path: &str,
    timeout: Duration,
) -> Option<u16> {
    let asked = Instant::now();
    // The body only until the first refusal has been kept as the example.
    let answer = if recorder.example.get().is_none() {
        tokio::time::timeout(timeout, client.get(path))
            .await
            .ok()
            .flatten()
            .map(|reply: Reply| {
                if reply.status == 503 {
                    let _ = recorder.example.set(reply.body);
                }
                (reply.status, reply.retry_after)
            })
    } else {
        tokio::time::timeout(timeout, client.get_status(path))
            .await
            .ok()
            .flatten()
            .map(|(status, _, retry_after)| (status, retry_after))
    };
    if answer.is_none() {
        // Timed out with the request on the wire: the connection cannot be reused.
        client.disconnect();
    }
    samples.push(Sample {
        at: recorder.start.elapsed(),
        status: answer.map_or(0, |(status, _)| status),
        took: asked.elapsed(),
        retry_after: answer.is_some_and(|(_, retry_after)| retry_after.is_some()),
    });
    answer.map(|(status, _)| status)
}

/// `clients` closed-loop clients, each on its own keep-alive connection, sending `path(t)` again
/// as soon as the last answer came — after a 503 too, as the worst clients do — for `run`.
pub(crate) async fn closed_loop(
    addr: SocketAddr,
    clients: usize,
    run: Duration,
    path: fn(Duration) -> String,
    recorder: &Arc<Recorder>,
) {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let recorder = Arc::clone(recorder);
            tokio::spawn(async move {
                let mut client = Client::new(addr);
                client.connect().await;
                let mut samples = Vec::with_capacity(4096);
                loop {
                    let elapsed = recorder.start.elapsed();
                    if elapsed >= run {
                        break;
                    }
                    let path = path(elapsed);
                    send(&mut client, &recorder, &mut samples, &path, CLIENT_TIMEOUT).await;
                }
                recorder.hand_over(samples);
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
}

/// An open loop: one request every `1 / rate` seconds for `run`, each on a free keep-alive
/// connection or a new one, whether or not earlier ones were answered. Returns the most
/// requests outstanding at once.
pub(crate) async fn open_loop(
    addr: SocketAddr,
    rate: f64,
    run: Duration,
    path: &'static str,
    recorder: &Arc<Recorder>,
) -> u64 {
    let free: Arc<Mutex<Vec<Client>>> = Arc::new(Mutex::new(Vec::new()));
    let outstanding = Arc::new(AtomicU64::new(0));
    let most = Arc::new(AtomicU64::new(0));
    let every = Duration::from_secs_f64(1.0 / rate);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    while recorder.start.elapsed() < run {
        ticker.tick().await;
        let (free, recorder) = (Arc::clone(&free), Arc::clone(recorder));
        let (outstanding, most) = (Arc::clone(&outstanding), Arc::clone(&most));
        tasks.push(tokio::spawn(async move {
            let now = outstanding.fetch_add(1, Ordering::Relaxed) + 1;
            most.fetch_max(now, Ordering::Relaxed);
            let taken = free.lock().unwrap().pop();
            let mut client = taken.unwrap_or_else(|| Client::new(addr));
            let mut samples = Vec::with_capacity(1);
            send(&mut client, &recorder, &mut samples, path, CLIENT_TIMEOUT).await;
            recorder.hand_over(samples);
            free.lock().unwrap().push(client);
            outstanding.fetch_sub(1, Ordering::Relaxed);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    most.load(Ordering::Relaxed)
}

/// `size` clients, connected first, each sending `path` once, all at the same moment.
pub(crate) async fn burst(
    addr: SocketAddr,
    size: usize,
    path: &'static str,
    recorder: &Arc<Recorder>,
) {
    let ready = Arc::new(tokio::sync::Barrier::new(size));
    let tasks: Vec<_> = (0..size)
        .map(|_| {
            let (ready, recorder) = (Arc::clone(&ready), Arc::clone(recorder));
            tokio::spawn(async move {
                let mut client = Client::new(addr);
                client.connect().await;
                ready.wait().await;
                let mut samples = Vec::with_capacity(1);
                send(&mut client, &recorder, &mut samples, path, CLIENT_TIMEOUT).await;
                recorder.hand_over(samples);
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
}

/// `GET path` every `every` on one connection until `until`: the latencies (a failed or late
/// answer counts as `CLIENT_TIMEOUT`).
pub(crate) async fn probe(
    addr: SocketAddr,
    path: &'static str,
    every: Duration,
    until: Instant,
) -> Vec<(Duration, u16)> {
    let mut client = Client::new(addr);
    let mut seen = Vec::new();
    while Instant::now() < until {
        let asked = Instant::now();
        let reply = tokio::time::timeout(CLIENT_TIMEOUT, client.get(path))
            .await
            .ok()
            .flatten();
        seen.push((asked.elapsed(), reply.map_or(0, |reply| reply.status)));
        tokio::time::sleep(every).await;
    }
    seen
}

/// The pool's waiting checkouts (`/stats`' `pool.waiting`) every `every` until `until`.
pub(crate) async fn queue_lengths(addr: SocketAddr, every: Duration, until: Instant) -> Vec<u64> {
    let mut client = Client::new(addr);
    let mut lengths = Vec::new();
    while Instant::now() < until {
        if let Some(reply) = client.get("/stats").await {
            let waiting = reply
                .body
                .split("\"waiting\":")
                .nth(1)
                .and_then(|rest| rest.split([',', '}']).next())
                .and_then(|number| number.trim().parse().ok());
            if let Some(waiting) = waiting {
                lengths.push(waiting);
            }
        }
        tokio::time::sleep(every).await;
    }
    lengths
}

/// The longest a bench client waits for an answer: past the server's `pool_timeout` (20 s), so
/// an unbounded queue shows as slow answers rather than as missing ones.
pub(crate) const CLIENT_TIMEOUT: Duration = Duration::from_secs(25);
