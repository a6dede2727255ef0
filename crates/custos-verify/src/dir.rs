//! Verifying a whole ledger directory, from the files alone.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use custos_merkle::{Frontier, Hash, leaf_hash};
use custos_note::{Checkpoint, Note, Verifier, open as open_note};
use custos_record::{RecordType, decode_view};

use crate::problem::{Problem, ProblemKind};

/// How far a record's timestamp may go back from the previous record's
/// before it counts as a problem, in microseconds (5 s). The writer never
/// lets time go back, so any regression means an edit; the tolerance only
/// allows for a format that others may write.
pub const TIMESTAMP_TOLERANCE: u64 = 5_000_000;

/// Where the keys that checkpoints were checked against came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// The caller gave them: authoritative.
    Given,
    /// Trust on first use: the first key in `keys/verifiers.txt`, which an
    /// attacker with write access could have replaced. Pass the public key
    /// for a real audit.
    LedgerDirectory,
}

/// The outcome of [`verify_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Records read and checked.
    pub records_checked: u64,
    /// The first stored seq (0 unless retention purged older records).
    pub first_seq: u64,
    /// Records in the log: the tree size.
    pub tree_size: u64,
    /// Checkpoint notes checked.
    pub checkpoints_checked: u64,
    /// The newest checkpoint's size.
    pub newest_checkpoint: Option<u64>,
    /// Where the trusted keys came from.
    pub key_source: KeySource,
    /// Observations that are not tampering: an unsigned tail, a partial
    /// last line of a running log, checks impossible after a purge.
    pub warnings: Vec<String>,
    /// The first problem, or `None` if the log is intact.
    pub problem: Option<Problem>,
}

impl Report {
    /// Whether no problem was found.
    #[must_use]
    pub fn is_intact(&self) -> bool {
        self.problem.is_none()
    }

    /// The CLI's exit status: 0 intact, 1 tampered or unreadable.
    #[must_use]
    pub fn exit_code(&self) -> i32 {
        i32::from(!self.is_intact())
    }
}

/// One `keys/verifiers.txt` entry.
struct KeyEntry {
    first_size: u64,
    verifier: Verifier,
}

fn parse_history(text: &str) -> Result<Vec<KeyEntry>, String> {
    let body = text.strip_suffix('\n').ok_or("must end with a newline")?;
    let mut out: Vec<KeyEntry> = Vec::new();
    for (i, line) in body.split('\n').enumerate() {
        let (size, vkey) = line
            .split_once(' ')
            .ok_or_else(|| format!("line {}: want `<first size> <vkey>`", i + 1))?;
        let first_size = parse_decimal(size).ok_or_else(|| format!("line {}: bad size", i + 1))?;
        let verifier = Verifier::from_vkey(vkey).map_err(|e| format!("line {}: {e}", i + 1))?;
        let ordered = match out.last() {
            None => first_size == 0,
            Some(prev) => first_size > prev.first_size,
        };
        if !ordered {
            return Err(format!(
                "line {}: sizes must start at 0 and increase",
                i + 1
            ));
        }
        out.push(KeyEntry {
            first_size,
            verifier,
        });
    }
    Ok(out)
}

fn parse_decimal(s: &str) -> Option<u64> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
}

fn parse_numbered(name: &str, ext: &str) -> Option<u64> {
    let digits = name.strip_suffix(ext)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn list(dir: &Path, ext: &str) -> Result<Vec<u64>, String> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| e.to_string())?;
        if let Some(n) = entry
            .file_name()
            .to_str()
            .and_then(|n| parse_numbered(n, ext))
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn unhex(s: &str) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
        let d = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        out[i] = d(pair[0])? << 4 | d(pair[1])?;
    }
    Some(out)
}

/// Parses a frontier snapshot: decimal size, then one hex hash per line.
fn parse_frontier(text: &str) -> Option<Frontier> {
    let body = text.strip_suffix('\n')?;
    let mut lines = body.split('\n');
    let size = parse_decimal(lines.next()?)?;
    let hashes: Option<Vec<Hash>> = if size == 0 {
        lines.next().is_none().then(Vec::new)
    } else {
        lines.map(unhex).collect()
    };
    Frontier::from_parts(size, &hashes?).ok()
}

fn seg_name(first: u64) -> PathBuf {
    PathBuf::from(format!("segments/{first:020}.jsonl"))
}

fn note_name(size: u64) -> PathBuf {
    PathBuf::from(format!("checkpoints/{size:020}.note"))
}

fn frontier_name(size: u64) -> PathBuf {
    PathBuf::from(format!("checkpoints/{size:020}.frontier"))
}

