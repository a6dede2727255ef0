//! The API key lifecycle: create, list, get, update, rotate and revoke, each
//! one transaction that also writes its outbox event; plus the batched
//! `last_used` and usage writes and the authentication snapshot.
//!
//! Key-changing transactions start by bumping `store_meta.keys_generation`.
//! That first write takes SQLite's write lock (so the busy timeout applies
//! and no read-then-upgrade deadlock can occur) and locks the generation row
//! on PostgreSQL, so key changes are serialised on both backends and every
//! later statement in the transaction sees all earlier commits.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use custos_auth::key::IssuedKey;
use custos_auth::scope::{CidrScope, ModelScope, TokenBudget};
use custos_auth::{KeyHash, KeyId, Scope};
use custos_types::{CapabilitySet, SecretString};
use rand::{CryptoRng, RngCore};
use serde::Serialize;
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, Row, Transaction};

use crate::Store;
use crate::actor::Actor;
use crate::error::{Result, StoreError};
use crate::minter::{KeyMinter, validate_rotation_id};
use crate::outbox::{self, FieldChange, KEY_EVENT_VERSION, KeyEvent, KeyEventKind};
use crate::snapshot::{AuthEntry, AuthKey, AuthSnapshot};
use crate::time::{day_start, dur_ms, from_ms, period_start, to_ms};

/// The longest grace period a rotation may give the old secret.
pub const MAX_GRACE: Duration = Duration::from_secs(90 * 24 * 3600);

/// How many rows one batched statement writes at most.
const BATCH_ROWS: usize = 500;

/// What a new key should be. The secret and ID are generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    /// A short display name, 1 to 128 bytes.
    pub name: String,
    /// Who is accountable for the key, 1 to 256 bytes.
    pub owner: String,
    /// The owning team, if any, 1 to 128 bytes.
    pub team: Option<String>,
    /// Free text, at most 1024 bytes.
    pub description: String,
    /// Labels: at most 64, keys of 1 to 63 bytes of `[A-Za-z0-9._/-]`,
    /// values of at most 256 bytes.
    pub labels: BTreeMap<String, String>,
    /// What the key may do. Stored as given: a scope with no models allows
    /// no model.
    pub scope: Scope,
    /// When the key stops working; must be in the future.
    pub expires_at: Option<SystemTime>,
}

/// A key's state at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Usable.
    Active,
    /// Past its expiry time.
    Expired,
    /// Revoked; final.
    Revoked,
}

/// Who revoked a key, when and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// When.
    pub at: SystemTime,
    /// Who.
    pub by: Actor,
    /// Why, as given.
    pub reason: String,
}

/// A key as stored, without any secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The public ID.
    pub id: KeyId,
    /// Display name.
    pub name: String,
    /// Accountable owner.
    pub owner: String,
    /// Owning team.
    pub team: Option<String>,
    /// Free text.
    pub description: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// What the key may do.
    pub scope: Scope,
    /// When it was created.
    pub created_at: SystemTime,
    /// Who created it.
    pub created_by: Actor,
    /// When it last changed (including rotations and revocation).
    pub updated_at: SystemTime,
    /// When it stops working.
    pub expires_at: Option<SystemTime>,
    /// The revocation, if revoked.
    pub revoked: Option<Revocation>,
    /// The last use recorded by [`Keys::touch_last_used`].
    pub last_used_at: Option<SystemTime>,
    /// The masked form of the current secret, such as `cst_live_Ab12…wXyZ`.
    pub masked: String,
    /// When the current secret was issued: the age that rotation policy
    /// looks at.
    pub secret_created_at: SystemTime,
    /// The latest end of grace of a rotated-out secret that is still valid
    /// at read time, if any.
    pub grace_until: Option<SystemTime>,
    /// Increases by one with every change; pass it back as
    /// [`KeyUpdate::expected_version`] to detect concurrent edits.
    pub version: u64,
}

impl KeyRecord {
    /// The key's state at `now`.
    pub fn state(&self, now: SystemTime) -> KeyState {
        if self.revoked.is_some() {
            KeyState::Revoked
        } else if self.expires_at.is_some_and(|t| now >= t) {
            KeyState::Expired
        } else {
            KeyState::Active
        }
    }
}

/// Rotation policy for [`ListFilter::due_for_rotation`]: secrets must be
/// rotated every `max_age`, and a key is listed once its current secret is
/// older than `max_age - within`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationDue {
    /// The longest a secret may live.
    pub max_age: Duration,
    /// How long before `max_age` a key counts as due.
    pub within: Duration,
}

/// Which keys [`Keys::list`] returns. Every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Exact owner.
    pub owner: Option<String>,
    /// Exact team.
    pub team: Option<String>,
    /// State at the store clock's now.
    pub state: Option<KeyState>,
    /// A substring of the ID, name, owner or description, compared
    /// case-insensitively for ASCII letters.
    pub search: Option<String>,
    /// Only unrevoked keys whose current secret is due for rotation.
    pub due_for_rotation: Option<RotationDue>,
    /// At most this many keys.
    pub limit: Option<u32>,
    /// Skip this many keys first (ordered by creation time, then ID).
    pub offset: u32,
}

/// A partial change of a [`Scope`]: `None` fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeUpdate {
    /// New model scope.
    pub models: Option<ModelScope>,
    /// New capability set.
    pub capabilities: Option<CapabilitySet>,
    /// New network scope.
    pub cidrs: Option<CidrScope>,
    /// New requests-per-minute limit; `Some(None)` removes it.
    pub rpm: Option<Option<u32>>,
    /// New tokens-per-minute limit; `Some(None)` removes it.
    pub tpm: Option<Option<u32>>,
    /// New token budget; `Some(None)` removes it.
    pub budget: Option<Option<TokenBudget>>,
}

