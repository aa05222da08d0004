//! Whisper through CTranslate2 (ct2rs), in-process and offline: the model is a directory on
//! disk, weights run as int8 on the CPU.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use ct2rs::{ComputeType, Config, Device, Whisper, WhisperOptions};
use tokio::sync::Semaphore;

use callverify_audio::resample;

use super::{digits, Recognise, RecogniserSettings, Recognition, SpeechError};

/// The files of a CTranslate2 Whisper model directory, as `scripts/fetch-speech-model`
/// assembles it: the weights and their configuration, the vocabulary, the tokenizer, the
/// audio front end's settings.
const MODEL_FILES: &[&str] = &[
    "model.bin",
    "config.json",
    "vocabulary.txt",
    "tokenizer.json",
    "preprocessor_config.json",
];

/// Names the first file `dir` lacks; the engine would only say that the directory failed.
fn check_model(dir: &Path) -> Result<(), SpeechError> {
    let problem = |message: String| SpeechError::Model {
        path: dir.to_owned(),
        message,
    };
    if !dir.is_dir() {
        return Err(problem(
            "no such directory (./scripts/fetch-speech-model fetches the model)".into(),
        ));
    }
    match MODEL_FILES.iter().find(|f| !dir.join(f).is_file()) {
        Some(file) => Err(problem(format!(
            "{} is missing; a model directory holds {}",
            dir.join(file).display(),
            MODEL_FILES.join(", ")
        ))),
        None => Ok(()),
    }
}

/// A loaded model, shared by all calls (cheap to clone).
#[derive(Clone)]
pub struct Recogniser {
    shared: Arc<Shared>,
}

struct Shared {
    whisper: Whisper,
    /// Bounds recognitions in progress: each holds `threads` cores for about a second.
    turns: Semaphore,
}

impl Recogniser {
    /// Loads the model (blocking, a second or two): call it at startup.
    pub fn load(settings: &RecogniserSettings) -> Result<Self, SpeechError> {
        let started = Instant::now();
        let replicas = settings.max_concurrent.max(1);
        let config = Config {
            device: Device::CPU,
            compute_type: ComputeType::INT8,
            // One replica per concurrent recognition, so they run side by side.
            device_indices: vec![0; replicas],
            num_threads_per_replica: settings.threads.max(1),
            ..Config::default()
        };
        check_model(&settings.model)?;
        let whisper = Whisper::new(&settings.model, config).map_err(|e| SpeechError::Model {
            path: settings.model.clone(),
            message: format!("{e:#}"),
        })?;
        tracing::info!(
            model = %settings.model.display(),
            replicas,
            threads = settings.threads,
            took_ms = started.elapsed().as_millis() as u64,
            "speech model loaded"
        );
        Ok(Self {
            shared: Arc::new(Shared {
                whisper,
                turns: Semaphore::new(replicas),
            }),
        })
    }
}

impl Recogniser {
    /// What `audio` (8 kHz mono, at most 30 s) says in `language` (the channel's language,
    /// as `en` or `es-MX`), written out in full: a support message's transcript. It waits
    /// for a turn as code recognitions do, so a long message delays a live call by one part
    /// at most.
    pub async fn transcribe(&self, audio: Vec<i16>, language: &str) -> Result<String, SpeechError> {
        let language = language.get(..2).unwrap_or("en").to_ascii_lowercase();
        self.run(audio, Some(language), MESSAGE_TOKENS).await
    }

    /// Runs Whisper on a blocking thread, after waiting for a turn.
    async fn run(
        &self,
        audio: Vec<i16>,
        language: Option<String>,
        max_tokens: usize,
    ) -> Result<String, SpeechError> {
        let _turn = self
            .shared
            .turns
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            transcribe(&shared.whisper, &audio, language.as_deref(), max_tokens)
        })
        .await
        .map_err(|e| SpeechError::Recognition(e.to_string()))?
    }
}

impl Recognise for Recogniser {
    /// Recognises `audio` (8 kHz mono), a code said in English.
    async fn recognise(&self, audio: Vec<i16>) -> Result<Recognition, SpeechError> {
        let started = Instant::now();
        let text = self.run(audio, Some("en".into()), CODE_TOKENS).await?;
        let recognition = Recognition {
            digits: digits::digits_in(&text),
            text,
            took: started.elapsed(),
        };
        tracing::debug!(
            digits = recognition.digits.len(),
            took_ms = recognition.took.as_millis() as u64,
            "recognised"
        );
        Ok(recognition)
    }
}

fn transcribe(
    whisper: &Whisper,
    audio: &[i16],
    language: Option<&str>,
    max_tokens: usize,
) -> Result<String, SpeechError> {
    let options = WhisperOptions {
        // Greedy: a code is a few short words, beam search buys nothing measurable here.
        beam_size: 1,
        max_length: max_tokens,
        ..WhisperOptions::default()
    };
    let samples = resample::to_16k(audio);
    let pieces = whisper
        .generate(&samples, language, false, &options)
        .map_err(|e| SpeechError::Recognition(format!("{e:#}")))?;
    Ok(pieces.concat())
}

/// Tokens a code's transcript may have: a 10-digit code with punctuation is about 25.
const CODE_TOKENS: usize = 64;
/// Tokens of 30 s of speech (a username spelled letter by letter takes one each); Whisper's
/// decoder stops at 448 with its prompt.
const MESSAGE_TOKENS: usize = 400;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_model_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = check_model(&dir.path().join("nowhere"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("no such directory"), "{missing}");
        for file in &MODEL_FILES[1..] {
            std::fs::write(dir.path().join(file), "").unwrap();
        }
        let missing = check_model(dir.path()).unwrap_err().to_string();
        assert!(
            missing.contains(&format!("{}/model.bin is missing", dir.path().display())),
            "{missing}"
        );
        std::fs::write(dir.path().join("model.bin"), "").unwrap();
        assert!(check_model(dir.path()).is_ok());
    }
}
