//! Signing and storing checkpoints, and the checkpointer thread that does
//! the periodic ones off the append path.
//!
//! A periodic checkpoint needs an fdatasync of the segment (a checkpoint
//! must never cover records a power failure could lose), two small file
//! writes with their fsyncs and a directory fsync. Done inline, that would
//! stall appends for every checkpoint; the checkpointer does it on its own
//! thread from a copy of the frontier, coalescing requests when it falls
//! behind. Checkpoints that must happen at an exact point (segment seal,
//! key rotation, explicit request, shutdown) first flush the checkpointer
//! and are then written by the writer itself.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant, SystemTime};

use custos_merkle::Frontier;
use custos_note::{Checkpoint, Signer};

use crate::error::LedgerError;
use crate::layout::{Layout, frontier_text, sync_dir, write_atomic};
use crate::options::FsyncObserver;
use crate::stats::Shared;
use crate::thin::{CheckpointThinning, thin_at_most};

/// The least time between two thinning passes.
const THIN_EVERY: Duration = Duration::from_secs(600);

/// Checkpoints one pass removes at most (a few hundred milliseconds of
/// unlinks); a pass that reaches it is followed by another after the next
/// checkpoint, until the backlog (say, after an upgrade) is gone.
const THIN_BATCH: usize = 5_000;

/// Signs the checkpoint of `frontier` and stores its frontier snapshot and
/// note, snapshot first. Returns the note text.
pub(crate) fn write_checkpoint(
    layout: &Layout,
    origin: &str,
    frontier: &Frontier,
    signers: &[&Signer],
) -> Result<String, LedgerError> {
    let size = frontier.size();
    let internal = |e: &dyn std::fmt::Display| LedgerError::Unavailable {
        reason: format!("cannot sign checkpoint {size}: {e}"),
    };
    let body = Checkpoint::new(origin, size, frontier.root(), Vec::new())
        .map_err(|e| internal(&e))?
        .to_body();
    let note = custos_note::sign(&body, signers).map_err(|e| internal(&e))?;
    write_atomic(&layout.frontier(size), frontier_text(frontier).as_bytes())?;
    write_atomic(&layout.note(size), note.as_bytes())?;
    sync_dir(&layout.checkpoints())?;
    Ok(note)
}

/// A periodic checkpoint to sign.
pub(crate) struct Job {
    pub(crate) frontier: Frontier,
    pub(crate) signer: Signer,
    /// The open segment, to fdatasync first when it has unsynced writes.
    pub(crate) sync: Option<(File, PathBuf)>,
}

/// A message to the checkpointer.
pub(crate) enum Message {
    Job(Box<Job>),
    /// Reply once every earlier job is done.
    Flush(Sender<()>),
}

/// Everything the checkpointer thread owns.
pub(crate) struct Checkpointer {
    pub(crate) layout: Layout,
    pub(crate) origin: String,
    pub(crate) shared: Arc<Shared>,
    pub(crate) sink_tx: Option<Sender<(u64, String)>>,
    pub(crate) on_fsync: Option<FsyncObserver>,
    pub(crate) thinning: Option<CheckpointThinning>,
    /// The last thinning pass; `None` before the first.
    pub(crate) thinned_at: Option<Instant>,
}

impl Checkpointer {
    pub(crate) fn run(mut self, rx: Receiver<Message>) {
        while let Ok(first) = rx.recv() {
            let mut latest = None;
            let mut flushes = Vec::new();
            for msg in std::iter::once(first).chain(rx.try_iter()) {
                match msg {
                    // Sizes only grow, so a later job supersedes earlier ones.
                    Message::Job(job) => latest = Some(job),
                    Message::Flush(reply) => flushes.push(reply),
                }
            }
            if let Some(job) = latest
                && self.shared.failure().is_none()
                && let Err(e) = self.sign(&job)
            {
                self.shared.set_failed(e.to_string());
            }
            for reply in flushes {
                let _ = reply.send(());
            }
            self.maybe_thin();
        }
    }

    /// Thins old checkpoints after the first job and then at most every
    /// [`THIN_EVERY`]. A failed pass is counted, not fatal: it removes
    /// nothing the log needs, and the next pass retries.
    fn maybe_thin(&mut self) {
        let Some(thinning) = self.thinning else {
            return;
        };
        if self.thinned_at.is_some_and(|at| at.elapsed() < THIN_EVERY)
            || self.shared.failure().is_some()
        {
            return;
        }
        let result = thin_at_most(&self.layout.root, thinning, SystemTime::now(), THIN_BATCH);
        let more = matches!(&result, Ok(report) if report.removed == THIN_BATCH);
        self.thinned_at = if more { None } else { Some(Instant::now()) };
        self.shared.stats.note_thinned(&result);
    }

    fn sign(&self, job: &Job) -> Result<(), LedgerError> {
        if let Some((file, path)) = &job.sync {
            let started = Instant::now();
            file.sync_data()
                .map_err(|e| LedgerError::io("fsync", path, e))?;
            let took = started.elapsed();
            self.shared.stats.note_fsync(took);
            if let Some(observe) = &self.on_fsync {
                observe(took);
            }
        }
        let note = write_checkpoint(&self.layout, &self.origin, &job.frontier, &[&job.signer])?;
        let size = job.frontier.size();
        self.shared.set_checkpoint(size);
        self.shared.stats.note_checkpoint();
        if let Some(tx) = &self.sink_tx {
            let _ = tx.send((size, note));
        }
        Ok(())
    }
}
