//! A real ledger written by custos-ledger, tampered with in every way the
//! threat model lists; each must be reported as the right problem, at the
//! right file and seq.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

mod common;

use std::fs;
use std::path::Path;

use common::*;
use custos_ledger::{Ledger, LedgerReader};
use custos_note::{Checkpoint, Signer, Verifier};
use custos_verify::{KeySource, ProblemKind, verify_consistency, verify_receipt};
use rand::SeedableRng;

const N: u64 = 60;

fn fixture(tag: &str) -> (TempDir, std::path::PathBuf, Verifier) {
    let tmp = TempDir::new(tag);
    let dir = tmp.0.join("ledger");
    let key = build(&dir, N);
    (tmp, dir, key)
}

fn problem(dir: &Path, key: &Verifier) -> custos_verify::Problem {
    let report = verify(dir, std::slice::from_ref(key), None);
    match report.problem.clone() {
        Some(p) => p,
        None => panic!("tampering not detected: {report:?}"),
    }
}

/// The segment holding `seq`, and the line index within it.
fn locate(dir: &Path, seq: u64) -> (std::path::PathBuf, usize) {
    let mut first = 0u64;
    for seg in segments(dir) {
        let n = lines(&seg).len() as u64;
        if seq < first + n {
            return (seg, usize::try_from(seq - first).unwrap());
        }
        first += n;
    }
    panic!("seq {seq} not found");
}

fn newest_note(dir: &Path) -> (u64, String) {
    LedgerReader::open(dir)
        .latest_checkpoint()
        .unwrap()
        .unwrap()
}

#[test]
fn an_untouched_ledger_is_intact() {
    let (_tmp, dir, key) = fixture("intact");
    let mut calls = Vec::new();
    let report = custos_verify::verify_dir(&dir, &[key], None, &mut |done, total| {
        calls.push((done, total))
    });
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(
        (report.tree_size, report.records_checked, report.first_seq),
        (N, N, 0)
    );
    assert_eq!(report.newest_checkpoint, Some(N));
    assert!(report.checkpoints_checked >= 6);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!(report.key_source, KeySource::Given);
    assert!(
        segments(&dir).len() >= 4,
        "fixture should have several segments"
    );
    let (done, total) = *calls.last().unwrap();
    assert_eq!(done, total);
    assert_eq!(report.exit_code(), 0);

    let tofu = verify(&dir, &[], None);
    assert!(tofu.is_intact());
    assert_eq!(tofu.key_source, KeySource::LedgerDirectory);
}

#[test]
fn a_modified_field_breaks_the_checkpoint_root() {
    let (_tmp, dir, key) = fixture("modified");
    let (seg, idx) = locate(&dir, 3);
    let mut l = lines(&seg);
    l[idx] = l[idx].replace("\"latency_us\":1003", "\"latency_us\":1004");
    write_lines(&seg, &l);
    let p = problem(&dir, &key);
    let ProblemKind::RootMismatch { size, since } = p.kind else {
        panic!("{p}")
    };
    assert_eq!(since, 0);
    assert!(size > 3 && size <= 10, "{p}");
    assert_eq!(
        p.file.clone().unwrap(),
        Path::new(&format!("checkpoints/{size:020}.note"))
    );
    assert!(p.to_string().contains("a record in 0.."), "{p}");
}

#[test]
fn a_non_canonical_edit_is_pinned_to_its_record() {
    let (_tmp, dir, key) = fixture("noncanonical");
    let (seg, idx) = locate(&dir, 3);
    let mut l = lines(&seg);
    l[idx] = l[idx].replace("\"latency_us\":1003", "\"latency_us\": 1003");
    write_lines(&seg, &l);
    let p = problem(&dir, &key);
    assert_eq!(
        (p.file.clone().unwrap(), p.seq),
        (rel(&dir, &seg), Some(3)),
        "{p}"
    );
    assert!(matches!(p.kind, ProblemKind::Record { .. }), "{p}");
}

#[test]
fn a_deleted_record_is_found() {
    let (_tmp, dir, key) = fixture("deleted");
    let (seg, idx) = locate(&dir, 2);
    let mut l = lines(&seg);
    l.remove(idx);
    write_lines(&seg, &l);
    let p = problem(&dir, &key);
    assert_eq!(
        p.kind,
        ProblemKind::SeqMismatch {
            expected: 2,
            found: 3
        }
    );
    assert_eq!((p.file.unwrap(), p.seq), (rel(&dir, &seg), Some(2)));
}

