//! Identifiers and secret tokens: random, without look-alike letters, recognised by shape
//! before any lookup.

use rand::rngs::OsRng;
use rand::Rng;
use sha2::{Digest, Sha256};

const ID_PREFIX: &str = "vf_";
const ID_ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";

/// `vf_` and 24 characters from a 32-letter alphabet: 120 random bits.
pub fn new_verification_id() -> String {
    random_token(ID_PREFIX, 24)
}

/// `prefix` and `len` random characters from a 32-letter alphabet without look-alikes.
pub fn random_token(prefix: &str, len: usize) -> String {
    let mut token = String::from(prefix);
    token.extend((0..len).map(|_| char::from(ID_ALPHABET[OsRng.gen_range(0..ID_ALPHABET.len())])));
    token
}

/// Ids come from callers (AGI arguments, URLs): anything not shaped like one is unknown.
pub fn valid_id(id: &str) -> bool {
    (ID_PREFIX.len() + 1..=64).contains(&id.len())
        && id.starts_with(ID_PREFIX)
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// How a high-entropy secret token (an API key, a console session) is stored: 160 random
/// bits or more, so a plain hash cannot be reversed by guessing.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_and_recognised() {
        let a = new_verification_id();
        assert_ne!(a, new_verification_id());
        assert!(valid_id(&a));
        assert_eq!(a.len(), 27);
        for bad in ["", "vf_", "x", "vf_a b", "vf_a;DROP", &"vf_a".repeat(20)] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
