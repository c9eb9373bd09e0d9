//! The [`Cache`] service: where each request goes.

use std::fmt;
use std::task::{Context, Poll};

use ballast_core::BoxError;
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::future::{now_or_never, Kind, ResponseFuture};
use super::hit::hit;
use super::miss::{answer_conditions, lookup};
use super::write::WriteInvalidation;
use super::CacheLayer;
use crate::body::CacheBody;
use crate::entry::{Freshness, Note, Stored};
use crate::key::{key_buffer, CacheKey};
use crate::rules::{self};
use crate::store::Event;

/// The service made by [`CacheLayer`].
#[derive(Clone)]
pub struct Cache<S> {
    pub(super) inner: S,
    pub(super) layer: CacheLayer,
}

impl<S> Cache<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, this one taken apart.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for Cache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Cache<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + Sync + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let layer = &self.layer;
        let (parts, body) = request.into_parts();
        if !parts.method.is_safe() {
            // An unsafe method's success makes what is stored for its target stale (§4.4).
            let target = WriteInvalidation::of(&parts);
            layer.cache.count(Event::Bypassed);
            let request = Request::from_parts(parts, body);
            return ResponseFuture {
                kind: Kind::Invalidate {
                    future: self.inner.call(request),
                    invalidation: Some((layer.cache.clone(), target)),
                },
            };
        }
        let scan = rules::Scan::of(
            &parts.headers,
            layer.credentialed,
            &layer.cache.inner.keyed_headers,
        );
        let key = if scan.bypasses(&parts.method, &parts.headers) {
            None
        } else {
            match &layer.key {
                Some(key) => key(&parts).map(|primary| CacheKey::new(parts.uri.path(), &primary)),
                None => {
                    // The path and the default primary key, built in one buffer: the thread's
                    // own, given back by a fresh hit, so most hits allocate no key.
                    let path = parts.uri.path();
                    let mut text = key_buffer();
                    text.reserve(path.len() + 64);
                    text.push_str(path);
                    rules::push_default_key(
                        &mut text,
                        &parts,
                        &layer.cache.inner.keyed_headers,
                        &scan,
                    );
                    Some(CacheKey::from_text(text, path.len()))
                }
            }
        };
        let found = key
            .as_ref()
            .and_then(|key| now_or_never(layer.cache.inner.moka.get(key)));
        // A fresh hit is answered here: no clone of the inner service, no boxed future. A request
        // with its own cache directives is decided in `lookup`.
        let directed = scan.cache_control || scan.pragma;
        if let (Some(Some(entry)), false) = (&found, directed) {
            if let Stored::Response(stored) = &entry.stored {
                let age = stored.age();
                if let Freshness::Fresh = stored.freshness(age) {
                    layer.cache.count(Event::Hit);
                    let head = parts.method == Method::HEAD;
                    let mut response = hit(stored, Some(age), head, layer.x_cache, "HIT");
                    if scan.conditional {
                        let conditions = rules::Conditions::of(&parts.headers);
                        answer_conditions(&conditions, &mut response);
                    }
                    if let Some(key) = key {
                        key.recycle();
                    }
                    return ResponseFuture {
                        kind: Kind::Ready {
                            response: Some(response),
                        },
                    };
                }
            }
        }
        // Passed by: the inner service's own future, no clone of it, nothing boxed. A key with
        // no stored response may be one the cache remembers as not storable.
        let note = match (&key, &found) {
            (Some(key), Some(None)) => now_or_never(layer.cache.inner.notes.get(key)).flatten(),
            _ => None,
        };
        let pass = match (&key, note) {
            (None, _) => Some(None),
            (Some(_), Some(Note::Pass)) => {
                // Hit-for-pass: this key answered with something that may not be stored.
                layer.cache.count(Event::Miss);
                layer.cache.count(Event::Pass);
                Some(layer.x_cache.then_some("MISS"))
            }
            (Some(_), Some(Note::Bypass)) => {
                // A route that never asked to be cached: passed by as if the cache were not there.
                layer.cache.count(Event::Bypassed);
                Some(None)
            }
            (Some(_), None) => None,
        };
        if let Some(label) = pass {
            if key.is_none() {
                layer.cache.count(Event::Bypassed);
            }
            let request = Request::from_parts(parts, body);
            return ResponseFuture {
                kind: Kind::Pass {
                    future: self.inner.call(request),
                    label,
                },
            };
        }
        // Use the service that was polled ready; leave a clone in its place.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        let request = Request::from_parts(parts, body);
        let Some(key) = key else {
            unreachable!("a request without a key is passed by above")
        };
        ResponseFuture {
            kind: Kind::Boxed {
                future: Box::pin(lookup(inner, layer, key, request, found)),
            },
        }
    }
}

pub(super) async fn pass_through<S, ReqBody, ResBody>(
    mut inner: S,
    request: Request<ReqBody>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let response = inner.call(request).await?;
    Ok(response.map(CacheBody::inner))
}
