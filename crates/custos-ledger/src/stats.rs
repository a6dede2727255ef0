//! Health and counters shared between the writer thread and the handle:
//! plain atomics, read by `/readyz` and the metrics exporter without any
//! metrics dependency here.

use std::sync::Mutex;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::time::{Duration, Instant};

use crate::error::LedgerError;
use crate::thin::ThinReport;

/// Monotonic counters of the writer's work. Read them with
/// [`snapshot`](Self::snapshot).
#[derive(Debug, Default)]
pub struct LedgerStats {
    appended: AtomicU64,
    groups: AtomicU64,
    fsyncs: AtomicU64,
    fsync_micros_total: AtomicU64,
    fsync_micros_max: AtomicU64,
    checkpoints: AtomicU64,
    bytes_written: AtomicU64,
    rejected: AtomicU64,
    sink_failures: AtomicU64,
    checkpoints_thinned: AtomicU64,
    thin_failures: AtomicU64,
}

/// A copy of [`LedgerStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Records written to segments. In sync mode they are counted when
    /// written, just before the fdatasync that acknowledges them.
    pub appended: u64,
    /// `write` calls on segments (one per append written by its caller;
    /// records per fdatasync is `appended / fsyncs`).
    pub groups: u64,
    /// fdatasync calls on segments.
    pub fsyncs: u64,
    /// Total microseconds spent in those fsyncs.
    pub fsync_micros_total: u64,
    /// The slowest fsync, in microseconds.
    pub fsync_micros_max: u64,
    /// Checkpoints signed.
    pub checkpoints: u64,
    /// Bytes appended to segments.
    pub bytes_written: u64,
    /// Appends refused for backpressure or unavailability.
    pub rejected: u64,
    /// Failed checkpoint sink publications.
    pub sink_failures: u64,
    /// Old checkpoints removed by thinning.
    pub checkpoints_thinned: u64,
    /// Thinning passes that failed (the ledger keeps running).
    pub thin_failures: u64,
}

impl LedgerStats {
    /// The current values.
    #[must_use]
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            appended: self.appended.load(Relaxed),
            groups: self.groups.load(Relaxed),
            fsyncs: self.fsyncs.load(Relaxed),
            fsync_micros_total: self.fsync_micros_total.load(Relaxed),
            fsync_micros_max: self.fsync_micros_max.load(Relaxed),
            checkpoints: self.checkpoints.load(Relaxed),
            bytes_written: self.bytes_written.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            sink_failures: self.sink_failures.load(Relaxed),
            checkpoints_thinned: self.checkpoints_thinned.load(Relaxed),
            thin_failures: self.thin_failures.load(Relaxed),
        }
    }

    pub(crate) fn note_group(&self, records: u64, bytes: u64) {
        self.groups.fetch_add(1, Relaxed);
        self.appended.fetch_add(records, Relaxed);
        self.bytes_written.fetch_add(bytes, Relaxed);
    }

    pub(crate) fn note_fsync(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.fsyncs.fetch_add(1, Relaxed);
        self.fsync_micros_total.fetch_add(micros, Relaxed);
        self.fsync_micros_max.fetch_max(micros, Relaxed);
    }

    pub(crate) fn note_checkpoint(&self) {
        self.checkpoints.fetch_add(1, Relaxed);
    }

    pub(crate) fn note_rejected(&self) {
        self.rejected.fetch_add(1, Relaxed);
    }

    pub(crate) fn note_thinned(&self, result: &Result<ThinReport, LedgerError>) {
        match result {
            Ok(report) => {
                self.checkpoints_thinned
                    .fetch_add(report.removed as u64, Relaxed);
            }
            Err(_) => {
                self.thin_failures.fetch_add(1, Relaxed);
            }
        }
    }

    pub(crate) fn note_sink_failure(&self) {
        self.sink_failures.fetch_add(1, Relaxed);
    }
}

/// What `/readyz` and the metrics need to know about the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerStatus {
    /// Records acknowledged so far: the tree size.
    pub size: u64,
    /// Size of the newest signed checkpoint.
    pub checkpoint_size: u64,
    /// Time since the newest checkpoint was signed by this process;
    /// `None` if it has signed none yet.
    pub checkpoint_age: Option<Duration>,
    /// Sync mode: records written and waiting for an fdatasync.
    pub queue_depth: usize,
    /// The most that may wait (`queue_capacity`).
    pub queue_capacity: usize,
    /// False once the writer has failed or shut down; the gateway must
    /// then refuse traffic.
    pub healthy: bool,
    /// The error that stopped the writer, if any.
    pub last_error: Option<String>,
    /// The last checkpoint sink failure, if any (does not affect health).
    pub last_sink_error: Option<String>,
}

/// State shared by the handle, the writer thread and the sink thread.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) stats: LedgerStats,
    pub(crate) depth: AtomicUsize,
    pub(crate) capacity: usize,
    pub(crate) size: AtomicU64,
    pub(crate) checkpoint_size: AtomicU64,
    pub(crate) checkpoint_at: Mutex<Option<Instant>>,
    pub(crate) healthy: AtomicBool,
    pub(crate) closed: AtomicBool,
    pub(crate) last_error: Mutex<Option<String>>,
    pub(crate) last_sink_error: Mutex<Option<String>>,
}

impl Shared {
    pub(crate) fn new(capacity: usize, size: u64, checkpoint_size: u64) -> Self {
        Shared {
            stats: LedgerStats::default(),
            depth: AtomicUsize::new(0),
            capacity,
            size: AtomicU64::new(size),
            checkpoint_size: AtomicU64::new(checkpoint_size),
            checkpoint_at: Mutex::new(None),
            healthy: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            last_error: Mutex::new(None),
            last_sink_error: Mutex::new(None),
        }
    }

    pub(crate) fn set_failed(&self, reason: String) {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(reason);
        // Published after the reason, so that `failure` may skip the lock
        // while this is still true.
        self.healthy.store(false, Release);
    }

    pub(crate) fn failure(&self) -> Option<String> {
        // Every append asks; while the ledger is healthy one load answers,
        // instead of a lock that all callers' cores would contend for.
        if self.healthy.load(Acquire) {
            return None;
        }
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_sink_error(&self, reason: String) {
        *self
            .last_sink_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }

    pub(crate) fn set_checkpoint(&self, size: u64) {
        self.checkpoint_size.store(size, Relaxed);
        *self.checkpoint_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    pub(crate) fn status(&self) -> LedgerStatus {
        LedgerStatus {
            size: self.size.load(Relaxed),
            checkpoint_size: self.checkpoint_size.load(Relaxed),
            checkpoint_age: self
                .checkpoint_at
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .map(|at| at.elapsed()),
            queue_depth: self.depth.load(Relaxed),
            queue_capacity: self.capacity,
            healthy: self.healthy.load(Relaxed),
            last_error: self.failure(),
            last_sink_error: self
                .last_sink_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}
