//! `custos keys …` against a running server's admin API, when
//! `CUSTOS_ADMIN_URL` and `CUSTOS_ADMIN_TOKEN` are set: the change is made
//! by the server, attributed to the token's owner and role, and recorded in
//! the ledger like a console action. Output is the same as the local mode
//! (the API returns the same key JSON).

use anyhow::{Context as _, bail};
use serde_json::{Map, Value, json};

use crate::keys_cmd::{KeysCommand, print_key, print_table};

/// Runs one key command through the admin API at `base`.
pub async fn run(base: &str, token: &str, cmd: KeysCommand) -> anyhow::Result<()> {
    let api = Api {
        base: base.trim_end_matches('/').to_owned(),
        token: token.to_owned(),
        client: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .context("cannot build the HTTP client")?,
    };
    let split = |s: &str| -> Vec<Value> {
        s.split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(|x| Value::String(x.to_owned()))
            .collect()
    };
    match cmd {
        KeysCommand::Create(a) => {
            let mut body = json!({
                "name": a.name,
                "description": a.description,
                "models": split(&a.models),
                "capabilities": split(&a.capabilities),
                "cidrs": a.cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "labels": a.labels.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            });
            let obj = body.as_object_mut().context("body")?;
            put(obj, "owner", a.owner.map(Value::String));
            put(obj, "team", a.team.map(Value::String));
            put(obj, "rpm", a.rpm.map(Value::from));
            put(obj, "tpm", a.tpm.map(Value::from));
            put(
                obj,
                "budget",
                a.budget.map(|b| {
                    json!({"tokens": b.tokens, "period": match b.period {
                        custos_auth::scope::BudgetPeriod::Day => "day",
                        custos_auth::scope::BudgetPeriod::Month => "month",
                    }})
                }),
            );
            put(
                obj,
                "expires_in",
                a.expires_in
                    .map(|d| Value::String(format!("{}s", d.as_secs()))),
            );
            let key = api.send("POST", "/admin/v1/keys", Some(body)).await?;
            if a.json {
                println!("{key}");
            } else {
                let secret = key["secret"].as_str().unwrap_or("").to_owned();
                print_key(&key);
                println!();
                println!("secret: {secret}");
                println!("This secret is shown once. Store it in your secret manager now.");
            }
        }
        KeysCommand::List(a) => {
            let mut q: Vec<(&str, String)> = Vec::new();
            for (k, v) in [
                ("owner", a.owner),
                ("team", a.team),
                ("state", a.state),
                ("search", a.search),
            ] {
                if let Some(v) = v {
                    q.push((k, v));
                }
            }
            if a.due {
                q.push(("due", "true".into()));
            }
            let query = serde_urlencoded::to_string(&q).context("query")?;
            let out = api
                .send("GET", &format!("/admin/v1/keys?{query}"), None)
                .await?;
            let rows = out["keys"].as_array().cloned().unwrap_or_default();
            if a.json {
                println!("{}", Value::Array(rows));
            } else {
                print_table(&rows);
            }
        }
        KeysCommand::Show { id, json } => {
            let key = api
                .send("GET", &format!("/admin/v1/keys/{}", enc(&id)), None)
                .await?;
            if json {
                println!("{key}");
            } else {
                print_key(&key);
            }
        }
        KeysCommand::Update(a) => {
            let mut body = Map::new();
            let none_or = |v: String, none: &str| {
                if v == none {
                    Value::Null
                } else {
                    Value::String(v)
                }
            };
            put(&mut body, "name", a.name.map(Value::String));
            put(&mut body, "owner", a.owner.map(Value::String));
            put(&mut body, "team", a.team.map(|t| none_or(t, "none")));
            put(&mut body, "description", a.description.map(Value::String));
            put(
                &mut body,
                "models",
                a.models.map(|m| Value::Array(split(&m))),
            );
            put(
                &mut body,
                "capabilities",
                a.capabilities.map(|c| Value::Array(split(&c))),
            );
            put(
                &mut body,
                "cidrs",
                a.cidrs.map(|c| {
                    if c == "any" {
                        Value::Array(Vec::new())
                    } else {
                        Value::Array(split(&c))
                    }
                }),
            );
            for (name, v) in [("rpm", a.rpm), ("tpm", a.tpm)] {
                let v = match v.as_deref() {
                    None => None,
                    Some("none") => Some(Value::Null),
                    Some(n) => Some(Value::from(n.parse::<u32>().with_context(|| {
                        format!("--{name}: `{n}` is not a number or `none`")
                    })?)),
                };
                put(&mut body, name, v);
            }
            put(
                &mut body,
                "expires_in",
                a.expires_in.map(|e| none_or(e, "never")),
            );
            let out = api
                .send(
                    "PATCH",
                    &format!("/admin/v1/keys/{}", enc(&a.id)),
                    Some(Value::Object(body)),
                )
                .await?;
            if a.json {
                println!("{out}");
            } else {
                print_key(&out["key"]);
                let changed: Vec<&str> = out["changed"]
                    .as_array()
                    .map(|c| c.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                println!("changed: {}", changed.join(", "));
            }
        }
        KeysCommand::Rotate {
            id,
            grace,
            rotation_id,
            json,
        } => {
            let mut body = json!({"grace": format!("{}s", grace.as_secs())});
            if let Some(r) = rotation_id {
                body["rotation_id"] = Value::String(r);
            }
            let key = api
                .send(
                    "POST",
                    &format!("/admin/v1/keys/{}/rotate", enc(&id)),
                    Some(body),
                )
                .await?;
            if json {
                println!("{key}");
            } else {
                println!(
                    "rotated {id}; the old secret works for {}",
                    humantime::format_duration(grace)
                );
                println!("secret: {}", key["secret"].as_str().unwrap_or(""));
                println!("This secret is shown once. Store it in your secret manager now.");
            }
        }
        KeysCommand::Revoke { id, reason, json } => {
            let out = api
                .send(
                    "POST",
                    &format!("/admin/v1/keys/{}/revoke", enc(&id)),
                    Some(json!({"reason": reason})),
                )
                .await?;
            if json {
                println!("{out}");
            } else if out["already_revoked"] == Value::Bool(true) {
                println!("{id} was already revoked");
            } else {
                println!("revoked {id}");
            }
        }
    }
    Ok(())
}

fn put(obj: &mut Map<String, Value>, key: &str, v: Option<Value>) {
    if let Some(v) = v {
        obj.insert(key.to_owned(), v);
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

struct Api {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl Api {
    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let method: reqwest::Method = method.parse().context("method")?;
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.base))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .context("cannot read the admin API's answer")?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let message = value["error"]["message"].as_str().unwrap_or("no details");
            let code = value["error"]["code"].as_str().unwrap_or("");
            bail!("admin API: {} {message} ({code})", status.as_u16());
        }
        Ok(value)
    }
}
