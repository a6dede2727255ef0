//! Golden encodings of each record type, and the inputs `decode` must
//! reject. Bless new goldens with `UPDATE_EXPECT=1` only together with a
//! schema version bump.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers fail loudly on broken fixtures"
)]

use std::collections::BTreeMap;

use custos_record::{
    Admin, AdminActor, Attempt, Change, Client, Inference, KeyActor, PreEncoded, Record,
    RecordBody, RecordError, Scalar, System, Target, Timestamp, Usage, UsageSource, Via, decode,
    encode,
};
use expect_test::{Expect, expect};

fn ts() -> Timestamp {
    Timestamp::from_unix_micros(1_735_689_600_000_042).unwrap()
}

fn inference() -> Record {
    Record {
        seq: 41,
        ts: ts(),
        body: RecordBody::Inference(Inference {
            event: "request".into(),
            request_id: "01JGZ8X3R0000000000000000".into(),
            actor: Some(KeyActor {
                key_id: Some("ck_7Q2x".into()),
                key_name: Some("ci-runner".into()),
                owner: Some("alice@example.com".into()),
                team: Some("platform".into()),
            }),
            client: Some(Client {
                ip: Some("2001:db8::1".parse().unwrap()),
                user_agent: Some("openai-python/1.55.0 \"quoted\" é\\".into()),
            }),
            endpoint: "chat.completions".into(),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            model_requested: Some("gpt-4o".into()),
            model_served: Some("gpt-4o-2024-08-06".into()),
            provider: Some("openai".into()),
            attempts: vec![
                Attempt {
                    duration_us: 1_200_000,
                    error: Some("timeout".into()),
                    model: "gpt-4o".into(),
                    provider: "azure".into(),
                    status: None,
                },
                Attempt {
                    duration_us: 850_123,
                    error: None,
                    model: "gpt-4o-2024-08-06".into(),
                    provider: "openai".into(),
                    status: Some(200),
                },
            ],
            upstream_request_id: Some("req_abc123".into()),
            status: 200,
            error_code: None,
            usage: Some(Usage {
                completion_tokens: 20,
                prompt_tokens: 100,
                source: UsageSource::Upstream,
                total_tokens: 120,
            }),
            stream: true,
            latency_us: 2_051_000,
            ttfb_us: Some(1_400_000),
        }),
    }
}

fn unauthenticated() -> Record {
    Record {
        seq: 0,
        ts: Timestamp::EPOCH,
        body: RecordBody::Inference(Inference {
            event: "request".into(),
            request_id: "r1".into(),
            actor: None,
            client: None,
            endpoint: "models".into(),
            method: "GET".into(),
            path: "/v1/models".into(),
            model_requested: None,
            model_served: None,
            provider: None,
            attempts: Vec::new(),
            upstream_request_id: None,
            status: 401,
            error_code: Some("invalid_api_key".into()),
            usage: None,
            stream: false,
            latency_us: 0,
            ttfb_us: None,
        }),
    }
}

fn admin() -> Record {
    let mut changes = BTreeMap::new();
    changes.insert(
        "scopes".into(),
        Change {
            before: Some(Scalar::from("chat")),
            after: Some(Scalar::from("chat,stream")),
        },
    );
    changes.insert(
        "rpm_limit".into(),
        Change {
            before: None,
            after: Some(Scalar::Int(600)),
        },
    );
    Record {
        seq: 7,
        ts: ts(),
        body: RecordBody::Admin(Admin {
            event: "key.updated".into(),
            actor: AdminActor {
                ip: Some("10.0.0.5".parse().unwrap()),
                mfa: true,
                role: "admin".into(),
                user: "bob".into(),
                via: Via::Console,
            },
            action: "update".into(),
            target: Some(Target {
                id: "ck_7Q2x".into(),
                kind: "key".into(),
            }),
            changes,
            reason: Some("ticket OPS-12: raise limit\tfor CI".replace('\t', " ")),
        }),
    }
}

fn system() -> Record {
    Record {
        seq: 1_000_000,
        ts: ts(),
        body: RecordBody::System(
            System::new("ledger.recovered")
                .with("truncated_bytes", 17u32)
                .with("file", "segments/00000000000000000000.jsonl")
                .with("clean", false)
                .with("offset", -1i64),
        ),
    }
}

