//! The incremental Merkle tree the ledger appends to: a compact range over
//! `[0, size)`, which keeps only the roots of the maximal perfect subtrees,
//! one per set bit of `size`.
//!
//! Appending costs amortised one node hash (O(log n) worst case) and never
//! allocates once the tree exists, because the hash list is created with
//! room for the 64 subtrees a `u64` size can need.

use crate::hash::{Hash, empty_root, node_hash};
use crate::proof::Error;

/// Most subtree hashes a frontier can hold: one per bit of a `u64` size.
const MAX_HASHES: usize = u64::BITS as usize;

/// An append-only RFC 6962 tree that remembers only its frontier.
///
/// The frontier is the list of perfect subtree roots covering leaves
/// `[0, size)`, ordered left to right (largest subtree first). Together
/// with the size it is enough to compute the root and to keep appending,
/// which is what lets the ledger purge old records: it stores
/// [`size`](Self::size) and [`hashes`](Self::hashes) and later restores the
/// tree with [`from_parts`](Self::from_parts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// Invariant: `hashes.len() == size.count_ones()`, and the capacity is
    /// at least [`MAX_HASHES`].
    hashes: Vec<Hash>,
}

impl Default for Frontier {
    fn default() -> Self {
        Self::new()
    }
}

impl Frontier {
    /// An empty tree.
    #[must_use]
    pub fn new() -> Self {
        Self {
            size: 0,
            hashes: Vec::with_capacity(MAX_HASHES),
        }
    }

    /// Restores a tree from its size and frontier hashes, as returned by
    /// [`size`](Self::size) and [`hashes`](Self::hashes).
    ///
    /// The hashes cannot be checked against anything here; callers that
    /// read them from storage should compare [`root`](Self::root) with a
    /// signed checkpoint.
    ///
    /// # Errors
    ///
    /// [`Error::FrontierLength`] unless there is exactly one hash per set bit
    /// of `size`.
    pub fn from_parts(size: u64, hashes: &[Hash]) -> Result<Self, Error> {
        let want = size.count_ones();
        if hashes.len() != want as usize {
            return Err(Error::FrontierLength {
                size,
                want,
                got: hashes.len(),
            });
        }
        let mut stored = Vec::with_capacity(MAX_HASHES);
        stored.extend_from_slice(hashes);
        Ok(Self {
            size,
            hashes: stored,
        })
    }

    /// Appends a leaf hash and returns its index, which is the old size.
    ///
    /// # Errors
    ///
    /// [`Error::TreeFull`] if the tree already has `u64::MAX` leaves.
    pub fn append(&mut self, leaf_hash: Hash) -> Result<u64, Error> {
        let index = self.size;
        let Some(new_size) = index.checked_add(1) else {
            return Err(Error::TreeFull { size: index });
        };
        // Each trailing one bit of the old size is a perfect subtree of the
        // same size as the one the new leaf is completing, so they merge,
        // smallest (rightmost) first. By the length invariant there are at
        // least that many hashes; `saturating_sub` only guards the arithmetic.
        let merges = index.trailing_ones() as usize;
        let start = self.hashes.len().saturating_sub(merges);
        let mut acc = leaf_hash;
        for left in self.hashes.drain(start..).rev() {
            acc = node_hash(&left, &acc);
        }
        self.hashes.push(acc);
        self.size = new_size;
        Ok(index)
    }

    /// The number of leaves appended so far.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The frontier: the roots of the maximal perfect subtrees covering
    /// `[0, size)`, largest first, one per set bit of the size.
    #[must_use]
    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// The RFC 6962 root of the tree, equal to [`root`](crate::root) over all
    /// leaf hashes appended so far. Costs one node hash per set bit of the
    /// size, minus one.
    #[must_use]
    pub fn root(&self) -> Hash {
        let mut from_right = self.hashes.iter().rev();
        match from_right.next() {
            None => empty_root(),
            Some(last) => from_right.fold(*last, |acc, left| node_hash(left, &acc)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::leaf_hash;
    use crate::proof::root;

    #[test]
    fn incremental_root_matches_batch_root_for_small_sizes() {
        let leaves: Vec<Hash> = (0u32..70).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut tree = Frontier::new();
        assert_eq!(tree.root(), empty_root());
        for (i, leaf) in leaves.iter().enumerate() {
            assert_eq!(tree.append(*leaf), Ok(i as u64));
            assert_eq!(tree.root(), root(&leaves[..=i]), "size {}", i + 1);
            assert_eq!(tree.hashes().len(), tree.size().count_ones() as usize);
        }
    }

    #[test]
    fn from_parts_checks_hash_count() {
        assert_eq!(
            Frontier::from_parts(5, &[[0; 32]]),
            Err(Error::FrontierLength {
                size: 5,
                want: 2,
                got: 1
            })
        );
        assert!(Frontier::from_parts(0, &[]).is_ok());
    }

    #[test]
    fn append_to_full_tree_is_an_error_not_a_panic() {
        let mut tree = Frontier::from_parts(u64::MAX, &[[7; 32]; 64]).unwrap();
        assert_eq!(
            tree.append([1; 32]),
            Err(Error::TreeFull { size: u64::MAX })
        );
        let mut almost = Frontier::from_parts(u64::MAX - 1, &[[7; 32]; 63]).unwrap();
        assert_eq!(almost.append([1; 32]), Ok(u64::MAX - 1));
        assert_eq!(almost.hashes().len(), 64);
    }

    #[test]
    fn append_does_not_reallocate() {
        let mut tree = Frontier::new();
        let before = tree.hashes.as_ptr();
        for i in 0u32..10_000 {
            tree.append(leaf_hash(&i.to_be_bytes())).unwrap();
        }
        assert_eq!(tree.hashes.as_ptr(), before);
    }
}