impl ScopeUpdate {
    /// `scope` with this update applied.
    pub fn apply(&self, scope: &Scope) -> Scope {
        Scope {
            models: self.models.clone().unwrap_or_else(|| scope.models.clone()),
            capabilities: self.capabilities.unwrap_or(scope.capabilities),
            cidrs: self.cidrs.clone().unwrap_or_else(|| scope.cidrs.clone()),
            rpm: self.rpm.unwrap_or(scope.rpm),
            tpm: self.tpm.unwrap_or(scope.tpm),
            budget: self.budget.unwrap_or(scope.budget),
        }
    }
}

/// A change of a key's metadata or scope: `None` fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyUpdate {
    /// New name.
    pub name: Option<String>,
    /// New owner.
    pub owner: Option<String>,
    /// New team; `Some(None)` removes it.
    pub team: Option<Option<String>>,
    /// New description.
    pub description: Option<String>,
    /// New labels, replacing all of them.
    pub labels: Option<BTreeMap<String, String>>,
    /// New expiry; `Some(None)` removes it. A new expiry must be in the
    /// future (revoke a key to stop it now).
    pub expires_at: Option<Option<SystemTime>>,
    /// Scope changes, applied to the scope as stored at commit time.
    pub scope: ScopeUpdate,
    /// If set, the update fails with [`StoreError::VersionConflict`] unless
    /// the key is still at this version.
    pub expected_version: Option<u64>,
}

/// The result of [`Keys::update`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updated {
    /// The key before the update.
    pub before: KeyRecord,
    /// The key after the update (equal to `before` when nothing changed).
    pub after: KeyRecord,
    /// The names of the changed fields; empty when the update was a no-op,
    /// in which case nothing was written and no event recorded.
    pub changed: Vec<String>,
}

/// The result of [`Keys::revoke`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeOutcome {
    /// The key, revoked.
    pub record: KeyRecord,
    /// Whether it was already revoked, in which case nothing was written:
    /// the first revocation's time, actor and reason stand.
    pub already_revoked: bool,
}

/// Tokens used by a key at some time, for [`Keys::add_usage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageDelta {
    /// The key.
    pub key_id: KeyId,
    /// When the tokens were used; counted in that UTC day.
    pub at: SystemTime,
    /// How many tokens.
    pub tokens: u64,
}

/// Tokens used in the current budget period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodUsage {
    /// The start of the period (UTC midnight, or the first of the month).
    pub start: SystemTime,
    /// Tokens used since then.
    pub tokens: u64,
}

/// Key operations on a [`Store`]; get one with [`Store::keys`].
#[derive(Debug, Clone, Copy)]
pub struct Keys<'s> {
    store: &'s Store,
}

/// The columns of a [`KeyRecord`], in the order [`record_from_row`] reads
/// them. `$1` is the current time.
const SELECT_KEY: &str = "SELECT k.id, k.name, k.owner, k.team, k.description, k.labels_json, \
     k.scope_json, k.created_at, k.created_by_json, k.updated_at, k.expires_at, k.revoked_at, \
     k.revoked_by_json, k.revoke_reason, k.last_used_at, k.version, s.masked, s.created_at, \
     (SELECT MAX(g.not_after) FROM key_secrets g WHERE g.key_id = k.id AND g.not_after > $1) \
     FROM keys k LEFT JOIN key_secrets s ON s.key_id = k.id AND s.not_after IS NULL";

impl<'s> Keys<'s> {
    pub(crate) fn new(store: &'s Store) -> Self {
        Keys { store }
    }

    /// Creates a key and returns it with its secret, which is shown once and
    /// never stored: only its HMAC hash is.
    ///
    /// The randomness is drawn before the returned future first runs, so the
    /// RNG need not be `Send`.
    pub fn create(
        &self,
        minter: &KeyMinter,
        new: NewKey,
        actor: &Actor,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> impl Future<Output = Result<(KeyRecord, SecretString)>> + Send + 's {
        let issued = minter.issue(rng);
        let actor = actor.clone();
        let store = self.store;
        async move { create(store, new, actor, issued).await }
    }

