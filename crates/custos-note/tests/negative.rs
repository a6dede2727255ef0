//! Notes and checkpoints an attacker or a bug could produce, each of which
//! must be rejected with the right error.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns fail loudly"
)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use custos_note::{Checkpoint, CheckpointError, KeyError, NoteError, Signer, Verifier, open, sign};
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

const BODY: &str = "example.com/log\n42\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";

fn signer(name: &str, seed: u8) -> Signer {
    Signer::new(name, SigningKey::from_bytes(&[seed; 32])).unwrap()
}

fn log() -> Signer {
    signer("example.com/log", 1)
}

/// The signature lines of a note signed over `body`.
fn signature_lines<'a>(note: &'a str, body: &str) -> &'a str {
    note.strip_prefix(body).unwrap().strip_prefix('\n').unwrap()
}

fn signature_line(note: &str) -> &str {
    signature_lines(note, BODY)
}

#[test]
fn round_trip() {
    let note = log().sign(BODY).unwrap();
    let opened = open(note.as_bytes(), &[log().verifier()]).unwrap();
    assert_eq!(opened.body(), BODY);
    assert_eq!(opened.verified().len(), 1);
    assert_eq!(opened.verified()[0].key_id, log().key_id());
}

#[test]
fn tampered_body() {
    let note = log().sign(BODY).unwrap().replacen("42", "43", 1);
    assert_eq!(
        open(note.as_bytes(), &[log().verifier()]),
        Err(NoteError::InvalidSignature {
            name: "example.com/log".into(),
            key_id: log().key_id()
        })
    );
}

#[test]
fn wrong_key() {
    let note = log().sign(BODY).unwrap();
    let other = signer("example.com/other", 2).verifier();
    assert!(matches!(
        open(note.as_bytes(), &[other]),
        Err(NoteError::Unverified { unverified }) if unverified.len() == 1
    ));
}

#[test]
fn stripped_signature() {
    let note = log().sign(BODY).unwrap();
    let stripped = note.replace(signature_line(&note), "");
    assert_eq!(
        open(stripped.as_bytes(), &[log().verifier()]),
        Err(NoteError::NoSignatures)
    );
    assert_eq!(
        open(BODY.as_bytes(), &[log().verifier()]),
        Err(NoteError::MissingSignatureBlock)
    );
}

#[test]
fn different_key_with_the_same_name_is_ignored() {
    // Same name, different key, hence a different key ID: an unknown key.
    let impostor = signer("example.com/log", 3);
    assert_ne!(impostor.key_id(), log().key_id());
    let note = impostor.sign(BODY).unwrap();
    assert!(matches!(
        open(note.as_bytes(), &[log().verifier()]),
        Err(NoteError::Unverified { .. })
    ));
}

#[test]
fn different_key_claiming_the_known_key_id_fails_verification() {
    // The impostor copies the known key's ID into its signature line.
    let impostor = signer("example.com/log", 3);
    let note = impostor.sign(BODY).unwrap();
    let line = signature_line(&note);
    let b64 = line.trim_end().rsplit(' ').next().unwrap();
    let mut raw = STANDARD.decode(b64).unwrap();
    raw[..4].copy_from_slice(&log().key_id().to_be_bytes());
    let forged = note.replace(b64, &STANDARD.encode(&raw));
    assert_eq!(
        open(forged.as_bytes(), &[log().verifier()]),
        Err(NoteError::InvalidSignature {
            name: "example.com/log".into(),
            key_id: log().key_id()
        })
    );
}

#[test]
fn conflicting_signatures_from_one_key() {
    let good = log().sign(BODY).unwrap();
    let other_body = BODY.replace("42", "41");
    let other = log().sign(&other_body).unwrap();
    let msg = format!("{good}{}", signature_lines(&other, &other_body));
    assert_eq!(
        open(msg.as_bytes(), &[log().verifier()]),
        Err(NoteError::ConflictingSignatures {
            name: "example.com/log".into(),
            key_id: log().key_id()
        })
    );
    // Identical repeats are harmless.
    let msg = format!("{good}{}", signature_line(&good));
    assert!(open(msg.as_bytes(), &[log().verifier()]).is_ok());
}

