//! Fixtures for the verifier tests: real ledgers written by custos-ledger
//! (a dev-dependency only), copies to tamper with, and line editing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    dead_code,
    reason = "test helpers fail loudly; not every test file uses every helper"
)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use custos_ledger::{Ledger, LedgerOptions};
use custos_note::Verifier;
use custos_record::{
    Admin, AdminActor, Attempt, Change, Client, Inference, KeyActor, RecordBody, Scalar, System,
    Target, Usage, UsageSource, Via,
};
use custos_types::ManualClock;
use custos_verify::{Report, verify_dir};
use rand::SeedableRng;

pub const ORIGIN: &str = "custos.test/verify";

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "custos-verify-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

pub fn request(i: u64) -> RecordBody {
    RecordBody::Inference(Inference {
        event: "request".into(),
        request_id: format!("req-{i:04}"),
        actor: Some(KeyActor {
            key_id: Some("ck_test".into()),
            key_name: Some("ci".into()),
            owner: None,
            team: Some("platform".into()),
        }),
        client: Some(Client {
            ip: Some("192.0.2.7".parse().unwrap()),
            user_agent: Some("curl/8.5.0".into()),
        }),
        endpoint: "chat.completions".into(),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        model_requested: Some("gpt-4o".into()),
        model_served: Some("gpt-4o-2024-08-06".into()),
        provider: Some("openai".into()),
        attempts: if i.is_multiple_of(5) {
            vec![Attempt {
                duration_us: 30_000,
                error: Some("timeout".into()),
                model: "gpt-4o".into(),
                provider: "azure".into(),
                status: None,
            }]
        } else {
            Vec::new()
        },
        upstream_request_id: Some(format!("up-{i}")),
        status: if i.is_multiple_of(7) { 429 } else { 200 },
        error_code: i.is_multiple_of(7).then(|| "rate_limited".into()),
        usage: Some(Usage {
            completion_tokens: 10 + i,
            prompt_tokens: 100,
            source: UsageSource::Upstream,
            total_tokens: 110 + i,
        }),
        stream: i.is_multiple_of(2),
        latency_us: 1000 + i,
        ttfb_us: Some(500 + i),
    })
}

pub fn admin(i: u64) -> RecordBody {
    let mut changes = BTreeMap::new();
    changes.insert(
        "rpm_limit".into(),
        Change {
            before: Some(Scalar::Int(60)),
            after: Some(Scalar::Int(600)),
        },
    );
    RecordBody::Admin(Admin {
        event: "key.updated".into(),
        actor: AdminActor {
            ip: Some("198.51.100.4".parse().unwrap()),
            mfa: true,
            role: "admin".into(),
            user: "bob".into(),
            via: Via::Console,
        },
        action: "update".into(),
        target: Some(Target {
            id: format!("ck_{i}"),
            kind: "key".into(),
        }),
        changes,
        reason: Some("raise the limit".into()),
    })
}

pub fn options(seed: u64) -> LedgerOptions {
    let mut o = LedgerOptions::new(ORIGIN);
    o.rng = Box::new(rand::rngs::StdRng::seed_from_u64(seed));
    o.checkpoint_every_records = 1_000_000;
    o.checkpoint_every = Duration::from_secs(86_400);
    o.segment_max_bytes = 4096;
    o
}

pub fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        UNIX_EPOCH + Duration::from_secs(1_735_689_600),
    ))
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A ledger of `n` requests with a checkpoint every 10, several sealed
/// segments and a final checkpoint. Returns the verifier key.
pub fn build(dir: &Path, n: u64) -> Verifier {
    let clock = clock();
    rt().block_on(async {
        let (ledger, _) = Ledger::open(dir, options(7), clock.clone()).unwrap();
        for i in 0..n {
            ledger.append(request(i)).unwrap().await.unwrap();
            clock.advance(Duration::from_millis(10));
            if (i + 1).is_multiple_of(10) {
                ledger.checkpoint().await.unwrap();
            }
        }
        ledger.shutdown().await.unwrap();
    });
    vkey(dir)
}

/// The first key in the ledger's history.
pub fn vkey(dir: &Path) -> Verifier {
    let text = fs::read_to_string(dir.join("keys/verifiers.txt")).unwrap();
    let first = text.lines().next().unwrap();
    Verifier::from_vkey(first.split_once(' ').unwrap().1).unwrap()
}

/// The deterministic golden ledger: every record type, explicit
/// checkpoints, age-sealed segments, a key rotation and a retention purge.
pub fn build_golden(dir: &Path) {
    let clock = clock();
    rt().block_on(async {
        let mut o = options(42);
        o.segment_max_age = Duration::from_secs(3600);
        let (ledger, _) = Ledger::open(dir, o, clock.clone()).unwrap();
        let append = |body| ledger.append(body).unwrap();
        append(RecordBody::System(
            System::new("server.started").with("version", "0.1.0"),
        ))
        .await
        .unwrap();
        for hour in 0..3u64 {
            for i in 0..6 {
                let n = hour * 6 + i;
                let body = if i == 3 { admin(n) } else { request(n) };
                append(body).await.unwrap();
                clock.advance(Duration::from_secs(60));
            }
            ledger.checkpoint().await.unwrap();
            clock.advance(Duration::from_secs(3600));
        }
        ledger.rotate_signing_key().await.unwrap();
        append(request(100)).await.unwrap();
        let cutoff = UNIX_EPOCH + Duration::from_secs(1_735_689_600 + 3600);
        ledger.purge_before(cutoff).await.unwrap();
        append(RecordBody::System(System::new("server.stopped")))
            .await
            .unwrap();
        ledger.shutdown().await.unwrap();
    });
    let _ = fs::remove_file(dir.join("LOCK"));
    let _ = fs::remove_file(dir.join("keys/signing.key"));
}

pub fn verify(dir: &Path, keys: &[Verifier], trusted: Option<&str>) -> Report {
    verify_dir(dir, keys, trusted, &mut |_, _| {})
}

pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

pub fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

pub fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    if !lines.is_empty() {
        text.push('\n');
    }
    fs::write(path, text).unwrap();
}

/// Relative path of a file in the ledger, as problems name them.
pub fn rel(dir: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(dir).unwrap().to_path_buf()
}

/// Makes every checkpoint old (note mtimes three days back, ten minutes
/// apart) and thins the ledger as the writer would; returns how many
/// checkpoints were removed.
pub fn age_and_thin(dir: &Path) -> usize {
    let sizes = custos_ledger::LedgerReader::open(dir)
        .checkpoint_sizes()
        .unwrap();
    let base = std::time::SystemTime::now() - Duration::from_secs(72 * 3600);
    for (i, size) in sizes.iter().enumerate() {
        let at = base + Duration::from_secs(600 * u64::try_from(i).unwrap());
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(format!("checkpoints/{size:020}.note")))
            .unwrap()
            .set_modified(at)
            .unwrap();
    }
    custos_ledger::thin_checkpoints(
        dir,
        custos_ledger::CheckpointThinning::default(),
        std::time::SystemTime::now(),
    )
    .unwrap()
    .removed
}
