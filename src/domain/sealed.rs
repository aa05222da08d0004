//! Codes a call must be able to say (read-code mode): sealed with XChaCha20-Poly1305 under a
//! key derived from the server secret, bound to their verification's id, opened only to be
//! said. Without the secret a sealed code says nothing, and the keyed hash stored beside it
//! cannot be searched either: a six-digit code cannot be found offline from the store alone.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::Sha256;

/// What sets the sealing key apart from the other uses of the server secret.
const KEY_LABEL: &[u8] = b"callverify/code-seal/v1";
const NONCE_LEN: usize = 24;

/// Seals and opens codes with the key derived from the server secret.
#[derive(Clone)]
pub struct CodeSealer {
    cipher: XChaCha20Poly1305,
}

/// A sealed code that does not open: another secret, another verification, or altered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the sealed code does not open with this secret (was `secret` changed?)")]
pub struct Unsealable;

impl CodeSealer {
    /// The sealer of `server_key` (the secret the code hashes are keyed with).
    pub fn new(server_key: &[u8]) -> Self {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(server_key).expect("HMAC takes any key");
        mac.update(KEY_LABEL);
        let key = mac.finalize().into_bytes();
        Self {
            cipher: XChaCha20Poly1305::new(&key),
        }
    }

    /// `code` of verification `id`, sealed: hex of a random nonce and the ciphertext.
    pub fn seal(&self, id: &str, code: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: code.as_bytes(),
                    aad: id.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 seals any short message");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        hex::encode(out)
    }

    /// The code sealed in `sealed` for verification `id`.
    pub fn open(&self, id: &str, sealed: &str) -> Result<String, Unsealable> {
        let bytes = hex::decode(sealed).map_err(|_| Unsealable)?;
        if bytes.len() <= NONCE_LEN {
            return Err(Unsealable);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let code = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: id.as_bytes(),
                },
            )
            .map_err(|_| Unsealable)?;
        String::from_utf8(code).map_err(|_| Unsealable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_code_opens_only_with_its_secret_and_id() {
        let sealer = CodeSealer::new(b"secret-one");
        let sealed = sealer.seal("vf_1", "042917");
        assert!(!sealed.contains("042917"));
        assert_eq!(sealer.open("vf_1", &sealed), Ok("042917".into()));
        assert_eq!(sealer.open("vf_2", &sealed), Err(Unsealable));
        assert_eq!(
            CodeSealer::new(b"secret-two").open("vf_1", &sealed),
            Err(Unsealable)
        );
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 1;
        altered[last] = if altered[last] == b'0' { b'1' } else { b'0' };
        let altered = String::from_utf8(altered).unwrap();
        assert_eq!(sealer.open("vf_1", &altered), Err(Unsealable));
        assert_eq!(sealer.open("vf_1", "zz"), Err(Unsealable));
        assert_eq!(
            sealer.open("vf_1", &"00".repeat(NONCE_LEN)),
            Err(Unsealable)
        );
    }

    #[test]
    fn the_same_code_seals_differently_each_time() {
        let sealer = CodeSealer::new(b"secret-one");
        assert_ne!(sealer.seal("vf_1", "1234"), sealer.seal("vf_1", "1234"));
    }
}
