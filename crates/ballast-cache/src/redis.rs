//! Invalidation shared by every instance through Redis pub/sub (feature `redis`).
//!
//! Several instances behind a load balancer each keep their own [`ResponseCache`]: a write on one
//! leaves the others' copies stale for their whole TTL. [`SharedInvalidation`] publishes every
//! invalidation of its cache — [`ResponseCache::invalidate_path`],
//! [`ResponseCache::invalidate_prefix`], and the automatic ones after a successful unsafe
//! request (RFC 9111 §4.4) — on a Redis channel, and applies the other instances' invalidations
//! to its cache as they arrive (on this machine, within a millisecond or two).
//!
//! Redis is never on a request's path: publishing hands the message to a background task and
//! never waits. When Redis is down or unreachable:
//!
//! - requests go on as before, and local invalidation with them;
//! - the loss is logged once (a warning), and the recovery once;
//! - every entry lives at most the *fallback TTL* (5 s unless set): new ones when stored, stored
//!   ones when next read, so what another instance invalidated meanwhile is not served for long;
//! - the task reconnects with backoff (100 ms doubling to 5 s), pinging Redis every second to
//!   notice a silent loss;
//! - on reconnecting it clears the local cache (messages sent meanwhile are lost: Redis pub/sub
//!   keeps nothing), and when some of its own invalidations could not be published it asks every
//!   instance to clear theirs.
//!
//! [`ResponseCache::clear`] and [`ResponseCache::invalidate_if`] stay local: shutdown clears its
//! own cache without emptying the others', and a predicate cannot travel.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use ballast_cache::redis::SharedInvalidation;
//! use ballast_cache::ResponseCache;
//!
//! let cache = ResponseCache::builder().build()?;
//! let shared = SharedInvalidation::builder("redis://127.0.0.1:6379")
//!     .channel("shop:cache")
//!     .fallback_ttl(Duration::from_secs(5))
//!     .start(&cache)?;
//! // ... serve with `CacheLayer::new(cache.clone())`; at shutdown:
//! shared.stop().await;
//! # Ok(())
//! # }
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use ballast_core::ConfigError;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::store::{Inner, Invalidated};
use crate::ResponseCache;

/// The channel unless [`SharedInvalidationBuilder::channel`] names another.
const DEFAULT_CHANNEL: &str = "ballast:cache:invalidate";
/// How long entries live while invalidations may be lost, unless set.
const DEFAULT_FALLBACK_TTL: Duration = Duration::from_secs(5);
/// Invalidations waiting to be published; past this they are dropped and counted as lost.
const QUEUE: usize = 1024;
/// The first pause before reconnecting, doubled after each failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long connecting, or one command, may take.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the connection is checked while idle.
const PING_EVERY: Duration = Duration::from_secs(1);

/// Builds a [`SharedInvalidation`]; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct SharedInvalidationBuilder {
    url: String,
    channel: String,
    fallback_ttl: Duration,
}

impl SharedInvalidationBuilder {
    /// The Redis channel every instance of the service shares: `ballast:cache:invalidate` by
    /// default. Instances of different services on one Redis need different channels.
    #[must_use]
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    /// The longest any entry lives while Redis cannot be reached (and before the first
    /// connect): 5 s by default; at least 1 ms.
    #[must_use]
    pub fn fallback_ttl(mut self, ttl: Duration) -> Self {
        self.fallback_ttl = ttl;
        self
    }

    /// Connects `cache` to the channel: starts the background task that publishes its
    /// invalidations and applies the others'. The cache serves as before from the start; its
    /// entries live at most the fallback TTL until the first connect.
    ///
    /// # Errors
    ///
    /// `url` is not a Redis URL, the channel is empty, the fallback TTL is zero, or `cache`
    /// already shares its invalidations.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn start(self, cache: &ResponseCache) -> Result<SharedInvalidation, ConfigError> {
        let client = redis::Client::open(self.url.as_str()).map_err(|error| {
            // The URL may hold a password: the error's kind, never the URL.
            ConfigError::new(
                "redis_url",
                format!("is not a Redis URL ({:?})", error.kind()),
            )
        })?;
        if self.channel.is_empty() {
            return Err(ConfigError::new("channel", "is empty"));
        }
        if self.fallback_ttl < Duration::from_millis(1) {
            return Err(ConfigError::new("fallback_ttl", "must be at least 1 ms"));
        }
        let (sender, receiver) = mpsc::channel(QUEUE);
        let state = Arc::new(State {
            channel: self.channel,
            fallback_ttl: self.fallback_ttl,
            instance: instance_id(),
            connected: AtomicBool::new(false),
            warned: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let publish_state = Arc::clone(&state);
        let fanout: crate::store::Fanout = Box::new(move |invalidation: &Invalidated| {
            if sender.try_send(invalidation.clone()).is_err() {
                publish_state.counters.lost.fetch_add(1, Ordering::Relaxed);
            }
        });
        if cache.inner.fanout.set(fanout).is_err() {
            return Err(ConfigError::new(
                "cache",
                "already shares its invalidations through another SharedInvalidation",
            ));
        }
        cache.inner.degraded.set(Some(self.fallback_ttl));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(
            Arc::clone(&state),
            client,
            Arc::downgrade(&cache.inner),
            receiver,
            stopped,
        ));
        Ok(SharedInvalidation {
            state,
            stop,
            task: Mutex::new(Some(task)),
        })
    }
}

