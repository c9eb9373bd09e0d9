//! Whether the current task is serving a request.

tokio::task_local! {
    /// Set while a request is being served through the layer, so the panic hook can tell a
    /// handler's panic from a background task's.
    pub(crate) static IN_REQUEST: ();
}

/// Whether the current task is serving a request through [`ShutdownLayer`](crate::ShutdownLayer).
pub(crate) fn in_request() -> bool {
    IN_REQUEST.try_with(|()| ()).is_ok()
}
