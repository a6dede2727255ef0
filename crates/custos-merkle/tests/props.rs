//! Property tests: every generated proof verifies, any single-bit flip or
//! length change makes it fail, the incremental root always equals the
//! batch root, and a frontier survives being taken apart and restored.

use custos_merkle::{
    Frontier, Hash, consistency_proof, inclusion_proof, leaf_hash, root, verify_consistency,
    verify_inclusion,
};
use proptest::prelude::*;

fn leaves(n: usize, seed: u64) -> Vec<Hash> {
    (0..n as u64)
        .map(|i| {
            let mut data = [0u8; 16];
            data[..8].copy_from_slice(&seed.to_be_bytes());
            data[8..].copy_from_slice(&i.to_be_bytes());
            leaf_hash(&data)
        })
        .collect()
}

fn flip(mut hash: Hash, bit: u8) -> Hash {
    hash[usize::from(bit / 8)] ^= 1 << (bit % 8);
    hash
}

/// A tree size, a leaf index in it, an old size for consistency, and
/// choices for which hash and bit to corrupt.
fn tree_case() -> impl Strategy<Value = (usize, usize, usize, u64, usize, u8)> {
    (1usize..300).prop_flat_map(|n| {
        (
            Just(n),
            0..n,
            1..=n,
            any::<u64>(),
            any::<usize>(),
            any::<u8>(),
        )
    })
}

/// Every size, not just sampled ones: the batch root is recomputed from
/// scratch after each append, O(n^2) hashing in all.
#[test]
fn incremental_root_equals_batch_root_at_every_size_up_to_1100() {
    let tree = leaves(1100, 7);
    let mut frontier = Frontier::new();
    assert_eq!(frontier.root(), root(&[]));
    for (i, leaf) in tree.iter().enumerate() {
        frontier.append(*leaf).unwrap();
        assert_eq!(frontier.root(), root(&tree[..=i]), "size {}", i + 1);
    }
}

proptest! {
    #[test]
    fn inclusion_proofs_verify_and_corruptions_fail(
        (n, index, _, seed, which, bit) in tree_case(),
        extra in any::<[u8; 32]>(),
    ) {
        let tree = leaves(n, seed);
        let r = root(&tree);
        let (i, size) = (index as u64, n as u64);
        let leaf = tree[index];
        let proof = inclusion_proof(&tree, i).unwrap();
        prop_assert_eq!(verify_inclusion(&leaf, i, size, &proof, &r), Ok(()));

        prop_assert!(verify_inclusion(&flip(leaf, bit), i, size, &proof, &r).is_err());
        prop_assert!(verify_inclusion(&leaf, i, size, &proof, &flip(r, bit)).is_err());
        if !proof.is_empty() {
            let mut bad = proof.clone();
            let k = which % bad.len();
            bad[k] = flip(bad[k], bit);
            prop_assert!(verify_inclusion(&leaf, i, size, &bad, &r).is_err());
            prop_assert!(verify_inclusion(&leaf, i, size, &proof[..proof.len() - 1], &r).is_err());
        }
        let mut longer = proof.clone();
        longer.push(extra);
        prop_assert!(verify_inclusion(&leaf, i, size, &longer, &r).is_err());
        let mut prefixed = vec![extra];
        prefixed.extend_from_slice(&proof);
        prop_assert!(verify_inclusion(&leaf, i, size, &prefixed, &r).is_err());
        // The same proof must not pass for the neighbouring index. (A
        // different size can legitimately give the same root computation,
        // e.g. leaf 0 of 3 and of 4 with a 2-hash proof: RFC 6962 roots do not
        // commit to the size, which is why checkpoints sign it alongside.)
        if index + 1 < n {
            prop_assert!(verify_inclusion(&leaf, i + 1, size, &proof, &r).is_err());
        }
    }

    #[test]
    fn consistency_proofs_verify_and_corruptions_fail(
        (n, _, m, seed, which, bit) in tree_case(),
        extra in any::<[u8; 32]>(),
    ) {
        let tree = leaves(n, seed);
        let (old, new) = (m as u64, n as u64);
        let old_root = root(&tree[..m]);
        let new_root = root(&tree);
        let proof = consistency_proof(&tree, old).unwrap();
        prop_assert_eq!(verify_consistency(old, new, &old_root, &new_root, &proof), Ok(()));

        prop_assert!(verify_consistency(old, new, &flip(old_root, bit), &new_root, &proof).is_err());
        prop_assert!(verify_consistency(old, new, &old_root, &flip(new_root, bit), &proof).is_err());
        if !proof.is_empty() {
            let mut bad = proof.clone();
            let k = which % bad.len();
            bad[k] = flip(bad[k], bit);
            prop_assert!(verify_consistency(old, new, &old_root, &new_root, &bad).is_err());
            prop_assert!(
                verify_consistency(old, new, &old_root, &new_root, &proof[..proof.len() - 1]).is_err()
            );
        }
        let mut longer = proof.clone();
        longer.push(extra);
        prop_assert!(verify_consistency(old, new, &old_root, &new_root, &longer).is_err());
        let mut prefixed = vec![extra];
        prefixed.extend_from_slice(&proof);
        prop_assert!(verify_consistency(old, new, &old_root, &new_root, &prefixed).is_err());
        if m < n {
            prop_assert!(verify_consistency(old, new, &new_root, &old_root, &proof).is_err());
        }
    }

    #[test]
    fn incremental_root_equals_batch_root(n in 0usize..300, at in any::<usize>(), seed in any::<u64>()) {
        let tree = leaves(n, seed);
        let at = at % (n + 1);
        let mut frontier = Frontier::new();
        for (i, leaf) in tree.iter().enumerate() {
            if i == at {
                prop_assert_eq!(frontier.root(), root(&tree[..i]));
            }
            prop_assert_eq!(frontier.append(*leaf), Ok(i as u64));
        }
        prop_assert_eq!(frontier.root(), root(&tree));
    }

    #[test]
    fn frontier_round_trips_through_from_parts(
        n in 0usize..300,
        more in 0usize..40,
        seed in any::<u64>(),
    ) {
        let tree = leaves(n + more, seed);
        let mut original = Frontier::new();
        for leaf in &tree[..n] {
            original.append(*leaf).unwrap();
        }
        let mut restored = Frontier::from_parts(original.size(), original.hashes()).unwrap();
        prop_assert_eq!(&restored, &original);
        prop_assert_eq!(restored.hashes().len(), n.count_ones() as usize);
        // A restored tree keeps growing exactly like the original.
        for leaf in &tree[n..] {
            prop_assert_eq!(restored.append(*leaf), original.append(*leaf));
        }
        prop_assert_eq!(restored.root(), root(&tree));
        if let Some((_, fewer)) = original.hashes().split_first() {
            prop_assert!(Frontier::from_parts(original.size(), fewer).is_err());
        }
    }
}
