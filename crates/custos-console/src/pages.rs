//! `/console/…`: the server-rendered pages and their form handlers. Every
//! handler authenticates, checks the role, and for POSTs the CSRF token
//! (inside [`ConsoleState::principal`]); secrets are shown once, in the
//! response to the POST that created them, never in a URL.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use custos_auth::KeyId;
use custos_store::{KeyState, ListFilter, Role, SessionStage, UserState};
use http::{HeaderValue, StatusCode, header};
use maud::{Markup, html};
use serde::Deserialize;

use crate::ConsoleState;
use crate::auth::{FormBody, Perm, Principal, ReqInfo, cookie_name};
use crate::crypto;
use crate::error::{ConsoleError, PageError};
use crate::keyjson::{rfc3339, state_name};
use crate::service::{DEFAULT_CAPABILITIES, NewKeyInput, parse_duration};
use crate::ui::{self, Nav, badge, bare, flash, page, secret_box};

type S = State<Arc<ConsoleState>>;
type PageResult = Result<Response, PageError>;

/// The page routes.
pub(crate) fn routes() -> Router<Arc<ConsoleState>> {
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(dashboard))
        .route(
            "/console/static/console.css",
            get(|| async { ui::asset(ui::CSS, "text/css; charset=utf-8") }),
        )
        .route(
            "/console/static/console.js",
            get(|| async { ui::asset(ui::JS, "text/javascript; charset=utf-8") }),
        )
        .route("/console/login", get(login_form).post(login))
        .route("/console/mfa", get(mfa_form).post(mfa))
        .route("/console/enrol", get(enrol_form).post(enrol))
        .route("/console/setup", get(setup_form).post(setup))
        .route("/console/logout", post(logout))
        .route("/console/keys", get(keys).post(create_key))
        .route("/console/keys/new", get(new_key_form))
        .route("/console/keys/{id}", get(key_detail))
        .route("/console/keys/{id}/rotate", post(rotate_key))
        .route("/console/keys/{id}/revoke", post(revoke_key))
        .route("/console/audit", get(audit))
        .route("/console/audit/verify", post(audit_verify))
        .route("/console/audit/{seq}", get(audit_record))
        .route("/console/users", get(users))
        .route("/console/users/invite", post(invite))
        .route("/console/users/{id}/{action}", post(user_action))
        .route("/console/account", get(account))
        .route("/console/account/password", post(change_password))
        .route("/console/account/recovery-codes", post(regenerate_codes))
        .route("/console/account/tokens", post(create_token))
        .route("/console/account/tokens/{id}/revoke", post(revoke_token))
}

fn html_response(status: StatusCode, markup: Markup) -> Response {
    (status, axum::response::Html(markup.into_string())).into_response()
}

