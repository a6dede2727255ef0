//! `audit export`: the records of a time range as JSON lines (the
//! canonical records verbatim), a flat CSV table, or OCSF API Activity
//! events (class 6003) for a SIEM. The mappings are documented in
//! `docs/audit-log-format.md`, "Exports".
//!
//! Records are streamed: one is read, converted and written at a time.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use custos_ledger::LedgerReader;
use custos_record::{Admin, Inference, Record, RecordBody, Scalar, System, Via};
use serde_json::{Map, Value, json};

use super::scan::{self, Scan, TimeRange};
use super::{require_ledger, with_stdout};

/// The OCSF schema version the events follow.
pub(super) const OCSF_VERSION: &str = "1.1.0";

/// `audit export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Records at or after this time (RFC 3339 or YYYY-MM-DD, UTC);
    /// default: the first record.
    #[arg(long, value_name = "TIME", value_parser = scan::parse_time)]
    from: Option<u64>,
    /// Records before this time (exclusive); default: up to the last record.
    #[arg(long, value_name = "TIME", value_parser = scan::parse_time)]
    to: Option<u64>,
    /// The output format.
    #[arg(long, value_enum)]
    format: Format,
    /// Write to this file (replaced atomically when complete) instead of
    /// stdout. It must not be inside the ledger directory.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// The canonical records verbatim, one per line.
    Jsonl,
    /// A flat table of the main fields, with a header row.
    Csv,
    /// OCSF API Activity (class_uid 6003) events, one JSON object per line.
    Ocsf,
}

/// `custos audit export`.
pub(super) fn export(ledger: &Path, args: &ExportArgs) -> anyhow::Result<()> {
    require_ledger(ledger)?;
    let range = TimeRange {
        from: args.from,
        to: args.to,
    };
    range.check()?;
    match &args.out {
        None => with_stdout(|out| write_export(ledger, range, args.format, out).map(|_| ())),
        Some(path) => {
            refuse_inside(ledger, path)?;
            let tmp = tmp_path(path);
            let file =
                File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
            let mut out = BufWriter::new(file);
            let written = write_export(ledger, range, args.format, &mut out).and_then(|n| {
                let file = out.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
                Ok(n)
            });
            match written {
                Ok(n) => {
                    fs::rename(&tmp, path)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!("exported {n} records to {}", path.display());
                    Ok(())
                }
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    Err(e)
                }
            }
        }
    }
}

/// The audit commands never write into the ledger directory.
fn refuse_inside(ledger: &Path, out: &Path) -> anyhow::Result<()> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent = parent
        .canonicalize()
        .with_context(|| format!("cannot write {}", out.display()))?;
    if let Ok(ledger) = ledger.canonicalize()
        && parent.starts_with(&ledger)
    {
        anyhow::bail!(
            "refusing to write {} inside the ledger directory",
            out.display()
        );
    }
    Ok(())
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".partial-{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes the records of `range`; returns how many.
fn write_export(
    ledger: &Path,
    range: TimeRange,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<u64> {
    let segments = LedgerReader::open(ledger).segments()?;
    let start = scan::start_index(ledger, &segments, range.from);
    if format == Format::Csv {
        write_csv_row(out, &CSV_HEADER.map(Cell::Num))?;
    }
    let mut n = 0u64;
    for line in Scan::new(ledger, &segments, start) {
        let line = line?;
        let record = line.decode()?;
        let ts = record.ts.unix_micros();
        if range.is_past(ts) {
            break;
        }
        if !range.contains(ts) {
            continue;
        }
        match format {
            Format::Jsonl => {
                out.write_all(&line.bytes)?;
                out.write_all(b"\n")?;
            }
            Format::Csv => write_csv_row(out, &csv_row(&record))?,
            Format::Ocsf => {
                serde_json::to_writer(&mut *out, &ocsf(&record))?;
                out.write_all(b"\n")?;
            }
        }
        n += 1;
    }
    Ok(n)
}

// ---------------------------------------------------------------- CSV

/// The CSV columns, in order.
const CSV_HEADER: [&str; 39] = [
    "seq",
    "ts",
    "type",
    "event",
    "request_id",
    "key_id",
    "key_name",
    "key_owner",
    "key_team",
    "client_ip",
    "user_agent",
    "endpoint",
    "method",
    "path",
    "model_requested",
    "model_served",
    "provider",
    "status",
    "error_code",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "usage_source",
    "stream",
    "latency_us",
    "ttfb_us",
    "attempts",
    "upstream_request_id",
    "admin_user",
    "admin_role",
    "admin_mfa",
    "admin_ip",
    "admin_via",
    "action",
    "target_kind",
    "target_id",
    "reason",
    "changes",
    "details",
];

/// One CSV cell. Text from records is neutralised against spreadsheet
/// formula injection; numbers and fixed vocabulary are written as is.
enum Cell<'a> {
    /// Absent.
    Empty,
    /// A number, a timestamp or a fixed name.
    Num(&'a str),
    /// An owned number or fixed name.
    Owned(String),
    /// Text that came from outside (a client, a key name, an admin).
    Text(&'a str),
    /// Compact JSON of a nested value.
    Json(String),
}

fn write_csv_row(out: &mut dyn Write, cells: &[Cell<'_>]) -> std::io::Result<()> {
    for (i, cell) in cells.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        let text: std::borrow::Cow<'_, str> = match cell {
            Cell::Empty => "".into(),
            Cell::Num(s) => (*s).into(),
            Cell::Owned(s) | Cell::Json(s) => s.as_str().into(),
            // A leading = + - @ (or tab/CR) makes spreadsheets evaluate
            // the cell as a formula; a leading quote keeps it text
            // (OWASP "CSV injection"). The JSON lines export is verbatim.
            Cell::Text(s) if s.starts_with(['=', '+', '-', '@', '\t', '\r']) => {
                format!("'{s}").into()
            }
            Cell::Text(s) => (*s).into(),
        };
        if text.contains([',', '"', '\n', '\r']) || text.starts_with(' ') || text.ends_with(' ') {
            out.write_all(b"\"")?;
            out.write_all(text.replace('"', "\"\"").as_bytes())?;
            out.write_all(b"\"")?;
        } else {
            out.write_all(text.as_bytes())?;
        }
    }
    out.write_all(b"\r\n")
}

fn text(v: Option<&str>) -> Cell<'_> {
    v.map_or(Cell::Empty, Cell::Text)
}