#[test]
fn an_inserted_record_is_found() {
    let (_tmp, dir, key) = fixture("inserted");
    let (seg, idx) = locate(&dir, 2);
    let mut l = lines(&seg);
    let copy = l[idx].clone();
    l.insert(idx + 1, copy);
    write_lines(&seg, &l);
    let p = problem(&dir, &key);
    assert_eq!(
        p.kind,
        ProblemKind::SeqMismatch {
            expected: 3,
            found: 2
        }
    );
    assert_eq!(p.seq, Some(3));
}

#[test]
fn swapped_records_are_found() {
    let (_tmp, dir, key) = fixture("swapped");
    let (seg, idx) = locate(&dir, 1);
    let mut l = lines(&seg);
    l.swap(idx, idx + 1);
    write_lines(&seg, &l);
    let p = problem(&dir, &key);
    assert_eq!(
        p.kind,
        ProblemKind::SeqMismatch {
            expected: 1,
            found: 2
        }
    );
}

#[test]
fn a_truncated_tail_is_caught_by_the_newest_checkpoint() {
    let (_tmp, dir, key) = fixture("truncated");
    let seg = segments(&dir).pop().unwrap();
    let mut l = lines(&seg);
    l.truncate(l.len() - 2);
    write_lines(&seg, &l);
    let p = problem(&dir, &key);
    assert_eq!(
        p.kind,
        ProblemKind::TruncatedTail {
            size: N,
            log_size: N - 2
        }
    );
    assert_eq!(
        p.file.unwrap(),
        Path::new(&format!("checkpoints/{N:020}.note"))
    );
}

#[test]
fn truncating_records_and_checkpoints_together_needs_a_trusted_checkpoint() {
    let (_tmp, dir, key) = fixture("truncated-all");
    let (_, kept_note) = newest_note(&dir);
    let last = segments(&dir).pop().unwrap();
    let cut: u64 = last.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    fs::remove_file(&last).unwrap();
    for size in LedgerReader::open(&dir).checkpoint_sizes().unwrap() {
        if size > cut {
            for ext in ["note", "frontier"] {
                let _ = fs::remove_file(dir.join(format!("checkpoints/{size:020}.{ext}")));
            }
        }
    }
    // Without the auditor's own copy this is indistinguishable from a
    // shorter log...
    assert!(verify(&dir, std::slice::from_ref(&key), None).is_intact());
    // ...with it, it is not.
    let report = verify(&dir, &[key], Some(&kept_note));
    let p = report.problem.unwrap();
    assert_eq!(
        p.kind,
        ProblemKind::RolledBack {
            trusted_size: N,
            log_size: cut
        }
    );
}

#[test]
fn a_rolled_back_log_is_caught_by_a_trusted_checkpoint() {
    let tmp = TempDir::new("rollback");
    let dir = tmp.0.join("ledger");
    let key = build(&dir, 30);
    let old = tmp.0.join("old");
    copy_dir(&dir, &old);
    let clock = clock();
    rt().block_on(async {
        let (ledger, _) = Ledger::open(&dir, options(7), clock.clone()).unwrap();
        for i in 30..45 {
            ledger.append(request(i)).unwrap().await.unwrap();
        }
        ledger.shutdown().await.unwrap();
    });
    let (size, kept) = newest_note(&dir);
    assert_eq!(size, 45);
    assert!(verify(&dir, std::slice::from_ref(&key), Some(&kept)).is_intact());
    let report = verify(&old, &[key], Some(&kept));
    assert_eq!(
        report.problem.unwrap().kind,
        ProblemKind::RolledBack {
            trusted_size: 45,
            log_size: 30
        }
    );
}

#[test]
fn a_deleted_segment_is_found() {
    let (_tmp, dir, key) = fixture("segment");
    let segs = segments(&dir);
    let from: u64 = segs[2]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let to: u64 = segs[3]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    fs::remove_file(&segs[2]).unwrap();
    let p = problem(&dir, &key);
    assert_eq!(p.kind, ProblemKind::DeletedRecords { from, to });
    assert_eq!(p.file.unwrap(), rel(&dir, &segs[3]));

    // The oldest segment, without a retention record allowing it.
    let (_tmp2, dir, key) = fixture("first-segment");
    let segs = segments(&dir);
    let to: u64 = segs[1]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    fs::remove_file(&segs[0]).unwrap();
    let p = problem(&dir, &key);
    assert_eq!(p.kind, ProblemKind::DeletedRecords { from: 0, to });
}

