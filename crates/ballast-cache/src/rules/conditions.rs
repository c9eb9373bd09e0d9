//! Conditional requests a cache answers itself, and the fields a `304` carries or updates
//! (RFC 9110 §13, §15.4.5; RFC 9111 §4.3).

use ballast_core::http::attached;
use http::header::{
    AGE, CACHE_CONTROL, CONTENT_LOCATION, DATE, ETAG, EXPIRES, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    LAST_MODIFIED, VARY,
};
use http::{HeaderMap, HeaderName, StatusCode};

use super::{http_date, Scan};

/// The conditions of a `GET` or `HEAD` a cache answers itself (RFC 9111 §4.3.2): taken out of the
/// request, so the service is asked for the whole response (which can then be stored), and
/// evaluated against the response the request gets.
#[derive(Debug, Default)]
pub(crate) struct Conditions {
    if_none_match: Option<http::HeaderValue>,
    if_modified_since: Option<http::HeaderValue>,
}

impl Conditions {
    /// Takes `If-None-Match` and `If-Modified-Since` out of `headers`.
    pub(crate) fn take(headers: &mut HeaderMap) -> Self {
        Conditions {
            if_none_match: headers.remove(IF_NONE_MATCH),
            if_modified_since: headers.remove(IF_MODIFIED_SINCE),
        }
    }

    /// The conditions of `headers`, left in place.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        Conditions {
            if_none_match: headers.get(IF_NONE_MATCH).cloned(),
            if_modified_since: headers.get(IF_MODIFIED_SINCE).cloned(),
        }
    }

    /// Whether there are none.
    pub(crate) fn is_empty(&self) -> bool {
        self.if_none_match.is_none() && self.if_modified_since.is_none()
    }

    /// Whether a `200` with `headers` satisfies them, so the answer is `304 Not Modified`
    /// (RFC 9110 §13.1.2, §13.1.3, §13.2.2): `If-None-Match` (weak comparison, `*` matches any)
    /// decides when present; otherwise `If-Modified-Since` against `Last-Modified` (or `Date`).
    pub(crate) fn not_modified(&self, headers: &HeaderMap) -> bool {
        if let Some(tags) = &self.if_none_match {
            let Some(etag) = headers.get(ETAG).and_then(|etag| etag.to_str().ok()) else {
                return false;
            };
            let Ok(tags) = tags.to_str() else {
                return false;
            };
            return tags
                .split(',')
                .map(str::trim)
                .any(|tag| tag == "*" || weak_eq(tag, etag));
        }
        let Some(since) = self.if_modified_since.as_ref().and_then(http_date) else {
            return false;
        };
        let modified = headers
            .get(LAST_MODIFIED)
            .or_else(|| headers.get(DATE))
            .and_then(http_date);
        modified.is_some_and(|modified| modified <= since)
    }
}

/// Weak comparison of two entity-tags (RFC 9110 §8.8.3.2): equal opaque tags, either or both weak.
fn weak_eq(a: &str, b: &str) -> bool {
    let opaque = |tag: &str| tag.strip_prefix("W/").unwrap_or(tag).to_owned();
    let (a, b) = (opaque(a), opaque(b));
    a.len() >= 2 && a.starts_with('"') && a.ends_with('"') && a == b
}

/// The header fields a `304` carries from the `200` it stands for (RFC 9110 §15.4.5), and the
/// cache's `Age`.
pub(crate) const NOT_MODIFIED_FIELDS: [HeaderName; 8] = [
    CACHE_CONTROL,
    CONTENT_LOCATION,
    DATE,
    ETAG,
    EXPIRES,
    VARY,
    LAST_MODIFIED,
    AGE,
];

/// The header fields a `304` from the service does not update in the stored response (RFC 9111
/// §3.2): its length, and the connection's own fields.
pub(crate) fn updates_stored(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "upgrade"
            | "x-cache"
    )
}

/// Whether an answer of the service is an error a stale response may stand in for (RFC 5861:
/// 500, 502, 503, 504), or one that carries a classified failure.
pub(crate) fn is_error(status: StatusCode, extensions: &http::Extensions) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504) || attached(extensions).is_some()
}

/// The request header names a response varies on, lowercased and sorted; `None` for `Vary: *`
/// (or an unreadable `Vary`).
pub(crate) fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in headers.get_all(VARY) {
        let value = value.to_str().ok()?;
        for name in value
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
        {
            if name == "*" {
                return None;
            }
            names.push(HeaderName::from_bytes(name.as_bytes()).ok()?);
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

/// The part of the key that the request's values of `names` make.
pub(crate) fn variant(headers: &HeaderMap, names: &[HeaderName]) -> String {
    let mut variant = String::new();
    for name in names {
        variant.push_str(name.as_str());
        variant.push('=');
        for (i, value) in headers.get_all(name).iter().enumerate() {
            if i > 0 {
                variant.push(',');
            }
            variant.push_str(&String::from_utf8_lossy(value.as_bytes()));
        }
        variant.push('\n');
    }
    variant
}

/// Appends the default primary key to `key` — host, path and query, and the values of the keyed
/// headers — so the cache builds the whole key in one buffer.
pub(crate) fn push_default_key(
    key: &mut String,
    parts: &http::request::Parts,
    keyed: &[HeaderName],
    scan: &Scan<'_>,
) {
    let host = scan
        .host
        .and_then(|host| host.to_str().ok())
        .or_else(|| parts.uri.authority().map(http::uri::Authority::as_str))
        .unwrap_or("");
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    key.reserve(host.len() + path.len());
    key.push_str(host);
    key.push_str(path);
    // Most requests carry none of the keyed headers (the scan tells).
    if !scan.keyed {
        return;
    }
    for name in keyed {
        for value in parts.headers.get_all(name) {
            key.push('\n');
            key.push_str(name.as_str());
            key.push('=');
            key.push_str(&String::from_utf8_lossy(value.as_bytes()));
        }
    }
}
