//! The settings checked together: ranges, and the combinations that cannot work.

use std::time::Duration;

use super::{Backend, ConfigError, PoolConfig, MAX_CONNECTION_LIMIT, MAX_QUEUE_LIMIT, MAX_SECONDS};

impl PoolConfig {
    /// Checks every setting, naming the first one out of range. [`from_url`](Self::from_url)
    /// and [`SharedPool::new`](crate::SharedPool::new) call it: the setters below never fail.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting and the accepted range.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_CONNECTION_LIMIT).contains(&self.connection_limit) {
            return Err(limit_error(&self.connection_limit.to_string()));
        }
        positive_duration("pool_timeout", self.pool_timeout)?;
        positive_duration("connect_timeout", self.connect_timeout)?;
        if let Some(timeout) = self.idle_timeout {
            positive_duration("idle_timeout", timeout)?;
        }
        if let Some(lifetime) = self.max_lifetime {
            positive_duration("max_lifetime", lifetime)?;
        }
        if self.check_idle_after.as_secs_f64() > MAX_SECONDS {
            let got = format!("{:?}", self.check_idle_after);
            return Err(seconds_error("check_idle_after", &got));
        }
        if let Some(target) = self.queue_target {
            positive_duration("queue_target", target)?;
        }
        if let Some(threshold) = self.leak_threshold {
            positive_duration("leak_threshold", threshold)?;
        }
        if self.statement_deadline && self.backend == Backend::Sqlite {
            return Err(ConfigError::new(
                "statement_timeout",
                "deadline is applied on PostgreSQL and MariaDB; SQLite runs in the process",
            ));
        }
        if let Some(limit) = self.queue_limit.filter(|limit| *limit > MAX_QUEUE_LIMIT) {
            return Err(queue_limit_error(&limit.to_string()));
        }
        if self.pgbouncer {
            if self.backend != Backend::Postgres {
                return Err(ConfigError::new(
                    "pgbouncer",
                    "PgBouncer pools PostgreSQL connections only",
                ));
            }
            // Session settings last one transaction behind PgBouncer's transaction mode.
            let session = "a SET lasts one transaction behind PgBouncer in transaction mode: set it on the role (ALTER ROLE ... SET) or in the database entry of pgbouncer.ini";
            if self.schema.is_some() {
                return Err(ConfigError::new("schema", session));
            }
            if self.statement_timeout.is_some() {
                return Err(ConfigError::new("statement_timeout", session));
            }
            if self.statement_deadline {
                return Err(ConfigError::new(
                    "statement_timeout",
                    "deadline sets statement_timeout on the session, which PgBouncer in transaction mode hands to other clients: bound statements with PgBouncer's query_timeout instead",
                ));
            }
        }
        Ok(())
    }
}

pub(crate) fn limit_error(got: &str) -> ConfigError {
    ConfigError::new(
        "connection_limit",
        format!("must be a whole number from 1 to {MAX_CONNECTION_LIMIT} (got {got})"),
    )
}

pub(crate) fn queue_limit_error(got: &str) -> ConfigError {
    ConfigError::new(
        "queue_limit",
        format!("must be a whole number from 0 (no limit) to {MAX_QUEUE_LIMIT} (got {got})"),
    )
}

pub(crate) fn seconds_error(setting: &'static str, got: &str) -> ConfigError {
    ConfigError::new(
        setting,
        format!("must be a number of seconds from 0 to {MAX_SECONDS} (got {got})"),
    )
}

pub(crate) fn seconds(setting: &'static str, value: &str) -> Result<Duration, ConfigError> {
    let got = || format!("{value:?}");
    let secs: f64 = value.parse().map_err(|_| seconds_error(setting, &got()))?;
    if !(0.0..=MAX_SECONDS).contains(&secs) {
        return Err(seconds_error(setting, &got()));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub(crate) fn positive_seconds(
    setting: &'static str,
    value: &str,
) -> Result<Duration, ConfigError> {
    let duration = seconds(setting, value)?;
    positive_duration(setting, duration)
}

pub(crate) fn optional_seconds(
    setting: &'static str,
    value: &str,
) -> Result<Option<Duration>, ConfigError> {
    let duration = seconds(setting, value)?;
    Ok((!duration.is_zero()).then_some(duration))
}

pub(crate) fn positive_duration(
    setting: &'static str,
    duration: Duration,
) -> Result<Duration, ConfigError> {
    if duration.is_zero() || duration.as_secs_f64() > MAX_SECONDS {
        return Err(ConfigError::new(
            setting,
            format!("must be greater than 0 and at most {MAX_SECONDS} seconds (got {duration:?})"),
        ));
    }
    Ok(duration)
}