fn check(record: &Record, want: Expect) {
    let bytes = encode(record);
    // The writer's fast path splices seq and ts into a pre-encoded body.
    let pre = PreEncoded::new(record.body.clone()).unwrap();
    for seq in [record.seq, 0, 9, 10, 1_000_000, u64::MAX] {
        let mut spliced = Vec::new();
        pre.finish(seq, record.ts, &mut spliced);
        let want_bytes = encode(&Record {
            seq,
            ..record.clone()
        });
        assert_eq!(
            String::from_utf8(spliced).unwrap(),
            String::from_utf8(want_bytes).unwrap()
        );
    }
    let text = std::str::from_utf8(&bytes).unwrap();
    want.assert_eq(text);
    assert_eq!(decode(&bytes).unwrap(), *record);
    // An independent canonicaliser: serde_json's Value keeps objects in a
    // BTreeMap (bytewise key order) and writes them compactly.
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(serde_json::to_string(&value).unwrap(), text);
    assert!(!text.contains("null") && !text.contains('\n'));
}

#[test]
fn value_map_is_sorted_so_the_independent_check_means_something() {
    let v: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":2,"aa":3,"B":4}"#).unwrap();
    assert_eq!(v.to_string(), r#"{"B":4,"a":2,"aa":3,"b":1}"#);
}

#[test]
fn golden_inference() {
    check(
        &inference(),
        expect![[
            r#"{"actor":{"key_id":"ck_7Q2x","key_name":"ci-runner","owner":"alice@example.com","team":"platform"},"attempts":[{"duration_us":1200000,"error":"timeout","model":"gpt-4o","provider":"azure"},{"duration_us":850123,"model":"gpt-4o-2024-08-06","provider":"openai","status":200}],"client":{"ip":"2001:db8::1","user_agent":"openai-python/1.55.0 \"quoted\" é\\"},"endpoint":"chat.completions","event":"request","latency_us":2051000,"method":"POST","model_requested":"gpt-4o","model_served":"gpt-4o-2024-08-06","path":"/v1/chat/completions","provider":"openai","request_id":"01JGZ8X3R0000000000000000","seq":41,"status":200,"stream":true,"ts":"2025-01-01T00:00:00.000042Z","ttfb_us":1400000,"type":"inference","upstream_request_id":"req_abc123","usage":{"completion_tokens":20,"prompt_tokens":100,"source":"upstream","total_tokens":120},"v":1}"#
        ]],
    );
}

#[test]
fn golden_unauthenticated_inference() {
    check(
        &unauthenticated(),
        expect![[
            r#"{"endpoint":"models","error_code":"invalid_api_key","event":"request","latency_us":0,"method":"GET","path":"/v1/models","request_id":"r1","seq":0,"status":401,"stream":false,"ts":"1970-01-01T00:00:00.000000Z","type":"inference","v":1}"#
        ]],
    );
}

#[test]
fn golden_admin() {
    check(
        &admin(),
        expect![[
            r#"{"action":"update","actor":{"ip":"10.0.0.5","mfa":true,"role":"admin","user":"bob","via":"console"},"changes":{"rpm_limit":{"after":600},"scopes":{"after":"chat,stream","before":"chat"}},"event":"key.updated","reason":"ticket OPS-12: raise limit for CI","seq":7,"target":{"id":"ck_7Q2x","kind":"key"},"ts":"2025-01-01T00:00:00.000042Z","type":"admin","v":1}"#
        ]],
    );
}

#[test]
fn golden_system() {
    check(
        &system(),
        expect![[
            r#"{"details":{"clean":false,"file":"segments/00000000000000000000.jsonl","offset":-1,"truncated_bytes":17},"event":"ledger.recovered","seq":1000000,"ts":"2025-01-01T00:00:00.000042Z","type":"system","v":1}"#
        ]],
    );
    check(
        &Record {
            seq: 1,
            ts: ts(),
            body: RecordBody::System(System::new("server.started")),
        },
        expect![[
            r#"{"event":"server.started","seq":1,"ts":"2025-01-01T00:00:00.000042Z","type":"system","v":1}"#
        ]],
    );
}

fn reject(text: &str) -> RecordError {
    match decode(text.as_bytes()) {
        Ok(r) => panic!("accepted {text}: {r:?}"),
        Err(e) => e,
    }
}

const SYS: &str = r#"{"event":"server.started","seq":1,"ts":"2025-01-01T00:00:00.000042Z","type":"system","v":1}"#;

#[test]
fn non_canonical_inputs_are_rejected() {
    assert!(decode(SYS.as_bytes()).is_ok());
    let cases = [
        // whitespace
        SYS.replace(",\"seq\"", ", \"seq\""),
        format!("{SYS}\n"),
        format!(" {SYS}"),
        // key order
        r#"{"seq":1,"event":"server.started","ts":"2025-01-01T00:00:00.000042Z","type":"system","v":1}"#.to_owned(),
        // explicit null and empty map instead of omission
        SYS.replace("{\"event\"", "{\"details\":null,\"event\""),
        SYS.replace("{\"event\"", "{\"details\":{},\"event\""),
        // unneeded escape
        SYS.replace("server.started", "server\\u002estarted"),
        SYS.replace("\"seq\"", "\"s\\u0065q\""),
    ];
    for case in &cases {
        let err = reject(case);
        assert!(
            matches!(
                err,
                RecordError::NonCanonical { .. } | RecordError::Malformed { .. }
            ),
            "{case}: {err}"
        );
    }
}

#[test]
fn wrong_shapes_are_rejected_with_a_reason() {
    let cases: [(String, Expect); 11] = [
        (
            SYS.replace("\"v\":1", "\"v\":2"),
            expect!["unsupported schema version 2, want 1"],
        ),
        (
            SYS.replace("\"v\":1", "\"v\":2,\"w\":0"),
            expect!["unsupported schema version 2, want 1"],
        ),
        (
            SYS.replace("\"seq\":1", "\"seq\":1.0"),
            expect![
                "record is not valid: invalid type: floating point `1.0`, expected u64 at line 1 column 35"
            ],
        ),
        (
            SYS.replace("{\"event\"", "{\"prompt\":\"hi\",\"event\""),
            expect![
                "record is not valid: unknown field `prompt`, expected one of `action`, `actor`, `attempts`, `changes`, `client`, `details`, `endpoint`, `error_code`, `event`, `latency_us`, `method`, `model_requested`, `model_served`, `path`, `provider`, `reason`, `request_id`, `seq`, `status`, `stream`, `target`, `ts`, `ttfb_us`, `type`, `upstream_request_id`, `usage`, `v` at line 1 column 9"
            ],
        ),
        (
            SYS.replace("\"seq\":1", "\"seq\":1,\"seq\":2"),
            expect!["record is not valid: duplicate field `seq` at line 1 column 39"],
        ),
        (
            SYS.replace("\"system\"", "\"other\""),
            expect![
                "record is not valid: unknown variant `other`, expected one of `inference`, `admin`, `system` at line 1 column 83"
            ],
        ),
        (
            SYS.replace("\"system\"", "\"admin\""),
            expect!["field `actor` is required in admin records"],
        ),
        (
            SYS.replace("{\"event\"", "{\"endpoint\":\"x\",\"event\""),
            expect!["field `endpoint` is not allowed in system records"],
        ),
        (
            SYS.replace("server.started", "Server Started"),
            expect!["field `event` is invalid: must match [a-z0-9_.]{1,64}"],
        ),
        (
            SYS.replace(".000042Z", "Z"),
            expect![
                "record is not valid: field `ts` is not a canonical utc timestamp with microseconds at line 1 column 61"
            ],
        ),
        (
            SYS.replace("{\"event\"", "{\"details\":{\"a\":[1]},\"event\""),
            expect![
                "record is not valid: invalid type: sequence, expected a string, an integer or a boolean at line 1 column 17"
            ],
        ),
    ];
    for (input, want) in cases {
        want.assert_eq(&reject(&input).to_string());
    }
}

#[test]
fn inference_rules_are_enforced_on_decode() {
    let good = String::from_utf8(encode(&unauthenticated())).unwrap();
    for (from, to) in [
        ("/v1/models", "/v1/models?key=sk-123"),
        ("\"GET\"", "\"get\""),
        ("\"status\":401", "\"status\":42"),
        ("\"r1\"", "\"r 1\""),
        ("{\"endpoint\"", "{\"actor\":{\"user\":\"x\"},\"endpoint\""),
    ] {
        let bad = good.replace(from, to);
        assert_ne!(bad, good);
        reject(&bad);
    }
    let huge = format!("{{\"x\":\"{}\"}}", "a".repeat(70_000));
    assert!(matches!(reject(&huge), RecordError::TooLarge { .. }));
}
