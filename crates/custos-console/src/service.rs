//! The operations behind the pages and the API handlers (which stay thin):
//! sign-in, the second factor, enrolment, sign-out, invitations and the
//! first admin's setup link, and the parsing of key inputs shared by the
//! JSON API and the forms.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use custos_auth::Scope;
use custos_auth::scope::{BudgetPeriod, CidrScope, ModelScope, TokenBudget};
use custos_store::{
    Actor, ActorKind, AdminEvent, KeyUpdate, NewInvite, NewKey, Role, ScopeUpdate, SessionStage,
    Store, StoreError, UserState,
};
use custos_types::CapabilitySet;
use serde::{Deserialize, Deserializer};

use crate::ConsoleState;
use crate::auth::{PENDING_SESSION, Pending};
use crate::crypto;
use crate::error::ConsoleError;

/// A one-time link to choose a password, shown once.
#[derive(Clone)]
pub struct Invitation {
    /// The link, carrying the token.
    pub link: String,
    /// When it stops working.
    pub expires_at: SystemTime,
}

impl std::fmt::Debug for Invitation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invitation")
            .field("link", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Issues a one-time link: an invitation for `username` with `role`, a
/// password reset (`reset`) of an existing user, or with no user name the
/// first admin's setup link. Recorded in the ledger with `actor`.
pub async fn issue_invite(
    store: &Store,
    base_url: &str,
    ttl: Duration,
    username: Option<&str>,
    role: Role,
    reset: bool,
    actor: &Actor,
) -> Result<Invitation, StoreError> {
    let mut rng = rand::rngs::OsRng;
    let token = crypto::random_token(&mut rng, 32);
    let expires_at = store.now() + ttl;
    let invite = NewInvite {
        id: crypto::random_id(&mut rng, "inv"),
        token_hash: crypto::sha256_hex(&token),
        username: username.map(str::to_owned),
        role,
        reset,
        expires_at,
    };
    store.users().create_invite(&invite, actor).await?;
    Ok(Invitation {
        link: format!(
            "{}/console/setup?token={token}",
            base_url.trim_end_matches('/')
        ),
        expires_at,
    })
}

/// On a fresh install (no console user at all), issues the first admin's
/// setup link for the server to print. `None` once any user exists.
pub async fn setup_link_if_fresh(
    store: &Store,
    base_url: &str,
    ttl: Duration,
) -> Result<Option<Invitation>, StoreError> {
    if store.users().count().await? > 0 {
        return Ok(None);
    }
    let actor = Actor::new(ActorKind::Cli, "custos serve (first start)");
    issue_invite(store, base_url, ttl, None, Role::Admin, false, &actor)
        .await
        .map(Some)
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What a second-factor attempt was.
pub(crate) const INVALID_CREDENTIALS: &str = "invalid user name or password";

/// Failed attempts from one address within [`IP_WINDOW`] before it must
/// wait.
pub(crate) const IP_MAX_FAILURES: u32 = 20;
/// The window of the per-address throttle.
pub(crate) const IP_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Addresses remembered at most; the oldest windows are dropped first.
const IP_MAX_TRACKED: usize = 10_000;

impl ConsoleState {
    /// Whether `ip` has failed too often recently.
    pub(crate) fn ip_throttled(&self, ip: Option<IpAddr>) -> bool {
        let (Some(ip), now) = (ip, self.now()) else {
            return false;
        };
        self.ip_failures.lock().is_ok_and(|map| {
            map.get(&ip)
                .is_some_and(|(n, since)| *n >= IP_MAX_FAILURES && now < *since + IP_WINDOW)
        })
    }

    /// Counts a failed attempt from `ip`.
    pub(crate) fn ip_failed(&self, ip: Option<IpAddr>) {
        let Some(ip) = ip else { return };
        let now = self.now();
        if let Ok(mut map) = self.ip_failures.lock() {
            if map.len() >= IP_MAX_TRACKED {
                map.retain(|_, (_, since)| now < *since + IP_WINDOW);
            }
            if map.len() >= IP_MAX_TRACKED {
                return;
            }
            let entry = map.entry(ip).or_insert((0, now));
            if now >= entry.1 + IP_WINDOW {
                *entry = (0, now);
            }
            entry.0 = entry.0.saturating_add(1);
        }
    }

    fn user_actor(
        &self,
        username: &str,
        ip: Option<IpAddr>,
        mfa: bool,
        role: Option<Role>,
    ) -> Actor {
        Actor {
            kind: ActorKind::User,
            name: username.to_owned(),
            mfa,
            ip,
            role: role.map(|r| r.as_str().to_owned()),
        }
    }

    async fn new_session(
        &self,
        user_id: &str,
        stage: SessionStage,
        lifetime: Duration,
        ip: Option<IpAddr>,
    ) -> Result<String, ConsoleError> {
        let id = crypto::random_token(&mut rand::rngs::OsRng, 32);
        self.store()
            .sessions()
            .create(
                &crypto::sha256_hex(&id),
                user_id,
                stage,
                self.now() + lifetime,
                ip,
            )
            .await?;
        Ok(id)
    }

    /// Checks a user name and password. On success starts a pending
    /// session (TOTP or enrolment next) and returns its ID and stage.
    pub(crate) async fn login(
        &self,
        username: &str,
        password: &str,
        ip: Option<IpAddr>,
    ) -> Result<(String, SessionStage), ConsoleError> {
        if self.ip_throttled(ip) {
            return Err(ConsoleError::Throttled);
        }
        let username = username.trim().to_lowercase();
        let user = if username.is_empty() || username.len() > 64 {
            None
        } else {
            self.store().users().by_username(&username).await?
        };
        let verify = |hash: String, password: String| {
            tokio::task::spawn_blocking(move || crypto::verify_password(&password, &hash))
        };
        let Some(user) = user else {
            let _ = verify(self.dummy_hash.clone(), password.to_owned()).await;
            let event = AdminEvent::new(
                "login.failed",
                Actor::new(ActorKind::User, "(unknown)"),
                self.now(),
            )
            .set("factor", "password")
            .reason("unknown user name");
            let mut event = event;
            event.actor.ip = ip;
            self.store().record_event(&event).await?;
            self.ip_failed(ip);
            return Err(ConsoleError::Invalid {
                message: INVALID_CREDENTIALS.into(),
                code: "invalid_credentials",
            });
        };
        let actor = self.user_actor(&user.username, ip, false, Some(user.role));
        if user.is_locked(self.now()) {
            let event = AdminEvent::new("login.refused", actor, self.now())
                .target("user", user.id.as_str())
                .reason("account locked");
            self.store().record_event(&event).await?;
            return Err(ConsoleError::Locked);
        }
        let creds = self.store().users().credentials(&user.id).await?;
        let ok = verify(creds.password_hash, password.to_owned())
            .await
            .unwrap_or(false);
        if !ok || user.state != UserState::Active {
            self.ip_failed(ip);
            if user.state != UserState::Active {
                let event = AdminEvent::new("login.refused", actor, self.now())
                    .target("user", user.id.as_str())
                    .reason("user disabled");
                self.store().record_event(&event).await?;
            } else {
                let cfg = &self.opts.config;
                let out = self
                    .store()
                    .users()
                    .record_failure(
                        &user.id,
                        "password",
                        cfg.max_failed_attempts,
                        cfg.lockout,
                        &actor,
                    )
                    .await?;
                if out.locked_until.is_some() {
                    return Err(ConsoleError::Locked);
                }
            }
            return Err(ConsoleError::Invalid {
                message: INVALID_CREDENTIALS.into(),
                code: "invalid_credentials",
            });
        }
        let stage = if user.mfa_enrolled_at.is_some() {
            SessionStage::Mfa
        } else {
            SessionStage::Enrol
        };
        let id = self
            .new_session(&user.id, stage, PENDING_SESSION, ip)
            .await?;
        Ok((id, stage))
    }

    /// Counts a failed second factor; ends the pending session if that
    /// locked the account.
    async fn second_factor_failed(
        &self,
        p: &Pending,
        factor: &str,
        ip: Option<IpAddr>,
    ) -> ConsoleError {
        let cfg = &self.opts.config;
        let actor = self.user_actor(&p.user.username, ip, false, Some(p.user.role));
        match self
            .store()
            .users()
            .record_failure(
                &p.user.id,
                factor,
                cfg.max_failed_attempts,
                cfg.lockout,
                &actor,
            )
            .await
        {
            Ok(out) if out.locked_until.is_some() => {
                let _ = self.store().sessions().delete(&p.id_hash).await;
                ConsoleError::Locked
            }
            Ok(_) => ConsoleError::Invalid {
                message: "the code is not valid".into(),
                code: "invalid_code",
            },
            Err(e) => e.into(),
        }
    }

    /// Replaces the pending session with a full one (a new ID: the session
    /// ID rotates at sign-in) and records the sign-in.
    async fn complete_login(
        &self,
        p: &Pending,
        method: &str,
        ip: Option<IpAddr>,
    ) -> Result<String, ConsoleError> {
        self.store().sessions().delete(&p.id_hash).await?;
        let id = self
            .new_session(
                &p.user.id,
                SessionStage::Full,
                self.opts.config.session_absolute_timeout,
                ip,
            )
            .await?;
        let actor = self.user_actor(&p.user.username, ip, true, Some(p.user.role));
        self.store()
            .users()
            .record_login(&p.user.id, method, &actor)
            .await?;
        Ok(id)
    }

    /// Checks a TOTP code (once per time step) or a recovery code and
    /// completes the sign-in. Returns the new session ID.
    pub(crate) async fn second_factor(
        &self,
        p: &Pending,
        code: &str,
        ip: Option<IpAddr>,
    ) -> Result<String, ConsoleError> {
        if p.user.is_locked(self.now()) {
            return Err(ConsoleError::Locked);
        }
        if self.ip_throttled(ip) {
            return Err(ConsoleError::Throttled);
        }
        let users = self.store().users();
        if crypto::looks_like_recovery_code(code) {
            let actor = self.user_actor(&p.user.username, ip, false, Some(p.user.role));
            let hash = crypto::recovery_code_hash(&p.user.id, code);
            if users.use_recovery_code(&p.user.id, &hash, &actor).await? {
                return self.complete_login(p, "recovery_code", ip).await;
            }
            return Err(self.second_factor_failed(p, "recovery_code", ip).await);
        }
        let creds = users.credentials(&p.user.id).await?;
        let seed = creds
            .totp_sealed
            .as_deref()
            .and_then(|s| self.opts.server_keys.unseal(&p.user.id, s))
            .ok_or_else(|| {
                ConsoleError::Internal(format!(
                    "user {}: the TOTP seed cannot be unsealed (pepper changed?); reset their MFA",
                    p.user.id
                ))
            })?;
        match crypto::totp_step(&seed, code, unix_secs(self.now())) {
            Some(step) if users.accept_totp_step(&p.user.id, step).await? => {
                self.complete_login(p, "totp", ip).await
            }
            Some(_) => Err(self.second_factor_failed(p, "totp_replay", ip).await),
            None => Err(self.second_factor_failed(p, "totp", ip).await),
        }
    }

    /// The seed offered during enrolment, created on first call and kept
    /// (sealed) until confirmed, so a reload shows the same QR code.
    pub(crate) async fn enrolment_seed(&self, p: &Pending) -> Result<Vec<u8>, ConsoleError> {
        let creds = self.store().users().credentials(&p.user.id).await?;
        if let Some(seed) = creds
            .totp_pending_sealed
            .as_deref()
            .and_then(|s| self.opts.server_keys.unseal(&p.user.id, s))
        {
            return Ok(seed);
        }
        let mut rng = rand::rngs::OsRng;
        let seed = crypto::new_totp_seed(&mut rng);
        let sealed = self.opts.server_keys.seal(&mut rng, &p.user.id, &seed);
        self.store()
            .users()
            .set_pending_totp(&p.user.id, &sealed)
            .await?;
        Ok(seed)
    }

    /// Confirms enrolment with a code from the app: the account becomes
    /// usable, ten recovery codes are issued (returned, shown once) and the
    /// sign-in completes. Returns the new session ID and the codes.
    pub(crate) async fn confirm_enrolment(
        &self,
        p: &Pending,
        code: &str,
        ip: Option<IpAddr>,
    ) -> Result<(String, Vec<String>), ConsoleError> {
        let seed = self.enrolment_seed(p).await?;
        let Some(step) = crypto::totp_step(&seed, code, unix_secs(self.now())) else {
            return Err(self.second_factor_failed(p, "totp_enrolment", ip).await);
        };
        let codes = crypto::new_recovery_codes(&mut rand::rngs::OsRng);
        let hashes: Vec<String> = codes
            .iter()
            .map(|c| crypto::recovery_code_hash(&p.user.id, c))
            .collect();
        let actor = self.user_actor(&p.user.username, ip, true, Some(p.user.role));
        self.store()
            .users()
            .confirm_totp(&p.user.id, step, &hashes, &actor)
            .await?;
        let id = self.complete_login(p, "totp_enrolment", ip).await?;
        Ok((id, codes))
    }

    /// Ends a session server-side and records it.
    pub(crate) async fn logout(
        &self,
        principal: &crate::auth::Principal,
    ) -> Result<(), ConsoleError> {
        if let Some(hash) = principal.session_hash() {
            self.store().sessions().delete(hash).await?;
            let event = AdminEvent::new("session.logout", principal.actor(), self.now())
                .target("user", principal.user.id.as_str());
            self.store().record_event(&event).await?;
        }
        Ok(())
    }

    /// New recovery codes for the principal (shown once).
    pub(crate) async fn regenerate_codes(
        &self,
        principal: &crate::auth::Principal,
    ) -> Result<Vec<String>, ConsoleError> {
        let codes = crypto::new_recovery_codes(&mut rand::rngs::OsRng);
        let hashes: Vec<String> = codes
            .iter()
            .map(|c| crypto::recovery_code_hash(&principal.user.id, c))
            .collect();
        self.store()
            .users()
            .replace_recovery_codes(&principal.user.id, &hashes, &principal.actor())
            .await?;
        Ok(codes)
    }

    /// Checks the principal's current password (blocking work off-thread).
    pub(crate) async fn check_password(
        &self,
        user_id: &str,
        password: &str,
    ) -> Result<bool, ConsoleError> {
        let creds = self.store().users().credentials(user_id).await?;
        let password = password.to_owned();
        Ok(tokio::task::spawn_blocking(move || {
            crypto::verify_password(&password, &creds.password_hash)
        })
        .await
        .unwrap_or(false))
    }

    /// Hashes a new password after checking the policy.
    pub(crate) async fn new_password_hash(
        &self,
        username: &str,
        password: &str,
    ) -> Result<String, ConsoleError> {
        crypto::check_password_policy(password, username).map_err(|m| ConsoleError::Invalid {
            message: m,
            code: "weak_password",
        })?;
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || {
            crypto::hash_password(&mut rand::rngs::OsRng, &password)
        })
        .await
        .map_err(|e| ConsoleError::Internal(e.to_string()))?
        .map_err(ConsoleError::Internal)
    }

    /// Creates an admin API token for the principal (a console session
    /// with MFA), returning the token (shown once) and its record.
    pub(crate) async fn create_token(
        &self,
        principal: &crate::auth::Principal,
        name: &str,
        role: Role,
        ttl: Duration,
    ) -> Result<(String, custos_store::TokenRecord), ConsoleError> {
        if !principal.is_session() {
            return Err(ConsoleError::Forbidden(
                "admin tokens are created from a signed-in console session, not with a token"
                    .into(),
            ));
        }
        if !principal.role.may_grant(role) {
            return Err(ConsoleError::Forbidden(format!(
                "the {} role cannot create a token with the {role} role",
                principal.role
            )));
        }
        if ttl.is_zero() || ttl > self.opts.config.token_max_ttl {
            return Err(ConsoleError::invalid(format!(
                "expires_in: must be between 1s and {}",
                humantime::format_duration(self.opts.config.token_max_ttl)
            )));
        }
        let mut rng = rand::rngs::OsRng;
        let token = format!("cadm_{}", crypto::random_token(&mut rng, 32));
        let new = custos_store::NewToken {
            id: crypto::random_id(&mut rng, "tok"),
            token_hash: crypto::sha256_hex(&token),
            name: name.trim().to_owned(),
            role,
            user_id: principal.user.id.clone(),
            expires_at: self.now() + ttl,
        };
        let rec = self
            .store()
            .tokens()
            .create(&new, &principal.actor())
            .await?;
        Ok((token, rec))
    }
}

/// Accepts `null` as `Some(None)` and a value as `Some(Some(v))`; with
/// `#[serde(default)]`, absence is `None`.
pub(crate) fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A token budget in input.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BudgetInput {
    tokens: u64,
    period: String,
}

/// What a new key should be, as the API and the form give it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewKeyInput {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) owner: Option<String>,
    #[serde(default)]
    pub(crate) team: Option<String>,
    #[serde(default)]
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) labels: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) models: Vec<String>,
    #[serde(default)]
    pub(crate) capabilities: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) cidrs: Vec<String>,
    #[serde(default)]
    pub(crate) rpm: Option<u32>,
    #[serde(default)]
    pub(crate) tpm: Option<u32>,
    #[serde(default)]
    pub(crate) budget: Option<BudgetInput>,
    /// Such as `90d`.
    #[serde(default)]
    pub(crate) expires_in: Option<String>,
}

