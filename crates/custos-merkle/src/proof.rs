//! Building Merkle Tree Hashes and proofs from the full list of leaf hashes,
//! following the recursive definitions of RFC 6962 §2.1 (MTH, PATH, PROOF).
//!
//! Each function does O(n) hashing for n leaves and allocates only the
//! returned proof; the recursion depth is at most 64.

use crate::hash::{Hash, empty_root, node_hash};

/// Why a proof could not be built or a [`Frontier`](crate::Frontier) could
/// not be restored or extended. These are caller mistakes, never a sign of
/// a corrupt log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The leaf index is not below the tree size, so there is no leaf to prove.
    #[error("leaf index {index} is out of range for tree size {size}")]
    IndexOutOfRange {
        /// The requested leaf index.
        index: u64,
        /// The tree size, which is the number of leaf hashes given.
        size: u64,
    },
    /// The old tree size of a consistency proof is larger than the tree.
    #[error("old tree size {old_size} is larger than tree size {size}")]
    OldSizeOutOfRange {
        /// The requested old tree size.
        old_size: u64,
        /// The tree size, which is the number of leaf hashes given.
        size: u64,
    },
    /// A consistency proof from the empty tree to a non-empty tree was
    /// requested. Every tree extends the empty tree, so such a proof carries
    /// no information and RFC 6962 does not define one.
    #[error("consistency proof from the empty tree is meaningless")]
    EmptyOldTree,
    /// A frontier does not have exactly one hash per set bit of its size.
    #[error("frontier for tree size {size} needs {want} hashes, got {got}")]
    FrontierLength {
        /// The tree size the frontier claims.
        size: u64,
        /// How many hashes that size needs.
        want: u32,
        /// How many hashes were given.
        got: usize,
    },
    /// The tree already holds `u64::MAX` leaves and cannot grow.
    #[error("tree is full at size {size}")]
    TreeFull {
        /// The current tree size.
        size: u64,
    },
}

/// The Merkle Tree Hash (RFC 6962 §2.1) of a list of leaf hashes.
///
/// An empty list has root [`empty_root`]; a single leaf is its own root.
#[must_use]
pub fn root(leaf_hashes: &[Hash]) -> Hash {
    if leaf_hashes.is_empty() {
        empty_root()
    } else {
        subtree_root(leaf_hashes)
    }
}

/// An inclusion proof (RFC 6962 §2.1.1, RFC 9162 §2.1.3) for the leaf at
/// `index` in the tree made of all of `leaf_hashes`.
///
/// The proof lists sibling hashes from the leaf up to the root.
///
/// # Errors
///
/// [`Error::IndexOutOfRange`] if `index` is not below `leaf_hashes.len()`.
pub fn inclusion_proof(leaf_hashes: &[Hash], index: u64) -> Result<Vec<Hash>, Error> {
    let size = len_u64(leaf_hashes);
    let in_range = usize::try_from(index)
        .ok()
        .filter(|&i| i < leaf_hashes.len());
    let Some(index) = in_range else {
        return Err(Error::IndexOutOfRange { index, size });
    };
    let mut proof = Vec::with_capacity(proof_capacity(size));
    push_path(leaf_hashes, index, &mut proof);
    Ok(proof)
}

/// A consistency proof (RFC 6962 §2.1.2, RFC 9162 §2.1.4) that the tree of
/// the first `old_size` leaves is a prefix of the tree made of all of
/// `leaf_hashes`.
///
/// The proof is empty when `old_size` equals the tree size.
///
/// # Errors
///
/// [`Error::OldSizeOutOfRange`] if `old_size` is larger than the tree, and
/// [`Error::EmptyOldTree`] if `old_size` is 0 and the tree is not empty.
pub fn consistency_proof(leaf_hashes: &[Hash], old_size: u64) -> Result<Vec<Hash>, Error> {
    let size = len_u64(leaf_hashes);
    if old_size > size {
        return Err(Error::OldSizeOutOfRange { old_size, size });
    }
    if old_size == size {
        return Ok(Vec::new());
    }
    if old_size == 0 {
        return Err(Error::EmptyOldTree);
    }
    // `old_size < size <= usize::MAX` here, so the conversion is lossless.
    let Ok(old) = usize::try_from(old_size) else {
        return Err(Error::OldSizeOutOfRange { old_size, size });
    };
    let mut proof = Vec::with_capacity(proof_capacity(size) + 1);
    push_subproof(old, leaf_hashes, true, &mut proof);
    Ok(proof)
}

