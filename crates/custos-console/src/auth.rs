//! Who is asking: the session cookie or the admin token, the principal
//! with its role, permission checks, CSRF checks, and the body extractors
//! that turn bad input into our error shape.
//!
//! Permission table (checked server-side in every handler):
//!
//! | permission   | admin | key_manager | auditor | viewer |
//! |--------------|-------|-------------|---------|--------|
//! | dashboard    | yes   | yes         | yes     | yes    |
//! | keys.read    | yes   | yes         | yes     |        |
//! | keys.write   | yes   | yes         |         |        |
//! | audit.read   | yes   |             | yes     |        |
//! | users.manage | yes   |             |         |        |

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use http::request::Parts;
use http::{HeaderMap, Method, header};
use serde::de::DeserializeOwned;

use custos_store::{Actor, ActorKind, Role, SessionStage, UserRecord, UserState};

use crate::ConsoleState;
use crate::crypto;
use crate::error::ConsoleError;

/// The largest request body the console and API accept.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// How long a half-finished sign-in (password accepted, MFA pending) lasts.
pub(crate) const PENDING_SESSION: Duration = Duration::from_secs(10 * 60);

/// What a role may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Perm {
    Dashboard,
    KeysRead,
    KeysWrite,
    AuditRead,
    UsersManage,
    IncidentsRead,
    IncidentsWrite,
}

impl Perm {
    pub(crate) fn allowed(self, role: Role) -> bool {
        matches!(
            (self, role),
            (_, Role::Admin)
                | (Perm::Dashboard, _)
                | (Perm::KeysRead | Perm::KeysWrite, Role::KeyManager)
                | (
                    Perm::KeysRead | Perm::AuditRead | Perm::IncidentsRead,
                    Role::Auditor
                )
        )
    }

    fn name(self) -> &'static str {
        match self {
            Perm::Dashboard => "the dashboard",
            Perm::KeysRead => "reading keys",
            Perm::KeysWrite => "changing keys",
            Perm::AuditRead => "the audit ledger",
            Perm::UsersManage => "managing users",
            Perm::IncidentsRead => "reading incidents",
            Perm::IncidentsWrite => "acting on incidents",
        }
    }
}

/// The request facts authentication needs, extracted once.
#[derive(Debug, Clone)]
pub(crate) struct ReqInfo {
    pub(crate) ip: Option<IpAddr>,
    pub(crate) session_id: Option<String>,
    pub(crate) bearer: Option<String>,
    pub(crate) csrf_header: Option<String>,
    /// False when `Origin` or `Sec-Fetch-Site` says another site sent it.
    pub(crate) same_origin: bool,
    pub(crate) method: Method,
}

/// The session cookie's name: `__Host-` prefixed under TLS, which makes
/// browsers insist on `Secure`, `Path=/` and no `Domain`.
pub(crate) fn cookie_name(secure: bool) -> &'static str {
    if secure {
        "__Host-custos_session"
    } else {
        "custos_session"
    }
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

impl FromRequestParts<Arc<ConsoleState>> for ReqInfo {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ConsoleState>,
    ) -> Result<Self, Self::Rejection> {
        let h = &parts.headers;
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let bearer = h
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty() && v.len() <= 256);
        let csrf_header = h
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // Browsers send Sec-Fetch-Site on every request and Origin on
        // every POST; a value naming another site is refused outright, on
        // top of the CSRF token.
        let fetch_site = h.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        let fetch_site_ok = fetch_site.is_none_or(|v| matches!(v, "same-origin" | "none"));
        let origin_ok = match (h.get(header::ORIGIN), h.get(header::HOST)) {
            (None, _) => true,
            // A privacy setting can make the browser send `null`; then the
            // fetch metadata must vouch for the request.
            (Some(o), _) if o.as_bytes() == b"null" => fetch_site == Some("same-origin"),
            (Some(o), host) => {
                let o = o.to_str().unwrap_or("");
                let host = host.and_then(|v| v.to_str().ok()).unwrap_or("");
                o.strip_prefix("http://")
                    .or_else(|| o.strip_prefix("https://"))
                    .is_some_and(|rest| rest == host)
                    || state.opts.base_url == o
            }
        };
        Ok(ReqInfo {
            ip,
            session_id: cookie_value(h, cookie_name(state.secure)),
            bearer,
            csrf_header,
            same_origin: fetch_site_ok && origin_ok,
            method: parts.method.clone(),
        })
    }
}

