//! Console users: invitations and setup links, password and TOTP
//! credentials, recovery codes, failed attempts and lockout, roles and
//! states. Every change writes its [`AdminEvent`] in the same transaction.
//!
//! This module stores and compares hashes and sealed values the console
//! computes; it does no cryptography of its own beyond equality checks in
//! SQL on hashes of high-entropy values. Password hashes and TOTP seeds
//! leave it only through [`Users::credentials`], whose `Debug` redacts them.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::Store;
use crate::actor::{Actor, ActorKind};
use crate::error::{Result, StoreError};
use crate::outbox::{AdminEvent, insert_event};
use crate::time::{dur_ms, from_ms, to_ms};

/// A console role. Roles are not ordered by a single "level": an auditor
/// may read the ledger, a key manager may not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Users, settings and everything else.
    Admin,
    /// Keys.
    KeyManager,
    /// Read-only keys (never secrets), the audit ledger, incidents, evidence.
    Auditor,
    /// Dashboards.
    Viewer,
}

impl Role {
    /// Every role, most powerful first.
    pub const ALL: [Role; 4] = [Role::Admin, Role::KeyManager, Role::Auditor, Role::Viewer];

    /// The stored and displayed name, such as `key_manager`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::KeyManager => "key_manager",
            Role::Auditor => "auditor",
            Role::Viewer => "viewer",
        }
    }

    /// Parses [`Role::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether a holder of `self` may hand out `other` (to a token it
    /// creates): only the same role, or `viewer`, or anything for an admin.
    pub fn may_grant(self, other: Role) -> bool {
        self == Role::Admin || self == other || other == Role::Viewer
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a user may sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UserState {
    /// May sign in.
    Active,
    /// Disabled by an admin: no sign-in, no session, no token works.
    Disabled,
}

impl UserState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            UserState::Active => "active",
            UserState::Disabled => "disabled",
        }
    }
}

/// A console user, without credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// `usr_…`.
    pub id: String,
    /// The sign-in name (lowercase).
    pub username: String,
    /// The role.
    pub role: Role,
    /// Active or disabled.
    pub state: UserState,
    /// When TOTP enrolment was confirmed; `None` means the user must enrol
    /// at next sign-in.
    pub mfa_enrolled_at: Option<SystemTime>,
    /// Failed attempts since the last success or unlock.
    pub failed_attempts: u32,
    /// Locked until then, if locked.
    pub locked_until: Option<SystemTime>,
    /// When created.
    pub created_at: SystemTime,
    /// Who created it (actor display form).
    pub created_by: String,
    /// When last changed.
    pub updated_at: SystemTime,
    /// When the password was last set.
    pub password_changed_at: SystemTime,
    /// When the user last completed a sign-in.
    pub last_login_at: Option<SystemTime>,
}

impl UserRecord {
    /// Whether the user is locked at `now`.
    pub fn is_locked(&self, now: SystemTime) -> bool {
        self.locked_until.is_some_and(|t| t > now)
    }
}

/// A user's stored credentials. `Debug` shows none of them.
#[derive(Clone)]
pub struct Credentials {
    /// The Argon2id PHC string.
    pub password_hash: String,
    /// The sealed TOTP seed, once enrolled.
    pub totp_sealed: Option<String>,
    /// The sealed seed offered during enrolment, not yet confirmed.
    pub totp_pending_sealed: Option<String>,
    /// The last accepted TOTP time step: codes of this step or earlier are
    /// refused (replay protection).
    pub totp_last_step: Option<u64>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("password_hash", &"[redacted]")
            .field("totp_enrolled", &self.totp_sealed.is_some())
            .field("totp_last_step", &self.totp_last_step)
            .finish()
    }
}

/// A new one-time link to set a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInvite {
    /// `inv_…`.
    pub id: String,
    /// SHA-256 (hex) of the link's token; the token itself is never stored.
    pub token_hash: String,
    /// The user name. `None` only for the first admin's setup link, whose
    /// redeemer chooses it.
    pub username: Option<String>,
    /// The role the new user gets (ignored for a reset).
    pub role: Role,
    /// Whether this resets the password (and MFA) of an existing user
    /// rather than creating one.
    pub reset: bool,
    /// When the link stops working.
    pub expires_at: SystemTime,
}

