//! What the store holds: a response as stored, and the notes that stand in for one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode};

use crate::key::CacheKey;
use crate::rules::{Lifetime, StaleWindows};

/// Fixed cost counted for each entry on top of its key, headers and body: the entry's own
/// bookkeeping (moka's node, the `Arc`, the header map's table).
const ENTRY_OVERHEAD: u64 = 256;

/// A stored response, or the note that responses for this key vary on some request headers.
#[derive(Debug)]
// Every value lives behind the entry's `Arc`: a note is as big as a response, which the fixed
// per-entry overhead in the byte count already covers, and a hit is spared a second pointer.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Stored {
    Response(StoredResponse),
    Vary(Vec<HeaderName>),
}

/// What the cache remembers of a key whose response was not stored: kept apart from the stored
/// responses, in a bound of its own ([`NOTES`](crate::store::NOTES)), so that a flood of URLs
/// nobody caches pushes out other notes, never a stored response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Note {
    /// "Hit-for-pass": requests for this key go straight to the service, without waiting on
    /// each other, until the note expires (the TTL) and the key is tried again.
    Pass,
    /// The same for a key whose route never asked to be cached: passed by as silently as a
    /// request the cache does not look at (no `x-cache`, counted as bypassed, not as a miss).
    Bypass,
}

/// A response as stored.
#[derive(Debug)]
pub(crate) struct StoredResponse {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) stored_at: Instant,
    /// How long it is fresh, how old it was when stored, whether every use needs validation.
    pub(crate) lifetime: Lifetime,
    /// Whether it carries a validator (`ETag`, `Last-Modified`) to revalidate it with.
    pub(crate) validator: bool,
    /// How long past its freshness it may still be served (RFC 5861).
    pub(crate) stale: StaleWindows,
    /// Held by the request revalidating it, so concurrent requests for a stale entry wait for
    /// one answer of the service instead of each asking it.
    pub(crate) revalidating: tokio::sync::Mutex<()>,
    /// When revalidating it last failed: requests that waited for that answer take it as theirs.
    pub(crate) failed_at: std::sync::Mutex<Option<Instant>>,
    /// The tags its route gave it ([`RouteTags`](crate::RouteTags)), by which a write
    /// invalidates it.
    pub(crate) tags: Option<Arc<[String]>>,
}

/// Where a stored response stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Within its time to live: served as it is.
    Fresh,
    /// Stale, within `stale-while-revalidate`: served, and revalidated in the background.
    WhileRevalidating,
    /// Stale, within `stale-if-error`: the service is asked, and if it fails this is served.
    IfError,
    /// Stale (or `no-cache`) with a validator: the service is asked whether it changed
    /// (RFC 9111 §4.3); a `304` makes it fresh again.
    Validate,
    /// Too old to serve.
    Expired,
}

impl StoredResponse {
    /// Its current age (RFC 9111 §4.2.3): its age when stored plus the time since. This is the
    /// `Age` a hit sends.
    pub(crate) fn age(&self) -> Duration {
        self.lifetime.initial_age + self.stored_at.elapsed()
    }

    /// Where it stands at `age` (one clock read serves both this and the `Age` header).
    pub(crate) fn freshness(&self, age: Duration) -> Freshness {
        // `no-cache` (§5.2.2.4): never used without validation, however long its `max-age`; it
        // has no stale windows either (see `stale_windows`).
        let fresh_for = if self.lifetime.always_validate {
            Duration::ZERO
        } else {
            self.lifetime.fresh_for
        };
        if age < fresh_for {
            Freshness::Fresh
        } else if age < fresh_for + self.stale.while_revalidate {
            Freshness::WhileRevalidating
        } else if age < fresh_for + self.stale.if_error {
            Freshness::IfError
        } else if self.validator {
            Freshness::Validate
        } else {
            Freshness::Expired
        }
    }

