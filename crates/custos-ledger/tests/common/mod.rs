//! Shared helpers for the ledger integration tests: temporary ledger
//! directories, a fixed clock and seeded keys, and record builders.
#![allow(
    clippy::unwrap_used,
    dead_code,
    reason = "test helpers fail loudly; not every test file uses every helper"
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use custos_ledger::{Durability, Ledger, LedgerOptions, RecoveryReport};
use custos_record::{Inference, RecordBody, System};
use custos_types::ManualClock;
use rand::SeedableRng;

pub const ORIGIN: &str = "custos.test/ledger";

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "custos-ledger-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn ledger(&self) -> PathBuf {
        self.0.join("ledger")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn start() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_735_689_600)
}

pub fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(start()))
}

/// Options with a seeded key and no timer-driven checkpoints, so that a
/// run is deterministic.
pub fn options(seed: u64) -> LedgerOptions {
    let mut o = LedgerOptions::new(ORIGIN);
    o.rng = Box::new(rand::rngs::StdRng::seed_from_u64(seed));
    o.checkpoint_every = Duration::from_secs(3600);
    o.checkpoint_every_records = 1000;
    o.durability = Durability::Sync;
    o
}

pub fn open(
    dir: &Path,
    options: LedgerOptions,
    clock: Arc<ManualClock>,
) -> (Ledger, RecoveryReport) {
    Ledger::open(dir, options, clock).unwrap()
}

pub fn request(i: u64) -> RecordBody {
    RecordBody::Inference(Inference {
        event: "request".into(),
        request_id: format!("req-{i}"),
        actor: None,
        client: None,
        endpoint: "chat.completions".into(),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        model_requested: Some("gpt-4o".into()),
        model_served: Some("gpt-4o".into()),
        provider: Some("mock".into()),
        attempts: Vec::new(),
        upstream_request_id: None,
        status: 200,
        error_code: None,
        usage: None,
        stream: false,
        latency_us: 1000 + i,
        ttfb_us: None,
    })
}

pub fn system(event: &str) -> RecordBody {
    RecordBody::System(System::new(event))
}

/// Appends `n` requests one after another, advancing the clock by 1 ms each.
pub async fn append_n(ledger: &Ledger, clock: &ManualClock, from: u64, n: u64) {
    for i in from..from + n {
        ledger.append(request(i)).unwrap().await.unwrap();
        clock.advance(Duration::from_millis(1));
    }
}

pub fn segment_files(ledger_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(ledger_dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

pub fn checkpoint_sizes(ledger_dir: &Path) -> Vec<u64> {
    custos_ledger::LedgerReader::open(ledger_dir)
        .checkpoint_sizes()
        .unwrap()
}
