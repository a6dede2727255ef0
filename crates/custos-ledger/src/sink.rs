//! External checkpoint sinks: copies of every signed checkpoint kept
//! outside the ledger directory, so that truncating the log together with
//! its checkpoints is still detected.
//!
//! Sinks run on their own thread, fed by the writer, so a slow sink (an
//! HTTP witness, say) never delays appends. A failing sink is counted in
//! [`LedgerStats`](crate::LedgerStats) and reported in the status; it does
//! not stop the ledger.

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::Receiver;

use crate::layout::write_atomic;
use crate::stats::Shared;

/// Receives every checkpoint the ledger signs, in order.
pub trait CheckpointSink: Send + 'static {
    /// A short name for status and errors, such as `dir:/mnt/worm`.
    fn name(&self) -> &str;

    /// Publishes one signed checkpoint note of tree size `size`.
    ///
    /// # Errors
    ///
    /// A description of the failure; the ledger counts it and moves on.
    fn publish(&mut self, size: u64, note: &str) -> Result<(), String>;
}

/// Copies each checkpoint note to `<dir>/<size, 20 digits>.note`, for a
/// directory on other storage (a WORM mount, a synced folder).
#[derive(Debug)]
pub struct DirSink {
    dir: PathBuf,
    name: String,
}

impl DirSink {
    /// A sink writing into `dir`, which is created if needed.
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        let name = format!("dir:{}", dir.display());
        DirSink { dir, name }
    }
}

impl CheckpointSink for DirSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn publish(&mut self, size: u64, note: &str) -> Result<(), String> {
        fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        write_atomic(&self.dir.join(format!("{size:020}.note")), note.as_bytes())
            .map_err(|e| e.to_string())
    }
}

/// The sink thread: publishes until the writer hangs up.
pub(crate) fn run_sinks(
    mut sinks: Vec<Box<dyn CheckpointSink>>,
    rx: Receiver<(u64, String)>,
    shared: Arc<Shared>,
) {
    for (size, note) in rx {
        for sink in &mut sinks {
            if let Err(e) = sink.publish(size, &note) {
                shared.stats.note_sink_failure();
                shared.set_sink_error(format!("{}: {e}", sink.name()));
            }
        }
    }
}
