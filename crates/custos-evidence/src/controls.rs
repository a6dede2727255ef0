//! The control matrix: which SOC 2 criteria Custos supports, how, and
//! which files of the pack are the evidence.

use serde_json::json;

use crate::table::Table;

/// `(criterion, control in plain words, how Custos implements it, evidence files)`.
const CONTROLS: &[(&str, &str, &str, &str)] = &[
    (
        "CC6.1",
        "Only authorised clients can call the language models, and each one only for what it needs.",
        "Every request needs an API key; keys carry scopes (models, endpoints, networks, rate and token limits), an owner and a team; only key hashes are stored.",
        "tables/key-inventory.csv; tables/access-review.csv; policies/api-key-management.md",
    ),
    (
        "CC6.2",
        "Access is granted, changed and removed through a recorded process.",
        "Keys are created, updated, rotated and revoked through the CLI, admin API or console; each change is written to the audit ledger with the actor and whether they passed MFA.",
        "tables/key-lifecycle.csv; tables/events.csv",
    ),
    (
        "CC6.3",
        "Administrators have individual accounts with roles, and access is reviewed.",
        "Console users sign in individually with a role (viewer, operator, admin) and TOTP MFA; failed sign-ins lock the account; the access review lists every credential with its findings.",
        "tables/console-users.csv; tables/access-review.csv",
    ),
    (
        "CC6.6",
        "Credentials are rotated and expire.",
        "Key secrets have a maximum age with a warning window; rotation keeps a grace period; expiry is enforced on every request.",
        "tables/key-inventory.csv; tables/access-review.csv; policies/api-key-management.md",
    ),
    (
        "CC7.2",
        "System activity is logged in a way that cannot be altered unnoticed.",
        "Every API request and admin action is an audit record in an append-only RFC 6962 Merkle tree, with Ed25519-signed checkpoints; the offline verifier recomputes every hash and signature.",
        "tables/integrity.csv; integrity/; tables/records-per-day.csv; tables/events.csv",
    ),
    (
        "CC7.3",
        "Incidents are detected, acknowledged, resolved and reviewed.",
        "Custos opens incidents from error rate, latency and circuit-breaker signals, records every operator action in the ledger, and keeps timelines and postmortems.",
        "tables/incidents.csv; tables/incident-timeline.csv; incidents/incidents.json; policies/incident-response.md",
    ),
    (
        "CC8.1",
        "Configuration changes are tracked.",
        "At every start the gateway records the SHA-256 of the configuration it loaded in the audit ledger.",
        "tables/config-changes.csv; config/sha256.txt",
    ),
    (
        "A1.1",
        "Capacity and performance are monitored.",
        "Request volume, error rate and latency per model are taken from the audit records themselves.",
        "tables/capacity.csv; report.html (charts)",
    ),
    (
        "C1.2 / CC7.2",
        "Audit records are retained for the required period and disposed of only under control.",
        "Retention is configured (at least 365 days unless explicitly shortened); purging old segments is itself an audited event.",
        "tables/retention.csv; policies/log-retention.md",
    ),
];

/// The control matrix table.
#[must_use]
pub fn control_matrix() -> Table {
    let mut t = Table::new(
        "control-matrix",
        "Control matrix",
        "The SOC 2 criteria this pack supports, the control in plain words, how Custos implements it \
         and which files of this pack are the evidence.",
        &["criterion", "control", "implementation", "evidence"],
    );
    for (c, d, i, e) in CONTROLS {
        t.push(vec![json!(c), json!(d), json!(i), json!(e)]);
    }
    t
}
