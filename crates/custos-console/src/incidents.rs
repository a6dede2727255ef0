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

use axum::response::IntoResponse;
use maud::{Markup, html};

use crate::ConsoleState;
use crate::api::{ApiResult, S, auth, ok, query};
use crate::auth::{FormBody, JsonBody, Perm, Principal, ReqInfo};
use crate::error::ConsoleError;
use crate::pages::{PageResult, full, html_response};
use crate::ui::{Nav, badge, page};

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

/// Submits `action` to the server's incident engine and waits for it:
/// `Ok(Ok(incident))` applied, `Ok(Err(reason))` refused, `Err(command)`
/// still pending at the deadline.
async fn apply(
    st: &ConsoleState,
    p: &Principal,
    id: &str,
    action: &OperatorAction,
) -> Result<Result<Result<Incident, String>, i64>, ConsoleError> {
    let args = serde_json::to_value(action)
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
                return Ok(Ok(Ok(incident)));
            }
            Some(CommandOutcome::Refused(reason)) => return Ok(Ok(Err(reason))),
            None if tokio::time::Instant::now() >= deadline => return Ok(Err(cmd)),
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn submit(
    st: &Arc<ConsoleState>,
    p: &Principal,
    id: &str,
    action: OperatorAction,
    success: StatusCode,
) -> ApiResult {
    match apply(st, p, id, &action).await? {
        Ok(Ok(incident)) => Ok(ok(success, json!({"incident": incident}))),
        Ok(Err(reason)) => Err(ConsoleError::Conflict(reason).into()),
        Err(cmd) => Ok(ok(
            StatusCode::ACCEPTED,
            json!({"command_id": cmd, "status": "pending",
                   "message": "the server's incident engine has not applied the action yet; it will"}),
        )),
    }
}

// ---- console pages ----

/// `/console/incidents…`.
pub(crate) fn page_routes() -> axum::Router<Arc<ConsoleState>> {
    axum::Router::new()
        .route("/console/incidents", axum::routing::get(list_page))
        .route("/console/incidents/{id}", axum::routing::get(detail_page))
        .route(
            "/console/incidents/{id}/action",
            axum::routing::post(action_form),
        )
}

fn severity_badge(s: Severity) -> Markup {
    let kind = match s {
        Severity::Sev1 | Severity::Sev2 => "bad",
        Severity::Sev3 => "warn",
        Severity::Sev4 => "info",
    };
    badge(s.as_str(), kind)
}

fn status_badge(i: &Incident) -> Markup {
    let kind = match i.status.as_str() {
        "open" => "bad",
        "acknowledged" => "warn",
        _ => "ok",
    };
    badge(i.status.as_str(), kind)
}

fn when(t: Option<std::time::SystemTime>) -> String {
    t.map_or_else(|| "—".to_owned(), crate::keyjson::rfc3339)
}

fn dur(d: Option<Duration>) -> String {
    d.map_or_else(
        || "—".to_owned(),
        |d| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string(),
    )
}

async fn list_page(State(st): S, info: ReqInfo, RawQuery(raw): RawQuery) -> PageResult {
    let p = full(&st, &info, None, Perm::IncidentsRead).await?;
    let csrf = p.csrf(&st);
    let q = crate::pages::query(raw);
    let active = q.get("active").map(String::as_str) == Some("true");
    let found = st
        .store()
        .incidents(&IncidentQuery {
            active_only: active,
            limit: Some(200),
            ..IncidentQuery::default()
        })
        .await?;
    let body = html! {
        div.top { div { h1 { "Incidents" } p.sub { "Model-availability incidents: detected by Custos or declared by an operator. The procedure is docs/incident-response.md." } } }
        div.card {
            form.row method="get" action="/console/incidents" {
                div.shrink { label for="active" { "Show" }
                    select #active name="active" { option value="" selected[!active] { "All" } option value="true" selected[active] { "Active only" } }
                }
                div.shrink { button.secondary type="submit" { "Filter" } }
            }
            table #incidents-table {
                thead { tr { th { "ID" } th { "Model" } th { "Severity" } th { "Status" } th { "Started" } th { "To acknowledge" } th { "To resolve" } th { "Title" } } }
                tbody { @for i in &found {
                    tr {
                        td.mono { a href=(format!("/console/incidents/{}", i.id)) { (i.id) } }
                        td { (i.model) }
                        td { (severity_badge(i.severity)) }
                        td { (status_badge(i)) }
                        td.mono { (when(Some(i.started_at))) }
                        td { (dur(i.time_to_acknowledge())) }
                        td { (dur(i.time_to_resolve())) }
                        td { (i.title) }
                    }
                } }
            }
            @if found.is_empty() { p.muted { "No incident." } }
        }
    };
    Ok(html_response(
        StatusCode::OK,
        page("Incidents", &p, &csrf, Nav::Incidents, body),
    ))
}

