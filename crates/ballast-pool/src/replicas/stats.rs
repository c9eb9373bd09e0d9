//! A [`ReplicaSet`](crate::ReplicaSet)'s figures.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::Route;
use crate::stats::PoolStats;

/// A [`ReplicaSet`](crate::ReplicaSet)'s figures ([`ReplicaSet::stats`](crate::ReplicaSet::stats)).
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaStats {
    /// Each replica, in the order added.
    pub replicas: Vec<ReplicaState>,
    /// Where reads went, by reason.
    pub routes: ReadRoutes,
}

impl ReplicaStats {
    /// Reads a replica served.
    pub fn reads_to_replicas(&self) -> u64 {
        self.routes.replica + self.routes.replica_after_wait
    }

    /// Reads the primary served.
    pub fn reads_to_primary(&self) -> u64 {
        self.routes.primary_no_replica + self.routes.primary_behind_token
    }
}

/// Where reads went, by reason.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ReadRoutes {
    /// To a fresh replica at once (it had replayed the read's token, if it had one).
    pub replica: u64,
    /// To a replica after waiting for it to replay the read's token.
    pub replica_after_wait: u64,
    /// To the primary: no replica was fresh, or none handed out a connection within 50 ms.
    pub primary_no_replica: u64,
    /// To the primary: no fresh replica had replayed the read's token in time.
    pub primary_behind_token: u64,
}

impl ReadRoutes {
    /// The counts with their reasons' names, as metrics label them.
    pub fn by_reason(&self) -> [(&'static str, u64); 4] {
        [
            ("replica", self.replica),
            ("replica_after_wait", self.replica_after_wait),
            ("primary_no_replica", self.primary_no_replica),
            ("primary_behind_token", self.primary_behind_token),
        ]
    }
}

/// One replica's state at its last lag check.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaState {
    /// Whether it takes reads.
    pub fresh: bool,
    /// How far behind the primary it was, in seconds; `None` when it could not be read.
    pub lag_seconds: Option<f64>,
    /// Its pool's figures.
    pub pool: PoolStats,
}

#[derive(Debug, Default)]
pub(super) struct RouteCounters([AtomicU64; 4]);

impl RouteCounters {
    pub(super) fn count(&self, route: Route) {
        let index = match route {
            Route::Replica => 0,
            Route::ReplicaAfterWait => 1,
            Route::PrimaryNoReplica => 2,
            Route::PrimaryBehindToken => 3,
        };
        self.0[index].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> ReadRoutes {
        let get = |index: usize| self.0[index].load(Ordering::Relaxed);
        ReadRoutes {
            replica: get(0),
            replica_after_wait: get(1),
            primary_no_replica: get(2),
            primary_behind_token: get(3),
        }
    }
}