/// A pending invitation, as [`Users::invite`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteRecord {
    /// `inv_…`.
    pub id: String,
    /// The fixed user name, if any.
    pub username: Option<String>,
    /// The role.
    pub role: Role,
    /// Whether the user exists already (a password reset).
    pub reset: bool,
    /// When it stops working.
    pub expires_at: SystemTime,
}

/// Outcome of [`Users::record_failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureOutcome {
    /// Failed attempts so far.
    pub attempts: u32,
    /// Set when this failure locked the account, until when.
    pub locked_until: Option<SystemTime>,
}

/// User operations on a [`Store`]; get one with [`Store::users`].
#[derive(Debug, Clone, Copy)]
pub struct Users<'s> {
    store: &'s Store,
}

const SELECT_USER: &str = "SELECT id, username, role, state, totp_enrolled_at, failed_attempts, \
     locked_until, created_at, created_by, updated_at, password_changed_at, last_login_at \
     FROM console_users";

/// Checks a user name: 1 to 64 bytes of `[a-z0-9._@-]`, starting with a
/// letter or digit.
pub fn validate_username(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'@' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(StoreError::invalid(
            "username",
            "must be 1 to 64 characters of a-z, 0-9, '.', '_', '@' or '-', starting with a letter or digit",
        ))
    }
}

fn user_from_row(row: &AnyRow) -> Result<UserRecord> {
    let get = || -> std::result::Result<UserRecord, sqlx::Error> {
        let id: String = row.try_get(0)?;
        let role: String = row.try_get(2)?;
        let state: String = row.try_get(3)?;
        let role = Role::parse(&role).ok_or_else(|| sqlx::Error::Decode(role.into()))?;
        let state = match state.as_str() {
            "active" => UserState::Active,
            "disabled" => UserState::Disabled,
            other => return Err(sqlx::Error::Decode(other.to_owned().into())),
        };
        let failed: i64 = row.try_get(5)?;
        Ok(UserRecord {
            id,
            username: row.try_get(1)?,
            role,
            state,
            mfa_enrolled_at: row.try_get::<Option<i64>, _>(4)?.map(from_ms),
            failed_attempts: u32::try_from(failed).unwrap_or(u32::MAX),
            locked_until: row.try_get::<Option<i64>, _>(6)?.map(from_ms),
            created_at: from_ms(row.try_get(7)?),
            created_by: row.try_get(8)?,
            updated_at: from_ms(row.try_get(9)?),
            password_changed_at: from_ms(row.try_get(10)?),
            last_login_at: row.try_get::<Option<i64>, _>(11)?.map(from_ms),
        })
    };
    get().map_err(|e| StoreError::CorruptRow {
        table: "console_users",
        id: row.try_get::<String, _>(0).unwrap_or_default(),
        reason: e.to_string(),
    })
}

impl<'s> Users<'s> {
    pub(crate) fn new(store: &'s Store) -> Self {
        Users { store }
    }

    fn now(&self) -> SystemTime {
        self.store.clock.now()
    }