#[test]
fn bad_signature_lines() {
    let note = log().sign(BODY).unwrap();
    let line = signature_line(&note).to_owned();
    let b64 = line.trim_end().rsplit(' ').next().unwrap().to_owned();
    let cases = [
        (
            line.replace(&b64, "not*base64"),
            "signature is not canonical base64",
        ),
        (
            line.replace(&b64, &b64[..b64.len() - 1]),
            "signature is not canonical base64",
        ),
        // Non-zero padding bits: Go would accept this, it is still malleable text.
        (
            line.replace(
                &b64,
                &format!(
                    "{}{}=",
                    &b64[..b64.len() - 2],
                    nudge(&b64[b64.len() - 2..b64.len() - 1])
                ),
            ),
            "signature is not canonical base64",
        ),
        (
            line.replace(&b64, "AAAAAA=="),
            "signature is shorter than 5 bytes",
        ),
        (line.replace(&b64, ""), "signature is shorter than 5 bytes"),
        (line.replace(" ", "  "), "invalid key name"),
        (
            line.replacen("\u{2014}", "-", 1),
            "must start with an em dash and a space",
        ),
        (
            line.replacen("\u{2014} ", "\u{2014}", 1),
            "must start with an em dash and a space",
        ),
        (
            "\u{2014} example.com/log\n".into(),
            "missing space between key name and signature",
        ),
        (
            line.replacen("example.com/log", "a+b", 1),
            "invalid key name",
        ),
        (
            line.replacen("example.com/log", "a\u{a0}b", 1),
            "invalid key name",
        ),
    ];
    for (bad, reason) in cases {
        let msg = format!("{BODY}\n{bad}");
        assert_eq!(
            open(msg.as_bytes(), &[log().verifier()]),
            Err(NoteError::MalformedSignature { line: 1, reason }),
            "{bad:?}"
        );
    }
}

/// The next base64 character, to set padding bits that must be zero.
fn nudge(c: &str) -> char {
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let i = alphabet.find(c).unwrap();
    alphabet.chars().nth((i + 1) % 64).unwrap()
}

#[test]
fn control_characters_and_crlf() {
    let note = log().sign(BODY).unwrap();
    let crlf = note.replace('\n', "\r\n");
    assert!(matches!(
        open(crlf.as_bytes(), &[log().verifier()]),
        Err(NoteError::ControlCharacter { byte: b'\r', .. })
    ));
    let tab = note.replacen("example.com/log\n", "example.com/log\t\n", 1);
    assert!(matches!(
        open(tab.as_bytes(), &[log().verifier()]),
        Err(NoteError::ControlCharacter { byte: b'\t', .. })
    ));
}

#[test]
fn signing_rejects_bodies_that_could_not_be_opened() {
    assert_eq!(
        log().sign("no newline"),
        Err(NoteError::MissingFinalNewline)
    );
    assert_eq!(log().sign(""), Err(NoteError::MissingFinalNewline));
    assert_eq!(
        log().sign("tab\there\n"),
        Err(NoteError::ControlCharacter {
            byte: b'\t',
            offset: 3
        })
    );
    assert_eq!(sign(BODY, &[]), Err(NoteError::NoSignatures));
}

#[test]
fn multiple_signers() {
    let (old, new) = (log(), signer("example.com/log", 9));
    let note = sign(BODY, &[&old, &new]).unwrap();
    for v in [old.verifier(), new.verifier()] {
        let opened = open(note.as_bytes(), std::slice::from_ref(&v)).unwrap();
        assert_eq!(opened.verified()[0].key_id, v.key_id());
        assert_eq!(opened.unverified().len(), 1);
    }
}

#[test]
fn invalid_key_names() {
    for name in ["", "a b", "a+b", "a\nb", "a\u{2028}b"] {
        let err = KeyError::InvalidName { name: name.into() };
        assert_eq!(
            Signer::new(name, SigningKey::from_bytes(&[1; 32])).map(drop),
            Err(err.clone())
        );
        assert_eq!(
            Verifier::new(name, SigningKey::from_bytes(&[1; 32]).verifying_key()).map(drop),
            Err(err)
        );
    }
}