struct Rotation {
    old: String,
    new: String,
    first_size: u64,
}

/// The state of one verification run.
struct Run<'a> {
    dir: &'a Path,
    report: Report,
}

type Step<T> = Result<T, Problem>;

fn problem(file: Option<PathBuf>, seq: Option<u64>, kind: ProblemKind) -> Problem {
    Problem { file, seq, kind }
}

impl Run<'_> {
    fn read(&self, rel: &Path) -> Step<Vec<u8>> {
        fs::read(self.dir.join(rel)).map_err(|e| {
            problem(
                Some(rel.to_path_buf()),
                None,
                ProblemKind::Unreadable {
                    reason: e.to_string(),
                },
            )
        })
    }

    /// Reads a checkpoint file listed at the start, or `None` if it has
    /// been removed since: a live ledger thins old checkpoints (see
    /// `docs/audit-log-format.md` §5.1) while a long verification runs.
    /// Those it must keep are checked against the listing, not here.
    fn read_listed(&mut self, rel: &Path) -> Step<Option<Vec<u8>>> {
        match fs::read(self.dir.join(rel)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.report.warnings.push(format!(
                    "{} was removed while the ledger was being verified (checkpoint thinning); skipped",
                    rel.display()
                ));
                Ok(None)
            }
            Err(_) => self.read(rel).map(Some),
        }
    }

    fn read_text(&self, rel: &Path) -> Step<String> {
        let bytes = self.read(rel)?;
        String::from_utf8(bytes).map_err(|_| {
            problem(
                Some(rel.to_path_buf()),
                None,
                ProblemKind::Unreadable {
                    reason: "not utf-8".into(),
                },
            )
        })
    }
}

/// Verifies the ledger in `ledger_dir` (the directory holding `segments/`,
/// `checkpoints/` and `keys/`).
///
/// `trusted_keys` are the log's public keys as the auditor got them out of
/// band. They are authoritative: a checkpoint must carry a valid signature
/// by the key that `keys/verifiers.txt` assigns to its size, and that key
/// must be trusted — given, or vouched for by a signed key rotation from a
/// trusted key. With no keys, the first key in `verifiers.txt` is trusted
/// ([`KeySource::LedgerDirectory`]), which only detects accidents and
/// careless edits.
///
/// `trusted_checkpoint` is a signed checkpoint the auditor kept from an
/// earlier audit or a witness; the log must contain it. This is what
/// catches a log truncated or rolled back together with its checkpoints.
///
/// `progress` is called with bytes of segments read so far and in total.
#[must_use]
pub fn verify_dir(
    ledger_dir: &Path,
    trusted_keys: &[Verifier],
    trusted_checkpoint: Option<&str>,
    progress: &mut dyn FnMut(u64, u64),
) -> Report {
    let mut run = Run {
        dir: ledger_dir,
        report: Report {
            records_checked: 0,
            first_seq: 0,
            tree_size: 0,
            checkpoints_checked: 0,
            newest_checkpoint: None,
            key_source: if trusted_keys.is_empty() {
                KeySource::LedgerDirectory
            } else {
                KeySource::Given
            },
            warnings: Vec::new(),
            problem: None,
        },
    };
    if let Err(p) = run.verify(trusted_keys, trusted_checkpoint, progress) {
        run.report.problem = Some(p);
    }
    run.report
}

/// Roots and frontiers captured at the sizes that need checking.
struct Captured {
    sizes: BTreeSet<u64>,
    roots: BTreeMap<u64, Frontier>,
}

impl Captured {
    fn observe(&mut self, frontier: &Frontier) {
        if self.sizes.contains(&frontier.size()) {
            self.roots.insert(frontier.size(), frontier.clone());
        }
    }
}

