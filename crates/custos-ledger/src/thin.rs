//! Thinning old checkpoints.
//!
//! The writer signs a checkpoint every second while the log grows, and
//! each one is two files (`.note` and `.frontier`): 170,000 files a day,
//! enough to exhaust the inodes of a 100 GiB ext4 volume in about five
//! weeks. Thinning keeps every checkpoint signed in the last
//! `keep_all_for` and, older than that, the newest one of each
//! `keep_one_per` period (by the note file's modification time), plus,
//! whatever their age, every checkpoint the log needs:
//!
//! * the newest checkpoint (recovery starts from it);
//! * the checkpoint at every segment boundary, with its snapshot (recovery
//!   and retention start from the snapshot at the first stored record,
//!   and a verifier requires a checkpoint at the end of every sealed
//!   segment);
//! * the checkpoints on both sides of a key rotation (the last one the old
//!   key signs alone and the transition checkpoint both keys sign).
//!
//! A verifier checks whichever checkpoints exist, so thinning never makes
//! a valid log fail; what it gives up is the fine grain of old signed
//! roots kept on the host. Checkpoints copied elsewhere by a checkpoint
//! sink are not touched.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::error::LedgerError;
use crate::layout::{Layout, parse_verifiers, sync_dir};

/// Which old checkpoints to keep; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointThinning {
    /// Every checkpoint younger than this is kept. Default 24 h.
    pub keep_all_for: Duration,
    /// Older checkpoints: the newest of each period this long (aligned to
    /// the Unix epoch) is kept. Default 1 h.
    pub keep_one_per: Duration,
}

impl Default for CheckpointThinning {
    fn default() -> Self {
        CheckpointThinning {
            keep_all_for: Duration::from_secs(24 * 3600),
            keep_one_per: Duration::from_secs(3600),
        }
    }
}

/// What one thinning pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThinReport {
    /// Checkpoints found.
    pub checkpoints: usize,
    /// Checkpoints removed (each with its snapshot, if it had one).
    pub removed: usize,
}

/// Removes the checkpoints `thinning` does not keep from the ledger in
/// `dir`, as of `now`. Safe while the writer runs: everything it may still
/// need is younger than `keep_all_for` or protected.
///
/// # Errors
///
/// [`LedgerError::Io`] if a directory cannot be listed or a file cannot be
/// removed; [`LedgerError::Key`] if the key history is malformed (nothing
/// is removed then).
pub fn thin_checkpoints(
    dir: &Path,
    thinning: CheckpointThinning,
    now: SystemTime,
) -> Result<ThinReport, LedgerError> {
    thin_at_most(dir, thinning, now, usize::MAX)
}

/// [`thin_checkpoints`], removing at most `limit` checkpoints (the oldest
/// first), so that one pass over a large backlog does not hold up the
/// checkpoint thread for long.
pub(crate) fn thin_at_most(
    dir: &Path,
    thinning: CheckpointThinning,
    now: SystemTime,
    limit: usize,
) -> Result<ThinReport, LedgerError> {
    let layout = Layout::new(dir);
    let protected = protected_sizes(&layout)?;
    let mut found = Vec::new();
    for size in layout.list_checkpoints()? {
        let path = layout.note(size);
        match fs::metadata(&path).and_then(|m| m.modified()) {
            Ok(modified) => found.push((size, modified)),
            // Removed meanwhile (another pass): nothing to decide.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(LedgerError::io("stat", &path, e)),
        }
    }
    let mut doomed = plan(&found, &protected, thinning, now);
    doomed.truncate(limit);
    for &size in &doomed {
        // Snapshot first: a crash in between leaves a note without a
        // snapshot, which is valid, never a snapshot without its note.
        for path in [layout.frontier(size), layout.note(size)] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(LedgerError::io("remove", &path, e)),
            }
        }
    }
    if !doomed.is_empty() {
        sync_dir(&layout.checkpoints())?;
    }
    Ok(ThinReport {
        checkpoints: found.len(),
        removed: doomed.len(),
    })
}

