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
//! 3. A reader calls [`ChangeWatcher::changed`] on every request. On Linux
//!    the watcher holds an inotify watch on the data directory, made before
//!    it first looks at the marker, and `changed` is one non-blocking `read`
//!    of that queue: the kernel queues the event inside the `rename` itself,
//!    so a request that starts after the writer's `rename` returned finds it.
//!    Where inotify is unavailable (or the watch is lost: the directory
//!    moved, the queue overflowed), `changed` stats the marker instead and
//!    compares device, inode, length, mtime and ctime with what it saw last.
//!    Either way it returns `true` once per change, and the caller reloads
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
//! * With inotify, the event is queued by the kernel inside the writer's
//!   `rename`, before it returns; the watch is added before the watcher's
//!   first look, so nothing between the two is missed. The queue is read
//!   until it is empty, so each batch of changes is reported once. A queue
//!   overflow, or a watch that ends (the directory moved or removed), is
//!   reported as a change, and the watcher stats from then on.
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
/// cost of one non-blocking `read` of an inotify queue (one `stat()` where
/// inotify is unavailable).
///
/// Create it *before* loading the first snapshot. Then, per request:
///
/// ```no_run
/// # async fn f(store: &custos_store::Store, w: &custos_store::ChangeWatcher) -> Result<(), custos_store::StoreError> {
/// if w.changed() {
///     let snapshot = store.keys().load_auth_snapshot().await?;
///     // swap it in
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ChangeWatcher {
    path: PathBuf,
    seen: Mutex<Option<Fingerprint>>,
    forced: AtomicBool,
    /// The inotify queue on the marker's directory; `None` when it could
    /// not be set up, and ignored once `lost` is set.
    events: Option<Events>,
    /// The watch can no longer be trusted: `changed` stats from now on.
    lost: AtomicBool,
}

