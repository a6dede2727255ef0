//! Bringing a ledger back to a consistent state at open, after a clean
//! shutdown or a `kill -9`.
//!
//! The newest checkpoint is trusted only after its signature verifies; the
//! open segment is then re-hashed from the frontier snapshot at its first
//! record (signed when the previous segment was sealed), and the result
//! must reproduce the newest checkpoint's root. A torn last line, which a
//! crash mid-write leaves behind and which was never acknowledged, is cut
//! off; anything else that does not decode is corruption, and the ledger
//! refuses to open.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use custos_merkle::{Frontier, leaf_hash};
use custos_note::{Checkpoint, open as open_note};
use custos_record::{System, Timestamp, decode};

use crate::error::LedgerError;
use crate::layout::{KeyEntry, Layout, key_for_size, parse_frontier, read_to_string, sync_dir};

/// What [`Ledger::open`](crate::Ledger::open) found and did. Log it, and
/// append [`to_record`](Self::to_record) when it returns one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecoveryReport {
    /// The ledger directory was empty and has been initialised.
    pub created: bool,
    /// Records in the tree after recovery.
    pub tree_size: u64,
    /// Size of the newest signed checkpoint found.
    pub checkpoint_size: u64,
    /// Records re-hashed to check the newest checkpoint and rebuild the tree.
    pub records_rehashed: u64,
    /// Records after the newest checkpoint: written and acknowledged before
    /// a crash but not yet signed. The next checkpoint covers them.
    pub unsigned_records: u64,
    /// The segment whose torn last line was cut off, if any.
    pub truncated_file: Option<PathBuf>,
    /// How many bytes were cut off.
    pub truncated_bytes: u64,
    /// Leftover temporary files removed.
    pub removed_temp_files: u64,
    /// A key rotation interrupted by a crash was completed.
    pub completed_key_rotation: bool,
}

impl RecoveryReport {
    /// Whether the last run ended without a clean shutdown.
    #[must_use]
    pub fn was_unclean(&self) -> bool {
        self.unsigned_records > 0
            || self.truncated_bytes > 0
            || self.removed_temp_files > 0
            || self.completed_key_rotation
    }

    /// The `ledger.recovered` system record to append when recovery had
    /// anything to do, `None` after a clean shutdown.
    #[must_use]
    pub fn to_record(&self) -> Option<System> {
        if !self.was_unclean() {
            return None;
        }
        let mut record = System::new("ledger.recovered")
            .with("tree_size", custos_record::Scalar::count(self.tree_size))
            .with(
                "checkpoint_size",
                custos_record::Scalar::count(self.checkpoint_size),
            )
            .with(
                "unsigned_records",
                custos_record::Scalar::count(self.unsigned_records),
            )
            .with(
                "truncated_bytes",
                custos_record::Scalar::count(self.truncated_bytes),
            )
            .with("completed_key_rotation", self.completed_key_rotation);
        if let Some(file) = self.truncated_file.as_ref().and_then(|f| f.file_name()) {
            record = record.with("truncated_file", file.to_string_lossy().into_owned());
        }
        Some(record)
    }
}

/// The writer's starting state.
pub(crate) struct Recovered {
    pub(crate) frontier: Frontier,
    pub(crate) segment_first_seq: u64,
    pub(crate) segment_len: u64,
    pub(crate) segment_first_ts: Option<Timestamp>,
    pub(crate) last_ts: Timestamp,
    pub(crate) checkpoint_size: Option<u64>,
    pub(crate) report: RecoveryReport,
}

/// Opens and checks the signed checkpoint of `size`.
pub(crate) fn load_checkpoint(
    layout: &Layout,
    history: &[KeyEntry],
    origin: &str,
    size: u64,
) -> Result<Checkpoint, LedgerError> {
    let path = layout.note(size);
    let text = read_to_string(&path)?;
    let key = key_for_size(history, size).ok_or_else(|| {
        LedgerError::corrupt(&path, None, "no key in verifiers.txt for this size")
    })?;
    let note = open_note(text.as_bytes(), std::slice::from_ref(&key.verifier))
        .map_err(|e| LedgerError::corrupt(&path, None, format!("signature: {e}")))?;
    let cp = Checkpoint::parse(note.body())
        .map_err(|e| LedgerError::corrupt(&path, None, format!("checkpoint: {e}")))?;
    if cp.size() != size || cp.origin() != origin {
        return Err(LedgerError::corrupt(
            &path,
            None,
            format!(
                "checkpoint says origin {:?} size {}, want {origin:?} size {size}",
                cp.origin(),
                cp.size()
            ),
        ));
    }
    Ok(cp)
}

/// The frontier at `size`, from its snapshot, checked against the signed
/// checkpoint of that size.
pub(crate) fn load_frontier(
    layout: &Layout,
    history: &[KeyEntry],
    origin: &str,
    size: u64,
) -> Result<Frontier, LedgerError> {
    if size == 0 {
        return Ok(Frontier::new());
    }
    let path = layout.frontier(size);
    let frontier = parse_frontier(&read_to_string(&path)?)
        .filter(|f| f.size() == size)
        .ok_or_else(|| LedgerError::corrupt(&path, None, "malformed frontier snapshot"))?;
    let cp = load_checkpoint(layout, history, origin, size)?;
    if frontier.root() != *cp.root() {
        return Err(LedgerError::corrupt(
            &path,
            None,
            "frontier snapshot does not match the signed checkpoint",
        ));
    }
    Ok(frontier)
}

