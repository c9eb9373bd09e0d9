//! [`ReadinessCheck`]: something a readiness probe asks, such as the database pool.

use std::future::Future;
use std::pin::Pin;

use crate::Failure;

/// The future a [`ReadinessCheck`] returns.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = Result<(), Failure>> + Send + 'a>>;

/// Something that can say whether this instance can serve: "can I reach my database", never
/// "am I busy" (a busy instance is ready; failing readiness under load takes every instance out
/// of the load balancer at once).
///
/// `ballast-pool`'s `SharedPool` implements it; so does any `Fn() -> impl Future<Output =
/// Result<(), Failure>>`. `ballast-shutdown`'s health services ask their checks.
pub trait ReadinessCheck: Send + Sync + 'static {
    /// Answers `Ok(())` when ready, or the failure that keeps this instance from serving.
    fn check(&self) -> CheckFuture<'_>;
}

impl<F, Fut> ReadinessCheck for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Failure>> + Send + 'static,
{
    fn check(&self) -> CheckFuture<'_> {
        Box::pin(self())
    }
}
