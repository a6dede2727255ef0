//! The writer: group commit, segments, checkpoints, key rotation and
//! retention. Its state sits behind one mutex ([`Core`]); whoever holds it
//! is the only one touching segment files.
//!
//! Appends are handled by the appending thread: it takes the lock and
//! hashes its record into the frontier. Handing each record to a writer
//! thread and back cost two thread wake-ups per request (issue #8).
//!
//! In batched mode the appender also writes its record (one `write` into
//! the page cache), and that is all: the writer thread fdatasyncs
//! `max_delay` after the first unsynced write, on a duplicate descriptor
//! and *without* the lock, so appends go on meanwhile.
//!
//! In sync mode the record waits for an fdatasync that covers it (group
//! commit, leader and followers). If no fdatasync is in flight and appends
//! do not overlap (the last fdatasync covered one caller's record), the
//! appender writes what is staged and leads the fdatasync itself, on its
//! own thread, without the lock. Records appended while it runs are only
//! staged in the writer's buffer; as soon as it ends, the writer thread
//! writes them with one `write` and syncs them as the next group, and so
//! on while records keep arriving. One connection's request therefore
//! costs one write, one fdatasync and no hand-off. Under load the groups
//! grow, the writer thread runs every fsync (one at a time), and no
//! appender leads: on a tokio runtime, leading means `block_in_place`,
//! which hands the worker's queue to another thread for every group.
//!
//! The writer thread also runs the timers: checkpoints and segment age,
//! and the control operations (checkpoint, rotation, purge, shutdown).
//!
//! Any write or fsync error stops the writer for good: it is never retried,
//! because after a failed fsync the kernel may have dropped the dirty
//! pages.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use custos_merkle::{Frontier, Hash, LeafHasher, leaf_hash};
use custos_note::Signer;
use custos_record::{
    MAX_RECORD_BYTES, PreEncoded, RecordBody, RecordError, Scalar, System, Timestamp, decode,
};
use custos_types::Clock;
use tokio::sync::oneshot;

use crate::error::LedgerError;
use crate::keys;
use crate::layout::{Layout, sync_dir};
use crate::options::{Durability, FsyncObserver, SecureRng};
use crate::signing::{Job, Message, write_checkpoint};
use crate::stats::Shared;

/// The most commands handled in one turn of the writer thread.
const MAX_GROUP: usize = 4096;

/// The longest the writer sleeps without checking its timers.
const MAX_IDLE: Duration = Duration::from_secs(1);

/// A record that is durable (per the configured [`Durability`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Its leaf index.
    pub seq: u64,
    /// Its RFC 6962 leaf hash.
    pub leaf_hash: Hash,
}

/// What [`Ledger::rotate_signing_key`](crate::Ledger::rotate_signing_key) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRotation {
    /// The new verifier key, to hand to auditors.
    pub vkey: String,
    /// The sequence number of the `ledger.key_rotated` record.
    pub record_seq: u64,
    /// The smallest checkpoint size the new key signs; the checkpoint at
    /// exactly this size is signed by both keys.
    pub first_size: u64,
}

/// What [`Ledger::purge_before`](crate::Ledger::purge_before) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeReport {
    /// Sealed segments removed.
    pub segments_removed: u64,
    /// The first record still stored; records before it are gone.
    pub purged_before_seq: u64,
    /// The `retention.purged` record, if anything was purged.
    pub record_seq: Option<u64>,
}

type Reply<T> = oneshot::Sender<Result<T, LedgerError>>;

/// A request to the writer thread.
pub(crate) enum Command {
    Checkpoint {
        reply: Reply<u64>,
    },
    RotateKey {
        reply: Reply<KeyRotation>,
    },
    Purge {
        cutoff: SystemTime,
        reply: Reply<PurgeReport>,
    },
    Shutdown {
        reply: Reply<u64>,
    },
    /// An append written by its caller started an unsynced window
    /// (batched), left records waiting for the next fdatasync (sync), or
    /// made a checkpoint due; the thread re-reads its timers.
    Wake,
}

/// The segment being appended to.
pub(crate) struct Segment {
    pub(crate) first_seq: u64,
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    pub(crate) len: u64,
    pub(crate) first_ts: Option<Timestamp>,
}

