//! Known-answer tests from `golang.org/x/mod/sumdb/note` (`note_test.go`):
//! the PeterNeumann and EnochRoot keys, the Neumann quote and its signed
//! note must match byte for byte, and the Go test's malformed notes and key
//! manglings must be rejected. Also the example body from the
//! tlog-checkpoint spec.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns fail loudly"
)]

use custos_note::{
    Checkpoint, KeyError, MAX_SIGNATURES, NoteError, Signature, Signer, Verifier, open,
};
use secrecy::ExposeSecret;

const PETER_SKEY: &str =
    "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";

const TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n";
const PETER_SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
const ENOCH_SIG: &str = "\u{2014} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

fn peter() -> Signature {
    Signature {
        name: "PeterNeumann".into(),
        key_id: 0xc74f_20a3,
        base64: "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=".into(),
    }
}

fn enoch() -> Signature {
    Signature {
        name: "EnochRoot".into(),
        key_id: 0xaf0c_fe78,
        base64: "rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=".into(),
    }
}

fn verifier(vkey: &str) -> Verifier {
    Verifier::from_vkey(vkey).unwrap()
}

#[test]
fn sign_matches_go_byte_for_byte() {
    let signer = Signer::from_skey(PETER_SKEY).unwrap();
    let note = signer.sign(TEXT).unwrap();
    let want = format!("{TEXT}\n{PETER_SIG}");
    assert_eq!(note, want);
    assert_eq!(
        note,
        "If you think cryptography is the answer to your problem,\n\
         then you don't know what your problem is.\n\
         \n\
         \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
    );
}

#[test]
fn keys_round_trip_and_match_go() {
    let signer = Signer::from_skey(PETER_SKEY).unwrap();
    assert_eq!(signer.name(), "PeterNeumann");
    assert_eq!(signer.key_id(), 0xc74f_20a3);
    assert_eq!(signer.to_skey().expose_secret(), PETER_SKEY);
    assert_eq!(signer.verifier(), verifier(PETER_VKEY));
    assert_eq!(signer.verifier().to_vkey(), PETER_VKEY);
    assert_eq!(verifier(PETER_VKEY).to_string(), PETER_VKEY);
    assert_eq!(
        PETER_VKEY.parse::<Verifier>().unwrap(),
        verifier(PETER_VKEY)
    );
    assert_eq!(verifier(ENOCH_VKEY).key_id(), 0xaf0c_fe78);
}

#[test]
fn open_one_known_one_unknown() {
    let msg = format!("{TEXT}\n{PETER_SIG}{ENOCH_SIG}");
    let note = open(msg.as_bytes(), &[verifier(PETER_VKEY)]).unwrap();
    assert_eq!(note.body(), TEXT);
    assert_eq!(note.verified(), [peter()]);
    assert_eq!(note.unverified(), [enoch()]);
}

#[test]
fn open_both_known() {
    let msg = format!("{TEXT}\n{PETER_SIG}{ENOCH_SIG}");
    let note = open(
        msg.as_bytes(),
        &[verifier(PETER_VKEY), verifier(ENOCH_VKEY)],
    )
    .unwrap();
    assert_eq!(note.verified(), [peter(), enoch()]);
    assert!(note.unverified().is_empty());
}

#[test]
fn open_none_known_is_an_error_that_reports_the_signatures() {
    let msg = format!("{TEXT}\n{PETER_SIG}{ENOCH_SIG}");
    let err = open(msg.as_bytes(), &[]).unwrap_err();
    assert_eq!(
        err,
        NoteError::Unverified {
            unverified: vec![peter(), enoch()]
        }
    );
    assert_eq!(err.to_string(), "note has no verifiable signatures");
}

#[test]
fn duplicated_verifier_is_ambiguous_only_when_used() {
    let list = [
        verifier(ENOCH_VKEY),
        verifier(PETER_VKEY),
        verifier(ENOCH_VKEY),
    ];
    let err = open(format!("{TEXT}\n{ENOCH_SIG}").as_bytes(), &list).unwrap_err();
    assert_eq!(
        err,
        NoteError::AmbiguousKey {
            name: "EnochRoot".into(),
            key_id: 0xaf0c_fe78
        }
    );
    assert!(open(format!("{TEXT}\n{PETER_SIG}").as_bytes(), &list).is_ok());
}

#[test]
fn too_many_signatures() {
    let msg = format!("{TEXT}\n{}", PETER_SIG.repeat(MAX_SIGNATURES + 1));
    let too_many = Err(NoteError::TooManySignatures {
        max: MAX_SIGNATURES,
    });
    assert_eq!(open(msg.as_bytes(), &[verifier(PETER_VKEY)]), too_many);
    assert_eq!(open(msg.as_bytes(), &[]), too_many);
    // Exactly the limit is fine, and identical repeats count once.
    let msg = format!("{TEXT}\n{}", PETER_SIG.repeat(MAX_SIGNATURES));
    let note = open(msg.as_bytes(), &[verifier(PETER_VKEY)]).unwrap();
    assert_eq!(note.verified(), [peter()]);
}

#[test]
fn invalid_signature_from_known_key() {
    let bad = format!("{}ABCD{}", &PETER_SIG[..60], &PETER_SIG[60..]);
    let msg = format!("{TEXT}\n{bad}");
    assert_eq!(
        open(msg.as_bytes(), &[verifier(PETER_VKEY)]).unwrap_err(),
        NoteError::InvalidSignature {
            name: "PeterNeumann".into(),
            key_id: 0xc74f_20a3
        }
    );
}