fn num<T: ToString>(v: Option<T>) -> Cell<'static> {
    v.map_or(Cell::Empty, |n| Cell::Owned(n.to_string()))
}

pub(super) fn via_name(via: Via) -> &'static str {
    match via {
        Via::Console => "console",
        Via::Api => "api",
        Via::Cli => "cli",
    }
}

fn csv_row(r: &Record) -> Vec<Cell<'_>> {
    let mut row: Vec<Cell<'_>> = (0..CSV_HEADER.len()).map(|_| Cell::Empty).collect();
    row[0] = Cell::Owned(r.seq.to_string());
    row[1] = Cell::Owned(r.ts.to_string());
    row[2] = Cell::Num(r.body.record_type().as_str());
    row[3] = Cell::Text(r.body.event());
    match &r.body {
        RecordBody::Inference(i) => {
            let actor = i.actor.as_ref();
            let client = i.client.as_ref();
            let usage = i.usage.as_ref();
            row[4] = Cell::Text(&i.request_id);
            row[5] = text(actor.and_then(|a| a.key_id.as_deref()));
            row[6] = text(actor.and_then(|a| a.key_name.as_deref()));
            row[7] = text(actor.and_then(|a| a.owner.as_deref()));
            row[8] = text(actor.and_then(|a| a.team.as_deref()));
            row[9] = num(client.and_then(|c| c.ip));
            row[10] = text(client.and_then(|c| c.user_agent.as_deref()));
            row[11] = Cell::Text(&i.endpoint);
            row[12] = Cell::Text(&i.method);
            row[13] = Cell::Text(&i.path);
            row[14] = text(i.model_requested.as_deref());
            row[15] = text(i.model_served.as_deref());
            row[16] = text(i.provider.as_deref());
            row[17] = num(Some(i.status));
            row[18] = text(i.error_code.as_deref());
            row[19] = num(usage.map(|u| u.prompt_tokens));
            row[20] = num(usage.map(|u| u.completion_tokens));
            row[21] = num(usage.map(|u| u.total_tokens));
            row[22] = usage.map_or(Cell::Empty, |u| {
                Cell::Num(match u.source {
                    custos_record::UsageSource::Upstream => "upstream",
                    custos_record::UsageSource::Estimated => "estimated",
                })
            });
            row[23] = Cell::Num(if i.stream { "true" } else { "false" });
            row[24] = num(Some(i.latency_us));
            row[25] = num(i.ttfb_us);
            if !i.attempts.is_empty() {
                row[26] = Cell::Json(serde_json::to_string(&i.attempts).unwrap_or_default());
            }
            row[27] = text(i.upstream_request_id.as_deref());
        }
        RecordBody::Admin(a) => {
            row[28] = Cell::Text(&a.actor.user);
            row[29] = Cell::Text(&a.actor.role);
            row[30] = Cell::Num(if a.actor.mfa { "true" } else { "false" });
            row[31] = num(a.actor.ip);
            row[32] = Cell::Num(via_name(a.actor.via));
            row[33] = Cell::Text(&a.action);
            row[34] = text(a.target.as_ref().map(|t| t.kind.as_str()));
            row[35] = text(a.target.as_ref().map(|t| t.id.as_str()));
            row[36] = text(a.reason.as_deref());
            if !a.changes.is_empty() {
                row[37] = Cell::Json(serde_json::to_string(&a.changes).unwrap_or_default());
            }
        }
        RecordBody::System(s) => {
            if !s.details.is_empty() {
                row[38] = Cell::Json(serde_json::to_string(&s.details).unwrap_or_default());
            }
        }
    }
    row
}