/// Everything the writer thread owns.
pub(crate) struct Writer {
    pub(crate) layout: Layout,
    pub(crate) origin: String,
    pub(crate) durability: Durability,
    pub(crate) every_records: u64,
    pub(crate) every: Duration,
    pub(crate) seg_max_bytes: u64,
    pub(crate) seg_max_age: Duration,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) rng: Box<dyn SecureRng>,
    pub(crate) on_fsync: Option<FsyncObserver>,
    pub(crate) signer: Signer,
    pub(crate) frontier: Frontier,
    pub(crate) seg: Segment,
    pub(crate) last_ts: Timestamp,
    pub(crate) cp_size: Option<u64>,
    pub(crate) cp_at: Instant,
    pub(crate) unsynced_since: Option<Instant>,
    pub(crate) buf: Vec<u8>,
    pub(crate) pending: Vec<(Option<Reply<Appended>>, Appended)>,
    /// Sync mode: records written by their callers that wait for an
    /// fdatasync, oldest first.
    pub(crate) waiting: VecDeque<(Reply<Appended>, Appended)>,
    /// A [`SyncJob`] is running without the lock.
    pub(crate) syncing: bool,
    /// Sync mode: how many callers' records the last fdatasync made
    /// durable. More than one means appends overlap, and the writer thread
    /// runs the next fsync instead of an appender (see [`Self::append_here`]).
    pub(crate) last_group: usize,
    pub(crate) shared: Arc<Shared>,
    pub(crate) sink_tx: Option<mpsc::Sender<(u64, String)>>,
    pub(crate) sink_thread: Option<JoinHandle<()>>,
    pub(crate) cp_tx: Option<mpsc::Sender<Message>>,
    pub(crate) cp_thread: Option<JoinHandle<()>>,
    pub(crate) failed: Option<LedgerError>,
    /// Held for the writer's lifetime: the flock on `LOCK`.
    pub(crate) _lock: File,
}

/// The writer's state, shared by the writer thread and the appending
/// threads. `None` once the writer has shut down.
pub(crate) type Core = Arc<Mutex<Option<Writer>>>;

/// Locks the writer. A poisoned lock (a panic while it was held) means the
/// writer's state cannot be trusted: the ledger is unavailable from then on.
pub(crate) fn lock<T>(core: &Mutex<T>) -> Result<MutexGuard<'_, T>, LedgerError> {
    core.lock().map_err(|_| LedgerError::Unavailable {
        reason: "the ledger writer failed".into(),
    })
}

/// Locks the writer for an append written by its caller.
///
/// The lock is held for one record's hash and one `write` into the page
/// cache, a few microseconds, so a contended appender first spins on
/// `try_lock` for about that long before it parks. Parking on the futex
/// costs a sleep and a wake-up, several times the wait itself; with two
/// runtime threads appending back to back, plain `lock` spent a third of
/// the ledger's CPU in futex calls (issue #8).
pub(crate) fn lock_for_append<T>(core: &Mutex<T>) -> Result<MutexGuard<'_, T>, LedgerError> {
    for round in 0..APPEND_SPIN_ROUNDS {
        match core.try_lock() {
            Ok(guard) => return Ok(guard),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Poisoned(_)) => break,
        }
        for _ in 0..(1u32 << round.min(5)) {
            std::hint::spin_loop();
        }
    }
    lock(core)
}

/// `try_lock` attempts of [`lock_for_append`] before it parks, with
/// exponential back-off capped at 32 spin hints between attempts: 383
/// hints in all, about 5–20 µs on current x86-64 cores.
const APPEND_SPIN_ROUNDS: u32 = 16;

/// The writer thread: queued commands (control operations, wake-ups),
/// timers (the next fdatasync, checkpoints, segment age), and the final
/// checkpoint when the last handle goes away.
pub(crate) fn run(core: Core, rx: Receiver<Command>) {
    // A crash between filling a segment and opening the next one leaves a
    // full segment; seal it before taking new records.
    let mut timeout = match tick_unlocked(&core) {
        Some(timeout) => timeout,
        None => return,
    };
    loop {
        let first = match rx.recv_timeout(timeout) {
            Ok(cmd) => Some(cmd),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                if let Ok(mut guard) = lock(&core)
                    && let Some(mut writer) = guard.take()
                {
                    let _ = writer.finish();
                }
                return;
            }
        };
        if let Some(first) = first {
            let Ok(mut guard) = lock(&core) else { return };
            let Some(writer) = guard.as_mut() else { return };
            if writer.handle(first, &rx) {
                // Shut down: dropping the writer closes its files and
                // releases the directory lock.
                *guard = None;
                return;
            }
        }
        timeout = match tick_unlocked(&core) {
            Some(timeout) => timeout,
            None => return,
        };
    }
}