    /// Keys matching `filter`, ordered by creation time then ID.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<KeyRecord>> {
        let store = self.store;
        let now = to_ms(store.clock.now());
        let mut sql = String::from(SELECT_KEY);
        sql.push_str(" WHERE 1 = 1");
        let mut args: Vec<Arg> = vec![Arg::I64(now)];
        let next = |args: &mut Vec<Arg>, arg: Arg| {
            args.push(arg);
            format!("${}", args.len())
        };
        if let Some(owner) = &filter.owner {
            let p = next(&mut args, Arg::Text(owner.clone()));
            sql.push_str(&format!(" AND k.owner = {p}"));
        }
        if let Some(team) = &filter.team {
            let p = next(&mut args, Arg::Text(team.clone()));
            sql.push_str(&format!(" AND k.team = {p}"));
        }
        match filter.state {
            None => {}
            Some(KeyState::Active) => sql.push_str(
                " AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > $1)",
            ),
            Some(KeyState::Expired) => sql.push_str(
                " AND k.revoked_at IS NULL AND k.expires_at IS NOT NULL AND k.expires_at <= $1",
            ),
            Some(KeyState::Revoked) => sql.push_str(" AND k.revoked_at IS NOT NULL"),
        }
        if let Some(search) = filter.search.as_deref().filter(|s| !s.is_empty()) {
            let p = next(&mut args, Arg::Text(like_pattern(search)));
            sql.push_str(&format!(
                " AND (LOWER(k.id) LIKE {p} ESCAPE '\\' OR LOWER(k.name) LIKE {p} ESCAPE '\\' \
                 OR LOWER(k.owner) LIKE {p} ESCAPE '\\' OR LOWER(k.description) LIKE {p} ESCAPE '\\')"
            ));
        }
        if let Some(due) = filter.due_for_rotation {
            let threshold = now.saturating_sub(dur_ms(due.max_age.saturating_sub(due.within)));
            let p = next(&mut args, Arg::I64(threshold));
            sql.push_str(&format!(
                " AND k.revoked_at IS NULL AND s.created_at <= {p}"
            ));
        }
        let limit = filter.limit.map_or(i64::MAX, i64::from);
        let p_limit = next(&mut args, Arg::I64(limit));
        let p_offset = next(&mut args, Arg::I64(i64::from(filter.offset)));
        sql.push_str(&format!(
            " ORDER BY k.created_at, k.id LIMIT {p_limit} OFFSET {p_offset}"
        ));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for arg in args {
            q = match arg {
                Arg::I64(v) => q.bind(v),
                Arg::Text(v) => q.bind(v),
            };
        }
        let rows = q
            .fetch_all(&store.pool)
            .await
            .map_err(|e| store.db_err(e))?;
        rows.iter().map(record_from_row).collect()
    }

    /// The key with this ID, if any.
    pub async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>> {
        let mut conn = self
            .store
            .pool
            .acquire()
            .await
            .map_err(|e| self.store.db_err(e))?;
        get_in(self.store, &mut conn, id).await
    }

    /// Changes a key's metadata and scope, returning it before and after.
    /// Revoked keys cannot be updated. An update that changes nothing
    /// writes nothing.
    pub async fn update(&self, id: &KeyId, update: &KeyUpdate, actor: &Actor) -> Result<Updated> {
        let store = self.store;
        validate_actor(actor)?;
        validate_update(update)?;
        let (mut tx, generation) = begin_change(store).await?;
        let now = store.clock.now();
        let before = get_in(store, &mut tx, id)
            .await?
            .ok_or(StoreError::KeyNotFound { id: *id })?;
        if before.revoked.is_some() {
            return Err(StoreError::KeyRevoked { id: *id });
        }
        if let Some(expected) = update.expected_version
            && expected != before.version
        {
            return Err(StoreError::VersionConflict {
                id: *id,
                expected,
                actual: before.version,
            });
        }
        let mut target = before.clone();
        if let Some(v) = &update.name {
            target.name.clone_from(v);
        }
        if let Some(v) = &update.owner {
            target.owner.clone_from(v);
        }
        if let Some(v) = &update.team {
            target.team.clone_from(v);
        }
        if let Some(v) = &update.description {
            target.description.clone_from(v);
        }
        if let Some(v) = &update.labels {
            target.labels.clone_from(v);
        }
        if let Some(v) = update.expires_at {
            if let Some(t) = v
                && t <= now
                && Some(t) != before.expires_at
            {
                return Err(StoreError::invalid("expires_at", "must be in the future"));
            }
            target.expires_at = v;
        }
        target.scope = update.scope.apply(&before.scope);
        let changes = diff(Some(&before), &target)?;
        if changes.is_empty() {
            // Dropping the transaction rolls the generation bump back.
            return Ok(Updated {
                after: before.clone(),
                before,
                changed: Vec::new(),
            });
        }
        let now_ms = to_ms(now);
        sqlx::query(
            "UPDATE keys SET name = $1, owner = $2, team = $3, description = $4, \
             labels_json = $5, scope_json = $6, expires_at = $7, updated_at = $8, \
             version = version + 1 WHERE id = $9",
        )
        .bind(target.name.as_str())
        .bind(target.owner.as_str())
        .bind(target.team.clone())
        .bind(target.description.as_str())
        .bind(to_json("labels", &target.labels)?)
        .bind(to_json("scope", &target.scope)?)
        .bind(target.expires_at.map(to_ms))
        .bind(now_ms)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(|e| store.db_err(e))?;
        let changed = changes.keys().cloned().collect();
        let event = KeyEvent {
            v: KEY_EVENT_VERSION,
            kind: KeyEventKind::Updated,
            key_id: *id,
            at_ms: now_ms,
            actor: actor.clone(),
            generation,
            changes,
            reason: None,
        };
        outbox::insert(&mut tx, &event).await?;
        let after = get_in(store, &mut tx, id)
            .await?
            .ok_or(StoreError::KeyNotFound { id: *id })?;
        commit(store, tx, generation).await?;
        Ok(Updated {
            before,
            after,
            changed,
        })
    }

    /// Issues a new secret under the same key ID. The old secret keeps
    /// working for `grace` (zero: it stops at once) and then authenticates
    /// as rotated out.
    ///
    /// **Idempotency.** With `rotation_id` (16 to 128 bytes, such as a UUID
    /// per rotation request), a retry returns the same key and the same
    /// secret and writes nothing: the secret is re-derived from the pepper,
    /// key ID and rotation ID (see [`crate::minter`] for why and at what
    /// cost), so there is only ever one new secret per rotation ID. The
    /// retry's `grace` is ignored; the first attempt's stands. A retry after
    /// a later rotation fails with [`StoreError::RotationSuperseded`]
    /// instead of handing out a secret that is on its way out. Without
    /// `rotation_id` the secret is random and every call rotates.
    ///
    /// **Overlapping rotations.** A rotation while an earlier one is still
    /// in grace is allowed. The earlier old secret keeps its own grace, but
    /// never beyond the new rotation's: every rotated-out secret of the key
    /// ends its grace by `now + grace` at the latest. So a grace-0 rotation
    /// after a leak kills every older secret at once, and the number of
    /// valid secrets stays bounded by the rotation rate.
    ///
    /// Revoked keys cannot be rotated.
    pub fn rotate(
        &self,
        minter: &KeyMinter,
        id: KeyId,
        grace: Duration,
        rotation_id: Option<&str>,
        actor: &Actor,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> impl Future<Output = Result<(KeyRecord, SecretString)>> + Send + 's {
        let prepared = match rotation_id {
            Some(rid) => validate_rotation_id(rid).map(|()| {
                let (issued, reference) = minter.derive_rotation(&id, rid);
                (issued, Some(reference))
            }),
            None => Ok((minter.issue(rng), None)),
        };
        let actor = actor.clone();
        let store = self.store;
        async move {
            let (issued, reference) = prepared?;
            rotate(store, id, grace, issued, reference, actor).await
        }
    }

    /// Revokes a key, finally: it stops authenticating as soon as gateways
    /// see the change, and cannot be updated or rotated afterwards.
    /// Revoking a revoked key changes nothing and reports `already_revoked`.
    pub async fn revoke(&self, id: &KeyId, actor: &Actor, reason: &str) -> Result<RevokeOutcome> {
        let store = self.store;
        validate_actor(actor)?;
        check_text("reason", reason, 0, 1024, true)?;
        let (mut tx, generation) = begin_change(store).await?;
        let before = get_in(store, &mut tx, id)
            .await?
            .ok_or(StoreError::KeyNotFound { id: *id })?;
        if before.revoked.is_some() {
            return Ok(RevokeOutcome {
                record: before,
                already_revoked: true,
            });
        }
        let now_ms = to_ms(store.clock.now());
        sqlx::query(
            "UPDATE keys SET revoked_at = $1, revoked_by_json = $2, revoke_reason = $3, \
             updated_at = $1, version = version + 1 WHERE id = $4",
        )
        .bind(now_ms)
        .bind(to_json("actor", actor)?)
        .bind(reason)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(|e| store.db_err(e))?;
        let mut changes = BTreeMap::new();
        changes.insert(
            "revoked_at".to_owned(),
            FieldChange {
                before: Value::Null,
                after: Value::from(now_ms),
            },
        );
        let event = KeyEvent {
            v: KEY_EVENT_VERSION,
            kind: KeyEventKind::Revoked,
            key_id: *id,
            at_ms: now_ms,
            actor: actor.clone(),
            generation,
            changes,
            reason: Some(reason.to_owned()),
        };
        outbox::insert(&mut tx, &event).await?;
        let record = get_in(store, &mut tx, id)
            .await?
            .ok_or(StoreError::KeyNotFound { id: *id })?;
        commit(store, tx, generation).await?;
        Ok(RevokeOutcome {
            record,
            already_revoked: false,
        })
    }

    /// Records when keys were last used, in one transaction with one
    /// statement per 500 keys, for a server that collects uses in memory and
    /// flushes them periodically. A key's time only moves forward; unknown
    /// IDs are ignored. Returns how many keys changed.
    pub async fn touch_last_used(&self, batch: &[(KeyId, SystemTime)]) -> Result<u64> {
        let store = self.store;
        let mut latest: BTreeMap<KeyId, i64> = BTreeMap::new();
        for (id, at) in batch {
            let ms = to_ms(*at);
            latest
                .entry(*id)
                .and_modify(|m| *m = (*m).max(ms))
                .or_insert(ms);
        }
        if latest.is_empty() {
            return Ok(0);
        }
        let rows: Vec<(KeyId, i64)> = latest.into_iter().collect();
        let mut tx = store.pool.begin().await.map_err(|e| store.db_err(e))?;
        let mut changed = 0;
        for chunk in rows.chunks(BATCH_ROWS) {
            let values = placeholders(chunk.len(), 2);
            let sql = format!(
                "UPDATE keys SET last_used_at = v.column2 FROM (VALUES {values}) AS v \
                 WHERE keys.id = v.column1 \
                 AND (keys.last_used_at IS NULL OR keys.last_used_at < v.column2)"
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (id, ms) in chunk {
                q = q.bind(id.as_str()).bind(*ms);
            }
            changed += q
                .execute(&mut *tx)
                .await
                .map_err(|e| store.db_err(e))?
                .rows_affected();
        }
        tx.commit().await.map_err(|e| store.db_err(e))?;
        Ok(changed)
    }

    /// Adds token usage to the per-key, per-UTC-day counters, in one
    /// transaction. Deltas for unknown keys are dropped.
    pub async fn add_usage(&self, batch: &[UsageDelta]) -> Result<()> {
        let store = self.store;
        let mut sums: BTreeMap<(KeyId, i64), i64> = BTreeMap::new();
        for d in batch {
            let tokens = i64::try_from(d.tokens).unwrap_or(i64::MAX);
            let slot = sums.entry((d.key_id, day_start(to_ms(d.at)))).or_insert(0);
            *slot = slot.saturating_add(tokens);
        }
        sums.retain(|_, t| *t > 0);
        if sums.is_empty() {
            return Ok(());
        }
        let rows: Vec<((KeyId, i64), i64)> = sums.into_iter().collect();
        let mut tx = store.pool.begin().await.map_err(|e| store.db_err(e))?;
        for chunk in rows.chunks(BATCH_ROWS) {
            let values = placeholders(chunk.len(), 3);
            // The WHERE clause also resolves SQLite's parsing ambiguity
            // between `SELECT … ON CONFLICT` and a join constraint.
            let sql = format!(
                "INSERT INTO usage_counters (key_id, period_start, tokens) \
                 SELECT v.column1, v.column2, v.column3 FROM (VALUES {values}) AS v \
                 WHERE EXISTS (SELECT 1 FROM keys k WHERE k.id = v.column1) \
                 ON CONFLICT (key_id, period_start) \
                 DO UPDATE SET tokens = usage_counters.tokens + excluded.tokens"
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for ((id, day), tokens) in chunk {
                q = q.bind(id.as_str()).bind(*day).bind(*tokens);
            }
            q.execute(&mut *tx).await.map_err(|e| store.db_err(e))?;
        }
        tx.commit().await.map_err(|e| store.db_err(e))?;
        Ok(())
    }

    /// Tokens the key used in the budget period that contains the store
    /// clock's now.
    pub async fn usage_in_period(
        &self,
        id: &KeyId,
        period: custos_auth::scope::BudgetPeriod,
    ) -> Result<PeriodUsage> {
        let store = self.store;
        let start = period_start(period, to_ms(store.clock.now()));
        let tokens: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(tokens), 0) AS BIGINT) FROM usage_counters \
             WHERE key_id = $1 AND period_start >= $2",
        )
        .bind(id.as_str())
        .bind(start)
        .fetch_one(&store.pool)
        .await
        .map_err(|e| store.db_err(e))?;
        Ok(PeriodUsage {
            start: from_ms(start),
            tokens: u64::try_from(tokens).unwrap_or(0),
        })
    }

    /// The current key generation: bumped by every key-changing commit. A
    /// server polls this every few seconds as a backstop to the marker file.
    pub async fn generation(&self) -> Result<i64> {
        sqlx::query_scalar("SELECT keys_generation FROM store_meta WHERE id = 1")
            .fetch_one(&self.store.pool)
            .await
            .map_err(|e| self.store.db_err(e))
    }

    /// Everything the gateway needs to authenticate: every stored secret
    /// hash with its key's scope and state, in two queries.
    pub async fn load_auth_snapshot(&self) -> Result<AuthSnapshot> {
        let store = self.store;
        let mut tx = store.pool.begin().await.map_err(|e| store.db_err(e))?;
        // Generation first: the rows read next are at least this new.
        let generation: i64 =
            sqlx::query_scalar("SELECT keys_generation FROM store_meta WHERE id = 1")
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| store.db_err(e))?;
        let rows = sqlx::query(
            "SELECT s.hash, s.not_after, k.id, k.name, k.owner, k.team, k.scope_json, \
             k.expires_at, k.revoked_at, s.created_at \
             FROM key_secrets s JOIN keys k ON k.id = s.key_id ORDER BY k.id",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| store.db_err(e))?;
        tx.commit().await.map_err(|e| store.db_err(e))?;

        let mut snapshot = AuthSnapshot {
            generation,
            entries: HashMap::with_capacity(rows.len()),
            unreadable: Vec::new(),
        };
        let mut keys: HashMap<KeyId, Option<Arc<AuthKey>>> = HashMap::new();
        for row in &rows {
            let id_text: String = row.try_get(2).map_err(|e| store.db_err(e))?;
            let id = parse_id(&id_text)?;
            let key = match keys.get(&id) {
                Some(k) => k.clone(),
                None => {
                    let k = match auth_key_from_row(id, row) {
                        Ok(k) => Some(Arc::new(k)),
                        Err(reason) => {
                            snapshot.unreadable.push((id, reason));
                            None
                        }
                    };
                    keys.insert(id, k.clone());
                    k
                }
            };
            let Some(key) = key else { continue };
            let hash_text: String = row.try_get(0).map_err(|e| store.db_err(e))?;
            let Ok(hash) = KeyHash::from_hex(&hash_text) else {
                snapshot
                    .unreadable
                    .push((id, "a stored secret hash is malformed".to_owned()));
                continue;
            };
            let not_after: Option<i64> = row.try_get(1).map_err(|e| store.db_err(e))?;
            let issued_at: i64 = row.try_get(9).map_err(|e| store.db_err(e))?;
            snapshot.entries.insert(
                hash,
                AuthEntry {
                    hash,
                    key,
                    issued_at: from_ms(issued_at),
                    not_after: not_after.map(from_ms),
                },
            );
        }
        Ok(snapshot)
    }
}