/// How a principal authenticated.
#[derive(Debug, Clone)]
pub(crate) enum Via {
    /// A console session; the raw ID is kept to derive the CSRF token.
    Session { id: String, id_hash: String },
    /// An admin API token.
    Token {
        /// `tok_…`.
        id: String,
    },
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub(crate) struct Principal {
    pub(crate) user: UserRecord,
    pub(crate) role: Role,
    pub(crate) via: Via,
    pub(crate) ip: Option<IpAddr>,
}

impl Principal {
    /// The actor recorded with this principal's changes.
    pub(crate) fn actor(&self) -> Actor {
        match &self.via {
            Via::Session { .. } => Actor {
                kind: ActorKind::User,
                name: self.user.username.clone(),
                mfa: true,
                ip: self.ip,
                role: Some(self.role.as_str().to_owned()),
            },
            Via::Token { id } => Actor {
                kind: ActorKind::Api,
                name: format!("{} (token {id})", self.user.username),
                mfa: false,
                ip: self.ip,
                role: Some(self.role.as_str().to_owned()),
            },
        }
    }

    /// Refuses unless the role allows `perm`.
    pub(crate) fn require(&self, perm: Perm) -> Result<(), ConsoleError> {
        if perm.allowed(self.role) {
            Ok(())
        } else {
            Err(ConsoleError::Forbidden(format!(
                "the {} role does not allow {}",
                self.role,
                perm.name()
            )))
        }
    }

    pub(crate) fn can(&self, perm: Perm) -> bool {
        perm.allowed(self.role)
    }

    /// The CSRF token to embed in forms (empty for token callers).
    pub(crate) fn csrf(&self, state: &ConsoleState) -> String {
        match &self.via {
            Via::Session { id, .. } => state.opts.server_keys.csrf_token(id),
            Via::Token { .. } => String::new(),
        }
    }

    pub(crate) fn session_hash(&self) -> Option<&str> {
        match &self.via {
            Via::Session { id_hash, .. } => Some(id_hash),
            Via::Token { .. } => None,
        }
    }

    pub(crate) fn is_session(&self) -> bool {
        matches!(self.via, Via::Session { .. })
    }
}

/// A session that has passed the password but not (yet) the second factor.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) user: UserRecord,
    pub(crate) id: String,
    pub(crate) id_hash: String,
}

impl ConsoleState {
    fn session_alive(
        &self,
        created: SystemTime,
        last_seen: SystemTime,
        expires: SystemTime,
        stage: SessionStage,
    ) -> bool {
        let now = self.now();
        if now >= expires {
            return false;
        }
        let idle = match stage {
            SessionStage::Full => self.opts.config.session_idle_timeout,
            SessionStage::Mfa | SessionStage::Enrol => PENDING_SESSION,
        };
        now < last_seen + idle
            && now
                >= created
                    .checked_sub(Duration::from_secs(60))
                    .unwrap_or(created)
    }

    /// Looks up the session cookie: its record and user, if the session is
    /// alive and the user active. Expired sessions are deleted.
    async fn session(
        &self,
        info: &ReqInfo,
    ) -> Result<Option<(String, String, custos_store::SessionRecord, UserRecord)>, ConsoleError>
    {
        let Some(id) = &info.session_id else {
            return Ok(None);
        };
        let id_hash = crypto::sha256_hex(id);
        let sessions = self.store().sessions();
        let Some(rec) = sessions.get(&id_hash).await? else {
            return Ok(None);
        };
        if !self.session_alive(rec.created_at, rec.last_seen_at, rec.expires_at, rec.stage) {
            sessions.delete(&id_hash).await?;
            return Ok(None);
        }
        let Some(user) = self.store().users().get(&rec.user_id).await? else {
            return Ok(None);
        };
        if user.state != UserState::Active {
            sessions.delete(&id_hash).await?;
            return Ok(None);
        }
        Ok(Some((id.clone(), id_hash, rec, user)))
    }