/// Runs the timers. A due fsync runs without the lock held, so that
/// appends (written by their callers) are not held up by the disk.
/// Returns how long the thread may sleep, or `None` once the writer is
/// gone.
fn tick_unlocked(core: &Mutex<Option<Writer>>) -> Option<Duration> {
    let mut guard = lock(core).ok()?;
    let Some(job) = guard.as_mut()?.tick() else {
        return Some(guard.as_ref()?.next_timeout());
    };
    drop(guard);
    let result = job.run();
    let mut guard = lock(core).ok()?;
    let writer = guard.as_mut()?;
    writer.synced(&job, result);
    Some(writer.next_timeout())
}

/// An fdatasync run without the writer's lock: by the writer thread, or
/// in sync mode by an appender that leads a group.
pub(crate) struct SyncJob {
    /// A duplicate of the open segment's descriptor.
    file: File,
    path: PathBuf,
    /// The segment, by its first sequence number.
    first_seq: u64,
    /// Bytes written to it when the job was made.
    len: u64,
    /// Records written when the job was made: the job makes them durable.
    size: u64,
    made: Instant,
    shared: Arc<Shared>,
    on_fsync: Option<FsyncObserver>,
}

impl SyncJob {
    /// fdatasyncs, and counts it.
    pub(crate) fn run(&self) -> std::io::Result<()> {
        let started = Instant::now();
        let result = self.file.sync_data();
        if result.is_ok() {
            let took = started.elapsed();
            self.shared.stats.note_fsync(took);
            if let Some(observe) = &self.on_fsync {
                observe(took);
            }
        }
        result
    }
}

/// What [`Writer::append_here`] did.
pub(crate) struct Written {
    /// Resolves once the record is durable (batched: already resolved).
    pub(crate) ticket: oneshot::Receiver<Result<Appended, LedgerError>>,
    /// Sync mode, no fsync in flight: the caller leads this one, without
    /// the lock, and hands the outcome to [`Writer::synced`].
    pub(crate) lead: Option<SyncJob>,
    /// The writer thread must be woken (a new unsynced window began, or a
    /// checkpoint is due by count).
    pub(crate) wake: bool,
}

