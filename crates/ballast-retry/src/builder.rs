//! [`RetryBuilder`]: the settings both retry forms share, and each form's own.

use std::time::Duration;

use http::Method;

use crate::policy::Settings;

/// Collects a retry form's settings; `build` checks them together. The setters never fail.
///
/// Used as [`RetryLayerBuilder`] for the HTTP layer ([`RetryLayer::builder`](crate::RetryLayer::builder))
/// and [`RetryingBuilder`] for the function form ([`Retrying::builder`](crate::Retrying::builder)):
/// the setters below mean the same in both, and each form adds its own (the layer: the body cap,
/// the idempotent methods and the budget; the function form: whether the operation is
/// idempotent). Their defaults differ: in-request retries are for blips, background work has
/// time.
#[derive(Debug, Clone)]
#[must_use]
pub struct RetryBuilder<F> {
    pub(crate) settings: Settings,
    pub(crate) form: F,
}

/// The HTTP layer's own settings, for [`RetryLayerBuilder`].
#[derive(Debug, Clone)]
pub struct LayerForm {
    pub(crate) body_cap: usize,
    pub(crate) idempotent: Vec<Method>,
}

/// The function form's own setting, for [`RetryingBuilder`].
#[derive(Debug, Clone)]
pub struct FunctionForm {
    pub(crate) idempotent: bool,
}

/// Builds a [`RetryLayer`](crate::RetryLayer); see [`RetryBuilder`] for the shared setters.
pub type RetryLayerBuilder = RetryBuilder<LayerForm>;

/// Builds a [`Retrying`](crate::Retrying); see [`RetryBuilder`] for the shared setters.
pub type RetryingBuilder = RetryBuilder<FunctionForm>;

impl<F> RetryBuilder<F> {
    /// Sets how many times a request (or operation) may be retried after its first attempt.
    /// Defaults to 2 for the layer, 3 for the function form.
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.settings.max_retries = retries;
        self
    }

    /// Sets the first delay and the longest one; delays double in between, with jitter. The
    /// first must not exceed the longest, which must be above zero. Defaults to 100 ms and
    /// 500 ms for the layer, 1 s and 5 s for the function form.
    pub fn delays(mut self, base: Duration, cap: Duration) -> Self {
        self.settings.base_delay = base;
        self.settings.max_delay = cap;
        self
    }

    /// Sets the jitter factor, from 0 to 100: each delay grows by a random share of itself up
    /// to this (0 for none, 1 for up to double). Defaults to 1.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.settings.jitter = jitter;
        self
    }

    /// Sets the overall deadline from the first attempt; no retry starts that could not finish
    /// by then. Defaults to 2 s for the layer, 15 s for the function form.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.settings.deadline = deadline;
        self
    }
}
