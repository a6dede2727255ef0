//! Writing a pack: every file, then `manifest.json` with their SHA-256,
//! then `manifest.sig`, a C2SP signed note over the manifest's hash made
//! with the audit ledger's signing key.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use custos_note::Signer;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::error::EvidenceError;
use crate::gather::{Evidence, fingerprint, hex};
use crate::period::format_time;

/// The pack format, first line of the signed note and `format` of the manifest.
pub const FORMAT: &str = "custos-evidence-pack/1";
/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// The signature's file name.
pub const SIGNATURE: &str = "manifest.sig";

/// The body of the signed note for a manifest with this SHA-256 (hex).
#[must_use]
pub fn signed_body(manifest_sha256: &str) -> String {
    format!("{FORMAT}\n{manifest_sha256}\n")
}

/// What [`write_pack`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The pack directory.
    pub dir: PathBuf,
    /// SHA-256 (hex) of `manifest.json`: the value recorded in the ledger.
    pub manifest_sha256: String,
    /// Files listed in the manifest.
    pub files: usize,
}

/// Loads the ledger's signing key from `<ledger>/keys/signing.key`,
/// refusing a file that others can read (as the ledger itself does).
///
/// # Errors
///
/// [`EvidenceError::SigningKey`] if it is missing, too open or malformed.
pub fn load_signer(ledger_dir: &Path) -> Result<Signer, EvidenceError> {
    let path = ledger_dir.join("keys").join("signing.key");
    let err = |reason: String| EvidenceError::SigningKey {
        path: path.clone(),
        reason,
    };
    let meta = fs::metadata(&path).map_err(|e| err(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(err(format!("mode {mode:o} lets others read it; want 0600")));
    }
    let mut bytes = fs::read(&path).map_err(|e| err(e.to_string()))?;
    let signer = std::str::from_utf8(&bytes)
        .map_err(|_| err("not UTF-8".to_owned()))
        .and_then(|t| Signer::from_skey(t.trim_end_matches('\n')).map_err(|e| err(e.to_string())));
    bytes.fill(0);
    signer
}

/// Every file of the pack except the manifest and signature: path → bytes.
fn files(ev: &Evidence) -> Result<Vec<(String, Vec<u8>)>, EvidenceError> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for t in &ev.tables {
        out.push((format!("tables/{}.json", t.name), t.to_json().into_bytes()));
        out.push((format!("tables/{}.csv", t.name), t.to_csv().into_bytes()));
    }
    let incidents =
        serde_json::to_string_pretty(&ev.incidents).map_err(|e| EvidenceError::Encode {
            what: "incidents",
            reason: e.to_string(),
        })?;
    out.push((
        "incidents/incidents.json".to_owned(),
        format!("{incidents}\n").into_bytes(),
    ));
    let ig = &ev.integrity;
    if let Some((_, note)) = &ig.start_checkpoint {
        out.push((
            "integrity/checkpoint-start.note".to_owned(),
            note.clone().into_bytes(),
        ));
    }
    if let Some((_, note)) = &ig.end_checkpoint {
        out.push((
            "integrity/checkpoint-end.note".to_owned(),
            note.clone().into_bytes(),
        ));
    }
    let keys: String = ig
        .keys
        .iter()
        .map(|k| format!("{} {}\n", k.first_size, k.verifier.to_vkey()))
        .collect();
    out.push(("integrity/public-keys.txt".to_owned(), keys.into_bytes()));
    if let Some(sha) = &ev.config_sha256 {
        out.push((
            "config/sha256.txt".to_owned(),
            format!("{sha}\n").into_bytes(),
        ));
    }
    for p in &ev.policies {
        out.push((p.path.to_owned(), p.text.clone().into_bytes()));
    }
    out.push((
        "report.html".to_owned(),
        crate::html::render(ev).into_bytes(),
    ));
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn write_file(dir: &Path, rel: &str, bytes: &[u8]) -> Result<(), EvidenceError> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| EvidenceError::io("create", parent, e))?;
    }
    let mut f = fs::File::create(&path).map_err(|e| EvidenceError::io("create", &path, e))?;
    f.write_all(bytes)
        .map_err(|e| EvidenceError::io("write", &path, e))?;
    f.sync_all()
        .map_err(|e| EvidenceError::io("fsync", &path, e))
}

/// Fails unless `out` is absent or an empty directory.
///
/// # Errors
///
/// [`EvidenceError::OutputNotEmpty`] or [`EvidenceError::Io`].
pub fn check_output(out: &Path) -> Result<(), EvidenceError> {
    match fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(EvidenceError::OutputNotEmpty(out.to_path_buf()));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(EvidenceError::io("read", out, e)),
    }
}

