//! Base62 alphabet helpers shared by key secrets and key IDs.

use rand::{CryptoRng, Rng, RngCore};

/// The base62 alphabet in ASCII order, so that encoded numbers sort like the numbers.
pub(crate) const ALPHABET: &[u8; 62] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Whether `b` is one of the 62 alphabet bytes.
pub(crate) fn is_base62(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// Appends `n` characters drawn uniformly from the alphabet.
///
/// `gen_range` rejects out-of-range samples instead of reducing modulo 62,
/// so every character carries the full log2(62) ≈ 5.95 bits.
pub(crate) fn push_random(out: &mut String, n: usize, rng: &mut (impl CryptoRng + RngCore)) {
    for _ in 0..n {
        let i = rng.gen_range(0..ALPHABET.len());
        out.push(char::from(ALPHABET[i]));
    }
}

/// Encodes `value` as exactly `N` base62 digits, most significant first and
/// left-padded with `0`. `N` must be large enough for `value`: six digits hold
/// 62^6 ≈ 5.7e10 > 2^32, which is all the checksum needs.
pub(crate) fn encode_fixed<const N: usize>(mut value: u64) -> [u8; N] {
    let mut out = [ALPHABET[0]; N];
    for slot in out.iter_mut().rev() {
        // `value % 62` is below 62, so the index is in bounds.
        *slot = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_is_exactly_the_ascii_alphanumerics() {
        assert_eq!(ALPHABET.len(), 62);
        assert!(ALPHABET.windows(2).all(|w| w[0] < w[1]));
        for b in 0..=u8::MAX {
            assert_eq!(ALPHABET.contains(&b), is_base62(b), "{b}");
        }
    }

    #[test]
    fn fixed_encoding_known_answers() {
        assert_eq!(&encode_fixed::<6>(0), b"000000");
        assert_eq!(&encode_fixed::<6>(61), b"00000z");
        assert_eq!(&encode_fixed::<6>(62), b"000010");
        assert_eq!(&encode_fixed::<6>(u64::from(u32::MAX)), b"4gfFC3");
    }
}
