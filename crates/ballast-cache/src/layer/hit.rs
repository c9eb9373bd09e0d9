//! Answering from a stored response.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, AGE, CONTENT_LENGTH};
use http::Response;

use super::X_CACHE;
use crate::body::CacheBody;
use crate::entry::StoredResponse;

/// The response from a stored one: its status, headers and body, with `Age`, and
/// `x-cache: <label>` when enabled.
pub(super) fn hit<ResBody>(
    stored: &StoredResponse,
    age: Option<Duration>,
    head: bool,
    x_cache: bool,
    label: &'static str,
) -> Response<CacheBody<ResBody>> {
    let body = if head {
        Bytes::new()
    } else {
        stored.body.clone()
    };
    let mut response = Response::new(CacheBody::cached(body));
    *response.status_mut() = stored.status;
    // Room for `Age`, `X-Cache` (and a HEAD's `Content-Length`) from the start: a clone has
    // none, and a header map grows on any insert when full, even one that replaces a value.
    let headers = response.headers_mut();
    headers.reserve(stored.headers.len() + 3);
    for (name, value) in &stored.headers {
        headers.append(name.clone(), value.clone());
    }
    // A hit says how old it is; the request that stored it forwards the service's `Age` as it was.
    if let Some(age) = age {
        headers.insert(AGE, age_value(age.as_secs()));
    }
    if head {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(stored.body.len()));
    }
    mark(&mut response, x_cache, label);
    response
}

/// The `Age` header's value. The first minute's values are made once: a fresh hit is usually
/// young, and formatting a number allocates.
pub(super) fn age_value(seconds: u64) -> HeaderValue {
    static YOUNG: std::sync::LazyLock<Vec<HeaderValue>> =
        std::sync::LazyLock::new(|| (0..60_u64).map(HeaderValue::from).collect());
    usize::try_from(seconds)
        .ok()
        .and_then(|seconds| YOUNG.get(seconds))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(seconds))
}

pub(super) fn mark<B>(response: &mut Response<B>, enabled: bool, value: &'static str) {
    if enabled {
        response
            .headers_mut()
            .insert(X_CACHE, HeaderValue::from_static(value));
    }
}