// --------------------------------------------------------------- OCSF

/// Inserts `value` under `key` unless it is `None`.
fn put(map: &mut Map<String, Value>, key: &str, value: Option<impl Into<Value>>) {
    if let Some(v) = value {
        map.insert(key.to_owned(), v.into());
    }
}

fn scalar_json(v: &Scalar) -> Value {
    match v {
        Scalar::Bool(b) => json!(b),
        Scalar::Int(i) => json!(i),
        Scalar::Str(s) => json!(s),
    }
}

/// The OCSF API Activity `activity_id` and its caption for an HTTP method.
fn activity_for_method(method: &str) -> (u64, String) {
    match method {
        "POST" => (1, "Create".into()),
        "GET" | "HEAD" => (2, "Read".into()),
        "PUT" | "PATCH" => (3, "Update".into()),
        "DELETE" => (4, "Delete".into()),
        other => (99, other.to_owned()),
    }
}

/// The `activity_id` and caption for an admin action name.
fn activity_for_action(action: &str) -> (u64, String) {
    match action {
        "create" | "add" | "issue" => (1, "Create".into()),
        "read" | "list" | "show" | "view" | "export" => (2, "Read".into()),
        "update" | "rotate" | "set" | "enable" | "disable" => (3, "Update".into()),
        "delete" | "revoke" | "remove" | "purge" => (4, "Delete".into()),
        other => (99, other.to_owned()),
    }
}

/// One record as an OCSF API Activity event (see the module docs and
/// `docs/audit-log-format.md`, "Exports", for the mapping).
pub(super) fn ocsf(r: &Record) -> Value {
    let (activity_id, activity_name, success) = match &r.body {
        RecordBody::Inference(i) => {
            let (id, name) = activity_for_method(&i.method);
            (id, name, i.status < 400)
        }
        RecordBody::Admin(a) => {
            let (id, name) = activity_for_action(&a.action);
            let failed = a.event.contains("failed") || a.event.contains("denied");
            (id, name, !failed)
        }
        RecordBody::System(s) => (99, s.event.clone(), true),
    };
    let type_caption = if activity_id == 99 {
        "Other"
    } else {
        activity_name.as_str()
    };
    let mut metadata = Map::new();
    metadata.insert("version".into(), json!(OCSF_VERSION));
    metadata.insert(
        "product".into(),
        json!({
            "name": "Custos",
            "vendor_name": "Custos",
            "version": env!("CARGO_PKG_VERSION"),
        }),
    );
    metadata.insert("log_name".into(), json!("audit"));
    metadata.insert("uid".into(), json!(r.seq.to_string()));
    metadata.insert("sequence".into(), json!(r.seq));
    metadata.insert("event_code".into(), json!(r.body.event()));
    metadata.insert("original_time".into(), json!(r.ts.to_string()));

    let time_ms = r.ts.unix_micros() / 1000;
    let mut ev = Map::new();
    ev.insert("activity_id".into(), json!(activity_id));
    ev.insert("activity_name".into(), json!(activity_name));
    ev.insert("category_uid".into(), json!(6));
    ev.insert("category_name".into(), json!("Application Activity"));
    ev.insert("class_uid".into(), json!(6003));
    ev.insert("class_name".into(), json!("API Activity"));
    ev.insert("type_uid".into(), json!(600_300 + activity_id));
    ev.insert(
        "type_name".into(),
        json!(format!("API Activity: {type_caption}")),
    );
    ev.insert("time".into(), json!(time_ms));
    ev.insert("severity_id".into(), json!(if success { 1 } else { 2 }));
    ev.insert(
        "severity".into(),
        json!(if success { "Informational" } else { "Low" }),
    );
    ev.insert("status_id".into(), json!(if success { 1 } else { 2 }));
    ev.insert(
        "status".into(),
        json!(if success { "Success" } else { "Failure" }),
    );

    let mut unmapped = Map::new();
    match &r.body {
        RecordBody::Inference(i) => {
            ocsf_inference(i, time_ms, &mut ev, &mut metadata, &mut unmapped);
        }
        RecordBody::Admin(a) => ocsf_admin(a, &mut ev, &mut unmapped),
        RecordBody::System(s) => ocsf_system(s, &mut ev, &mut unmapped),
    }
    ev.insert("metadata".into(), Value::Object(metadata));
    if !unmapped.is_empty() {
        ev.insert("unmapped".into(), Value::Object(unmapped));
    }
    Value::Object(ev)
}

