//! The JSON form of a key, shared by the admin API and `custos keys …`
//! (which prints what the API or the store returns in this one shape).
//! It never contains a secret.

use std::time::SystemTime;

use custos_auth::scope::BudgetPeriod;
use custos_store::{KeyEvent, KeyRecord, KeyState, UserRecord};
use serde_json::{Value, json};

/// RFC 3339 with seconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The state's name.
pub fn state_name(state: KeyState) -> &'static str {
    match state {
        KeyState::Active => "active",
        KeyState::Expired => "expired",
        KeyState::Revoked => "revoked",
    }
}

/// A key as JSON; `due_at` is when its secret is due for rotation.
pub fn key_json(r: &KeyRecord, now: SystemTime, due_at: SystemTime) -> Value {
    json!({
        "id": r.id.as_str(),
        "name": r.name,
        "owner": r.owner,
        "team": r.team,
        "description": r.description,
        "labels": r.labels,
        "state": state_name(r.state(now)),
        "masked": r.masked,
        "models": r.scope.models.patterns().iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        "capabilities": r.scope.capabilities.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        "cidrs": r.scope.cidrs.nets().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "rpm": r.scope.rpm,
        "tpm": r.scope.tpm,
        "budget": r.scope.budget.map(|b| json!({"tokens": b.tokens, "period": match b.period { BudgetPeriod::Day => "day", BudgetPeriod::Month => "month" }})),
        "created_at": rfc3339(r.created_at),
        "created_by": r.created_by.name,
        "updated_at": rfc3339(r.updated_at),
        "expires_at": r.expires_at.map(rfc3339),
        "last_used_at": r.last_used_at.map(rfc3339),
        "secret_created_at": rfc3339(r.secret_created_at),
        "rotation_due_at": rfc3339(due_at),
        "grace_until": r.grace_until.map(rfc3339),
        "revoked_at": r.revoked.as_ref().map(|v| rfc3339(v.at)),
        "revoked_by": r.revoked.as_ref().map(|v| v.by.name.clone()),
        "revoke_reason": r.revoked.as_ref().map(|v| v.reason.clone()),
        "version": r.version,
    })
}

/// One lifecycle event of a key as JSON.
pub fn event_json(e: &KeyEvent) -> Value {
    json!({
        "kind": e.kind.as_str(),
        "at": rfc3339(custos_store_time(e.at_ms)),
        "actor": e.actor.name,
        "via": e.actor.kind.as_str(),
        "mfa": e.actor.mfa,
        "role": e.actor.role,
        "changed": e.changes.keys().collect::<Vec<_>>(),
        "reason": e.reason,
    })
}

/// A console user as JSON (no credentials).
pub fn user_json(u: &UserRecord, now: SystemTime) -> Value {
    json!({
        "id": u.id,
        "username": u.username,
        "role": u.role.as_str(),
        "state": u.state.as_str(),
        "mfa_enrolled": u.mfa_enrolled_at.is_some(),
        "locked": u.is_locked(now),
        "locked_until": u.locked_until.filter(|t| *t > now).map(rfc3339),
        "created_at": rfc3339(u.created_at),
        "last_login_at": u.last_login_at.map(rfc3339),
    })
}

/// Milliseconds since the epoch as a time.
pub(crate) fn custos_store_time(ms: i64) -> SystemTime {
    let d = std::time::Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        SystemTime::UNIX_EPOCH + d
    } else {
        SystemTime::UNIX_EPOCH - d
    }
}
