//! Whether a response may be stored, and storing it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use ballast_core::BoxError;
use bytes::{Bytes, BytesMut};
use http::Response;
use http_body::{Body, Frame};

use super::hit::hit;
use crate::body::CacheBody;
use crate::entry::{Entry, Note, Stored, StoredResponse};
use crate::key::CacheKey;
use crate::rules::{self, NotStored};
use crate::store::{Event, ResponseCache};

/// Decides whether `response` may be stored and stores it: the entry for `key` on success
/// (a note of the `Vary` headers when the response varies, the response itself stored under
/// its variant), or the response to send on unchanged.
pub(super) async fn store<ResBody>(
    cache: &ResponseCache,
    key: &CacheKey,
    request_headers: &http::HeaderMap,
    response: Response<ResBody>,
    exchange: rules::Exchange,
    as_of: Instant,
) -> Result<StoreOutcome, (Response<CacheBody<ResBody>>, Remember)>
where
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let lifetime = match rules::response_freshness(
        response.status(),
        response.headers(),
        response.extensions(),
        &cache.inner.statuses,
        cache.inner.default_ttl,
        cache.inner.store_unmarked,
        exchange,
    ) {
        Ok(lifetime) => lifetime,
        Err(reason @ (NotStored::NotAsked | NotStored::NotAskedFailure)) => {
            // The route never asked to be cached: not a miss, and nothing to say about it.
            cache.count(Event::Bypassed);
            let remember = if reason == NotStored::NotAsked {
                Remember::Bypass
            } else {
                Remember::Silently
            };
            return Err((response.map(CacheBody::inner), remember));
        }
        Err(reason) => {
            cache.count(Event::NotStorable);
            // A failure is transient: the next request may well be storable. What the response
            // says about itself (private, no-store, Set-Cookie, a status outside the set) holds
            // for its key: remember it.
            let remember = if matches!(reason, NotStored::Failure | NotStored::Status5xx) {
                Remember::Nothing
            } else {
                Remember::Pass
            };
            return Err((response.map(CacheBody::inner), remember));
        }
    };
    let vary = rules::vary_names(response.headers()).unwrap_or_default();
    let stale = rules::stale_windows(response.headers(), cache.inner.stale_if_error);
    let (parts, body) = response.into_parts();
    let body = match read_up_to(body, cache.inner.max_entry_bytes).await {
        Ok(body) => body,
        Err((reason, body)) => {
            cache.count(match reason {
                NotStored::TooLarge => Event::TooLarge,
                _ => Event::NotStorable,
            });
            return Err((Response::from_parts(parts, body), Remember::Nothing));
        }
    };
    let mut headers = parts.headers;
    let validator = headers.contains_key(http::header::ETAG)
        || headers.contains_key(http::header::LAST_MODIFIED);
    describe(&mut headers, &body, exchange.response_time, validator);
    let stored = StoredResponse {
        status: parts.status,
        headers,
        body,
        stored_at: Instant::now(),
        lifetime,
        validator,
        stale,
        revalidating: tokio::sync::Mutex::new(()),
        failed_at: std::sync::Mutex::new(None),
        tags: parts
            .extensions
            .get::<crate::RouteTags>()
            .map(|tags| Arc::clone(&tags.0)),
    };
    if cache
        .inner
        .fence
        .predates(key, stored.tags.as_deref(), as_of)
    {
        // Built from data older than an invalidation of its key: it would hide that write.
        cache.count(Event::NotStorable);
        return Err((hit(&stored, None, false, false, "MISS"), Remember::Nothing));
    }
    if vary.is_empty() {
        return Ok(StoreOutcome {
            entry: Entry::new(key, Stored::Response(stored)),
            variant: None,
            variant_key: None,
        });
    }
    // The response varies: it belongs under its variant's key, and the primary key gets a note
    // of the headers it varies on, so later requests look for their own variant.
    let variant_key = key.with_variant(rules::variant(request_headers, &vary));
    let response = Entry::new(&variant_key, Stored::Response(stored));
    let note = Entry::new(key, Stored::Vary(vary));
    if variant_key == *key {
        // Looked up by its variant already (the note existed): refresh the note, and the
        // response is this key's value.
        cache.insert(key.with_variant(String::new()), note).await;
        return Ok(StoreOutcome {
            entry: response,
            variant: None,
            variant_key: None,
        });
    }
    cache
        .insert(variant_key.clone(), Arc::clone(&response))
        .await;
    Ok(StoreOutcome {
        entry: note,
        variant: Some(response),
        variant_key: Some(variant_key),
    })
}

/// Completes what a stored response says about itself, so that a hit tells the caches and
/// clients downstream the truth:
///
/// - a `Date` (RFC 9110 §6.6.1), when the service sent none: the server would add one of its
///   own at every hit, and a hit's `Date` of now beside an `Age` of minutes is a contradiction
///   (linters flag it as a `Date` changed by an intermediary);
/// - a strong `ETag`, when the response has no validator: the body's length and a hash of it,
///   computed once here, so that `If-None-Match` from a browser or a CDN in front is answered
///   `304` from the cache. It is the cache's own: never sent to the service to revalidate with
///   (`validator` stays as the service made it), and the same body gets the same tag on every
///   instance.
fn describe(
    headers: &mut http::HeaderMap,
    body: &Bytes,
    response_time: std::time::SystemTime,
    validator: bool,
) {
    if !headers.contains_key(http::header::DATE) {
        record_date(headers, response_time);
    }
    if !validator {
        use std::hash::BuildHasher;
        // A fixed seed: the tag is the body's, whatever instance stored it.
        let hash = foldhash::quality::FixedState::with_seed(ETAG_SEED).hash_one(&body[..]);
        if let Ok(etag) = http::HeaderValue::from_str(&format!("\"{:x}-{hash:016x}\"", body.len()))
        {
            headers.insert(http::header::ETAG, etag);
        }
    }
}

