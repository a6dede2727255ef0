//! C2SP signed notes (<https://c2sp.org/signed-note>) with Ed25519 keys, and
//! transparency log checkpoints (<https://c2sp.org/tlog-checkpoint>): the
//! format in which Custos publishes and auditors check its log roots.
//!
//! The crate is pure: no IO, no async, no logging. Randomness is only used
//! to generate keys, and comes in through the caller's RNG.
//!
//! - [`Signer`] and [`Verifier`] hold a named Ed25519 key and read and write
//!   the standard key encodings (`PRIVATE+KEY+name+id+data` and
//!   `name+id+data`), compatible with `golang.org/x/mod/sumdb/note`.
//! - [`Signer::sign`] turns a note body into a signed note, and [`open`]
//!   checks a signed note against the verifiers the caller trusts.
//! - [`Checkpoint`] is the strict tlog-checkpoint body: origin, tree size,
//!   root hash and optional extension lines.
//!
//! ```
//! use custos_note::{Checkpoint, Signer, open};
//!
//! let signer = Signer::generate("example.com/log", &mut rand::rngs::OsRng)?;
//! let checkpoint = Checkpoint::new("example.com/log", 3, [7; 32], Vec::new())?;
//! let signed = signer.sign(&checkpoint.to_body())?;
//!
//! let note = open(signed.as_bytes(), &[signer.verifier()])?;
//! assert_eq!(Checkpoint::parse(note.body())?, checkpoint);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod checkpoint;
mod key;
mod note;

pub use checkpoint::{Checkpoint, CheckpointError};
pub use key::{ALG_ED25519, KeyError, Signer, Verifier};
pub use note::{MAX_SIGNATURES, Note, NoteError, Signature, open, sign};
