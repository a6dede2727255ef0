//! Runs every transparency-dev/merkle test vector in
//! `testdata/transparency-dev-merkle/`: the roots for sizes 0 to 8 and each
//! inclusion and consistency case, honouring `wantErr`. Happy-path proofs
//! over the standard leaves are also compared with the proofs this crate
//! generates.
//!
//! Some upstream cases use values that are not 32 bytes long ("don't care
//! 1", empty strings, "WrongLeaf"), which a [`Hash`] cannot hold. The Go
//! verifier treats them in two ways, and so does this harness:
//!
//! - A leaf hash of the wrong length is rejected up front (Go checks its
//!   length). Here it cannot even be turned into a `Hash`, so the case
//!   counts as rejected at the type boundary, which is only allowed when
//!   the case expects an error.
//! - Roots and proof hashes of the wrong length are only compared or hashed
//!   as bytes. Each distinct value is mapped to a distinct 32-byte stand-in
//!   that is no valid tree hash, so equal values stay equal, different ones
//!   stay different, and every case keeps its expected outcome.
//!
//! Both kinds are counted and the counts are pinned below.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] fns fail loudly on bad fixtures"
)]

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use custos_merkle::{
    Frontier, Hash, consistency_proof, empty_root, inclusion_proof, leaf_hash, root,
    verify_consistency, verify_inclusion,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/transparency-dev-merkle"
);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Roots {
    #[expect(dead_code, reason = "provenance only")]
    source: String,
    #[expect(dead_code, reason = "provenance only")]
    hash: String,
    leaf_inputs_hex: Vec<String>,
    root_hashes_hex_by_tree_size: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct InclusionCase {
    leaf_idx: u64,
    tree_size: u64,
    root: String,
    leaf_hash: String,
    proof: Option<Vec<String>>,
    desc: String,
    want_err: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConsistencyCase {
    size1: u64,
    size2: u64,
    root1: String,
    root2: String,
    proof: Option<Vec<String>>,
    desc: String,
    want_err: bool,
}

/// Decodes base64 test data into hashes, counting stand-ins.
#[derive(Default)]
struct Decoder {
    stand_ins: usize,
}

impl Decoder {
    /// A hash that must be exactly 32 bytes, or `None`.
    fn exact(b64: &str) -> Option<Hash> {
        let bytes = STANDARD.decode(b64).expect("vector is valid base64");
        Hash::try_from(bytes.as_slice()).ok()
    }

    fn hash(&mut self, b64: &str) -> Hash {
        let bytes = STANDARD.decode(b64).expect("vector is valid base64");
        if let Ok(hash) = Hash::try_from(bytes.as_slice()) {
            return hash;
        }
        self.stand_ins += 1;
        Sha256::new()
            .chain_update(b"custos-merkle test stand-in for a non-32-byte value\0")
            .chain_update(&bytes)
            .finalize()
            .into()
    }

    fn proof(&mut self, proof: Option<&[String]>) -> Vec<Hash> {
        proof
            .unwrap_or_default()
            .iter()
            .map(|h| self.hash(h))
            .collect()
    }
}

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("valid hex"))
        .collect()
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn read<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The eight standard leaves (hashed) and the roots of their prefixes.
fn standard_tree() -> (Vec<Hash>, Vec<Hash>) {
    let roots: Roots = read(&Path::new(DIR).join("roots.json"));
    let leaves = roots
        .leaf_inputs_hex
        .iter()
        .map(|h| leaf_hash(&hex(h)))
        .collect();
    let roots = roots
        .root_hashes_hex_by_tree_size
        .iter()
        .map(|h| Hash::try_from(hex(h).as_slice()).expect("32-byte root"))
        .collect();
    (leaves, roots)
}

#[test]
fn roots_for_sizes_0_to_8() {
    let (leaves, roots) = standard_tree();
    assert_eq!(leaves.len(), 8);
    assert_eq!(roots.len(), 9);
    assert_eq!(roots[0], empty_root());
    let mut tree = Frontier::new();
    for (size, want) in roots.iter().enumerate() {
        assert_eq!(root(&leaves[..size]), *want, "batch root at size {size}");
        assert_eq!(tree.root(), *want, "incremental root at size {size}");
        if let Some(leaf) = leaves.get(size) {
            tree.append(*leaf).unwrap();
        }
    }
}

#[test]
fn every_inclusion_vector() {
    let (leaves, roots) = standard_tree();
    let files = json_files(&Path::new(DIR).join("inclusion"));
    let mut dec = Decoder::default();
    let (mut passed, mut rejected, mut generated, mut bad_leaf_len) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for path in &files {
        let case: InclusionCase = read(path);
        let Some(leaf) = Decoder::exact(&case.leaf_hash) else {
            bad_leaf_len += 1;
            if !case.want_err {
                failures.push(format!(
                    "{} ({}): leaf hash is not 32 bytes",
                    path.display(),
                    case.desc
                ));
            }
            continue;
        };
        let root_hash = dec.hash(&case.root);
        let proof = dec.proof(case.proof.as_deref());
        let result = verify_inclusion(&leaf, case.leaf_idx, case.tree_size, &proof, &root_hash);
        match (&result, case.want_err) {
            (Ok(()), false) => passed += 1,
            (Err(_), true) => rejected += 1,
            _ => failures.push(format!(
                "{} ({}): got {result:?}",
                path.display(),
                case.desc
            )),
        }

        // Happy paths over the standard leaves must also be what we generate.
        let size = usize::try_from(case.tree_size).unwrap();
        let idx = usize::try_from(case.leaf_idx).unwrap_or(usize::MAX);
        if !case.want_err
            && size <= leaves.len()
            && roots[size] == root_hash
            && leaves.get(idx) == Some(&leaf)
        {
            assert_eq!(
                inclusion_proof(&leaves[..size], case.leaf_idx).unwrap(),
                proof,
                "{}",
                path.display()
            );
            generated += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Pin the counts so that a missing directory or a silently skipped
    // case fails the test instead of passing it vacuously.
    assert_eq!(files.len(), 98);
    assert_eq!((passed, rejected, bad_leaf_len), (6, 81, 11));
    assert_eq!(generated, 5);
    assert_eq!(dec.stand_ins, 15);
}

#[test]
fn every_consistency_vector() {
    let (leaves, roots) = standard_tree();
    let files = json_files(&Path::new(DIR).join("consistency"));
    let mut dec = Decoder::default();
    let (mut passed, mut rejected, mut generated) = (0, 0, 0);
    let mut failures = Vec::new();
    for path in &files {
        let case: ConsistencyCase = read(path);
        let root1 = dec.hash(&case.root1);
        let root2 = dec.hash(&case.root2);
        let proof = dec.proof(case.proof.as_deref());
        let result = verify_consistency(case.size1, case.size2, &root1, &root2, &proof);
        match (&result, case.want_err) {
            (Ok(()), false) => passed += 1,
            (Err(_), true) => rejected += 1,
            _ => failures.push(format!(
                "{} ({}): got {result:?}",
                path.display(),
                case.desc
            )),
        }

        let (size1, size2) = (
            usize::try_from(case.size1).unwrap(),
            usize::try_from(case.size2).unwrap(),
        );
        if !case.want_err
            && size2 <= leaves.len()
            && roots.get(size1) == Some(&root1)
            && roots[size2] == root2
        {
            assert_eq!(
                consistency_proof(&leaves[..size2], case.size1).unwrap(),
                proof,
                "{}",
                path.display()
            );
            generated += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(files.len(), 98);
    assert_eq!((passed, rejected), (6, 92));
    assert_eq!(generated, 5);
    assert_eq!(dec.stand_ins, 35);
}
