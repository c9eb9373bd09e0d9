//! What a keyed write answered: the first time, and every repeat after.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, StatusCode};

use crate::key::IDEMPOTENT_REPLAYED;

/// The answer to a write: a status, a body and the headers that describe it, as recorded with
/// its key.
///
/// A repeat of the key gets the same status, headers and body, marked `Idempotent-Replayed:
/// true`. With the feature `axum` it is a response. [`Idempotency::run`](crate::Idempotency::run)
/// records JSON (`content-type: application/json`); the [layer](crate::IdempotencyLayer)
/// records the handler's own `content-type`, `location`, `content-location`, `etag` and
/// `last-modified` with its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    replayed: bool,
}

/// The response headers recorded with a body: what describes the answer, never what belongs to
/// one client (`set-cookie`) or one moment (`date`).
pub(crate) const RECORDED_HEADERS: [HeaderName; 5] = [
    CONTENT_TYPE,
    http::header::LOCATION,
    http::header::CONTENT_LOCATION,
    http::header::ETAG,
    http::header::LAST_MODIFIED,
];

impl Outcome {
    /// A JSON outcome.
    pub(crate) fn new(status: StatusCode, body: Bytes, replayed: bool) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Outcome {
            status,
            headers,
            body,
            replayed,
        }
    }

    /// An outcome as the table holds it (see [`encode`](Self::encode)), replayed.
    pub(crate) fn recorded(status: StatusCode, stored: Vec<u8>) -> Self {
        let stored = Bytes::from(stored);
        if stored.first() != Some(&0) {
            return Outcome::new(status, stored, true);
        }
        let mut headers = HeaderMap::new();
        let mut rest = stored.slice(1..);
        while let Some(end) = rest.windows(2).position(|pair| pair == b"\r\n") {
            let line = rest.slice(..end);
            rest = rest.slice(end + 2..);
            if line.is_empty() {
                break;
            }
            let Some(colon) = line.iter().position(|&byte| byte == b':') else {
                continue;
            };
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(&line[..colon]),
                HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
            ) {
                headers.append(name, value);
            }
        }
        Outcome {
            status,
            headers,
            body: rest,
            replayed: true,
        }
    }

    /// The body column's bytes for a body with `headers`: the body alone when it is JSON and
    /// nothing else describes it (what [`Idempotency::run`](crate::Idempotency::run) records);
    /// otherwise a NUL byte — which no JSON document starts with — the recorded headers in
    /// HTTP/1 form, an empty line, and the body.
    pub(crate) fn encode(headers: &HeaderMap, body: &[u8]) -> Bytes {
        let recorded = RECORDED_HEADERS
            .iter()
            .flat_map(|name| headers.get_all(name).iter().map(move |value| (name, value)));
        let plain_json = headers
            .get(CONTENT_TYPE)
            .is_some_and(|value| value == "application/json")
            && RECORDED_HEADERS[1..]
                .iter()
                .all(|name| !headers.contains_key(name));
        if plain_json {
            return Bytes::copy_from_slice(body);
        }
        let mut stored = BytesMut::with_capacity(body.len() + 64);
        stored.put_u8(0);
        for (name, value) in recorded {
            stored.put_slice(name.as_str().as_bytes());
            stored.put_slice(b": ");
            stored.put_slice(value.as_bytes());
            stored.put_slice(b"\r\n");
        }
        stored.put_slice(b"\r\n");
        stored.put_slice(body);
        stored.freeze()
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The headers recorded with the body (at least its `content-type`, where it had one).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Whether this is a repeat answered from the recorded outcome, rather than the work itself.
    pub fn is_replayed(&self) -> bool {
        self.replayed
    }

    /// The response: status, the recorded headers, the body, and `Idempotent-Replayed: true`
    /// for a repeat.
    pub fn into_response_parts(self) -> http::Response<Bytes> {
        let mut response = http::Response::new(self.body);
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        let headers = response.headers_mut();
        if self.replayed {
            headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        }
        response
    }
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for Outcome {
    fn into_response(self) -> axum_core::response::Response {
        self.into_response_parts().map(axum_core::body::Body::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_headers_come_back() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.insert(http::header::LOCATION, HeaderValue::from_static("/items/7"));
        headers.insert(http::header::SET_COOKIE, HeaderValue::from_static("s=1"));
        let stored = Outcome::encode(&headers, b"made\r\n\r\nit");
        let outcome = Outcome::recorded(StatusCode::CREATED, stored.to_vec());
        assert_eq!(outcome.headers()[CONTENT_TYPE], "text/plain");
        assert_eq!(outcome.headers()[http::header::LOCATION], "/items/7");
        assert!(outcome.headers().get(http::header::SET_COOKIE).is_none());
        assert_eq!(&outcome.body()[..], b"made\r\n\r\nit");

        let json = Outcome::new(StatusCode::OK, Bytes::from_static(b"{}"), false);
        let stored = Outcome::encode(json.headers(), json.body());
        assert_eq!(&stored[..], b"{}", "plain JSON is stored as it is");
        let again = Outcome::recorded(StatusCode::OK, stored.to_vec());
        assert_eq!(again.headers()[CONTENT_TYPE], "application/json");
        assert!(again.is_replayed());
    }
}
