//! What the gateway's hot path needs to authenticate a key, loaded in one go
//! and kept in memory until the [`crate::ChangeWatcher`] says otherwise.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use custos_auth::{KeyHash, KeyId, Scope};

/// The per-key part of an [`AuthEntry`], shared by all of the key's secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthKey {
    /// The key's public ID.
    pub id: KeyId,
    /// The key's display name.
    pub name: String,
    /// Who owns the key.
    pub owner: String,
    /// The owning team, if any.
    pub team: Option<String>,
    /// What the key may do.
    pub scope: Scope,
    /// When the key stops working, if ever.
    pub expires_at: Option<SystemTime>,
    /// When the key was revoked, if it was.
    pub revoked_at: Option<SystemTime>,
}

/// One stored secret hash and the key it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthEntry {
    /// The stored hash.
    pub hash: KeyHash,
    /// The key.
    pub key: Arc<AuthKey>,
    /// When this secret was issued (at creation or rotation).
    pub issued_at: SystemTime,
    /// `None` for the key's current secret; for a rotated-out secret, the
    /// end of its grace period (exclusive).
    pub not_after: Option<SystemTime>,
}

/// The outcome of looking a presented secret's hash up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// The secret is valid now: a current secret, or a rotated-out one still
    /// in its grace period.
    Valid(&'a AuthEntry),
    /// No stored secret has this hash.
    Unknown,
    /// The secret was replaced by a rotation and its grace period is over.
    RotatedOut(&'a AuthEntry),
    /// The key has expired.
    Expired(&'a AuthEntry),
    /// The key was revoked. Takes precedence over the other refusals.
    Revoked(&'a AuthEntry),
}

impl Lookup<'_> {
    /// A short, stable name for metrics labels and audit records.
    pub fn code(&self) -> &'static str {
        match self {
            Lookup::Valid(_) => "valid",
            Lookup::Unknown => "unknown_key",
            Lookup::RotatedOut(_) => "key_rotated_out",
            Lookup::Expired(_) => "key_expired",
            Lookup::Revoked(_) => "key_revoked",
        }
    }
}

/// Every stored secret hash, with what authentication needs about its key.
#[derive(Debug, Clone, Default)]
pub struct AuthSnapshot {
    /// The key generation read together with the rows. The rows reflect at
    /// least every change up to this generation (possibly more), so a later
    /// [`crate::keys::Keys::generation`] above it means "reload".
    pub generation: i64,
    /// Entries by hash.
    pub entries: HashMap<KeyHash, AuthEntry>,
    /// Keys whose stored scope could not be decoded. They are left out of
    /// `entries` (so they authenticate as unknown: fail closed for that key
    /// only) and listed here for logs and metrics.
    pub unreadable: Vec<(KeyId, String)>,
}

impl AuthSnapshot {
    /// Classifies the secret with hash `hash` at time `now`.
    ///
    /// The hash-map lookup is followed by a constant-time comparison, so the
    /// decision itself does not depend on a variable-time equality check.
    pub fn lookup(&self, hash: &KeyHash, now: SystemTime) -> Lookup<'_> {
        let Some(entry) = self.entries.get(hash) else {
            return Lookup::Unknown;
        };
        if !entry.hash.ct_eq(hash) {
            return Lookup::Unknown;
        }
        if entry.key.revoked_at.is_some() {
            return Lookup::Revoked(entry);
        }
        if entry.not_after.is_some_and(|t| now >= t) {
            return Lookup::RotatedOut(entry);
        }
        if entry.key.expires_at.is_some_and(|t| now >= t) {
            return Lookup::Expired(entry);
        }
        Lookup::Valid(entry)
    }

    /// The number of stored secrets.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no secret is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
