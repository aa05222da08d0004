//! Identifiers and secret tokens: random, without look-alike letters, recognised by shape
//! before any lookup.

use rand::rngs::OsRng;
use rand::Rng;
use sha2::{Digest, Sha256};

const ID_PREFIX: &str = "vf_";
const ID_ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
/// The same letters in ASCII order, for the part of an id that must sort as it counts.
const SORTED_ALPHABET: &[u8] = b"23456789abcdefghijkmnpqrstuvwxyz";
/// Characters of creation time in a verification id: 45 bits of milliseconds, to 3084.
const TIME_CHARS: usize = 9;
/// Random characters after the time: 75 bits.
const RANDOM_CHARS: usize = 15;

/// `vf_`, the creation time `now_ms` in 9 characters, then 15 random characters (75 bits).
///
/// Ids made later sort after earlier ones, as UUIDv7 and ULID do: the indexes keyed by a
/// verification id (its own, its calls', its code checks') then grow at one end, so the
/// rows a busy minute writes share a few pages instead of landing on a page each (README,
/// Performance). Unguessability rests on the random part alone.
pub fn new_verification_id(now_ms: i64) -> String {
    let time = u64::try_from(now_ms).unwrap_or(0);
    let mut id = String::with_capacity(ID_PREFIX.len() + TIME_CHARS + RANDOM_CHARS);
    id.push_str(ID_PREFIX);
    id.extend((0..TIME_CHARS).rev().map(|i| {
        let digit = (time >> (5 * i)) & 31;
        char::from(SORTED_ALPHABET[usize::try_from(digit).expect("five bits")])
    }));
    id.push_str(&random_token("", RANDOM_CHARS));
    id
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
        let a = new_verification_id(1_764_900_000_000);
        assert_ne!(a, new_verification_id(1_764_900_000_000));
        assert!(valid_id(&a));
        assert_eq!(a.len(), 27);
        for bad in ["", "vf_", "x", "vf_a b", "vf_a;DROP", &"vf_a".repeat(20)] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn ids_sort_by_creation_time() {
        assert!(SORTED_ALPHABET.windows(2).all(|w| w[0] < w[1]));
        let mut sorted = ID_ALPHABET.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, SORTED_ALPHABET, "the same letters");
        // A millisecond later, a second later, a year later: always after; the order holds
        // whatever the random part.
        let times = [
            0,
            1,
            31,
            32,
            1_000,
            1_764_900_000_000,
            1_764_900_000_001,
            1_796_436_000_000,
        ];
        for pair in times.windows(2) {
            for _ in 0..20 {
                let (earlier, later) = (new_verification_id(pair[0]), new_verification_id(pair[1]));
                assert!(
                    earlier < later,
                    "{earlier} (at {}) < {later} (at {})",
                    pair[0],
                    pair[1]
                );
            }
        }
        // The time part says when; the random part differs between ids of one millisecond.
        let (a, b) = (
            new_verification_id(1_764_900_000_000),
            new_verification_id(1_764_900_000_000),
        );
        assert_eq!(
            a[..ID_PREFIX.len() + TIME_CHARS],
            b[..ID_PREFIX.len() + TIME_CHARS]
        );
        assert_ne!(
            a[ID_PREFIX.len() + TIME_CHARS..],
            b[ID_PREFIX.len() + TIME_CHARS..]
        );
        assert!(
            valid_id(&new_verification_id(-5)),
            "a clock before 1970 still makes an id"
        );
    }
}