    /// The fully signed-in principal behind the request (session or
    /// token). For sessions, a state-changing method must carry the CSRF
    /// token in `csrf` (a form field) or the `X-CSRF-Token` header.
    pub(crate) async fn principal(
        &self,
        info: &ReqInfo,
        csrf: Option<&str>,
    ) -> Result<Principal, ConsoleError> {
        if let Some(token) = &info.bearer {
            return self.token_principal(info, token).await;
        }
        let Some((id, id_hash, rec, user)) = self.session(info).await? else {
            return Err(ConsoleError::Unauthenticated);
        };
        if rec.stage != SessionStage::Full {
            return Err(ConsoleError::MfaRequired);
        }
        let changing = !matches!(info.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if changing {
            let given = csrf.or(info.csrf_header.as_deref()).unwrap_or("");
            if !info.same_origin || !self.opts.server_keys.csrf_ok(&id, given) {
                return Err(ConsoleError::Csrf);
            }
        }
        self.store().sessions().touch(&id_hash).await?;
        Ok(Principal {
            role: user.role,
            user,
            via: Via::Session { id, id_hash },
            ip: info.ip,
        })
    }

    async fn token_principal(
        &self,
        info: &ReqInfo,
        token: &str,
    ) -> Result<Principal, ConsoleError> {
        let hash = crypto::sha256_hex(token);
        let Some(rec) = self.store().tokens().by_hash(&hash).await? else {
            return Err(ConsoleError::Unauthenticated);
        };
        if !rec.is_usable(self.now()) {
            return Err(ConsoleError::Unauthenticated);
        }
        let Some(user) = self.store().users().get(&rec.user_id).await? else {
            return Err(ConsoleError::Unauthenticated);
        };
        if user.state != UserState::Active || user.mfa_enrolled_at.is_none() {
            return Err(ConsoleError::Unauthenticated);
        }
        if let Err(e) = self.store().tokens().touch(&rec.id).await {
            tracing::warn!(error = %e, "cannot record admin token use");
        }
        Ok(Principal {
            role: rec.role,
            user,
            via: Via::Token { id: rec.id },
            ip: info.ip,
        })
    }

    /// The half-finished sign-in behind the request, at `stage`.
    pub(crate) async fn pending(
        &self,
        info: &ReqInfo,
        stage: SessionStage,
        csrf: Option<&str>,
    ) -> Result<Pending, ConsoleError> {
        let Some((id, id_hash, rec, user)) = self.session(info).await? else {
            return Err(ConsoleError::Unauthenticated);
        };
        if rec.stage != stage {
            return Err(ConsoleError::Unauthenticated);
        }
        if info.method == Method::POST {
            let given = csrf.unwrap_or("");
            if !info.same_origin || !self.opts.server_keys.csrf_ok(&id, given) {
                return Err(ConsoleError::Csrf);
            }
        }
        Ok(Pending { user, id, id_hash })
    }

    /// Whether any session (of any stage) is present and alive: the login
    /// page sends a signed-in user on.
    pub(crate) async fn has_full_session(&self, info: &ReqInfo) -> bool {
        matches!(self.session(info).await, Ok(Some((_, _, rec, _))) if rec.stage == SessionStage::Full)
    }
}

/// Reads the body with the size limit.
async fn body_bytes(req: Request) -> Result<(Parts, bytes::Bytes), ConsoleError> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ConsoleError::TooLarge(MAX_BODY))?;
    Ok((parts, bytes))
}

fn content_type_is(parts: &Parts, want: &str) -> bool {
    parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(want))
}

/// A JSON body: `application/json`, at most [`MAX_BODY`] bytes, decoded
/// strictly into `T`. The outcome is kept, not turned into a rejection, so
/// that handlers authenticate first and a caller without credentials gets
/// 401 whatever the body: `let input = body.0?;` after the role check.
#[derive(Debug)]
pub(crate) struct JsonBody<T>(pub(crate) Result<T, ConsoleError>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = std::convert::Infallible;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        let parsed = async {
            let (parts, bytes) = body_bytes(req).await?;
            if !content_type_is(&parts, "application/json") {
                return Err(ConsoleError::MediaType("application/json"));
            }
            if std::str::from_utf8(&bytes).is_err() {
                return Err(ConsoleError::Invalid {
                    message: "the body is not valid UTF-8".into(),
                    code: "invalid_json",
                });
            }
            serde_json::from_slice(&bytes).map_err(|e| ConsoleError::Invalid {
                message: format!("invalid JSON body: {e}"),
                code: "invalid_json",
            })
        }
        .await;
        Ok(JsonBody(parsed))
    }
}

/// A form body (`application/x-www-form-urlencoded`), with its `csrf`
/// field taken out.
#[derive(Debug)]
pub(crate) struct FormBody<T> {
    pub(crate) csrf: Option<String>,
    pub(crate) value: T,
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for FormBody<T> {
    type Rejection = crate::error::PageError;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        let (parts, bytes) = body_bytes(req).await?;
        if !content_type_is(&parts, "application/x-www-form-urlencoded") {
            return Err(ConsoleError::MediaType("application/x-www-form-urlencoded").into());
        }
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes)
            .map_err(|_| ConsoleError::invalid("the form could not be read"))?;
        let csrf = pairs
            .iter()
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.clone());
        let value = serde_urlencoded::from_bytes(&bytes)
            .map_err(|e| ConsoleError::invalid(format!("the form is incomplete: {e}")))?;
        Ok(FormBody { csrf, value })
    }
}
