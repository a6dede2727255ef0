//! The durable outbox: lifecycle events written in the same transaction as
//! the change they describe, drained into the audit ledger by its single
//! writer.
//!
//! # Delivery contract: at least once, deduplicated by outbox ID
//!
//! 1. A change and its event commit together or not at all, so the ledger
//!    can never miss a change nor record one that did not happen.
//! 2. The drainer reads [`crate::Store::outbox_pending`] (oldest first),
//!    appends each event to the ledger durably, and only then calls
//!    [`crate::Store::outbox_mark_drained`].
//! 3. A crash between 2's append and its mark leaves the events pending, and
//!    they are read again on restart. The ledger record therefore carries the
//!    outbox `id` as its idempotency key, and the drainer skips IDs the
//!    ledger already holds (it needs to remember only the IDs appended since
//!    the last mark, since marking is the next thing it does).
//!
//! IDs increase with insertion, but on PostgreSQL a transaction may commit
//! after one with a higher ID, so the drainer must select by
//! `drained_at IS NULL`, as `outbox_pending` does, and never by "ID above
//! the last one seen". Events of one key are ordered: key changes serialise
//! on the generation row.

use std::collections::BTreeMap;
use std::time::SystemTime;

use custos_auth::KeyId;
use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, Row};

use crate::actor::Actor;
use crate::error::{Result, StoreError};
use crate::time::{from_ms, to_ms};

/// The current version of [`KeyEvent`]'s JSON shape.
pub const KEY_EVENT_VERSION: u32 = 1;

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyEventKind {
    /// A key was created.
    #[serde(rename = "key.created")]
    Created,
    /// A key's metadata or scope changed.
    #[serde(rename = "key.updated")]
    Updated,
    /// A key got a new secret.
    #[serde(rename = "key.rotated")]
    Rotated,
    /// A key was revoked.
    #[serde(rename = "key.revoked")]
    Revoked,
}

impl KeyEventKind {
    /// The outbox `kind` column value, such as `key.created`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyEventKind::Created => "key.created",
            KeyEventKind::Updated => "key.updated",
            KeyEventKind::Rotated => "key.rotated",
            KeyEventKind::Revoked => "key.revoked",
        }
    }
}

/// One changed field: its value before and after, as JSON. `null` stands
/// for "absent" (for example every `before` of a creation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldChange {
    /// The value before the change.
    pub before: serde_json::Value,
    /// The value after the change.
    pub after: serde_json::Value,
}

/// The payload of a key lifecycle event. It never contains a secret or a
/// secret's hash: a rotation is described by the masked forms of the old and
/// new secrets and the keyed `rotation_ref`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEvent {
    /// The payload format version, [`KEY_EVENT_VERSION`].
    pub v: u32,
    /// What happened.
    pub kind: KeyEventKind,
    /// To which key.
    pub key_id: KeyId,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// Who did it.
    pub actor: Actor,
    /// The key generation this change produced.
    pub generation: i64,
    /// What changed, by field name.
    pub changes: BTreeMap<String, FieldChange>,
    /// Free-text reason, for revocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The current version of [`AdminEvent`]'s JSON shape.
pub const ADMIN_EVENT_VERSION: u32 = 1;

/// The object of an [`AdminEvent`], such as a user or an incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTarget {
    /// Its kind, such as `user`, `admin_token` or `incident`;
    /// `[a-z0-9_.]{1,64}`.
    pub kind: String,
    /// Its identifier.
    pub id: String,
}

