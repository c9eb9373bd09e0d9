//! Positions in the primary's write-ahead log, and reading the primary's current one for many
//! writes at once.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use ballast_core::Failure;

use crate::connect::Connect;
use crate::pool::SharedPool;

/// A position in a PostgreSQL primary's write-ahead log (a `pg_lsn`), written as PostgreSQL
/// writes it: two hexadecimal numbers, `16/B374D848`.
///
/// The read-your-writes token is one: the primary's position after a write committed. A replica
/// that has replayed up to it shows that write.
///
/// ```
/// use ballast_pool::WalPosition;
///
/// let position: WalPosition = "16/B374D848".parse().unwrap();
/// assert_eq!(position.to_string(), "16/B374D848");
/// assert!(position > "16/0".parse().unwrap());
/// assert!("16-B374D848".parse::<WalPosition>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalPosition(u64);

impl WalPosition {
    /// The largest position: what a write's token says when the primary's position could not
    /// be read after it (a read caps it at the primary's position then).
    pub const MAX: WalPosition = WalPosition(u64::MAX);
}

impl From<u64> for WalPosition {
    fn from(position: u64) -> Self {
        WalPosition(position)
    }
}

impl From<WalPosition> for u64 {
    fn from(position: WalPosition) -> Self {
        position.0
    }
}

impl fmt::Display for WalPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// A text that is not a WAL position (`X/Y`, each up to eight hexadecimal digits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidWalPosition;

impl fmt::Display for InvalidWalPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a WAL position such as 16/B374D848")
    }
}

impl std::error::Error for InvalidWalPosition {}

impl FromStr for WalPosition {
    type Err = InvalidWalPosition;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (high, low) = text.split_once('/').ok_or(InvalidWalPosition)?;
        let half = |part: &str| {
            if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(InvalidWalPosition);
            }
            u64::from_str_radix(part, 16).map_err(|_| InvalidWalPosition)
        };
        Ok(WalPosition((half(high)? << 32) | half(low)?))
    }
}

/// Reads the primary's current WAL position for whoever asks, one statement for all who asked
/// while one was under way: a write needs a position read *after* it committed, and a read that
/// started after the write did is as good as its own (group commit's trick).
#[derive(Debug, Default)]
pub(super) struct PrimaryPosition {
    /// Reads started so far.
    started: AtomicU64,
    /// The latest read that finished: which one it was, and what it read.
    latest: tokio::sync::Mutex<Option<(u64, u64)>>,
    /// The highest position seen on the primary, by any read (the lag checks included).
    pub(super) known: AtomicU64,
}

impl PrimaryPosition {
    /// The primary's position, read after this call began.
    pub(super) async fn read_now<C: Connect>(
        &self,
        primary: &SharedPool<C>,
    ) -> Result<u64, Failure> {
        let mine = self.started.load(Ordering::SeqCst);
        let mut latest = self.latest.lock().await;
        if let Some((read, position)) = *latest {
            if read > mine {
                return Ok(position);
            }
        }
        let read = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let mut conn = primary.get().await?;
        let position = conn.wal_position().await?.ok_or_else(|| {
            Failure::new(ballast_core::Cause::Internal)
                .with_detail("the primary reports no WAL position")
        })?;
        self.known.fetch_max(position, Ordering::AcqRel);
        *latest = Some((read, position));
        Ok(position)
    }

    /// Notes a position the lag check read.
    pub(super) fn saw(&self, position: u64) {
        self.known.fetch_max(position, Ordering::AcqRel);
    }
}