/// MTH of a non-empty slice.
pub(crate) fn subtree_root(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => empty_root(),
        [leaf] => *leaf,
        _ => {
            let (left, right) = leaves.split_at(split_point(leaves.len()));
            node_hash(&subtree_root(left), &subtree_root(right))
        }
    }
}

/// RFC 6962 PATH(m, D[n]): appends the audit path of leaf `m`, lowest level
/// first.
fn push_path(leaves: &[Hash], m: usize, out: &mut Vec<Hash>) {
    if leaves.len() <= 1 {
        return;
    }
    let k = split_point(leaves.len());
    let (left, right) = leaves.split_at(k);
    if m < k {
        push_path(left, m, out);
        out.push(subtree_root(right));
    } else {
        push_path(right, m - k, out);
        out.push(subtree_root(left));
    }
}

/// RFC 6962 SUBPROOF(m, D[n], b), for `0 < m <= n`. `complete` is true while
/// the subtree of size `m` is still the whole old tree, whose root the
/// verifier already knows.
fn push_subproof(m: usize, leaves: &[Hash], complete: bool, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if m >= n {
        if !complete {
            out.push(subtree_root(leaves));
        }
        return;
    }
    let k = split_point(n);
    let (left, right) = leaves.split_at(k);
    if m <= k {
        push_subproof(m, left, complete, out);
        out.push(subtree_root(right));
    } else {
        push_subproof(m - k, right, false, out);
        out.push(subtree_root(left));
    }
}

/// The largest power of two strictly below `n`, for `n >= 2`: where RFC 6962
/// splits a tree into its left and right subtrees.
fn split_point(n: usize) -> usize {
    let top_bit = usize::BITS - 1 - (n.saturating_sub(1)).leading_zeros();
    1 << top_bit
}

/// `usize` is at most 64 bits on every target Rust supports, so this never
/// saturates in practice.
fn len_u64(leaves: &[Hash]) -> u64 {
    u64::try_from(leaves.len()).unwrap_or(u64::MAX)
}

/// An upper bound on proof length for a tree of `size` leaves: its height.
fn proof_capacity(size: u64) -> usize {
    (u64::BITS - size.leading_zeros()) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_point_is_largest_power_of_two_below() {
        let cases = [
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 4),
            (8, 4),
            (9, 8),
            (1 << 20, 1 << 19),
        ];
        for (n, want) in cases {
            assert_eq!(split_point(n), want, "n = {n}");
        }
    }

    #[test]
    fn out_of_range_requests_are_errors() {
        let leaves = [[0u8; 32]; 3];
        assert_eq!(
            inclusion_proof(&leaves, 3),
            Err(Error::IndexOutOfRange { index: 3, size: 3 })
        );
        assert_eq!(
            inclusion_proof(&[], 0),
            Err(Error::IndexOutOfRange { index: 0, size: 0 })
        );
        assert_eq!(
            consistency_proof(&leaves, 4),
            Err(Error::OldSizeOutOfRange {
                old_size: 4,
                size: 3
            })
        );
        assert_eq!(consistency_proof(&leaves, 0), Err(Error::EmptyOldTree));
        assert_eq!(consistency_proof(&leaves, 3), Ok(Vec::new()));
        assert_eq!(consistency_proof(&[], 0), Ok(Vec::new()));
    }
}