/// A cache's invalidations shared with every instance on a Redis channel; see the
/// [module docs](self). Stop it at shutdown with [`stop`](Self::stop); dropping it stops it too.
/// Share it (for its [`stats`](Self::stats)) in an `Arc`.
#[derive(Debug)]
pub struct SharedInvalidation {
    state: Arc<State>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// What [`SharedInvalidation::stats`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SharedInvalidationStats {
    /// Whether the channel is up now.
    pub connected: bool,
    /// This instance's invalidations published.
    pub published: u64,
    /// Other instances' invalidations applied here.
    pub received: u64,
    /// This instance's invalidations that could not be published (Redis down, or the queue
    /// full); covered by asking every instance to clear once the channel is back.
    pub lost: u64,
    /// Times the channel went down (a failed first connect included).
    pub disconnects: u64,
    /// Times the local cache was cleared on (re)connecting.
    pub cleared: u64,
}

impl SharedInvalidation {
    /// A builder for the Redis at `url` (`redis://host:6379`, `rediss://` needs redis's TLS
    /// features, `redis+unix:///path`).
    pub fn builder(url: impl Into<String>) -> SharedInvalidationBuilder {
        SharedInvalidationBuilder {
            url: url.into(),
            channel: DEFAULT_CHANNEL.to_owned(),
            fallback_ttl: DEFAULT_FALLBACK_TTL,
        }
    }

    /// The figures so far.
    pub fn stats(&self) -> SharedInvalidationStats {
        let counters = &self.state.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        SharedInvalidationStats {
            connected: self.state.connected.load(Ordering::Acquire),
            published: get(&counters.published),
            received: get(&counters.received),
            lost: get(&counters.lost),
            disconnects: get(&counters.disconnects),
            cleared: get(&counters.cleared),
        }
    }

    /// Waits until the channel is up, at most `timeout`; whether it is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.state.connected.load(Ordering::Acquire) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the background task and waits for it. The cache keeps serving, with local
    /// invalidation only (and entries at their full TTL).
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for SharedInvalidation {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[derive(Debug)]
struct State {
    channel: String,
    fallback_ttl: Duration,
    /// This process's mark on its messages, so it skips its own.
    instance: u64,
    connected: AtomicBool,
    /// Whether the current outage was logged.
    warned: AtomicBool,
    counters: Counters,
}

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    received: AtomicU64,
    lost: AtomicU64,
    disconnects: AtomicU64,
    cleared: AtomicU64,
}

impl State {
    fn down(&self, cache: &Weak<Inner>, why: &str) {
        let was_up = self.connected.swap(false, Ordering::AcqRel);
        if let Some(inner) = cache.upgrade() {
            inner.degraded.set(Some(self.fallback_ttl));
        }
        if was_up || !self.warned.load(Ordering::Relaxed) {
            self.counters.disconnects.fetch_add(1, Ordering::Relaxed);
        }
        if !self.warned.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                channel = %self.channel,
                "shared cache invalidation is down ({why}): invalidation stays local, and entries live at most {:?} until Redis is back",
                self.fallback_ttl
            );
        }
    }

    fn up(&self, cache: &Weak<Inner>) {
        if let Some(inner) = cache.upgrade() {
            inner.degraded.set(None);
        }
        self.connected.store(true, Ordering::Release);
        if self.warned.swap(false, Ordering::AcqRel) {
            tracing::info!(channel = %self.channel, "shared cache invalidation is back; the local cache was cleared");
        }
    }
}

/// A random enough mark for this process's messages.
fn instance_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos()),
    );
    hasher.finish()
}

/// `instance` in hex, a newline, then `P` and the paths (one per line), `X` and a prefix, or `A`.
fn encode(instance: u64, invalidation: &Invalidated) -> String {
    match invalidation {
        Invalidated::Paths(paths) => format!("{instance:016x}\nP{}", paths.join("\n")),
        Invalidated::Prefix(prefix) => format!("{instance:016x}\nX{prefix}"),
        Invalidated::Tags(tags) => format!("{instance:016x}\nT{}", tags.join("\n")),
        Invalidated::All => format!("{instance:016x}\nA"),
    }
}

