//! Property tests: hostile input never panics `open` or `Checkpoint::parse`,
//! every single-byte edit of a signed note is rejected, and keys, notes and
//! checkpoints round-trip.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns fail loudly"
)]

use custos_note::{Checkpoint, Signer, Verifier, open};
use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const PETER_NOTE: &str = "If you think cryptography is the answer to your problem,\n\
                          then you don't know what your problem is.\n\
                          \n\
                          \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

fn peter() -> Verifier {
    Verifier::from_vkey(PETER_VKEY).unwrap()
}

/// Text without control characters, as a note body or checkpoint line allows.
fn line() -> impl Strategy<Value = String> {
    "[^\\x00-\\x1f]{1,40}"
}

fn key_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9./_\\-\u{e9}\u{4e16}]{1,30}"
}

proptest! {
    #[test]
    fn open_never_panics_on_bytes(msg in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = open(&msg, &[peter()]);
    }

    #[test]
    fn open_never_panics_on_note_like_text(
        body in "([^\\x00-\\x1f]{0,20}\n){0,4}",
        sigs in proptest::collection::vec("\u{2014} [^\\x00-\\x1f ]{0,12} [A-Za-z0-9+/=]{0,100}", 0..4),
        tail in "\n?",
    ) {
        let msg = format!("{body}\n{}{tail}", sigs.join("\n"));
        let _ = open(msg.as_bytes(), &[peter()]);
    }

    #[test]
    fn every_single_byte_edit_of_a_signed_note_is_rejected(at in any::<usize>(), xor in 1u8..=255) {
        let mut msg = PETER_NOTE.as_bytes().to_vec();
        let i = at % msg.len();
        msg[i] ^= xor;
        prop_assert!(open(&msg, &[peter()]).is_err(), "edit at {} accepted", i);
    }

    #[test]
    fn parse_never_panics(body in "\\PC{0,200}") {
        let _ = Checkpoint::parse(&body);
    }

    #[test]
    fn parse_never_panics_on_checkpoint_like_text(
        origin in "[^\\x00-\\x09\\x0b-\\x1f]{0,20}",
        size in "[0-9+\\- ]{0,22}",
        root in "[A-Za-z0-9+/=]{0,48}",
        rest in "(\n[^\\x00-\\x09\\x0b-\\x1f]{0,10}){0,3}\n?",
    ) {
        let _ = Checkpoint::parse(&format!("{origin}\n{size}\n{root}{rest}"));
    }

    #[test]
    fn checkpoints_round_trip(
        origin in line(),
        size in any::<u64>(),
        root in any::<[u8; 32]>(),
        extensions in proptest::collection::vec(line(), 0..4),
    ) {
        let cp = Checkpoint::new(origin, size, root, extensions).unwrap();
        let body = cp.to_body();
        prop_assert_eq!(Checkpoint::parse(&body), Ok(cp.clone()));
        prop_assert!(body.ends_with('\n'));
        prop_assert_eq!(body.lines().count(), 3 + cp.extensions().len());
    }

    #[test]
    fn signed_notes_round_trip(
        name in key_name(),
        seed in any::<u64>(),
        body_lines in proptest::collection::vec("[^\\x00-\\x1f]{0,30}", 0..6),
    ) {
        let signer = Signer::generate(&name, &mut StdRng::seed_from_u64(seed)).unwrap();
        let body: String = body_lines.iter().map(|l| format!("{l}\n")).collect();
        let body = if body.is_empty() { "\n".to_owned() } else { body };
        let note = signer.sign(&body).unwrap();
        let opened = open(note.as_bytes(), &[signer.verifier()]).unwrap();
        prop_assert_eq!(opened.body(), body.as_str());
        prop_assert_eq!(opened.verified().len(), 1);
    }

    #[test]
    fn keys_round_trip_and_any_one_character_edit_is_rejected(
        name in key_name(),
        seed in any::<[u8; 32]>(),
        at in any::<usize>(),
        replacement in "[A-Za-z0-9+/=.]",
    ) {
        let signer = Signer::new(&name, SigningKey::from_bytes(&seed)).unwrap();
        let skey = secrecy::ExposeSecret::expose_secret(&signer.to_skey()).to_owned();
        prop_assert_eq!(Signer::from_skey(&skey).unwrap().verifier(), signer.verifier());
        let vkey = signer.verifier().to_vkey();
        prop_assert_eq!(Verifier::from_vkey(&vkey), Ok(signer.verifier()));

        let chars: Vec<char> = vkey.chars().collect();
        let i = at % chars.len();
        let new: char = replacement.chars().next().unwrap();
        prop_assume!(chars[i] != new);
        let mut edited = chars;
        edited[i] = new;
        let edited: String = edited.into_iter().collect();
        prop_assert!(Verifier::from_vkey(&edited).is_err(), "{} accepted", edited);
    }
}
