//! `IdempotencyLayer`: a keyed write as short as an unkeyed one (feature `axum`).

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum_core::body::Body;
use axum_core::response::{IntoResponse, Response};
use ballast_core::http::{attached, failure_response, RetryAfter};
use ballast_core::scope::RequestScope;
use ballast_core::{Cause, Failure};
use ballast_error::Error;
use ballast_pool::{Connect, Lent, SharedPool};
use bytes::Bytes;
use http::request::Parts;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use sha2::{Digest, Sha256};
use tower_layer::Layer;
use tower_service::Service;

use crate::key::IdempotencyKey;
use crate::keys::{unix_millis, Idempotency, Opened};
use crate::outcome::Outcome;
use crate::store::{KeyStore, Record};

/// The largest request or response body a keyed request buffers by default: axum's own
/// default body limit.
const DEFAULT_MAX_BODY: usize = 2 * 1024 * 1024;

/// Chooses a key's scope from the request: the authenticated principal, a tenant.
type Scope = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// Makes the routes it wraps exactly-once for requests with an `Idempotency-Key`: the handler
/// stays as it is — its extractors, its `Conn`, its typed response.
///
/// For a request with a key, the layer checks a connection out of the request's pool (the
/// [`SharedPool<C>`] that `AddPoolLayer` puts in its extensions), begins a transaction on it
/// and looks the key up. A new key runs the handler with that connection [lent](Lent) to its
/// [`Conn<C>`](ballast_pool::Conn), so the handler's writes are in the transaction; then the
/// layer records the key with the response (status, body, and the headers that describe it)
/// and commits the writes and the key together. A repeat of the key is answered the recorded
/// response with `Idempotent-Replayed: true`, and the handler does not run.
///
/// | the request | what happens |
/// |---|---|
/// | has no key | the handler runs as usual ([`require_key`](Self::require_key) refuses it with 400 instead) |
/// | has a new key | the handler runs in a transaction that records the key with its response |
/// | repeats a recorded key, same request | the recorded response, `Idempotent-Replayed: true` |
/// | repeats a key whose first request still runs | 409 `IDEMPOTENCY_KEY_IN_USE`, `retryable: true` |
/// | reuses a key for another request | 422 `IDEMPOTENCY_KEY_REUSED` |
/// | has a malformed key | 400 `INVALID_IDEMPOTENCY_KEY` |
///
/// - **The request's fingerprint** is the SHA-256 of its method, its path and query, and its
///   body: the same key on another route, another resource or with another body is a reused
///   key. The body is read whole before the handler runs (at most 2 MiB by default,
///   [`max_body_size`](Self::max_body_size); a larger one is answered 413).
/// - **Only success is recorded.** A response of 400 or above rolls the handler's writes back
///   and records nothing, so a repeat runs again; a database failure inside is answered
///   `retryable: true` even for a `POST`, since nothing was committed. A response of the
///   handler's that is not an error is buffered to be recorded (at most `max_body_size`).
/// - **The handler's writes must go through its `Conn<C>`:** the first `Conn<C>` of the
///   request is the lent connection. A connection of its own (`pool.get()`, a second `Conn`)
///   is outside the transaction, and its writes are not guarded by the key. A handler may open
///   transactions of its own on the `Conn`; they nest (savepoints) and commit with the key.
/// - **Keys are global unless scoped:** anyone who sends a known key with the same request gets
///   its recorded response. Give the layer a [`scope`](Self::scope) — the authenticated user
///   or tenant — and a key is one only that principal can replay. Unauthenticated requests
///   (the scope function answers `None`) share the global scope.
///
/// ```
/// use axum::{routing::post, Json, Router};
/// use ballast_idempotency::IdempotencyLayer;
/// use ballast_pool::Conn;
/// use diesel::sql_types::{BigInt, Text};
/// use diesel_async::{AsyncPgConnection, RunQueryDsl};
///
/// #[derive(serde::Deserialize)]
/// struct NewItem {
///     name: String,
/// }
///
/// #[derive(serde::Serialize, diesel::QueryableByName)]
/// struct Item {
///     #[diesel(sql_type = BigInt)]
///     id: i64,
/// }
///
/// // An ordinary handler: nothing in it knows about keys.
/// async fn create(
///     mut db: Conn<AsyncPgConnection>,
///     Json(new): Json<NewItem>,
/// ) -> Result<Json<Item>, ballast_error::Error> {
///     let item = diesel::sql_query("INSERT INTO items (name) VALUES ($1) RETURNING id")
///         .bind::<Text, _>(new.name)
///         .get_result(&mut *db)
///         .await?;
///     Ok(Json(item))
/// }
///
/// let app: Router = Router::new().route(
///     "/items",
///     post(create).layer(IdempotencyLayer::<AsyncPgConnection>::new()),
/// );
/// # let _ = app;
/// ```
pub struct IdempotencyLayer<C> {
    keys: Idempotency,
    scope: Option<Scope>,
    require_key: bool,
    max_body: usize,
    _connection: PhantomData<fn() -> C>,
}

