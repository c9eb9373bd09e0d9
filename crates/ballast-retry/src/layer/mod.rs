//! The HTTP retry layer: `tower::retry`'s protocol in a response future of its own.
//!
//! Laid out as tower-http lays out a middleware: the layer and its builder here, the service
//! (`service.rs`, which decides whether a request can be replayed) and its response future
//! (`future.rs`, which runs the attempts).

mod future;
mod service;

pub use future::ResponseFuture;
pub use service::Retry;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ballast_core::ConfigError;
use http::Method;
use tower_layer::Layer;

use crate::builder::{LayerForm, RetryBuilder, RetryLayerBuilder};
use crate::layer::service::MethodSet;
use crate::policy::{
    Counters, RetryStats, Settings, Shared, DEFAULT_BODY_CAP, DEFAULT_BUDGET_MIN_PER_SEC,
    DEFAULT_BUDGET_PERCENT, DEFAULT_BUDGET_TTL, DEFAULT_JITTER, DEFAULT_LAYER_BASE_DELAY,
    DEFAULT_LAYER_DEADLINE, DEFAULT_LAYER_MAX_DELAY, DEFAULT_LAYER_MAX_RETRIES,
};

/// Re-runs requests whose database failure is worth retrying and safe to repeat.
///
/// See the [crate docs](crate) for the rules. [`RetryLayer::new`] has the defaults;
/// [`RetryLayer::builder`] changes them. Clones share one budget and one set of counters, read
/// through [`RetryLayer::handle`].
///
/// ```
/// use std::time::Duration;
/// use ballast_retry::RetryLayer;
///
/// let layer = RetryLayer::builder()
///     .max_retries(2)
///     .delays(Duration::from_millis(200), Duration::from_secs(2))
///     .deadline(Duration::from_secs(5))
///     .build()?;
/// let handle = layer.handle(); // for a /stats handler
/// assert_eq!(handle.stats().retries, 0);
///
/// let error = RetryLayer::builder().jitter(-1.0).build().unwrap_err();
/// assert_eq!(error.setting, "jitter");
/// # Ok::<(), ballast_retry::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct RetryLayer {
    body_cap: usize,
    idempotent: MethodSet,
    shared: Arc<Shared>,
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("shared", &self.shared)
            .field("body_cap", &self.body_cap)
            .finish_non_exhaustive()
    }
}

impl RetryLayer {
    /// The layer with the defaults: 2 retries, 100 ms doubling to at most 500 ms with jitter, a
    /// 2 s deadline — in-request retries are for blips and add at most about a second — bodies
    /// up to 64 KiB replayed, `GET`, `HEAD`, `OPTIONS`, `PUT`, `DELETE` and `TRACE` idempotent,
    /// and a budget of 10 retries a second plus 20 % of requests. A failure the pool answered
    /// from its closed connect gate (a known outage) is not retried: the client gets its 503 at
    /// once, with the `Retry-After` the pool's next attempt gives.
    pub fn new() -> Self {
        // The defaults are in range: nothing to check.
        Self::builder().into_layer()
    }

    /// A builder starting from the defaults of [`RetryLayer::new`].
    pub fn builder() -> RetryLayerBuilder {
        RetryLayerBuilder {
            settings: Settings {
                max_retries: DEFAULT_LAYER_MAX_RETRIES,
                base_delay: DEFAULT_LAYER_BASE_DELAY,
                max_delay: DEFAULT_LAYER_MAX_DELAY,
                jitter: DEFAULT_JITTER,
                deadline: DEFAULT_LAYER_DEADLINE,
                budget: Some((
                    DEFAULT_BUDGET_TTL,
                    DEFAULT_BUDGET_MIN_PER_SEC,
                    DEFAULT_BUDGET_PERCENT,
                )),
            },
            form: LayerForm {
                body_cap: DEFAULT_BODY_CAP,
                idempotent: vec![
                    Method::GET,
                    Method::HEAD,
                    Method::OPTIONS,
                    Method::PUT,
                    Method::DELETE,
                    Method::TRACE,
                ],
            },
        }
    }

    /// A handle on the counters of this layer, its clones and every service they made.
    pub fn handle(&self) -> RetryHandle {
        RetryHandle {
            counters: Arc::clone(&self.shared.counters),
        }
    }
}

/// Reads the counters of a [`RetryLayer`] or a [`Retrying`](crate::Retrying) (and their
/// clones) without holding the layer: cheap to clone, for a `/stats` or metrics handler.
#[derive(Debug, Clone)]
pub struct RetryHandle {
    counters: Arc<Counters>,
}

impl RetryHandle {
    pub(crate) fn new(counters: Arc<Counters>) -> Self {
        RetryHandle { counters }
    }

    /// The counters since the layer was built.
    pub fn stats(&self) -> RetryStats {
        self.counters.snapshot()
    }
}

impl RetryBuilder<LayerForm> {
    /// Sets the largest request body recorded for replay (as the service reads it). Larger
    /// bodies, and bodies of unknown length, stream through untouched and their requests are not retried. Defaults to 64 KiB.
    pub fn body_cap(mut self, bytes: usize) -> Self {
        self.form.body_cap = bytes;
        self
    }

    /// Sets the methods whose requests may run twice (retried even when the statement may have
    /// reached the database).
    pub fn idempotent_methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.form.idempotent = methods.into_iter().collect();
        self
    }

    /// Sets the budget shared by every clone: deposits expire after `ttl` (1 to 60 s);
    /// `min_per_sec` retries a second are always allowed; on top, `percent` (0.0 to 1000.0) of
    /// requests may be retried. Defaults to 10 s, 10 a second and 0.2.
    pub fn budget(mut self, ttl: Duration, min_per_sec: u32, percent: f32) -> Self {
        self.settings.budget = Some((ttl, min_per_sec, percent));
        self
    }

    /// Turns the budget off: only `max_retries` and the deadline limit retries.
    pub fn without_budget(mut self) -> Self {
        self.settings.budget = None;
        self
    }

    /// The layer, with counters of its own.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first setting out of range (`delays`, `jitter`, `budget`).
    pub fn build(self) -> Result<RetryLayer, ConfigError> {
        self.settings.check()?;
        Ok(self.into_layer())
    }

    /// The layer from settings known to be in range.
    fn into_layer(self) -> RetryLayer {
        RetryLayer {
            body_cap: self.form.body_cap,
            idempotent: MethodSet::new(&self.form.idempotent),
            shared: Arc::new(self.settings.shared(true)),
        }
    }
}

impl<S: Clone> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            template: Arc::new(inner.clone()),
            inner,
            shared: Arc::clone(&self.shared),
            idempotent: self.idempotent.clone(),
            body_cap: self.body_cap,
        }
    }
}