enum Arg {
    I64(i64),
    Text(String),
}

/// `($1, $2), ($3, $4), …` for `rows` rows of `cols` columns.
fn placeholders(rows: usize, cols: usize) -> String {
    let mut s = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push_str(", ");
            }
            s.push_str(&format!("${}", r * cols + c + 1));
        }
        s.push(')');
    }
    s
}

/// `%needle%` with LIKE's metacharacters escaped, lowercased for ASCII.
fn like_pattern(needle: &str) -> String {
    let mut p = String::with_capacity(needle.len() + 2);
    p.push('%');
    for c in needle.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c.to_ascii_lowercase());
    }
    p.push('%');
    p
}

fn to_json(field: &'static str, v: &impl Serialize) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::invalid(field, format!("cannot encode: {e}")))
}

fn to_value(field: &'static str, v: &impl Serialize) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| StoreError::invalid(field, format!("cannot encode: {e}")))
}

fn parse_id(text: &str) -> Result<KeyId> {
    KeyId::parse(text).map_err(|e| StoreError::CorruptRow {
        table: "keys",
        id: text.chars().take(64).collect(),
        reason: e.to_string(),
    })
}

/// Starts a key-changing transaction by bumping the generation; see the
/// module docs for why this comes first.
async fn begin_change(store: &Store) -> Result<(Transaction<'static, Any>, i64)> {
    let mut tx = store.pool.begin().await.map_err(|e| store.db_err(e))?;
    let generation: i64 = sqlx::query_scalar(
        "UPDATE store_meta SET keys_generation = keys_generation + 1 WHERE id = 1 \
         RETURNING keys_generation",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| store.db_err(e))?;
    Ok((tx, generation))
}