    async fn get_in(&self, conn: &mut AnyConnection, id: &str) -> Result<UserRecord> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("{SELECT_USER} WHERE id = $1")))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| self.store.db_err(e))?;
        match row {
            Some(row) => user_from_row(&row),
            None => Err(StoreError::UserNotFound { id: id.to_owned() }),
        }
    }

    /// How many users exist, in any state.
    pub async fn count(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM console_users")
            .fetch_one(&self.store.pool)
            .await
            .map_err(|e| self.store.db_err(e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Every user, by user name.
    pub async fn list(&self) -> Result<Vec<UserRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_USER} ORDER BY username"
        )))
        .fetch_all(&self.store.pool)
        .await
        .map_err(|e| self.store.db_err(e))?;
        rows.iter().map(user_from_row).collect()
    }

    /// The user with this ID.
    pub async fn get(&self, id: &str) -> Result<Option<UserRecord>> {
        let mut conn = self.conn().await?;
        match self.get_in(&mut conn, id).await {
            Ok(u) => Ok(Some(u)),
            Err(StoreError::UserNotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The user with this user name.
    pub async fn by_username(&self, username: &str) -> Result<Option<UserRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_USER} WHERE username = $1"
        )))
        .bind(username)
        .fetch_optional(&self.store.pool)
        .await
        .map_err(|e| self.store.db_err(e))?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// The stored credentials of a user.
    pub async fn credentials(&self, id: &str) -> Result<Credentials> {
        let row = sqlx::query(
            "SELECT password_hash, totp_sealed, totp_pending_sealed, totp_last_step \
             FROM console_users WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.store.pool)
        .await
        .map_err(|e| self.store.db_err(e))?
        .ok_or_else(|| StoreError::UserNotFound { id: id.to_owned() })?;
        let get = || -> std::result::Result<Credentials, sqlx::Error> {
            Ok(Credentials {
                password_hash: row.try_get(0)?,
                totp_sealed: row.try_get(1)?,
                totp_pending_sealed: row.try_get(2)?,
                totp_last_step: row
                    .try_get::<Option<i64>, _>(3)?
                    .map(|s| u64::try_from(s).unwrap_or(0)),
            })
        };
        get().map_err(|e| self.store.db_err(e))
    }

    async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>> {
        self.store
            .pool
            .acquire()
            .await
            .map_err(|e| self.store.db_err(e))
    }

    /// Stores a one-time password link. An invitation for an existing user
    /// name fails with [`StoreError::UserExists`]; a reset for a missing one
    /// with [`StoreError::UserNotFound`]. Earlier unused links for the same
    /// user name (or earlier setup links) stop working.
    pub async fn create_invite(&self, invite: &NewInvite, actor: &Actor) -> Result<()> {
        if let Some(name) = &invite.username {
            validate_username(name)?;
        }
        let store = self.store;
        let now = self.now();
        let mut tx = crate::users::begin_write(store).await?;
        if let Some(name) = &invite.username {
            let exists: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM console_users WHERE username = $1")
                    .bind(name)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| store.db_err(e))?;
            match (exists > 0, invite.reset) {
                (true, false) => return Err(StoreError::UserExists { name: name.clone() }),
                (false, true) => return Err(StoreError::UserNotFound { id: name.clone() }),
                _ => {}
            }
            sqlx::query(
                "UPDATE console_invites SET expires_at = $1 \
                 WHERE username = $2 AND used_at IS NULL AND expires_at > $1",
            )
            .bind(to_ms(now))
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(|e| store.db_err(e))?;
        } else {
            if invite.reset {
                return Err(StoreError::invalid("username", "a reset names its user"));
            }
            sqlx::query(
                "UPDATE console_invites SET expires_at = $1 \
                 WHERE username IS NULL AND used_at IS NULL AND expires_at > $1",
            )
            .bind(to_ms(now))
            .execute(&mut *tx)
            .await
            .map_err(|e| store.db_err(e))?;
        }
        sqlx::query(
            "INSERT INTO console_invites (id, token_hash, username, role, created_by, created_at, \
             expires_at, used_at) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)",
        )
        .bind(invite.id.as_str())
        .bind(invite.token_hash.as_str())
        .bind(invite.username.clone())
        .bind(if invite.reset {
            "reset"
        } else {
            invite.role.as_str()
        })
        .bind(actor.to_string())
        .bind(to_ms(now))
        .bind(to_ms(invite.expires_at))
        .execute(&mut *tx)
        .await
        .map_err(|e| store.db_err(e))?;
        let kind = if invite.reset {
            "user.password_reset_issued"
        } else if invite.username.is_none() {
            "user.setup_link_issued"
        } else {
            "user.invited"
        };
        let mut event = AdminEvent::new(kind, actor.clone(), now)
            .target(
                "user",
                invite
                    .username
                    .clone()
                    .unwrap_or_else(|| "(first admin)".into()),
            )
            .set("invite_id", invite.id.as_str())
            .set("expires_at_ms", to_ms(invite.expires_at));
        if !invite.reset {
            event = event.set("role", invite.role.as_str());
        }
        insert_event(&mut tx, &event).await?;
        tx.commit().await.map_err(|e| store.db_err(e))?;
        Ok(())
    }

    /// The unused, unexpired invitation whose token hashes to `token_hash`.
    pub async fn invite(&self, token_hash: &str) -> Result<Option<InviteRecord>> {
        let row = sqlx::query(
            "SELECT id, username, role, expires_at FROM console_invites \
             WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(token_hash)
        .bind(to_ms(self.now()))
        .fetch_optional(&self.store.pool)
        .await
        .map_err(|e| self.store.db_err(e))?;
        let Some(row) = row else { return Ok(None) };
        let role: String = row.try_get(2).map_err(|e| self.store.db_err(e))?;
        let reset = role == "reset";
        Ok(Some(InviteRecord {
            id: row.try_get(0).map_err(|e| self.store.db_err(e))?,
            username: row.try_get(1).map_err(|e| self.store.db_err(e))?,
            role: Role::parse(&role).unwrap_or(Role::Viewer),
            reset,
            expires_at: from_ms(row.try_get(3).map_err(|e| self.store.db_err(e))?),
        }))
    }

    /// Uses an invitation: creates the user (or, for a reset, replaces the
    /// password and clears MFA, recovery codes and sessions) with
    /// `password_hash`. `new_id` names a new user; `username` is used only
    /// when the invitation does not fix one. Fails with
    /// [`StoreError::InviteInvalid`] for an unknown, used or expired link.
    pub async fn redeem_invite(
        &self,
        token_hash: &str,
        new_id: &str,
        username: &str,
        password_hash: &str,
        ip: Option<IpAddr>,
    ) -> Result<UserRecord> {
        let store = self.store;
        let now = self.now();
        let now_ms = to_ms(now);
        let mut tx = crate::users::begin_write(store).await?;
        let row = sqlx::query(
            "SELECT id, username, role FROM console_invites \
             WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(token_hash)
        .bind(now_ms)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| store.db_err(e))?
        .ok_or(StoreError::InviteInvalid)?;
        let invite_id: String = row.try_get(0).map_err(|e| store.db_err(e))?;
        let fixed: Option<String> = row.try_get(1).map_err(|e| store.db_err(e))?;
        let role: String = row.try_get(2).map_err(|e| store.db_err(e))?;
        let name = fixed.unwrap_or_else(|| username.to_owned());
        validate_username(&name)?;
        let used = sqlx::query(
            "UPDATE console_invites SET used_at = $1 WHERE id = $2 AND used_at IS NULL",
        )
        .bind(now_ms)
        .bind(invite_id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(|e| store.db_err(e))?
        .rows_affected();
        if used != 1 {
            return Err(StoreError::InviteInvalid);
        }
        let actor = Actor {
            kind: ActorKind::User,
            name: name.clone(),
            mfa: false,
            ip,
            role: None,
        };
        let user_id = if role == "reset" {
            let id: String = sqlx::query_scalar("SELECT id FROM console_users WHERE username = $1")
                .bind(name.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| store.db_err(e))?
                .ok_or_else(|| StoreError::UserNotFound { id: name.clone() })?;
            sqlx::query(
                "UPDATE console_users SET password_hash = $1, totp_sealed = NULL, \
                 totp_pending_sealed = NULL, totp_enrolled_at = NULL, totp_last_step = NULL, \
                 failed_attempts = 0, locked_until = NULL, updated_at = $2, \
                 password_changed_at = $2 WHERE id = $3",
            )
            .bind(password_hash)
            .bind(now_ms)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| store.db_err(e))?;
            clear_user_secrets(store, &mut tx, &id).await?;
            let event = AdminEvent::new("user.password_reset", actor, now)
                .target("user", id.as_str())
                .set("invite_id", invite_id.as_str())
                .change("mfa", "enrolled", "enrolment_required");
            insert_event(&mut tx, &event).await?;
            id
        } else {
            let role = Role::parse(&role).ok_or_else(|| StoreError::CorruptRow {
                table: "console_invites",
                id: invite_id.clone(),
                reason: format!("unknown role {role:?}"),
            })?;
            let exists: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM console_users WHERE username = $1")
                    .bind(name.as_str())
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| store.db_err(e))?;
            if exists > 0 {
                return Err(StoreError::UserExists { name });
            }
            sqlx::query(
                "INSERT INTO console_users (id, username, role, state, password_hash, \
                 totp_sealed, totp_pending_sealed, totp_enrolled_at, totp_last_step, \
                 failed_attempts, locked_until, created_at, created_by, updated_at, \
                 password_changed_at, last_login_at) VALUES ($1, $2, $3, 'active', $4, NULL, \
                 NULL, NULL, NULL, 0, NULL, $5, $6, $5, $5, NULL)",
            )
            .bind(new_id)
            .bind(name.as_str())
            .bind(role.as_str())
            .bind(password_hash)
            .bind(now_ms)
            .bind(format!("invite:{invite_id}"))
            .execute(&mut *tx)
            .await
            .map_err(|e| store.db_err(e))?;
            let event = AdminEvent::new("user.created", actor, now)
                .target("user", new_id)
                .set("username", name.as_str())
                .set("role", role.as_str())
                .set("invite_id", invite_id.as_str());
            insert_event(&mut tx, &event).await?;
            new_id.to_owned()
        };
        let user = self.get_in(&mut tx, &user_id).await?;
        tx.commit().await.map_err(|e| store.db_err(e))?;
        Ok(user)
    }

    /// Counts a failed password, TOTP or recovery-code attempt (`factor`),
    /// and locks the account for `lockout` once `max_attempts` is reached.
    /// Records `login.failed` (and `user.locked`) in the same transaction.
    pub async fn record_failure(
        &self,
        id: &str,
        factor: &str,
        max_attempts: u32,
        lockout: Duration,
        actor: &Actor,
    ) -> Result<FailureOutcome> {
        let store = self.store;
        let now = self.now();
        let mut tx = crate::users::begin_write(store).await?;
        let attempts: i64 = sqlx::query_scalar(
            "UPDATE console_users SET failed_attempts = failed_attempts + 1 WHERE id = $1 \
             RETURNING failed_attempts",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| store.db_err(e))?
        .ok_or_else(|| StoreError::UserNotFound { id: id.to_owned() })?;
        let attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
        let event = AdminEvent::new("login.failed", actor.clone(), now)
            .target("user", id)
            .set("factor", factor)
            .set("attempts", attempts);
        insert_event(&mut tx, &event).await?;
        let mut locked_until = None;
        if attempts >= max_attempts {
            let until = now + lockout;
            sqlx::query(
                "UPDATE console_users SET locked_until = $1, failed_attempts = 0, \
                 updated_at = $2 WHERE id = $3",
            )
            .bind(to_ms(until))
            .bind(to_ms(now))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| store.db_err(e))?;
            // Sign-ins in progress end with the lock.
            sqlx::query("DELETE FROM console_sessions WHERE user_id = $1 AND stage <> 'full'")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(|e| store.db_err(e))?;
            let event = AdminEvent::new("user.locked", actor.clone(), now)
                .target("user", id)
                .set("locked_until_ms", to_ms(until))
                .set("lockout_ms", dur_ms(lockout))
                .reason(format!("{attempts} failed attempts"));
            insert_event(&mut tx, &event).await?;
            locked_until = Some(until);
        }
        tx.commit().await.map_err(|e| store.db_err(e))?;
        Ok(FailureOutcome {
            attempts,
            locked_until,
        })
    }

    /// Records a completed sign-in: resets the failure count and records
    /// `login.succeeded` with `method` (`totp` or `recovery_code`).
    pub async fn record_login(&self, id: &str, method: &str, actor: &Actor) -> Result<()> {
        let store = self.store;
        let now = self.now();
        let mut tx = crate::users::begin_write(store).await?;
        sqlx::query(
            "UPDATE console_users SET failed_attempts = 0, locked_until = NULL, \
             last_login_at = $1 WHERE id = $2",
        )
        .bind(to_ms(now))
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| store.db_err(e))?;
        let event = AdminEvent::new("login.succeeded", actor.clone(), now)
            .target("user", id)
            .set("method", method);
        insert_event(&mut tx, &event).await?;
        tx.commit().await.map_err(|e| store.db_err(e))?;
        Ok(())
    }

    /// Stores the sealed seed offered during enrolment (replacing an earlier
    /// offer).
    pub async fn set_pending_totp(&self, id: &str, sealed: &str) -> Result<()> {
        let n = sqlx::query(
            "UPDATE console_users SET totp_pending_sealed = $1 WHERE id = $2 \
             AND totp_sealed IS NULL",
        )
        .bind(sealed)
        .bind(id)
        .execute(&self.store.pool)
        .await
        .map_err(|e| self.store.db_err(e))?
        .rows_affected();
        if n == 1 {
            Ok(())
        } else {
            Err(StoreError::invalid("totp", "the user is already enrolled"))
        }
    }

    /// Confirms enrolment: the pending seed becomes the seed, `step` (the
    /// confirming code's) becomes the last accepted step, and
    /// `recovery_hashes` replace any recovery codes.
    pub async fn confirm_totp(
        &self,
        id: &str,
        step: u64,
        recovery_hashes: &[String],
        actor: &Actor,
    ) -> Result<()> {
        let store = self.store;
        let now = self.now();
        let mut tx = crate::users::begin_write(store).await?;
        let n = sqlx::query(
            "UPDATE console_users SET totp_sealed = totp_pending_sealed, \
             totp_pending_sealed = NULL, totp_enrolled_at = $1, totp_last_step = $2, \
             updated_at = $1 WHERE id = $3 AND totp_pending_sealed IS NOT NULL \
             AND totp_sealed IS NULL",
        )
        .bind(to_ms(now))
        .bind(i64::try_from(step).unwrap_or(i64::MAX))
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| store.db_err(e))?
        .rows_affected();
        if n != 1 {
            return Err(StoreError::invalid("totp", "no enrolment is pending"));
        }
        replace_codes(store, &mut tx, id, recovery_hashes, now).await?;
        let event = AdminEvent::new("user.mfa_enrolled", actor.clone(), now)
            .target("user", id)
            .set("factor", "totp")
            .set("recovery_codes", recovery_hashes.len());
        insert_event(&mut tx, &event).await?;
        tx.commit().await.map_err(|e| store.db_err(e))?;
        Ok(())
    }

    /// Accepts TOTP time step `step` if it is later than the last accepted
    /// one, atomically: of two concurrent uses of one code only one wins.
    pub async fn accept_totp_step(&self, id: &str, step: u64) -> Result<bool> {
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        let n = sqlx::query(
            "UPDATE console_users SET totp_last_step = $1 WHERE id = $2 \
             AND totp_sealed IS NOT NULL AND (totp_last_step IS NULL OR totp_last_step < $1)",
        )
        .bind(step)
        .bind(id)
        .execute(&self.store.pool)
        .await
        .map_err(|e| self.store.db_err(e))?
        .rows_affected();
        Ok(n == 1)
    }

    /// Uses a recovery code by its hash, once; records
    /// `mfa.recovery_code_used` when it was valid.
    pub async fn use_recovery_code(
        &self,
        id: &str,
        code_hash: &str,
        actor: &Actor,
    ) -> Result<bool> {
        let store = self.store;
        let now = self.now();
        let mut tx = crate::users::begin_write(store).await?;
        let n = sqlx::query(
            "UPDATE console_recovery_codes SET used_at = $1 \
             WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL",
        )
        .bind(to_ms(now))
        .bind(id)
        .bind(code_hash)
        .execute(&mut *tx)
        .await
        .map_err(|e| store.db_err(e))?
        .rows_affected();
        if n != 1 {
            return Ok(false);
        }
        let left = codes_left_in(store, &mut tx, id).await?;
        let event = AdminEvent::new("mfa.recovery_code_used", actor.clone(), now)
            .target("user", id)
            .set("remaining", left);
        insert_event(&mut tx, &event).await?;
        tx.commit().await.map_err(|e| store.db_err(e))?;
        Ok(true)
    }

    /// How many unused recovery codes the user has.
    pub async fn recovery_codes_left(&self, id: &str) -> Result<u64> {
        let mut conn = self.conn().await?;
        codes_left_in(self.store, &mut conn, id).await
    }

    /// Replaces all recovery codes with `hashes`.
    pub async fn replace_recovery_codes(
        &self,
        id: &str,
        hashes: &[String],
        actor: &Actor,
    ) -> Result<()> {
        let store = self.store;
        let now = self.now();
        let mut tx = crate::users::begin_write(store).await?;
        self.get_in(&mut tx, id).await?;
        replace_codes(store, &mut tx, id, hashes, now).await?;
        let event = AdminEvent::new("user.recovery_codes_regenerated", actor.clone(), now)
            .target("user", id)
            .set("recovery_codes", hashes.len());
        insert_event(&mut tx, &event).await?;
        tx.commit().await.map_err(|e| store.db_err(e))?;
        Ok(())
    }

    /// Sets a new password hash. Every session of the user other than
    /// `keep_session` (an ID hash) ends.
    pub async fn set_password(
        &self,
        id: &str,
        password_hash: &str,
        keep_session: Option<&str>,
        actor: &Actor,
    ) -> Result<()> {
        let store = self.store;
        let now = self.now();
        let mut tx = crate::users::begin_write(store).await?;
        self.get_in(&mut tx, id).await?;
        sqlx::query(
            "UPDATE console_users SET password_hash = $1, password_changed_at = $2, \
             updated_at = $2 WHERE id = $3",
        )
        .bind(password_hash)
        .bind(to_ms(now))
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| store.db_err(e))?;
        sqlx::query("DELETE FROM console_sessions WHERE user_id = $1 AND id_hash <> $2")
            .bind(id)
            .bind(keep_session.unwrap_or(""))
            .execute(&mut *tx)
            .await
            .map_err(|e| store.db_err(e))?;
        let event = AdminEvent::new("user.password_changed", actor.clone(), now).target("user", id);
        insert_event(&mut tx, &event).await?;
        tx.commit().await.map_err(|e| store.db_err(e))?;
        Ok(())
    }

    /// Changes a user's role. The last active admin cannot be demoted.
    pub async fn set_role(&self, id: &str, role: Role, actor: &Actor) -> Result<UserRecord> {
        let store = self.store;
        let now = self.now();
        let mut tx = crate::users::begin_write(store).await?;
        let before = self.get_in(&mut tx, id).await?;
        if before.role == role {
            return Ok(before);
        }
        if before.role == Role::Admin && before.state == UserState::Active {
            guard_last_admin(store, &mut tx, id).await?;
        }
        sqlx::query("UPDATE console_users SET role = $1, updated_at = $2 WHERE id = $3")
            .bind(role.as_str())
            .bind(to_ms(now))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| store.db_err(e))?;
        let event = AdminEvent::new("user.role_changed", actor.clone(), now)
            .target("user", id)
            .change("role", before.role.as_str(), role.as_str());
        insert_event(&mut tx, &event).await?;
        let after = self.get_in(&mut tx, id).await?;
        tx.commit().await.map_err(|e| store.db_err(e))?;
        Ok(after)
    }

    /// Disables or re-enables a user. Disabling ends the user's sessions;
    /// the last active admin cannot be disabled.
    pub async fn set_state(&self, id: &str, state: UserState, actor: &Actor) -> Result<UserRecord> {
        let store = self.store;
        let now = self.now();
        let mut tx = crate::users::begin_write(store).await?;
        let before = self.get_in(&mut tx, id).await?;
        if before.state == state {
            return Ok(before);
        }
        if state == UserState::Disabled {
            if before.role == Role::Admin {
                guard_last_admin(store, &mut tx, id).await?;
            }
            sqlx::query("DELETE FROM console_sessions WHERE user_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(|e| store.db_err(e))?;
        }
        sqlx::query("UPDATE console_users SET state = $1, updated_at = $2 WHERE id = $3")
            .bind(state.as_str())
            .bind(to_ms(now))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| store.db_err(e))?;
        let kind = match state {
            UserState::Active => "user.enabled",
            UserState::Disabled => "user.disabled",
        };
        let event = AdminEvent::new(kind, actor.clone(), now)
            .target("user", id)
            .change("state", before.state.as_str(), state.as_str());
        insert_event(&mut tx, &event).await?;
        let after = self.get_in(&mut tx, id).await?;
        tx.commit().await.map_err(|e| store.db_err(e))?;
        Ok(after)
    }

    /// Clears a user's TOTP seed and recovery codes, ends their sessions and
    /// unlocks them: they enrol again at next sign-in.
    pub async fn reset_mfa(&self, id: &str, actor: &Actor, reason: &str) -> Result<UserRecord> {
        let store = self.store;
        let now = self.now();
        let mut tx = crate::users::begin_write(store).await?;
        self.get_in(&mut tx, id).await?;
        sqlx::query(
            "UPDATE console_users SET totp_sealed = NULL, totp_pending_sealed = NULL, \
             totp_enrolled_at = NULL, totp_last_step = NULL, failed_attempts = 0, \
             locked_until = NULL, updated_at = $1 WHERE id = $2",
        )
        .bind(to_ms(now))
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| store.db_err(e))?;
        clear_user_secrets(store, &mut tx, id).await?;
        let mut event = AdminEvent::new("user.mfa_reset", actor.clone(), now)
            .target("user", id)
            .change("mfa", "enrolled", "enrolment_required");
        if !reason.is_empty() {
            event = event.reason(reason);
        }
        insert_event(&mut tx, &event).await?;
        let after = self.get_in(&mut tx, id).await?;
        tx.commit().await.map_err(|e| store.db_err(e))?;
        Ok(after)
    }

    /// Lifts a lockout and resets the failure count.
    pub async fn unlock(&self, id: &str, actor: &Actor) -> Result<UserRecord> {
        let store = self.store;
        let now = self.now();
        let mut tx = crate::users::begin_write(store).await?;
        let before = self.get_in(&mut tx, id).await?;
        sqlx::query(
            "UPDATE console_users SET failed_attempts = 0, locked_until = NULL, updated_at = $1 \
             WHERE id = $2",
        )
        .bind(to_ms(now))
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| store.db_err(e))?;
        let event = AdminEvent::new("user.unlocked", actor.clone(), now)
            .target("user", id)
            .set("was_locked", before.is_locked(now));
        insert_event(&mut tx, &event).await?;
        let after = self.get_in(&mut tx, id).await?;
        tx.commit().await.map_err(|e| store.db_err(e))?;
        Ok(after)
    }
}

