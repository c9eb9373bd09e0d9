//! The task that reads each replica's lag, every `lag_check_interval`, never per request.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::{Duration, Instant};

use super::Inner;
use crate::connect::Connect;

/// Where a replica's replay stands.
#[derive(Debug, Clone, Copy)]
#[doc(hidden)]
pub struct Replay {
    /// The WAL position it has replayed up to.
    pub position: u64,
    /// How long ago the last transaction it replayed committed on the primary (zero when it is
    /// not in recovery).
    pub behind: Duration,
}

/// Reads each replica's lag every interval, until the set is dropped or the primary closed.
pub(super) async fn watch_lag<C: Connect>(inner: Weak<Inner<C>>) {
    loop {
        let Some(set) = inner.upgrade() else {
            return;
        };
        if set.primary.is_closed() {
            return;
        }
        let interval = set.check_interval;
        let primary_read_at = Instant::now();
        let primary_position = async {
            let mut conn = set.primary.get().await.ok()?;
            conn.wal_position().await.ok().flatten()
        };
        let primary_position = tokio::time::timeout(interval, primary_position)
            .await
            .ok()
            .flatten();
        if let Some(position) = primary_position {
            set.position.saw(position);
        }
        for replica in &set.replicas {
            let lost = replica.pool.connections_lost();
            let checked_at = Instant::now();
            let status = tokio::time::timeout(interval, async {
                let mut conn = replica.pool.get().await?;
                conn.replay_status().await
            })
            .await;
            let (lag, current_as_of) = match (status, primary_position) {
                // Replayed all the primary had written when it was asked: current as of then.
                (Ok(Ok(Some(status))), Some(primary)) if status.position >= primary => {
                    replica.saw(status.position);
                    (Some(Duration::ZERO), Some(primary_read_at))
                }
                (Ok(Ok(Some(status))), _) => {
                    replica.saw(status.position);
                    (Some(status.behind), checked_at.checked_sub(status.behind))
                }
                _ => (None, None),
            };
            let fresh = lag.is_some_and(|lag| lag <= set.max_lag);
            replica.lost_at_check.store(lost, Ordering::Release);
            if let Some(as_of) = current_as_of {
                replica.set_current_as_of(&set, as_of);
            }
            let was = replica.fresh.swap(fresh, Ordering::AcqRel);
            if was != fresh {
                tracing::info!(
                    replica = %ballast_core::redact(replica.pool.config().driver_url()),
                    fresh,
                    lag = ?lag,
                    "read replica {}",
                    if fresh { "takes reads again" } else { "takes no reads" }
                );
            }
            let micros = lag.map_or(u64::MAX, |lag| {
                u64::try_from(lag.as_micros()).unwrap_or(u64::MAX - 1)
            });
            replica.lag_micros.store(micros, Ordering::Relaxed);
        }
        drop(set);
        tokio::time::sleep(interval).await;
    }
}
