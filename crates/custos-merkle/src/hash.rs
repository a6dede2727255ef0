//! The RFC 6962 hasher: SHA-256 with one-byte domain separation between
//! leaves and interior nodes, so a leaf can never be passed off as a node.

use sha2::{Digest, Sha256};

/// A SHA-256 digest: a leaf hash, an interior node hash or a tree root.
pub type Hash = [u8; 32];

/// Prefix of a leaf hash input (RFC 6962 §2.1).
const LEAF_PREFIX: u8 = 0x00;
/// Prefix of an interior node hash input (RFC 6962 §2.1).
const NODE_PREFIX: u8 = 0x01;

/// Hashes leaf data: `SHA-256(0x00 || data)`.
#[must_use]
pub fn leaf_hash(data: &[u8]) -> Hash {
    Sha256::new()
        .chain_update([LEAF_PREFIX])
        .chain_update(data)
        .finalize()
        .into()
}

/// [`leaf_hash`] fed in pieces: a writer can hash the part of a leaf it
/// knows early (on many threads) and finish it later (on one), with the
/// same result as hashing the whole leaf at once.
#[derive(Clone)]
pub struct LeafHasher(Sha256);

impl std::fmt::Debug for LeafHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafHasher").finish_non_exhaustive()
    }
}

impl Default for LeafHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl LeafHasher {
    /// A hasher that has seen no leaf data yet.
    #[must_use]
    pub fn new() -> Self {
        LeafHasher(Sha256::new().chain_update([LEAF_PREFIX]))
    }

    /// Feeds the next bytes of the leaf data.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The leaf hash of everything fed so far.
    #[must_use]
    pub fn finish(self) -> Hash {
        self.0.finalize().into()
    }
}

/// Hashes two child hashes into their parent: `SHA-256(0x01 || left || right)`.
#[must_use]
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    // One contiguous buffer keeps this to a single `update` on the hot path.
    let mut input = [0u8; 65];
    input[0] = NODE_PREFIX;
    input[1..33].copy_from_slice(left);
    input[33..].copy_from_slice(right);
    Sha256::digest(input).into()
}

/// The root of the empty tree: `SHA-256("")`.
#[must_use]
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Formats a hash as lowercase hex in error messages.
pub(crate) struct Hex<'a>(pub(crate) &'a Hash);

impl std::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_hasher_matches_leaf_hash_at_every_split() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 % 251) as u8).collect();
        for split in 0..=data.len() {
            let mut h = LeafHasher::new();
            h.update(&data[..split]);
            let copy = h.clone();
            h.update(&data[split..]);
            assert_eq!(h.finish(), leaf_hash(&data), "split at {split}");
            let mut again = copy;
            again.update(&data[split..]);
            assert_eq!(again.finish(), leaf_hash(&data));
        }
    }

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(
            Hex(&empty_root()).to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn node_hash_matches_streaming_definition() {
        let (l, r) = (leaf_hash(b"l"), leaf_hash(b"r"));
        let want: Hash = Sha256::new()
            .chain_update([NODE_PREFIX])
            .chain_update(l)
            .chain_update(r)
            .finalize()
            .into();
        assert_eq!(node_hash(&l, &r), want);
        assert_ne!(node_hash(&l, &r), node_hash(&r, &l));
    }
}