/// Any audited event other than a key lifecycle change: console sign-ins
/// and user changes, admin tokens, incidents, evidence packs. Written to
/// the outbox like a [`KeyEvent`] (in the transaction of the change it
/// describes, or on its own with [`crate::Store::record_event`]) and
/// drained into the ledger as an `admin` record. Like `KeyEvent`, it never
/// carries a secret, a password hash or a TOTP seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminEvent {
    /// The payload format version, [`ADMIN_EVENT_VERSION`].
    pub v: u32,
    /// The event name, such as `user.created`, `login.failed` or
    /// `incident.opened`: `[a-z0-9_.]{1,64}`, and never `key.*`. The
    /// ledger record's `action` is its last dot-separated part.
    pub kind: String,
    /// What the event is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<EventTarget>,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// Who did it.
    pub actor: Actor,
    /// What changed, by field name (`[a-z0-9_.]` names; values are JSON
    /// scalars, anything else is recorded as its JSON text).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub changes: BTreeMap<String, FieldChange>,
    /// Free-text reason or note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl AdminEvent {
    /// An event of `kind` by `actor` at `at` with no target and no changes.
    pub fn new(kind: impl Into<String>, actor: Actor, at: SystemTime) -> Self {
        AdminEvent {
            v: ADMIN_EVENT_VERSION,
            kind: kind.into(),
            target: None,
            at_ms: to_ms(at),
            actor,
            changes: BTreeMap::new(),
            reason: None,
        }
    }

    /// Sets the target.
    #[must_use]
    pub fn target(mut self, kind: impl Into<String>, id: impl Into<String>) -> Self {
        self.target = Some(EventTarget {
            kind: kind.into(),
            id: id.into(),
        });
        self
    }

    /// Adds a changed field.
    #[must_use]
    pub fn change(
        mut self,
        field: impl Into<String>,
        before: impl Into<serde_json::Value>,
        after: impl Into<serde_json::Value>,
    ) -> Self {
        self.changes.insert(
            field.into(),
            FieldChange {
                before: before.into(),
                after: after.into(),
            },
        );
        self
    }

    /// Adds a field that was set (no previous value).
    #[must_use]
    pub fn set(self, field: impl Into<String>, after: impl Into<serde_json::Value>) -> Self {
        self.change(field, serde_json::Value::Null, after)
    }

    /// Sets the reason.
    #[must_use]
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    fn validate(&self) -> Result<()> {
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
        };
        let bad = |reason: String| StoreError::Invalid {
            field: "event",
            reason,
        };
        if !ok(&self.kind) || self.kind.starts_with("key.") {
            return Err(bad(format!(
                "kind {:?} is not a valid event name",
                self.kind
            )));
        }
        if let Some(t) = &self.target
            && !ok(&t.kind)
        {
            return Err(bad(format!("target kind {:?} is not valid", t.kind)));
        }
        Ok(())
    }
}

/// A decoded outbox payload.
#[derive(Debug, Clone, PartialEq)]
pub enum OutboxEvent {
    /// A key lifecycle change (`key.*`).
    Key(KeyEvent),
    /// Anything else.
    Admin(AdminEvent),
}

/// A pending outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The row ID: increasing, unique, and the idempotency key for the
    /// ledger.
    pub id: i64,
    /// When the event was written.
    pub created_at: SystemTime,
    /// The event kind, such as `key.revoked`.
    pub kind: String,
    /// The event as JSON; for `key.*` kinds a [`KeyEvent`].
    pub payload_json: String,
}

impl OutboxEntry {
    /// Decodes the payload of a `key.*` event.
    pub fn key_event(&self) -> Result<KeyEvent> {
        serde_json::from_str(&self.payload_json).map_err(|e| StoreError::CorruptRow {
            table: "outbox",
            id: self.id.to_string(),
            reason: e.to_string(),
        })
    }

    /// Decodes the payload, whichever kind it is.
    pub fn event(&self) -> Result<OutboxEvent> {
        let corrupt = |e: serde_json::Error| StoreError::CorruptRow {
            table: "outbox",
            id: self.id.to_string(),
            reason: e.to_string(),
        };
        if self.kind.starts_with("key.") {
            self.key_event().map(OutboxEvent::Key)
        } else {
            serde_json::from_str(&self.payload_json)
                .map(OutboxEvent::Admin)
                .map_err(corrupt)
        }
    }
}

/// Appends a non-key `event` to the outbox on `conn`, which must be inside
/// the transaction that makes the change it describes. Returns the outbox
/// ID.
pub(crate) async fn insert_event(conn: &mut AnyConnection, event: &AdminEvent) -> Result<i64> {
    event.validate()?;
    let payload = serde_json::to_string(event).map_err(|e| StoreError::CorruptRow {
        table: "outbox",
        id: event.kind.clone(),
        reason: e.to_string(),
    })?;
    insert_row(conn, event.at_ms, &event.kind, payload).await
}

