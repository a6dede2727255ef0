//! RFC 6962 Merkle trees for the Custos request log: leaf and node hashing,
//! batch and incremental roots, and inclusion and consistency proofs.
//!
//! The crate is pure: no IO, no async, no logging and no global state, so
//! the offline verifier can depend on it without trusting any writer code.
//!
//! - [`leaf_hash`], [`node_hash`] and [`empty_root`] are the RFC 6962 hasher.
//! - [`root`] computes the Merkle Tree Hash of a list of leaf hashes.
//! - [`Frontier`] is the incremental tree the ledger appends to. It keeps
//!   one hash per set bit of the tree size and can be stored and restored
//!   with [`Frontier::hashes`] and [`Frontier::from_parts`].
//! - [`inclusion_proof`] and [`consistency_proof`] build proofs from the
//!   full list of leaf hashes.
//! - [`verify_inclusion`], [`root_from_inclusion_proof`] and
//!   [`verify_consistency`] check proofs with the semantics of
//!   transparency-dev/merkle and its published test vectors.
//!
//! ```
//! use custos_merkle::{Frontier, inclusion_proof, leaf_hash, root, verify_inclusion};
//!
//! let leaves: Vec<_> = (0u8..5).map(|i| leaf_hash(&[i])).collect();
//! let mut tree = Frontier::new();
//! for leaf in &leaves {
//!     tree.append(*leaf)?;
//! }
//! assert_eq!(tree.root(), root(&leaves));
//!
//! let proof = inclusion_proof(&leaves, 3)?;
//! verify_inclusion(&leaves[3], 3, 5, &proof, &tree.root())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod frontier;
mod hash;
mod proof;
mod verify;

pub use frontier::Frontier;
pub use hash::{Hash, LeafHasher, empty_root, leaf_hash, node_hash};
pub use proof::{Error, consistency_proof, inclusion_proof, root};
pub use verify::{VerifyError, root_from_inclusion_proof, verify_consistency, verify_inclusion};
