//! Sample records for benchmarks and tests, behind the `sample` feature, so
//! that the codec, ledger and verifier benches measure the same record.

use crate::schema::{Inference, KeyActor, Record, RecordBody, Usage, UsageSource};
use crate::time::Timestamp;

/// A typical inference record body: an authenticated, successful chat
/// completion with usage; `i` makes its request ID unique.
#[must_use]
pub fn inference(i: u64) -> RecordBody {
    RecordBody::Inference(Inference {
        event: "request".into(),
        request_id: format!("01JGZ8X3R{i:016}"),
        actor: Some(KeyActor {
            key_id: Some("ck_7Q2x".into()),
            key_name: Some("ci-runner".into()),
            owner: Some("alice@example.com".into()),
            team: Some("platform".into()),
        }),
        client: None,
        endpoint: "chat.completions".into(),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        model_requested: Some("gpt-4o".into()),
        model_served: Some("gpt-4o-2024-08-06".into()),
        provider: Some("openai".into()),
        attempts: Vec::new(),
        upstream_request_id: Some("req_abc123".into()),
        status: 200,
        error_code: None,
        usage: Some(Usage {
            completion_tokens: 20,
            prompt_tokens: 100,
            source: UsageSource::Upstream,
            total_tokens: 120,
        }),
        stream: false,
        latency_us: 2_051_000,
        ttfb_us: Some(1_400_000),
    })
}

/// [`inference`]`(i)` as a whole record with sequence number `seq` and a
/// fixed timestamp in 2025.
#[must_use]
pub fn inference_record(i: u64, seq: u64) -> Record {
    Record {
        seq,
        // 2025-01-01T00:00:00.000042Z, inside the supported range.
        ts: Timestamp::from_unix_micros(1_735_689_600_000_042).unwrap_or(Timestamp::EPOCH),
        body: inference(i),
    }
}
