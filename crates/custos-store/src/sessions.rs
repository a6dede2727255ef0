//! Console sessions, stored by the SHA-256 of their random ID: a session
//! ID read from the database cannot be replayed as a cookie.
//!
//! The store keeps the times; the console decides what the idle and
//! absolute timeouts are and when a session is over.

use std::net::IpAddr;
use std::time::SystemTime;

use sqlx::Row;

use crate::Store;
use crate::error::{Result, StoreError};
use crate::time::{from_ms, to_ms};

/// How far a session has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionStage {
    /// The password was accepted; the TOTP code is pending.
    Mfa,
    /// The password was accepted; TOTP enrolment is pending.
    Enrol,
    /// Fully signed in, with MFA.
    Full,
}

impl SessionStage {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStage::Mfa => "mfa",
            SessionStage::Enrol => "enrol",
            SessionStage::Full => "full",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "mfa" => Some(SessionStage::Mfa),
            "enrol" => Some(SessionStage::Enrol),
            "full" => Some(SessionStage::Full),
            _ => None,
        }
    }
}

/// A stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The user.
    pub user_id: String,
    /// How far sign-in has come.
    pub stage: SessionStage,
    /// When it started.
    pub created_at: SystemTime,
    /// The last request that used it.
    pub last_seen_at: SystemTime,
    /// When it ends whatever happens (the absolute timeout).
    pub expires_at: SystemTime,
}

/// Session operations on a [`Store`]; get one with [`Store::sessions`].
#[derive(Debug, Clone, Copy)]
pub struct Sessions<'s> {
    store: &'s Store,
}

impl<'s> Sessions<'s> {
    pub(crate) fn new(store: &'s Store) -> Self {
        Sessions { store }
    }

    /// Stores a new session under `id_hash`.
    pub async fn create(
        &self,
        id_hash: &str,
        user_id: &str,
        stage: SessionStage,
        expires_at: SystemTime,
        ip: Option<IpAddr>,
    ) -> Result<()> {
        let now = to_ms(self.store.clock.now());
        sqlx::query(
            "INSERT INTO console_sessions (id_hash, user_id, stage, created_at, last_seen_at, \
             expires_at, ip) VALUES ($1, $2, $3, $4, $4, $5, $6)",
        )
        .bind(id_hash)
        .bind(user_id)
        .bind(stage.as_str())
        .bind(now)
        .bind(to_ms(expires_at))
        .bind(ip.map(|i| i.to_string()))
        .execute(&self.store.pool)
        .await
        .map_err(|e| self.store.db_err(e))?;
        Ok(())
    }

    /// The session stored under `id_hash`, if any.
    pub async fn get(&self, id_hash: &str) -> Result<Option<SessionRecord>> {
        let row = sqlx::query(
            "SELECT user_id, stage, created_at, last_seen_at, expires_at \
             FROM console_sessions WHERE id_hash = $1",
        )
        .bind(id_hash)
        .fetch_optional(&self.store.pool)
        .await
        .map_err(|e| self.store.db_err(e))?;
        let Some(row) = row else { return Ok(None) };
        let get = || -> std::result::Result<SessionRecord, sqlx::Error> {
            let stage: String = row.try_get(1)?;
            Ok(SessionRecord {
                user_id: row.try_get(0)?,
                stage: SessionStage::parse(&stage)
                    .ok_or_else(|| sqlx::Error::Decode(stage.into()))?,
                created_at: from_ms(row.try_get(2)?),
                last_seen_at: from_ms(row.try_get(3)?),
                expires_at: from_ms(row.try_get(4)?),
            })
        };
        get().map(Some).map_err(|e| StoreError::CorruptRow {
            table: "console_sessions",
            id: "(session)".into(),
            reason: e.to_string(),
        })
    }

    /// Records a request on the session, for the idle timeout.
    pub async fn touch(&self, id_hash: &str) -> Result<()> {
        sqlx::query("UPDATE console_sessions SET last_seen_at = $1 WHERE id_hash = $2")
            .bind(to_ms(self.store.clock.now()))
            .bind(id_hash)
            .execute(&self.store.pool)
            .await
            .map_err(|e| self.store.db_err(e))?;
        Ok(())
    }

    /// Ends one session. Returns whether it existed.
    pub async fn delete(&self, id_hash: &str) -> Result<bool> {
        let n = sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&self.store.pool)
            .await
            .map_err(|e| self.store.db_err(e))?
            .rows_affected();
        Ok(n > 0)
    }

    /// Removes sessions past their absolute timeout or idle since before
    /// `idle_before`. Returns how many.
    pub async fn purge(&self, idle_before: SystemTime) -> Result<u64> {
        let n =
            sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1 OR last_seen_at < $2")
                .bind(to_ms(self.store.clock.now()))
                .bind(to_ms(idle_before))
                .execute(&self.store.pool)
                .await
                .map_err(|e| self.store.db_err(e))?
                .rows_affected();
        Ok(n)
    }

    /// How many sessions a user has.
    pub async fn count_for_user(&self, user_id: &str) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM console_sessions WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(&self.store.pool)
            .await
            .map_err(|e| self.store.db_err(e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