/// Sets `Date` to `at`.
pub(super) fn record_date(headers: &mut http::HeaderMap, at: std::time::SystemTime) {
    if let Ok(date) = http::HeaderValue::from_str(&httpdate::fmt_http_date(at)) {
        headers.insert(http::header::DATE, date);
    }
}

/// The seed of the hash in the cache's own `ETag`s ("ballast").
const ETAG_SEED: u64 = 0x0062_616c_6c61_7374;

/// What a key whose response was not stored is remembered as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Remember {
    /// Nothing: the next response may be storable (a failure, a 5xx, a body too large).
    Nothing,
    /// Hit-for-pass: the response says it may not be stored (`private`, `no-store`, ...).
    Pass,
    /// The route never asked to be cached: passed by silently from now on.
    Bypass,
    /// The route never asked, and this was a failure: passed by silently, nothing remembered.
    Silently,
}

impl Remember {
    /// Whether the response goes out as if the cache were not there (no `x-cache`, no miss).
    pub(super) fn silent(self) -> bool {
        matches!(self, Remember::Bypass | Remember::Silently)
    }
}

impl Remember {
    /// The note to keep for the key, if any.
    pub(super) fn note(self) -> Option<Note> {
        match self {
            Remember::Nothing | Remember::Silently => None,
            Remember::Pass => Some(Note::Pass),
            Remember::Bypass => Some(Note::Bypass),
        }
    }
}

/// What [`store`] stored: the entry for the key, and the response's own entry when it varies.
pub(super) struct StoreOutcome {
    pub(super) entry: Arc<Entry>,
    variant: Option<Arc<Entry>>,
    /// Where the response itself went, when it varies.
    variant_key: Option<CacheKey>,
}

impl StoreOutcome {
    /// The storing request's own response: the one stored (under its variant, when the response
    /// varies).
    /// Takes what was stored out again when an invalidation of `key` came after `as_of` while
    /// it was being stored (the check in [`store`] and moka's insert are not one step).
    pub(super) async fn unless_superseded(
        &self,
        cache: &ResponseCache,
        key: &CacheKey,
        as_of: Instant,
    ) {
        if cache.inner.fence.predates(
            key,
            self.entry
                .tags()
                .or(self.variant.as_ref().and_then(|v| v.tags())),
            as_of,
        ) {
            cache.inner.moka.invalidate(key).await;
            if let Some(variant) = &self.variant_key {
                cache.inner.moka.invalidate(variant).await;
            }
        }
    }

    pub(super) fn own_response<B>(&self) -> Option<Response<CacheBody<B>>> {
        match &self.variant.as_ref().unwrap_or(&self.entry).stored {
            Stored::Response(stored) => Some(hit(stored, None, false, false, "MISS")),
            Stored::Vary(_) => None,
        }
    }
}

/// Inserts `entry` (a stored response refreshed by a revalidation) under `key`, unless an
/// invalidation of `key` came after `as_of`: then the key is emptied instead.
pub(super) async fn insert_fenced(
    cache: &ResponseCache,
    key: CacheKey,
    entry: Arc<Entry>,
    as_of: Instant,
) {
    if cache.inner.fence.predates(&key, entry.tags(), as_of) {
        cache.inner.moka.invalidate(&key).await;
        return;
    }
    cache.insert(key.clone(), Arc::clone(&entry)).await;
    if cache.inner.fence.predates(&key, entry.tags(), as_of) {
        cache.inner.moka.invalidate(&key).await;
    }
}

/// Reads `body` into memory, stopping as soon as it exceeds `limit`: then the frames read so far
/// and the rest of the body come back as one body, untruncated.
pub(super) async fn read_up_to<ResBody>(
    body: ResBody,
    limit: u64,
) -> Result<Bytes, (NotStored, CacheBody<ResBody>)>
where
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    if body.size_hint().lower() > limit {
        return Err((NotStored::TooLarge, CacheBody::inner(body)));
    }
    // Boxed so that what is left of it can be handed on, whatever the body type.
    let mut body = Box::pin(body);
    let mut frames: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut read: u64 = 0;
    loop {
        let frame = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await;
        match frame {
            None => break,
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    read += data.len() as u64;
                }
                let trailers = frame.is_trailers();
                frames.push_back(frame);
                if read > limit || trailers {
                    let reason = if trailers {
                        NotStored::BodyError
                    } else {
                        NotStored::TooLarge
                    };
                    return Err((reason, CacheBody::prefixed(frames, None, Some(body))));
                }
            }
            Some(Err(error)) => {
                return Err((
                    NotStored::BodyError,
                    CacheBody::prefixed(frames, Some(error.into()), None),
                ));
            }
        }
    }
    let mut bytes = BytesMut::with_capacity(read as usize);
    for frame in frames {
        if let Ok(data) = frame.into_data() {
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes.freeze())
}
