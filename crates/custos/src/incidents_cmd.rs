//! `custos incidents …`: list, show and act on model-availability
//! incidents from the host shell.
//!
//! Reads go straight to the state store. Actions go through the incident
//! engine of whoever holds the audit ledger: with a server running, the
//! action is submitted to it and this command waits for the outcome (the
//! server owns the active incidents, so nothing it saves can overwrite the
//! action); with no server running, this command takes the ledger's writer
//! lock and applies the action itself. Either way the event lands in the
//! ledger, attributed to the OS user.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use custos_health::{Incident, IncidentQuery, IncidentStats, Postmortem, Severity};
use custos_ledger::LedgerError;
use custos_store::{Actor, ActorKind, CommandOutcome, Store};
use serde_json::{Value, json};

use crate::incidents::{Action, IncidentToLedger};

/// The incident commands.
#[derive(Debug, Subcommand)]
pub enum IncidentsCommand {
    /// Lists incidents, newest first.
    List(ListArgs),
    /// Shows one incident with its timeline and postmortem.
    Show {
        /// The incident ID (`INC-YYYYMMDD-NNNN`).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Acknowledges an incident: its time to acknowledge stops.
    Ack {
        /// The incident ID.
        id: String,
        /// Also assign it to yourself.
        #[arg(long)]
        assign: bool,
    },
    /// Assigns an incident.
    Assign {
        /// The incident ID.
        id: String,
        /// Who works on it.
        assignee: String,
    },
    /// Adds a note to an incident's timeline.
    Note {
        /// The incident ID.
        id: String,
        /// The note.
        text: String,
    },
    /// Sets an incident's severity by hand (Custos only raises it later).
    Severity {
        /// The incident ID.
        id: String,
        /// `sev1` … `sev4`.
        severity: Severity,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Resolves an incident by hand.
    Resolve {
        /// The incident ID.
        id: String,
        /// Closing note.
        #[arg(long)]
        note: Option<String>,
    },
    /// Declares an incident Custos cannot see (wrong answers, a problem only
    /// customers see).
    Declare {
        /// The public model.
        #[arg(long)]
        model: String,
        /// `sev1` … `sev4`.
        #[arg(long)]
        severity: Severity,
        /// One line describing it.
        #[arg(long)]
        title: String,
    },
    /// Attaches (or replaces) an incident's postmortem from a JSON file, or
    /// prints the template.
    Postmortem {
        /// The incident ID.
        #[arg(required_unless_present = "template")]
        id: Option<String>,
        /// The postmortem document (`-` for stdin); see
        /// docs/incident-response.md §8.
        #[arg(long, required_unless_present = "template")]
        file: Option<PathBuf>,
        /// Print an empty template and exit.
        #[arg(long, conflicts_with_all = ["id", "file"])]
        template: bool,
    },
    /// Time-to-acknowledge and time-to-resolve figures over a period.
    Stats {
        /// From this date or time (RFC 3339 or `YYYY-MM-DD`), inclusive.
        #[arg(long)]
        since: Option<String>,
        /// Until this date or time, exclusive.
        #[arg(long)]
        until: Option<String>,
        /// Only this model.
        #[arg(long)]
        model: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `custos incidents list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only open and acknowledged incidents.
    #[arg(long)]
    active: bool,
    /// Only this model.
    #[arg(long)]
    model: Option<String>,
    /// Only this severity.
    #[arg(long)]
    severity: Option<Severity>,
    /// From this date or time (RFC 3339 or `YYYY-MM-DD`), inclusive.
    #[arg(long)]
    since: Option<String>,
    /// Until this date or time, exclusive.
    #[arg(long)]
    until: Option<String>,
    /// At most this many.
    #[arg(long)]
    limit: Option<usize>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// How long to wait for a running server to apply a submitted action.
const SERVER_WAIT: Duration = Duration::from_secs(15);

/// Parses `YYYY-MM-DD` (midnight UTC) or an RFC 3339 time.
pub fn parse_time(flag: &str, s: &str) -> anyhow::Result<SystemTime> {
    let full = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_owned()
    };
    humantime::parse_rfc3339_weak(&full)
        .with_context(|| format!("{flag}: `{s}` is not a date (YYYY-MM-DD) or RFC 3339 time"))
}

pub(crate) fn os_actor() -> Actor {
    let name = ["CUSTOS_ACTOR", "SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown".to_owned());
    Actor::new(ActorKind::Cli, name)
}

/// Runs one incident command.
pub fn run(
    config: &custos_config::Config,
    data_dir: &Path,
    cmd: IncidentsCommand,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_async(config, data_dir, cmd))
}

async fn run_async(
    config: &custos_config::Config,
    data_dir: &Path,
    cmd: IncidentsCommand,
) -> anyhow::Result<()> {
    crate::serve::prepare_data_dir(data_dir)?;
    let (store, _) = crate::state::open(data_dir).await?;
    let actor = os_actor();
    let (id, action) = match cmd {
        IncidentsCommand::List(a) => {
            let query = IncidentQuery {
                since: a.since.map(|s| parse_time("--since", &s)).transpose()?,
                until: a.until.map(|s| parse_time("--until", &s)).transpose()?,
                model: a.model,
                active_only: a.active,
                severity: a.severity,
                limit: a.limit,
            };
            let found = store.incidents(&query).await?;
            let rows: Vec<Value> = found.iter().map(row).collect();
            if a.json {
                println!("{}", Value::Array(rows));
            } else {
                crate::table::print_table(
                    &[
                        "id", "model", "severity", "status", "started", "tta", "ttr", "assignee",
                        "title",
                    ],
                    &rows,
                    "(no incidents)",
                );
            }
            return Ok(());
        }
        IncidentsCommand::Show { id, json } => {
            let incident = store
                .incident(&id)
                .await?
                .with_context(|| format!("no incident `{id}`"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&incident)?);
            } else {
                print_incident(&incident);
            }
            return Ok(());
        }
        IncidentsCommand::Stats {
            since,
            until,
            model,
            json,
        } => {
            let query = IncidentQuery {
                since: since.map(|s| parse_time("--since", &s)).transpose()?,
                until: until.map(|s| parse_time("--until", &s)).transpose()?,
                model,
                ..IncidentQuery::default()
            };
            let stats = IncidentStats::compute(&store.incidents(&query).await?);
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                print_stats(&stats);
            }
            return Ok(());
        }
        IncidentsCommand::Postmortem { template: true, .. } => {
            println!("{}", serde_json::to_string_pretty(&template())?);
            return Ok(());
        }
        IncidentsCommand::Postmortem { id, file, .. } => {
            let (Some(id), Some(file)) = (id, file) else {
                bail!("postmortem needs an incident ID and --file");
            };
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?
            };
            let postmortem: Postmortem = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a postmortem document (see `custos incidents postmortem --template`)",
                    file.display()
                )
            })?;
            (id, Action::Postmortem { postmortem })
        }
        IncidentsCommand::Ack { id, assign } => {
            let done = act(config, data_dir, &store, &id, &actor, Action::Acknowledge).await?;
            let done = if assign {
                let assignee = actor.name.clone();
                act(
                    config,
                    data_dir,
                    &store,
                    &id,
                    &actor,
                    Action::Assign { assignee },
                )
                .await?
            } else {
                done
            };
            report(&done, "acknowledged");
            return Ok(());
        }
        IncidentsCommand::Assign { id, assignee } => (id, Action::Assign { assignee }),
        IncidentsCommand::Note { id, text } => (id, Action::Note { text }),
        IncidentsCommand::Severity {
            id,
            severity,
            reason,
        } => (id, Action::Severity { severity, reason }),
        IncidentsCommand::Resolve { id, note } => (id, Action::Resolve { note }),
        IncidentsCommand::Declare {
            model,
            severity,
            title,
        } => {
            if config.model(&model).is_none() {
                bail!("--model: `{model}` is not a configured model");
            }
            (
                String::new(),
                Action::Declare {
                    model,
                    severity,
                    title,
                },
            )
        }
    };
    let verb = action.name();
    let done = act(config, data_dir, &store, &id, &actor, action).await?;
    report(&done, verb);
    Ok(())
}

fn report(incident: &Incident, verb: &str) {
    println!(
        "{}: {verb} ({} {}, {})",
        incident.id,
        incident.severity.as_str(),
        incident.status.as_str(),
        incident.model
    );
}

/// Applies `action` through the server when one runs, else locally.
async fn act(
    config: &custos_config::Config,
    data_dir: &Path,
    store: &Arc<Store>,
    id: &str,
    actor: &Actor,
    action: Action,
) -> anyhow::Result<Incident> {
    let opened = {
        let (config, dir) = (config.clone(), data_dir.to_path_buf());
        let handle = tokio::runtime::Handle::current();
        let noop: custos_ledger::FsyncObserver = Arc::new(|_| {});
        tokio::task::spawn_blocking(move || crate::audit::open(&config, &dir, handle, noop))
            .await
            .context("the ledger open task failed")?
    };
    match opened {
        Ok((ledger, _)) => {
            let ledger = Arc::new(ledger);
            let listener = IncidentToLedger::new(Some(ledger.clone()));
            let engine = custos_health::IncidentEngine::new(
                config.incidents.clone(),
                store.clone(),
                Arc::new(custos_types::SystemClock),
                listener.clone(),
            );
            let applied = async {
                engine.restore().await?;
                crate::incidents::apply(&engine, &listener, id, actor, action).await
            }
            .await;
            // The ledger closes with a final checkpoint, so the event is
            // durable before this command reports success.
            ledger
                .shutdown()
                .await
                .context("cannot close the audit ledger")?;
            let applied = applied?;
            if listener.failures() > 0 {
                bail!(
                    "{}: the action was applied but its audit record could not be written; \
                     run `custos audit verify` and see docs/incident-response.md",
                    applied.id
                );
            }
            Ok(applied)
        }
        Err(e) if matches!(e.downcast_ref(), Some(LedgerError::Locked { .. })) => {
            submit(store, id, actor, &action).await
        }
        Err(e) => Err(e.context("cannot open the audit ledger to record the action")),
    }
}

/// Submits the action to the running server and waits for its outcome.
async fn submit(
    store: &Store,
    id: &str,
    actor: &Actor,
    action: &Action,
) -> anyhow::Result<Incident> {
    let args = serde_json::to_value(action)?;
    let cmd = store
        .submit_incident_command(id, action.name(), actor, &args)
        .await?;
    let deadline = tokio::time::Instant::now() + SERVER_WAIT;
    loop {
        match store.incident_command_outcome(cmd).await? {
            Some(CommandOutcome::Applied(v)) => {
                return serde_json::from_value(v).context("the server's answer is not an incident");
            }
            Some(CommandOutcome::Refused(reason)) => bail!("{reason}"),
            None if tokio::time::Instant::now() >= deadline => bail!(
                "submitted as command {cmd}, but the running server has not applied it within {}s; \
                 it will be applied when the server catches up (check its logs)",
                SERVER_WAIT.as_secs()
            ),
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn dur(d: Option<Duration>) -> Value {
    d.map_or(Value::Null, |d| {
        Value::String(humantime::format_duration(Duration::from_secs(d.as_secs())).to_string())
    })
}

fn row(i: &Incident) -> Value {
    json!({
        "id": i.id,
        "model": i.model,
        "severity": i.severity.as_str(),
        "status": i.status.as_str(),
        "started": rfc3339(i.started_at),
        "started_at": rfc3339(i.started_at),
        "resolved_at": i.resolved_at.map(rfc3339),
        "tta": dur(i.time_to_acknowledge()),
        "ttr": dur(i.time_to_resolve()),
        "time_to_acknowledge_ms": i.time_to_acknowledge().map(|d| d.as_millis() as u64),
        "time_to_resolve_ms": i.time_to_resolve().map(|d| d.as_millis() as u64),
        "assignee": i.assignee,
        "affected_keys": i.affected_keys,
        "postmortem": i.postmortem.is_some(),
        "title": i.title,
    })
}

fn print_incident(i: &Incident) {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    println!("{}  {}", i.id, i.title);
    println!("  model:          {}", i.model);
    println!(
        "  severity:       {}{}",
        i.severity.as_str(),
        if i.severity_pinned {
            " (set by hand)"
        } else {
            ""
        }
    );
    println!("  status:         {}", i.status.as_str());
    println!("  started:        {}", rfc3339(i.started_at));
    println!(
        "  acknowledged:   {}{}",
        i.acknowledged_at.map_or_else(|| "-".to_owned(), rfc3339),
        i.acknowledged_by
            .as_ref()
            .map_or_else(String::new, |b| format!(" by {b}"))
    );
    println!("  assignee:       {}", opt(&i.assignee));
    println!(
        "  resolved:       {}{}",
        i.resolved_at.map_or_else(|| "-".to_owned(), rfc3339),
        i.resolved_by
            .as_ref()
            .map_or_else(String::new, |b| format!(" by {b}"))
    );
    println!(
        "  time to ack:    {}",
        crate::table::text(&dur(i.time_to_acknowledge()))
    );
    println!(
        "  time to resolve: {}",
        crate::table::text(&dur(i.time_to_resolve()))
    );
    println!(
        "  affected keys:  {}{}",
        i.affected_keys,
        if i.affected_keys_capped { "+" } else { "" }
    );
    println!("  peak error rate:{:.1}%", i.peak_error_rate * 100.0);
    if !i.symptoms.is_empty() {
        println!("  symptoms:");
        for s in &i.symptoms {
            println!("    - {}", s.describe());
        }
    }
    println!("  timeline:");
    for e in &i.timeline {
        let detail = serde_json::to_value(&e.kind)
            .ok()
            .and_then(|v| v.as_object().cloned())
            .map(|mut o| {
                o.remove("event");
                o.iter()
                    .map(|(k, v)| format!("{k}={}", crate::table::text(v)))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        println!(
            "    {:>3} {}  {:<20} {}{}",
            e.seq,
            rfc3339(e.at),
            e.kind.label(),
            e.actor
                .as_ref()
                .map_or_else(String::new, |a| format!("[{a}] ")),
            detail
        );
    }
    if i.timeline_dropped > 0 {
        println!(
            "    ({} older events not kept; all are in the audit ledger)",
            i.timeline_dropped
        );
    }
    match &i.postmortem {
        None => println!(
            "  postmortem:     none (attach with `custos incidents postmortem {} --file pm.json`)",
            i.id
        ),
        Some(pm) => {
            println!(
                "  postmortem:     by {} at {}",
                pm.author,
                rfc3339(pm.written_at)
            );
            println!("    summary:    {}", pm.summary);
            println!("    root cause: {}", pm.root_cause);
            for a in &pm.action_items {
                println!(
                    "    - [{}] {} (owner {}{})",
                    serde_json::to_value(a.status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    a.description,
                    a.owner,
                    a.due
                        .as_ref()
                        .map_or_else(String::new, |d| format!(", due {d}"))
                );
            }
        }
    }
}

fn print_stats(s: &IncidentStats) {
    println!("incidents:        {}", s.count);
    println!("  active:         {}", s.active);
    println!("  resolved auto:  {}", s.resolved_auto);
    println!("  resolved by hand: {}", s.resolved_manual);
    println!("  never acknowledged: {}", s.unacknowledged);
    println!("  with postmortem: {}", s.with_postmortem);
    for (sev, n) in &s.by_severity {
        println!("  {}:           {n}", sev.as_str());
    }
    let show = |name: &str, d: &Option<custos_health::DurationStats>| match d {
        None => println!("{name}: -"),
        Some(d) => println!(
            "{name}: n={} mean={} median={} max={}",
            d.count,
            humantime::format_duration(Duration::from_secs(d.mean.as_secs())),
            humantime::format_duration(Duration::from_secs(d.p50.as_secs())),
            humantime::format_duration(Duration::from_secs(d.max.as_secs())),
        ),
    };
    show("time to acknowledge", &s.time_to_acknowledge);
    show("time to resolve", &s.time_to_resolve);
}

fn template() -> Value {
    json!({
        "summary": "What happened, to whom, for how long (two or three sentences).",
        "impact": "Affected keys and teams, failed requests (minute aggregates), duration, SLO budget used.",
        "root_cause": "The underlying cause, past the trigger.",
        "trigger": "What set it off.",
        "detection": "How and when it was detected; what would have detected it sooner.",
        "resolution": "What stopped the impact and what fixed the cause.",
        "lessons": "What went well, what went badly, where we were lucky.",
        "action_items": [
            {"description": "A follow-up that prevents recurrence", "owner": "a.person", "status": "open", "due": "2026-12-31", "ticket": "OPS-0000"}
        ]
    })
}
