//! The RFC 9457 problem document and its rendering.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::{Map, Value};

use crate::{Code, Failure};

/// The members every document has, in the order they are written; extra members cannot replace
/// them.
const STANDARD_MEMBERS: [&str; 6] = ["type", "title", "status", "detail", "code", "retryable"];

/// The media type of a problem document (RFC 9457, section 3).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document: what a client receives instead of an internal error.
///
/// ```json
/// {
///   "type": "about:blank",
///   "title": "Service Unavailable",
///   "status": 503,
///   "detail": "The database has too many open connections.",
///   "code": "DB_CONNECTION_ERROR",
///   "retryable": true
/// }
/// ```
///
/// `type` is `about:blank` and `title` the status's reason phrase unless set otherwise; `code`
/// and `retryable` are the members clients of the service already read. Every text in it must be
/// safe for anyone to see: it never comes from an error's source.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Problem {
    /// The HTTP status.
    pub status: StatusCode,
    /// A URI naming the problem type (`about:blank` by default).
    pub type_uri: Cow<'static, str>,
    /// A short summary of the problem type (the status's reason phrase by default).
    pub title: Cow<'static, str>,
    /// A sentence for this occurrence, safe to show anyone.
    pub detail: Cow<'static, str>,
    /// The machine-readable code clients switch on, such as `DB_CONNECTION_ERROR`.
    pub code: Cow<'static, str>,
    /// Whether trying again later may succeed.
    pub retryable: bool,
    /// Further members, added after the standard ones.
    pub members: Map<String, Value>,
}

impl Problem {
    /// A problem with this status, code and detail; `type` is `about:blank`, `title` the reason
    /// phrase, and it is not retryable.
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        detail: impl Into<Cow<'static, str>>,
    ) -> Self {
        Problem {
            status,
            type_uri: Cow::Borrowed("about:blank"),
            title: Cow::Borrowed(status.canonical_reason().unwrap_or("Error")),
            detail: detail.into(),
            code: code.into(),
            retryable: false,
            members: Map::new(),
        }
    }

    /// Sets whether trying again later may succeed.
    #[must_use]
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Adds a member to the document. The standard members cannot be replaced this way.
    #[must_use]
    pub fn with_member(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.members.insert(name.into(), value.into());
        self
    }

    /// The document as JSON bytes, members in a fixed order: `type`, `title`, `status`,
    /// `detail`, `code`, `retryable`, then the extra members.
    pub fn to_json(&self) -> Vec<u8> {
        // Written member by member: a JSON map would sort its keys, and clients reading the
        // document by eye expect RFC 9457's order.
        let mut out = Vec::with_capacity(192);
        let member = |out: &mut Vec<u8>, name: &str, value: &Value| {
            out.push(if out.is_empty() { b'{' } else { b',' });
            // Writing JSON strings and values into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, name);
            out.push(b':');
            let _ = serde_json::to_writer(&mut *out, value);
        };
        member(&mut out, "type", &Value::from(self.type_uri.as_ref()));
        member(&mut out, "title", &Value::from(self.title.as_ref()));
        member(&mut out, "status", &Value::from(self.status.as_u16()));
        member(&mut out, "detail", &Value::from(self.detail.as_ref()));
        member(&mut out, "code", &Value::from(self.code.as_ref()));
        member(&mut out, "retryable", &Value::from(self.retryable));
        for (name, value) in &self.members {
            if !STANDARD_MEMBERS.contains(&name.as_str()) {
                member(&mut out, name, value);
            }
        }
        out.push(b'}');
        out
    }

    /// The response: status, `content-type: application/problem+json`, `cache-control:
    /// no-store` (a failure must never be cached), `Retry-After` when given, and the document as
    /// the body — or no body for a `HEAD` request, with the `content-length` the body would have.
    pub fn to_response(&self, head: bool, retry_after: Option<Duration>) -> Response<Full<Bytes>> {
        let json = self.to_json();
        let length = HeaderValue::from(json.len());
        let body = if head {
            Bytes::new()
        } else {
            Bytes::from(json)
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        headers.insert(CONTENT_LENGTH, length);
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(after) = retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(after.as_secs().max(1)));
        }
        response
    }
}

/// The member a problem carries when the failed request may or may not have taken effect.
pub const OUTCOME_MEMBER: &str = "outcome";

impl Problem {
    /// The default document for `failure`: its code and that code's HTTP status
    /// (`DB_CONNECTION_ERROR`, `DB_INIT_ERROR` and `MEMORY_ERROR` are 503, `CRITICAL_ERROR` 500),
    /// its public message as the detail (a 500 says only "An internal error occurred."), and
    /// its retryability.
    pub fn for_failure(failure: &Failure) -> Problem {
        let status =
            StatusCode::from_u16(failure.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // Every failure of a 500 says the same thing: the cause of a bug is nobody's business
        // outside the service.
        let detail = if failure.code() == Code::Critical {
            "An internal error occurred.".to_owned()
        } else {
            sentence(failure.public_message())
        };
        Problem::new(status, failure.code().as_str(), detail).with_retryable(failure.retryable())
    }

    /// Makes `retryable` a promise: `true` only when repeating the request cannot do it twice —
    /// the failure is retryable **and** its statement never reached the database, or the
    /// request is `idempotent`, or an idempotency key guards it ([`Failure::may_retry`]).
    ///
    /// A failure worth retrying whose statement may have run stays a 503, but says
    /// `"retryable": false` and `"outcome": "unknown"` ([`OUTCOME_MEMBER`]), with a detail that
    /// tells the client to check before repeating it.
    pub fn keep_promise(&mut self, failure: &Failure, idempotent: bool) {
        if failure.outcome_unknown(idempotent) {
            self.retryable = false;
            self.detail = format!(
                "{} The request may or may not have taken effect: check before repeating it.",
                sentence(failure.public_message())
            )
            .into();
            self.members
                .insert(OUTCOME_MEMBER.to_owned(), "unknown".into());
        } else if !failure.may_retry(idempotent) {
            self.retryable = false;
        }
    }
}

/// A public message as a sentence: capital first letter, final period.
fn sentence(message: &str) -> String {
    let mut chars = message.chars();
    let mut sentence: String = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => return String::new(),
    };
    if !sentence.ends_with('.') {
        sentence.push('.');
    }
    sentence
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_members_come_in_a_fixed_order() {
        let problem = Problem::new(
            StatusCode::CONFLICT,
            "ITEM_EXISTS",
            "An item with that name exists.",
        )
        .with_member("name", "lamp")
        .with_member("status", 200);
        assert_eq!(
            String::from_utf8(problem.to_json()).unwrap(),
            r#"{"type":"about:blank","title":"Conflict","status":409,"detail":"An item with that name exists.","code":"ITEM_EXISTS","retryable":false,"name":"lamp"}"#
        );
    }

    #[test]
    fn head_responses_have_headers_only() {
        let problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "X", "y").with_retryable(true);
        let full = problem.to_response(false, Some(Duration::from_secs(3)));
        let head = problem.to_response(true, Some(Duration::from_secs(3)));
        assert_eq!(full.headers(), head.headers());
        assert_eq!(head.headers()[RETRY_AFTER], "3");
        assert_eq!(head.headers()[CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(head.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(
            head.headers()[CONTENT_LENGTH],
            problem.to_json().len().to_string().as_str()
        );
    }

    #[test]
    fn sentences() {
        assert_eq!(sentence("the database is busy"), "The database is busy.");
        assert_eq!(sentence("done."), "Done.");
        assert_eq!(sentence(""), "");
    }
}
