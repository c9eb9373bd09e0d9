//! What a keyed write answered: the first time, and every repeat after.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::StatusCode;

use crate::key::IDEMPOTENT_REPLAYED;

/// The answer to a write: a status and a JSON body, as recorded with its key.
///
/// A repeat of the key gets the same status and body, marked `Idempotent-Replayed: true`. With
/// the feature `axum` it is a response (`content-type: application/json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    status: StatusCode,
    body: Bytes,
    replayed: bool,
}

impl Outcome {
    pub(crate) fn new(status: StatusCode, body: Bytes, replayed: bool) -> Self {
        Outcome {
            status,
            body,
            replayed,
        }
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The JSON body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Whether this is a repeat answered from the recorded outcome, rather than the work itself.
    pub fn is_replayed(&self) -> bool {
        self.replayed
    }

    /// The response: status, `content-type: application/json`, the body, and
    /// `Idempotent-Replayed: true` for a repeat.
    pub fn into_response_parts(self) -> http::Response<Bytes> {
        let mut response = http::Response::new(self.body);
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
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