async fn detail_page(State(st): S, info: ReqInfo, Path(id): Path<String>) -> PageResult {
    let p = full(&st, &info, None, Perm::IncidentsRead).await?;
    let csrf = p.csrf(&st);
    let i = st
        .store()
        .incident(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    let can_act = p.can(Perm::IncidentsWrite) && i.is_active();
    let body = html! {
        div.top { div { h1 { (i.id) } p.sub { (i.title) } } }
        div.grid {
            div.card {
                h2 { "Summary" }
                dl.kv {
                    dt { "Model" } dd { (i.model) }
                    dt { "Severity" } dd { (severity_badge(i.severity)) @if i.severity_pinned { " (set by hand)" } }
                    dt { "Status" } dd { (status_badge(&i)) }
                    dt { "Started" } dd.mono { (when(Some(i.started_at))) }
                    dt { "Acknowledged" } dd { (when(i.acknowledged_at)) @if let Some(b) = &i.acknowledged_by { " by " (b) } }
                    dt { "Assignee" } dd { (i.assignee.clone().unwrap_or_else(|| "—".into())) }
                    dt { "Resolved" } dd { (when(i.resolved_at)) @if let Some(b) = &i.resolved_by { " by " (b) } }
                    dt { "Time to acknowledge" } dd { (dur(i.time_to_acknowledge())) }
                    dt { "Time to resolve" } dd { (dur(i.time_to_resolve())) }
                    dt { "Affected keys" } dd { (i.affected_keys) @if i.affected_keys_capped { "+" } }
                    dt { "Peak error rate" } dd { (format!("{:.1}%", i.peak_error_rate * 100.0)) }
                }
                @if !i.symptoms.is_empty() {
                    h2 { "Symptoms" }
                    ul { @for s in &i.symptoms { li { (s.describe()) } } }
                }
            }
            @if can_act {
                div.card #incident-actions {
                    h2 { "Act" }
                    @if i.acknowledged_at.is_none() {
                        form method="post" action=(format!("/console/incidents/{}/action", i.id)) {
                            input type="hidden" name="csrf" value=(csrf);
                            input type="hidden" name="action" value="acknowledge";
                            button #ack type="submit" { "Acknowledge" }
                        }
                    }
                    form method="post" action=(format!("/console/incidents/{}/action", i.id)) {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="hidden" name="action" value="note";
                        label for="note-text" { "Note" }
                        textarea #note-text name="text" rows="3" required {}
                        button.secondary type="submit" { "Add note" }
                    }
                    form method="post" action=(format!("/console/incidents/{}/action", i.id)) {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="hidden" name="action" value="resolve";
                        label for="resolve-text" { "Closing note" }
                        input #resolve-text type="text" name="text";
                        button.danger type="submit" { "Resolve" }
                    }
                }
            }
        }
        div.card {
            h2 { "Timeline" }
            table #timeline {
                thead { tr { th { "#" } th { "Time" } th { "Event" } th { "By" } th { "Detail" } } }
                tbody { @for e in &i.timeline {
                    tr {
                        td { (e.seq) }
                        td.mono { (when(Some(e.at))) }
                        td { code { (e.kind.label()) } }
                        td { (e.actor.clone().unwrap_or_else(|| "Custos".into())) }
                        td { (timeline_detail(&e.kind)) }
                    }
                } }
            }
        }
        div.card {
            h2 { "Postmortem" }
            @if let Some(pm) = &i.postmortem {
                dl.kv {
                    dt { "Summary" } dd { (pm.summary) }
                    dt { "Impact" } dd { (pm.impact) }
                    dt { "Root cause" } dd { (pm.root_cause) }
                    dt { "Trigger" } dd { (pm.trigger) }
                    dt { "Detection" } dd { (pm.detection) }
                    dt { "Resolution" } dd { (pm.resolution) }
                    dt { "Written by" } dd { (pm.author) " at " (when(Some(pm.written_at))) }
                }
                @if !pm.action_items.is_empty() {
                    table { thead { tr { th { "Action item" } th { "Owner" } th { "Due" } } }
                        tbody { @for a in &pm.action_items { tr { td { (a.description) } td { (a.owner) } td { (a.due.clone().unwrap_or_default()) } } } } }
                }
            } @else {
                p.muted { "None yet. Attach one with the admin API (" code { "POST /admin/v1/incidents/" (i.id) "/actions" } ") or " code { "custos incidents postmortem " (i.id) " --file pm.json" } "." }
            }
        }
    };
    Ok(html_response(
        StatusCode::OK,
        page(&i.id, &p, &csrf, Nav::Incidents, body),
    ))
}

fn timeline_detail(kind: &custos_health::TimelineKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .map(|mut o| {
            o.remove("event");
            o.iter()
                .map(|(k, v)| match v {
                    Value::String(s) => format!("{k}: {s}"),
                    other => format!("{k}: {other}"),
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

/// The incident action form.
#[derive(Debug, Deserialize)]
pub(crate) struct ActionForm {
    action: String,
    #[serde(default)]
    text: String,
}

async fn action_form(
    State(st): S,
    info: ReqInfo,
    Path(id): Path<String>,
    form: FormBody<ActionForm>,
) -> PageResult {
    let p = full(&st, &info, form.csrf.as_deref(), Perm::IncidentsWrite).await?;
    if st.store().incident(&id).await?.is_none() {
        return Err(not_found(&id).into());
    }
    let text = form.value.text.trim().to_owned();
    let action = match form.value.action.as_str() {
        "acknowledge" => OperatorAction::Acknowledge,
        "note" => OperatorAction::Note { text },
        "resolve" => OperatorAction::Resolve {
            note: (!text.is_empty()).then_some(text),
        },
        _ => {
            return Err(
                ConsoleError::invalid("action: must be acknowledge, note or resolve").into(),
            );
        }
    };
    match apply(&st, &p, &id, &action).await? {
        Ok(Ok(_)) | Err(_) => {
            Ok(axum::response::Redirect::to(&format!("/console/incidents/{id}")).into_response())
        }
        Ok(Err(reason)) => Err(ConsoleError::Conflict(reason).into()),
    }
}
