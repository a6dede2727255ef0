//! How a ledger is opened: origin, durability, checkpoint and segment
//! policy, queue size, sinks, and the injected RNG and fsync observer.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::LedgerError;
use crate::sink::CheckpointSink;
use crate::thin::CheckpointThinning;

/// A cryptographic RNG the ledger draws signing keys from. Tests inject a
/// seeded one for deterministic keys.
pub trait SecureRng: rand::RngCore + rand::CryptoRng + Send {}

impl<T: rand::RngCore + rand::CryptoRng + Send> SecureRng for T {}

/// When an append counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// After the fdatasync of its group: nothing acknowledged is lost on a
    /// crash or power failure.
    Sync,
    /// After the write to the page cache, with an fdatasync at most
    /// `max_delay` later: a power failure can lose that window, a process
    /// crash cannot.
    Batched {
        /// The longest an acknowledged record stays unsynced.
        max_delay: Duration,
    },
}

/// The shortest `keep_all_for`: far longer than any window in which the
/// writer may still need a checkpoint it has just signed.
const MIN_KEEP_ALL_FOR: Duration = Duration::from_secs(60);

/// Called with the duration of every fsync, for a latency histogram.
pub type FsyncObserver = Arc<dyn Fn(Duration) + Send + Sync>;

/// Options for [`Ledger::open`](crate::Ledger::open). Build with
/// [`LedgerOptions::new`] and adjust the public fields.
pub struct LedgerOptions {
    /// The checkpoint origin line and signing key name, such as
    /// `custos.local/<install-id>`: non-empty, no spaces, no `+`.
    pub origin: String,
    /// When appends are acknowledged. Default: [`Durability::Sync`].
    pub durability: Durability,
    /// Sign a checkpoint after this many new records. Default 10,000: up to
    /// 10k records/s the one-second `checkpoint_every` comes first; the
    /// count bounds the unsigned tail under heavier load, without a
    /// checkpoint (two new files, four fsyncs) every few milliseconds.
    pub checkpoint_every_records: u64,
    /// Sign a checkpoint this long after the last one, if the tree grew.
    /// Default 1 s. Measured on the monotonic clock.
    pub checkpoint_every: Duration,
    /// Seal a segment before it grows past this many bytes. Default 64 MiB.
    pub segment_max_bytes: u64,
    /// Seal a segment once its first record is this old (by record
    /// timestamps, from the injected clock). Default 24 h.
    pub segment_max_age: Duration,
    /// Sync mode: records that may wait for an fdatasync (written, not yet
    /// durable); beyond it, appends fail with
    /// [`LedgerError::Backpressure`]. Default 65 536.
    pub queue_capacity: usize,
    /// Where each new checkpoint is also published, on a separate thread.
    pub sinks: Vec<Box<dyn CheckpointSink>>,
    /// The RNG for new signing keys. Default: the operating system's.
    pub rng: Box<dyn SecureRng>,
    /// Observes every fsync's duration.
    pub on_fsync: Option<FsyncObserver>,
    /// Which old checkpoints the checkpoint thread removes (at most every
    /// ten minutes, while the log grows); `None` keeps them all. Default:
    /// every checkpoint of the last 24 h, one per hour before that, and
    /// every checkpoint the log needs (see [`CheckpointThinning`]).
    pub checkpoint_thinning: Option<CheckpointThinning>,
}

impl LedgerOptions {
    /// Defaults for `origin`.
    #[must_use]
    pub fn new(origin: impl Into<String>) -> Self {
        LedgerOptions {
            origin: origin.into(),
            durability: Durability::Sync,
            checkpoint_every_records: 10_000,
            checkpoint_every: Duration::from_secs(1),
            segment_max_bytes: 64 * 1024 * 1024,
            segment_max_age: Duration::from_secs(24 * 3600),
            queue_capacity: 65_536,
            sinks: Vec::new(),
            rng: Box::new(rand::rngs::OsRng),
            on_fsync: None,
            checkpoint_thinning: Some(CheckpointThinning::default()),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), LedgerError> {
        let bad = |field, reason| Err(LedgerError::InvalidOptions { field, reason });
        if self.origin.is_empty()
            || self
                .origin
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '+')
        {
            return bad(
                "origin",
                "must be non-empty without spaces, controls or '+'",
            );
        }
        if self.checkpoint_every_records == 0 {
            return bad("checkpoint_every_records", "must be > 0");
        }
        if self.checkpoint_every.is_zero() {
            return bad("checkpoint_every", "must be > 0");
        }
        if self.segment_max_bytes < 1024 {
            return bad("segment_max_bytes", "must be at least 1024");
        }
        if self.segment_max_age.is_zero() {
            return bad("segment_max_age", "must be > 0");
        }
        if self.queue_capacity == 0 {
            return bad("queue_capacity", "must be > 0");
        }
        if let Some(t) = self.checkpoint_thinning {
            if t.keep_all_for < MIN_KEEP_ALL_FOR {
                return bad(
                    "checkpoint_thinning.keep_all_for",
                    "must be at least one minute",
                );
            }
            if t.keep_one_per < Duration::from_secs(1) {
                return bad(
                    "checkpoint_thinning.keep_one_per",
                    "must be at least one second",
                );
            }
        }
        if let Durability::Batched { max_delay } = self.durability
            && max_delay.is_zero()
        {
            return bad("durability.max_delay", "must be > 0");
        }
        Ok(())
    }
}

impl fmt::Debug for LedgerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LedgerOptions")
            .field("origin", &self.origin)
            .field("durability", &self.durability)
            .field("checkpoint_every_records", &self.checkpoint_every_records)
            .field("checkpoint_every", &self.checkpoint_every)
            .field("segment_max_bytes", &self.segment_max_bytes)
            .field("segment_max_age", &self.segment_max_age)
            .field("queue_capacity", &self.queue_capacity)
            .field("checkpoint_thinning", &self.checkpoint_thinning)
            .field(
                "sinks",
                &self.sinks.iter().map(|s| s.name()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}