impl ChangeWatcher {
    /// A watcher of the marker at `path`, taking its current state as seen.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        // The watch comes first, so that a change between the two is queued.
        let events = Events::watch(&path);
        Self::with_events(path, events)
    }

    /// A watcher that stats the marker on every call, as it does where
    /// inotify is unavailable.
    pub fn polling(path: impl Into<PathBuf>) -> Self {
        Self::with_events(path.into(), None)
    }

    fn with_events(path: PathBuf, events: Option<Events>) -> Self {
        let seen = fingerprint(&path);
        ChangeWatcher {
            path,
            seen: Mutex::new(seen),
            forced: AtomicBool::new(false),
            events,
            lost: AtomicBool::new(false),
        }
    }

    /// The marker file being watched.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether changes are noticed through inotify (`false`: by `stat`).
    pub fn is_notified(&self) -> bool {
        self.events.is_some() && !self.lost.load(Ordering::Acquire)
    }

    /// Whether the marker changed since the last call that returned `true`
    /// (or since creation). Returns `true` once per observed change: reload
    /// right after, or call [`ChangeWatcher::invalidate`] if the reload
    /// fails.
    pub fn changed(&self) -> bool {
        let forced = self.forced.swap(false, Ordering::AcqRel);
        if let Some(events) = &self.events
            && !self.lost.load(Ordering::Acquire)
        {
            match events.drain() {
                Drained::Nothing => return forced,
                Drained::Marker => {
                    // Kept current for the stat fallback, should the watch
                    // be lost later.
                    *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = fingerprint(&self.path);
                    return true;
                }
                Drained::Lost => {
                    self.lost.store(true, Ordering::Release);
                    *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = fingerprint(&self.path);
                    // Whatever happened meanwhile is unknown: reload.
                    return true;
                }
            }
        }
        let now = fingerprint(&self.path);
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

/// A non-blocking inotify queue on the marker's directory.
#[derive(Debug)]
struct Events {
    fd: rustix::fd::OwnedFd,
    name: std::ffi::OsString,
}

/// What one drain of the queue found.
#[derive(Debug, PartialEq, Eq)]
enum Drained {
    /// No event about the marker.
    Nothing,
    /// The marker was replaced, written, removed or touched.
    Marker,
    /// Events may have been missed (queue overflow) or the watch is gone
    /// (the directory was moved or removed).
    Lost,
}

impl Events {
    /// Events that can change what a stat of the marker shows. Not
    /// `MODIFY`: SQLite writes its files in the same directory all the
    /// time, and the marker is only ever replaced by a rename.
    fn flags() -> rustix::fs::inotify::WatchFlags {
        use rustix::fs::inotify::WatchFlags as W;
        W::CREATE
            | W::CLOSE_WRITE
            | W::MOVED_TO
            | W::MOVED_FROM
            | W::DELETE
            | W::ATTRIB
            | W::DELETE_SELF
            | W::MOVE_SELF
            | W::ONLYDIR
    }

    fn watch(path: &Path) -> Option<Events> {
        use rustix::fs::inotify;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path.file_name()?.to_owned();
        let fd =
            inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK).ok()?;
        inotify::add_watch(&fd, dir, Self::flags()).ok()?;
        Some(Events { fd, name })
    }

    /// Reads every queued event; one `read` that fails with `EAGAIN` when
    /// nothing happened.
    fn drain(&self) -> Drained {
        use rustix::fs::inotify::{ReadFlags, Reader};
        use std::os::unix::ffi::OsStrExt;
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut reader = Reader::new(&self.fd, &mut buf);
        let mut found = Drained::Nothing;
        loop {
            let event = match reader.next() {
                Ok(event) => event,
                Err(rustix::io::Errno::AGAIN) => return found,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return Drained::Lost,
            };
            let flags = event.events();
            if flags.intersects(
                ReadFlags::QUEUE_OVERFLOW
                    | ReadFlags::IGNORED
                    | ReadFlags::DELETE_SELF
                    | ReadFlags::MOVE_SELF
                    | ReadFlags::UNMOUNT,
            ) {
                found = Drained::Lost;
            } else if found == Drained::Nothing
                && event
                    .file_name()
                    .is_some_and(|n| n.to_bytes() == self.name.as_bytes())
            {
                found = Drained::Marker;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "custos-watch-{tag}-{}-{}",
                std::process::id(),
                TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// What every watcher must notice, and what it must not.
    fn sees_each_marker_change_once(w: &ChangeWatcher, dir: &Path) {
        let marker = w.path().to_path_buf();
        assert!(!w.changed(), "nothing happened yet");
        write_marker(&marker, 1).unwrap();
        assert!(w.changed());
        assert!(!w.changed(), "one change is reported once");
        // Other files in the directory come and go (SQLite's WAL, the
        // marker's own temporary files, a console upload): no change.
        fs::write(dir.join("custos.db-wal"), b"x").unwrap();
        fs::write(dir.join("other.tmp"), b"y").unwrap();
        fs::rename(dir.join("other.tmp"), dir.join("other")).unwrap();
        fs::remove_file(dir.join("other")).unwrap();
        assert!(!w.changed(), "unrelated files are not the marker");
        // Several rewrites before the next look: one reload covers them.
        for g in 2..5 {
            write_marker(&marker, g).unwrap();
        }
        assert!(w.changed());
        assert!(!w.changed());
        // Removal and re-creation are changes too.
        fs::remove_file(&marker).unwrap();
        assert!(w.changed());
        write_marker(&marker, 9).unwrap();
        assert!(w.changed());
        assert!(!w.changed());
        w.invalidate();
        assert!(w.changed(), "a failed reload asks again");
        assert!(!w.changed());
    }

    #[test]
    fn the_inotify_watcher_sees_every_change_once_and_nothing_else() {
        let dir = TempDir::new("notify");
        let marker = dir.0.join(MARKER_FILE);
        write_marker(&marker, 0).unwrap();
        let w = ChangeWatcher::new(&marker);
        // Linux always has inotify; a limit on instances would make this a
        // polling watcher, which the next test covers.
        assert!(w.is_notified(), "inotify is expected on Linux");
        sees_each_marker_change_once(&w, &dir.0);
        assert!(w.is_notified());
    }

    #[test]
    fn the_polling_watcher_sees_every_change_once_and_nothing_else() {
        let dir = TempDir::new("poll");
        let marker = dir.0.join(MARKER_FILE);
        write_marker(&marker, 0).unwrap();
        let w = ChangeWatcher::polling(&marker);
        assert!(!w.is_notified());
        sees_each_marker_change_once(&w, &dir.0);
    }

    #[test]
    fn a_lost_watch_reloads_once_and_falls_back_to_stat() {
        let dir = TempDir::new("lost");
        let sub = dir.0.join("data");
        fs::create_dir(&sub).unwrap();
        let marker = sub.join(MARKER_FILE);
        write_marker(&marker, 0).unwrap();
        let w = ChangeWatcher::new(&marker);
        assert!(w.is_notified());
        // The data directory is moved away and a new one takes its place:
        // the watch still follows the old directory.
        fs::rename(&sub, dir.0.join("old")).unwrap();
        assert!(w.changed(), "the watch is gone: reload");
        assert!(!w.is_notified());
        fs::create_dir(&sub).unwrap();
        write_marker(&marker, 5).unwrap();
        assert!(w.changed(), "the stat fallback sees the new marker");
        assert!(!w.changed());
    }

    #[test]
    fn a_watcher_created_before_a_change_never_misses_it() {
        // The watch is set up before the first look at the marker, so a
        // rewrite right after creation is seen by either path.
        let dir = TempDir::new("race");
        let marker = dir.0.join(MARKER_FILE);
        for g in 0..50 {
            let w = ChangeWatcher::new(&marker);
            write_marker(&marker, g).unwrap();
            assert!(w.changed(), "generation {g}");
        }
    }

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