/// Encodes arbitrary key data under a name with the matching key ID, so that
/// only the property under test is wrong.
fn vkey_with_valid_id(name: &str, data: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(name)
        .chain_update(b"\n")
        .chain_update(data)
        .finalize();
    format!("{name}+{}+{}", hex(&digest[..4]), STANDARD.encode(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn malformed_verifier_keys() {
    let good = log().verifier().to_vkey();
    let cases = [
        (
            vkey_with_valid_id("n", &[0x01; 34]),
            KeyError::Malformed {
                reason: "ed25519 key data must be 32 bytes",
            },
        ),
        (
            vkey_with_valid_id("n", &[0x01; 32]),
            KeyError::Malformed {
                reason: "ed25519 key data must be 32 bytes",
            },
        ),
        (
            vkey_with_valid_id("n", &[0x02; 33]),
            KeyError::UnsupportedAlgorithm { alg: 0x02 },
        ),
        (
            vkey_with_valid_id("n", &[]),
            KeyError::Malformed {
                reason: "key data is empty",
            },
        ),
        (
            good.to_uppercase()
                .replacen("EXAMPLE.COM/LOG", "example.com/log", 1),
            KeyError::Malformed {
                reason: "key id must be 8 lowercase hex digits",
            },
        ),
        (
            "example.com/log".into(),
            KeyError::Malformed {
                reason: "missing '+' after the key name",
            },
        ),
        (
            "example.com/log+01234567".into(),
            KeyError::Malformed {
                reason: "missing '+' after the key id",
            },
        ),
        (
            good.replacen('+', "++", 1),
            KeyError::Malformed {
                reason: "key id must be 8 lowercase hex digits",
            },
        ),
    ];
    for (vkey, want) in cases {
        assert_eq!(Verifier::from_vkey(&vkey), Err(want), "{vkey}");
    }
    // A 32-byte string that is not a curve point: about half of all
    // candidate y-coordinates have no matching x.
    let not_a_point = (2u8..=255)
        .map(|y| {
            let mut data = [0u8; 33];
            data[0] = 0x01;
            data[1] = y;
            data
        })
        .find(|d| ed25519_dalek::VerifyingKey::from_bytes(d[1..].try_into().unwrap()).is_err())
        .unwrap();
    let vkey = vkey_with_valid_id("n", &not_a_point);
    assert!(
        matches!(Verifier::from_vkey(&vkey), Err(KeyError::InvalidPublicKey)),
        "{vkey}"
    );
}

#[test]
fn malformed_checkpoint_bodies() {
    let root = STANDARD.encode([7u8; 32]);
    let cases = [
        (String::new(), CheckpointError::MissingFinalNewline),
        (
            format!("o\n1\n{root}"),
            CheckpointError::MissingFinalNewline,
        ),
        ("o\n1\n".into(), CheckpointError::TooFewLines { lines: 2 }),
        ("\n".into(), CheckpointError::TooFewLines { lines: 1 }),
        (format!("\n1\n{root}\n"), CheckpointError::EmptyOrigin),
        (format!("o\n01\n{root}\n"), CheckpointError::InvalidSize),
        (format!("o\n-1\n{root}\n"), CheckpointError::InvalidSize),
        (format!("o\n+1\n{root}\n"), CheckpointError::InvalidSize),
        (format!("o\n\n{root}\n"), CheckpointError::InvalidSize),
        (format!("o\n1 \n{root}\n"), CheckpointError::InvalidSize),
        (
            format!("o\n18446744073709551616\n{root}\n"),
            CheckpointError::InvalidSize,
        ),
        ("o\n1\nAAAA\n".into(), CheckpointError::InvalidRoot),
        (
            format!("o\n1\n{}\n", STANDARD.encode([7u8; 33])),
            CheckpointError::InvalidRoot,
        ),
        (
            format!("o\n1\n{}\n", root.trim_end_matches('=')),
            CheckpointError::InvalidRoot,
        ),
        (format!("o\n1\n{root}x\n"), CheckpointError::InvalidRoot),
        ("o\n1\n\n".into(), CheckpointError::InvalidRoot),
        (
            format!("o\n1\n{root}\n\n"),
            CheckpointError::EmptyExtension { line: 4 },
        ),
        (
            format!("o\n1\n{root}\next\n\n"),
            CheckpointError::EmptyExtension { line: 5 },
        ),
        (
            format!("o\r\n1\n{root}\n"),
            CheckpointError::ControlCharacter { line: 1 },
        ),
        (
            format!("o\n1\n{root}\ne\0\n"),
            CheckpointError::ControlCharacter { line: 4 },
        ),
    ];
    for (body, want) in cases {
        assert_eq!(Checkpoint::parse(&body), Err(want), "{body:?}");
    }
    // And a valid one with extensions, to show the cases above are not
    // failing for some other reason.
    let body = format!("o\n0\n{root}\nfirst ext\nsecond\n");
    let cp = Checkpoint::parse(&body).unwrap();
    assert_eq!(cp.extensions(), ["first ext", "second"]);
    assert_eq!(cp.to_body(), body);
}

#[test]
fn checkpoint_constructor_rejects_unencodable_values() {
    let new = |origin: &str, ext: Vec<&str>| {
        Checkpoint::new(
            origin,
            1,
            [0; 32],
            ext.into_iter().map(String::from).collect(),
        )
    };
    assert_eq!(new("", vec![]), Err(CheckpointError::EmptyOrigin));
    assert_eq!(
        new("a\nb", vec![]),
        Err(CheckpointError::ControlCharacter { line: 1 })
    );
    assert_eq!(
        new("o", vec![""]),
        Err(CheckpointError::EmptyExtension { line: 4 })
    );
    assert_eq!(
        new("o", vec!["x", "y\n"]),
        Err(CheckpointError::ControlCharacter { line: 5 })
    );
    assert!(new("origin with spaces+plus", vec!["x"]).is_ok());
}
