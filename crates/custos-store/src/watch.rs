//! Cheap cross-process change signalling for the key cache: a marker file
//! rewritten after every key-changing commit, and a watcher that notices a
//! rewrite with one `stat()`.
//!
//! # Protocol
//!
//! 1. Every transaction that changes what authentication sees bumps
//!    `store_meta.keys_generation` inside the transaction.
//! 2. **After** the commit, the writer (server or `custos keys` CLI, any
//!    process) writes `<data_dir>/keys.generation` to a temporary file in the
//!    same directory and renames it over the marker.
//! 3. A reader calls [`ChangeWatcher::changed`] on every request. It stats the
//!    marker and compares device, inode, length, mtime and ctime with what it
//!    saw last. On a difference it returns `true` once, and the caller reloads
//!    its snapshot with [`crate::keys::Keys::load_auth_snapshot`].
//!
//! # Race analysis
//!
//! * The marker is written after the commit, so a reader that sees the new
//!   marker and then loads the snapshot sees the committed rows. The watcher
//!   records the marker's state *before* the caller loads, so a commit that
//!   lands during the load makes the marker differ again and is picked up on
//!   the next request: a change can cause an extra reload, never a missed
//!   one.
//! * Rename is atomic: a reader sees the old or the new marker, never a
//!   partial one, and each rewrite is a new inode, so even two rewrites
//!   within one coarse timestamp tick differ.
//! * The one way a stat could miss a change is a freed inode number being
//!   reused by the next rewrite within one timestamp tick with an equal
//!   length. The length is therefore made to depend on the generation
//!   (`generation mod 4096` bytes of padding): missing a change would take
//!   4096 commits within one tick (a few milliseconds), each of which syncs
//!   the database.
//! * A writer that crashes between commit and marker write leaves no signal.
//!   Opening a store rewrites the marker, and the server should also poll
//!   [`crate::keys::Keys::generation`] every few seconds as a backstop; a
//!   failed marker write is counted in [`crate::Store::signal_failures`]
//!   rather than failing the committed operation.
//! * Concurrent writers use distinct temporary names; the last rename wins,
//!   and any rename changes the inode the readers see.
//!
//! The marker works for processes on one host sharing the data directory.
//! For PostgreSQL with gateways on several hosts, `LISTEN`/`NOTIFY` on a
//! `custos_keys` channel, sent inside the transaction, is the intended
//! replacement; until then each host polls the generation.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The marker's file name inside the data directory.
pub const MARKER_FILE: &str = "keys.generation";

/// Padding modulus: the marker's length cycles through this many values.
const PAD_CYCLE: u64 = 4096;

/// The identity of one version of the marker file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
    ctime: i64,
    ctime_nsec: i64,
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    // A missing or unreadable marker is a state like any other: appearing or
    // disappearing is a change.
    let m = fs::metadata(path).ok()?;
    Some(Fingerprint {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
        ctime: m.ctime(),
        ctime_nsec: m.ctime_nsec(),
    })
}

/// The marker's contents for `generation`: the number on the first line,
/// then padding that makes the length vary with the generation.
pub(crate) fn marker_contents(generation: i64) -> Vec<u8> {
    let mut out = format!("{generation}\n").into_bytes();
    let pad = generation.unsigned_abs() % PAD_CYCLE;
    // `pad` is below 4096, so the conversion cannot fail.
    out.resize(out.len() + usize::try_from(pad).unwrap_or(0), b'.');
    out
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes the marker with a temporary file and a rename. No fsync: the
/// marker is a signal between live processes, not durable state.
pub(crate) fn write_marker(path: &Path, generation: i64) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(MARKER_FILE);
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&marker_contents(generation))?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Tells whether the key marker changed since it was last looked at, at the
/// cost of one `stat()`.
///
/// Create it *before* loading the first snapshot. Then, per request:
///
/// ```no_run
/// # async fn f(store: &custos_store::Store, w: &custos_store::ChangeWatcher) -> Result<(), custos_store::StoreError> {
/// if w.changed() {
///     match store.keys().load_auth_snapshot().await {
///         Ok(snapshot) => { /* swap it in */ let _ = snapshot; }
///         // Keep serving from the old snapshot and try again next time.
///         Err(_) => w.invalidate(),
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ChangeWatcher {
    path: PathBuf,
    seen: Mutex<Option<Fingerprint>>,
    forced: std::sync::atomic::AtomicBool,
}

impl ChangeWatcher {
    /// A watcher of the marker at `path`, taking its current state as seen.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let seen = fingerprint(&path);
        ChangeWatcher {
            path,
            seen: Mutex::new(seen),
            forced: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The marker file being watched.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the marker changed since the last call that returned `true`
    /// (or since creation). Returns `true` once per observed change: reload
    /// right after, or call [`ChangeWatcher::invalidate`] if the reload
    /// fails.
    pub fn changed(&self) -> bool {
        let now = fingerprint(&self.path);
        let forced = self.forced.swap(false, Ordering::AcqRel);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if *seen != now {
            *seen = now;
            return true;
        }
        forced
    }

    /// Makes the next [`ChangeWatcher::changed`] return `true`, for a caller
    /// whose reload failed.
    pub fn invalidate(&self) {
        self.forced.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_length_follows_generation() {
        // Any two generations less than 1000 apart (far more commits than
        // fit in one timestamp tick) give markers of different lengths.
        let lens: Vec<usize> = (0..12_000).map(|g| marker_contents(g).len()).collect();
        for g in 0..11_000 {
            for k in 1..1000 {
                assert_ne!(lens[g], lens[g + k], "generations {g} and {}", g + k);
            }
        }
        assert!(marker_contents(123).starts_with(b"123\n"));
        assert!(lens.iter().all(|&l| l < 4200));
        assert_eq!(marker_contents(-1), b"-1\n.");
    }
}
