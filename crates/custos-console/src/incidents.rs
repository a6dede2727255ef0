//! `/admin/v1/incidents`: model-availability incidents through the admin
//! API. Reads come from the store; actions are submitted to the server's
//! incident engine through the store's command queue (the single writer of
//! active incidents, see ARCHITECTURE.md) and the handler waits for the
//! outcome, so an API action is applied and recorded exactly like one from
//! the CLI, attributed to the signed-in user or token.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use custos_health::{Incident, IncidentQuery, OperatorAction, Severity};
use custos_store::CommandOutcome;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ConsoleState;
use crate::api::{ApiResult, S, auth, ok, query};
use crate::auth::{JsonBody, Perm, Principal, ReqInfo};
use crate::error::ConsoleError;

/// How long an action may wait for the server's incident engine.
const APPLY_WAIT: Duration = Duration::from_secs(10);

fn time_param(
    q: &std::collections::HashMap<String, String>,
    name: &str,
) -> Result<Option<std::time::SystemTime>, ConsoleError> {
    q.get(name)
        .map(|s| {
            let full = if s.len() == 10 {
                format!("{s}T00:00:00Z")
            } else {
                s.clone()
            };
            humantime::parse_rfc3339_weak(&full)
                .map_err(|_| ConsoleError::invalid(format!("{name}: not a date or RFC 3339 time")))
        })
        .transpose()
}

pub(crate) async fn list(State(st): S, info: ReqInfo, RawQuery(raw): RawQuery) -> ApiResult {
    auth(&st, &info, Perm::IncidentsRead).await?;
    let q = query(raw)?;
    let severity = q
        .get("severity")
        .map(|s| {
            s.parse::<Severity>()
                .map_err(|_| ConsoleError::invalid("severity: expected sev1, sev2, sev3 or sev4"))
        })
        .transpose()?;
    let limit = match q.get("limit") {
        None => 100,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ConsoleError::invalid("limit: expected 1 to 1000"))?,
    };
    let query = IncidentQuery {
        since: time_param(&q, "since")?,
        until: time_param(&q, "until")?,
        model: q.get("model").cloned(),
        active_only: q.get("active").map(String::as_str) == Some("true"),
        severity,
        limit: Some(limit),
    };
    let found = st.store().incidents(&query).await?;
    let items: Vec<Value> = found
        .iter()
        .map(|i| serde_json::to_value(i.summary()).unwrap_or(Value::Null))
        .collect();
    Ok(ok(StatusCode::OK, json!({"incidents": items})))
}

pub(crate) async fn get(State(st): S, info: ReqInfo, Path(id): Path<String>) -> ApiResult {
    auth(&st, &info, Perm::IncidentsRead).await?;
    let incident = st
        .store()
        .incident(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(ok(StatusCode::OK, json!({"incident": incident})))
}

fn not_found(id: &str) -> ConsoleError {
    ConsoleError::NotFound(format!(
        "incident {} does not exist",
        id.chars().take(64).collect::<String>()
    ))
}

/// `POST /admin/v1/incidents`: declares an incident.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeclareInput {
    model: String,
    severity: Severity,
    title: String,
}

pub(crate) async fn declare(
    State(st): S,
    info: ReqInfo,
    body: JsonBody<DeclareInput>,
) -> ApiResult {
    let p = auth(&st, &info, Perm::IncidentsWrite).await?;
    let input = body.0?;
    let action = OperatorAction::Declare {
        model: input.model,
        severity: input.severity,
        title: input.title,
    };
    submit(&st, &p, "", action, StatusCode::CREATED).await
}

pub(crate) async fn act(
    State(st): S,
    info: ReqInfo,
    Path(id): Path<String>,
    body: JsonBody<OperatorAction>,
) -> ApiResult {
    let p = auth(&st, &info, Perm::IncidentsWrite).await?;
    let action = body.0?;
    if matches!(action, OperatorAction::Declare { .. }) {
        return Err(ConsoleError::invalid("declare with POST /admin/v1/incidents").into());
    }
    if st.store().incident(&id).await?.is_none() {
        return Err(not_found(&id).into());
    }
    submit(&st, &p, &id, action, StatusCode::OK).await
}

async fn submit(
    st: &Arc<ConsoleState>,
    p: &Principal,
    id: &str,
    action: OperatorAction,
    success: StatusCode,
) -> ApiResult {
    let args = serde_json::to_value(&action)
        .map_err(|e| ConsoleError::Internal(format!("cannot encode the action: {e}")))?;
    let cmd = st
        .store()
        .submit_incident_command(id, action.name(), &p.actor(), &args)
        .await?;
    let deadline = tokio::time::Instant::now() + APPLY_WAIT;
    loop {
        match st.store().incident_command_outcome(cmd).await? {
            Some(CommandOutcome::Applied(v)) => {
                let incident: Incident = serde_json::from_value(v).map_err(|e| {
                    ConsoleError::Internal(format!("the engine's answer is not an incident: {e}"))
                })?;
                return Ok(ok(success, json!({"incident": incident})));
            }
            Some(CommandOutcome::Refused(reason)) => {
                return Err(ConsoleError::Conflict(reason).into());
            }
            None if tokio::time::Instant::now() >= deadline => {
                return Ok(ok(
                    StatusCode::ACCEPTED,
                    json!({"command_id": cmd, "status": "pending",
                           "message": "the server's incident engine has not applied the action yet; it will"}),
                ));
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