/// Commits, then signals other processes (in that order; see
/// [`crate::watch`]).
async fn commit(store: &Store, tx: Transaction<'static, Any>, generation: i64) -> Result<()> {
    tx.commit().await.map_err(|e| store.db_err(e))?;
    store.signal(generation);
    Ok(())
}

async fn get_in(store: &Store, conn: &mut AnyConnection, id: &KeyId) -> Result<Option<KeyRecord>> {
    let now = to_ms(store.clock.now());
    let sql = format!("{SELECT_KEY} WHERE k.id = $2");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(now)
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| store.db_err(e))?;
    row.as_ref().map(record_from_row).transpose()
}

async fn create(
    store: &Store,
    new: NewKey,
    actor: Actor,
    issued: IssuedKey,
) -> Result<(KeyRecord, SecretString)> {
    validate_actor(&actor)?;
    validate_new(&new)?;
    let now = store.clock.now();
    if new.expires_at.is_some_and(|t| t <= now) {
        return Err(StoreError::invalid("expires_at", "must be in the future"));
    }
    let now_ms = to_ms(now);
    let id = issued.id;
    let (mut tx, generation) = begin_change(store).await?;
    sqlx::query(
        "INSERT INTO keys (id, name, owner, team, description, labels_json, scope_json, \
         created_at, created_by_json, updated_at, expires_at, revoked_at, revoked_by_json, \
         revoke_reason, last_used_at, version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $8, $10, NULL, NULL, NULL, NULL, 1)",
    )
    .bind(id.as_str())
    .bind(new.name.as_str())
    .bind(new.owner.as_str())
    .bind(new.team.clone())
    .bind(new.description.as_str())
    .bind(to_json("labels", &new.labels)?)
    .bind(to_json("scope", &new.scope)?)
    .bind(now_ms)
    .bind(to_json("actor", &actor)?)
    .bind(new.expires_at.map(to_ms))
    .execute(&mut *tx)
    .await
    .map_err(|e| store.db_err(e))?;
    // The event goes in before the secret row: a failure anywhere up to the
    // commit, including after the event, rolls back all three.
    let record_for_event = KeyRecord {
        id,
        name: new.name.clone(),
        owner: new.owner.clone(),
        team: new.team.clone(),
        description: new.description.clone(),
        labels: new.labels.clone(),
        scope: new.scope.clone(),
        created_at: from_ms(now_ms),
        created_by: actor.clone(),
        updated_at: from_ms(now_ms),
        expires_at: new.expires_at.map(|t| from_ms(to_ms(t))),
        revoked: None,
        last_used_at: None,
        masked: issued.masked.clone(),
        secret_created_at: from_ms(now_ms),
        grace_until: None,
        version: 1,
    };
    let event = KeyEvent {
        v: KEY_EVENT_VERSION,
        kind: KeyEventKind::Created,
        key_id: id,
        at_ms: now_ms,
        actor,
        generation,
        changes: diff(None, &record_for_event)?,
        reason: None,
    };
    outbox::insert(&mut tx, &event).await?;
    insert_secret(store, &mut tx, &id, &issued, now_ms, None).await?;
    let record = get_in(store, &mut tx, &id)
        .await?
        .ok_or(StoreError::KeyNotFound { id })?;
    commit(store, tx, generation).await?;
    Ok((record, issued.secret))
}

