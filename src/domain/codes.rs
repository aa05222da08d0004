//! Confirmation codes: drawn from the OS CSPRNG, stored only as a keyed hash, compared in
//! constant time.

use std::path::Path;

use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::Rng;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Allowed code lengths.
pub const LENGTHS: std::ops::RangeInclusive<u32> = 4..=10;

/// Whether `code` could be a code: 4 to 10 decimal digits.
pub fn is_valid_code(code: &str) -> bool {
    LENGTHS.contains(&(code.len() as u32)) && code.bytes().all(|b| b.is_ascii_digit())
}

/// A fresh code of `length` decimal digits (leading zeros allowed).
pub fn generate(length: u32) -> String {
    (0..length)
        .map(|_| char::from(b'0' + OsRng.gen_range(0..10u8)))
        .collect()
}

/// HMAC-SHA256 over the verification id and the code, with the server secret as key.
#[derive(Clone)]
pub struct CodeHasher {
    key: Vec<u8>,
    /// The HMAC with the key already absorbed: each digest starts from a copy of it rather
    /// than hashing the key's two padded blocks again (half of a digest's work).
    keyed: Hmac<Sha256>,
}

impl CodeHasher {
    pub fn new(key: Vec<u8>) -> Self {
        let keyed = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key");
        Self { key, keyed }
    }

    /// The sealer of read-code verifications' codes, under a key derived from this one.
    pub fn sealer(&self) -> super::sealed::CodeSealer {
        super::sealed::CodeSealer::new(&self.key)
    }

    /// The hex digest stored for `code` of verification `id`. Binding the id means one
    /// verification's hash says nothing about another's.
    pub fn hash(&self, id: &str, code: &str) -> String {
        hex::encode(self.digest(id, code))
    }

    fn digest(&self, id: &str, code: &str) -> [u8; 32] {
        let mut mac = self.keyed.clone();
        mac.update(id.as_bytes());
        mac.update(b"\0");
        mac.update(code.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Whether `entered` is the code behind `stored_hex`, in constant time.
    pub fn matches(&self, id: &str, entered: &str, stored_hex: &str) -> bool {
        let Ok(stored) = hex::decode(stored_hex) else {
            return false;
        };
        self.digest(id, entered).ct_eq(stored.as_slice()).into()
    }
}

/// Bytes of the key in the key file.
const KEY_BYTES: usize = 32;

/// The HMAC key: `secret` when set, else the hex key in `file`, created (mode 0600) with 32
/// random bytes on first run. Several daemons sharing one database need the same key. A key
/// file that does not hold 32 bytes is refused: an empty key would let anyone with a copy of
/// the database try every code against its hashes.
pub fn server_key(secret: &str, file: &Path) -> std::io::Result<Vec<u8>> {
    if !secret.is_empty() {
        return Ok(secret.as_bytes().to_vec());
    }
    match std::fs::read_to_string(file) {
        Ok(text) => read_key(&text, file),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key(file),
        Err(e) => Err(e),
    }
}

fn read_key(text: &str, file: &Path) -> std::io::Result<Vec<u8>> {
    let invalid = |what: String| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} {what}, not a {KEY_BYTES}-byte hex key: it is damaged (a first start \
                 cut short?). Restore it from a backup; or, if no code is outstanding, delete \
                 it and a new key is made at the next start",
                file.display()
            ),
        )
    };
    let key = hex::decode(text.trim()).map_err(|e| invalid(format!("is not hex ({e})")))?;
    if key.len() != KEY_BYTES {
        return Err(invalid(format!("holds {} bytes", key.len())));
    }
    Ok(key)
}

/// Write a new key beside `file`, to disk, then link it into place: `file` is there whole or
/// not at all, and of daemons starting at once, one key wins and all read it.
fn create_key(file: &Path) -> std::io::Result<Vec<u8>> {
    let key: [u8; KEY_BYTES] = OsRng.gen();
    let mut temp = file.as_os_str().to_owned();
    temp.push(format!(".{}.new", hex::encode(OsRng.gen::<[u8; 8]>())));
    let temp = std::path::PathBuf::from(temp);
    let written = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut out = options.open(&temp)?;
        std::io::Write::write_all(&mut out, format!("{}\n", hex::encode(key)).as_bytes())?;
        out.sync_all()?;
        std::fs::hard_link(&temp, file)
    })();
    let _ = std::fs::remove_file(&temp);
    match written {
        Ok(()) => {
            tracing::info!(file = %file.display(), "created a new secret key for confirmation codes");
            Ok(key.to_vec())
        }
        // Another daemon made it first: its key is the one.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_key(&std::fs::read_to_string(file)?, file)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_made_whole_once_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret.key");
        // Daemons starting at once: one key, and every one reads it.
        let keys: Vec<Vec<u8>> = std::thread::scope(|s| {
            let made: Vec<_> = (0..8)
                .map(|_| s.spawn(|| server_key("", &file).unwrap()))
                .collect();
            made.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert_eq!(keys[0].len(), KEY_BYTES);
        assert!(keys.iter().all(|k| *k == keys[0]));
        assert_eq!(server_key("", &file).unwrap(), keys[0]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Nothing is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        for damaged in ["", "\n", "ab", "zz", &"ab".repeat(31)] {
            std::fs::write(&file, damaged).unwrap();
            let error = server_key("", &file).unwrap_err().to_string();
            assert!(
                error.contains("not a 32-byte hex key"),
                "{damaged:?}: {error}"
            );
        }
    }

    #[test]
    fn codes_have_the_length_and_only_digits() {
        for len in LENGTHS {
            let c = generate(len);
            assert_eq!(c.len(), len as usize);
            assert!(c.bytes().all(|b| b.is_ascii_digit()));
        }
    }

    #[test]
    fn codes_vary() {
        let a: std::collections::HashSet<_> = (0..50).map(|_| generate(10)).collect();
        assert!(a.len() > 45);
    }

    #[test]
    fn hash_is_keyed_and_bound_to_the_id() {
        let h = CodeHasher::new(b"secret-one".to_vec());
        let stored = h.hash("vf1", "123456");
        assert_ne!(stored, "123456");
        assert!(h.matches("vf1", "123456", &stored));
        assert!(!h.matches("vf1", "123457", &stored));
        assert!(!h.matches("vf2", "123456", &stored));
        assert!(!h.matches("vf1", "12345", &stored));
        assert!(!CodeHasher::new(b"other".to_vec()).matches("vf1", "123456", &stored));
        assert!(!h.matches("vf1", "123456", "not hex"));
    }

    /// Hashes stored by any earlier release must still match: the digest is HMAC-SHA256 of
    /// `id`, a NUL and the code (the figure from Python's `hmac`), however it is computed.
    #[test]
    fn the_digest_is_the_stored_format() {
        let h = CodeHasher::new(b"secret-one".to_vec());
        let python = "0ec684fe2f9e7d6a68bb20ecde854c89929fd1093454d208cfc3ef57f5ff825b";
        assert_eq!(h.hash("vf1", "123456"), python);
        // And again: each digest starts from the keyed state, which the first left unchanged.
        assert_eq!(h.hash("vf1", "123456"), python);
    }

    #[test]
    fn server_key_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        let first = server_key("", &file).unwrap();
        assert_eq!(first.len(), 32);
        assert_eq!(server_key("", &file).unwrap(), first);
        assert_eq!(
            server_key("configured-secret!", &file).unwrap(),
            b"configured-secret!"
        );
        std::fs::write(&file, "zz").unwrap();
        assert!(server_key("", &file).is_err());
    }
}