#[test]
fn repeated_signatures_are_dropped_and_different_unknown_ones_kept() {
    let enoch_abcd = format!("{}ABCD{}", &ENOCH_SIG[..60], &ENOCH_SIG[60..]);
    let msg = format!("{TEXT}\n{PETER_SIG}{PETER_SIG}{ENOCH_SIG}{ENOCH_SIG}{enoch_abcd}");
    let note = open(msg.as_bytes(), &[verifier(PETER_VKEY)]).unwrap();
    assert_eq!(note.verified(), [peter()]);
    let mut abcd = enoch();
    abcd.base64
        .insert_str(60 - "\u{2014} EnochRoot ".len(), "ABCD");
    assert_eq!(note.unverified(), [enoch(), abcd]);
}

#[test]
fn go_malformed_notes_are_rejected() {
    let peter_sig_no_newline = &PETER_SIG[..PETER_SIG.len() - 1];
    let cases: Vec<(Vec<u8>, NoteError)> = vec![
        (TEXT.into(), NoteError::MissingSignatureBlock),
        (format!("{TEXT}\n").into(), NoteError::NoSignatures),
        (
            format!("{TEXT}\n{peter_sig_no_newline}").into(),
            NoteError::MissingFinalNewline,
        ),
        (
            format!("\x01{TEXT}\n{PETER_SIG}").into(),
            NoteError::ControlCharacter { byte: 1, offset: 0 },
        ),
        (
            [b"\xff".as_slice(), TEXT.as_bytes(), b"\n", PETER_SIG.as_bytes()].concat(),
            NoteError::InvalidUtf8 { offset: 0 },
        ),
        (
            format!("{TEXT}\n\u{2014} Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=").into(),
            NoteError::MissingFinalNewline,
        ),
        (
            format!("{TEXT}\n\u{2014} Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n").into(),
            // The name ends at the first space, so "Name x08go..." is the
            // signature text.
            NoteError::MalformedSignature {
                line: 1,
                reason: "signature is not canonical base64",
            },
        ),
        (
            format!("{TEXT}\n{PETER_SIG}Unexpected line.\n").into(),
            NoteError::MalformedSignature {
                line: 2,
                reason: "must start with an em dash and a space",
            },
        ),
    ];
    for (msg, want) in cases {
        assert_eq!(
            open(&msg, &[verifier(PETER_VKEY)]),
            Err(want),
            "{}",
            String::from_utf8_lossy(&msg)
        );
    }
}

/// Every proper substring and every single-byte increment of a key must be
/// rejected, as in Go's `TestNewVerifier` and `TestNewSigner`.
fn assert_manglings_rejected(key: &str, parse: impl Fn(&str) -> Result<(), KeyError>) {
    parse(key).unwrap();
    let b = key.as_bytes();
    let mut tried = 0;
    for i in 0..=b.len() {
        for j in i + 1..=b.len() {
            if i == 0 && j == b.len() {
                continue;
            }
            let sub = std::str::from_utf8(&b[i..j]).unwrap();
            assert!(parse(sub).is_err(), "substring {sub:?} accepted");
            tried += 1;
        }
    }
    for i in 0..b.len() {
        let mut m = b.to_vec();
        m[i] += 1;
        let m = String::from_utf8(m).unwrap();
        assert!(parse(&m).is_err(), "mangled {m:?} accepted");
        tried += 1;
    }
    assert!(tried > b.len() * b.len() / 2);
}

#[test]
fn verifier_key_manglings_are_rejected() {
    assert_manglings_rejected(PETER_VKEY, |k| Verifier::from_vkey(k).map(drop));
    // Wrong-length key and unknown algorithm, each with a matching key ID.
    // (Go rejects the first for its length; its base64 also has non-zero
    // padding bits, which this crate already refuses.)
    assert!(matches!(
        Verifier::from_vkey(
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
        ),
        Err(KeyError::Malformed { .. })
    ));
    assert_eq!(
        Verifier::from_vkey("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"),
        Err(KeyError::UnsupportedAlgorithm { alg: 0x65 })
    );
}

#[test]
fn signer_key_manglings_are_rejected() {
    assert_manglings_rejected(PETER_SKEY, |k| Signer::from_skey(k).map(drop));
}

#[test]
fn key_errors_do_not_leak_private_key_material() {
    let seed_b64 = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    for bad in [
        PETER_SKEY.replace("c74f20a3", "c74f20a4"),
        PETER_SKEY.replace("KEY+", "KEY+x"),
        PETER_SKEY.replace("+AYEK", "+AYEL"),
        format!("{PETER_SKEY}A"),
    ] {
        let err = Signer::from_skey(&bad).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(&seed_b64[4..12]), "{shown}");
    }
}

#[test]
fn tlog_checkpoint_spec_example() {
    let body =
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
    let cp = Checkpoint::parse(body).unwrap();
    assert_eq!(cp.origin(), "example.com/behind-the-sofa");
    assert_eq!(cp.size(), 20_852_163);
    assert_eq!(cp.root()[..4], [0x0a, 0xc5, 0x18, 0x6a]);
    assert!(cp.extensions().is_empty());
    assert_eq!(cp.to_body(), body);
}