impl<C> IdempotencyLayer<C> {
    /// Keys for connections of type `C`, remembered for a day, global, optional, with bodies of
    /// at most 2 MiB.
    pub fn new() -> Self {
        IdempotencyLayer {
            keys: Idempotency::new(),
            scope: None,
            require_key: false,
            max_body: DEFAULT_MAX_BODY,
            _connection: PhantomData,
        }
    }

    /// Uses `keys` for the table's settings (its TTL, whether the first request creates it).
    #[must_use]
    pub fn keys(mut self, keys: Idempotency) -> Self {
        self.keys = keys;
        self
    }

    /// Scopes each key to what `scope` answers for the request (a user or tenant id, read from
    /// the headers or from an extension an authentication layer set): a key is replayed only
    /// for requests of the same scope, and two scopes may use the same key independently.
    /// `None` is the global scope. Defaults to global for every request.
    ///
    /// ```
    /// use ballast_idempotency::IdempotencyLayer;
    /// use diesel_async::AsyncPgConnection;
    ///
    /// #[derive(Clone)]
    /// struct User(String); // set by the authentication layer
    ///
    /// let layer = IdempotencyLayer::<AsyncPgConnection>::new()
    ///     .scope(|request| request.extensions.get::<User>().map(|user| user.0.clone()));
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn scope<F>(mut self, scope: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.scope = Some(Arc::new(scope));
        self
    }

    /// Refuses requests without a key: 400 `IDEMPOTENCY_KEY_REQUIRED`. Defaults to `false`
    /// (they run as usual, unguarded).
    #[must_use]
    pub fn require_key(mut self, require: bool) -> Self {
        self.require_key = require;
        self
    }

    /// Sets the largest request body a keyed request may have (it is read whole to be
    /// fingerprinted; a larger one is answered 413), and the largest response recorded (a
    /// larger one rolls back and is answered 500). Defaults to 2 MiB.
    #[must_use]
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }
}

impl<C> Default for IdempotencyLayer<C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C> Clone for IdempotencyLayer<C> {
    fn clone(&self) -> Self {
        IdempotencyLayer {
            keys: self.keys.clone(),
            scope: self.scope.clone(),
            require_key: self.require_key,
            max_body: self.max_body,
            _connection: PhantomData,
        }
    }
}

impl<C> fmt::Debug for IdempotencyLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("keys", &self.keys)
            .field("scoped", &self.scope.is_some())
            .field("require_key", &self.require_key)
            .field("max_body", &self.max_body)
            .finish()
    }
}