#[test]
fn forged_and_stripped_signatures_are_found() {
    let (_tmp, dir, key) = fixture("forged");
    let (size, note) = newest_note(&dir);
    let path = dir.join(format!("checkpoints/{size:020}.note"));
    let sig_at = note.rfind(' ').unwrap() + 10;
    let mut forged = note.clone().into_bytes();
    forged[sig_at] = if forged[sig_at] == b'A' { b'B' } else { b'A' };
    fs::write(&path, &forged).unwrap();
    let p = problem(&dir, &key);
    assert!(
        matches!(p.kind, ProblemKind::Signature { size: s, .. } if s == size),
        "{p}"
    );

    let body_only = &note[..note.find("\n\n").unwrap() + 2];
    fs::write(&path, body_only).unwrap();
    let p = problem(&dir, &key);
    assert!(matches!(p.kind, ProblemKind::Signature { .. }), "{p}");

    // A changed body under the old signature.
    fs::write(
        &path,
        note.replacen(&format!("\n{size}\n"), &format!("\n{}\n", size + 1), 1),
    )
    .unwrap();
    let p = problem(&dir, &key);
    assert!(matches!(p.kind, ProblemKind::Signature { .. }), "{p}");
}

#[test]
fn a_checkpoint_signed_by_another_key_is_refused() {
    let (_tmp, dir, key) = fixture("otherkey");
    let mallory = Signer::generate(ORIGIN, &mut rand::rngs::StdRng::seed_from_u64(9)).unwrap();
    // Mallory rewrites a record, re-signs every checkpoint and replaces the
    // key history: everything is consistent except the key.
    let (seg, idx) = locate(&dir, 3);
    let mut l = lines(&seg);
    l[idx] = l[idx].replace("\"latency_us\":1003", "\"latency_us\":1004");
    write_lines(&seg, &l);
    let reader = LedgerReader::open(&dir);
    let leaves: Vec<_> = reader
        .records()
        .unwrap()
        .map(|r| custos_merkle::leaf_hash(&r.unwrap().bytes))
        .collect();
    for size in reader.checkpoint_sizes().unwrap() {
        let n = usize::try_from(size).unwrap();
        let cp = Checkpoint::new(ORIGIN, size, custos_merkle::root(&leaves[..n]), vec![]).unwrap();
        fs::write(
            dir.join(format!("checkpoints/{size:020}.note")),
            mallory.sign(&cp.to_body()).unwrap(),
        )
        .unwrap();
        let mut f = custos_merkle::Frontier::new();
        for leaf in &leaves[..n] {
            f.append(*leaf).unwrap();
        }
        let mut text = format!("{size}\n");
        for h in f.hashes() {
            text.push_str(&h.iter().map(|b| format!("{b:02x}")).collect::<String>());
            text.push('\n');
        }
        fs::write(dir.join(format!("checkpoints/{size:020}.frontier")), text).unwrap();
    }
    fs::write(
        dir.join("keys/verifiers.txt"),
        format!("0 {}\n", mallory.verifier().to_vkey()),
    )
    .unwrap();

    // Trusting the directory, the forgery passes: that is why the auditor
    // brings the key.
    assert!(verify(&dir, &[], None).is_intact());
    let p = problem(&dir, &key);
    assert!(
        matches!(&p.kind, ProblemKind::UntrustedKey { key, .. } if key.starts_with(ORIGIN)),
        "{p}"
    );

    // Keeping the real history but swapping signatures fails the signature.
    let (_tmp2, dir2, key2) = fixture("otherkey-sig");
    let (size, note) = newest_note(&dir2);
    let body = &note[..=note.find("\n\n").unwrap()];
    fs::write(
        dir2.join(format!("checkpoints/{size:020}.note")),
        mallory.sign(body).unwrap(),
    )
    .unwrap();
    let p = problem(&dir2, &key2);
    assert!(matches!(p.kind, ProblemKind::Signature { .. }), "{p}");
}

