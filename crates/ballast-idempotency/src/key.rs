//! The `Idempotency-Key` request header.

use std::fmt;

use ballast_error::Error;
use http::header::HeaderName;
use http::{HeaderMap, StatusCode};

/// The request header that carries the key (IETF httpapi draft `Idempotency-Key`).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The response header that marks a repeat answered from the recorded outcome (Stripe's name).
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The longest key accepted, in bytes: room for a UUID and then some, and what MySQL indexes.
const MAX_KEY_LENGTH: usize = 255;

/// A request's `Idempotency-Key`: 1 to 255 visible ASCII characters (a UUID is typical).
///
/// As an axum extractor (feature `axum`), `Option<IdempotencyKey>` is `None` without the header
/// and a 400 problem (`INVALID_IDEMPOTENCY_KEY`) for a malformed one; `IdempotencyKey` alone
/// rejects requests without it.
///
/// ```
/// use ballast_idempotency::IdempotencyKey;
///
/// let mut headers = http::HeaderMap::new();
/// assert_eq!(IdempotencyKey::from_headers(&headers).unwrap(), None);
/// headers.insert("idempotency-key", "8e03978e-40d5-43e8-bc93-6894a57f9324".parse().unwrap());
/// let key = IdempotencyKey::from_headers(&headers).unwrap().unwrap();
/// assert_eq!(key.as_str(), "8e03978e-40d5-43e8-bc93-6894a57f9324");
/// ```
///
/// **Scope.** Without a scope a key is global: whoever sends a known key with the same request
/// gets the response recorded for it. Keys are meant to be unguessable (a random UUID), but a
/// key that leaks — in a log, a proxy — leaks its response too. An application that knows who
/// is asking scopes the key to them, as Stripe scopes keys to an account:
/// [`scoped`](Self::scoped) with the authenticated principal (a user or tenant id) makes the key
/// one only that principal can replay, and two principals may use the same key independently.
/// Unauthenticated requests keep the global default.
///
/// ```
/// use ballast_idempotency::IdempotencyKey;
///
/// let key = IdempotencyKey::new("8e03978e-40d5-43e8-bc93-6894a57f9324").unwrap();
/// let alice = key.clone().scoped("user:alice");
/// let bob = key.scoped("user:bob");
/// assert_ne!(alice, bob);
/// assert_eq!(alice.as_str(), bob.as_str(), "the client's key is the same");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String, Option<String>);

impl IdempotencyKey {
    /// A key from its text.
    ///
    /// # Errors
    ///
    /// A 400 problem when it is empty, longer than 255 bytes, or not visible ASCII.
    pub fn new(key: &str) -> Result<Self, Error> {
        let valid = !key.is_empty()
            && key.len() <= MAX_KEY_LENGTH
            && key.bytes().all(|byte| byte.is_ascii_graphic());
        if valid {
            Ok(IdempotencyKey(key.to_owned(), None))
        } else {
            Err(invalid())
        }
    }

    /// The key of a request's headers, if it has one.
    ///
    /// # Errors
    ///
    /// A 400 problem when the header is malformed or repeated.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, Error> {
        let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(invalid());
        }
        let text = value.to_str().map_err(|_| invalid())?;
        Self::new(text.trim()).map(Some)
    }

    /// The key's text, as the client sent it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// This key, scoped to `scope` (the authenticated principal, a tenant): recorded and
    /// replayed only for requests with the same scope.
    #[must_use]
    pub fn scoped(self, scope: impl Into<String>) -> Self {
        IdempotencyKey(self.0, Some(scope.into()))
    }

    /// The scope this key was given, if any.
    pub fn scope(&self) -> Option<&str> {
        self.1.as_deref()
    }

    /// The key as the table records it: the client's key when global; for a scoped key, a
    /// space (which no client key contains) and the SHA-256 of the scope and the key, so no
    /// client key can name a scoped one and the column's 255 bytes always suffice.
    pub(crate) fn stored(&self) -> std::borrow::Cow<'_, str> {
        use sha2::{Digest, Sha256};
        use std::fmt::Write;
        match &self.1 {
            None => std::borrow::Cow::Borrowed(&self.0),
            Some(scope) => {
                let mut digest = Sha256::new();
                digest.update(scope.len().to_le_bytes());
                digest.update(scope.as_bytes());
                digest.update(self.0.as_bytes());
                let mut stored = String::with_capacity(65);
                stored.push(' ');
                for byte in digest.finalize() {
                    let _ = write!(stored, "{byte:02x}");
                }
                std::borrow::Cow::Owned(stored)
            }
        }
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdempotencyKey")
            .field(&self.0)
            .field(&self.1)
            .finish()
    }
}

fn invalid() -> Error {
    Error::new(
        StatusCode::BAD_REQUEST,
        "INVALID_IDEMPOTENCY_KEY",
        "The Idempotency-Key header must be one value of 1 to 255 visible ASCII characters.",
    )
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum_core::extract::FromRequestParts<S> for IdempotencyKey {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Self::from_headers(&parts.headers)?.ok_or_else(|| {
            Error::new(
                StatusCode::BAD_REQUEST,
                "IDEMPOTENCY_KEY_REQUIRED",
                "This request needs an Idempotency-Key header.",
            )
        })
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum_core::extract::OptionalFromRequestParts<S> for IdempotencyKey {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Self::from_headers(&parts.headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        assert!(IdempotencyKey::new("a").is_ok());
        assert!(IdempotencyKey::new(&"k".repeat(255)).is_ok());
        for bad in ["", "has space", "tab\t", "é", &"k".repeat(256)] {
            let error = IdempotencyKey::new(bad).unwrap_err();
            assert_eq!(error.problem().status, StatusCode::BAD_REQUEST, "{bad:?}");
        }
        let mut headers = HeaderMap::new();
        headers.append(IDEMPOTENCY_KEY, "one".parse().unwrap());
        headers.append(IDEMPOTENCY_KEY, "two".parse().unwrap());
        assert!(IdempotencyKey::from_headers(&headers).is_err(), "two keys");
    }
}