impl Writer {
    /// Handles `first` and everything queued behind it (up to
    /// [`MAX_GROUP`]). Returns `true` on shutdown.
    fn handle(&mut self, first: Command, rx: &Receiver<Command>) -> bool {
        self.adopt_failure();
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Wake => {}
                Command::Shutdown { reply } => {
                    let _ = reply.send(self.finish());
                    return true;
                }
                Command::Checkpoint { reply } => {
                    let _ = reply.send(self.checkpoint(None));
                }
                Command::RotateKey { reply } => {
                    let result = self.rotate();
                    let _ = reply.send(result);
                }
                Command::Purge { cutoff, reply } => {
                    let result = self.purge(cutoff);
                    let _ = reply.send(result);
                }
            }
            handled += 1;
            if handled < MAX_GROUP {
                next = rx.try_recv().ok();
            }
        }
        // Records staged in sync mode are left to the timers' next group,
        // whose fsync runs without the lock.
        false
    }

    /// Takes one record on the caller's thread, under the lock, instead
    /// of handing it to the writer thread and back.
    ///
    /// Batched mode: the ticket is resolved; the writer thread fsyncs
    /// within `max_delay`. Sync mode: the ticket resolves once an
    /// fdatasync covers the record; if none is in flight and the caller
    /// `may_lead` (it may block), the staged records are written and the
    /// caller gets their fsync to lead; otherwise the record stays staged
    /// for the next group (and the writer thread is woken if nobody else
    /// will start it).
    pub(crate) fn append_here(
        &mut self,
        record: &PreEncoded,
        prefix: LeafHasher,
        may_lead: bool,
    ) -> Result<Written, LedgerError> {
        if self.shared.closed.load(Relaxed) {
            return Err(LedgerError::ShutDown);
        }
        self.adopt_failure();
        if let Some(err) = self.unavailable() {
            return Err(err);
        }
        let sync = matches!(self.durability, Durability::Sync);
        if sync && self.waiting.len() + self.pending.len() >= self.shared.capacity {
            self.shared.stats.note_rejected();
            return Err(LedgerError::Backpressure {
                capacity: self.shared.capacity,
            });
        }
        let (reply, ticket) = oneshot::channel();
        let was_synced = self.unsynced_since.is_none();
        self.stage(record, Some(prefix), Some(reply));
        let mut lead = None;
        if sync {
            // An appender leads only while appends do not overlap (the last
            // group was one record): then its own fsync is the fastest way
            // to durability. Under concurrency, leading would hand its
            // runtime worker to another thread for every group
            // (`block_in_place`), which costs more than one wake-up of the
            // writer thread, and the writer thread syncs group after group.
            if may_lead && !self.syncing && self.last_group <= 1 {
                // No fsync in flight: write what is staged (this record,
                // and any left by appenders that could not lead) and
                // lead the fsync of it.
                self.write_waiting();
                if self.next_group_due() {
                    lead = self.sync_job();
                }
            }
            // Otherwise the record stays staged: whoever ends the fsync in
            // flight, or the writer thread, writes it with the rest of the
            // next group, one `write` for all of them.
            self.update_depth();
        } else {
            self.commit();
        }
        let signed = self.cp_size.unwrap_or(0);
        let wake = (!sync && was_synced && self.unsynced_since.is_some())
            || (sync && self.next_group_due())
            || self.frontier.size().saturating_sub(signed) == self.every_records;
        Ok(Written { ticket, lead, wake })
    }

    /// Sync mode: writes the staged records with one `write` and queues
    /// their tickets until an fdatasync covers them.
    fn write_waiting(&mut self) {
        if self.write_buf().is_none() {
            return;
        }
        self.unsynced_since.get_or_insert_with(Instant::now);
        for (reply, appended) in self.pending.drain(..) {
            if let Some(reply) = reply {
                self.waiting.push_back((reply, appended));
            }
        }
        self.update_depth();
    }

    /// Sync mode: records not yet durable, staged or written.
    fn update_depth(&self) {
        self.shared
            .depth
            .store(self.waiting.len() + self.pending.len(), Relaxed);
    }

    /// Makes an fsync of the open segment to run without the lock, and
    /// marks it in flight. `None` if the descriptor cannot be duplicated
    /// (the writer has then failed).
    fn sync_job(&mut self) -> Option<SyncJob> {
        match self.seg.file.try_clone() {
            Ok(file) => {
                self.syncing = true;
                Some(SyncJob {
                    file,
                    path: self.seg.path.clone(),
                    first_seq: self.seg.first_seq,
                    len: self.seg.len,
                    size: self.frontier.size(),
                    made: Instant::now(),
                    shared: Arc::clone(&self.shared),
                    on_fsync: self.on_fsync.clone(),
                })
            }
            Err(e) => {
                let err = LedgerError::io("dup", &self.seg.path, e);
                self.fail(err);
                None
            }
        }
    }

    /// Resolves the waiting tickets of every record below `size`, now
    /// durable.
    fn mark_durable(&mut self, size: u64) {
        let durable = self
            .waiting
            .iter()
            .take_while(|(_, appended)| appended.seq < size)
            .count();
        let resolved: Vec<_> = self.waiting.drain(..durable).collect();
        self.last_group = durable;
        // The depth first: whoever a ticket wakes sees it already lowered.
        self.update_depth();
        for (reply, appended) in resolved {
            let _ = reply.send(Ok(appended));
        }
    }

    /// Sync mode: whether records (written or staged) wait for an fsync
    /// that nobody runs yet: the writer thread must start the next group.
    pub(crate) fn next_group_due(&self) -> bool {
        matches!(self.durability, Durability::Sync)
            && !self.syncing
            && (!self.waiting.is_empty() || !self.pending.is_empty())
            && self.failed.is_none()
    }

    /// Takes the outcome of a [`SyncJob`].
    pub(crate) fn synced(&mut self, job: &SyncJob, result: std::io::Result<()>) {
        self.syncing = false;
        if let Err(e) = result {
            self.fail(LedgerError::io("fsync", &job.path, e));
            return;
        }
        if self.seg.first_seq == job.first_seq {
            self.unsynced_since = if self.seg.len == job.len {
                None
            } else {
                // Written after the job was made: unsynced since then at most.
                Some(job.made)
            };
        }
        // Otherwise the segment was sealed meanwhile: sealing synced it, and
        // the new one keeps its own unsynced window.
        self.mark_durable(job.size);
    }

    fn unavailable(&self) -> Option<LedgerError> {
        self.failed.as_ref().map(|e| LedgerError::Unavailable {
            reason: e.to_string(),
        })
    }

    /// Stops the writer for good and fails everything not yet durable.
    fn fail(&mut self, err: LedgerError) {
        self.shared.set_failed(err.to_string());
        for (reply, _) in self.pending.drain(..) {
            if let Some(reply) = reply {
                let _ = reply.send(Err(err.clone()));
            }
        }
        for (reply, _) in self.waiting.drain(..) {
            let _ = reply.send(Err(err.clone()));
        }
        self.shared.depth.store(0, Relaxed);
        self.buf.clear();
        self.failed.get_or_insert(err);
    }

    fn now_ts(&self) -> Timestamp {
        // Never let time run backwards inside the log: a clock step back
        // would otherwise make the verifier flag the records.
        Timestamp::from_system_time(self.clock.now()).max(self.last_ts)
    }

    fn segment_expired(&self, ts: Timestamp) -> bool {
        let max_age = u64::try_from(self.seg_max_age.as_micros()).unwrap_or(u64::MAX);
        self.seg
            .first_ts
            .is_some_and(|first| ts.unix_micros().saturating_sub(first.unix_micros()) >= max_age)
    }

    /// Encodes, hashes and buffers one record. It is written by the next
    /// [`commit`](Self::commit). `prefix`, when given, has already hashed
    /// the record's [`head`](PreEncoded::head).
    fn stage(
        &mut self,
        record: &PreEncoded,
        prefix: Option<LeafHasher>,
        reply: Option<Reply<Appended>>,
    ) {
        if let Some(err) = self.unavailable() {
            if let Some(reply) = reply {
                let _ = reply.send(Err(err));
            }
            return;
        }
        let ts = self.now_ts();
        let unwritten = self.seg.len + self.buf.len() as u64;
        if unwritten > 0 && self.segment_expired(ts) {
            self.seal();
        }
        let seq = self.frontier.size();
        let start = self.buf.len();
        record.finish(seq, ts, &mut self.buf);
        let len = self.buf.len() - start;
        if len > MAX_RECORD_BYTES {
            self.buf.truncate(start);
            if let Some(reply) = reply {
                let _ = reply.send(Err(LedgerError::InvalidRecord(RecordError::TooLarge {
                    len,
                    max: MAX_RECORD_BYTES,
                })));
            }
            return;
        }
        let before = self.seg.len + start as u64;
        if before > 0 && before + len as u64 + 1 > self.seg_max_bytes {
            let encoded = self.buf.split_off(start);
            self.seal();
            self.buf.extend_from_slice(&encoded);
        }
        if let Some(err) = self.unavailable() {
            if let Some(reply) = reply {
                let _ = reply.send(Err(err));
            }
            return;
        }
        let at = self.buf.len() - len;
        let leaf = match prefix {
            Some(mut hasher) => {
                hasher.update(&self.buf[at + record.head().len()..]);
                hasher.finish()
            }
            None => leaf_hash(&self.buf[at..]),
        };
        self.buf.push(b'\n');
        if let Err(e) = self.frontier.append(leaf) {
            self.buf.truncate(at);
            if let Some(reply) = reply {
                let _ = reply.send(Err(LedgerError::Unavailable {
                    reason: e.to_string(),
                }));
            }
            return;
        }
        self.seg.first_ts.get_or_insert(ts);
        self.last_ts = ts;
        self.pending.push((
            reply,
            Appended {
                seq,
                leaf_hash: leaf,
            },
        ));
    }

    /// Writes the buffered group, syncs it in sync mode, and resolves its
    /// tickets.
    fn commit(&mut self) {
        if self.write_buf().is_none() {
            return;
        }
        match self.durability {
            Durability::Sync => {
                if self.sync().is_err() {
                    return;
                }
            }
            Durability::Batched { .. } => {
                self.unsynced_since.get_or_insert_with(Instant::now);
            }
        }
        for (reply, appended) in self.pending.drain(..) {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(appended));
            }
        }
        self.update_depth();
    }

    /// Writes the staged records with one `write`. Returns the bytes
    /// written, or `None` if there was nothing to write or the write
    /// failed (the writer has then failed).
    fn write_buf(&mut self) -> Option<u64> {
        if self.buf.is_empty() || self.failed.is_some() {
            return None;
        }
        if let Err(e) = self.seg.file.write_all(&self.buf) {
            let err = LedgerError::io("write", &self.seg.path, e);
            self.fail(err);
            return None;
        }
        let bytes = self.buf.len() as u64;
        self.seg.len += bytes;
        self.buf.clear();
        self.shared.size.store(self.frontier.size(), Relaxed);
        self.shared
            .stats
            .note_group(self.pending.len() as u64, bytes);
        Some(bytes)
    }

    /// fdatasyncs the open segment.
    fn sync(&mut self) -> Result<(), LedgerError> {
        let started = Instant::now();
        if let Err(e) = self.seg.file.sync_data() {
            let err = LedgerError::io("fsync", &self.seg.path, e);
            self.fail(err.clone());
            return Err(err);
        }
        let took = started.elapsed();
        self.shared.stats.note_fsync(took);
        if let Some(observe) = &self.on_fsync {
            observe(took);
        }
        self.unsynced_since = None;
        self.mark_durable(self.frontier.size());
        Ok(())
    }

    fn fail_with(&mut self, err: LedgerError) -> LedgerError {
        self.fail(err.clone());
        err
    }

    /// Signs a checkpoint of everything written so far, after making it
    /// durable. `previous` co-signs the checkpoint that follows a key
    /// rotation.
    fn checkpoint(&mut self, previous: Option<&Signer>) -> Result<u64, LedgerError> {
        self.commit();
        self.flush_checkpointer();
        if let Some(err) = self.unavailable() {
            return Err(err);
        }
        let size = self.frontier.size();
        if self.cp_size == Some(size) && previous.is_none() {
            return Ok(size);
        }
        if self.unsynced_since.is_some() {
            self.sync()?;
        }
        let signers: Vec<&Signer> = previous.into_iter().chain([&self.signer]).collect();
        let note = match write_checkpoint(&self.layout, &self.origin, &self.frontier, &signers) {
            Ok(note) => note,
            Err(e) => return Err(self.fail_with(e)),
        };
        self.cp_size = Some(size);
        self.cp_at = Instant::now();
        self.shared.set_checkpoint(size);
        self.shared.stats.note_checkpoint();
        if let Some(tx) = &self.sink_tx {
            let _ = tx.send((size, note));
        }
        Ok(size)
    }

    /// Hands a periodic checkpoint of the current tree to the checkpointer.
    fn request_checkpoint(&mut self) {
        let sync = if self.unsynced_since.is_some() {
            match self.seg.file.try_clone() {
                Ok(file) => Some((file, self.seg.path.clone())),
                Err(e) => {
                    let err = LedgerError::io("dup", &self.seg.path, e);
                    self.fail(err);
                    return;
                }
            }
        } else {
            None
        };
        let job = Job {
            frontier: self.frontier.clone(),
            signer: self.signer.clone(),
            sync,
        };
        if let Some(tx) = &self.cp_tx {
            let _ = tx.send(Message::Job(Box::new(job)));
        }
        self.cp_size = Some(self.frontier.size());
        self.cp_at = Instant::now();
    }

    /// Waits until the checkpointer has finished every request, and takes
    /// over its failure if it had one.
    fn flush_checkpointer(&mut self) {
        if let Some(tx) = &self.cp_tx {
            let (reply, done) = mpsc::channel();
            if tx.send(Message::Flush(reply)).is_ok() {
                let _ = done.recv();
            }
        }
        self.adopt_failure();
    }

    /// Stops appending if another thread of the ledger failed.
    fn adopt_failure(&mut self) {
        if self.failed.is_none()
            && let Some(reason) = self.shared.failure()
        {
            self.fail(LedgerError::Unavailable { reason });
        }
    }

    /// Closes the open segment at a signed checkpoint and starts the next.
    fn seal(&mut self) {
        self.commit();
        if self.failed.is_some() || self.seg.len == 0 {
            return;
        }
        if self.checkpoint(None).is_err() {
            return;
        }
        let first_seq = self.frontier.size();
        let path = self.layout.segment(first_seq);
        let opened = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| LedgerError::io("create", &path, e))
            .and_then(|file| sync_dir(&self.layout.segments()).map(|()| file));
        match opened {
            Ok(file) => {
                self.seg = Segment {
                    first_seq,
                    file,
                    path,
                    len: 0,
                    first_ts: None,
                };
            }
            Err(e) => self.fail(e),
        }
    }

    /// Runs the timers: periodic checkpoints and segment age. Returns the
    /// fsync that is due (batched: `max_delay` after the first unsynced
    /// write; sync: records wait and no fsync is in flight), for the caller
    /// to run without the lock.
    fn tick(&mut self) -> Option<SyncJob> {
        if self.failed.is_some() {
            return None;
        }
        let now = Instant::now();
        let size = self.frontier.size();
        let signed = self.cp_size.unwrap_or(0);
        if size > signed
            && (size - signed >= self.every_records || now.duration_since(self.cp_at) >= self.every)
        {
            self.request_checkpoint();
        }
        if self.seg.len > 0
            && (self.seg.len >= self.seg_max_bytes || self.segment_expired(self.now_ts()))
        {
            self.seal();
        }
        if self.failed.is_some() || self.syncing {
            return None;
        }
        let due = match self.durability {
            Durability::Sync => {
                self.write_waiting();
                !self.waiting.is_empty()
            }
            Durability::Batched { max_delay } => self
                .unsynced_since
                .is_some_and(|since| now.duration_since(since) >= max_delay),
        };
        if due { self.sync_job() } else { None }
    }

    fn next_timeout(&self) -> Duration {
        if self.next_group_due() {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let mut timeout = MAX_IDLE;
        if let (Some(since), Durability::Batched { max_delay }) =
            (self.unsynced_since, self.durability)
        {
            timeout = timeout.min((since + max_delay).saturating_duration_since(now));
        }
        if self.frontier.size() > self.cp_size.unwrap_or(0) {
            timeout = timeout.min((self.cp_at + self.every).saturating_duration_since(now));
        }
        timeout
    }

    /// Appends a record the ledger writes about itself, makes it durable,
    /// and returns its sequence number.
    fn append_own(&mut self, body: System) -> Result<u64, LedgerError> {
        let record = PreEncoded::new(RecordBody::System(body))?;
        let (tx, mut rx) = oneshot::channel();
        self.stage(&record, None, Some(tx));
        self.commit();
        if self.unsynced_since.is_some() {
            self.sync()?;
        }
        match rx.try_recv() {
            Ok(result) => result.map(|a| a.seq),
            Err(_) => Err(self.unavailable().unwrap_or(LedgerError::Unavailable {
                reason: "internal record was not written".into(),
            })),
        }
    }

    fn rotate(&mut self) -> Result<KeyRotation, LedgerError> {
        self.checkpoint(None)?;
        let size = self.frontier.size();
        let first_size = size + 1;
        let new = keys::generate(&self.origin, self.rng.as_mut())?;
        let old_vkey = self.signer.verifier().to_vkey();
        let new_vkey = new.verifier().to_vkey();
        // Order matters for crash safety; see `keys::load_or_create`.
        let prepared = keys::write_key(&self.layout, &new, true)
            .and_then(|()| keys::append_history(&self.layout, first_size, &new));
        if let Err(e) = prepared {
            return Err(self.fail_with(e));
        }
        let record_seq = self.append_own(
            System::new("ledger.key_rotated")
                .with("old_key", old_vkey)
                .with("new_key", new_vkey.clone())
                .with("first_size", Scalar::count(first_size)),
        )?;
        let old = std::mem::replace(&mut self.signer, new);
        self.checkpoint(Some(&old))?;
        let installed = fs::rename(self.layout.new_signing_key(), self.layout.signing_key())
            .map_err(|e| LedgerError::io("rename", self.layout.signing_key(), e))
            .and_then(|()| sync_dir(&self.layout.keys()));
        if let Err(e) = installed {
            return Err(self.fail_with(e));
        }
        Ok(KeyRotation {
            vkey: new_vkey,
            record_seq,
            first_size,
        })
    }

    fn purge(&mut self, cutoff: SystemTime) -> Result<PurgeReport, LedgerError> {
        self.commit();
        if let Some(err) = self.unavailable() {
            return Err(err);
        }
        let cutoff = Timestamp::from_system_time(cutoff);
        let segments = self.layout.list_segments()?;
        let sealed: Vec<u64> = segments
            .iter()
            .copied()
            .filter(|&s| s < self.seg.first_seq)
            .collect();
        let mut doomed = 0;
        for &first in &sealed {
            if last_record_ts(&self.layout.segment(first))? < cutoff {
                doomed += 1;
            } else {
                break;
            }
        }
        let boundary = segments.get(doomed).copied().unwrap_or(self.seg.first_seq);
        if doomed == 0 {
            return Ok(PurgeReport {
                segments_removed: 0,
                purged_before_seq: segments.first().copied().unwrap_or(0),
                record_seq: None,
            });
        }
        // The rest of the log verifies from the snapshot at the boundary,
        // so it must be there before anything goes.
        for path in [self.layout.frontier(boundary), self.layout.note(boundary)] {
            if !path.exists() {
                return Err(LedgerError::corrupt(
                    path,
                    Some(boundary),
                    "snapshot at the purge boundary is missing",
                ));
            }
        }
        // The record goes first: a crash before the deletions leaves a log
        // that says more was purged than was, which verifies; the reverse
        // would look like tampering.
        let record_seq = self.append_own(
            System::new("retention.purged")
                .with("purged_before_seq", Scalar::count(boundary))
                .with("segments", Scalar::count(doomed as u64))
                .with("cutoff", cutoff.to_string()),
        )?;
        for &first in &sealed[..doomed] {
            let path = self.layout.segment(first);
            if let Err(e) = fs::remove_file(&path) {
                return Err(self.fail_with(LedgerError::io("remove", &path, e)));
            }
        }
        sync_dir(&self.layout.segments())?;
        Ok(PurgeReport {
            segments_removed: doomed as u64,
            purged_before_seq: boundary,
            record_seq: Some(record_seq),
        })
    }

    /// Graceful stop: write and sync everything, sign a final checkpoint,
    /// let the sinks finish.
    fn finish(&mut self) -> Result<u64, LedgerError> {
        self.shared.closed.store(true, Relaxed);
        let result = self.checkpoint(None);
        self.shared.healthy.store(false, Relaxed);
        self.cp_tx = None;
        if let Some(thread) = self.cp_thread.take() {
            let _ = thread.join();
        }
        self.sink_tx = None;
        if let Some(thread) = self.sink_thread.take() {
            let _ = thread.join();
        }
        result
    }
}

