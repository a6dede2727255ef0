//! Checking a pack: every file's SHA-256 against the manifest, no file
//! missing or added, the manifest's signature by a trusted ledger key,
//! and (when the ledger is at hand) the manifest's hash in the ledger.
//!
//! The pack is input from whoever handed it over: paths are checked
//! before use and nothing in it is trusted until its hash matches.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use custos_ledger::LedgerReader;
use custos_note::Verifier;
use custos_record::{RecordBody, Scalar};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::error::EvidenceError;
use crate::gather::hex;
use crate::pack::{FORMAT, MANIFEST, SIGNATURE, signed_body};

/// The pack's files as read: relative path (with `/`) → bytes.
pub type PackFiles = BTreeMap<String, Vec<u8>>;

/// Reads every regular file under `dir`. Symlinks and other special files
/// are listed with no content, so verification reports them.
///
/// # Errors
///
/// [`EvidenceError::Io`] if the directory cannot be read.
pub fn read_dir(dir: &Path) -> Result<PackFiles, EvidenceError> {
    let mut out = PackFiles::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, prefix)) = stack.pop() {
        let entries = fs::read_dir(&path).map_err(|e| EvidenceError::io("read", &path, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| EvidenceError::io("read", &path, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = format!("{prefix}{name}");
            let kind = entry
                .file_type()
                .map_err(|e| EvidenceError::io("stat", &entry.path(), e))?;
            if kind.is_dir() {
                stack.push((entry.path(), format!("{rel}/")));
            } else if kind.is_file() {
                let bytes = fs::read(entry.path())
                    .map_err(|e| EvidenceError::io("read", &entry.path(), e))?;
                out.insert(rel, bytes);
            } else {
                // Not followed: a symlink could point anywhere.
                out.insert(format!("{rel} (not a regular file)"), Vec::new());
            }
        }
    }
    Ok(out)
}

/// The most a zipped pack may unpack to, and its most entries: a pack is
/// input from outside, and a zip bomb must not exhaust memory.
pub const ZIP_MAX_BYTES: u64 = 2 << 30;
/// See [`ZIP_MAX_BYTES`].
pub const ZIP_MAX_ENTRIES: usize = 100_000;

/// Reads a zipped pack (as `custos evidence --zip` writes it): every file
/// entry, with the common top-level folder removed. Entries whose names
/// are unsafe are kept under their raw name, so verification reports them.
///
/// # Errors
///
/// [`EvidenceError::Io`] if the file cannot be read, is not a zip archive
/// or unpacks to more than [`ZIP_MAX_BYTES`].
pub fn read_zip(path: &Path) -> Result<PackFiles, EvidenceError> {
    use std::io::Read as _;
    let bad = |reason: String| EvidenceError::io("read", path, std::io::Error::other(reason));
    let file = fs::File::open(path).map_err(|e| EvidenceError::io("open", path, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(format!("not a zip archive: {e}")))?;
    if zip.len() > ZIP_MAX_ENTRIES {
        return Err(bad(format!("more than {ZIP_MAX_ENTRIES} entries")));
    }
    let mut raw = Vec::new();
    let mut total = 0u64;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
        if entry.is_dir() {
            continue;
        }
        let name = entry.name().to_owned();
        let mut bytes = Vec::new();
        let budget = ZIP_MAX_BYTES - total;
        (&mut entry)
            .take(budget + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        total += bytes.len() as u64;
        if total > ZIP_MAX_BYTES {
            return Err(bad(format!("unpacks to more than {ZIP_MAX_BYTES} bytes")));
        }
        raw.push((name, bytes));
    }
    let top = raw
        .first()
        .and_then(|(n, _)| n.split_once('/'))
        .map(|(t, _)| format!("{t}/"));
    let strip = top.filter(|t| raw.iter().all(|(n, _)| n.starts_with(t.as_str())));
    Ok(raw
        .into_iter()
        .map(|(n, b)| {
            let rel = strip
                .as_deref()
                .and_then(|t| n.strip_prefix(t))
                .map_or_else(|| n.clone(), str::to_owned);
            (rel, b)
        })
        .collect())
}

#[derive(Deserialize)]
struct Manifest {
    format: String,
    period: Period,
    files: Vec<Entry>,
}

#[derive(Deserialize)]
struct Period {
    from: String,
    to: String,
}

#[derive(Deserialize)]
struct Entry {
    path: String,
    sha256: String,
    bytes: u64,
}

/// Whether the manifest hash was found in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerLink {
    /// No ledger was given to look in.
    NotChecked,
    /// The `evidence.generated` record with this seq carries the hash.
    Recorded {
        /// Its sequence number.
        seq: u64,
    },
    /// The ledger has no such record (yet: the event reaches the ledger
    /// when the server drains its outbox).
    NotFound,
    /// The ledger could not be read.
    Unreadable(String),
}

/// The outcome of [`verify_pack`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// SHA-256 of `manifest.json`, if present.
    pub manifest_sha256: Option<String>,
    /// The period the manifest claims.
    pub period: Option<(String, String)>,
    /// Files whose hash matched.
    pub files_ok: usize,
    /// The name of the key whose signature verified.
    pub signed_by: Option<String>,
    /// Everything wrong with the pack; empty means it is intact.
    pub problems: Vec<String>,
    /// Whether the manifest hash is in the ledger.
    pub ledger: LedgerLink,
}

