//! Availability data: incidents (the [`IncidentStore`] the incident engine
//! persists through), operator commands on incidents, and per-minute
//! aggregates.
//!
//! # Operator commands
//!
//! While a server runs, its incident engine owns the active incidents and
//! saves them after every evaluation. A CLI that saved an acknowledgement
//! directly could be overwritten a second later. So operator actions taken
//! outside the server are *submitted* ([`crate::Store::submit_incident_command`]),
//! the server applies pending ones in order through its engine
//! ([`crate::Store::pending_incident_commands`]) and writes the outcome back
//! ([`crate::Store::finish_incident_command`]), which the submitter polls.
//! When no server runs, the CLI takes the ledger's writer lock and applies
//! the command itself, through the same engine code.

use std::time::{Duration, SystemTime};

use custos_health::{
    Incident, IncidentQuery, IncidentStore, MinuteAggregate, StoreError as IncidentStoreError,
};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::actor::Actor;
use crate::error::{Result, StoreError};
use crate::time::{from_ms, to_ms};

/// An operator action on an incident, waiting for or done by the server.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentCommand {
    /// Increasing ID; commands are applied in ID order.
    pub id: i64,
    /// When it was submitted.
    pub created_at: SystemTime,
    /// The incident it applies to (empty for `declare`).
    pub incident_id: String,
    /// `acknowledge`, `assign`, `note`, `severity`, `resolve`,
    /// `postmortem` or `declare`.
    pub action: String,
    /// Who submitted it.
    pub actor: Actor,
    /// The action's arguments, as JSON.
    pub args: serde_json::Value,
}

/// The outcome of a finished command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandOutcome {
    /// Applied; the incident after the action, as JSON.
    Applied(serde_json::Value),
    /// Refused, with the reason.
    Refused(String),
}

fn corrupt(table: &'static str, id: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::CorruptRow {
        table,
        id: id.to_owned(),
        reason: e.to_string(),
    }
}