fn set_cookie(state: &ConsoleState, resp: &mut Response, value: Option<&str>) {
    let name = cookie_name(state.secure);
    let secure = if state.secure { "; Secure" } else { "" };
    let cookie = match value {
        Some(v) => format!("{name}={v}; Path=/; HttpOnly; SameSite=Strict{secure}"),
        None => format!("{name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn redirect_with_session(state: &ConsoleState, to: &str, session: Option<&str>) -> Response {
    let mut resp = Redirect::to(to).into_response();
    set_cookie(state, &mut resp, session);
    resp
}

fn query(raw: Option<String>) -> std::collections::HashMap<String, String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(raw.as_deref().unwrap_or(""))
        .map(|v| v.into_iter().collect())
        .unwrap_or_default()
}

async fn full(
    state: &ConsoleState,
    info: &ReqInfo,
    csrf: Option<&str>,
    perm: Perm,
) -> Result<Principal, ConsoleError> {
    let p = state.principal(info, csrf).await?;
    p.require(perm)?;
    Ok(p)
}

// ---- sign-in ----

fn login_page(error: Option<&str>, notice: Option<&str>) -> Markup {
    bare(
        "Sign in",
        false,
        html! {
            h1 { "Sign in" }
            p.sub { "Admin console. Your authenticator app is required." }
            br;
            @if let Some(e) = error { (flash("error", e)) }
            @if let Some(n) = notice { (flash("ok", n)) }
            form method="post" action="/console/login" {
                div.field { label for="username" { "User name" } input #username type="text" name="username" autocomplete="username" required autofocus; }
                div.field { label for="password" { "Password" } input #password type="password" name="password" autocomplete="current-password" required; }
                button type="submit" { "Continue" }
            }
        },
    )
}

async fn login_form(State(st): S, info: ReqInfo) -> Response {
    if st.has_full_session(&info).await {
        return Redirect::to("/console/").into_response();
    }
    html_response(StatusCode::OK, login_page(None, None))
}

#[derive(Debug, Deserialize)]
struct LoginInput {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: crypto::Secret,
}

async fn login(State(st): S, info: ReqInfo, form: FormBody<LoginInput>) -> PageResult {
    if !info.same_origin {
        return Err(ConsoleError::Csrf.into());
    }
    match st
        .login(&form.value.username, form.value.password.expose(), info.ip)
        .await
    {
        Ok((id, SessionStage::Enrol)) => {
            Ok(redirect_with_session(&st, "/console/enrol", Some(&id)))
        }
        Ok((id, _)) => Ok(redirect_with_session(&st, "/console/mfa", Some(&id))),
        Err(e @ (ConsoleError::Invalid { .. } | ConsoleError::Locked)) => {
            let status = if matches!(e, ConsoleError::Locked) {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::UNAUTHORIZED
            };
            Ok(html_response(
                status,
                login_page(Some(&e.to_string()), None),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

fn mfa_page(csrf: &str, error: Option<&str>) -> Markup {
    bare(
        "Two-step verification",
        false,
        html! {
            h1 { "Two-step verification" }
            p.sub { "Enter the 6-digit code from your authenticator app, or one of your recovery codes." }
            br;
            @if let Some(e) = error { (flash("error", e)) }
            form method="post" action="/console/mfa" {
                input type="hidden" name="csrf" value=(csrf);
                div.field { label for="code" { "Code" } input #code type="text" name="code" inputmode="numeric" autocomplete="one-time-code" required autofocus; }
                button type="submit" { "Verify" }
            }
        },
    )
}

async fn mfa_form(State(st): S, info: ReqInfo) -> PageResult {
    let p = st.pending(&info, SessionStage::Mfa, None).await?;
    Ok(html_response(
        StatusCode::OK,
        mfa_page(&st.opts.server_keys.csrf_token(&p.id), None),
    ))
}

#[derive(Debug, Deserialize)]
struct CodeInput {
    #[serde(default)]
    code: crypto::Secret,
}

async fn mfa(State(st): S, info: ReqInfo, form: FormBody<CodeInput>) -> PageResult {
    let p = st
        .pending(&info, SessionStage::Mfa, form.csrf.as_deref())
        .await?;
    match st
        .second_factor(&p, form.value.code.expose(), info.ip)
        .await
    {
        Ok(id) => Ok(redirect_with_session(&st, "/console/", Some(&id))),
        Err(e @ (ConsoleError::Locked | ConsoleError::Throttled)) => Ok(html_response(
            StatusCode::TOO_MANY_REQUESTS,
            login_page(Some(&e.to_string()), None),
        )),
        Err(e @ ConsoleError::Invalid { .. }) => Ok(html_response(
            StatusCode::UNAUTHORIZED,
            mfa_page(&st.opts.server_keys.csrf_token(&p.id), Some(&e.to_string())),
        )),
        Err(e) => Err(e.into()),
    }
}

async fn enrol_page(
    st: &ConsoleState,
    p: &crate::auth::Pending,
    error: Option<&str>,
) -> Result<Markup, ConsoleError> {
    let seed = st.enrolment_seed(p).await?;
    let uri = crypto::otpauth_uri(&seed, &p.user.username)
        .ok_or_else(|| ConsoleError::Internal("cannot build the otpauth URI".into()))?;
    let svg = crypto::qr_svg(&uri).unwrap_or_default();
    let csrf = st.opts.server_keys.csrf_token(&p.id);
    Ok(bare(
        "Set up two-step verification",
        true,
        html! {
            h1 { "Set up two-step verification" }
            p.sub { "Two-step verification is required for every console user. Scan the code with an authenticator app (1Password, Google Authenticator, Authy, …), then enter the 6-digit code it shows." }
            br;
            @if let Some(e) = error { (flash("error", e)) }
            div.qr {
                (ui::raw_svg(&svg))
                div {
                    label { "Or enter this key by hand" }
                    p { code #totp-secret { (crypto::seed_base32(&seed)) } }
                    label { "Setup URI" }
                    p { code #otpauth-uri.muted { (uri) } }
                }
            }
            br;
            form method="post" action="/console/enrol" {
                input type="hidden" name="csrf" value=(csrf);
                div.field { label for="code" { "Code from the app" } input #code type="text" name="code" inputmode="numeric" autocomplete="one-time-code" required autofocus; }
                button type="submit" { "Confirm and continue" }
            }
        },
    ))
}

async fn enrol_form(State(st): S, info: ReqInfo) -> PageResult {
    let p = st.pending(&info, SessionStage::Enrol, None).await?;
    Ok(html_response(
        StatusCode::OK,
        enrol_page(&st, &p, None).await?,
    ))
}

fn codes_block(codes: &[String]) -> Markup {
    html! {
        div.codes #recovery-codes { @for c in codes { span.code { (c) } } }
        p { button.secondary.small type="button" data-copy="recovery-codes" { "Copy" } }
    }
}

async fn enrol(State(st): S, info: ReqInfo, form: FormBody<CodeInput>) -> PageResult {
    let p = st
        .pending(&info, SessionStage::Enrol, form.csrf.as_deref())
        .await?;
    match st
        .confirm_enrolment(&p, form.value.code.expose(), info.ip)
        .await
    {
        Ok((id, codes)) => {
            let body = bare(
                "Recovery codes",
                true,
                html! {
                    h1 { "Two-step verification is on" }
                    p.sub { "Save these recovery codes somewhere safe. Each works once, if you lose your authenticator. They are shown only now." }
                    br;
                    (codes_block(&codes))
                    p { a.btn #continue href="/console/" { "I saved them, continue" } }
                },
            );
            let mut resp = html_response(StatusCode::OK, body);
            set_cookie(&st, &mut resp, Some(&id));
            Ok(resp)
        }
        Err(ConsoleError::Locked) => Ok(html_response(
            StatusCode::TOO_MANY_REQUESTS,
            login_page(Some(&ConsoleError::Locked.to_string()), None),
        )),
        Err(e @ ConsoleError::Invalid { .. }) => Ok(html_response(
            StatusCode::UNAUTHORIZED,
            enrol_page(&st, &p, Some(&e.to_string())).await?,
        )),
        Err(e) => Err(e.into()),
    }
}

fn setup_page(token: &str, invite: &custos_store::InviteRecord, error: Option<&str>) -> Markup {
    let title = if invite.reset {
        "Choose a new password"
    } else {
        "Create your account"
    };
    bare(
        title,
        false,
        html! {
            h1 { (title) }
            p.sub {
                @if invite.reset { "Your password and two-step verification will be reset." }
                @else { "You will join as " strong { (invite.role.as_str()) } ". Two-step verification is set up next." }
            }
            br;
            @if let Some(e) = error { (flash("error", e)) }
            form method="post" action="/console/setup" {
                input type="hidden" name="token" value=(token);
                div.field {
                    label for="username" { "User name" }
                    @if let Some(name) = &invite.username {
                        input #username type="text" name="username" value=(name) readonly;
                    } @else {
                        input #username type="text" name="username" autocomplete="username" required autofocus;
                        span.hint { "Lowercase letters, digits, . _ @ -" }
                    }
                }
                div.field { label for="password" { "Password " span.hint { "(at least 12 characters, not a common one)" } } input #password type="password" name="password" autocomplete="new-password" required minlength="12"; }
                div.field { label for="confirm" { "Repeat the password" } input #confirm type="password" name="confirm" autocomplete="new-password" required; }
                button type="submit" { "Continue" }
            }
        },
    )
}

async fn setup_form(State(st): S, RawQuery(raw): RawQuery) -> PageResult {
    let q = query(raw);
    let token = q.get("token").cloned().unwrap_or_default();
    let invite = if token.is_empty() || token.len() > 128 {
        None
    } else {
        st.store()
            .users()
            .invite(&crypto::sha256_hex(&token))
            .await?
    };
    match invite {
        Some(inv) => Ok(html_response(
            StatusCode::OK,
            setup_page(&token, &inv, None),
        )),
        None => Ok(html_response(
            StatusCode::BAD_REQUEST,
            ui::error_page(
                StatusCode::BAD_REQUEST,
                "This link is invalid, used or expired. Ask an admin for a new one, or run `custos users create` on the server.",
            ),
        )),
    }
}

#[derive(Debug, Deserialize)]
struct SetupInput {
    #[serde(default)]
    token: crypto::Secret,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: crypto::Secret,
    #[serde(default)]
    confirm: crypto::Secret,
}

async fn setup(State(st): S, info: ReqInfo, form: FormBody<SetupInput>) -> PageResult {
    if !info.same_origin {
        return Err(ConsoleError::Csrf.into());
    }
    let f = form.value;
    let token = f.token.expose();
    let hash = crypto::sha256_hex(token);
    let Some(invite) = (if token.len() <= 128 {
        st.store().users().invite(&hash).await?
    } else {
        None
    }) else {
        return Ok(html_response(
            StatusCode::BAD_REQUEST,
            ui::error_page(
                StatusCode::BAD_REQUEST,
                "This link is invalid, used or expired.",
            ),
        ));
    };
    let name = invite
        .username
        .clone()
        .unwrap_or_else(|| f.username.trim().to_lowercase());
    let again = |msg: &str| {
        Ok(html_response(
            StatusCode::BAD_REQUEST,
            setup_page(token, &invite, Some(msg)),
        ))
    };
    if let Err(e) = custos_store::users::validate_username(&name) {
        return again(&e.to_string());
    }
    if !crypto::ct_eq(f.password.expose(), f.confirm.expose()) {
        return again("the two passwords differ");
    }
    let pw_hash = match st.new_password_hash(&name, f.password.expose()).await {
        Ok(h) => h,
        Err(ConsoleError::Invalid { message, .. }) => return again(&message),
        Err(e) => return Err(e.into()),
    };
    let new_id = crypto::random_id(&mut rand::rngs::OsRng, "usr");
    let user = match st
        .store()
        .users()
        .redeem_invite(&hash, &new_id, &name, &pw_hash, info.ip)
        .await
    {
        Ok(u) => u,
        Err(custos_store::StoreError::UserExists { .. }) => {
            return again("this user name is taken");
        }
        Err(e) => return Err(ConsoleError::from(e).into()),
    };
    // Straight on to enrolment: the pending session rotates at its end.
    let id = crypto::random_token(&mut rand::rngs::OsRng, 32);
    st.store()
        .sessions()
        .create(
            &crypto::sha256_hex(&id),
            &user.id,
            SessionStage::Enrol,
            st.now() + crate::auth::PENDING_SESSION,
            info.ip,
        )
        .await?;
    Ok(redirect_with_session(&st, "/console/enrol", Some(&id)))
}

#[derive(Debug, Deserialize)]
struct Empty {}

async fn logout(State(st): S, info: ReqInfo, form: FormBody<Empty>) -> PageResult {
    match st.principal(&info, form.csrf.as_deref()).await {
        Ok(p) => {
            st.logout(&p).await?;
            let mut resp = html_response(
                StatusCode::OK,
                login_page(None, Some("You are signed out.")),
            );
            set_cookie(&st, &mut resp, None);
            Ok(resp)
        }
        Err(ConsoleError::Unauthenticated | ConsoleError::MfaRequired) => {
            Ok(redirect_with_session(&st, "/console/login", None))
        }
        Err(e) => Err(e.into()),
    }
}

// ---- dashboard ----

async fn dashboard(State(st): S, info: ReqInfo) -> PageResult {
    let p = full(&st, &info, None, Perm::Dashboard).await?;
    let csrf = p.csrf(&st);
    let keys = st.store().keys().list(&ListFilter::default()).await?;
    let now = st.now();
    let active = keys
        .iter()
        .filter(|k| k.state(now) == KeyState::Active)
        .count();
    let revoked = keys
        .iter()
        .filter(|k| k.state(now) == KeyState::Revoked)
        .count();
    let policy = st.opts.keys_policy;
    let due = keys
        .iter()
        .filter(|k| {
            k.state(now) == KeyState::Active
                && now + policy.rotation_warning >= k.secret_created_at + policy.max_age
        })
        .count();
    let users = st.store().users().list().await?;
    let dir = st.opts.ledger_dir.clone();
    let cp = tokio::task::spawn_blocking(move || crate::ledger::checkpoint(&dir).ok().flatten())
        .await
        .ok()
        .flatten();
    let recent = if p.can(Perm::AuditRead) {
        let dir = st.opts.ledger_dir.clone();
        tokio::task::spawn_blocking(move || {
            crate::ledger::search(&dir, "", Some("admin"), 8)
                .map(|r| r.0)
                .unwrap_or_default()
        })
        .await
        .unwrap_or_default()
    } else {
        Vec::new()
    };
    let body = html! {
        div.top { div { h1 { "Dashboard" } p.sub { "Keys, people and the state of the audit ledger at a glance." } } }
        div.grid {
            div.stat { div.n { (active) } div.l { "active API keys" } }
            div.stat { div.n { (due) } div.l { "due for rotation" } }
            div.stat { div.n { (revoked) } div.l { "revoked keys" } }
            div.stat { div.n { (users.iter().filter(|u| u.state == UserState::Active).count()) } div.l { "console users" } }
            div.stat { div.n { (cp.as_ref().and_then(|c| c["tree_size"].as_u64()).unwrap_or(0)) } div.l { "records under the latest signed checkpoint" } }
        }
        @if p.can(Perm::AuditRead) {
            div.card {
                h2 { "Recent admin activity" }
                @if recent.is_empty() { p.muted { "Nothing yet." } } @else {
                    table {
                        thead { tr { th { "#" } th { "Time" } th { "Event" } th { "Who" } th { "Target" } } }
                        tbody { @for h in &recent {
                            tr {
                                td { a href=(format!("/console/audit/{}", h.seq)) { (h.seq) } }
                                td.mono { (h.value["ts"].as_str().unwrap_or("")) }
                                td { code { (h.value["event"].as_str().unwrap_or("")) } }
                                td { (crate::ledger::who(&h.value)) }
                                td { (crate::ledger::what(&h.value)) }
                            }
                        } }
                    }
                }
            }
        }
    };
    Ok(html_response(
        StatusCode::OK,
        page("Dashboard", &p, &csrf, Nav::Dashboard, body),
    ))
}

// ---- keys ----

fn state_badge(state: KeyState) -> Markup {
    let kind = match state {
        KeyState::Active => "ok",
        KeyState::Expired => "warn",
        KeyState::Revoked => "bad",
    };
    badge(state_name(state), kind)
}

async fn keys(State(st): S, info: ReqInfo, RawQuery(raw): RawQuery) -> PageResult {
    let p = full(&st, &info, None, Perm::KeysRead).await?;
    let csrf = p.csrf(&st);
    let q = query(raw);
    let search = q.get("q").cloned().unwrap_or_default();
    let state_q = q.get("state").cloned().unwrap_or_default();
    let filter = ListFilter {
        search: (!search.is_empty()).then(|| search.clone()),
        state: match state_q.as_str() {
            "" => None,
            s => Some(crate::api::parse_state(s)?),
        },
        limit: Some(500),
        ..ListFilter::default()
    };
    let now = st.now();
    let list = st.store().keys().list(&filter).await?;
    let body = html! {
        div.top {
            div { h1 { "API keys" } p.sub { "Scoped keys for the gateway. Secrets are never stored or shown again after creation." } }
            @if p.can(Perm::KeysWrite) { a.btn #new-key href="/console/keys/new" { "New key" } }
        }
        div.card {
            form.row method="get" action="/console/keys" {
                div { label for="q" { "Search" } input #q type="search" name="q" value=(search) placeholder="ID, name, owner or description"; }
                div.shrink { label for="state" { "State" }
                    select #state name="state" {
                        @for (v, l) in [("", "Any"), ("active", "Active"), ("expired", "Expired"), ("revoked", "Revoked")] {
                            option value=(v) selected[state_q == v] { (l) }
                        }
                    }
                }
                div.shrink { button.secondary type="submit" { "Filter" } }
            }
        }
        div.card {
            @if list.is_empty() { p.muted { "No keys match." } } @else {
                table #keys-table {
                    thead { tr { th { "Name" } th { "ID" } th { "Owner" } th { "Models" } th { "State" } th { "Last used" } th { "Rotation due" } } }
                    tbody { @for k in &list {
                        tr {
                            td { a href=(format!("/console/keys/{}", k.id)) { (k.name) } }
                            td.mono { (k.id.as_str()) }
                            td { (k.owner) @if let Some(t) = &k.team { span.muted { " · " (t) } } }
                            td.mono { (k.scope.models.patterns().iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")) }
                            td { (state_badge(k.state(now))) }
                            td.mono { (k.last_used_at.map(rfc3339).unwrap_or_else(|| "never".into())) }
                            td.mono { (rfc3339(k.secret_created_at + st.opts.keys_policy.max_age)) }
                        }
                    } }
                }
            }
        }
    };
    Ok(html_response(
        StatusCode::OK,
        page("API keys", &p, &csrf, Nav::Keys, body),
    ))
}

fn new_key_page(p: &Principal, csrf: &str, error: Option<&str>) -> Markup {
    let caps = ["chat", "stream", "completions", "embeddings", "models"];
    page(
        "New key",
        p,
        csrf,
        Nav::Keys,
        html! {
            div.top { div { h1 { "New API key" } p.sub { "Least privilege: a key may use only the models you list." } } }
            @if let Some(e) = error { (flash("error", e)) }
            div.card {
                form method="post" action="/console/keys" {
                    input type="hidden" name="csrf" value=(csrf);
                    div.row {
                        div.field { label for="name" { "Name" } input #name type="text" name="name" required maxlength="128"; }
                        div.field { label for="owner" { "Owner" } input #owner type="text" name="owner" placeholder=(p.user.username); }
                        div.field { label for="team" { "Team" } input #team type="text" name="team"; }
                    }
                    div.field { label for="description" { "Description" } input #description type="text" name="description" maxlength="1024"; }
                    div.field { label for="models" { "Models " span.hint { "(comma-separated names or globs, such as gpt-4o-mini, mock-*)" } } input #models type="text" name="models" required; }
                    div.field { label { "Capabilities" }
                        div.checks { @for c in caps { label { input type="checkbox" name="capabilities" value=(c) checked; (c) } } }
                    }
                    div.row {
                        div.field { label for="rpm" { "Requests / minute" } input #rpm type="number" name="rpm" min="1"; }
                        div.field { label for="tpm" { "Tokens / minute" } input #tpm type="number" name="tpm" min="1"; }
                        div.field { label for="expires_in" { "Expires in " span.hint { "(such as 90d; empty: never)" } } input #expires_in type="text" name="expires_in"; }
                    }
                    div.field { label for="cidrs" { "Allowed networks " span.hint { "(comma-separated CIDRs; empty: any)" } } input #cidrs type="text" name="cidrs"; }
                    button #create-key type="submit" { "Create key" }
                }
            }
        },
    )
}

async fn new_key_form(State(st): S, info: ReqInfo) -> PageResult {
    let p = full(&st, &info, None, Perm::KeysWrite).await?;
    let csrf = p.csrf(&st);
    Ok(html_response(StatusCode::OK, new_key_page(&p, &csrf, None)))
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

fn opt_u32(field: &str, s: &str) -> Result<Option<u32>, ConsoleError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| ConsoleError::invalid(format!("{field}: must be a whole number")))
}

fn secret_page(
    p: &Principal,
    csrf: &str,
    title: &str,
    id: &KeyId,
    secret: &str,
    note: &str,
) -> Markup {
    page(
        title,
        p,
        csrf,
        Nav::Keys,
        html! {
            div.top { div { h1 { (title) } p.sub { (note) } } }
            div.card {
                (flash("warn", "This secret is shown once. Copy it into your secret manager now: it cannot be shown again."))
                (secret_box("key-secret", secret))
                br;
                a.btn.secondary href=(format!("/console/keys/{id}")) { "Go to the key" }
            }
        },
    )
}

async fn create_key(
    State(st): S,
    info: ReqInfo,
    form: FormBody<Vec<(String, String)>>,
) -> PageResult {
    let p = full(&st, &info, form.csrf.as_deref(), Perm::KeysWrite).await?;
    let csrf = p.csrf(&st);
    let get = |k: &str| {
        form.value
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let parsed = (|| -> Result<NewKeyInput, ConsoleError> {
        let capabilities: Vec<String> = form
            .value
            .iter()
            .filter(|(n, _)| n == "capabilities")
            .map(|(_, v)| v.clone())
            .collect();
        Ok(NewKeyInput {
            name: get("name"),
            owner: Some(get("owner")),
            team: Some(get("team")),
            description: Some(get("description")),
            models: split_list(&get("models")),
            capabilities: Some(if capabilities.is_empty() {
                split_list(DEFAULT_CAPABILITIES)
            } else {
                capabilities
            }),
            cidrs: split_list(&get("cidrs")),
            rpm: opt_u32("rpm", &get("rpm"))?,
            tpm: opt_u32("tpm", &get("tpm"))?,
            expires_in: Some(get("expires_in")),
            ..NewKeyInput::default()
        })
    })();
    let result = match parsed.and_then(|i| i.into_new_key(&p.user.username, st.now())) {
        Ok(new) => st
            .store()
            .keys()
            .create(&st.opts.minter, new, &p.actor(), &mut rand::rngs::OsRng)
            .await
            .map_err(ConsoleError::from),
        Err(e) => Err(e),
    };
    match result {
        Ok((rec, secret)) => Ok(html_response(
            StatusCode::CREATED,
            secret_page(
                &p,
                &csrf,
                "Key created",
                &rec.id,
                custos_types::ExposeSecret::expose_secret(&secret),
                &format!("{} ({})", rec.name, rec.id),
            ),
        )),
        Err(e @ ConsoleError::Invalid { .. }) => Ok(html_response(
            StatusCode::BAD_REQUEST,
            new_key_page(&p, &csrf, Some(&e.to_string())),
        )),
        Err(e) => Err(e.into()),
    }
}

fn parse_key_id(s: &str) -> Result<KeyId, ConsoleError> {
    KeyId::parse(s).map_err(|_| ConsoleError::NotFound("no such key".into()))
}

async fn key_detail(State(st): S, info: ReqInfo, Path(id): Path<String>) -> PageResult {
    let p = full(&st, &info, None, Perm::KeysRead).await?;
    let csrf = p.csrf(&st);
    let id = parse_key_id(&id)?;
    let k = st
        .store()
        .keys()
        .get(&id)
        .await?
        .ok_or_else(|| ConsoleError::NotFound(format!("key {id} does not exist")))?;
    let history = st.store().key_events(&id).await?;
    let now = st.now();
    let state = k.state(now);
    let body = html! {
        div.top {
            div { h1 { (k.name) " " (state_badge(state)) } p.sub.mono { (k.id.as_str()) " · " (k.masked) } }
            a.btn.secondary href="/console/keys" { "All keys" }
        }
        div.card {
            dl.kv {
                dt { "Owner" } dd { (k.owner) @if let Some(t) = &k.team { " · " (t) } }
                dt { "Description" } dd { (if k.description.is_empty() { "—" } else { &k.description }) }
                dt { "Models" } dd.mono { (k.scope.models.patterns().iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")) }
                dt { "Capabilities" } dd.mono { (k.scope.capabilities.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")) }
                dt { "Limits" } dd { (k.scope.rpm.map_or("no RPM limit".into(), |r| format!("{r} req/min"))) " · " (k.scope.tpm.map_or("no TPM limit".into(), |t| format!("{t} tokens/min"))) }
                dt { "Last used" } dd #last-used.mono { (k.last_used_at.map(rfc3339).unwrap_or_else(|| "never".into())) }
                dt { "Created" } dd.mono { (rfc3339(k.created_at)) " by " (k.created_by.name) }
                dt { "Secret issued" } dd.mono { (rfc3339(k.secret_created_at)) }
                dt { "Rotation due" } dd.mono { (rfc3339(k.secret_created_at + st.opts.keys_policy.max_age)) }
                @if let Some(g) = k.grace_until { dt { "Old secret valid until" } dd.mono { (rfc3339(g)) } }
                @if let Some(e) = k.expires_at { dt { "Expires" } dd.mono { (rfc3339(e)) } }
                @if let Some(r) = &k.revoked { dt { "Revoked" } dd { span.mono { (rfc3339(r.at)) } " by " (r.by.name) ": " (r.reason) } }
            }
        }
        @if p.can(Perm::KeysWrite) && state != KeyState::Revoked {
            div.grid {
                div.card {
                    h2 { "Rotate" }
                    p.muted { "Issue a new secret. The old one keeps working for the grace period, then stops." }
                    form method="post" action=(format!("/console/keys/{id}/rotate")) data-confirm="Issue a new secret for this key?" {
                        input type="hidden" name="csrf" value=(csrf);
                        div.row {
                            div { label for="grace" { "Grace period" }
                                select #grace name="grace" {
                                    @for (v, l) in [("0s", "None: stop the old secret now"), ("1h", "1 hour"), ("24h", "24 hours"), ("7d", "7 days"), ("30d", "30 days")] {
                                        option value=(v) selected[v == "24h"] { (l) }
                                    }
                                }
                            }
                            div.shrink { button #rotate-key type="submit" { "Rotate" } }
                        }
                    }
                }
                div.card {
                    h2 { "Revoke" }
                    p.muted { "Stops the key at once, for good. This cannot be undone." }
                    form method="post" action=(format!("/console/keys/{id}/revoke")) data-confirm="Revoke this key for good? Every client using it stops working." {
                        input type="hidden" name="csrf" value=(csrf);
                        div.field { label for="reason" { "Reason " span.hint { "(recorded in the audit log)" } } input #reason type="text" name="reason" required maxlength="1024"; }
                        div.field.checks { label { input #confirm-revoke type="checkbox" name="confirm" value="yes" required; "I understand this is final" } }
                        button.danger #revoke-key type="submit" { "Revoke key" }
                    }
                }
            }
        }
        div.card {
            h2 { "Lifecycle" }
            table #history {
                thead { tr { th { "When" } th { "Event" } th { "By" } th { "Changed" } th { "Reason" } } }
                tbody { @for e in &history {
                    tr {
                        td.mono { (rfc3339(crate::keyjson::custos_store_time(e.at_ms))) }
                        td { code { (e.kind.as_str()) } }
                        td { (e.actor.name) span.muted { " (" (e.actor.kind.as_str()) @if e.actor.mfa { ", mfa" } ")" } }
                        td.mono { (e.changes.keys().cloned().collect::<Vec<_>>().join(", ")) }
                        td { (e.reason.clone().unwrap_or_default()) }
                    }
                } }
            }
        }
    };
    Ok(html_response(
        StatusCode::OK,
        page(&k.name, &p, &csrf, Nav::Keys, body),
    ))
}

#[derive(Debug, Deserialize)]
struct RotateForm {
    #[serde(default)]
    grace: String,
}

async fn rotate_key(
    State(st): S,
    info: ReqInfo,
    Path(id): Path<String>,
    form: FormBody<RotateForm>,
) -> PageResult {
    let p = full(&st, &info, form.csrf.as_deref(), Perm::KeysWrite).await?;
    let csrf = p.csrf(&st);
    let id = parse_key_id(&id)?;
    let grace = if form.value.grace.is_empty() {
        Duration::ZERO
    } else {
        parse_duration("grace", &form.value.grace)?
    };
    let (rec, secret) = st
        .store()
        .keys()
        .rotate(
            &st.opts.minter,
            id,
            grace,
            None,
            &p.actor(),
            &mut rand::rngs::OsRng,
        )
        .await?;
    let note = format!(
        "{} ({}): the old secret works for {}",
        rec.name,
        rec.id,
        humantime::format_duration(grace)
    );
    Ok(html_response(
        StatusCode::OK,
        secret_page(
            &p,
            &csrf,
            "Key rotated",
            &rec.id,
            custos_types::ExposeSecret::expose_secret(&secret),
            &note,
        ),
    ))
}

#[derive(Debug, Deserialize)]
struct RevokeForm {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    confirm: String,
}

async fn revoke_key(
    State(st): S,
    info: ReqInfo,
    Path(id): Path<String>,
    form: FormBody<RevokeForm>,
) -> PageResult {
    let p = full(&st, &info, form.csrf.as_deref(), Perm::KeysWrite).await?;
    let id = parse_key_id(&id)?;
    if form.value.confirm != "yes" {
        return Err(ConsoleError::invalid("confirm: tick the box to revoke the key").into());
    }
    if form.value.reason.trim().is_empty() {
        return Err(ConsoleError::invalid("reason: say why the key is revoked").into());
    }
    st.store()
        .keys()
        .revoke(&id, &p.actor(), form.value.reason.trim())
        .await?;
    Ok(Redirect::to(&format!("/console/keys/{id}")).into_response())
}

// ---- audit ----

async fn audit(State(st): S, info: ReqInfo, RawQuery(raw): RawQuery) -> PageResult {
    let p = full(&st, &info, None, Perm::AuditRead).await?;
    let csrf = p.csrf(&st);
    let q = query(raw);
    let text = q.get("q").cloned().unwrap_or_default();
    let kind = q.get("type").cloned().unwrap_or_default();
    let kind_filter = match kind.as_str() {
        "" => None,
        k @ ("inference" | "admin" | "system") => Some(k.to_owned()),
        _ => return Err(ConsoleError::invalid("type: must be inference, admin or system").into()),
    };
    let dir = st.opts.ledger_dir.clone();
    let (t2, k2) = (text.clone(), kind_filter.clone());
    let (hits, scanned, cp) = tokio::task::spawn_blocking(move || {
        let (hits, scanned) = crate::ledger::search(&dir, &t2, k2.as_deref(), 100)?;
        let cp = crate::ledger::checkpoint(&dir)?;
        Ok::<_, String>((hits, scanned, cp))
    })
    .await
    .map_err(|e| ConsoleError::Internal(e.to_string()))?
    .map_err(ConsoleError::Internal)?;
    let body = html! {
        div.top { div { h1 { "Audit log" } p.sub { "Every request and admin action, in a signed, tamper-evident Merkle log." } } }
        div.grid {
            div.card #checkpoint {
                h2 { "Latest signed checkpoint" }
                @if let Some(cp) = &cp {
                    dl.kv {
                        dt { "Tree size" } dd.mono { (cp["tree_size"]) }
                        dt { "Origin" } dd.mono { (cp["origin"].as_str().unwrap_or("")) }
                        dt { "Root hash" } dd.mono { (cp["root_hash"].as_str().unwrap_or("")) }
                        dt { "Signed by" } dd.mono { (cp["signed_by"].as_array().map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                    }
                } @else { p.muted { "No checkpoint yet." } }
            }
            div.card {
                h2 { "Verify" }
                p.muted { "Recompute every leaf, the tree and every checkpoint signature now, with the independent verifier." }
                form method="post" action="/console/audit/verify" {
                    input type="hidden" name="csrf" value=(csrf);
                    button #verify-now type="submit" { "Verify now" }
                }
            }
        }
        div.card {
            form.row method="get" action="/console/audit" {
                div { label for="q" { "Search" } input #q type="search" name="q" value=(text) placeholder="event, user, key ID, request ID…"; }
                div.shrink { label for="type" { "Type" }
                    select #type name="type" { @for (v, l) in [("", "Any"), ("admin", "Admin"), ("inference", "Requests"), ("system", "System")] { option value=(v) selected[kind == v] { (l) } } }
                }
                div.shrink { button.secondary type="submit" { "Search" } }
                div.shrink { a.btn.secondary href=(format!("/admin/v1/audit/export?{}", serde_urlencoded::to_string([("q", text.as_str()), ("type", kind.as_str())]).unwrap_or_default())) { "Export JSONL" } }
            }
            p.muted { (hits.len()) " newest matches of " (scanned) " records." }
            table #audit-table {
                thead { tr { th { "#" } th { "Time" } th { "Type" } th { "Event" } th { "Who" } th { "Target" } } }
                tbody { @for h in &hits {
                    tr {
                        td { a href=(format!("/console/audit/{}", h.seq)) { (h.seq) } }
                        td.mono { (h.value["ts"].as_str().unwrap_or("")) }
                        td { (badge(h.value["type"].as_str().unwrap_or(""), "info")) }
                        td { code { (h.value["event"].as_str().unwrap_or("")) } }
                        td { (crate::ledger::who(&h.value)) }
                        td { (crate::ledger::what(&h.value)) }
                    }
                } }
            }
        }
    };
    Ok(html_response(
        StatusCode::OK,
        page("Audit log", &p, &csrf, Nav::Audit, body),
    ))
}

async fn audit_record(State(st): S, info: ReqInfo, Path(seq): Path<String>) -> PageResult {
    let p = full(&st, &info, None, Perm::AuditRead).await?;
    let csrf = p.csrf(&st);
    let seq: u64 = seq
        .parse()
        .map_err(|_| ConsoleError::NotFound("no such record".into()))?;
    let dir = st.opts.ledger_dir.clone();
    let found = tokio::task::spawn_blocking(move || crate::ledger::record(&dir, seq))
        .await
        .map_err(|e| ConsoleError::Internal(e.to_string()))?
        .map_err(ConsoleError::Internal)?;
    let Some((text, value)) = found else {
        return Err(ConsoleError::NotFound(format!("record {seq} does not exist")).into());
    };
    let pretty = serde_json::to_string_pretty(&value).unwrap_or(text.clone());
    let body = html! {
        div.top {
            div { h1 { "Record " (seq) } p.sub { code { (value["event"].as_str().unwrap_or("")) } " · " (value["ts"].as_str().unwrap_or("")) } }
            a.btn.secondary href="/console/audit" { "Back" }
        }
        div.card { h2 { "Record" } pre.json #record-json { (pretty) } }
        div.card { h2 { "Canonical bytes (the Merkle leaf input)" } pre.json { (text) } }
    };
    Ok(html_response(
        StatusCode::OK,
        page(&format!("Record {seq}"), &p, &csrf, Nav::Audit, body),
    ))
}

async fn audit_verify(State(st): S, info: ReqInfo, form: FormBody<Empty>) -> PageResult {
    let p = full(&st, &info, form.csrf.as_deref(), Perm::AuditRead).await?;
    let csrf = p.csrf(&st);
    let report = st.verify_now(&p).await?;
    let intact = report["intact"].as_bool().unwrap_or(false);
    let body = html! {
        div.top { div { h1 { "Verification" } p.sub { "Result of the independent verifier over the ledger directory." } } a.btn.secondary href="/console/audit" { "Back" } }
        div.card #verify-result {
            @if intact { (flash("ok", "The ledger is intact.")) } @else { (flash("error", &format!("Problem: {}", report["problem"].as_str().unwrap_or("unknown")))) }
            dl.kv {
                dt { "Records checked" } dd.mono { (report["records_checked"]) }
                dt { "Tree size" } dd.mono { (report["tree_size"]) }
                dt { "Checkpoints checked" } dd.mono { (report["checkpoints_checked"]) }
                dt { "Trusted keys" } dd { (report["key_source"].as_str().unwrap_or("")) }
                @for w in report["warnings"].as_array().cloned().unwrap_or_default() { dt { "Note" } dd { (w.as_str().unwrap_or("")) } }
            }
        }
    };
    Ok(html_response(
        StatusCode::OK,
        page("Verification", &p, &csrf, Nav::Audit, body),
    ))
}

// ---- users ----

fn users_page(
    p: &Principal,
    csrf: &str,
    users: &[custos_store::UserRecord],
    now: std::time::SystemTime,
    notice: Option<Markup>,
) -> Markup {
    page(
        "Users",
        p,
        csrf,
        Nav::Users,
        html! {
            div.top { div { h1 { "Users" } p.sub { "People who can sign in to this console. Everyone uses two-step verification." } } }
            @if let Some(n) = notice { (n) }
            div.card {
                h2 { "Invite someone" }
                form.row method="post" action="/console/users/invite" {
                    input type="hidden" name="csrf" value=(csrf);
                    div { label for="invite-username" { "User name" } input #invite-username type="text" name="username" required; }
                    div.shrink { label for="invite-role" { "Role" } select #invite-role name="role" { @for r in Role::ALL { option value=(r.as_str()) selected[r == Role::Viewer] { (r.as_str()) } } } }
                    div.shrink { button type="submit" { "Create invitation link" } }
                }
            }
            div.card {
                table #users-table {
                    thead { tr { th { "User" } th { "Role" } th { "State" } th { "MFA" } th { "Last sign-in" } th { "Actions" } } }
                    tbody { @for u in users {
                        tr {
                            td { strong { (u.username) } br; span.muted.mono { (u.id) } }
                            td {
                                form.actions method="post" action=(format!("/console/users/{}/role", u.id)) {
                                    input type="hidden" name="csrf" value=(csrf);
                                    select name="role" { @for r in Role::ALL { option value=(r.as_str()) selected[r == u.role] { (r.as_str()) } } }
                                    button.secondary.small type="submit" { "Change" }
                                }
                            }
                            td {
                                @if u.state == UserState::Disabled { (badge("disabled", "bad")) }
                                @else if u.is_locked(now) { (badge("locked", "warn")) }
                                @else { (badge("active", "ok")) }
                            }
                            td { @if u.mfa_enrolled_at.is_some() { (badge("enrolled", "ok")) } @else { (badge("pending", "warn")) } }
                            td.mono { (u.last_login_at.map(rfc3339).unwrap_or_else(|| "never".into())) }
                            td.actions {
                                form.inline method="post" action=(format!("/console/users/{}/reset-mfa", u.id)) data-confirm="Reset this user's two-step verification? They must enrol again at next sign-in." {
                                    input type="hidden" name="csrf" value=(csrf); button.secondary.small type="submit" { "Reset MFA" }
                                }
                                form.inline method="post" action=(format!("/console/users/{}/reset-password", u.id)) {
                                    input type="hidden" name="csrf" value=(csrf); button.secondary.small type="submit" { "Password link" }
                                }
                                @if u.is_locked(now) {
                                    form.inline method="post" action=(format!("/console/users/{}/unlock", u.id)) {
                                        input type="hidden" name="csrf" value=(csrf); button.secondary.small type="submit" { "Unlock" }
                                    }
                                }
                                @if u.state == UserState::Active {
                                    form.inline method="post" action=(format!("/console/users/{}/disable", u.id)) data-confirm="Disable this user? Their sessions and tokens stop working." {
                                        input type="hidden" name="csrf" value=(csrf); button.danger.small type="submit" { "Disable" }
                                    }
                                } @else {
                                    form.inline method="post" action=(format!("/console/users/{}/enable", u.id)) {
                                        input type="hidden" name="csrf" value=(csrf); button.secondary.small type="submit" { "Enable" }
                                    }
                                }
                            }
                        }
                    } }
                }
            }
        },
    )
}

async fn users(State(st): S, info: ReqInfo) -> PageResult {
    let p = full(&st, &info, None, Perm::UsersManage).await?;
    let csrf = p.csrf(&st);
    let list = st.store().users().list().await?;
    Ok(html_response(
        StatusCode::OK,
        users_page(&p, &csrf, &list, st.now(), None),
    ))
}

fn link_notice(title: &str, link: &str, expires: std::time::SystemTime) -> Markup {
    html! {
        div.card {
            h2 { (title) }
            p.muted { "Send this one-time link to the person over a channel you trust. It works once, until " (rfc3339(expires)) ", and is not shown again." }
            (secret_box("invite-link", link))
        }
    }
}

#[derive(Debug, Deserialize)]
struct InviteForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    role: String,
}

async fn invite(State(st): S, info: ReqInfo, form: FormBody<InviteForm>) -> PageResult {
    let p = full(&st, &info, form.csrf.as_deref(), Perm::UsersManage).await?;
    let csrf = p.csrf(&st);
    let role = crate::api::parse_role(&form.value.role)?;
    let name = form.value.username.trim().to_lowercase();
    let notice = match crate::service::issue_invite(
        st.store(),
        &st.opts.base_url,
        st.opts.config.invite_ttl,
        Some(&name),
        role,
        false,
        &p.actor(),
    )
    .await
    {
        Ok(inv) => link_notice(
            &format!("Invitation for {name} ({role})"),
            &inv.link,
            inv.expires_at,
        ),
        Err(e) => {
            let e = ConsoleError::from(e);
            if matches!(e, ConsoleError::Internal(_) | ConsoleError::Busy) {
                return Err(e.into());
            }
            flash("error", &e.to_string())
        }
    };
    let list = st.store().users().list().await?;
    Ok(html_response(
        StatusCode::OK,
        users_page(&p, &csrf, &list, st.now(), Some(notice)),
    ))
}

#[derive(Debug, Deserialize)]
struct UserActionForm {
    #[serde(default)]
    role: String,
}

async fn user_action(
    State(st): S,
    info: ReqInfo,
    Path((id, action)): Path<(String, String)>,
    form: FormBody<UserActionForm>,
) -> PageResult {
    let p = full(&st, &info, form.csrf.as_deref(), Perm::UsersManage).await?;
    let csrf = p.csrf(&st);
    let users = st.store().users();
    let user = users
        .get(&id)
        .await?
        .ok_or_else(|| ConsoleError::NotFound("no such user".into()))?;
    let actor = p.actor();
    let result: Result<Markup, ConsoleError> = match action.as_str() {
        "role" => match crate::api::parse_role(&form.value.role) {
            Ok(role) => users
                .set_role(&id, role, &actor)
                .await
                .map(|u| flash("ok", &format!("{} is now {}.", u.username, u.role)))
                .map_err(Into::into),
            Err(e) => Err(e),
        },
        "reset-mfa" => users
            .reset_mfa(&id, &actor, "reset from the console")
            .await
            .map(|u| {
                flash(
                    "ok",
                    &format!(
                        "{} must set up two-step verification again at next sign-in.",
                        u.username
                    ),
                )
            })
            .map_err(Into::into),
        "unlock" => users
            .unlock(&id, &actor)
            .await
            .map(|u| flash("ok", &format!("{} is unlocked.", u.username)))
            .map_err(Into::into),
        "disable" => users
            .set_state(&id, UserState::Disabled, &actor)
            .await
            .map(|u| flash("ok", &format!("{} is disabled.", u.username)))
            .map_err(Into::into),
        "enable" => users
            .set_state(&id, UserState::Active, &actor)
            .await
            .map(|u| flash("ok", &format!("{} is enabled.", u.username)))
            .map_err(Into::into),
        "reset-password" => crate::service::issue_invite(
            st.store(),
            &st.opts.base_url,
            st.opts.config.invite_ttl,
            Some(&user.username),
            user.role,
            true,
            &actor,
        )
        .await
        .map(|inv| {
            link_notice(
                &format!("Password reset link for {}", user.username),
                &inv.link,
                inv.expires_at,
            )
        })
        .map_err(Into::into),
        _ => return Err(ConsoleError::NotFound("no such action".into()).into()),
    };
    let notice = match result {
        Ok(m) => m,
        Err(e @ (ConsoleError::Internal(_) | ConsoleError::Busy)) => return Err(e.into()),
        Err(e) => flash("error", &e.to_string()),
    };
    let list = users.list().await?;
    Ok(html_response(
        StatusCode::OK,
        users_page(&p, &csrf, &list, st.now(), Some(notice)),
    ))
}

// ---- account ----

async fn account_page(
    st: &ConsoleState,
    p: &Principal,
    csrf: &str,
    notice: Option<Markup>,
) -> Result<Markup, ConsoleError> {
    let left = st.store().users().recovery_codes_left(&p.user.id).await?;
    let tokens = st.store().tokens().list(Some(&p.user.id)).await?;
    let now = st.now();
    Ok(page(
        "Account",
        p,
        csrf,
        Nav::Account,
        html! {
            div.top { div { h1 { "Account" } p.sub { (p.user.username) " · " (p.role.as_str()) } } }
            @if let Some(n) = notice { (n) }
            div.grid {
                div.card {
                    h2 { "Change password" }
                    form method="post" action="/console/account/password" {
                        input type="hidden" name="csrf" value=(csrf);
                        div.field { label for="current" { "Current password" } input #current type="password" name="current" autocomplete="current-password" required; }
                        div.field { label for="new" { "New password" } input #new type="password" name="new" autocomplete="new-password" required minlength="12"; }
                        div.field { label for="confirm" { "Repeat the new password" } input #confirm type="password" name="confirm" autocomplete="new-password" required; }
                        button type="submit" { "Change password" }
                    }
                }
                div.card {
                    h2 { "Recovery codes" }
                    p.muted { (left) " unused recovery codes left. New codes replace all old ones." }
                    form method="post" action="/console/account/recovery-codes" data-confirm="Replace all your recovery codes?" {
                        input type="hidden" name="csrf" value=(csrf);
                        div.field { label for="rc-password" { "Your password" } input #rc-password type="password" name="password" autocomplete="current-password" required; }
                        button type="submit" { "Generate new codes" }
                    }
                }
            }
            div.card {
                h2 { "Admin API tokens" }
                p.muted { "For scripts and the " code { "custos keys" } " command line (CUSTOS_ADMIN_URL and CUSTOS_ADMIN_TOKEN). A token acts with the role you give it and stops at its expiry." }
                form.row method="post" action="/console/account/tokens" {
                    input type="hidden" name="csrf" value=(csrf);
                    div { label for="token-name" { "Name" } input #token-name type="text" name="name" required maxlength="128"; }
                    div.shrink { label for="token-role" { "Role" } select #token-role name="role" { @for r in Role::ALL.into_iter().filter(|r| p.role.may_grant(*r)) { option value=(r.as_str()) selected[r == p.role] { (r.as_str()) } } } }
                    div.shrink { label for="token-ttl" { "Expires in" } select #token-ttl name="expires_in" { @for v in ["1d", "7d", "30d", "90d"] { option value=(v) selected[v == "30d"] { (v) } } } }
                    div.shrink { button type="submit" { "Create token" } }
                }
                @if !tokens.is_empty() {
                    table {
                        thead { tr { th { "Name" } th { "Role" } th { "Expires" } th { "Last used" } th { "State" } th {} } }
                        tbody { @for t in &tokens {
                            tr {
                                td { (t.name) br; span.muted.mono { (t.id) } }
                                td { (t.role.as_str()) }
                                td.mono { (rfc3339(t.expires_at)) }
                                td.mono { (t.last_used_at.map(rfc3339).unwrap_or_else(|| "never".into())) }
                                td { @if t.is_usable(now) { (badge("active", "ok")) } @else if t.revoked_at.is_some() { (badge("revoked", "bad")) } @else { (badge("expired", "warn")) } }
                                td.right { @if t.is_usable(now) {
                                    form.inline method="post" action=(format!("/console/account/tokens/{}/revoke", t.id)) data-confirm="Revoke this token?" {
                                        input type="hidden" name="csrf" value=(csrf); button.danger.small type="submit" { "Revoke" }
                                    }
                                } }
                            }
                        } }
                    }
                }
            }
        },
    ))
}

async fn account(State(st): S, info: ReqInfo) -> PageResult {
    let p = full(&st, &info, None, Perm::Dashboard).await?;
    let csrf = p.csrf(&st);
    Ok(html_response(
        StatusCode::OK,
        account_page(&st, &p, &csrf, None).await?,
    ))
}

#[derive(Debug, Deserialize)]
struct PasswordForm {
    #[serde(default)]
    current: crypto::Secret,
    #[serde(default)]
    new: crypto::Secret,
    #[serde(default)]
    confirm: crypto::Secret,
}

async fn change_password(State(st): S, info: ReqInfo, form: FormBody<PasswordForm>) -> PageResult {
    let p = full(&st, &info, form.csrf.as_deref(), Perm::Dashboard).await?;
    let csrf = p.csrf(&st);
    let f = &form.value;
    let notice = if !st.check_password(&p.user.id, f.current.expose()).await? {
        flash("error", "the current password is wrong")
    } else if !crypto::ct_eq(f.new.expose(), f.confirm.expose()) {
        flash("error", "the two new passwords differ")
    } else {
        match st.new_password_hash(&p.user.username, f.new.expose()).await {
            Ok(hash) => {
                st.store()
                    .users()
                    .set_password(&p.user.id, &hash, p.session_hash(), &p.actor())
                    .await?;
                flash(
                    "ok",
                    "Password changed. Your other sessions were signed out.",
                )
            }
            Err(ConsoleError::Invalid { message, .. }) => flash("error", &message),
            Err(e) => return Err(e.into()),
        }
    };
    Ok(html_response(
        StatusCode::OK,
        account_page(&st, &p, &csrf, Some(notice)).await?,
    ))
}

#[derive(Debug, Deserialize)]
struct PasswordOnly {
    #[serde(default)]
    password: crypto::Secret,
}

async fn regenerate_codes(State(st): S, info: ReqInfo, form: FormBody<PasswordOnly>) -> PageResult {
    let p = full(&st, &info, form.csrf.as_deref(), Perm::Dashboard).await?;
    let csrf = p.csrf(&st);
    if !st
        .check_password(&p.user.id, form.value.password.expose())
        .await?
    {
        return Ok(html_response(
            StatusCode::OK,
            account_page(
                &st,
                &p,
                &csrf,
                Some(flash("error", "the password is wrong")),
            )
            .await?,
        ));
    }
    let codes = st.regenerate_codes(&p).await?;
    let notice = html! {
        div.card {
            h2 { "New recovery codes" }
            (flash("warn", "Save these now: they are shown only once, and your old codes no longer work."))
            (codes_block(&codes))
        }
    };
    Ok(html_response(
        StatusCode::OK,
        account_page(&st, &p, &csrf, Some(notice)).await?,
    ))
}

#[derive(Debug, Deserialize)]
struct TokenForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    expires_in: String,
}

async fn create_token(State(st): S, info: ReqInfo, form: FormBody<TokenForm>) -> PageResult {
    let p = full(&st, &info, form.csrf.as_deref(), Perm::Dashboard).await?;
    let csrf = p.csrf(&st);
    let f = &form.value;
    let result = async {
        let role = crate::api::parse_role(&f.role)?;
        let ttl = parse_duration(
            "expires_in",
            if f.expires_in.is_empty() {
                "30d"
            } else {
                &f.expires_in
            },
        )?;
        st.create_token(&p, &f.name, role, ttl).await
    }
    .await;
    let notice = match result {
        Ok((token, rec)) => html! {
            div.card {
                h2 { "Token " (rec.name) " created" }
                (flash("warn", "This token is shown once. Store it in your secret manager now."))
                (secret_box("admin-token", &token))
            }
        },
        Err(e @ (ConsoleError::Internal(_) | ConsoleError::Busy)) => return Err(e.into()),
        Err(e) => flash("error", &e.to_string()),
    };
    Ok(html_response(
        StatusCode::OK,
        account_page(&st, &p, &csrf, Some(notice)).await?,
    ))
}

async fn revoke_token(
    State(st): S,
    info: ReqInfo,
    Path(id): Path<String>,
    form: FormBody<Empty>,
) -> PageResult {
    let p = full(&st, &info, form.csrf.as_deref(), Perm::Dashboard).await?;
    let csrf = p.csrf(&st);
    let rec = st
        .store()
        .tokens()
        .get(&id)
        .await?
        .ok_or_else(|| ConsoleError::NotFound("no such token".into()))?;
    if rec.user_id != p.user.id && !p.can(Perm::UsersManage) {
        return Err(ConsoleError::Forbidden(
            "only an admin may revoke another user's token".into(),
        )
        .into());
    }
    st.store().tokens().revoke(&id, &p.actor()).await?;
    Ok(html_response(
        StatusCode::OK,
        account_page(&st, &p, &csrf, Some(flash("ok", "Token revoked."))).await?,
    ))
}