/// The sender and the invalidation of a message; `None` for a malformed one.
fn decode(message: &[u8]) -> Option<(u64, Invalidated)> {
    let text = std::str::from_utf8(message).ok()?;
    let (instance, rest) = text.split_once('\n')?;
    let instance = u64::from_str_radix(instance, 16).ok()?;
    let mut chars = rest.chars();
    let invalidation = match chars.next()? {
        'P' => Invalidated::Paths(chars.as_str().split('\n').map(str::to_owned).collect()),
        'X' => Invalidated::Prefix(chars.as_str().to_owned()),
        'T' => Invalidated::Tags(chars.as_str().split('\n').map(str::to_owned).collect()),
        'A' => Invalidated::All,
        _ => return None,
    };
    Some((instance, invalidation))
}

async fn connect(
    client: &redis::Client,
    channel: &str,
) -> redis::RedisResult<(redis::aio::MultiplexedConnection, redis::aio::PubSub)> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_response_timeout(Some(REDIS_TIMEOUT));
    let publisher = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let subscribing = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    let pubsub = tokio::time::timeout(REDIS_TIMEOUT, subscribing)
        .await
        .map_err(|_| {
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
        })??;
    Ok((publisher, pubsub))
}

/// The background task: connect, clear, relay both ways until the connection fails; again.
async fn run(
    state: Arc<State>,
    client: redis::Client,
    cache: Weak<Inner>,
    mut outgoing: mpsc::Receiver<Invalidated>,
    mut stop: watch::Receiver<bool>,
) {
    use futures_util::StreamExt;
    let mut backoff = MIN_BACKOFF;
    // Some of ours were not published: every instance clears once the channel is back.
    let mut lost_ours = false;
    loop {
        let connected = tokio::select! {
            connected = connect(&client, &state.channel) => connected,
            _ = stop.changed() => return,
        };
        let (mut publisher, mut pubsub) = match connected {
            Ok(pair) => pair,
            Err(error) => {
                state.down(&cache, &error.to_string());
                let pause = tokio::time::sleep(backoff);
                tokio::pin!(pause);
                loop {
                    tokio::select! {
                        () = &mut pause => break,
                        _ = stop.changed() => return,
                        lost = outgoing.recv() => match lost {
                            Some(_) => {
                                lost_ours = true;
                                state.counters.lost.fetch_add(1, Ordering::Relaxed);
                            }
                            // The cache is gone.
                            None => return,
                        },
                    }
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = MIN_BACKOFF;
        // Whatever was published while this instance was not listening is lost: start afresh.
        match cache.upgrade() {
            Some(inner) => ResponseCache { inner }.invalidate_now(Invalidated::All),
            None => return,
        }
        state.counters.cleared.fetch_add(1, Ordering::Relaxed);
        if lost_ours {
            let message = encode(state.instance, &Invalidated::All);
            if publish(&mut publisher, &state.channel, message)
                .await
                .is_ok()
            {
                lost_ours = false;
            }
        }
        state.up(&cache);
        let why = {
            let mut messages = pubsub.on_message();
            let mut ping = tokio::time::interval(PING_EVERY);
            ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    message = messages.next() => {
                        let Some(message) = message else {
                            break "the subscription ended".to_owned();
                        };
                        let Some((sender, invalidation)) = decode(message.get_payload_bytes()) else {
                            tracing::debug!("a malformed message on the cache channel was ignored");
                            continue;
                        };
                        if sender == state.instance {
                            continue;
                        }
                        let Some(inner) = cache.upgrade() else { return };
                        ResponseCache { inner }.invalidate_now(invalidation);
                        state.counters.received.fetch_add(1, Ordering::Relaxed);
                    }
                    ours = outgoing.recv() => {
                        let Some(invalidation) = ours else { return };
                        let message = encode(state.instance, &invalidation);
                        if let Err(error) = publish(&mut publisher, &state.channel, message).await {
                            lost_ours = true;
                            state.counters.lost.fetch_add(1, Ordering::Relaxed);
                            break error.to_string();
                        }
                        state.counters.published.fetch_add(1, Ordering::Relaxed);
                    }
                    _ = ping.tick() => {
                        if let Err(error) = redis::cmd("PING").query_async::<()>(&mut publisher).await {
                            break error.to_string();
                        }
                    }
                    _ = stop.changed() => return,
                }
            }
        };
        state.down(&cache, &why);
    }
}

async fn publish(
    publisher: &mut redis::aio::MultiplexedConnection,
    channel: &str,
    message: String,
) -> redis::RedisResult<()> {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(message)
        .query_async::<()>(publisher)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_the_wire() {
        for invalidation in [
            Invalidated::Paths(vec!["/items".into(), "/items/7".into()]),
            Invalidated::Prefix("/items/".into()),
            Invalidated::Tags(vec!["bookmarks".into(), "users".into()]),
            Invalidated::All,
        ] {
            let text = encode(0xfeed, &invalidation);
            assert_eq!(decode(text.as_bytes()), Some((0xfeed, invalidation)));
        }
        for malformed in ["", "zz\nP/x", "00000000000000ff\nQ/x", "00000000000000ff"] {
            assert_eq!(decode(malformed.as_bytes()), None, "{malformed:?}");
        }
    }
}
