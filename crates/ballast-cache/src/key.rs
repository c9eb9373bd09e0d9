//! [`CacheKey`]: what a stored response is found by, and the per-thread buffer lookups build
//! their keys in.

use std::sync::Arc;

/// The key of a stored response: the request's path (for invalidation), its primary key (host,
/// path, query, keyed headers — or the application's key) and the values of the headers the
/// response varies on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The request path, then the primary key, in one allocation: built in place by a lookup
    /// (a hit allocates it once), copied only when an entry is stored.
    text: String,
    path_len: usize,
    /// `None` for most keys: no allocation, and no reference count that every request on every
    /// core would bump.
    variant: Option<Arc<str>>,
}

impl CacheKey {
    pub(crate) fn new(path: &str, primary: &str) -> Self {
        let mut text = String::with_capacity(path.len() + primary.len());
        text.push_str(path);
        text.push_str(primary);
        Self::from_text(text, path.len())
    }

    /// A key from `text`: the path (its first `path_len` bytes), then the primary key.
    pub(crate) fn from_text(text: String, path_len: usize) -> Self {
        CacheKey {
            text,
            path_len,
            variant: None,
        }
    }

    pub(crate) fn with_variant(&self, variant: String) -> Self {
        CacheKey {
            text: self.text.clone(),
            path_len: self.path_len,
            variant: (!variant.is_empty()).then(|| variant.into()),
        }
    }

    /// Hands the key's buffer back for the thread's next lookup (a fresh hit is done with it).
    pub(crate) fn recycle(self) {
        recycle_buffer(self.text);
    }

    /// The request path the entry was stored for.
    pub fn path(&self) -> &str {
        &self.text[..self.path_len]
    }

    /// The primary key (by default host, path and query).
    pub fn primary(&self) -> &str {
        &self.text[self.path_len..]
    }

    pub(crate) fn size(&self) -> u64 {
        (self.text.len() + self.variant.as_ref().map_or(0, |variant| variant.len())) as u64
    }
}

thread_local! {
    /// A buffer for the next lookup's key (see `Cache::call`).
    static KEY_BUFFER: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
}

/// The thread's buffer for building a lookup's key in: empty, usually with room.
pub(crate) fn key_buffer() -> String {
    let mut text = KEY_BUFFER.take();
    text.clear();
    text
}

/// Gives a key's buffer back for the thread's next lookup, unless it grew large.
fn recycle_buffer(text: String) {
    if text.capacity() <= 1024 {
        KEY_BUFFER.set(text);
    }
}