async fn insert_secret(
    store: &Store,
    conn: &mut AnyConnection,
    id: &KeyId,
    issued: &IssuedKey,
    now_ms: i64,
    rotation_ref: Option<String>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO key_secrets (hash, key_id, masked, created_at, not_after, rotation_ref) \
         VALUES ($1, $2, $3, $4, NULL, $5)",
    )
    .bind(issued.hash.to_hex())
    .bind(id.as_str())
    .bind(issued.masked.as_str())
    .bind(now_ms)
    .bind(rotation_ref)
    .execute(&mut *conn)
    .await
    .map_err(|e| store.db_err(e))?;
    Ok(())
}

async fn rotate(
    store: &Store,
    id: KeyId,
    grace: Duration,
    issued: IssuedKey,
    reference: Option<String>,
    actor: Actor,
) -> Result<(KeyRecord, SecretString)> {
    validate_actor(&actor)?;
    if grace > MAX_GRACE {
        return Err(StoreError::invalid(
            "grace",
            format!("is {}s, at most {}s", grace.as_secs(), MAX_GRACE.as_secs()),
        ));
    }
    let (mut tx, generation) = begin_change(store).await?;
    let before = get_in(store, &mut tx, &id)
        .await?
        .ok_or(StoreError::KeyNotFound { id })?;
    if before.revoked.is_some() {
        return Err(StoreError::KeyRevoked { id });
    }
    if let Some(reference) = &reference {
        let previous = sqlx::query(
            "SELECT hash, not_after FROM key_secrets WHERE key_id = $1 AND rotation_ref = $2",
        )
        .bind(id.as_str())
        .bind(reference.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| store.db_err(e))?;
        if let Some(row) = previous {
            // A retry: write nothing (dropping `tx` rolls the generation
            // bump back) and hand out the same secret again.
            let hash: String = row.try_get(0).map_err(|e| store.db_err(e))?;
            let not_after: Option<i64> = row.try_get(1).map_err(|e| store.db_err(e))?;
            if not_after.is_some() {
                return Err(StoreError::RotationSuperseded { id });
            }
            if !KeyHash::from_hex(&hash).is_ok_and(|h| h.ct_eq(&issued.hash)) {
                return Err(StoreError::RotationNotReproducible { id });
            }
            return Ok((before, issued.secret));
        }
    }
    let now_ms = to_ms(store.clock.now());
    let until = now_ms.saturating_add(dur_ms(grace));
    // Older secrets still in grace end no later than this rotation's grace.
    let shortened =
        sqlx::query("UPDATE key_secrets SET not_after = $1 WHERE key_id = $2 AND not_after > $1")
            .bind(until)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| store.db_err(e))?
            .rows_affected();
    sqlx::query("UPDATE key_secrets SET not_after = $1 WHERE key_id = $2 AND not_after IS NULL")
        .bind(until)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(|e| store.db_err(e))?;
    let mut changes = BTreeMap::new();
    let mut add = |name: &str, before: Value, after: Value| {
        changes.insert(name.to_owned(), FieldChange { before, after });
    };
    add(
        "secret",
        Value::from(before.masked.as_str()),
        Value::from(issued.masked.as_str()),
    );
    add("previous_secret_not_after", Value::Null, Value::from(until));
    add("grace_ms", Value::Null, Value::from(dur_ms(grace)));
    if let Some(r) = &reference {
        add("rotation_ref", Value::Null, Value::from(r.as_str()));
    }
    if shortened > 0 {
        add(
            "older_graces_shortened",
            Value::Null,
            Value::from(shortened),
        );
    }
    let event = KeyEvent {
        v: KEY_EVENT_VERSION,
        kind: KeyEventKind::Rotated,
        key_id: id,
        at_ms: now_ms,
        actor,
        generation,
        changes,
        reason: None,
    };
    outbox::insert(&mut tx, &event).await?;
    insert_secret(store, &mut tx, &id, &issued, now_ms, reference).await?;
    sqlx::query("UPDATE keys SET updated_at = $1, version = version + 1 WHERE id = $2")
        .bind(now_ms)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(|e| store.db_err(e))?;
    let after = get_in(store, &mut tx, &id)
        .await?
        .ok_or(StoreError::KeyNotFound { id })?;
    commit(store, tx, generation).await?;
    Ok((after, issued.secret))
}

