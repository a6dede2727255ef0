//! `/admin/v1`: the JSON admin API. Thin handlers: authenticate, check the
//! role, parse, call the store or the service, render JSON.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use custos_auth::KeyId;
use custos_store::{KeyState, ListFilter, Role, UserState};
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ConsoleState;
use crate::auth::{JsonBody, Perm, Principal, ReqInfo};
use crate::error::{ApiError, ConsoleError};
use crate::keyjson::{event_json, key_json, rfc3339, user_json};
use crate::service::{KeyPatchInput, NewKeyInput, parse_duration};

pub(crate) type S = State<Arc<ConsoleState>>;
pub(crate) type ApiResult = Result<Response, ApiError>;

/// The API routes.
pub(crate) fn routes() -> Router<Arc<ConsoleState>> {
    Router::new()
        .route("/admin/v1/openapi.json", get(openapi))
        .route("/admin/v1/me", get(me))
        .route("/admin/v1/keys", get(list_keys).post(create_key))
        .route("/admin/v1/keys/{id}", get(get_key).patch(update_key))
        .route("/admin/v1/keys/{id}/rotate", post(rotate_key))
        .route("/admin/v1/keys/{id}/revoke", post(revoke_key))
        .route("/admin/v1/users", get(list_users).post(invite_user))
        .route("/admin/v1/users/{id}", axum::routing::patch(update_user))
        .route("/admin/v1/users/{id}/reset-mfa", post(reset_mfa))
        .route("/admin/v1/users/{id}/unlock", post(unlock_user))
        .route("/admin/v1/tokens", get(list_tokens).post(create_token))
        .route("/admin/v1/tokens/{id}", axum::routing::delete(revoke_token))
        .route("/admin/v1/audit/records", get(audit_records))
        .route("/admin/v1/audit/records/{seq}", get(audit_record))
        .route("/admin/v1/audit/checkpoint", get(audit_checkpoint))
        .route("/admin/v1/audit/verify", post(audit_verify))
        .route("/admin/v1/audit/export", get(audit_export))
        .route(
            "/admin/v1/incidents",
            get(crate::incidents::list).post(crate::incidents::declare),
        )
        .route("/admin/v1/incidents/{id}", get(crate::incidents::get))
        .route(
            "/admin/v1/incidents/{id}/actions",
            post(crate::incidents::act),
        )
}

/// Every `(method, path)` the API serves, for the OpenAPI consistency test.
#[cfg(test)]
pub(crate) const ROUTES: &[(&str, &str)] = &[
    ("get", "/admin/v1/openapi.json"),
    ("get", "/admin/v1/me"),
    ("get", "/admin/v1/keys"),
    ("post", "/admin/v1/keys"),
    ("get", "/admin/v1/keys/{id}"),
    ("patch", "/admin/v1/keys/{id}"),
    ("post", "/admin/v1/keys/{id}/rotate"),
    ("post", "/admin/v1/keys/{id}/revoke"),
    ("get", "/admin/v1/users"),
    ("post", "/admin/v1/users"),
    ("patch", "/admin/v1/users/{id}"),
    ("post", "/admin/v1/users/{id}/reset-mfa"),
    ("post", "/admin/v1/users/{id}/unlock"),
    ("get", "/admin/v1/tokens"),
    ("post", "/admin/v1/tokens"),
    ("delete", "/admin/v1/tokens/{id}"),
    ("get", "/admin/v1/audit/records"),
    ("get", "/admin/v1/audit/records/{seq}"),
    ("get", "/admin/v1/audit/checkpoint"),
    ("post", "/admin/v1/audit/verify"),
    ("get", "/admin/v1/audit/export"),
    ("get", "/admin/v1/incidents"),
    ("post", "/admin/v1/incidents"),
    ("get", "/admin/v1/incidents/{id}"),
    ("post", "/admin/v1/incidents/{id}/actions"),
];

pub(crate) fn ok(status: StatusCode, body: Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub(crate) fn query(raw: Option<String>) -> Result<HashMap<String, String>, ConsoleError> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(raw.as_deref().unwrap_or(""))
        .map(|v| v.into_iter().collect())
        .map_err(|_| ConsoleError::invalid("the query string could not be read"))
}

