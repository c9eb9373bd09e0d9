//! [`ConfigError`]: the one shape every ballast builder rejects a setting with.

use std::fmt;

use crate::{Cause, Failure};

/// A setting that was rejected: which one, and why. Never contains a password.
///
/// Every ballast builder — the pool's configuration, the cache's, the retry layer's — reports a
/// bad setting this way, from its `build` (or, for the pool, from parsing its URL), so an
/// application can fail at startup with one line that names the setting.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigError {
    /// The setting: a URL parameter or builder method name, or `url` for a URL itself.
    pub setting: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    /// `setting` was rejected for `reason`.
    pub fn new(setting: &'static str, reason: impl Into<String>) -> Self {
        ConfigError {
            setting,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid setting `{}`: {}", self.setting, self.reason)
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for Failure {
    /// An [`InvalidConfig`](Cause::InvalidConfig) failure (`DB_INIT_ERROR`, not retryable).
    fn from(error: ConfigError) -> Self {
        Failure::new(Cause::InvalidConfig).with_detail(error.to_string())
    }
}
