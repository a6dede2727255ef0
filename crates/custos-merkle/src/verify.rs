//! Checking inclusion and consistency proofs against signed roots.
//!
//! The semantics follow transparency-dev/merkle and its published test
//! vectors: a proof of the wrong length is an error before any hashing, an
//! index must be below the tree size, equal sizes need an empty proof and
//! equal roots, the empty tree's root must be [`empty_root`], and a
//! consistency proof from the empty tree to a larger one is rejected as
//! meaningless. Proof hashes come from the network, so every length and
//! shift is checked rather than assumed.

use crate::hash::{Hash, Hex, empty_root, node_hash};

/// Why a proof did not verify. Any of these means the claimed leaf, proof or
/// roots must not be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The leaf index is not below the tree size.
    #[error("leaf index {index} is out of range for tree size {size}")]
    IndexOutOfRange {
        /// The claimed leaf index.
        index: u64,
        /// The claimed tree size.
        size: u64,
    },
    /// The proof does not have the number of hashes the sizes require.
    #[error("proof has {got} hashes, want {want}")]
    WrongProofSize {
        /// The number of hashes given.
        got: usize,
        /// The number of hashes the index and sizes require.
        want: usize,
    },
    /// The new tree size is smaller than the old one.
    #[error("new tree size {new_size} is smaller than old tree size {old_size}")]
    SizeDecreased {
        /// The claimed old tree size.
        old_size: u64,
        /// The claimed new tree size.
        new_size: u64,
    },
    /// A consistency proof from the empty tree to a non-empty tree was given.
    /// It carries no information, so callers that start from an empty log
    /// should skip the check instead.
    #[error("consistency proof from the empty tree is meaningless")]
    EmptyOldTree,
    /// The root computed from the proof differs from the expected root.
    #[error(
        "root at tree size {size} mismatched: computed {}, expected {}",
        Hex(computed),
        Hex(expected)
    )]
    RootMismatch {
        /// The tree size whose root did not match.
        size: u64,
        /// The root computed from the proof.
        computed: Hash,
        /// The root the caller expected, usually from a signed checkpoint.
        expected: Hash,
    },
}

/// Checks that `leaf_hash` is the leaf at `index` in the tree of `size`
/// leaves whose root is `root`.
///
/// # Errors
///
/// Any [`VerifyError`] other than the consistency-only variants.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), VerifyError> {
    let computed = root_from_inclusion_proof(leaf_hash, index, size, proof)?;
    check_root(size, computed, root)
}

/// Computes the root of the tree of `size` leaves implied by an inclusion
/// proof for `leaf_hash` at `index`. The caller must compare it with a
/// trusted root; [`verify_inclusion`] does both.
///
/// # Errors
///
/// [`VerifyError::IndexOutOfRange`] if `index >= size`, and
/// [`VerifyError::WrongProofSize`] if the proof length does not fit.
pub fn root_from_inclusion_proof(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
) -> Result<Hash, VerifyError> {
    if index >= size {
        return Err(VerifyError::IndexOutOfRange { index, size });
    }
    let (inner, border) = decompose(index, size - 1);
    check_len(proof, inner + border)?;
    let (inner_proof, border_proof) = proof.split_at(inner);

    let mut acc = *leaf_hash;
    for (level, sibling) in inner_proof.iter().enumerate() {
        acc = if bit(index, level) {
            node_hash(sibling, &acc)
        } else {
            node_hash(&acc, sibling)
        };
    }
    Ok(chain_border(acc, border_proof))
}

/// Checks that the tree of `old_size` leaves with root `old_root` is a prefix
/// of the tree of `new_size` leaves with root `new_root`.
///
/// # Errors
///
/// [`VerifyError::SizeDecreased`], [`VerifyError::EmptyOldTree`],
/// [`VerifyError::WrongProofSize`] or [`VerifyError::RootMismatch`].
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), VerifyError> {
    if old_size > new_size {
        return Err(VerifyError::SizeDecreased { old_size, new_size });
    }
    if old_size == new_size {
        check_len(proof, 0)?;
        if old_size == 0 {
            // Both roots are fixed by definition; two equal but bogus
            // roots must not pass.
            check_root(0, empty_root(), old_root)?;
        }
        return check_root(new_size, *old_root, new_root);
    }
    if old_size == 0 {
        return Err(VerifyError::EmptyOldTree);
    }

    // The old tree's rightmost perfect subtree has 2^level leaves; the proof
    // starts from its root (the seed) and then reads like an inclusion proof
    // of that subtree in the new tree. The seed is omitted from the proof
    // when it is the whole old tree, whose root the verifier already has.
    let level = old_size.trailing_zeros() as usize;
    let (inner_total, border) = decompose(old_size - 1, new_size - 1);
    // Paths from the old and new last leaves diverge strictly above `level`
    // because `old_size < new_size`, so this does not saturate.
    let inner = inner_total.saturating_sub(level);
    let seed_is_old_root = old_size.is_power_of_two();
    check_len(proof, usize::from(!seed_is_old_root) + inner + border)?;

    let (seed, path) = match (seed_is_old_root, proof.split_first()) {
        (true, _) => (*old_root, proof),
        (false, Some((first, rest))) => (*first, rest),
        // Unreachable: the length check above requires at least one hash.
        (false, None) => return Err(VerifyError::WrongProofSize { got: 0, want: 1 }),
    };
    let (inner_proof, border_proof) = path.split_at(inner);

    // Left siblings belong to both trees; right siblings only to the new one.
    let position = shr(old_size - 1, level);
    let mut old_acc = seed;
    let mut new_acc = seed;
    for (i, sibling) in inner_proof.iter().enumerate() {
        if bit(position, i) {
            old_acc = node_hash(sibling, &old_acc);
            new_acc = node_hash(sibling, &new_acc);
        } else {
            new_acc = node_hash(&new_acc, sibling);
        }
    }
    check_root(old_size, chain_border(old_acc, border_proof), old_root)?;
    check_root(new_size, chain_border(new_acc, border_proof), new_root)
}

