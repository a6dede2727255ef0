//! Property tests of the public API: key format round trips, mutations of
//! valid keys, and hostile input against a table of known key hashes.

use std::collections::HashMap;
use std::sync::OnceLock;

use custos_auth::key::{self, KeyFormatError, KeyHash, KeyHasher, KeyId};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use secrecy::{ExposeSecret, SecretSlice};

const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

#[expect(
    clippy::unwrap_used,
    reason = "clippy sees helpers outside #[test] as non-test code; a bad fixture must fail loudly"
)]
fn hasher() -> KeyHasher {
    KeyHasher::new(&SecretSlice::from(
        b"an example pepper, 32 bytes long".to_vec(),
    ))
    .unwrap()
}

fn key_from_seed(seed: u64) -> String {
    let secret = key::generate(&mut StdRng::seed_from_u64(seed));
    secret.expose_secret().to_owned()
}

/// Hashes of 1000 issued keys, as a store would hold them.
fn known() -> &'static (KeyHasher, HashMap<KeyHash, KeyId>) {
    static KNOWN: OnceLock<(KeyHasher, HashMap<KeyHash, KeyId>)> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let hasher = hasher();
        let mut rng = StdRng::seed_from_u64(99);
        let map = (0..1000)
            .map(|_| {
                let issued = hasher.issue(&mut rng);
                (issued.hash, issued.id)
            })
            .collect();
        (hasher, map)
    })
}

/// The full check a gateway would make; `true` only for a known key.
fn authenticates(input: &str) -> bool {
    let (hasher, map) = known();
    let Ok(parsed) = key::parse(input) else {
        return false;
    };
    let hash = hasher.hash(&parsed);
    map.get_key_value(&hash)
        .is_some_and(|(stored, _)| stored.ct_eq(&hash))
}

/// One single-character edit of `s`: substitute, insert, delete or swap
/// neighbours, at byte `pos` (kept in range), with `c` as the new character.
#[derive(Debug, Clone)]
enum Edit {
    Substitute(usize, char),
    Insert(usize, char),
    Delete(usize),
    Transpose(usize),
    Truncate(usize),
}

fn apply(s: &str, edit: &Edit) -> String {
    let mut b: Vec<char> = s.chars().collect();
    match *edit {
        Edit::Substitute(i, c) => b[i % s.len()] = c,
        Edit::Insert(i, c) => b.insert(i % (s.len() + 1), c),
        Edit::Delete(i) => {
            b.remove(i % s.len());
        }
        Edit::Transpose(i) => b.swap(i % (s.len() - 1), i % (s.len() - 1) + 1),
        Edit::Truncate(i) => b.truncate(i % s.len()),
    }
    b.into_iter().collect()
}

fn any_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::sample::select(ALPHABET).prop_map(char::from),
        1 => any::<char>(),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any_char()).prop_map(|(i, c)| Edit::Substitute(i, c)),
        (any::<usize>(), any_char()).prop_map(|(i, c)| Edit::Insert(i, c)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Transpose),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn generated_keys_round_trip(seed in any::<u64>()) {
        let s = key_from_seed(seed);
        let parsed = key::parse(&s).unwrap();
        prop_assert_eq!(parsed.expose_secret(), s.as_str());
        prop_assert!(s.starts_with(key::PREFIX));
        prop_assert_eq!(s.len(), key::KEY_LEN);
    }

    #[test]
    fn every_single_edit_breaks_the_key(seed in any::<u64>(), edit in edit()) {
        let s = key_from_seed(seed);
        let edited = apply(&s, &edit);
        prop_assume!(edited != s); // substituting a character by itself
        prop_assert!(key::parse(&edited).is_err(), "{:?} accepted", edit);
    }

    #[test]
    fn arbitrary_strings_never_panic_or_authenticate(s in any::<String>()) {
        let _ = key::parse(&s);
        let _ = KeyId::parse(&s);
        let _ = KeyHash::from_hex(&s);
        let _ = key::mask(&s);
        prop_assert!(!authenticates(&s));
    }

    #[test]
    fn arbitrary_bytes_never_panic_or_authenticate(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let s = String::from_utf8_lossy(&bytes);
        prop_assert!(!authenticates(&s));
    }

    #[test]
    fn well_formed_guesses_never_authenticate(
        body in prop::collection::vec(prop::sample::select(ALPHABET), key::RANDOM_LEN),
        sum in prop::collection::vec(prop::sample::select(ALPHABET), key::CHECKSUM_LEN),
    ) {
        // Shaped like a key, so parsing fails only on the checksum; the few
        // that pass it must still not match a known hash.
        let s = format!(
            "{}{}{}",
            key::PREFIX,
            String::from_utf8(body).unwrap(),
            String::from_utf8(sum).unwrap()
        );
        match key::parse(&s) {
            Err(e) => prop_assert_eq!(e, KeyFormatError::BadChecksum),
            Ok(_) => prop_assert!(!authenticates(&s)),
        }
    }

    #[test]
    fn key_hash_hex_round_trips(bytes in any::<[u8; 32]>()) {
        let hash = KeyHash::from_bytes(bytes);
        prop_assert_eq!(KeyHash::from_hex(&hash.to_hex()).unwrap(), hash);
    }

    #[test]
    fn key_ids_round_trip(seed in any::<u64>()) {
        let id = KeyId::generate(&mut StdRng::seed_from_u64(seed));
        prop_assert_eq!(KeyId::parse(id.as_str()).unwrap(), id);
    }
}

#[test]
fn issued_keys_authenticate() {
    // The other side of the properties above: the check can succeed.
    let (hasher, _) = known();
    let mut rng = StdRng::seed_from_u64(99);
    let issued = hasher.issue(&mut rng);
    assert!(authenticates(issued.secret.expose_secret()));
}