/// The timestamp of the last record in a sealed segment.
fn last_record_ts(path: &std::path::Path) -> Result<Timestamp, LedgerError> {
    let mut file = File::open(path).map_err(|e| LedgerError::io("open", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| LedgerError::io("stat", path, e))?
        .len();
    let from = len.saturating_sub(MAX_RECORD_BYTES as u64 + 2);
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(from))
        .and_then(|_| file.read_to_end(&mut tail))
        .map_err(|e| LedgerError::io("read", path, e))?;
    let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
    let line = body
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(body, |i| &body[i + 1..]);
    decode(line)
        .map(|r| r.ts)
        .map_err(|e| LedgerError::corrupt(path, None, format!("last record: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
mod lock_tests {
    use std::sync::{Arc, Barrier, Mutex};
    use std::time::Duration;

    use super::{lock, lock_for_append};

    #[test]
    fn an_appender_parks_when_the_lock_is_held_longer_than_its_spin() {
        let core = Arc::new(Mutex::new(0u32));
        let held = Arc::new(Barrier::new(2));
        let holder = {
            let (core, held) = (Arc::clone(&core), Arc::clone(&held));
            std::thread::spawn(move || {
                let mut guard = lock(&core).unwrap();
                held.wait();
                // Far longer than the spin: the appender must park, then
                // see this write once it gets the lock.
                std::thread::sleep(Duration::from_millis(50));
                *guard = 7;
            })
        };
        held.wait();
        let guard = lock_for_append(&core).unwrap();
        assert_eq!(*guard, 7);
        drop(guard);
        holder.join().unwrap();
    }

    #[test]
    fn a_poisoned_writer_lock_makes_the_ledger_unavailable() {
        let core = Arc::new(Mutex::new(0u32));
        let poisoner = Arc::clone(&core);
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.lock().unwrap();
            panic!("poison the lock");
        })
        .join();
        let err = lock_for_append(&core).unwrap_err();
        assert!(err.to_string().contains("ledger writer failed"), "{err}");
    }
}