fn micros(ms: Option<f64>) -> Option<i64> {
    ms.filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| (v * 1000.0).round() as i64)
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl crate::Store {
    /// Inserts or replaces an incident.
    pub async fn save_incident(&self, incident: &Incident) -> Result<()> {
        let body =
            serde_json::to_string(incident).map_err(|e| corrupt("incidents", &incident.id, e))?;
        sqlx::query(
            "INSERT INTO incidents (id, model, severity, status, started_at, updated_at, resolved_at, body_json) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (id) DO UPDATE SET model = excluded.model, severity = excluded.severity, \
             status = excluded.status, started_at = excluded.started_at, updated_at = excluded.updated_at, \
             resolved_at = excluded.resolved_at, body_json = excluded.body_json",
        )
        .bind(&incident.id)
        .bind(&incident.model)
        .bind(incident.severity.as_str())
        .bind(incident.status.as_str())
        .bind(to_ms(incident.started_at))
        .bind(to_ms(incident.updated_at))
        .bind(incident.resolved_at.map(to_ms))
        .bind(body)
        .execute(&self.pool)
        .await
        .map_err(|e| self.db_err(e))?;
        Ok(())
    }

    /// One incident by ID.
    pub async fn incident(&self, id: &str) -> Result<Option<Incident>> {
        let row = sqlx::query("SELECT body_json FROM incidents WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.db_err(e))?;
        row.map(|r| {
            let body: String = r.try_get(0).map_err(|e| self.db_err(e))?;
            serde_json::from_str(&body).map_err(|e| corrupt("incidents", id, e))
        })
        .transpose()
    }

    /// Incidents matching `query`, newest first.
    pub async fn incidents(&self, query: &IncidentQuery) -> Result<Vec<Incident>> {
        let mut sql = String::from("SELECT id, body_json FROM incidents WHERE 1 = 1");
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if query.since.is_some() {
            sql.push_str(&format!(" AND started_at >= {}", next()));
        }
        if query.until.is_some() {
            sql.push_str(&format!(" AND started_at < {}", next()));
        }
        if query.model.is_some() {
            sql.push_str(&format!(" AND model = {}", next()));
        }
        if query.severity.is_some() {
            sql.push_str(&format!(" AND severity = {}", next()));
        }
        if query.active_only {
            sql.push_str(" AND status <> 'resolved'");
        }
        sql.push_str(" ORDER BY started_at DESC, id DESC");
        if query.limit.is_some() {
            sql.push_str(&format!(" LIMIT {}", next()));
        }
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        if let Some(t) = query.since {
            q = q.bind(to_ms(t));
        }
        if let Some(t) = query.until {
            q = q.bind(to_ms(t));
        }
        if let Some(m) = &query.model {
            q = q.bind(m.clone());
        }
        if let Some(s) = query.severity {
            q = q.bind(s.as_str());
        }
        if let Some(limit) = query.limit {
            q = q.bind(clamp(limit as u64));
        }
        let rows = q.fetch_all(&self.pool).await.map_err(|e| self.db_err(e))?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get(0).map_err(|e| self.db_err(e))?;
                let body: String = r.try_get(1).map_err(|e| self.db_err(e))?;
                serde_json::from_str(&body).map_err(|e| corrupt("incidents", &id, e))
            })
            .collect()
    }

    /// The highest per-day sequence number among IDs `INC-{day}-NNNN`.
    pub async fn incident_max_sequence(&self, day: &str) -> Result<u32> {
        let prefix = format!("INC-{day}-");
        let rows = sqlx::query("SELECT id FROM incidents WHERE id LIKE $1")
            .bind(format!("{prefix}%"))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db_err(e))?;
        let mut max = 0;
        for r in rows {
            let id: String = r.try_get(0).map_err(|e| self.db_err(e))?;
            if let Some(n) = id.strip_prefix(&prefix).and_then(|s| s.parse::<u32>().ok()) {
                max = max.max(n);
            }
        }
        Ok(max)
    }

    /// Submits an operator action for the running server to apply. Returns
    /// the command ID to poll with [`crate::Store::incident_command_outcome`].
    pub async fn submit_incident_command(
        &self,
        incident_id: &str,
        action: &str,
        actor: &Actor,
        args: &serde_json::Value,
    ) -> Result<i64> {
        let actor_json =
            serde_json::to_string(actor).map_err(|e| corrupt("incident_commands", action, e))?;
        let row = sqlx::query(
            "INSERT INTO incident_commands (created_at, incident_id, action, actor_json, args_json) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(to_ms(self.clock.now()))
        .bind(incident_id)
        .bind(action)
        .bind(actor_json)
        .bind(args.to_string())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.db_err(e))?;
        row.try_get::<i64, _>(0).map_err(|e| self.db_err(e))
    }

    /// Up to `limit` commands not yet applied, oldest first.
    pub async fn pending_incident_commands(&self, limit: u32) -> Result<Vec<IncidentCommand>> {
        let rows = sqlx::query(
            "SELECT id, created_at, incident_id, action, actor_json, args_json FROM incident_commands \
             WHERE done_at IS NULL ORDER BY id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db_err(e))?;
        rows.iter()
            .map(|r| {
                let id: i64 = r.try_get(0).map_err(|e| self.db_err(e))?;
                let actor: String = r.try_get(4).map_err(|e| self.db_err(e))?;
                let args: String = r.try_get(5).map_err(|e| self.db_err(e))?;
                Ok(IncidentCommand {
                    id,
                    created_at: from_ms(r.try_get(1).map_err(|e| self.db_err(e))?),
                    incident_id: r.try_get(2).map_err(|e| self.db_err(e))?,
                    action: r.try_get(3).map_err(|e| self.db_err(e))?,
                    actor: serde_json::from_str(&actor)
                        .map_err(|e| corrupt("incident_commands", &id.to_string(), e))?,
                    args: serde_json::from_str(&args)
                        .map_err(|e| corrupt("incident_commands", &id.to_string(), e))?,
                })
            })
            .collect()
    }

    /// Records a command's outcome. A command already finished keeps its
    /// first outcome; returns whether this call finished it.
    pub async fn finish_incident_command(&self, id: i64, outcome: &CommandOutcome) -> Result<bool> {
        let (ok, json) = match outcome {
            CommandOutcome::Applied(v) => (1i64, v.to_string()),
            CommandOutcome::Refused(reason) => {
                (0i64, serde_json::Value::from(reason.as_str()).to_string())
            }
        };
        let done = sqlx::query(
            "UPDATE incident_commands SET done_at = $1, ok = $2, result_json = $3 \
             WHERE id = $4 AND done_at IS NULL",
        )
        .bind(to_ms(self.clock.now()))
        .bind(ok)
        .bind(json)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(|e| self.db_err(e))?
        .rows_affected();
        Ok(done == 1)
    }

    /// A command's outcome, `None` while it is pending.
    pub async fn incident_command_outcome(&self, id: i64) -> Result<Option<CommandOutcome>> {
        let row = sqlx::query(
            "SELECT ok, result_json FROM incident_commands WHERE id = $1 AND done_at IS NOT NULL",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.db_err(e))?;
        row.map(|r| {
            let ok: i64 = r.try_get(0).map_err(|e| self.db_err(e))?;
            let json: String = r.try_get(1).map_err(|e| self.db_err(e))?;
            let value: serde_json::Value = serde_json::from_str(&json)
                .map_err(|e| corrupt("incident_commands", &id.to_string(), e))?;
            Ok(if ok == 1 {
                CommandOutcome::Applied(value)
            } else {
                CommandOutcome::Refused(value.as_str().unwrap_or_default().to_owned())
            })
        })
        .transpose()
    }

    /// Deletes commands that finished (applied or refused) more than `keep`
    /// ago; returns how many. Pending commands stay until the server
    /// applies them. A finished command is only read by its submitter,
    /// which polls for the outcome within seconds; what the command did is
    /// in the incident's own timeline.
    pub async fn purge_incident_commands(&self, keep: Duration) -> Result<u64> {
        self.delete_older(
            "DELETE FROM incident_commands WHERE done_at IS NOT NULL AND done_at < $1",
            keep,
        )
        .await
    }

    /// Writes completed minutes. A minute written again replaces the
    /// earlier row.
    pub async fn save_minutes(&self, minutes: &[MinuteAggregate]) -> Result<()> {
        if minutes.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(|e| self.db_err(e))?;
        for m in minutes {
            sqlx::query(
                "INSERT INTO minute_aggregates (model, minute, requests, successes, errors, client_errors, shed, \
                 p50_us, p95_us, p99_us, max_us, prompt_tokens, completion_tokens) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                 ON CONFLICT (model, minute) DO UPDATE SET requests = excluded.requests, \
                 successes = excluded.successes, errors = excluded.errors, client_errors = excluded.client_errors, \
                 shed = excluded.shed, p50_us = excluded.p50_us, p95_us = excluded.p95_us, \
                 p99_us = excluded.p99_us, max_us = excluded.max_us, prompt_tokens = excluded.prompt_tokens, \
                 completion_tokens = excluded.completion_tokens",
            )
            .bind(&m.model)
            .bind(to_ms(m.minute))
            .bind(clamp(m.requests))
            .bind(clamp(m.successes))
            .bind(clamp(m.errors))
            .bind(clamp(m.client_errors))
            .bind(clamp(m.shed))
            .bind(micros(m.latency_p50_ms))
            .bind(micros(m.latency_p95_ms))
            .bind(micros(m.latency_p99_ms))
            .bind(micros(m.latency_max_ms))
            .bind(clamp(m.prompt_tokens))
            .bind(clamp(m.completion_tokens))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db_err(e))?;
        }
        tx.commit().await.map_err(|e| self.db_err(e))
    }

    /// Minutes in `[from, to)`, of one model or all, by model then minute.
    pub async fn minutes(
        &self,
        model: Option<&str>,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Vec<MinuteAggregate>> {
        let sql = format!(
            "SELECT model, minute, requests, successes, errors, client_errors, shed, p50_us, p95_us, \
             p99_us, max_us, prompt_tokens, completion_tokens FROM minute_aggregates \
             WHERE minute >= $1 AND minute < $2{} ORDER BY model, minute",
            if model.is_some() {
                " AND model = $3"
            } else {
                ""
            }
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(to_ms(from))
            .bind(to_ms(to));
        if let Some(m) = model {
            q = q.bind(m.to_owned());
        }
        let rows = q.fetch_all(&self.pool).await.map_err(|e| self.db_err(e))?;
        let count = |v: i64| u64::try_from(v).unwrap_or(0);
        let ms = |v: Option<i64>| v.map(|us| us as f64 / 1000.0);
        rows.iter()
            .map(|r| -> std::result::Result<MinuteAggregate, sqlx::Error> {
                Ok(MinuteAggregate {
                    model: r.try_get(0)?,
                    minute: from_ms(r.try_get(1)?),
                    requests: count(r.try_get(2)?),
                    successes: count(r.try_get(3)?),
                    errors: count(r.try_get(4)?),
                    client_errors: count(r.try_get(5)?),
                    shed: count(r.try_get(6)?),
                    latency_p50_ms: ms(r.try_get(7)?),
                    latency_p95_ms: ms(r.try_get(8)?),
                    latency_p99_ms: ms(r.try_get(9)?),
                    latency_max_ms: ms(r.try_get(10)?),
                    prompt_tokens: count(r.try_get(11)?),
                    completion_tokens: count(r.try_get(12)?),
                })
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.db_err(e))
    }

    /// Deletes minutes older than `retention` before now; returns how many.
    pub async fn purge_minutes(&self, retention: Duration) -> Result<u64> {
        self.delete_older("DELETE FROM minute_aggregates WHERE minute < $1", retention)
            .await
    }

    /// Runs `delete` with `$1` bound to now minus `age` (in milliseconds);
    /// returns how many rows went.
    async fn delete_older(&self, delete: &'static str, age: Duration) -> Result<u64> {
        let cutoff = to_ms(self.clock.now()) - i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        Ok(sqlx::query(delete)
            .bind(cutoff)
            .execute(&self.pool)
            .await
            .map_err(|e| self.db_err(e))?
            .rows_affected())
    }
}

fn unavailable(e: StoreError) -> IncidentStoreError {
    match e {
        StoreError::CorruptRow { id, reason, .. } => IncidentStoreError::Corrupt {
            id,
            message: reason,
        },
        other => IncidentStoreError::Unavailable(other.to_string()),
    }
}

impl IncidentStore for crate::Store {
    fn save<'a>(
        &'a self,
        incident: &'a Incident,
    ) -> custos_health::BoxFuture<'a, std::result::Result<(), IncidentStoreError>> {
        Box::pin(async move { self.save_incident(incident).await.map_err(unavailable) })
    }

    fn get<'a>(
        &'a self,
        id: &'a str,
    ) -> custos_health::BoxFuture<'a, std::result::Result<Option<Incident>, IncidentStoreError>>
    {
        Box::pin(async move { self.incident(id).await.map_err(unavailable) })
    }

    fn list<'a>(
        &'a self,
        query: &'a IncidentQuery,
    ) -> custos_health::BoxFuture<'a, std::result::Result<Vec<Incident>, IncidentStoreError>> {
        Box::pin(async move { self.incidents(query).await.map_err(unavailable) })
    }

    fn max_sequence<'a>(
        &'a self,
        day: &'a str,
    ) -> custos_health::BoxFuture<'a, std::result::Result<u32, IncidentStoreError>> {
        Box::pin(async move { self.incident_max_sequence(day).await.map_err(unavailable) })
    }
}
