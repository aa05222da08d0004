//! The model directory before the engine reads it: every file a CTranslate2 Whisper model
//! needs is there, and each file its `SHA256SUMS` lists has that hash. `scripts/fetch-speech-
//! model` writes the sums from the hashes it pins, and the Debian package
//! `callverify-speech-model` installs them with the model, so a model altered or cut short
//! on disk is refused at startup with its file named, not read as weights.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::SpeechError;

/// The files of a CTranslate2 Whisper model directory, as `scripts/fetch-speech-model`
/// assembles it: the weights and their configuration, the vocabulary, the tokenizer, the
/// audio front end's settings.
pub(crate) const MODEL_FILES: &[&str] = &[
    "model.bin",
    "config.json",
    "vocabulary.txt",
    "tokenizer.json",
    "preprocessor_config.json",
];

/// The record of hashes a model directory may carry, in `sha256sum`'s format.
pub(crate) const SUMS_FILE: &str = "SHA256SUMS";

/// How much of a model directory was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelCheck {
    /// Every file `SHA256SUMS` lists (this many) has its hash.
    Sums(usize),
    /// No `SHA256SUMS` (a model brought by hand): the files are there, their contents
    /// unchecked.
    NoSums,
}

impl fmt::Display for ModelCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelCheck::Sums(n) => write!(f, "{n} files match its {SUMS_FILE}"),
            ModelCheck::NoSums => write!(f, "no {SUMS_FILE}: its files are not checked"),
        }
    }
}

/// Checks `dir`: names the first file it lacks (the engine would only say that the
/// directory failed), then the first file that does not match `SHA256SUMS`.
pub(crate) fn check(dir: &Path) -> Result<ModelCheck, SpeechError> {
    let problem = |message: String| SpeechError::Model {
        path: dir.to_owned(),
        message,
    };
    if !dir.is_dir() {
        return Err(problem(
            "no such directory (./scripts/fetch-speech-model fetches the model; the Debian \
             package callverify-speech-model installs it)"
                .into(),
        ));
    }
    if let Some(file) = MODEL_FILES.iter().find(|f| !dir.join(f).is_file()) {
        return Err(problem(format!(
            "{} is missing; a model directory holds {}",
            dir.join(file).display(),
            MODEL_FILES.join(", ")
        )));
    }
    let sums = match std::fs::read_to_string(dir.join(SUMS_FILE)) {
        Ok(sums) => sums,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ModelCheck::NoSums),
        Err(e) => return Err(problem(format!("{SUMS_FILE}: {e}"))),
    };
    let mut checked = 0;
    for (number, line) in sums
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let (expected, name) = parse_line(line).ok_or_else(|| {
            problem(format!(
                "{SUMS_FILE} line {}: not `<sha256>  <file in this directory>`",
                number + 1
            ))
        })?;
        let actual = sha256_of(&dir.join(name)).map_err(|e| problem(format!("{name}: {e}")))?;
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(problem(format!(
                "{name} does not match its {SUMS_FILE} (damaged or replaced): reinstall \
                 callverify-speech-model, or fetch the model again"
            )));
        }
        checked += 1;
    }
    Ok(ModelCheck::Sums(checked))
}

/// `<64 hex digits>  <name>` (or ` *<name>`, sha256sum's binary mode); the name must be a
/// file of the directory itself, so that the sums cannot send the check elsewhere.
fn parse_line(line: &str) -> Option<(&str, &str)> {
    let (hash, rest) = line.split_once(' ')?;
    let name = rest.strip_prefix([' ', '*'])?;
    let plain = !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\']);
    (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) && plain)
        .then_some((hash, name))
}

fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        match file.read(&mut buffer)? {
            0 => break,
            n => hasher.update(&buffer[..n]),
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for file in MODEL_FILES {
            std::fs::write(dir.path().join(file), file.as_bytes()).unwrap();
        }
        dir
    }

    fn sums_of(dir: &Path) -> String {
        MODEL_FILES
            .iter()
            .map(|f| format!("{}  {f}\n", sha256_of(&dir.join(f)).unwrap()))
            .collect()
    }

    #[test]
    fn a_missing_model_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = check(&dir.path().join("nowhere")).unwrap_err().to_string();
        assert!(missing.contains("no such directory"), "{missing}");
        for file in &MODEL_FILES[1..] {
            std::fs::write(dir.path().join(file), "").unwrap();
        }
        let missing = check(dir.path()).unwrap_err().to_string();
        assert!(
            missing.contains(&format!("{}/model.bin is missing", dir.path().display())),
            "{missing}"
        );
        std::fs::write(dir.path().join("model.bin"), "").unwrap();
        assert_eq!(check(dir.path()).unwrap(), ModelCheck::NoSums);
    }

    #[test]
    fn every_listed_file_is_hashed_and_a_changed_one_is_named() {
        let dir = model_dir();
        std::fs::write(dir.path().join(SUMS_FILE), sums_of(dir.path())).unwrap();
        assert_eq!(
            check(dir.path()).unwrap(),
            ModelCheck::Sums(MODEL_FILES.len())
        );

        // One byte of the weights changed (or the file cut short).
        std::fs::write(dir.path().join("model.bin"), "model.bim").unwrap();
        let refused = check(dir.path()).unwrap_err().to_string();
        assert!(
            refused.contains("model.bin does not match its SHA256SUMS"),
            "{refused}"
        );
    }

    #[test]
    fn sums_that_point_outside_the_directory_or_are_malformed_are_refused() {
        let dir = model_dir();
        let hash = sha256_of(&dir.path().join("config.json")).unwrap();
        for line in [
            format!("{hash}  ../config.json"),
            format!("{hash}  /etc/passwd"),
            format!("{}  config.json", &hash[1..]),
            "not a line".to_string(),
        ] {
            std::fs::write(dir.path().join(SUMS_FILE), &line).unwrap();
            let refused = check(dir.path()).unwrap_err().to_string();
            assert!(refused.contains("SHA256SUMS line 1"), "{line}: {refused}");
        }
        // sha256sum's binary-mode marker and upper-case hex are its own output too.
        std::fs::write(
            dir.path().join(SUMS_FILE),
            format!("{} *config.json\n", hash.to_uppercase()),
        )
        .unwrap();
        assert_eq!(check(dir.path()).unwrap(), ModelCheck::Sums(1));
    }

    #[test]
    fn a_listed_file_that_is_gone_is_named() {
        let dir = model_dir();
        let hash = sha256_of(&dir.path().join("config.json")).unwrap();
        std::fs::write(dir.path().join(SUMS_FILE), format!("{hash}  extra.bin\n")).unwrap();
        let refused = check(dir.path()).unwrap_err().to_string();
        assert!(refused.contains("extra.bin: "), "{refused}");
    }
}
