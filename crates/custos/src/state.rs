//! The state store as the binary uses it: the pepper file, opening the
//! store, and the adapter that feeds the gateway's key cache.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use custos_auth::KeyId;
use custos_auth::scope::BudgetPeriod;
use custos_gateway::auth::BoxFuture;
use custos_gateway::{KeyEntry, KeySnapshot, KeySource, SecretEntry};
use custos_store::{ChangeWatcher, KeyMinter, Store, StoreOptions, UsageDelta};
use rand::RngCore as _;
use secrecy::SecretSlice;

/// The pepper file inside the data directory.
pub const PEPPER_FILE: &str = "pepper.key";

/// Reads the server-side pepper, creating it (32 random bytes, hex, mode
/// 0600, exclusive create) on first use. A pepper readable by others is
/// refused, as ssh refuses such a private key.
pub fn load_or_create_pepper(data_dir: &Path) -> anyhow::Result<SecretSlice<u8>> {
    let path = data_dir.join(PEPPER_FILE);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut file) => {
            let mut bytes = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            file.write_all(hex.as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot write {}", path.display()))?;
            return Ok(SecretSlice::from(bytes.to_vec()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
    let mode = std::fs::metadata(&path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "{} is mode {:o}; it must be readable by its owner only (chmod 600)",
            path.display(),
            mode & 0o777
        );
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let text = text.trim();
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{} is not a 64-character hex pepper", path.display());
    }
    let bytes: Vec<u8> = (0..32)
        .filter_map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
        .collect();
    Ok(SecretSlice::from(bytes))
}

/// Opens the store and the key minter for `data_dir`.
pub async fn open(data_dir: &Path) -> anyhow::Result<(Arc<Store>, KeyMinter)> {
    let pepper = load_or_create_pepper(data_dir)?;
    let minter = KeyMinter::new(&pepper).map_err(|e| anyhow::anyhow!("pepper: {e}"))?;
    let store = Store::open(data_dir, StoreOptions::default())
        .await
        .with_context(|| format!("cannot open the state store in {}", data_dir.display()))?;
    Ok((Arc::new(store), minter))
}

/// Feeds the gateway's key cache from the store; a change made by any
/// process is noticed through the change marker (an inotify event, or one
/// `stat()` where inotify is unavailable).
pub struct StoreKeySource {
    store: Arc<Store>,
    watcher: ChangeWatcher,
}

impl StoreKeySource {
    /// An adapter over `store`. Create it before the first load so no change
    /// between the two is missed.
    pub fn new(store: Arc<Store>) -> anyhow::Result<Self> {
        let watcher = store
            .change_watcher()
            .context("the store has no change marker")?;
        Ok(StoreKeySource { store, watcher })
    }
}

impl KeySource for StoreKeySource {
    fn changed(&self) -> bool {
        self.watcher.changed()
    }

    fn load(&self) -> BoxFuture<'_, Result<KeySnapshot, String>> {
        Box::pin(async move {
            // `changed()` already recorded the marker it saw, before this
            // load: a change committed meanwhile shows up as another change.
            let snap = self
                .store
                .keys()
                .load_auth_snapshot()
                .await
                .map_err(|e| e.to_string())?;
            for (id, reason) in &snap.unreadable {
                tracing::error!(key_id = %id, reason, "stored key is unreadable; it will not authenticate");
            }
            let mut keys: HashMap<KeyId, Arc<KeyEntry>> = HashMap::new();
            let mut secrets = HashMap::with_capacity(snap.entries.len());
            for (hash, entry) in snap.entries {
                let k = &entry.key;
                let key = keys
                    .entry(k.id)
                    .or_insert_with(|| {
                        Arc::new(KeyEntry {
                            id: k.id,
                            name: k.name.clone(),
                            owner: Some(k.owner.clone()),
                            team: k.team.clone(),
                            scope: k.scope.clone(),
                            expires_at: k.expires_at,
                            revoked: k.revoked_at.is_some(),
                        })
                    })
                    .clone();
                secrets.insert(
                    hash,
                    SecretEntry {
                        key,
                        issued_at: entry.issued_at,
                        not_after: entry.not_after,
                    },
                );
            }
            Ok(KeySnapshot { secrets })
        })
    }

    fn usage_in_period(
        &self,
        key: KeyId,
        period: BudgetPeriod,
    ) -> BoxFuture<'_, Result<u64, String>> {
        Box::pin(async move {
            self.store
                .keys()
                .usage_in_period(&key, period)
                .await
                .map(|u| u.tokens)
                .map_err(|e| e.to_string())
        })
    }

    fn add_usage(&self, batch: Vec<(KeyId, SystemTime, u64)>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let deltas: Vec<UsageDelta> = batch
                .into_iter()
                .map(|(key_id, at, tokens)| UsageDelta { key_id, at, tokens })
                .collect();
            self.store
                .keys()
                .add_usage(&deltas)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn record_last_used(
        &self,
        batch: Vec<(KeyId, SystemTime)>,
    ) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.store
                .keys()
                .touch_last_used(&batch)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}