pub(crate) const DEFAULT_CAPABILITIES: &str = "chat,stream,embeddings,completions,models";

fn models(list: &[String]) -> Result<ModelScope, ConsoleError> {
    ModelScope::parse_list(&list.join(","))
        .map_err(|e| ConsoleError::invalid(format!("models: {e}")))
}

fn capabilities(list: &[String]) -> Result<CapabilitySet, ConsoleError> {
    CapabilitySet::parse_list(&list.join(","))
        .map_err(|e| ConsoleError::invalid(format!("capabilities: {e}")))
}

fn cidrs(list: &[String]) -> Result<CidrScope, ConsoleError> {
    if list.is_empty() {
        return Ok(CidrScope::any());
    }
    let nets = list
        .iter()
        .map(|c| {
            c.trim().parse::<ipnet::IpNet>().map_err(|_| {
                ConsoleError::invalid(format!("cidrs: `{c}` is not a network such as 10.0.0.0/8"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CidrScope::new(nets))
}

pub(crate) fn parse_duration(field: &str, text: &str) -> Result<Duration, ConsoleError> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        ConsoleError::invalid(format!(
            "{field}: `{text}` is not a duration ({e}); write it like 24h or 90d"
        ))
    })
}

fn budget(b: &BudgetInput) -> Result<TokenBudget, ConsoleError> {
    let period = match b.period.as_str() {
        "day" => BudgetPeriod::Day,
        "month" => BudgetPeriod::Month,
        other => {
            return Err(ConsoleError::invalid(format!(
                "budget.period: `{other}` is not day or month"
            )));
        }
    };
    Ok(TokenBudget {
        tokens: b.tokens,
        period,
    })
}

impl NewKeyInput {
    pub(crate) fn into_new_key(
        self,
        default_owner: &str,
        now: SystemTime,
    ) -> Result<NewKey, ConsoleError> {
        let caps = match &self.capabilities {
            Some(list) => capabilities(list)?,
            None => CapabilitySet::parse_list(DEFAULT_CAPABILITIES)
                .map_err(|e| ConsoleError::Internal(e.to_string()))?,
        };
        let scope = Scope {
            models: models(&self.models)?,
            capabilities: caps,
            cidrs: cidrs(&self.cidrs)?,
            rpm: self.rpm,
            tpm: self.tpm,
            budget: self.budget.as_ref().map(budget).transpose()?,
        };
        let expires_at = match self.expires_in.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(d) => Some(now + parse_duration("expires_in", d)?),
        };
        Ok(NewKey {
            name: self.name,
            owner: self
                .owner
                .filter(|o| !o.trim().is_empty())
                .unwrap_or_else(|| default_owner.to_owned()),
            team: self.team.filter(|t| !t.trim().is_empty()),
            description: self.description.unwrap_or_default(),
            labels: self.labels,
            scope,
            expires_at,
        })
    }
}

/// A change of a key, as the API gives it. `null` removes a nullable field.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyPatchInput {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    team: Option<Option<String>>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    capabilities: Option<Vec<String>>,
    #[serde(default)]
    cidrs: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    rpm: Option<Option<u32>>,
    #[serde(default, deserialize_with = "nullable")]
    tpm: Option<Option<u32>>,
    #[serde(default, deserialize_with = "nullable")]
    budget: Option<Option<BudgetInput>>,
    #[serde(default, deserialize_with = "nullable")]
    expires_in: Option<Option<String>>,
    #[serde(default)]
    expected_version: Option<u64>,
}

impl KeyPatchInput {
    pub(crate) fn into_update(self, now: SystemTime) -> Result<KeyUpdate, ConsoleError> {
        Ok(KeyUpdate {
            name: self.name,
            owner: self.owner,
            team: self.team,
            description: self.description,
            labels: self.labels,
            expires_at: match self.expires_in {
                None => None,
                Some(None) => Some(None),
                Some(Some(d)) => Some(Some(now + parse_duration("expires_in", &d)?)),
            },
            scope: ScopeUpdate {
                models: self.models.as_deref().map(models).transpose()?,
                capabilities: self.capabilities.as_deref().map(capabilities).transpose()?,
                cidrs: self.cidrs.as_deref().map(cidrs).transpose()?,
                rpm: self.rpm,
                tpm: self.tpm,
                budget: match self.budget {
                    None => None,
                    Some(None) => Some(None),
                    Some(Some(b)) => Some(Some(budget(&b)?)),
                },
            },
            expected_version: self.expected_version,
        })
    }
}