/// Begins a transaction whose first statement is a write, as the key
/// lifecycle does: on SQLite this takes the write lock at once (so the busy
/// timeout applies), instead of a read that would later fail to upgrade
/// with SQLITE_BUSY when another process committed meanwhile (the server's
/// outbox drain does, every second). On PostgreSQL it serialises console
/// changes on the same row as key changes.
pub(crate) async fn begin_write(store: &Store) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
    let mut tx = store.pool.begin().await.map_err(|e| store.db_err(e))?;
    sqlx::query("UPDATE store_meta SET keys_generation = keys_generation WHERE id = 1")
        .execute(&mut *tx)
        .await
        .map_err(|e| store.db_err(e))?;
    Ok(tx)
}

async fn clear_user_secrets(store: &Store, conn: &mut AnyConnection, id: &str) -> Result<()> {
    for sql in [
        "DELETE FROM console_recovery_codes WHERE user_id = $1",
        "DELETE FROM console_sessions WHERE user_id = $1",
    ] {
        sqlx::query(sql)
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(|e| store.db_err(e))?;
    }
    Ok(())
}

async fn guard_last_admin(store: &Store, conn: &mut AnyConnection, id: &str) -> Result<()> {
    let others: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM console_users WHERE role = 'admin' AND state = 'active' \
         AND id <> $1",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| store.db_err(e))?;
    if others == 0 {
        return Err(StoreError::invalid(
            "role",
            "the last active admin cannot be demoted or disabled",
        ));
    }
    Ok(())
}

async fn codes_left_in(store: &Store, conn: &mut AnyConnection, id: &str) -> Result<u64> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM console_recovery_codes WHERE user_id = $1 AND used_at IS NULL",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| store.db_err(e))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

async fn replace_codes(
    store: &Store,
    conn: &mut AnyConnection,
    id: &str,
    hashes: &[String],
    now: SystemTime,
) -> Result<()> {
    sqlx::query("DELETE FROM console_recovery_codes WHERE user_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(|e| store.db_err(e))?;
    for hash in hashes {
        sqlx::query(
            "INSERT INTO console_recovery_codes (user_id, code_hash, created_at, used_at) \
             VALUES ($1, $2, $3, NULL)",
        )
        .bind(id)
        .bind(hash.as_str())
        .bind(to_ms(now))
        .execute(&mut *conn)
        .await
        .map_err(|e| store.db_err(e))?;
    }
    Ok(())
}