impl<S, C> Layer<S> for IdempotencyLayer<C> {
    type Service = IdempotencyService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of an [`IdempotencyLayer`].
pub struct IdempotencyService<S, C> {
    inner: S,
    layer: IdempotencyLayer<C>,
}

impl<S, C> IdempotencyService<S, C> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C> Clone for IdempotencyService<S, C> {
    fn clone(&self) -> Self {
        IdempotencyService {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for IdempotencyService<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyService")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, C> Service<Request<Body>> for IdempotencyService<S, C>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    C: Connect + KeyStore,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The ready service answers this request; a clone waits for the next (tower's rule).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move { Ok(keyed(layer, inner, request).await) })
    }
}

/// A request through the layer.
async fn keyed<S, C>(layer: IdempotencyLayer<C>, mut inner: S, request: Request<Body>) -> Response
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
    C: Connect + KeyStore,
{
    let (parts, body) = request.into_parts();
    let key = match IdempotencyKey::from_headers(&parts.headers) {
        Ok(Some(key)) => key,
        Ok(None) if layer.require_key => {
            return Error::new(
                StatusCode::BAD_REQUEST,
                "IDEMPOTENCY_KEY_REQUIRED",
                "This request needs an Idempotency-Key header.",
            )
            .into_response()
        }
        Ok(None) => return answer(inner.call(Request::from_parts(parts, body)).await),
        Err(error) => return error.into_response(),
    };
    let key = match layer.scope.as_ref().and_then(|scope| scope(&parts)) {
        Some(scope) => key.scoped(scope),
        None => key,
    };
    let body = match Limited::new(body, layer.max_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => return unread(&*error),
    };
    let fingerprint = fingerprint(&parts, &body);
    let head = parts.method == Method::HEAD;
    let Some(pool) = parts.extensions.get::<SharedPool<C>>().cloned() else {
        let failure = Failure::new(Cause::Internal).with_detail(format!(
            "IdempotencyLayer: no SharedPool<{}> in the request's extensions: add AddPoolLayer \
             to the stack, around the route",
            std::any::type_name::<C>()
        ));
        return failure_response(Arc::new(failure), false, head, None).map(Body::new);
    };
    // From here the key guards the request: a failure anywhere in it is safe to repeat.
    RequestScope::with_current(RequestScope::guard);
    let mut conn = match pool.get().await {
        Ok(conn) => conn,
        Err(failure) => return refused(failure, head),
    };
    let stored = key.stored();
    let stored = &*stored;
    match layer.keys.open(&mut *conn, stored, &fingerprint).await {
        Ok(Opened::New) => {}
        Ok(Opened::Recorded(outcome)) => return outcome.into_response(),
        Err(error) => return error.into_response(),
    }

    let lent = Lent::new(conn);
    let mut parts = parts;
    lent.insert_into(&mut parts.extensions);
    let response = answer(
        inner
            .call(Request::from_parts(parts, Body::from(body)))
            .await,
    );
    let Some(mut conn) = lent.take_back() else {
        // The handler moved its `Conn` somewhere that outlives the request: its transaction
        // cannot be finished here, and is rolled back when that connection is dropped.
        let failure = Failure::new(Cause::Internal).with_detail(
            "IdempotencyLayer: the handler kept the request's connection past its response; \
             the write is rolled back",
        );
        return failure_response(Arc::new(failure), true, head, None).map(Body::new);
    };

    let (response_parts, response_body) = response.into_parts();
    if response_parts.status.is_client_error() || response_parts.status.is_server_error() {
        let _ = layer.keys.close(&mut *conn, stored, None).await;
        return failed(Response::from_parts(response_parts, response_body), head);
    }
    let response_body = match Limited::new(response_body, layer.max_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            let _ = layer.keys.close(&mut *conn, stored, None).await;
            let failure = Failure::new(Cause::Internal)
                .with_detail(format!(
                    "IdempotencyLayer: the handler's response could not be recorded ({error}); \
                     the write is rolled back"
                ))
                .with_idempotent(true);
            return failure_response(Arc::new(failure), true, head, None).map(Body::new);
        }
    };
    let recorded = Outcome::encode(&response_parts.headers, &response_body);
    let record = Record {
        key: stored,
        fingerprint: &fingerprint,
        status: i16::try_from(response_parts.status.as_u16()).unwrap_or(i16::MAX),
        body: &recorded,
        created_at: unix_millis(),
    };
    if let Err(error) = layer.keys.close(&mut *conn, stored, Some(&record)).await {
        return error.into_response();
    }
    Response::from_parts(response_parts, Body::from(response_body))
}

fn answer(result: Result<Response, Infallible>) -> Response {
    match result {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// The fingerprint of a keyed request: method, path and query, body — each length-prefixed, so
/// no two requests share one by moving bytes from one part to the next.
fn fingerprint(parts: &Parts, body: &Bytes) -> Vec<u8> {
    let target = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |target| target.as_str());
    let mut digest = Sha256::new();
    for part in [parts.method.as_str().as_bytes(), target.as_bytes(), body] {
        digest.update((part.len() as u64).to_le_bytes());
        digest.update(part);
    }
    digest.finalize().to_vec()
}

/// A request body that could not be read to fingerprint it.
fn unread(error: &(dyn std::error::Error + 'static)) -> Response {
    if error.is::<http_body_util::LengthLimitError>() {
        return Error::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            "The request body is larger than a keyed request may have.",
        )
        .into_response();
    }
    Error::new(
        StatusCode::BAD_REQUEST,
        "BAD_REQUEST",
        "The request body could not be read.",
    )
    .into_response()
}

/// A checkout that failed before anything ran: a 503 that says the request may be repeated.
fn refused(failure: Failure, head: bool) -> Response {
    let failure = failure.with_idempotent(true);
    failure_response(Arc::new(failure), true, head, Some(&RetryAfter::default())).map(Body::new)
}

/// The handler's error answer, its writes rolled back: a database failure in it is safe to
/// repeat now, whatever the method, and says so.
fn failed(response: Response, head: bool) -> Response {
    let Some(failure) = attached(response.extensions()) else {
        return response;
    };
    if failure.is_idempotent() {
        return response;
    }
    let failure = failure.detached().with_idempotent(true);
    failure_response(Arc::new(failure), true, head, Some(&RetryAfter::default())).map(Body::new)
}