impl VerifyReport {
    /// Whether the pack is intact and signed by a trusted key.
    #[must_use]
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

fn safe_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.contains('\\')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Checks `files` against their manifest and its signature by one of
/// `trusted` keys. Does not look in the ledger; see [`find_in_ledger`].
#[must_use]
pub fn verify_pack(files: &PackFiles, trusted: &[Verifier]) -> VerifyReport {
    let mut report = VerifyReport {
        manifest_sha256: None,
        period: None,
        files_ok: 0,
        signed_by: None,
        problems: Vec::new(),
        ledger: LedgerLink::NotChecked,
    };
    let Some(manifest_bytes) = files.get(MANIFEST) else {
        report.problems.push(format!("{MANIFEST} is missing"));
        return report;
    };
    let sha = hex(&Sha256::digest(manifest_bytes));
    report.manifest_sha256 = Some(sha.clone());
    match files.get(SIGNATURE) {
        None => report.problems.push(format!("{SIGNATURE} is missing")),
        Some(sig) => match custos_note::open(sig, trusted) {
            Err(e) => report.problems.push(format!(
                "{SIGNATURE}: signature does not verify with a trusted key: {e}"
            )),
            Ok(note) => {
                if note.body() == signed_body(&sha) {
                    report.signed_by = note.verified().first().map(|s| s.name.clone());
                } else {
                    report.problems.push(format!(
                        "{SIGNATURE} signs a different manifest than {MANIFEST} (SHA-256 {sha})"
                    ));
                }
            }
        },
    }
    let manifest: Manifest = match serde_json::from_slice(manifest_bytes) {
        Ok(m) => m,
        Err(e) => {
            report
                .problems
                .push(format!("{MANIFEST} is not a valid manifest: {e}"));
            return report;
        }
    };
    if manifest.format != FORMAT {
        report
            .problems
            .push(format!("{MANIFEST}: unknown format {:?}", manifest.format));
    }
    report.period = Some((manifest.period.from, manifest.period.to));
    let mut listed = std::collections::BTreeSet::new();
    for entry in &manifest.files {
        if !safe_path(&entry.path) || entry.path == MANIFEST || entry.path == SIGNATURE {
            report.problems.push(format!(
                "{MANIFEST} lists a forbidden path {:?}",
                entry.path
            ));
            continue;
        }
        if !listed.insert(entry.path.as_str()) {
            report
                .problems
                .push(format!("{MANIFEST} lists {} twice", entry.path));
            continue;
        }
        match files.get(&entry.path) {
            None => report.problems.push(format!("{}: missing", entry.path)),
            Some(bytes) => {
                let actual = hex(&Sha256::digest(bytes));
                if actual != entry.sha256 || bytes.len() as u64 != entry.bytes {
                    report.problems.push(format!(
                        "{}: SHA-256 {actual} ({} bytes) does not match the manifest's {} ({} bytes)",
                        entry.path,
                        bytes.len(),
                        entry.sha256,
                        entry.bytes
                    ));
                } else {
                    report.files_ok += 1;
                }
            }
        }
    }
    for path in files.keys() {
        if path != MANIFEST && path != SIGNATURE && !listed.contains(path.as_str()) {
            report
                .problems
                .push(format!("{path}: not listed in the manifest"));
        }
    }
    report
}

/// Looks for the `evidence.generated` record carrying `manifest_sha256`.
#[must_use]
pub fn find_in_ledger(ledger_dir: &Path, manifest_sha256: &str) -> LedgerLink {
    let reader = LedgerReader::open(ledger_dir);
    let records = match reader.records() {
        Ok(r) => r,
        Err(e) => return LedgerLink::Unreadable(e.to_string()),
    };
    for item in records {
        let stored = match item {
            Ok(s) => s,
            Err(e) => return LedgerLink::Unreadable(e.to_string()),
        };
        if let RecordBody::Admin(a) = &stored.record.body
            && a.event == "evidence.generated"
            && a.changes
                .get("manifest_sha256")
                .and_then(|c| c.after.as_ref())
                .is_some_and(|v| matches!(v, Scalar::Str(s) if s == manifest_sha256))
        {
            return LedgerLink::Recorded {
                seq: stored.record.seq,
            };
        }
    }
    LedgerLink::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_paths() {
        for p in ["", "/etc/passwd", "../x", "a/../b", "a//b", "a\\b", "./a"] {
            assert!(!safe_path(p), "{p}");
        }
        assert!(safe_path("tables/a.csv"));
    }
}
