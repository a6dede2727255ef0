//! The `Ledger` handle: opening, the bounded append queue, tickets, and
//! the control operations that run on the writer thread.

use std::fs::{OpenOptions, TryLockError};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use custos_merkle::LeafHasher;
use custos_record::{MAX_RECORD_BYTES, PreEncoded, RecordBody, RecordError};
use custos_types::Clock;
use tokio::sync::oneshot;

use crate::error::LedgerError;
use crate::keys;
use crate::layout::{Layout, create_dir};
use crate::options::LedgerOptions;
use crate::recovery::{RecoveryReport, ledger_is_empty, recover};
use crate::signing::Checkpointer;
use crate::sink::run_sinks;
use crate::stats::{LedgerStats, LedgerStatus, Shared};
use crate::writer::{self, Appended, Command, Core, KeyRotation, PurgeReport, Segment, Writer};

/// Slots of the writer thread's command queue: control operations and
/// wake-ups only (appends never pass through it).
const COMMAND_SLOTS: usize = 64;

/// The audit ledger: the single writer of one ledger directory.
///
/// An append is taken by the appending thread itself, under the writer's
/// lock. In `batched` mode it writes the record (one `write` into the page
/// cache), and that is all (the writer thread fdatasyncs within
/// `max_delay`, without the lock). In `sync` mode the record's ticket
/// resolves once an fdatasync covers it. While appends do not overlap (the
/// last fdatasync covered one record), an appender that finds no
/// fdatasync in flight writes what is staged and runs the fdatasync
/// itself: inside [`tokio::task::block_in_place`] on a multi-threaded
/// runtime, never on a current-thread runtime (the writer thread does it
/// there). Otherwise the record stays staged for the next group, which the
/// writer thread writes and syncs; under concurrency it runs every
/// fdatasync. Share it behind an `Arc`.
///
/// Dropping the ledger without [`shutdown`](Self::shutdown) still syncs
/// what waits and signs a final checkpoint, and waits for that on the
/// dropping thread.
pub struct Ledger {
    tx: Option<SyncSender<Command>>,
    /// The writer's state, shared by the writer thread and appenders.
    core: Core,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    dir: PathBuf,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("dir", &self.dir)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

/// Resolves when an appended record is durable; see [`Ledger::append`].
/// Resolved by whoever makes the record durable: at once in batched mode,
/// by the fdatasync that covers it in sync mode.
#[derive(Debug)]
#[must_use = "an append is only durable once its ticket resolves"]
pub struct AppendTicket {
    rx: oneshot::Receiver<Result<Appended, LedgerError>>,
}

fn writer_gone() -> LedgerError {
    LedgerError::Unavailable {
        reason: "the ledger writer stopped".into(),
    }
}

impl Future for AppendTicket {
    type Output = Result<Appended, LedgerError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(writer_gone())))
    }
}

impl AppendTicket {
    /// Blocks the current thread until the record is durable. For
    /// synchronous callers only: inside an async runtime, `.await` the
    /// ticket instead.
    ///
    /// # Errors
    ///
    /// The write or fsync error that lost the record.
    pub fn wait(mut self) -> Result<Appended, LedgerError> {
        match self.rx.try_recv() {
            // Resolved already (batched mode, or an appender that led its
            // own fsync): no need to block, even inside a runtime.
            Ok(result) => result,
            Err(oneshot::error::TryRecvError::Closed) => Err(writer_gone()),
            Err(oneshot::error::TryRecvError::Empty) => self
                .rx
                .blocking_recv()
                .unwrap_or_else(|_| Err(writer_gone())),
        }
    }
}

/// Where an appender may run an fdatasync itself (sync mode).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Blocking {
    /// A task on a multi-threaded tokio runtime: through
    /// [`tokio::task::block_in_place`], which first moves the worker's
    /// other tasks to another thread.
    InPlace,
    /// A plain thread (no runtime, or a blocking-pool thread): blocking
    /// holds up nothing else.
    Plain,
    /// A current-thread runtime: blocking would stall every other task
    /// on it, so the writer thread runs the fsync instead.
    Never,
}