/// The audited fields of a key, as JSON, for before/after diffs.
fn audited_fields(r: &KeyRecord) -> Result<BTreeMap<&'static str, Value>> {
    let mut m = BTreeMap::new();
    m.insert("name", Value::from(r.name.as_str()));
    m.insert("owner", Value::from(r.owner.as_str()));
    m.insert("team", r.team.as_deref().map_or(Value::Null, Value::from));
    m.insert("description", Value::from(r.description.as_str()));
    m.insert("labels", to_value("labels", &r.labels)?);
    m.insert("scope", to_value("scope", &r.scope)?);
    m.insert(
        "expires_at",
        r.expires_at.map_or(Value::Null, |t| Value::from(to_ms(t))),
    );
    m.insert("secret", Value::from(r.masked.as_str()));
    Ok(m)
}

/// The fields that differ between `before` (absent: all null) and `after`.
fn diff(before: Option<&KeyRecord>, after: &KeyRecord) -> Result<BTreeMap<String, FieldChange>> {
    let old = before.map(audited_fields).transpose()?.unwrap_or_default();
    let new = audited_fields(after)?;
    Ok(new
        .into_iter()
        .filter_map(|(name, after)| {
            let before = old.get(name).cloned().unwrap_or(Value::Null);
            (before != after).then(|| (name.to_owned(), FieldChange { before, after }))
        })
        .collect())
}

fn corrupt(id: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::CorruptRow {
        table: "keys",
        id: id.chars().take(64).collect(),
        reason: reason.to_string(),
    }
}

fn record_from_row(row: &AnyRow) -> Result<KeyRecord> {
    let db = StoreError::Database;
    let id_text: String = row.try_get(0).map_err(db)?;
    let id = parse_id(&id_text)?;
    let labels_json: String = row.try_get(5).map_err(db)?;
    let scope_json: String = row.try_get(6).map_err(db)?;
    let created_by_json: String = row.try_get(8).map_err(db)?;
    let revoked_at: Option<i64> = row.try_get(11).map_err(db)?;
    let revoked_by_json: Option<String> = row.try_get(12).map_err(db)?;
    let revoke_reason: Option<String> = row.try_get(13).map_err(db)?;
    let version: i64 = row.try_get(15).map_err(db)?;
    let masked: Option<String> = row.try_get(16).map_err(db)?;
    let secret_created_at: Option<i64> = row.try_get(17).map_err(db)?;
    let revoked = match revoked_at {
        None => None,
        Some(at) => Some(Revocation {
            at: from_ms(at),
            by: serde_json::from_str(revoked_by_json.as_deref().unwrap_or("null"))
                .map_err(|e| corrupt(&id_text, format!("revoked_by: {e}")))?,
            reason: revoke_reason.unwrap_or_default(),
        }),
    };
    let (Some(masked), Some(secret_created_at)) = (masked, secret_created_at) else {
        return Err(corrupt(&id_text, "the key has no current secret"));
    };
    Ok(KeyRecord {
        id,
        name: row.try_get(1).map_err(db)?,
        owner: row.try_get(2).map_err(db)?,
        team: row.try_get(3).map_err(db)?,
        description: row.try_get(4).map_err(db)?,
        labels: serde_json::from_str(&labels_json)
            .map_err(|e| corrupt(&id_text, format!("labels: {e}")))?,
        scope: serde_json::from_str(&scope_json)
            .map_err(|e| corrupt(&id_text, format!("scope: {e}")))?,
        created_at: from_ms(row.try_get(7).map_err(db)?),
        created_by: serde_json::from_str(&created_by_json)
            .map_err(|e| corrupt(&id_text, format!("created_by: {e}")))?,
        updated_at: from_ms(row.try_get(9).map_err(db)?),
        expires_at: row.try_get::<Option<i64>, _>(10).map_err(db)?.map(from_ms),
        revoked,
        last_used_at: row.try_get::<Option<i64>, _>(14).map_err(db)?.map(from_ms),
        masked,
        secret_created_at: from_ms(secret_created_at),
        grace_until: row.try_get::<Option<i64>, _>(18).map_err(db)?.map(from_ms),
        version: u64::try_from(version).unwrap_or(0),
    })
}

