//! The self-contained HTML report: inline CSS, charts as inline SVG, no
//! script, no external resource. It prints cleanly (tables break across
//! pages, charts do not) and reads without any tool.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use crate::gather::{Evidence, fingerprint};
use crate::period::format_time;
use crate::table::{Table, cell_text};

/// Escapes text for HTML element content and attribute values.
#[must_use]
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = r#"
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b1f24; margin: 0 auto; max-width: 1180px; padding: 24px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 6px; padding-top: 8px; border-top: 2px solid #d0d7de; }
h3 { font-size: 15px; margin: 18px 0 6px; }
p.desc { color: #57606a; margin: 0 0 8px; }
.meta { color: #57606a; margin-bottom: 16px; }
.ok { color: #1a7f37; font-weight: 600; } .bad { color: #cf222e; font-weight: 600; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 12px; font-size: 12px; }
th, td { border: 1px solid #d0d7de; padding: 3px 6px; text-align: left; vertical-align: top; overflow-wrap: break-word; }
td.long { overflow-wrap: anywhere; min-width: 12em; }
th { background: #f6f8fa; }
tr:nth-child(even) td { background: #fbfcfd; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; padding: 8px; font-size: 12px; white-space: pre-wrap; overflow-wrap: anywhere; }
nav ol { columns: 2; font-size: 13px; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; border: 1px solid #d0d7de; padding: 6px; }
figcaption { font-size: 12px; font-weight: 600; }
.policy { border-left: 3px solid #d0d7de; padding-left: 12px; }
@media print {
  body { max-width: none; padding: 0; font-size: 10pt; }
  h2 { break-before: page; border-top: none; }
  h2.first { break-before: avoid; }
  figure, tr, pre { break-inside: avoid; }
  thead { display: table-header-group; }
  nav { display: none; }
}
"#;

/// Renders a table as HTML.
fn table_html(out: &mut String, t: &Table, max_rows: Option<usize>) {
    let _ = writeln!(out, "<table id=\"t-{}\"><thead><tr>", t.name);
    for c in &t.columns {
        // Break long snake_case names at underscores, never mid-word.
        let _ = write!(out, "<th>{}</th>", esc(c).replace('_', "_<wbr>"));
    }
    out.push_str("</tr></thead><tbody>\n");
    if t.rows.is_empty() {
        let _ = writeln!(
            out,
            "<tr><td colspan=\"{}\"><em>none in this period</em></td></tr>",
            t.columns.len()
        );
    }
    let shown = max_rows.unwrap_or(usize::MAX).min(t.rows.len());
    for row in t.rows.iter().take(shown) {
        out.push_str("<tr>");
        for v in row {
            let text = cell_text(v);
            let class = if v.is_number() {
                " class=\"num\""
            } else if text.len() > 48 {
                " class=\"long\""
            } else {
                ""
            };
            let _ = write!(out, "<td{class}>{}</td>", cell_html(&text));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n");
    if shown < t.rows.len() {
        let _ = writeln!(
            out,
            "<p class=\"desc\">Showing {shown} of {} rows; all rows are in <code>tables/{}.csv</code> and <code>.json</code>.</p>",
            t.rows.len(),
            t.name
        );
    }
}

/// A cell's text as HTML; a timestamp may wrap between date and time.
fn cell_html(text: &str) -> String {
    let b = text.as_bytes();
    if b.len() >= 20 && b.get(4) == Some(&b'-') && b.get(10) == Some(&b'T') {
        let (date, time) = text.split_at(10);
        return format!("{}<wbr>{}", esc(date), esc(time));
    }
    esc(text)
}

/// One line series.
struct Series {
    name: String,
    points: Vec<Option<f64>>,
}

const COLORS: &[&str] = &[
    "#0969da", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#1b7c83", "#6e7781", "#bf3989",
];

/// A line chart over `labels` (days) as inline SVG.
fn line_chart(title: &str, unit: &str, labels: &[String], series: &[Series]) -> String {
    let (w, h) = (560.0_f64, 240.0_f64);
    let (left, right, top, bottom) = (56.0, 24.0, 12.0, 46.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let max = series
        .iter()
        .flat_map(|s| s.points.iter().flatten().copied())
        .fold(0.0_f64, f64::max);
    let max = if max <= 0.0 { 1.0 } else { nice(max) };
    let n = labels.len().max(1);
    let x = |i: usize| {
        if n == 1 {
            left + pw / 2.0
        } else {
            left + pw * i as f64 / (n - 1) as f64
        }
    };
    let y = |v: f64| top + ph - ph * v / max;
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<figure><figcaption>{}</figcaption><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h2}\" viewBox=\"0 0 {w} {h2}\" role=\"img\" aria-label=\"{}\">",
        esc(title),
        esc(title),
        h2 = h + 18.0 * series.len().div_ceil(3) as f64,
    );
    for i in 0..=4 {
        let v = max * f64::from(i) / 4.0;
        let yy = y(v);
        let _ = write!(
            svg,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#d0d7de\" stroke-width=\"1\"/><text x=\"{}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\" fill=\"#57606a\">{}</text>",
            left + pw,
            left - 4.0,
            yy + 3.0,
            esc(&format!("{}{unit}", short(v)))
        );
    }
    let step = n.div_ceil(8).max(1);
    for (i, l) in labels.iter().enumerate() {
        if i % step == 0 || i + 1 == n {
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\" fill=\"#57606a\">{}</text>",
                x(i),
                top + ph + 14.0,
                esc(l.get(5..).unwrap_or(l))
            );
        }
    }
    for (si, s) in series.iter().enumerate() {
        let color = COLORS.get(si % COLORS.len()).copied().unwrap_or("#000");
        let mut path = String::new();
        let mut pen_down = false;
        for (i, p) in s.points.iter().enumerate() {
            match p {
                Some(v) => {
                    let _ = write!(
                        path,
                        "{}{:.1},{:.1} ",
                        if pen_down { "L" } else { "M" },
                        x(i),
                        y(*v)
                    );
                    pen_down = true;
                    let _ = write!(
                        svg,
                        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{color}\"/>",
                        x(i),
                        y(*v)
                    );
                }
                None => pen_down = false,
            }
        }
        if !path.is_empty() {
            let _ = write!(
                svg,
                "<path d=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.8\"/>",
                path.trim_end()
            );
        }
        let lx = left + (si % 3) as f64 * (pw / 3.0);
        let ly = h - 8.0 + 18.0 * (si / 3) as f64;
        let _ = write!(
            svg,
            "<rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{ly:.1}\" font-size=\"11\">{}</text>",
            ly - 9.0,
            lx + 14.0,
            esc(&s.name)
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

/// A round upper bound for an axis.
fn nice(max: f64) -> f64 {
    let mag = 10f64.powf(max.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if max <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn short(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{:.1}M", v / 1_000_000.0)
    } else if v >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The capacity charts from the `capacity` table: one series per model.
fn capacity_charts(t: &Table, days: &[String]) -> String {
    let col = |n: &str| t.column(n).unwrap_or(0);
    let (dc, mc) = (col("day"), col("model"));
    let mut models: BTreeMap<String, BTreeMap<String, &Vec<Value>>> = BTreeMap::new();
    for row in &t.rows {
        let day = row.get(dc).map(cell_text).unwrap_or_default();
        let model = row.get(mc).map(cell_text).unwrap_or_default();
        models.entry(model).or_default().insert(day, row);
    }
    let series = |name: &str, scale: f64, suffix: &str| -> Vec<Series> {
        let c = col(name);
        models
            .iter()
            .map(|(m, by_day)| Series {
                name: format!("{m}{suffix}"),
                points: days
                    .iter()
                    .map(|d| {
                        by_day
                            .get(d)
                            .and_then(|r| r.get(c))
                            .and_then(Value::as_f64)
                            .map(|v| v * scale)
                    })
                    .collect(),
            })
            .collect()
    };
    let mut latency = series("p50_ms", 1.0, " p50");
    latency.extend(series("p99_ms", 1.0, " p99"));
    format!(
        "<div class=\"charts\">{}{}{}</div>",
        line_chart(
            "Requests per day, by model",
            "",
            days,
            &series("requests", 1.0, "")
        ),
        line_chart(
            "Server error rate per day, by model",
            "%",
            days,
            &series("error_rate", 100.0, "")
        ),
        line_chart("Latency p50 / p99 per day, by model", " ms", days, &latency),
    )
}

/// Markdown with only headings, numbered lines, `**bold**` and `_italic_`
/// to HTML: enough for the generated policies.
fn markdown(md: &str) -> String {
    let inline = |s: &str| {
        let mut out = String::new();
        for (i, part) in esc(s).split("**").enumerate() {
            if i % 2 == 1 {
                let _ = write!(out, "<strong>{part}</strong>");
            } else {
                out.push_str(part);
            }
        }
        out
    };
    let mut out = String::new();
    let mut in_list = false;
    for line in md.lines() {
        let numbered = line
            .split_once(". ")
            .filter(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if let Some((_, rest)) = numbered {
            if !in_list {
                out.push_str("<ol>");
                in_list = true;
            }
            let _ = write!(out, "<li>{}</li>", inline(rest));
            continue;
        }
        if in_list {
            out.push_str("</ol>");
            in_list = false;
        }
        if let Some(h) = line.strip_prefix("# ") {
            let _ = write!(out, "<h3>{}</h3>", esc(h));
        } else if let Some(em) = line.strip_prefix('_').and_then(|l| l.strip_suffix('_')) {
            let _ = write!(out, "<p class=\"desc\"><em>{}</em></p>", inline(em));
        } else if !line.is_empty() {
            let _ = write!(out, "<p>{}</p>", inline(line));
        }
    }
    if in_list {
        out.push_str("</ol>");
    }
    out
}

/// Renders the whole report.
#[must_use]
pub fn render(ev: &Evidence) -> String {
    let p = &ev.request.period;
    let days = crate::period::days(p);
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Custos evidence pack {from} to {to}</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{CSS}</style></head><body>\n\
         <h1>Custos SOC 2 evidence pack</h1>\n<div class=\"meta\">Period <strong>{from}</strong> (inclusive) to <strong>{to}</strong> (exclusive), UTC. \
         Generated {gen} by {by}. Log origin {origin}. The file <code>manifest.json</code> lists every file of this pack with its SHA-256 \
         and is signed with the audit ledger's key (<code>manifest.sig</code>); its hash is recorded in the ledger.</div>\n",
        from = esc(&format_time(p.from())),
        to = esc(&format_time(p.to())),
        gen = esc(&format_time(ev.request.generated_at)),
        by = esc(&ev.request.generated_by),
        origin = esc(ev.origin.as_deref().unwrap_or("(no key yet)")),
    );
    let sections: Vec<(&str, &str)> = vec![
        ("control-matrix", "Control matrix"),
        ("integrity", "Audit-log integrity"),
        ("key-inventory", "Key inventory"),
        ("key-lifecycle", "Key lifecycle log"),
        ("console-users", "Console users"),
        ("access-review", "Access review report"),
        ("retention", "Retention"),
        ("incidents", "Incidents"),
        ("capacity", "Capacity and performance"),
        ("config-changes", "Configuration change history"),
        ("policies", "Policy documents"),
        ("events", "Audit events in the period"),
    ];
    out.push_str("<nav><strong>Contents</strong><ol>");
    for (id, title) in &sections {
        let _ = write!(out, "<li><a href=\"#{id}\">{}</a></li>", esc(title));
    }
    out.push_str("</ol></nav>\n");
    for (i, (id, title)) in sections.iter().enumerate() {
        let _ = writeln!(
            out,
            "<h2 id=\"{id}\"{}>{}</h2>",
            if i == 0 { " class=\"first\"" } else { "" },
            esc(title)
        );
        match *id {
            "integrity" => {
                let ig = &ev.integrity;
                let _ = writeln!(
                    out,
                    "<p>Verification of the whole ledger: <span class=\"{}\">{}</span>. {} records checked, {} checkpoints checked. \
                     The period covers records <code>[{}, {})</code>.</p>",
                    if ig.intact { "ok" } else { "bad" },
                    if ig.intact { "INTACT" } else { "FAILED" },
                    ig.records_checked,
                    ig.checkpoints_checked,
                    ig.period_first_seq,
                    ig.period_end_seq
                );
                if let Some(t) = ev.table("integrity") {
                    table_html(&mut out, t, None);
                }
                for e in &ig.keys {
                    let _ = writeln!(
                        out,
                        "<p>Public key (checkpoints from size {}): <code>{}</code><br>SHA-256 of the Ed25519 public key: <code>{}</code></p>",
                        e.first_size,
                        esc(&e.verifier.to_vkey()),
                        fingerprint(e)
                    );
                }
                for (label, cp) in [("start", &ig.start_checkpoint), ("end", &ig.end_checkpoint)] {
                    match cp {
                        Some((size, note)) => {
                            let _ = writeln!(
                                out,
                                "<h3>Signed checkpoint at the {label} of the period (tree size {size})</h3><pre>{}</pre>",
                                esc(note)
                            );
                        }
                        None if label == "start" && ig.period_first_seq == 0 => {
                            let _ = writeln!(
                                out,
                                "<p>The period starts at the beginning of the log (tree size 0), so no earlier checkpoint exists.</p>"
                            );
                        }
                        None => {
                            let _ = writeln!(
                                out,
                                "<p>No signed checkpoint at the {label} of the period yet (the newest records are signed at the next checkpoint).</p>"
                            );
                        }
                    }
                }
                if let Some(t) = ev.table("records-per-day") {
                    let _ = writeln!(
                        out,
                        "<h3>{}</h3><p class=\"desc\">{}</p>",
                        esc(t.title),
                        esc(&t.description)
                    );
                    table_html(&mut out, t, None);
                }
            }
            "incidents" => {
                for name in ["incidents"] {
                    if let Some(t) = ev.table(name) {
                        let _ = writeln!(out, "<p class=\"desc\">{}</p>", esc(&t.description));
                        table_html(&mut out, t, None);
                    }
                }
                for inc in &ev.incidents {
                    let _ = writeln!(
                        out,
                        "<h3>{} — {}</h3><table><thead><tr><th>time</th><th>actor</th><th>event</th></tr></thead><tbody>",
                        esc(&inc.id),
                        esc(&inc.title)
                    );
                    for e in &inc.timeline {
                        let _ = writeln!(
                            out,
                            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                            esc(&format_time(e.at)),
                            esc(e.actor.as_deref().unwrap_or("custos")),
                            esc(e.kind.label())
                        );
                    }
                    out.push_str("</tbody></table>\n");
                    if let Some(pm) = &inc.postmortem {
                        let _ = writeln!(
                            out,
                            "<p><strong>Postmortem</strong> by {} ({}).</p><table><tbody>",
                            esc(&pm.author),
                            esc(&format_time(pm.written_at))
                        );
                        for (k, v) in [
                            ("Summary", &pm.summary),
                            ("Impact", &pm.impact),
                            ("Root cause", &pm.root_cause),
                            ("Trigger", &pm.trigger),
                            ("Detection", &pm.detection),
                            ("Resolution", &pm.resolution),
                            ("Lessons", &pm.lessons),
                        ] {
                            let _ = writeln!(out, "<tr><th>{k}</th><td>{}</td></tr>", esc(v));
                        }
                        for a in &pm.action_items {
                            let _ = writeln!(
                                out,
                                "<tr><th>Action</th><td>{} (owner {})</td></tr>",
                                esc(&a.description),
                                esc(&a.owner)
                            );
                        }
                        out.push_str("</tbody></table>\n");
                    }
                }
            }
            "capacity" => {
                if let Some(t) = ev.table("capacity") {
                    out.push_str(&capacity_charts(t, &days));
                    let _ = writeln!(out, "<p class=\"desc\">{}</p>", esc(&t.description));
                    table_html(&mut out, t, Some(500));
                }
            }
            "policies" => {
                for pol in &ev.policies {
                    let _ = writeln!(
                        out,
                        "<div class=\"policy\">{}<p class=\"desc\">File: <code>{}</code></p></div>",
                        markdown(&pol.text),
                        esc(pol.path)
                    );
                }
            }
            "retention" | "control-matrix" | "key-inventory" | "key-lifecycle"
            | "console-users" | "access-review" | "config-changes" | "events" => {
                if let Some(t) = ev.table(id) {
                    let _ = writeln!(out, "<p class=\"desc\">{}</p>", esc(&t.description));
                    table_html(&mut out, t, Some(2000));
                }
                if *id == "config-changes"
                    && let Some(sha) = &ev.config_sha256
                {
                    let _ = writeln!(
                        out,
                        "<p>Configuration in force when this pack was generated: SHA-256 <code>{}</code>.</p>",
                        esc(sha)
                    );
                }
            }
            _ => {}
        }
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_axes() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert!((nice(7.3) - 10.0).abs() < 1e-9);
        assert!((nice(130.0) - 200.0).abs() < 1e-9);
        let md = markdown("# T\n\n1. a **b** <c>\n2. d\n");
        assert_eq!(
            md,
            "<h3>T</h3><ol><li>a <strong>b</strong> &lt;c&gt;</li><li>d</li></ol>"
        );
    }
}
