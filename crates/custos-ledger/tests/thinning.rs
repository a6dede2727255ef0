//! Thinning old checkpoints: what is removed, what is always kept, and
//! that the ledger reopens and keeps working afterwards.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

mod common;

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use custos_ledger::{CheckpointThinning, LedgerError, LedgerReader, thin_checkpoints};

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// Builds a ledger with a checkpoint after every record, small segments
/// and one key rotation; returns (segment first seqs, rotation's first
/// size).
async fn build(dir: &Path, records: u64) -> (Vec<u64>, u64) {
    let clock = clock();
    let mut o = options(7);
    o.segment_max_bytes = 2048;
    o.checkpoint_thinning = None;
    let (ledger, _) = open(dir, o, clock.clone());
    let mut first_size = 0;
    for i in 0..records {
        append_n(&ledger, &clock, i, 1).await;
        ledger.checkpoint().await.unwrap();
        if i == records / 2 {
            first_size = ledger.rotate_signing_key().await.unwrap().first_size;
        }
    }
    ledger.shutdown().await.unwrap();
    (LedgerReader::open(dir).segments().unwrap(), first_size)
}

/// Sets the note of every checkpoint but the newest `recent` to a time
/// 10 minutes apart, the first three days ago; returns those times.
fn age_notes(dir: &Path, recent: usize) -> Vec<(u64, SystemTime)> {
    let sizes = checkpoint_sizes(dir);
    let base = SystemTime::now() - 72 * HOUR;
    let mut out = Vec::new();
    for (i, &size) in sizes.iter().enumerate().take(sizes.len() - recent) {
        let at = base + 10 * MINUTE * u32::try_from(i).unwrap();
        let path = dir.join(format!("checkpoints/{size:020}.note"));
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(at)
            .unwrap();
        out.push((size, at));
    }
    out
}

fn hour_of(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() / 3600
}

#[tokio::test]
async fn old_checkpoints_are_thinned_to_one_per_hour_keeping_what_the_log_needs() {
    let tmp = TempDir::new("thin");
    let dir = tmp.ledger();
    let (segments, rotation) = build(&dir, 60).await;
    assert!(segments.len() >= 4, "{segments:?}");
    let before = checkpoint_sizes(&dir);
    let aged = age_notes(&dir, 5);

    let report = thin_checkpoints(&dir, CheckpointThinning::default(), SystemTime::now()).unwrap();
    let after: BTreeSet<u64> = checkpoint_sizes(&dir).into_iter().collect();
    assert_eq!(report.checkpoints, before.len());
    assert_eq!(report.removed, before.len() - after.len());
    assert!(report.removed > 20, "{report:?}");

    // Never removed: the newest, the five recent ones, every segment
    // boundary with its snapshot, both sides of the rotation.
    for &size in before.iter().rev().take(5) {
        assert!(after.contains(&size), "recent checkpoint {size} removed");
    }
    for &seg in segments.iter().filter(|&&s| s > 0) {
        assert!(after.contains(&seg), "boundary {seg} removed");
        assert!(dir.join(format!("checkpoints/{seg:020}.frontier")).exists());
    }
    assert!(after.contains(&rotation) && after.contains(&(rotation - 1)));

    // Of the rest, one per hour: the largest of its hour, unless that one
    // is protected and stands for the hour.
    let protected: BTreeSet<u64> = segments
        .iter()
        .copied()
        .chain([rotation, rotation - 1])
        .collect();
    let mut hours = BTreeSet::new();
    for &(size, at) in &aged {
        if protected.contains(&size) {
            continue;
        }
        let newest_of_hour = aged
            .iter()
            .filter(|&&(_, t)| hour_of(t) == hour_of(at))
            .map(|&(s, _)| s)
            .max();
        assert_eq!(
            after.contains(&size),
            newest_of_hour == Some(size),
            "checkpoint {size}"
        );
        if after.contains(&size) {
            assert!(hours.insert(hour_of(at)), "two kept in one hour");
        }
        // A removed checkpoint leaves no snapshot behind.
        if !after.contains(&size) {
            assert!(
                !dir.join(format!("checkpoints/{size:020}.frontier"))
                    .exists()
            );
        }
    }

    // A second pass finds nothing more to remove.
    let again = thin_checkpoints(&dir, CheckpointThinning::default(), SystemTime::now()).unwrap();
    assert_eq!(again.removed, 0);

    // The thinned ledger reopens (recovery checks the newest checkpoint
    // against the records) and keeps appending.
    let clock = clock();
    let (ledger, report) = open(&dir, options(7), clock.clone());
    assert_eq!(report.checkpoint_size, *before.last().unwrap());
    append_n(&ledger, &clock, 1000, 3).await;
    let size = ledger.checkpoint().await.unwrap();
    assert_eq!(size, *before.last().unwrap() + 3);
    ledger.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_checkpoint_thread_thins_after_its_first_periodic_checkpoint() {
    let tmp = TempDir::new("thin-auto");
    let dir = tmp.ledger();
    build(&dir, 40).await;
    let before = checkpoint_sizes(&dir).len();
    age_notes(&dir, 0);

    let clock = clock();
    let mut o = options(7);
    o.checkpoint_every_records = 1;
    o.checkpoint_thinning = Some(CheckpointThinning::default());
    let (ledger, _) = open(&dir, o, clock.clone());
    // The count makes this a periodic checkpoint, which the checkpoint
    // thread signs and follows with its first thinning pass.
    append_n(&ledger, &clock, 500, 1).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while ledger.stats().snapshot().checkpoints_thinned == 0 {
        assert!(Instant::now() < deadline, "no thinning pass");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = ledger.stats().snapshot();
    assert_eq!(stats.thin_failures, 0);
    ledger.shutdown().await.unwrap();
    let after = checkpoint_sizes(&dir).len();
    // One new checkpoint (the periodic one; shutdown's is at the same
    // size), and what the pass removed.
    let thinned = usize::try_from(stats.checkpoints_thinned).unwrap();
    assert_eq!(
        after + thinned,
        before + 1,
        "{after} + {thinned} vs {before}"
    );
}

#[tokio::test]
async fn thinning_disabled_keeps_every_checkpoint() {
    let tmp = TempDir::new("thin-off");
    let dir = tmp.ledger();
    build(&dir, 20).await;
    age_notes(&dir, 0);
    let before = checkpoint_sizes(&dir);
    let clock = clock();
    let mut o = options(7);
    o.checkpoint_every_records = 1;
    o.checkpoint_thinning = None;
    let (ledger, _) = open(&dir, o, clock.clone());
    append_n(&ledger, &clock, 500, 3).await;
    ledger.shutdown().await.unwrap();
    let after = checkpoint_sizes(&dir);
    assert!(before.iter().all(|s| after.contains(s)));
    assert_eq!(
        fs::read_dir(dir.join("checkpoints")).unwrap().count(),
        after.len() * 2
    );
}

#[test]
fn thinning_options_are_validated() {
    let tmp = TempDir::new("thin-opts");
    for (keep_all_for, keep_one_per, field) in [
        (
            Duration::from_secs(10),
            HOUR,
            "checkpoint_thinning.keep_all_for",
        ),
        (HOUR, Duration::ZERO, "checkpoint_thinning.keep_one_per"),
    ] {
        let mut o = options(7);
        o.checkpoint_thinning = Some(CheckpointThinning {
            keep_all_for,
            keep_one_per,
        });
        match custos_ledger::Ledger::open(&tmp.ledger(), o, clock()) {
            Err(LedgerError::InvalidOptions { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected InvalidOptions for {field}, got {other:?}"),
        }
    }
}