/// The per-key part of a snapshot row; the error is a reason for
/// [`AuthSnapshot::unreadable`].
fn auth_key_from_row(id: KeyId, row: &AnyRow) -> std::result::Result<AuthKey, String> {
    let get_err = |e: sqlx::Error| e.to_string();
    let scope_json: String = row.try_get(6).map_err(get_err)?;
    Ok(AuthKey {
        id,
        name: row.try_get(3).map_err(get_err)?,
        owner: row.try_get(4).map_err(get_err)?,
        team: row.try_get(5).map_err(get_err)?,
        scope: serde_json::from_str(&scope_json).map_err(|e| format!("scope: {e}"))?,
        expires_at: row
            .try_get::<Option<i64>, _>(7)
            .map_err(get_err)?
            .map(from_ms),
        revoked_at: row
            .try_get::<Option<i64>, _>(8)
            .map_err(get_err)?
            .map(from_ms),
    })
}

/// Checks a free-text field: length bounds in bytes, and no control
/// characters (newlines allowed only where `multiline`).
fn check_text(field: &'static str, v: &str, min: usize, max: usize, multiline: bool) -> Result<()> {
    if v.len() < min || v.len() > max {
        return Err(StoreError::invalid(
            field,
            if min > 0 {
                format!("is {} bytes long, expected {min} to {max}", v.len())
            } else {
                format!("is {} bytes long, at most {max}", v.len())
            },
        ));
    }
    if let Some(position) = v
        .char_indices()
        .find(|(_, c)| c.is_control() && !(multiline && matches!(c, '\n' | '\t')))
        .map(|(i, _)| i)
    {
        return Err(StoreError::invalid(
            field,
            format!("has a control character at byte {position}"),
        ));
    }
    Ok(())
}

fn validate_actor(actor: &Actor) -> Result<()> {
    check_text("actor.name", &actor.name, 1, Actor::MAX_NAME_LEN, false)
}

fn validate_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    if labels.len() > 64 {
        return Err(StoreError::invalid(
            "labels",
            format!("has {} entries, at most 64", labels.len()),
        ));
    }
    for (k, v) in labels {
        let ok = (1..=63).contains(&k.len())
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'));
        if !ok {
            return Err(StoreError::invalid(
                "labels",
                format!("key {k:?} must be 1 to 63 bytes of [A-Za-z0-9._/-]"),
            ));
        }
        check_text("labels", v, 0, 256, false)?;
    }
    Ok(())
}

fn validate_new(new: &NewKey) -> Result<()> {
    check_text("name", &new.name, 1, 128, false)?;
    check_text("owner", &new.owner, 1, 256, false)?;
    if let Some(team) = &new.team {
        check_text("team", team, 1, 128, false)?;
    }
    check_text("description", &new.description, 0, 1024, true)?;
    validate_labels(&new.labels)
}

fn validate_update(u: &KeyUpdate) -> Result<()> {
    if let Some(v) = &u.name {
        check_text("name", v, 1, 128, false)?;
    }
    if let Some(v) = &u.owner {
        check_text("owner", v, 1, 256, false)?;
    }
    if let Some(Some(v)) = &u.team {
        check_text("team", v, 1, 128, false)?;
    }
    if let Some(v) = &u.description {
        check_text("description", v, 0, 1024, true)?;
    }
    if let Some(v) = &u.labels {
        validate_labels(v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_rows_then_columns() {
        assert_eq!(placeholders(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(placeholders(1, 2), "($1, $2)");
    }

    #[test]
    fn like_patterns_escape_metacharacters() {
        assert_eq!(like_pattern("Ab_%\\"), "%ab\\_\\%\\\\%");
    }

    #[test]
    fn text_checks() {
        assert!(check_text("name", "ok", 1, 10, false).is_ok());
        assert_eq!(
            check_text("name", "", 1, 10, false)
                .unwrap_err()
                .to_string(),
            "name: is 0 bytes long, expected 1 to 10"
        );
        assert_eq!(
            check_text("name", "a\nb", 1, 10, false)
                .unwrap_err()
                .to_string(),
            "name: has a control character at byte 1"
        );
        assert!(check_text("description", "a\nb", 0, 10, true).is_ok());
        let mut labels = BTreeMap::new();
        labels.insert("env".to_owned(), "prod".to_owned());
        assert!(validate_labels(&labels).is_ok());
        labels.insert("Bad Key".to_owned(), String::new());
        assert!(validate_labels(&labels).is_err());
    }
}
