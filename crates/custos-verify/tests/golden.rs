//! The golden ledger in `testdata/golden-ledger/`: a deterministic ledger
//! (fixed clock, seeded keys) with every record type, sealed segments, a
//! key rotation and a retention purge. The writer must reproduce it byte
//! for byte, and the verifier must accept it with either key. Regenerate
//! with `UPDATE_GOLDEN=1` only together with a format change.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use custos_note::Verifier;
use custos_verify::ProblemKind;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/golden-ledger")
}

fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for sub in ["segments", "checkpoints", "keys"] {
        for entry in fs::read_dir(dir.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            out.insert(
                path.strip_prefix(dir).unwrap().to_path_buf(),
                fs::read(&path).unwrap(),
            );
        }
    }
    out
}

fn history(dir: &Path) -> Vec<Verifier> {
    fs::read_to_string(dir.join("keys/verifiers.txt"))
        .unwrap()
        .lines()
        .map(|l| Verifier::from_vkey(l.split_once(' ').unwrap().1).unwrap())
        .collect()
}

#[test]
fn the_writer_reproduces_the_golden_ledger_byte_for_byte() {
    let tmp = TempDir::new("golden");
    let dir = tmp.0.join("ledger");
    build_golden(&dir);
    let golden = golden_dir();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        for sub in ["segments", "checkpoints", "keys"] {
            let _ = fs::remove_dir_all(golden.join(sub));
            copy_dir(&dir.join(sub), &golden.join(sub));
        }
    }
    let want = files(&golden);
    let got = files(&dir);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "file sets differ; rerun with UPDATE_GOLDEN=1 after a deliberate format change"
    );
    for (path, bytes) in &want {
        assert!(
            got[path] == *bytes,
            "{} differs from the golden copy",
            path.display()
        );
    }
}

#[test]
fn the_golden_ledger_verifies_with_either_key() {
    let dir = golden_dir();
    let keys = history(&dir);
    assert_eq!(keys.len(), 2, "the golden ledger rotates its key once");
    for key in &keys {
        let report = verify(&dir, std::slice::from_ref(key), None);
        assert!(report.is_intact(), "{key}: {report:?}");
        assert!(
            report.first_seq > 0,
            "the golden ledger has a purged segment"
        );
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    }
    let stranger = custos_note::Signer::generate("custos.test/verify", &mut rand::rngs::OsRng)
        .unwrap()
        .verifier();
    let report = verify(&dir, &[stranger], None);
    assert!(
        matches!(
            report.problem.unwrap().kind,
            ProblemKind::UntrustedKey { .. }
        ),
        "a key the log never used must not verify it"
    );
}

#[test]
fn every_golden_checkpoint_is_a_fixture() {
    // Each signed checkpoint of the golden log is kept as a file, so that a
    // change to signing or tree hashing shows up as a diff of these files.
    let dir = golden_dir();
    let notes: Vec<_> = fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.ends_with(".note").then_some(name)
        })
        .collect();
    assert!(notes.len() >= 5, "{notes:?}");
}