/// Writes the pack for `ev` into `out` (absent or empty), signed by
/// `signer`. The files are written to a temporary sibling directory that
/// is renamed to `out` at the end, so a failed run leaves no half pack.
///
/// # Errors
///
/// [`EvidenceError::OutputNotEmpty`], IO and encoding errors.
pub fn write_pack(ev: &Evidence, out: &Path, signer: &Signer) -> Result<Written, EvidenceError> {
    check_output(out)?;
    let name = out
        .file_name()
        .map_or_else(|| "pack".into(), |n| n.to_string_lossy().into_owned());
    let tmp = out.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| EvidenceError::io("create", &tmp, e))?;
    let result = write_into(ev, &tmp, signer);
    match result {
        Ok(mut written) => {
            if out.exists() {
                fs::remove_dir(out).map_err(|e| EvidenceError::io("replace", out, e))?;
            }
            fs::rename(&tmp, out).map_err(|e| EvidenceError::io("rename into", out, e))?;
            written.dir = out.to_path_buf();
            Ok(written)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn write_into(ev: &Evidence, dir: &Path, signer: &Signer) -> Result<Written, EvidenceError> {
    let files = files(ev)?;
    let mut listed = Vec::new();
    for (rel, bytes) in &files {
        write_file(dir, rel, bytes)?;
        listed.push(
            json!({"path": rel, "sha256": hex(&Sha256::digest(bytes)), "bytes": bytes.len()}),
        );
    }
    let p = &ev.request.period;
    let ig = &ev.integrity;
    let verifier = signer.verifier();
    let key = custos_ledger::KeyEntry {
        first_size: 0,
        verifier: verifier.clone(),
    };
    let manifest = json!({
        "format": FORMAT,
        "period": {"from": format_time(p.from()), "to": format_time(p.to())},
        "generated_at": format_time(ev.request.generated_at),
        "generated_by": ev.request.generated_by,
        "ledger": {
            "origin": ev.origin,
            "tree_size": ig.tree_size,
            "period_first_seq": ig.period_first_seq,
            "period_end_seq": ig.period_end_seq,
            "verify_result": if ig.intact { "intact" } else { "failed" },
            "start_checkpoint_size": ig.start_checkpoint.as_ref().map(|c| c.0),
            "end_checkpoint_size": ig.end_checkpoint.as_ref().map(|c| c.0),
        },
        "config_sha256": ev.config_sha256,
        "signing_key": {"vkey": verifier.to_vkey(), "sha256": fingerprint(&key)},
        "files": listed,
    });
    let mut text = serde_json::to_string_pretty(&manifest).map_err(|e| EvidenceError::Encode {
        what: "manifest",
        reason: e.to_string(),
    })?;
    text.push('\n');
    write_file(dir, MANIFEST, text.as_bytes())?;
    let manifest_sha256 = hex(&Sha256::digest(text.as_bytes()));
    let note = custos_note::sign(&signed_body(&manifest_sha256), &[signer]).map_err(|e| {
        EvidenceError::Encode {
            what: "manifest signature",
            reason: e.to_string(),
        }
    })?;
    write_file(dir, SIGNATURE, note.as_bytes())?;
    Ok(Written {
        dir: dir.to_path_buf(),
        manifest_sha256,
        files: files.len(),
    })
}

/// Writes the pack in `dir` as a zip archive at `zip_path` (deflate), every
/// file under one top-level folder named after `dir`, in path order. The
/// archive must not exist yet.
///
/// # Errors
///
/// IO errors, or [`EvidenceError::Encode`] if the archive cannot be built.
pub fn zip_pack(dir: &Path, zip_path: &Path) -> Result<(), EvidenceError> {
    let files = crate::verify::read_dir(dir)?;
    let top = dir
        .file_name()
        .map_or_else(|| "pack".to_owned(), |n| n.to_string_lossy().into_owned());
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(zip_path)
        .map_err(|e| EvidenceError::io("create", zip_path, e))?;
    let encode = |e: zip::result::ZipError| EvidenceError::Encode {
        what: "zip archive",
        reason: e.to_string(),
    };
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o644);
    for (path, bytes) in &files {
        zip.start_file(format!("{top}/{path}"), options)
            .map_err(encode)?;
        zip.write_all(bytes)
            .map_err(|e| EvidenceError::io("write", zip_path, e))?;
    }
    let file = zip.finish().map_err(encode)?;
    file.sync_all()
        .map_err(|e| EvidenceError::io("fsync", zip_path, e))
}