fn remove_temp_files(dir: &Path) -> Result<u64, LedgerError> {
    let mut removed = 0;
    let entries = fs::read_dir(dir).map_err(|e| LedgerError::io("read directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| LedgerError::io("read directory", dir, e))?;
        if entry.file_name().to_string_lossy().ends_with(".tmp") {
            fs::remove_file(entry.path())
                .map_err(|e| LedgerError::io("remove", entry.path(), e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

pub(crate) fn ledger_is_empty(layout: &Layout) -> Result<bool, LedgerError> {
    Ok(layout.list_segments()?.is_empty() && layout.list_checkpoints()?.is_empty())
}

/// Recovers the writer state. Creates the first segment of a new ledger.
pub(crate) fn recover(
    layout: &Layout,
    history: &[KeyEntry],
    origin: &str,
) -> Result<Recovered, LedgerError> {
    let mut report = RecoveryReport {
        removed_temp_files: remove_temp_files(&layout.checkpoints())?,
        ..RecoveryReport::default()
    };
    let checkpoints = layout.list_checkpoints()?;
    let newest = checkpoints.last().copied();
    let newest_cp = match newest {
        Some(size) => Some(load_checkpoint(layout, history, origin, size)?),
        None => None,
    };
    report.checkpoint_size = newest.unwrap_or(0);

    let segments = layout.list_segments()?;
    let Some(&first_seq) = segments.last() else {
        if newest.is_some_and(|s| s > 0) {
            return Err(LedgerError::corrupt(
                layout.segments(),
                None,
                "checkpoints exist but every segment is missing",
            ));
        }
        let path = layout.segment(0);
        OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| LedgerError::io("create", &path, e))?;
        sync_dir(&layout.segments())?;
        report.created = true;
        return Ok(Recovered {
            frontier: Frontier::new(),
            segment_first_seq: 0,
            segment_len: 0,
            segment_first_ts: None,
            last_ts: Timestamp::EPOCH,
            checkpoint_size: newest,
            report,
        });
    };

    let mut frontier = load_frontier(layout, history, origin, first_seq)?;
    let path = layout.segment(first_seq);
    let data = fs::read(&path).map_err(|e| LedgerError::io("read", &path, e))?;
    let mut offset = 0usize;
    let mut first_ts = None;
    let mut last_ts = Timestamp::EPOCH;
    let check_newest = |frontier: &Frontier| -> Result<(), LedgerError> {
        if let Some(cp) = &newest_cp
            && cp.size() == frontier.size()
            && *cp.root() != frontier.root()
        {
            return Err(LedgerError::corrupt(
                &path,
                Some(cp.size()),
                format!(
                    "records do not reproduce the signed checkpoint at size {}",
                    cp.size()
                ),
            ));
        }
        Ok(())
    };
    check_newest(&frontier)?;
    while let Some(len) = data[offset..].iter().position(|&b| b == b'\n') {
        let line = &data[offset..offset + len];
        let seq = frontier.size();
        if line.iter().all(|&b| b == 0) && data[offset..].iter().all(|&b| b == 0 || b == b'\n') {
            // Zero-filled blocks past the last real write: a crash after the
            // file grew but before its data reached the disk.
            break;
        }
        let record =
            decode(line).map_err(|e| LedgerError::corrupt(&path, Some(seq), e.to_string()))?;
        if record.seq != seq {
            return Err(LedgerError::corrupt(
                &path,
                Some(seq),
                format!("record has seq {}", record.seq),
            ));
        }
        first_ts.get_or_insert(record.ts);
        last_ts = record.ts;
        frontier
            .append(leaf_hash(line))
            .map_err(|e| LedgerError::corrupt(&path, Some(seq), e.to_string()))?;
        report.records_rehashed += 1;
        offset += len + 1;
        check_newest(&frontier)?;
    }
    if let Some(cp) = &newest_cp
        && frontier.size() < cp.size()
    {
        return Err(LedgerError::corrupt(
            layout.note(cp.size()),
            Some(frontier.size()),
            format!(
                "signed checkpoint covers {} records but only {} are stored",
                cp.size(),
                frontier.size()
            ),
        ));
    }
    if offset < data.len() {
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| LedgerError::io("open", &path, e))?;
        file.set_len(offset as u64)
            .and_then(|()| file.sync_all())
            .map_err(|e| LedgerError::io("truncate", &path, e))?;
        report.truncated_bytes = (data.len() - offset) as u64;
        report.truncated_file = Some(path.clone());
    }
    report.tree_size = frontier.size();
    report.unsigned_records = frontier.size() - report.checkpoint_size.min(frontier.size());
    Ok(Recovered {
        frontier,
        segment_first_seq: first_seq,
        segment_len: offset as u64,
        segment_first_ts: first_ts,
        last_ts,
        checkpoint_size: newest,
        report,
    })
}
