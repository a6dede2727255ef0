//! Admin API tokens: created by a signed-in user with MFA, carrying a role
//! and an expiry, stored by the SHA-256 of the token, revocable. Creation
//! and revocation are audited in the same transaction.

use std::time::SystemTime;

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::Store;
use crate::actor::Actor;
use crate::error::{Result, StoreError};
use crate::outbox::{AdminEvent, insert_event};
use crate::time::{from_ms, to_ms};
use crate::users::Role;

/// A new token. The token itself is shown once and never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    /// `tok_…`.
    pub id: String,
    /// SHA-256 (hex) of the token.
    pub token_hash: String,
    /// What it is for, 1 to 128 bytes.
    pub name: String,
    /// The role requests made with it act in.
    pub role: Role,
    /// The user it belongs to; it stops working when they are disabled.
    pub user_id: String,
    /// When it stops working.
    pub expires_at: SystemTime,
}

/// A stored token, without its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// `tok_…`.
    pub id: String,
    /// What it is for.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its owner.
    pub user_id: String,
    /// The owner's user name.
    pub username: String,
    /// When created.
    pub created_at: SystemTime,
    /// When it stops working.
    pub expires_at: SystemTime,
    /// When revoked, if revoked.
    pub revoked_at: Option<SystemTime>,
    /// When it was last used.
    pub last_used_at: Option<SystemTime>,
}

impl TokenRecord {
    /// Whether the token authenticates at `now`.
    pub fn is_usable(&self, now: SystemTime) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

/// Token operations on a [`Store`]; get one with [`Store::tokens`].
#[derive(Debug, Clone, Copy)]
pub struct Tokens<'s> {
    store: &'s Store,
}

const SELECT_TOKEN: &str = "SELECT t.id, t.name, t.role, t.user_id, u.username, t.created_at, \
     t.expires_at, t.revoked_at, t.last_used_at FROM console_tokens t \
     JOIN console_users u ON u.id = t.user_id";

fn token_from_row(row: &AnyRow) -> Result<TokenRecord> {
    let get = || -> std::result::Result<TokenRecord, sqlx::Error> {
        let role: String = row.try_get(2)?;
        Ok(TokenRecord {
            id: row.try_get(0)?,
            name: row.try_get(1)?,
            role: Role::parse(&role).ok_or_else(|| sqlx::Error::Decode(role.into()))?,
            user_id: row.try_get(3)?,
            username: row.try_get(4)?,
            created_at: from_ms(row.try_get(5)?),
            expires_at: from_ms(row.try_get(6)?),
            revoked_at: row.try_get::<Option<i64>, _>(7)?.map(from_ms),
            last_used_at: row.try_get::<Option<i64>, _>(8)?.map(from_ms),
        })
    };
    get().map_err(|e| StoreError::CorruptRow {
        table: "console_tokens",
        id: row.try_get::<String, _>(0).unwrap_or_default(),
        reason: e.to_string(),
    })
}

impl<'s> Tokens<'s> {
    pub(crate) fn new(store: &'s Store) -> Self {
        Tokens { store }
    }

    /// Stores a token and records `admin_token.created`.
    pub async fn create(&self, token: &NewToken, actor: &Actor) -> Result<TokenRecord> {
        let store = self.store;
        if token.name.trim().is_empty() || token.name.len() > 128 {
            return Err(StoreError::invalid("name", "must be 1 to 128 bytes"));
        }
        let now = store.clock.now();
        if token.expires_at <= now {
            return Err(StoreError::invalid("expires_at", "must be in the future"));
        }
        let mut tx = crate::users::begin_write(store).await?;
        sqlx::query(
            "INSERT INTO console_tokens (id, token_hash, name, role, user_id, created_at, \
             expires_at, revoked_at, last_used_at) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL)",
        )
        .bind(token.id.as_str())
        .bind(token.token_hash.as_str())
        .bind(token.name.as_str())
        .bind(token.role.as_str())
        .bind(token.user_id.as_str())
        .bind(to_ms(now))
        .bind(to_ms(token.expires_at))
        .execute(&mut *tx)
        .await
        .map_err(|e| store.db_err(e))?;
        let event = AdminEvent::new("admin_token.created", actor.clone(), now)
            .target("admin_token", token.id.as_str())
            .set("name", token.name.as_str())
            .set("role", token.role.as_str())
            .set("owner", token.user_id.as_str())
            .set("expires_at_ms", to_ms(token.expires_at));
        insert_event(&mut tx, &event).await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_TOKEN} WHERE t.id = $1"
        )))
        .bind(token.id.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| store.db_err(e))?;
        let record = token_from_row(&row)?;
        tx.commit().await.map_err(|e| store.db_err(e))?;
        Ok(record)
    }

    /// Tokens of one user, or of everyone, newest first.
    pub async fn list(&self, user_id: Option<&str>) -> Result<Vec<TokenRecord>> {
        let rows = match user_id {
            Some(u) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{SELECT_TOKEN} WHERE t.user_id = $1 ORDER BY t.created_at DESC, t.id"
                )))
                .bind(u)
                .fetch_all(&self.store.pool)
                .await
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{SELECT_TOKEN} ORDER BY t.created_at DESC, t.id"
                )))
                .fetch_all(&self.store.pool)
                .await
            }
        }
        .map_err(|e| self.store.db_err(e))?;
        rows.iter().map(token_from_row).collect()
    }

    /// The token with this ID.
    pub async fn get(&self, id: &str) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_TOKEN} WHERE t.id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.store.pool)
        .await
        .map_err(|e| self.store.db_err(e))?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// The token whose hash is `token_hash`, whatever its state.
    pub async fn by_hash(&self, token_hash: &str) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_TOKEN} WHERE t.token_hash = $1"
        )))
        .bind(token_hash)
        .fetch_optional(&self.store.pool)
        .await
        .map_err(|e| self.store.db_err(e))?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// Records a use (best effort, for display).
    pub async fn touch(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE console_tokens SET last_used_at = $1 WHERE id = $2")
            .bind(to_ms(self.store.clock.now()))
            .bind(id)
            .execute(&self.store.pool)
            .await
            .map_err(|e| self.store.db_err(e))?;
        Ok(())
    }

    /// Revokes a token and records `admin_token.revoked`. Returns `false`
    /// when it was already revoked.
    pub async fn revoke(&self, id: &str, actor: &Actor) -> Result<bool> {
        let store = self.store;
        let now = store.clock.now();
        let mut tx = crate::users::begin_write(store).await?;
        let exists: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM console_tokens WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| store.db_err(e))?;
        if exists == 0 {
            return Err(StoreError::TokenNotFound { id: id.to_owned() });
        }
        let n = sqlx::query(
            "UPDATE console_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(to_ms(now))
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| store.db_err(e))?
        .rows_affected();
        if n == 1 {
            let event = AdminEvent::new("admin_token.revoked", actor.clone(), now)
                .target("admin_token", id);
            insert_event(&mut tx, &event).await?;
        }
        tx.commit().await.map_err(|e| store.db_err(e))?;
        Ok(n == 1)
    }
}
