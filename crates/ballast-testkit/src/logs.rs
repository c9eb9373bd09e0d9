//! Capturing what a test's code logs, to check what a log line does and does not say.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

/// An in-memory writer for a log subscriber; clones share one buffer.
///
/// ```
/// use std::io::Write;
/// use ballast_testkit::logs::Captured;
///
/// let captured = Captured::default();
/// let mut writer = captured.clone(); // e.g. `.with_writer(move || writer.clone())`
/// writeln!(writer, "request failed: SQLSTATE 53300").unwrap();
/// assert!(captured.take().contains("53300"));
/// assert!(captured.take().is_empty());
/// ```
#[derive(Debug, Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Everything written since the last `take`, as text.
    pub fn take(&self) -> String {
        let bytes = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