/// Splits the proof for the node at `index` against the tree whose last
/// node is `last` (both at the same level) into the part below the point
/// where their paths to the root meet, and the part along the tree's right
/// border above it, which only has left siblings.
fn decompose(index: u64, last: u64) -> (usize, usize) {
    let inner = (u64::BITS - (index ^ last).leading_zeros()) as usize;
    let border = shr(index, inner).count_ones() as usize;
    (inner, border)
}

/// Hashes the right-border part of a proof, where every sibling is on the left.
fn chain_border(seed: Hash, proof: &[Hash]) -> Hash {
    proof
        .iter()
        .fold(seed, |acc, sibling| node_hash(sibling, &acc))
}

fn check_len(proof: &[Hash], want: usize) -> Result<(), VerifyError> {
    if proof.len() == want {
        Ok(())
    } else {
        Err(VerifyError::WrongProofSize {
            got: proof.len(),
            want,
        })
    }
}

fn check_root(size: u64, computed: Hash, expected: &Hash) -> Result<(), VerifyError> {
    if computed == *expected {
        Ok(())
    } else {
        Err(VerifyError::RootMismatch {
            size,
            computed,
            expected: *expected,
        })
    }
}

/// `x >> n`, with shifts of 64 or more giving 0 instead of overflowing.
fn shr(x: u64, n: usize) -> u64 {
    u32::try_from(n)
        .ok()
        .and_then(|n| x.checked_shr(n))
        .unwrap_or(0)
}

fn bit(x: u64, n: usize) -> bool {
    shr(x, n) & 1 == 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::leaf_hash;
    use crate::proof::{consistency_proof, inclusion_proof, root};

    #[test]
    fn empty_and_equal_sizes() {
        let e = empty_root();
        let x = leaf_hash(b"x");
        assert_eq!(verify_consistency(0, 0, &e, &e, &[]), Ok(()));
        assert!(verify_consistency(0, 0, &x, &x, &[]).is_err());
        assert!(verify_consistency(0, 0, &e, &e, &[e]).is_err());
        assert_eq!(verify_consistency(3, 3, &x, &x, &[]), Ok(()));
        assert_eq!(
            verify_consistency(0, 1, &e, &x, &[]),
            Err(VerifyError::EmptyOldTree)
        );
        assert_eq!(
            verify_consistency(2, 1, &x, &x, &[]),
            Err(VerifyError::SizeDecreased {
                old_size: 2,
                new_size: 1
            })
        );
    }

    #[test]
    fn huge_sizes_do_not_overflow() {
        let x = leaf_hash(b"x");
        let proof = vec![x; 64];
        for (index, size) in [(u64::MAX - 1, u64::MAX), (0, u64::MAX), (1 << 63, u64::MAX)] {
            let _ = verify_inclusion(&x, index, size, &proof, &x);
        }
        for (old, new) in [(1, u64::MAX), (u64::MAX - 1, u64::MAX), (1 << 63, u64::MAX)] {
            let _ = verify_consistency(old, new, &x, &x, &proof);
        }
    }

    #[test]
    fn every_proof_in_a_small_tree_verifies() {
        let leaves: Vec<Hash> = (0u8..20).map(|i| leaf_hash(&[i])).collect();
        for n in 1..=leaves.len() {
            let tree = &leaves[..n];
            let r = root(tree);
            for i in 0..n {
                let proof = inclusion_proof(tree, i as u64).unwrap();
                verify_inclusion(&tree[i], i as u64, n as u64, &proof, &r).unwrap();
            }
            for m in 1..=n {
                let proof = consistency_proof(tree, m as u64).unwrap();
                verify_consistency(m as u64, n as u64, &root(&tree[..m]), &r, &proof).unwrap();
            }
        }
    }

    #[test]
    fn mismatch_message_names_size_and_hashes() {
        let err = verify_inclusion(&[0; 32], 0, 1, &[], &[0xab; 32]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "root at tree size 1 mismatched: computed {}, expected {}",
                "00".repeat(32),
                "ab".repeat(32)
            )
        );
    }
}