fn ocsf_inference(
    i: &Inference,
    time_ms: u64,
    ev: &mut Map<String, Value>,
    metadata: &mut Map<String, Value>,
    unmapped: &mut Map<String, Value>,
) {
    metadata.insert("correlation_uid".into(), json!(i.request_id));
    metadata.insert("profiles".into(), json!(["ai_operation"]));

    let mut user = Map::new();
    match &i.actor {
        Some(a) => {
            put(&mut user, "uid", a.key_id.clone());
            put(&mut user, "credential_uid", a.key_id.clone());
            put(&mut user, "name", a.key_name.clone());
            put(
                &mut user,
                "groups",
                a.team.as_ref().map(|t| json!([{ "name": t }])),
            );
            put(unmapped, "key_owner", a.owner.clone());
        }
        None => {
            user.insert("name".into(), json!("unauthenticated"));
        }
    }
    ev.insert("actor".into(), json!({ "user": user }));

    let mut api = Map::new();
    api.insert("operation".into(), json!(i.endpoint));
    api.insert("request".into(), json!({ "uid": i.request_id }));
    let mut response = Map::new();
    response.insert("code".into(), json!(i.status));
    put(&mut response, "error", i.error_code.clone());
    api.insert("response".into(), Value::Object(response));
    ev.insert("api".into(), Value::Object(api));

    let client = i.client.as_ref();
    let src = match client.and_then(|c| c.ip) {
        Some(ip) => json!({ "ip": ip.to_string() }),
        None => json!({ "name": "unknown" }),
    };
    ev.insert("src_endpoint".into(), src);

    let mut request = Map::new();
    request.insert("uid".into(), json!(i.request_id));
    request.insert("http_method".into(), json!(i.method));
    request.insert("url".into(), json!({ "path": i.path }));
    put(
        &mut request,
        "user_agent",
        client.and_then(|c| c.user_agent.clone()),
    );
    ev.insert("http_request".into(), Value::Object(request));
    ev.insert("http_response".into(), json!({ "code": i.status }));
    put(ev, "status_code", Some(i.status.to_string()));
    put(ev, "status_detail", i.error_code.clone());

    let duration_ms = i.latency_us / 1000;
    ev.insert("duration".into(), json!(duration_ms));
    ev.insert(
        "start_time".into(),
        json!(time_ms.saturating_sub(duration_ms)),
    );
    ev.insert("end_time".into(), json!(time_ms));

    // The ai_operation profile: the model and the token usage.
    if let Some(model) = i.model_served.as_ref().or(i.model_requested.as_ref()) {
        let provider = i.provider.clone().unwrap_or_else(|| "unknown".into());
        ev.insert(
            "ai_model".into(),
            json!({ "name": model, "ai_provider": provider }),
        );
    }
    if let Some(u) = &i.usage {
        ev.insert(
            "message_context".into(),
            json!({
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
                "total_tokens": u.total_tokens,
                "service": { "name": i.provider.as_deref().unwrap_or("Custos") },
            }),
        );
    }

    put(unmapped, "model_requested", i.model_requested.clone());
    put(unmapped, "model_served", i.model_served.clone());
    put(unmapped, "provider", i.provider.clone());
    put(
        unmapped,
        "usage_source",
        i.usage.map(|u| match u.source {
            custos_record::UsageSource::Upstream => "upstream",
            custos_record::UsageSource::Estimated => "estimated",
        }),
    );
    unmapped.insert("stream".into(), json!(i.stream));
    unmapped.insert("latency_us".into(), json!(i.latency_us));
    put(unmapped, "ttfb_us", i.ttfb_us);
    put(
        unmapped,
        "upstream_request_id",
        i.upstream_request_id.clone(),
    );
    if !i.attempts.is_empty() {
        unmapped.insert(
            "attempts".into(),
            serde_json::to_value(&i.attempts).unwrap_or(Value::Null),
        );
    }
}

