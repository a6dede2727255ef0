//! The signing key and the history of verifier keys.
//!
//! `keys/signing.key` holds the signer key text (`PRIVATE+KEY+…`) and a
//! newline, mode 0600, created with `O_EXCL`. `keys/verifiers.txt` lists
//! every key the ledger has used, oldest first, as `<first size> <vkey>`,
//! so that checkpoints signed before a rotation stay verifiable.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;

use custos_note::Signer;
use ed25519_dalek::SigningKey;
use secrecy::ExposeSecret as _;

use crate::error::LedgerError;
use crate::layout::{
    KeyEntry, Layout, append_line, parse_verifiers, read_to_string, sync_dir, write_new,
};
use crate::options::SecureRng;

/// The signer in use and the key history, as loaded at open.
pub(crate) struct Keys {
    pub(crate) signer: Signer,
    pub(crate) history: Vec<KeyEntry>,
    /// A rotation interrupted by a crash was completed at open.
    pub(crate) completed_rotation: bool,
}

pub(crate) fn generate(origin: &str, rng: &mut dyn SecureRng) -> Result<Signer, LedgerError> {
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let signer = Signer::new(origin, SigningKey::from_bytes(&seed));
    seed.fill(0);
    signer.map_err(|e| LedgerError::InvalidOptions {
        field: "origin",
        reason: if matches!(e, custos_note::KeyError::InvalidName { .. }) {
            "is not a valid note key name"
        } else {
            "cannot name a key"
        },
    })
}

fn skey_bytes(signer: &Signer) -> Vec<u8> {
    let mut text = signer.to_skey().expose_secret().as_bytes().to_vec();
    text.push(b'\n');
    text
}

/// Writes a new signer key file with mode 0600; fails if it exists.
pub(crate) fn write_key(layout: &Layout, signer: &Signer, new: bool) -> Result<(), LedgerError> {
    let path = if new {
        layout.new_signing_key()
    } else {
        layout.signing_key()
    };
    let mut bytes = skey_bytes(signer);
    let result = write_new(&path, 0o600, &bytes);
    bytes.fill(0);
    result
}

fn read_key(layout: &Layout, path: &std::path::Path) -> Result<Signer, LedgerError> {
    let _ = layout;
    let mode = fs::metadata(path)
        .map_err(|e| LedgerError::io("stat", path, e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(LedgerError::KeyPermissions {
            path: path.to_path_buf(),
            mode: mode & 0o777,
        });
    }
    let text = read_to_string(path)?;
    let skey = text.strip_suffix('\n').unwrap_or(&text);
    Signer::from_skey(skey).map_err(|e| LedgerError::Key {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Loads the signing key and history, creating both for an empty ledger,
/// and finishes a rotation that a crash interrupted.
pub(crate) fn load_or_create(
    layout: &Layout,
    origin: &str,
    rng: &mut dyn SecureRng,
    ledger_is_empty: bool,
) -> Result<Keys, LedgerError> {
    let key_path = layout.signing_key();
    let verifiers_path = layout.verifiers();
    let mut completed_rotation = false;

    let new_path = layout.new_signing_key();
    if new_path.exists() {
        // A rotation wrote the new key, then maybe the history line, and
        // crashed before the rename. The history decides which key is live.
        let new_signer = read_key(layout, &new_path)?;
        let history = parse_verifiers(&read_to_string(&verifiers_path)?).map_err(|reason| {
            LedgerError::Key {
                path: verifiers_path.clone(),
                reason,
            }
        })?;
        if history.last().map(|k| &k.verifier) == Some(&new_signer.verifier()) {
            fs::rename(&new_path, &key_path)
                .map_err(|e| LedgerError::io("rename", &key_path, e))?;
            completed_rotation = true;
        } else {
            fs::remove_file(&new_path).map_err(|e| LedgerError::io("remove", &new_path, e))?;
        }
        sync_dir(&layout.keys())?;
    }

    if !key_path.exists() {
        if !ledger_is_empty {
            return Err(LedgerError::Key {
                path: key_path,
                reason: "missing, but the ledger has records or checkpoints".into(),
            });
        }
        let signer = generate(origin, rng)?;
        write_key(layout, &signer, false)?;
        if verifiers_path.exists() {
            // Left over from an initialisation that crashed before any record.
            fs::remove_file(&verifiers_path)
                .map_err(|e| LedgerError::io("remove", &verifiers_path, e))?;
        }
        write_new(
            &verifiers_path,
            0o644,
            format!("0 {}\n", signer.verifier().to_vkey()).as_bytes(),
        )?;
        sync_dir(&layout.keys())?;
    }

    let signer = read_key(layout, &key_path)?;
    if signer.name() != origin {
        return Err(LedgerError::Key {
            path: key_path,
            reason: format!(
                "key name {:?} does not match the configured origin {origin:?}",
                signer.name()
            ),
        });
    }
    let history =
        parse_verifiers(&read_to_string(&verifiers_path)?).map_err(|reason| LedgerError::Key {
            path: verifiers_path.clone(),
            reason,
        })?;
    if history.last().map(|k| &k.verifier) != Some(&signer.verifier()) {
        return Err(LedgerError::Key {
            path: verifiers_path,
            reason: "the last key listed is not the signing key".into(),
        });
    }
    Ok(Keys {
        signer,
        history,
        completed_rotation,
    })
}

/// Records a new key in the history: it signs checkpoints from `first_size`.
pub(crate) fn append_history(
    layout: &Layout,
    first_size: u64,
    signer: &Signer,
) -> Result<(), LedgerError> {
    append_line(
        &layout.verifiers(),
        &format!("{first_size} {}\n", signer.verifier().to_vkey()),
    )
}