impl Blocking {
    fn here() -> Blocking {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return Blocking::Plain;
        };
        match (handle.runtime_flavor(), tokio::task::try_id()) {
            (tokio::runtime::RuntimeFlavor::MultiThread, Some(_)) => Blocking::InPlace,
            // Inside the runtime's context but not in a task: a
            // `spawn_blocking` thread or `Runtime::block_on`.
            (tokio::runtime::RuntimeFlavor::MultiThread, None) => Blocking::Plain,
            _ => Blocking::Never,
        }
    }

    fn run<R>(self, f: impl FnOnce() -> R) -> R {
        match self {
            Blocking::InPlace => tokio::task::block_in_place(f),
            Blocking::Plain | Blocking::Never => f(),
        }
    }
}

impl Ledger {
    /// Opens (or creates) the ledger in `dir`, normally
    /// `<data_dir>/ledger`, recovers it after a crash, and starts the
    /// writer thread.
    ///
    /// # Errors
    ///
    /// [`LedgerError::Locked`] if another writer has it open,
    /// [`LedgerError::KeyPermissions`] or [`LedgerError::Key`] for key
    /// problems, [`LedgerError::Corrupt`] if the stored records do not
    /// reproduce the newest signed checkpoint, [`LedgerError::Io`], or
    /// [`LedgerError::InvalidOptions`].
    pub fn open(
        dir: &Path,
        options: LedgerOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<(Ledger, RecoveryReport), LedgerError> {
        options.validate()?;
        let layout = Layout::new(dir);
        create_dir(dir, 0o755)?;
        create_dir(&layout.segments(), 0o755)?;
        create_dir(&layout.checkpoints(), 0o755)?;
        create_dir(&layout.keys(), 0o700)?;

        let lock_path = layout.lock();
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| LedgerError::io("open", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(LedgerError::Locked { path: lock_path }),
            Err(TryLockError::Error(e)) => return Err(LedgerError::io("lock", &lock_path, e)),
        }

        let LedgerOptions {
            origin,
            durability,
            checkpoint_every_records,
            checkpoint_every,
            segment_max_bytes,
            segment_max_age,
            queue_capacity,
            sinks,
            mut rng,
            on_fsync,
            checkpoint_thinning,
        } = options;
        let empty = ledger_is_empty(&layout)?;
        let keys = keys::load_or_create(&layout, &origin, rng.as_mut(), empty)?;
        let recovered = recover(&layout, &keys.history, &origin)?;
        let mut report = recovered.report;
        report.completed_key_rotation = keys.completed_rotation;

        let seg_path = layout.segment(recovered.segment_first_seq);
        let seg_file = OpenOptions::new()
            .append(true)
            .open(&seg_path)
            .map_err(|e| LedgerError::io("open", &seg_path, e))?;

        let shared = Arc::new(Shared::new(
            queue_capacity,
            recovered.frontier.size(),
            recovered.checkpoint_size.unwrap_or(0),
        ));
        let (sink_tx, sink_thread) = if sinks.is_empty() {
            (None, None)
        } else {
            let (tx, rx) = mpsc::channel();
            let shared = Arc::clone(&shared);
            let thread = std::thread::Builder::new()
                .name("custos-ledger-sinks".into())
                .spawn(move || run_sinks(sinks, rx, shared))
                .map_err(|e| LedgerError::io("spawn sink thread", dir, e))?;
            (Some(tx), Some(thread))
        };

        let (cp_tx, cp_rx) = mpsc::channel();
        let checkpointer = Checkpointer {
            layout: layout.clone(),
            origin: origin.clone(),
            shared: Arc::clone(&shared),
            sink_tx: sink_tx.clone(),
            on_fsync: on_fsync.clone(),
            thinning: checkpoint_thinning,
            thinned_at: None,
        };
        let cp_thread = std::thread::Builder::new()
            .name("custos-ledger-checkpoints".into())
            .spawn(move || checkpointer.run(cp_rx))
            .map_err(|e| LedgerError::io("spawn checkpoint thread", dir, e))?;

        let writer = Writer {
            layout,
            origin,
            durability,
            every_records: checkpoint_every_records,
            every: checkpoint_every,
            seg_max_bytes: segment_max_bytes,
            seg_max_age: segment_max_age,
            clock,
            rng,
            on_fsync,
            signer: keys.signer,
            frontier: recovered.frontier,
            seg: Segment {
                first_seq: recovered.segment_first_seq,
                file: seg_file,
                path: seg_path,
                len: recovered.segment_len,
                first_ts: recovered.segment_first_ts,
            },
            last_ts: recovered.last_ts,
            cp_size: recovered.checkpoint_size,
            cp_at: Instant::now(),
            unsynced_since: None,
            buf: Vec::with_capacity(1 << 20),
            pending: Vec::with_capacity(1024),
            waiting: std::collections::VecDeque::new(),
            syncing: false,
            last_group: 0,
            shared: Arc::clone(&shared),
            sink_tx,
            sink_thread,
            cp_tx: Some(cp_tx),
            cp_thread: Some(cp_thread),
            failed: None,
            _lock: lock,
        };
        let (tx, rx) = mpsc::sync_channel(COMMAND_SLOTS);
        let core: Core = Arc::new(std::sync::Mutex::new(Some(writer)));
        let thread_core = Arc::clone(&core);
        let thread = std::thread::Builder::new()
            .name("custos-ledger".into())
            .spawn(move || writer::run(thread_core, rx))
            .map_err(|e| LedgerError::io("spawn writer thread", dir, e))?;
        Ok((
            Ledger {
                tx: Some(tx),
                core,
                shared,
                thread: Some(thread),
                dir: dir.to_path_buf(),
            },
            report,
        ))
    }

    /// Appends a record; the ledger assigns its `seq` and `ts`. Await the
    /// ticket for durability. In sync mode, when no fdatasync is in flight,
    /// this call runs one itself before it returns (the ticket is then
    /// resolved); otherwise it never waits for the disk.
    ///
    /// # Errors
    ///
    /// Immediately, without writing: [`LedgerError::InvalidRecord`] if
    /// the body breaks a schema rule, [`LedgerError::Backpressure`] if
    /// `queue_capacity` records already wait for an fdatasync (sync mode),
    /// [`LedgerError::Unavailable`] if the writer has failed,
    /// [`LedgerError::ShutDown`] after shutdown. The gateway answers the
    /// last three with 503 and `Retry-After`.
    pub fn append(&self, body: RecordBody) -> Result<AppendTicket, LedgerError> {
        self.check_open()?;
        // Validation and encoding happen here, on the caller's thread, in
        // parallel; the writer only splices in `seq` and `ts`.
        let record = PreEncoded::new(body)?;
        if record.len() > MAX_RECORD_BYTES - 20 {
            return Err(LedgerError::InvalidRecord(RecordError::TooLarge {
                len: record.len(),
                max: MAX_RECORD_BYTES,
            }));
        }
        // Most of a record comes before its `seq`, so most of its leaf hash
        // can be computed here, in parallel, instead of under the lock.
        let mut prefix = LeafHasher::new();
        prefix.update(record.head());
        // Written here, under the writer's lock, rather than handed to the
        // writer thread and back: two thread wake-ups saved on every
        // request (issue #8).
        let blocking = Blocking::here();
        let written = {
            let mut guard = writer::lock_for_append(&self.core)?;
            let Some(writer) = guard.as_mut() else {
                return Err(LedgerError::ShutDown);
            };
            writer.append_here(&record, prefix, blocking != Blocking::Never)?
        };
        let mut wake = written.wake;
        if let Some(job) = written.lead {
            // Sync mode, and no fdatasync was in flight: this appender
            // leads one, covering its own record and any written before.
            let result = blocking.run(|| job.run());
            if let Ok(mut guard) = writer::lock(&self.core)
                && let Some(writer) = guard.as_mut()
            {
                writer.synced(&job, result);
                // Records written meanwhile are the writer thread's next
                // group.
                wake |= writer.next_group_due();
            }
        }
        if wake && let Some(tx) = &self.tx {
            // Full means the thread has work queued and will look at its
            // timers anyway.
            let _ = tx.try_send(Command::Wake);
        }
        Ok(AppendTicket { rx: written.ticket })
    }

    fn check_open(&self) -> Result<(), LedgerError> {
        if self.shared.closed.load(Relaxed) {
            return Err(LedgerError::ShutDown);
        }
        if let Some(reason) = self.shared.failure() {
            return Err(LedgerError::Unavailable { reason });
        }
        Ok(())
    }

    fn send(&self, cmd: Command) -> Result<(), LedgerError> {
        let Some(tx) = &self.tx else {
            return Err(LedgerError::ShutDown);
        };
        tx.try_send(cmd).map_err(|e| match e {
            TrySendError::Full(_) => LedgerError::Backpressure {
                capacity: self.shared.capacity,
            },
            TrySendError::Disconnected(_) => writer_gone(),
        })
    }

    async fn control<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, LedgerError>>) -> Command,
    ) -> Result<T, LedgerError> {
        self.check_open()?;
        let (reply, rx) = oneshot::channel();
        self.send(make(reply))?;
        rx.await.unwrap_or_else(|_| Err(writer_gone()))
    }

    /// Makes everything appended so far durable and signs a checkpoint of
    /// it (if the tree grew). Returns the checkpoint size.
    ///
    /// # Errors
    ///
    /// As [`append`](Self::append), or the IO error that stopped the writer.
    pub async fn checkpoint(&self) -> Result<u64, LedgerError> {
        self.control(|reply| Command::Checkpoint { reply }).await
    }

    /// Replaces the signing key: signs a checkpoint with the old key,
    /// records the new verifier key in `keys/verifiers.txt`, appends a
    /// `ledger.key_rotated` record, and signs the checkpoint that includes
    /// it with both keys. Later checkpoints use only the new key; the old
    /// private key is deleted.
    ///
    /// # Errors
    ///
    /// As [`checkpoint`](Self::checkpoint).
    pub async fn rotate_signing_key(&self) -> Result<KeyRotation, LedgerError> {
        self.control(|reply| Command::RotateKey { reply }).await
    }

    /// Retention: deletes the oldest sealed segments whose newest record is
    /// older than `cutoff`, after appending a `retention.purged` record
    /// that names the first record kept. The open segment is never purged,
    /// and nothing else in the code deletes records.
    ///
    /// # Errors
    ///
    /// As [`checkpoint`](Self::checkpoint), or [`LedgerError::Corrupt`] if
    /// the snapshot the remaining log needs is missing.
    pub async fn purge_before(&self, cutoff: SystemTime) -> Result<PurgeReport, LedgerError> {
        self.control(|reply| Command::Purge { cutoff, reply }).await
    }

    /// Graceful stop: drains the queue, syncs, signs a final checkpoint and
    /// waits for the checkpoint sinks. Returns the final tree size. Later
    /// calls fail with [`LedgerError::ShutDown`].
    ///
    /// # Errors
    ///
    /// As [`checkpoint`](Self::checkpoint).
    pub async fn shutdown(&self) -> Result<u64, LedgerError> {
        let result = self.control(|reply| Command::Shutdown { reply }).await;
        self.shared.closed.store(true, Relaxed);
        result
    }

    /// Health, size and queue depth, for `/readyz` and metrics.
    #[must_use]
    pub fn status(&self) -> LedgerStatus {
        self.shared.status()
    }

    /// The writer's counters.
    #[must_use]
    pub fn stats(&self) -> &LedgerStats {
        &self.shared.stats
    }

    /// The ledger directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        // Hanging up makes the writer drain, checkpoint and exit, which
        // releases the lock; wait so that a reopen right after succeeds.
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