fn ocsf_admin(a: &Admin, ev: &mut Map<String, Value>, unmapped: &mut Map<String, Value>) {
    let via = via_name(a.actor.via);
    ev.insert(
        "actor".into(),
        json!({
            "user": { "name": a.actor.user },
            "session": { "is_mfa": a.actor.mfa },
            "app_name": format!("custos {via}"),
        }),
    );
    ev.insert("api".into(), json!({ "operation": a.event }));
    let src = match a.actor.ip {
        Some(ip) => json!({ "ip": ip.to_string() }),
        None => json!({ "name": via }),
    };
    ev.insert("src_endpoint".into(), src);
    if let Some(t) = &a.target {
        ev.insert("resources".into(), json!([{ "uid": t.id, "type": t.kind }]));
    }
    unmapped.insert("action".into(), json!(a.action));
    unmapped.insert("role".into(), json!(a.actor.role));
    unmapped.insert("via".into(), json!(via));
    put(unmapped, "reason", a.reason.clone());
    if !a.changes.is_empty() {
        unmapped.insert(
            "changes".into(),
            serde_json::to_value(&a.changes).unwrap_or(Value::Null),
        );
    }
}

fn ocsf_system(s: &System, ev: &mut Map<String, Value>, unmapped: &mut Map<String, Value>) {
    ev.insert("actor".into(), json!({ "app_name": "Custos" }));
    ev.insert("api".into(), json!({ "operation": s.event }));
    ev.insert("src_endpoint".into(), json!({ "name": "custos" }));
    if !s.details.is_empty() {
        let details: Map<String, Value> = s
            .details
            .iter()
            .map(|(k, v)| (k.clone(), scalar_json(v)))
            .collect();
        unmapped.insert("details".into(), Value::Object(details));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(cells: &[Cell<'_>]) -> String {
        let mut out = Vec::new();
        write_csv_row(&mut out, cells).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn csv_quotes_and_neutralises_formulas() {
        assert_eq!(
            csv(&[
                Cell::Num("1"),
                Cell::Text("a,b"),
                Cell::Text("say \"hi\""),
                Cell::Empty
            ]),
            "1,\"a,b\",\"say \"\"hi\"\"\",\r\n"
        );
        assert_eq!(
            csv(&[
                Cell::Text("=cmd|' /C calc'!A0"),
                Cell::Text("-1"),
                Cell::Owned("-1".into())
            ]),
            "'=cmd|' /C calc'!A0,'-1,-1\r\n"
        );
        assert_eq!(csv(&[Cell::Text("line\nbreak")]), "\"line\nbreak\"\r\n");
    }

    #[test]
    fn header_and_rows_have_the_same_width() {
        let r = Record {
            seq: 0,
            ts: custos_record::Timestamp::EPOCH,
            body: RecordBody::System(System::new("server.started")),
        };
        assert_eq!(csv_row(&r).len(), CSV_HEADER.len());
    }

    #[test]
    fn ocsf_system_event_is_other_activity() {
        let r = Record {
            seq: 7,
            ts: custos_record::Timestamp::from_unix_micros(1_735_689_600_123_456).unwrap(),
            body: RecordBody::System(System::new("server.started").with("version", "0.1.0")),
        };
        let v = ocsf(&r);
        assert_eq!(v["class_uid"], 6003);
        assert_eq!(v["category_uid"], 6);
        assert_eq!(v["activity_id"], 99);
        assert_eq!(v["type_uid"], 600_399);
        assert_eq!(v["time"], 1_735_689_600_123u64);
        assert_eq!(v["metadata"]["sequence"], 7);
        assert_eq!(v["metadata"]["product"]["name"], "Custos");
        assert_eq!(v["unmapped"]["details"]["version"], "0.1.0");
    }
}
