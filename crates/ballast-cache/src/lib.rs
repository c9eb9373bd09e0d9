//! A response cache layer bounded by entries **and** bytes, that never stores what is private.
//!
//! A Tower layer ([`CacheLayer`]) over a store ([`ResponseCache`], built on moka) that holds at
//! most 100 entries and 10 MB by default, evicts the least recently used, cleans up every 60 s
//! and reports stats — and is safe to put in front of a multi-user app.
//!
//! # HTTP caching by the standard (RFC 9111, as a shared cache)
//!
//! **What is stored (§3).** Only what asked to be: caching is something a route asks for. A
//! response is stored when its route opted in with [`CacheRouteLayer`] (which sets a
//! [`RouteTtl`], and optionally the route's own statuses, [`RouteStatuses`]) or when it states its
//! own freshness (`Cache-Control: s-maxage`, `max-age`, `no-cache`, or `Expires`). Anything else —
//! a health check, a page nobody meant to cache — passes through (and its key is remembered as not
//! storable). [`ResponseCacheBuilder::store_unmarked`] stores
//! every storable `200` under the layer.
//! - Statuses: the heuristically cacheable ones (RFC 9110 §15.1: 200, 203, 204, 300, 301, 308,
//!   404, 405, 410, 414, 501), or the route's; never a `206`, never another 5xx, never a response
//!   that carries a classified failure (the error layer's 503s included).
//! - Never with `Set-Cookie`, `Cache-Control: no-store` or `private` (with or without field
//!   names: the fields-only reading is allowed, storing none of it is the safe one), or
//!   `Vary: *`.
//! - Only `GET` responses; a `HEAD` is answered from a stored `GET`. Requests with
//!   `Authorization` or `Cookie` bypass the cache unless the application opts in with a key that
//!   includes the user; so do requests that say `Cache-Control: no-store`, `Range` requests and
//!   requests with `If-Match`, `If-Unmodified-Since` or `If-Range` — they neither use nor mark
//!   the cache. A request's `no-cache` (or `Pragma: no-cache`, §5.4), a `max-age` younger than the
//!   stored response or a `min-fresh` it cannot meet (§5.2.1) is answered only after the service
//!   was asked (a conditional request when there is a validator).
//! - The key is host, path and query, plus the values of the request headers the response
//!   varies on (`Vary`), plus the values of forwarding and override headers that applications
//!   reflect without saying `Vary` ([`DEFAULT_KEYED_HEADERS`]: a poisoned `X-Forwarded-Host`
//!   reaches nobody else). The key function is pluggable ([`CacheLayer::key_fn`]).
//! - Bodies up to `max_entry_bytes` (1 MiB by default) are stored; a larger or endless body
//!   streams through untruncated and is not stored, and the layer never holds more than the
//!   limit of it.
//!
//! **Freshness (§4.2).** The lifetime is `s-maxage`, then `max-age`, then `Expires` minus `Date`
//! (all three HTTP-date formats, RFC 9110 §5.6.7; an invalid `Expires` such as `0` is already
//! expired, §5.3), capped by the route's TTL and by the configured TTL (60 s), the longest the
//! application lets anything be kept. Directives repeated with different values, or malformed
//! (`max-age=abc`), make the response stale. The age is RFC 9111's corrected initial age (§4.2.3:
//! the `Age` it arrived with or its `Date`'s apparent age, plus the time the service took) plus
//! the time stored: a response with `Age: 7200` and `max-age=3600` is stale on arrival. A hit
//! sends that age as `Age`; the request that stored a response forwards the service's `Age`
//! untouched. A response stored without a `Date` gets the time it arrived (RFC 9110 §6.6.1), so
//! a hit's `Date` and `Age` agree instead of the server stamping a `Date` of now on an old
//! response; one stored without a validator gets a strong `ETag` of its body (its length and a
//! fixed-seed hash, the same on every instance), so a browser's or a CDN's `If-None-Match` is
//! answered `304` from the cache. That tag is the cache's own: it is never sent to the service
//! to revalidate with.
//!
//! **Validation (§4.3).** A stale response with a validator (`ETag`, `Last-Modified`) is kept
//! and revalidated rather than fetched again: the service gets `If-None-Match` /
//! `If-Modified-Since`, and a `304` updates the stored header fields (§3.2, §4.3.4: all but
//! `Content-Length` and the connection's own) and makes it fresh again, without the body being
//! sent. `no-cache` stores a response that is validated before every use; `must-revalidate`,
//! `proxy-revalidate` and `s-maxage` (which implies `proxy-revalidate`, §5.2.2.10) forbid serving
//! it stale. A client's `If-None-Match` (weak comparison, `*`) or `If-Modified-Since` that the
//! response it gets satisfies is answered `304 Not Modified` with the fields RFC 9110 §15.4.5
//! lists; the cache takes those conditions out of the request it forwards, so a conditional first
//! request for a cold key still stores the whole response. `x-cache: REVALIDATED` (when on) and
//! [`CacheStats::revalidated`] count the `304`s that kept a body.
//!
//! **Invalidation (§4.4).** A successful (2xx, 3xx) response to an unsafe method (`POST`, `PUT`,
//! `PATCH`, `DELETE`, any other) invalidates what is stored for its target's path, and for the
//! paths its `Location` and `Content-Location` name on the same host (every query and variant of
//! those paths: more than the target URI, which the RFC allows).
//!
//! **Declared invalidation.** What a write changes elsewhere — a `/popular` list after a new
//! bookmark — is declared, not coded in handlers: the reads are tagged
//! ([`CacheRouteLayer::tag`]), the writing routes name the tag ([`InvalidateLayer::tag`], or
//! a prefix), and the write's success removes every response stored with it, on every instance
//! with shared invalidation. A handler can add its own [`Invalidates`] to its response; a job
//! with no request calls [`ResponseCache::invalidate_tag`].
//!
//! **Not implemented, on purpose.** Heuristic freshness from `Last-Modified` (§4.2.2: a route
//! states its lifetime instead); assembling or storing partial content (`206`); storing the rest
//! of a `private="field"` response; `HEAD` responses updating a stored `GET` (§4.3.5, a MAY);
//! serving stale responses the client allows with `max-stale` (the cache answers fresh or
//! revalidates); `only-if-cached`.
//!
//! The rules are pure functions (`rules/`), computed once when a response is stored, each tested
//! by the section of RFC 9111 it implements (`tests/rfc9111.rs`); why not `http-cache-semantics`
//! is in the workspace's `docs/architecture.md`.
//!
//! # Stale over nothing (RFC 5861)
//!
//! A stored response stays available past its freshness for a `stale_if_error` window (5 min by
//! default, or the response's own `stale-if-error=N`), within the same bounds. A `GET` for it asks
//! the service again; when the service fails — a 5xx, a classified failure such as the database
//! being down, an error — the stale response is served instead, with its `Age`
//! (`x-cache: STALE`). So is a service that hangs: when the request has a deadline (ballast's
//! `RequestTimeoutLayer` further out sets one for it, through `ballast_core::scope`) and the
//! service has not answered 100 ms before it — a locked table, a database that accepts
//! connections and never answers — the cache stops waiting, drops the request to the service
//! (its query is cancelled, as any abandoned request's is) and answers with the stale copy,
//! where the deadline layer would have answered 503 without the cache ever seeing a failure. Concurrent requests for a stale entry wait for one answer of the service
//! rather than each asking a failing one. A response that says `stale-while-revalidate=N` is
//! served stale at once within that window while one background request refreshes it.
//! `must-revalidate`, `proxy-revalidate` and `s-maxage` (which implies `proxy-revalidate`) forbid
//! serving a response stale. [`CacheStats::stale`] counts stale responses served.
//!
//! # Bounds, eviction, cleanup, stats
//!
//! `max_entries` (100) and `max_bytes` (10 MiB, counting keys, headers, bodies and a fixed
//! per-entry overhead) hold together: each entry weighs `max(size, max_bytes / max_entries)`
//! against a moka capacity of `max_bytes`. Eviction is LRU by default — moka's TinyLFU may refuse
//! new keys when full, which an LRU cache never does — with TinyLFU selectable
//! ([`Eviction`]). Only responses take these places: what the cache remembers of a key whose
//! response was not stored — hit-for-pass (`private`, `no-store`, a status outside the set) or a
//! route that never asked — is kept apart, in a bound of its own (10,000 keys, LRU, for the
//! TTL), so a flood of URLs nobody caches (404s for ids that do not exist, a crawler's random
//! queries) turns over those notes and evicts no stored response; a stored response leaves only
//! for other stored responses, least recently used first. moka evicts lazily; [`ResponseCache::stats`] runs the pending work first, so
//! its figures are exact. [`ResponseCache::spawn_cleanup`] removes expired entries every 60 s and
//! can be stopped ([`CleanupTask::stop`]); [`ResponseCache::clear`] empties the cache;
//! [`ResponseCache::invalidate_path`], [`invalidate_prefix`](ResponseCache::invalidate_prefix) and
//! [`invalidate_if`](ResponseCache::invalidate_if) drop what a write made stale.
//!
//! # Several instances (feature `redis`)
//!
//! Each instance's cache is its own. With the `redis` feature, `redis::SharedInvalidation`
//! publishes every path, prefix and tag invalidation (and the automatic ones after a write) on a Redis
//! channel and applies the other instances' as they arrive; Redis down never fails a request
//! (entries then live at most a fallback TTL). See the module's docs.
//!
//! # Stampedes
//!
//! Concurrent misses of one key run the inner service once, when its answer can serve them
//! (RFC 9111 §4, "collapsed requests"): the first request asks the service, and the others wait
//! for it only if its route asked to be cached ([`CacheRouteLayer`] says so as the request
//! reaches the route, before the handler runs) or the key is known to store (it held a
//! response, or the cache stores unmarked responses). A route that never asked is never
//! collapsed: its requests run side by side. The waiters get the stored response; the moment
//! the first answer turns out not storable, fails, or its client goes away, every waiter goes to
//! the service at once, on its own. A key whose response may not be stored (private,
//! `no-store`, `Set-Cookie`, a status outside the set) is remembered for the TTL
//! ("hit-for-pass", Varnish's hit-for-miss), so its later requests go straight to the service
//! instead of queueing behind each other; a failure or 5xx is not remembered, since the next
//! answer may well be storable. The one wait left is the first time a key that asked answers
//! something it may not store: the others waited one handler time for that news (the cost RFC
//! 9111 §4 notes). A request that arrives in the microseconds before the first has been routed
//! goes on its own.
//! A route that never asked to be cached is remembered too, and passed by as if the cache were
//! not there: no `x-cache` header, counted as bypassed rather than missed, so the hit ratio says
//! how the cached routes do. The route's choice is read first: a response that neither its route
//! nor its own freshness (`max-age`, `s-maxage`, `Expires`, `no-cache`) asked to cache is passed
//! by whatever else it says (`no-store`, a 404).
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use ballast_cache::{CacheLayer, CacheRouteLayer, ResponseCache};
//!
//! let cache = ResponseCache::builder()
//!     .max_entries(1_000)
//!     .max_bytes(8 * 1024 * 1024)
//!     .ttl(Duration::from_secs(30))
//!     .build()?;
//! let cleanup = cache.spawn_cleanup();
//! let app: Router = Router::new()
//!     .route("/items", get(|| async { "[]" }).layer(CacheRouteLayer::ttl(Duration::from_secs(10))))
//!     .route("/healthz", get(|| async { "ok" })) // never cached: it did not ask
//!     .layer(CacheLayer::new(cache.clone()).x_cache_header(true));
//! // ... serve `app`; after a write to /items: cache.invalidate_path("/items").await;
//! // on shutdown:
//! cleanup.stop().await;
//! cache.clear().await;
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! # Performance
//!
//! `cargo bench -p ballast-cache --bench hit` compares a hit with a bare service returning the
//! same bytes; `cargo bench -p ballast-cache --bench memory` reports resident memory after
//! 1,000,000 distinct keys and the hit ratios of LRU and TinyLFU on a Zipf trace. The goals: a hit
//! within 1 µs of the bare service; a 64 MiB cache growing the process by at most 96 MiB. The
//! figures are in the workspace's `docs/benchmarks.md`.

mod body;
mod builder;
mod collapse;
mod entry;
mod fence;
mod invalidate;
mod key;
mod layer;
#[cfg(feature = "redis")]
pub mod redis;
mod route;
mod rules;
mod stats;
mod store;

pub use ballast_core::ConfigError;
pub use body::CacheBody;
pub use builder::{Eviction, ResponseCacheBuilder};
pub use invalidate::{Invalidate, InvalidateFuture, InvalidateLayer, Invalidates};
pub use key::CacheKey;
pub use layer::{Cache, CacheLayer, ResponseFuture, X_CACHE};
pub use route::{CacheRoute, CacheRouteLayer, RouteFuture, RouteStatuses, RouteTags, RouteTtl};
pub use rules::DEFAULT_KEYED_HEADERS;
pub use stats::{CacheStats, CleanupTask};
pub use store::ResponseCache;