fn key_id(s: &str) -> Result<KeyId, ConsoleError> {
    KeyId::parse(s)
        .map_err(|_| ConsoleError::NotFound(format!("key {} does not exist", truncate(s))))
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

pub(crate) async fn auth(
    state: &ConsoleState,
    info: &ReqInfo,
    perm: Perm,
) -> Result<Principal, ConsoleError> {
    let p = state.principal(info, None).await?;
    p.require(perm)?;
    Ok(p)
}

async fn openapi() -> Response {
    let mut resp = crate::OPENAPI_JSON.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

async fn me(State(st): S, info: ReqInfo) -> ApiResult {
    let p = auth(&st, &info, Perm::Dashboard).await?;
    let csrf = p.csrf(&st);
    Ok(ok(
        StatusCode::OK,
        json!({
            "user": user_json(&p.user, st.now()),
            "role": p.role.as_str(),
            "via": if p.is_session() { "session" } else { "token" },
            "csrf_token": if csrf.is_empty() { Value::Null } else { Value::String(csrf) },
        }),
    ))
}

pub(crate) fn parse_state(s: &str) -> Result<KeyState, ConsoleError> {
    match s {
        "active" => Ok(KeyState::Active),
        "expired" => Ok(KeyState::Expired),
        "revoked" => Ok(KeyState::Revoked),
        other => Err(ConsoleError::invalid(format!(
            "state: `{}` is not active, expired or revoked",
            truncate(other)
        ))),
    }
}

fn parse_u32(
    q: &HashMap<String, String>,
    name: &str,
    default: u32,
    max: u32,
) -> Result<u32, ConsoleError> {
    match q.get(name) {
        None => Ok(default),
        Some(v) => v.parse::<u32>().ok().filter(|n| *n <= max).ok_or_else(|| {
            ConsoleError::invalid(format!("{name}: must be a number from 0 to {max}"))
        }),
    }
}

async fn list_keys(State(st): S, info: ReqInfo, RawQuery(raw): RawQuery) -> ApiResult {
    auth(&st, &info, Perm::KeysRead).await?;
    let q = query(raw)?;
    let filter = ListFilter {
        owner: q.get("owner").cloned(),
        team: q.get("team").cloned(),
        state: q.get("state").map(|s| parse_state(s)).transpose()?,
        search: q.get("search").cloned(),
        due_for_rotation: (q.get("due").map(String::as_str) == Some("true")).then_some(
            custos_store::RotationDue {
                max_age: st.opts.keys_policy.max_age,
                within: st.opts.keys_policy.rotation_warning,
            },
        ),
        limit: Some(parse_u32(&q, "limit", 100, 1000)?),
        offset: parse_u32(&q, "offset", 0, u32::MAX)?,
    };
    let now = st.now();
    let keys = st.store().keys().list(&filter).await?;
    let items: Vec<Value> = keys
        .iter()
        .map(|k| key_json(k, now, k.secret_created_at + st.opts.keys_policy.max_age))
        .collect();
    Ok(ok(StatusCode::OK, json!({"keys": items})))
}

async fn create_key(State(st): S, info: ReqInfo, body: JsonBody<NewKeyInput>) -> ApiResult {
    let p = auth(&st, &info, Perm::KeysWrite).await?;
    let input = body.0?;
    let now = st.now();
    let new = input.into_new_key(&p.user.username, now)?;
    let (rec, secret) = st
        .store()
        .keys()
        .create(&st.opts.minter, new, &p.actor(), &mut rand::rngs::OsRng)
        .await?;
    let mut body = key_json(
        &rec,
        now,
        rec.secret_created_at + st.opts.keys_policy.max_age,
    );
    body["secret"] = Value::String(custos_types::ExposeSecret::expose_secret(&secret).to_owned());
    Ok(ok(StatusCode::CREATED, body))
}

async fn get_key(State(st): S, info: ReqInfo, Path(id): Path<String>) -> ApiResult {
    auth(&st, &info, Perm::KeysRead).await?;
    let id = key_id(&id)?;
    let rec = st
        .store()
        .keys()
        .get(&id)
        .await?
        .ok_or_else(|| ConsoleError::NotFound(format!("key {id} does not exist")))?;
    let history = st.store().key_events(&id).await?;
    let mut body = key_json(
        &rec,
        st.now(),
        rec.secret_created_at + st.opts.keys_policy.max_age,
    );
    body["history"] = history.iter().map(event_json).collect();
    Ok(ok(StatusCode::OK, body))
}

async fn update_key(
    State(st): S,
    info: ReqInfo,
    Path(id): Path<String>,
    body: JsonBody<KeyPatchInput>,
) -> ApiResult {
    let p = auth(&st, &info, Perm::KeysWrite).await?;
    let input = body.0?;
    let id = key_id(&id)?;
    let now = st.now();
    let update = input.into_update(now)?;
    let updated = st.store().keys().update(&id, &update, &p.actor()).await?;
    Ok(ok(
        StatusCode::OK,
        json!({
            "key": key_json(&updated.after, now, updated.after.secret_created_at + st.opts.keys_policy.max_age),
            "changed": updated.changed,
        }),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateInput {
    #[serde(default)]
    grace: Option<String>,
    #[serde(default)]
    rotation_id: Option<String>,
}

async fn rotate_key(
    State(st): S,
    info: ReqInfo,
    Path(id): Path<String>,
    body: JsonBody<RotateInput>,
) -> ApiResult {
    let p = auth(&st, &info, Perm::KeysWrite).await?;
    let input = body.0?;
    let id = key_id(&id)?;
    let grace = match input.grace.as_deref() {
        None => Duration::ZERO,
        Some(g) => parse_duration("grace", g)?,
    };
    let (rec, secret) = st
        .store()
        .keys()
        .rotate(
            &st.opts.minter,
            id,
            grace,
            input.rotation_id.as_deref(),
            &p.actor(),
            &mut rand::rngs::OsRng,
        )
        .await?;
    let mut body = key_json(
        &rec,
        st.now(),
        rec.secret_created_at + st.opts.keys_policy.max_age,
    );
    body["secret"] = Value::String(custos_types::ExposeSecret::expose_secret(&secret).to_owned());
    Ok(ok(StatusCode::OK, body))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeInput {
    #[serde(default)]
    reason: Option<String>,
}

async fn revoke_key(
    State(st): S,
    info: ReqInfo,
    Path(id): Path<String>,
    body: JsonBody<RevokeInput>,
) -> ApiResult {
    let p = auth(&st, &info, Perm::KeysWrite).await?;
    let input = body.0?;
    let id = key_id(&id)?;
    let reason = input
        .reason
        .unwrap_or_else(|| "revoked with the admin API".into());
    let out = st.store().keys().revoke(&id, &p.actor(), &reason).await?;
    Ok(ok(
        StatusCode::OK,
        json!({
            "key": key_json(&out.record, st.now(), out.record.secret_created_at + st.opts.keys_policy.max_age),
            "already_revoked": out.already_revoked,
        }),
    ))
}

async fn list_users(State(st): S, info: ReqInfo) -> ApiResult {
    auth(&st, &info, Perm::UsersManage).await?;
    let now = st.now();
    let users: Vec<Value> = st
        .store()
        .users()
        .list()
        .await?
        .iter()
        .map(|u| user_json(u, now))
        .collect();
    Ok(ok(StatusCode::OK, json!({"users": users})))
}

pub(crate) fn parse_role(s: &str) -> Result<Role, ConsoleError> {
    Role::parse(s).ok_or_else(|| {
        ConsoleError::invalid(format!(
            "role: `{}` is not admin, key_manager, auditor or viewer",
            truncate(s)
        ))
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InviteInput {
    username: String,
    role: String,
}

async fn invite_user(State(st): S, info: ReqInfo, body: JsonBody<InviteInput>) -> ApiResult {
    let p = auth(&st, &info, Perm::UsersManage).await?;
    let input = body.0?;
    let role = parse_role(&input.role)?;
    let name = input.username.trim().to_lowercase();
    let inv = crate::service::issue_invite(
        st.store(),
        &st.opts.base_url,
        st.opts.config.invite_ttl,
        Some(&name),
        role,
        false,
        &p.actor(),
    )
    .await?;
    Ok(ok(
        StatusCode::CREATED,
        json!({"username": name, "role": role.as_str(), "invite_url": inv.link, "expires_at": rfc3339(inv.expires_at)}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPatch {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    state: Option<String>,
}

async fn update_user(
    State(st): S,
    info: ReqInfo,
    Path(id): Path<String>,
    body: JsonBody<UserPatch>,
) -> ApiResult {
    let p = auth(&st, &info, Perm::UsersManage).await?;
    let input = body.0?;
    let users = st.store().users();
    let mut user = users
        .get(&id)
        .await?
        .ok_or_else(|| ConsoleError::NotFound(format!("user {} does not exist", truncate(&id))))?;
    if let Some(role) = &input.role {
        user = users.set_role(&id, parse_role(role)?, &p.actor()).await?;
    }
    if let Some(state) = &input.state {
        let state = match state.as_str() {
            "active" => UserState::Active,
            "disabled" => UserState::Disabled,
            other => {
                return Err(ConsoleError::invalid(format!(
                    "state: `{}` is not active or disabled",
                    truncate(other)
                ))
                .into());
            }
        };
        user = users.set_state(&id, state, &p.actor()).await?;
    }
    Ok(ok(StatusCode::OK, user_json(&user, st.now())))
}

async fn reset_mfa(
    State(st): S,
    info: ReqInfo,
    Path(id): Path<String>,
    body: JsonBody<RevokeInput>,
) -> ApiResult {
    let p = auth(&st, &info, Perm::UsersManage).await?;
    let input = body.0?;
    let user = st
        .store()
        .users()
        .reset_mfa(&id, &p.actor(), input.reason.as_deref().unwrap_or(""))
        .await?;
    Ok(ok(StatusCode::OK, user_json(&user, st.now())))
}

async fn unlock_user(State(st): S, info: ReqInfo, Path(id): Path<String>) -> ApiResult {
    let p = auth(&st, &info, Perm::UsersManage).await?;
    let user = st.store().users().unlock(&id, &p.actor()).await?;
    Ok(ok(StatusCode::OK, user_json(&user, st.now())))
}

pub(crate) fn token_json(t: &custos_store::TokenRecord, now: std::time::SystemTime) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "role": t.role.as_str(),
        "owner": t.username,
        "created_at": rfc3339(t.created_at),
        "expires_at": rfc3339(t.expires_at),
        "revoked_at": t.revoked_at.map(rfc3339),
        "last_used_at": t.last_used_at.map(rfc3339),
        "usable": t.is_usable(now),
    })
}

async fn list_tokens(State(st): S, info: ReqInfo) -> ApiResult {
    let p = auth(&st, &info, Perm::Dashboard).await?;
    let owner = (!p.can(Perm::UsersManage)).then_some(p.user.id.as_str());
    let now = st.now();
    let tokens: Vec<Value> = st
        .store()
        .tokens()
        .list(owner)
        .await?
        .iter()
        .map(|t| token_json(t, now))
        .collect();
    Ok(ok(StatusCode::OK, json!({"tokens": tokens})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenInput {
    name: String,
    role: String,
    #[serde(default)]
    expires_in: Option<String>,
}

async fn create_token(State(st): S, info: ReqInfo, body: JsonBody<TokenInput>) -> ApiResult {
    let p = auth(&st, &info, Perm::Dashboard).await?;
    let input = body.0?;
    let role = parse_role(&input.role)?;
    let ttl = parse_duration("expires_in", input.expires_in.as_deref().unwrap_or("30d"))?;
    let (token, rec) = st.create_token(&p, &input.name, role, ttl).await?;
    let mut body = token_json(&rec, st.now());
    body["token"] = Value::String(token);
    Ok(ok(StatusCode::CREATED, body))
}

async fn revoke_token(State(st): S, info: ReqInfo, Path(id): Path<String>) -> ApiResult {
    let p = auth(&st, &info, Perm::Dashboard).await?;
    let rec = st.store().tokens().get(&id).await?.ok_or_else(|| {
        ConsoleError::NotFound(format!("admin token {} does not exist", truncate(&id)))
    })?;
    if rec.user_id != p.user.id && !p.can(Perm::UsersManage) {
        return Err(ConsoleError::Forbidden(
            "only an admin may revoke another user's token".into(),
        )
        .into());
    }
    let changed = st.store().tokens().revoke(&id, &p.actor()).await?;
    Ok(ok(
        StatusCode::OK,
        json!({"id": id, "already_revoked": !changed}),
    ))
}

fn kind_filter(q: &HashMap<String, String>) -> Result<Option<String>, ConsoleError> {
    match q.get("type").map(String::as_str) {
        None | Some("") => Ok(None),
        Some(t @ ("inference" | "admin" | "system")) => Ok(Some(t.to_owned())),
        Some(other) => Err(ConsoleError::invalid(format!(
            "type: `{}` is not inference, admin or system",
            truncate(other)
        ))),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ConsoleError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ConsoleError::Internal(e.to_string()))
}

async fn audit_records(State(st): S, info: ReqInfo, RawQuery(raw): RawQuery) -> ApiResult {
    auth(&st, &info, Perm::AuditRead).await?;
    let q = query(raw)?;
    let text = q.get("q").cloned().unwrap_or_default();
    let kind = kind_filter(&q)?;
    let limit = parse_u32(&q, "limit", 50, 1000)? as usize;
    let dir = st.opts.ledger_dir.clone();
    let (hits, scanned) =
        blocking(move || crate::ledger::search(&dir, &text, kind.as_deref(), limit))
            .await?
            .map_err(ConsoleError::Internal)?;
    let records: Vec<Value> = hits.into_iter().map(|h| h.value).collect();
    Ok(ok(
        StatusCode::OK,
        json!({"records": records, "scanned": scanned}),
    ))
}

async fn audit_record(State(st): S, info: ReqInfo, Path(seq): Path<String>) -> ApiResult {
    auth(&st, &info, Perm::AuditRead).await?;
    let seq: u64 = seq
        .parse()
        .map_err(|_| ConsoleError::invalid("seq: must be a record number"))?;
    let dir = st.opts.ledger_dir.clone();
    let found = blocking(move || crate::ledger::record(&dir, seq))
        .await?
        .map_err(ConsoleError::Internal)?;
    match found {
        Some((_, value)) => Ok(ok(StatusCode::OK, value)),
        None => Err(ConsoleError::NotFound(format!("record {seq} does not exist")).into()),
    }
}

async fn audit_checkpoint(State(st): S, info: ReqInfo) -> ApiResult {
    auth(&st, &info, Perm::AuditRead).await?;
    let dir = st.opts.ledger_dir.clone();
    let cp = blocking(move || crate::ledger::checkpoint(&dir))
        .await?
        .map_err(ConsoleError::Internal)?;
    Ok(ok(StatusCode::OK, json!({"checkpoint": cp})))
}

async fn audit_verify(State(st): S, info: ReqInfo) -> ApiResult {
    let p = auth(&st, &info, Perm::AuditRead).await?;
    let report = st.verify_now(&p).await?;
    Ok(ok(StatusCode::OK, report))
}

async fn audit_export(State(st): S, info: ReqInfo, RawQuery(raw): RawQuery) -> ApiResult {
    let p = auth(&st, &info, Perm::AuditRead).await?;
    let q = query(raw)?;
    let text = q.get("q").cloned().unwrap_or_default();
    let kind = kind_filter(&q)?;
    let limit = parse_u32(&q, "limit", 10_000, 100_000)? as usize;
    let dir = st.opts.ledger_dir.clone();
    let (t2, k2) = (text.clone(), kind.clone());
    let (hits, _) = blocking(move || crate::ledger::search(&dir, &t2, k2.as_deref(), limit))
        .await?
        .map_err(ConsoleError::Internal)?;
    let event = custos_store::AdminEvent::new("audit.exported", p.actor(), st.now())
        .set("records", hits.len())
        .set("query", text)
        .set("type", kind.unwrap_or_default());
    st.store().record_event(&event).await?;
    let mut out = String::new();
    for h in hits.iter().rev() {
        out.push_str(&h.text);
        out.push('\n');
    }
    let mut resp = (StatusCode::OK, out).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"custos-audit.jsonl\""),
    );
    Ok(resp)
}

impl ConsoleState {
    /// Runs the verifier and records that it ran, with its verdict.
    pub(crate) async fn verify_now(&self, p: &Principal) -> Result<Value, ConsoleError> {
        let dir = self.opts.ledger_dir.clone();
        let report = blocking(move || crate::ledger::verify(&dir)).await?;
        let event = custos_store::AdminEvent::new("audit.verified", p.actor(), self.now())
            .set("intact", report["intact"].as_bool().unwrap_or(false))
            .set("tree_size", report["tree_size"].as_u64().unwrap_or(0));
        self.store().record_event(&event).await?;
        Ok(report)
    }
}