#[test]
fn a_tampered_frontier_snapshot_is_found() {
    let (_tmp, dir, key) = fixture("frontier");
    let path = dir.join("checkpoints/00000000000000000010.frontier");
    let text = fs::read_to_string(&path).unwrap();
    let flipped = text.replacen(&text[3..4], if &text[3..4] == "0" { "1" } else { "0" }, 1);
    assert_ne!(text, flipped);
    fs::write(&path, flipped).unwrap();
    let p = problem(&dir, &key);
    assert_eq!(p.kind, ProblemKind::FrontierMismatch { size: 10 });
}

#[test]
fn a_timestamp_moved_back_is_found() {
    let (_tmp, dir, key) = fixture("ts");
    let (seg, idx) = locate(&dir, 4);
    let mut l = lines(&seg);
    let at = l[idx].find("\"ts\":\"").unwrap() + 6;
    l[idx].replace_range(at..at + 27, "2024-12-31T23:00:00.000000Z");
    write_lines(&seg, &l);
    let p = problem(&dir, &key);
    assert_eq!(
        (p.file.clone().unwrap(), p.seq),
        (rel(&dir, &seg), Some(4)),
        "{p}"
    );
    assert!(
        matches!(p.kind, ProblemKind::TimestampRegression { .. }),
        "{p}"
    );
}

#[test]
fn receipts_and_consistency_proofs_verify_and_detect_tampering() {
    let (_tmp, dir, key) = fixture("receipt");
    let reader = LedgerReader::open(&dir);
    let receipt = reader.receipt(17, None).unwrap().to_json();
    let ok = verify_receipt(&receipt, std::slice::from_ref(&key)).unwrap();
    assert_eq!((ok.record.seq, ok.checkpoint.size()), (17, N));

    let forged = receipt.replace("req-0017", "req-9999");
    assert!(verify_receipt(&forged, std::slice::from_ref(&key)).is_err());
    let other = Signer::generate(ORIGIN, &mut rand::rngs::StdRng::seed_from_u64(3)).unwrap();
    assert!(verify_receipt(&receipt, &[other.verifier()]).is_err());

    let old = reader.checkpoint(10).unwrap().unwrap();
    let (_, new) = newest_note(&dir);
    let proof = reader.consistency_proof(10, N).unwrap();
    verify_consistency(&old, &new, &proof, std::slice::from_ref(&key)).unwrap();
    assert!(verify_consistency(&new, &old, &proof, std::slice::from_ref(&key)).is_err());
    let mut bad = proof.clone();
    bad[0][0] ^= 1;
    assert!(verify_consistency(&old, &new, &bad, &[key]).is_err());
}

#[test]
fn a_deleted_seal_checkpoint_is_found() {
    let (_tmp, dir, key) = fixture("seal");
    let segs = segments(&dir);
    let boundary: u64 = segs[1]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    fs::remove_file(dir.join(format!("checkpoints/{boundary:020}.note"))).unwrap();
    let p = problem(&dir, &key);
    assert_eq!(
        p.kind,
        ProblemKind::MissingSealCheckpoint { size: boundary }
    );
    assert_eq!(p.file.unwrap(), rel(&dir, &segs[0]));
}

/// Thinning (custos-ledger) removes old checkpoints; the log must still
/// verify, and removing a checkpoint thinning keeps (a segment boundary)
/// must still be found.
#[test]
fn a_thinned_ledger_verifies_and_a_removed_boundary_is_still_found() {
    let (_tmp, dir, key) = fixture("thinned");
    let before = LedgerReader::open(&dir).checkpoint_sizes().unwrap();
    let removed = age_and_thin(&dir);
    assert!(removed > 0);
    let report = verify(&dir, std::slice::from_ref(&key), None);
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.newest_checkpoint, Some(N));
    assert_eq!(
        report.checkpoints_checked,
        u64::try_from(before.len() - removed).unwrap()
    );

    // A boundary checkpoint is never thinned; deleting one by hand is
    // still tampering.
    let boundary = LedgerReader::open(&dir).segments().unwrap()[1];
    fs::remove_file(dir.join(format!("checkpoints/{boundary:020}.note"))).unwrap();
    let p = problem(&dir, &key);
    assert!(
        matches!(p.kind, ProblemKind::MissingSealCheckpoint { .. }),
        "{p:?}"
    );
}