impl Run<'_> {
    fn verify(
        &mut self,
        trusted_keys: &[Verifier],
        trusted_checkpoint: Option<&str>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Step<()> {
        let unreadable = |rel: &str, reason: String| {
            problem(
                Some(PathBuf::from(rel)),
                None,
                ProblemKind::Unreadable { reason },
            )
        };
        // Key history.
        let history_path = Path::new("keys/verifiers.txt");
        let history = match fs::read_to_string(self.dir.join(history_path)) {
            Ok(text) => match parse_history(&text) {
                Ok(h) => Some(h),
                Err(reason) => {
                    return Err(problem(
                        Some(history_path.into()),
                        None,
                        ProblemKind::KeyHistory { reason },
                    ));
                }
            },
            Err(e) if trusted_keys.is_empty() => {
                return Err(problem(
                    Some(history_path.into()),
                    None,
                    ProblemKind::KeyHistory {
                        reason: e.to_string(),
                    },
                ));
            }
            Err(_) => {
                self.report
                    .warnings
                    .push("keys/verifiers.txt is missing; checking against the given keys".into());
                None
            }
        };

        let segments =
            list(&self.dir.join("segments"), ".jsonl").map_err(|r| unreadable("segments", r))?;
        let notes = list(&self.dir.join("checkpoints"), ".note")
            .map_err(|r| unreadable("checkpoints", r))?;
        let snapshots = list(&self.dir.join("checkpoints"), ".frontier")
            .map_err(|r| unreadable("checkpoints", r))?;
        self.report.newest_checkpoint = notes.last().copied();

        // Parse the trusted checkpoint early so its size is captured.
        let trusted = match trusted_checkpoint {
            None => None,
            Some(text) => {
                let keys: Vec<Verifier> = if trusted_keys.is_empty() {
                    history
                        .iter()
                        .flatten()
                        .map(|k| k.verifier.clone())
                        .collect()
                } else {
                    trusted_keys.to_vec()
                };
                let invalid = |reason: String| {
                    problem(None, None, ProblemKind::TrustedCheckpointInvalid { reason })
                };
                let note = open_note(text.as_bytes(), &keys).map_err(|e| invalid(e.to_string()))?;
                Some(Checkpoint::parse(note.body()).map_err(|e| invalid(e.to_string()))?)
            }
        };

        // The starting state: the empty tree, or after a purge the
        // frontier snapshot at the first stored record.
        let first_seq = segments.first().copied().unwrap_or(0);
        self.report.first_seq = first_seq;
        let mut frontier = if first_seq == 0 {
            Frontier::new()
        } else {
            let rel = frontier_name(first_seq);
            if !self.dir.join(&rel).exists() {
                return Err(problem(
                    Some(rel),
                    Some(first_seq),
                    ProblemKind::MissingFrontier { size: first_seq },
                ));
            }
            parse_frontier(&self.read_text(&rel)?)
                .filter(|f| f.size() == first_seq)
                .ok_or_else(|| {
                    problem(
                        Some(rel),
                        Some(first_seq),
                        ProblemKind::FrontierMismatch { size: first_seq },
                    )
                })?
        };

        let mut captured = Captured {
            sizes: notes
                .iter()
                .chain(&snapshots)
                .copied()
                .chain(trusted.as_ref().map(Checkpoint::size))
                .filter(|&s| s >= first_seq)
                .collect(),
            roots: BTreeMap::new(),
        };
        captured.observe(&frontier);

        // Records.
        let total: u64 = segments
            .iter()
            .filter_map(|&s| fs::metadata(self.dir.join(seg_name(s))).ok())
            .map(|m| m.len())
            .sum();
        let mut done = 0u64;
        progress(0, total);
        let mut purge_points = Vec::new();
        let mut rotations = Vec::new();
        let mut prev_ts = 0u64;
        for (i, &first) in segments.iter().enumerate() {
            let rel = seg_name(first);
            let expected = frontier.size();
            if first > expected {
                return Err(problem(
                    Some(rel),
                    Some(expected),
                    ProblemKind::DeletedRecords {
                        from: expected,
                        to: first,
                    },
                ));
            }
            if first < expected {
                return Err(problem(
                    Some(rel),
                    Some(first),
                    ProblemKind::SegmentMisnamed {
                        expected,
                        named: first,
                    },
                ));
            }
            let data = self.read(&rel)?;
            let last_segment = i + 1 == segments.len();
            let end = data.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
            if end < data.len() {
                if !last_segment {
                    return Err(problem(
                        Some(rel),
                        Some(frontier.size()),
                        ProblemKind::PartialLine,
                    ));
                }
                self.report.warnings.push(format!(
                    "{}: ignoring a partial last line of {} bytes (a write in progress or a crash)",
                    rel.display(),
                    data.len() - end
                ));
            }
            if end > 0 {
                let body = &data[..end - 1];
                let mut from = 0;
                let lines = memchr::memchr_iter(b'\n', body)
                    .chain(std::iter::once(body.len()))
                    .map(|nl| {
                        let line = &body[from..nl];
                        from = nl + 1;
                        line
                    });
                for line in lines {
                    let seq = frontier.size();
                    let here = |kind| problem(Some(rel.clone()), Some(seq), kind);
                    // The full canonical check, reading in place: only
                    // `seq`, `ts` and the system events below are used.
                    let record = decode_view(line).map_err(|e| {
                        here(ProblemKind::Record {
                            reason: e.to_string(),
                        })
                    })?;
                    if record.seq() != seq {
                        return Err(here(ProblemKind::SeqMismatch {
                            expected: seq,
                            found: record.seq(),
                        }));
                    }
                    let ts = record.ts().unix_micros();
                    if ts.saturating_add(TIMESTAMP_TOLERANCE) < prev_ts {
                        return Err(here(ProblemKind::TimestampRegression {
                            previous: custos_record::Timestamp::from_unix_micros(prev_ts)
                                .map(|t| t.to_string())
                                .unwrap_or_default(),
                            ts: record.ts().to_string(),
                        }));
                    }
                    prev_ts = prev_ts.max(ts);
                    if record.record_type() == RecordType::System {
                        match record.event() {
                            "retention.purged" => {
                                if let Some(p) =
                                    record.detail("purged_before_seq").and_then(|v| v.as_int())
                                {
                                    purge_points.push(u64::try_from(p).unwrap_or(0));
                                }
                            }
                            "ledger.key_rotated" => {
                                let get = |k: &str| {
                                    record.detail(k).and_then(|v| v.as_str().map(str::to_owned))
                                };
                                if let (Some(old), Some(new)) = (get("old_key"), get("new_key")) {
                                    rotations.push(Rotation {
                                        old,
                                        new,
                                        first_size: seq + 1,
                                    });
                                }
                            }
                            _ => {}
                        }
                    }
                    frontier.append(leaf_hash(line)).map_err(|e| {
                        here(ProblemKind::Record {
                            reason: e.to_string(),
                        })
                    })?;
                    captured.observe(&frontier);
                    self.report.records_checked += 1;
                }
            }
            // Checked on disk rather than in the listing taken before the
            // records were read: a live writer may have sealed this segment
            // since, and the seal checkpoint is written before the next
            // segment is created.
            if !last_segment && !self.dir.join(note_name(frontier.size())).exists() {
                return Err(problem(
                    Some(rel),
                    Some(frontier.size()),
                    ProblemKind::MissingSealCheckpoint {
                        size: frontier.size(),
                    },
                ));
            }
            done += data.len() as u64;
            progress(done, total);
        }
        let log_size = frontier.size();
        self.report.tree_size = log_size;
        if first_seq > 0 && purge_points.iter().all(|&p| p < first_seq) {
            let from = purge_points.iter().copied().max().unwrap_or(0);
            return Err(problem(
                Some(seg_name(first_seq)),
                Some(from),
                ProblemKind::DeletedRecords {
                    from,
                    to: first_seq,
                },
            ));
        }

        // Keys: the given ones (or the first in the history), plus every
        // key a signed rotation links to a trusted key.
        let mut accepted: Vec<Verifier> = if trusted_keys.is_empty() {
            history
                .iter()
                .flatten()
                .take(1)
                .map(|k| k.verifier.clone())
                .collect()
        } else {
            trusted_keys.to_vec()
        };
        loop {
            let mut grew = false;
            for rot in &rotations {
                let (Ok(old), Ok(new)) =
                    (Verifier::from_vkey(&rot.old), Verifier::from_vkey(&rot.new))
                else {
                    continue;
                };
                let known_old = accepted.contains(&old);
                let known_new = accepted.contains(&new);
                if known_old == known_new {
                    continue;
                }
                // The transition checkpoint covers the rotation record and
                // is signed by both keys; its root is checked below.
                let Ok(text) = fs::read(self.dir.join(note_name(rot.first_size))) else {
                    continue;
                };
                let both = open_note(&text, &[old.clone(), new.clone()]);
                if both.is_ok_and(|n| n.verified().len() == 2) {
                    accepted.push(if known_old { new } else { old });
                    grew = true;
                }
            }
            if !grew {
                break;
            }
        }

        // Checkpoints.
        let mut origin: Option<String> = None;
        let mut last_good = first_seq;
        for &size in &notes {
            let rel = note_name(size);
            let Some(text) = self.read_listed(&rel)? else {
                continue;
            };
            let here = |kind| problem(Some(rel.clone()), None, kind);
            let note: Note = match &history {
                Some(history) => {
                    let Some(entry) = history.iter().rev().find(|k| k.first_size <= size) else {
                        return Err(here(ProblemKind::UntrustedKey {
                            size,
                            key: "none listed".into(),
                        }));
                    };
                    if !accepted.contains(&entry.verifier) {
                        return Err(here(ProblemKind::UntrustedKey {
                            size,
                            key: entry.verifier.to_vkey(),
                        }));
                    }
                    open_note(&text, std::slice::from_ref(&entry.verifier))
                }
                None => open_note(&text, &accepted),
            }
            .map_err(|e| {
                here(ProblemKind::Signature {
                    size,
                    reason: e.to_string(),
                })
            })?;
            let cp = Checkpoint::parse(note.body()).map_err(|e| {
                here(ProblemKind::Signature {
                    size,
                    reason: e.to_string(),
                })
            })?;
            if cp.size() != size {
                return Err(here(ProblemKind::CheckpointMismatch {
                    size,
                    reason: format!("note says size {}", cp.size()),
                }));
            }
            match &origin {
                None => origin = Some(cp.origin().to_owned()),
                Some(o) if o != cp.origin() => {
                    return Err(here(ProblemKind::CheckpointMismatch {
                        size,
                        reason: format!("origin {:?} differs from {o:?}", cp.origin()),
                    }));
                }
                Some(_) => {}
            }
            self.report.checkpoints_checked += 1;
            if size > log_size {
                return Err(problem(
                    Some(rel),
                    Some(log_size),
                    ProblemKind::TruncatedTail { size, log_size },
                ));
            }
            if size < first_seq {
                continue;
            }
            let ours = captured.roots.get(&size).map(Frontier::root);
            if ours.as_ref() != Some(cp.root()) {
                return Err(problem(
                    Some(rel),
                    Some(last_good),
                    ProblemKind::RootMismatch {
                        size,
                        since: last_good,
                    },
                ));
            }
            last_good = size;
        }
        if first_seq > 0 && !notes.contains(&first_seq) {
            return Err(problem(
                Some(note_name(first_seq)),
                Some(first_seq),
                ProblemKind::MissingSealCheckpoint { size: first_seq },
            ));
        }

        // Frontier snapshots: the tree at their size, or after a purge the
        // signed root of their checkpoint.
        for &size in &snapshots {
            let rel = frontier_name(size);
            let mismatch = problem(
                Some(rel.clone()),
                None,
                ProblemKind::FrontierMismatch { size },
            );
            let Some(bytes) = self.read_listed(&rel)? else {
                continue;
            };
            let Ok(text) = std::str::from_utf8(&bytes) else {
                return Err(problem(
                    Some(rel),
                    None,
                    ProblemKind::Unreadable {
                        reason: "not utf-8".into(),
                    },
                ));
            };
            let Some(snapshot) = parse_frontier(text) else {
                return Err(mismatch);
            };
            if snapshot.size() != size {
                return Err(mismatch);
            }
            if size >= first_seq && size <= log_size {
                if captured.roots.get(&size) != Some(&snapshot) {
                    return Err(mismatch);
                }
            } else if notes.contains(&size) && size < first_seq {
                let text = self.read(&note_name(size))?;
                let root = open_note(&text, &accepted)
                    .ok()
                    .and_then(|n| Checkpoint::parse(n.body()).ok())
                    .map(|c| *c.root());
                if root != Some(snapshot.root()) {
                    return Err(mismatch);
                }
            }
        }

        // The auditor's own checkpoint.
        if let Some(cp) = trusted {
            let trusted_size = cp.size();
            if let Some(o) = &origin
                && o != cp.origin()
            {
                return Err(problem(
                    None,
                    None,
                    ProblemKind::TrustedCheckpointInvalid {
                        reason: format!("origin {:?} is not this log's {o:?}", cp.origin()),
                    },
                ));
            }
            if trusted_size > log_size {
                return Err(problem(
                    None,
                    Some(log_size),
                    ProblemKind::RolledBack {
                        trusted_size,
                        log_size,
                    },
                ));
            }
            if trusted_size < first_seq {
                self.report.warnings.push(format!(
                    "trusted checkpoint {trusted_size} predates the purge point {first_seq}; only its signature was checked"
                ));
            } else if captured
                .roots
                .get(&trusted_size)
                .map(Frontier::root)
                .as_ref()
                != Some(cp.root())
            {
                return Err(problem(
                    None,
                    None,
                    ProblemKind::TrustedRootMismatch { trusted_size },
                ));
            }
        }

        let signed = self.report.newest_checkpoint.unwrap_or(0);
        if log_size > signed {
            self.report.warnings.push(format!(
                "records {signed}..{log_size} are not covered by a signed checkpoint yet"
            ));
        }
        if self.report.key_source == KeySource::LedgerDirectory {
            self.report
                .warnings
                .push("no public key given: trusted the first key in keys/verifiers.txt".into());
        }
        Ok(())
    }
}