    /// Whether it may still stand in for a failing service.
    pub(crate) fn usable_if_error(&self) -> bool {
        self.age() < self.lifetime.fresh_for + self.stale.if_error.max(self.stale.while_revalidate)
    }

    /// How long it is kept: the rest of its freshness and the longest stale window after it, and
    /// with a validator at least `revalidation` more, to be revalidated rather than fetched again.
    pub(crate) fn keep(&self, revalidation: Duration) -> Duration {
        let window = self.stale.if_error.max(self.stale.while_revalidate);
        let window = if self.validator {
            window.max(revalidation)
        } else {
            window
        };
        self.lifetime
            .fresh_for
            .saturating_sub(self.lifetime.initial_age)
            + window
    }
}

/// A stored value with its size, computed once.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) stored: Stored,
    pub(crate) size: u64,
}

impl Entry {
    pub(crate) fn new(key: &CacheKey, stored: Stored) -> Arc<Self> {
        let content = match &stored {
            Stored::Response(response) => {
                let headers: usize = response
                    .headers
                    .iter()
                    .map(|(name, value)| name.as_str().len() + value.len() + 16)
                    .sum();
                (headers + response.body.len()) as u64
            }
            Stored::Vary(names) => names.iter().map(|name| name.as_str().len() as u64).sum(),
        };
        Arc::new(Entry {
            stored,
            size: key.size() + content + ENTRY_OVERHEAD,
        })
    }

    /// The tags the stored response was stored with, if it is a response that has some.
    pub(crate) fn tags(&self) -> Option<&[String]> {
        match &self.stored {
            Stored::Response(response) => response.tags.as_deref(),
            Stored::Vary(_) => None,
        }
    }

    /// How long moka keeps the entry: a response as long as it may be served, stale included.
    pub(crate) fn keep(&self, default: Duration) -> Duration {
        match &self.stored {
            Stored::Response(response) => response.keep(default),
            Stored::Vary(_) => default,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(fresh: u64, while_revalidate: u64, if_error: u64, validator: bool) -> StoredResponse {
        StoredResponse {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            stored_at: Instant::now(),
            lifetime: Lifetime {
                fresh_for: Duration::from_secs(fresh),
                initial_age: Duration::ZERO,
                always_validate: false,
            },
            validator,
            stale: StaleWindows {
                if_error: Duration::from_secs(if_error),
                while_revalidate: Duration::from_secs(while_revalidate),
            },
            revalidating: tokio::sync::Mutex::new(()),
            failed_at: std::sync::Mutex::new(None),
            tags: None,
        }
    }

    #[test]
    fn a_stored_response_goes_stale_through_its_windows_in_order() {
        let response = stored(10, 5, 60, true);
        let at = |secs| response.freshness(Duration::from_secs(secs));
        assert_eq!(at(0), Freshness::Fresh);
        assert_eq!(at(9), Freshness::Fresh);
        assert_eq!(at(10), Freshness::WhileRevalidating);
        assert_eq!(at(14), Freshness::WhileRevalidating);
        assert_eq!(at(15), Freshness::IfError);
        assert_eq!(at(69), Freshness::IfError);
        assert_eq!(at(70), Freshness::Validate);
        // Without a validator, past every window it cannot be used at all.
        let response = stored(10, 0, 0, false);
        assert_eq!(
            response.freshness(Duration::from_secs(10)),
            Freshness::Expired
        );
    }

    #[test]
    fn no_cache_is_validated_before_every_use_however_young() {
        // `Cache-Control: no-cache, max-age=3600` with an `ETag`: stored, never served unchecked
        // (it was served stale while revalidating in the background before).
        let mut response = stored(3600, 0, 0, true);
        response.lifetime.always_validate = true;
        assert_eq!(response.freshness(Duration::ZERO), Freshness::Validate);
        assert_eq!(
            response.freshness(Duration::from_secs(10)),
            Freshness::Validate
        );
    }
}
