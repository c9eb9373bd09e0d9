//! Whether the current thread is serving a request: set while the layer calls its service and
//! while it polls the request's future, so the panic hook can tell a handler's panic from a
//! background task's. (A plain thread-local counter: a task-local would cost a future of its
//! own per request.)

use std::cell::Cell;

thread_local! {
    static IN_REQUEST: Cell<u32> = const { Cell::new(0) };
}

/// Marks the thread as serving a request until dropped.
pub(crate) struct InRequest(());

impl InRequest {
    pub(crate) fn enter() -> Self {
        IN_REQUEST.with(|depth| depth.set(depth.get() + 1));
        InRequest(())
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        IN_REQUEST.with(|depth| depth.set(depth.get().saturating_sub(1)));
    }
}

/// Whether the current thread is serving a request through
/// [`ShutdownLayer`](crate::ShutdownLayer).
pub(crate) fn in_request() -> bool {
    IN_REQUEST.with(|depth| depth.get() > 0)
}