async fn insert_row(
    conn: &mut AnyConnection,
    at_ms: i64,
    kind: &str,
    payload: String,
) -> Result<i64> {
    let row = sqlx::query(
        "INSERT INTO outbox (created_at, kind, payload_json, drained_at) \
         VALUES ($1, $2, $3, NULL) RETURNING id",
    )
    .bind(at_ms)
    .bind(kind)
    .bind(payload)
    .fetch_one(&mut *conn)
    .await
    .map_err(StoreError::Database)?;
    row.try_get::<i64, _>(0).map_err(StoreError::Database)
}

/// Appends `event` to the outbox on `conn`, which must be inside the
/// transaction that makes the change. Returns the outbox ID.
pub(crate) async fn insert(conn: &mut AnyConnection, event: &KeyEvent) -> Result<i64> {
    let payload = serde_json::to_string(event).map_err(|e| StoreError::CorruptRow {
        table: "outbox",
        id: event.key_id.to_string(),
        reason: e.to_string(),
    })?;
    insert_row(conn, event.at_ms, event.kind.as_str(), payload).await
}

impl crate::Store {
    /// Records an event that changes nothing in the store (a failed sign-in,
    /// an evidence pack written) through the outbox, so that it reaches the
    /// ledger with the same at-least-once guarantee. Returns the outbox ID.
    pub async fn record_event(&self, event: &AdminEvent) -> Result<i64> {
        let mut conn = self.pool.acquire().await.map_err(|e| self.db_err(e))?;
        insert_event(&mut conn, event).await
    }

    /// The lifecycle events of one key, oldest first, drained or not: the
    /// history a console shows. (The ledger holds the same events for
    /// good; the outbox keeps its rows after draining.)
    pub async fn key_events(&self, id: &KeyId) -> Result<Vec<KeyEvent>> {
        // `_` is a LIKE wildcard, so this may over-match; the exact
        // comparison below filters.
        let rows = sqlx::query(
            "SELECT id, created_at, kind, payload_json FROM outbox \
             WHERE kind LIKE 'key.%' AND payload_json LIKE $1 ORDER BY id",
        )
        .bind(format!("%\"key_id\":\"{}\"%", id.as_str()))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for r in &rows {
            let entry = OutboxEntry {
                id: r.try_get(0).map_err(|e| self.db_err(e))?,
                created_at: from_ms(r.try_get(1).map_err(|e| self.db_err(e))?),
                kind: r.try_get(2).map_err(|e| self.db_err(e))?,
                payload_json: r.try_get(3).map_err(|e| self.db_err(e))?,
            };
            let event = entry.key_event()?;
            if event.key_id == *id {
                out.push(event);
            }
        }
        Ok(out)
    }

    /// Up to `limit` undrained events, oldest first.
    pub async fn outbox_pending(&self, limit: u32) -> Result<Vec<OutboxEntry>> {
        let rows = sqlx::query(
            "SELECT id, created_at, kind, payload_json FROM outbox \
             WHERE drained_at IS NULL ORDER BY id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db_err(e))?;
        rows.iter()
            .map(|r| {
                Ok(OutboxEntry {
                    id: r.try_get(0)?,
                    created_at: from_ms(r.try_get(1)?),
                    kind: r.try_get(2)?,
                    payload_json: r.try_get(3)?,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(|e| self.db_err(e))
    }

    /// Marks events as drained, after the ledger has durably appended them.
    /// IDs already drained or unknown are ignored; returns how many rows
    /// changed.
    pub async fn outbox_mark_drained(&self, ids: &[i64]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let now = to_ms(self.clock.now());
        let mut tx = self.pool.begin().await.map_err(|e| self.db_err(e))?;
        let mut changed = 0;
        for chunk in ids.chunks(500) {
            let mut sql = String::from(
                "UPDATE outbox SET drained_at = $1 WHERE drained_at IS NULL AND id IN (",
            );
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("${}", i + 2));
            }
            sql.push(')');
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
            for id in chunk {
                q = q.bind(*id);
            }
            changed += q
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db_err(e))?
                .rows_affected();
        }
        tx.commit().await.map_err(|e| self.db_err(e))?;
        Ok(changed)
    }
}
