//! The server's connection budget, read on the pool's first connection: the incident's root
//! cause was arithmetic nobody checked — instances × `connection_limit` against the server's
//! `max_connections` — so the pool checks its own share and says so when it cannot fit.

use serde::Serialize;

use crate::config::PoolConfig;

/// The server's connection budget for the pool's login, as read on the pool's first connection
/// ([`PoolStats::budget`](crate::PoolStats::budget)).
///
/// PostgreSQL: `max_connections` minus the reserved slots (`superuser_reserved_connections`, and
/// `reserved_connections` from PostgreSQL 16) for a role that is not a superuser, the role's
/// `CONNECTION LIMIT`, and the client sessions open. MySQL and MariaDB: `max_connections`, the
/// account's `MAX_USER_CONNECTIONS` (or the global `max_user_connections`), and the sessions the
/// login can see in the process list (all of them with the `PROCESS` privilege, else its own).
/// Behind PgBouncer (`pgbouncer=true`) the server's budget is the pooler's to keep, and not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ServerBudget {
    /// The most client sessions the server takes for this login.
    pub server_limit: u32,
    /// The login's own limit, if it has one.
    pub login_limit: Option<u32>,
    /// Sessions on the server when it was read, not counting the pool's own first connection.
    pub server_in_use: u32,
    /// The login's sessions when it was read, not counting the pool's own first connection.
    pub login_in_use: u32,
    /// What was left for this pool: the smaller of the two remainders.
    pub available: u32,
}

impl ServerBudget {
    /// The budget from the figures the server reported, `own` of the sessions being the pool's.
    #[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
    pub(crate) fn new(
        server_limit: u32,
        login_limit: Option<u32>,
        server_in_use: u32,
        login_in_use: u32,
        own: u32,
    ) -> Self {
        let server_in_use = server_in_use.saturating_sub(own);
        let login_in_use = login_in_use.saturating_sub(own);
        let server_left = server_limit.saturating_sub(server_in_use);
        let login_left = login_limit.map_or(u32::MAX, |limit| limit.saturating_sub(login_in_use));
        ServerBudget {
            server_limit,
            login_limit,
            server_in_use,
            login_in_use,
            available: server_left.min(login_left),
        }
    }

    /// Logs one warning when `config`'s `connection_limit` does not fit in what is left.
    pub(crate) fn warn_if_short(&self, config: &PoolConfig) {
        let limit = config.connection_limit();
        if limit <= self.available {
            tracing::debug!(
                ?self,
                connection_limit = limit,
                "the pool fits the server's budget"
            );
            return;
        }
        let login = match self.login_limit {
            Some(login_limit) => format!(
                "; the login may open {login_limit}, {} of them in use",
                self.login_in_use
            ),
            None => String::new(),
        };
        tracing::warn!(
            connection_limit = limit,
            server_limit = self.server_limit,
            server_in_use = self.server_in_use,
            login_limit = self.login_limit,
            login_in_use = self.login_in_use,
            available = self.available,
            "connection_limit={limit} does not fit the server's connection budget: it takes {} client sessions, {} in use by others{login}, so {} are left for this pool. Lower connection_limit (instances × connection_limit must fit), raise the server's limits, or put PgBouncer in front",
            self.server_limit,
            self.server_in_use,
            self.available,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smaller_remainder_is_what_is_left() {
        // 100 slots, 3 reserved; 40 sessions open of which one is ours; the role may open 15 and
        // has 10 open, ours included.
        let budget = ServerBudget::new(97, Some(15), 40, 10, 1);
        assert_eq!((budget.server_in_use, budget.login_in_use), (39, 9));
        assert_eq!(budget.available, 6);
        let unlimited = ServerBudget::new(97, None, 40, 10, 1);
        assert_eq!(unlimited.available, 58);
        // More in use than allowed (the limit lowered under open sessions): nothing is left.
        assert_eq!(ServerBudget::new(10, Some(2), 12, 5, 1).available, 0);
    }
}