/// Sizes whose checkpoints are kept whatever their age: segment
/// boundaries and both sides of every key rotation.
fn protected_sizes(layout: &Layout) -> Result<BTreeSet<u64>, LedgerError> {
    let mut keep: BTreeSet<u64> = layout.list_segments()?.into_iter().collect();
    let path = layout.verifiers();
    match fs::read_to_string(&path) {
        Ok(text) => {
            let history =
                parse_verifiers(&text).map_err(|reason| LedgerError::Key { path, reason })?;
            for entry in history {
                keep.insert(entry.first_size);
                keep.insert(entry.first_size.saturating_sub(1));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(LedgerError::io("read", &path, e)),
    }
    Ok(keep)
}

/// The sizes to remove, ascending: not the newest, not protected, older
/// than `keep_all_for`, and not the largest of their `keep_one_per`
/// period (which may be a checkpoint kept for another reason).
pub(crate) fn plan(
    checkpoints: &[(u64, SystemTime)],
    protected: &BTreeSet<u64>,
    thinning: CheckpointThinning,
    now: SystemTime,
) -> Vec<u64> {
    let newest = checkpoints.iter().map(|&(size, _)| size).max();
    let period = thinning.keep_one_per.as_secs().max(1);
    // Period → the largest size seen in it.
    let mut kept_in: BTreeMap<u64, u64> = BTreeMap::new();
    let mut old = Vec::new();
    for &(size, modified) in checkpoints {
        let age = now.duration_since(modified).unwrap_or(Duration::ZERO);
        if age < thinning.keep_all_for {
            continue;
        }
        let secs = modified
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let bucket = secs / period;
        // A checkpoint kept anyway (the newest, a protected one) can be
        // its period's one.
        let best = kept_in.entry(bucket).or_insert(size);
        *best = (*best).max(size);
        if Some(size) != newest && !protected.contains(&size) {
            old.push((size, bucket));
        }
    }
    let mut doomed: Vec<u64> = old
        .into_iter()
        .filter(|&(size, bucket)| kept_in.get(&bucket) != Some(&size))
        .map(|(size, _)| size)
        .collect();
    doomed.sort_unstable();
    doomed
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3600;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn keeps_the_recent_the_newest_per_period_and_the_protected() {
        let now = at(99 * HOUR + 55 * 60);
        let thinning = CheckpointThinning::default();
        // Three days of checkpoints, one every 10 minutes, sizes growing.
        let cps: Vec<(u64, SystemTime)> = (0..432u64)
            .map(|i| (1000 * (i + 1), at(28 * HOUR + i * 600)))
            .collect();
        // Not the last of their hours: kept only because they are protected.
        let protected: BTreeSet<u64> = [3000, 9000].into_iter().collect();
        let doomed = plan(&cps, &protected, thinning, now);
        let kept: Vec<u64> = cps
            .iter()
            .map(|&(s, _)| s)
            .filter(|s| !doomed.contains(s))
            .collect();
        for &(size, modified) in &cps {
            let age = now.duration_since(modified).unwrap();
            if age < Duration::from_secs(24 * HOUR) {
                assert!(kept.contains(&size), "recent {size} removed");
            }
        }
        assert!(kept.contains(&3000) && kept.contains(&9000));
        // Older than a day: hours 28 to 75 hold six each; one per hour is
        // kept, the last of the hour (minute 50, size a multiple of 6000).
        let old_kept: Vec<u64> = cps
            .iter()
            .filter(|&&(s, m)| {
                now.duration_since(m).unwrap() >= Duration::from_secs(24 * HOUR)
                    && kept.contains(&s)
                    && !protected.contains(&s)
            })
            .map(|&(s, _)| s)
            .collect();
        assert_eq!(old_kept.len(), 48, "{old_kept:?}");
        assert!(old_kept.iter().all(|s| (s / 1000) % 6 == 0), "{old_kept:?}");
        assert_eq!(doomed.len(), 48 * 6 - 2 - 48);
        assert!(doomed.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn never_removes_the_newest_even_when_old() {
        let cps = [(10, at(0)), (20, at(1)), (30, at(2))];
        let doomed = plan(
            &cps,
            &BTreeSet::new(),
            CheckpointThinning::default(),
            at(365 * 24 * HOUR),
        );
        // All three share one hour, and the newest stands for it.
        assert_eq!(doomed, vec![10, 20]);
        assert!(
            plan(
                &[(7, at(0))],
                &BTreeSet::new(),
                CheckpointThinning::default(),
                at(10 * 24 * HOUR)
            )
            .is_empty()
        );
    }

    #[test]
    fn a_clock_behind_the_files_keeps_everything() {
        let cps = [(10, at(5 * 24 * HOUR)), (20, at(5 * 24 * HOUR + 1))];
        assert!(plan(&cps, &BTreeSet::new(), CheckpointThinning::default(), at(0)).is_empty());
    }
}
