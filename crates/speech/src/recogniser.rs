//! Whisper through CTranslate2 (ct2rs), in-process and offline: the model is a directory on
//! disk, weights run as int8 on the CPU. The encoder reads the heard audio and two seconds of
//! silence ([`features`](super::features)), not a 30 s window, and a code's decoder may
//! write numbers only.

use std::sync::Arc;
use std::time::Instant;

use ct2rs::sys::{StorageView, Whisper, WhisperOptions};
use ct2rs::tokenizers::hf;
use ct2rs::{ComputeType, Config, Device, Tokenizer as _};
use tokio::sync::Semaphore;

use callverify_audio::resample;

use super::features::{FrontEnd, MAX_FRAMES, MELS};
use super::model_dir::{self, ModelCheck};
use super::{digits, Recognise, RecogniserSettings, Recognition, SpeechError, Window};

/// A loaded model, shared by all calls (cheap to clone).
#[derive(Clone)]
pub struct Recogniser {
    shared: Arc<Shared>,
    /// What was checked of the model's files before it was read.
    model_check: ModelCheck,
}

struct Shared {
    whisper: Whisper,
    tokenizer: hf::Tokenizer,
    front_end: FrontEnd,
    /// Every token of the vocabulary that is not a number or `,` `.` `-` (with or without
    /// its leading space), and Whisper's own list (`-1`): a code's transcript is digits.
    not_digits: Vec<i32>,
    /// Bounds recognitions in progress: each holds `threads` cores while it runs.
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
        let model_check = model_dir::check(&settings.model)?;
        let problem = |message: String| SpeechError::Model {
            path: settings.model.clone(),
            message,
        };
        let whisper =
            Whisper::new(&settings.model, config).map_err(|e| problem(format!("{e:#}")))?;
        let tokenizer =
            hf::Tokenizer::new(&settings.model).map_err(|e| problem(format!("{e:#}")))?;
        let vocabulary = std::fs::read_to_string(settings.model.join("vocabulary.txt"))
            .map_err(|e| problem(format!("vocabulary.txt: {e}")))?;
        let not_digits = not_digits(&vocabulary).ok_or_else(|| {
            problem("vocabulary.txt has no <|endoftext|>: not a Whisper vocabulary".into())
        })?;
        tracing::info!(
            model = %settings.model.display(),
            replicas,
            threads = settings.threads,
            took_ms = started.elapsed().as_millis() as u64,
            checked = %model_check,
            "speech model loaded"
        );
        Ok(Self {
            shared: Arc::new(Shared {
                whisper,
                tokenizer,
                front_end: FrontEnd::new(),
                not_digits,
                turns: Semaphore::new(replicas),
            }),
            model_check,
        })
    }

    /// What was checked of the model's files before it was read (`callverify doctor`).
    pub fn model_check(&self) -> ModelCheck {
        self.model_check
    }

    /// What `audio` (8 kHz mono, at most 30 s) says in `language` (the channel's language,
    /// as `en` or `es-MX`), written out in full: a support message's transcript. It waits
    /// for a turn as code recognitions do, so a long message delays a live call by one part
    /// at most.
    pub async fn transcribe(&self, audio: Vec<i16>, language: &str) -> Result<String, SpeechError> {
        let language = language.get(..2).unwrap_or("en").to_ascii_lowercase();
        self.run(audio, language, Decoding::Text, Window::Heard)
            .await
    }

    /// Runs Whisper on a blocking thread, after waiting for a turn.
    async fn run(
        &self,
        audio: Vec<i16>,
        language: String,
        decoding: Decoding,
        window: Window,
    ) -> Result<String, SpeechError> {
        let _turn = self
            .shared
            .turns
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.transcribe(&audio, &language, decoding, window))
            .await
            .map_err(|e| SpeechError::Recognition(e.to_string()))?
    }
}

impl Recognise for Recogniser {
    /// Recognises `audio` (8 kHz mono), a code said in English.
    async fn recognise(&self, audio: Vec<i16>, window: Window) -> Result<Recognition, SpeechError> {
        let started = Instant::now();
        let text = self
            .run(audio, "en".into(), Decoding::Digits, window)
            .await?;
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

/// What a recognition may write.
#[derive(Clone, Copy)]
enum Decoding {
    /// A code: numbers and their punctuation, [`CODE_TOKENS`] at most.
    Digits,
    /// A message: any text, [`MESSAGE_TOKENS`] at most.
    Text,
}

impl Shared {
    fn transcribe(
        &self,
        audio: &[i16],
        language: &str,
        decoding: Decoding,
        window: Window,
    ) -> Result<String, SpeechError> {
        let failed = |e: anyhow::Error| SpeechError::Recognition(format!("{e:#}"));
        let mut features = self.front_end.features(
            &resample::to_16k(audio),
            match window {
                Window::Heard => PADDING_FRAMES,
                Window::Full => MAX_FRAMES,
            },
        );
        let features = StorageView::new(
            &[1, MELS, features.frames],
            &mut features.values,
            Default::default(),
        )
        .map_err(failed)?;
        let (max_length, suppress_tokens) = match decoding {
            Decoding::Digits => (CODE_TOKENS, self.not_digits.clone()),
            Decoding::Text => (MESSAGE_TOKENS, vec![-1]),
        };
        let options = WhisperOptions {
            // Greedy: a code is a few short words, beam search buys nothing measurable here.
            beam_size: 1,
            max_length,
            suppress_tokens,
            ..WhisperOptions::default()
        };
        let language = format!("<|{language}|>");
        let mut prompt = vec!["<|startoftranscript|>", &language, "<|transcribe|>"];
        // With timestamps on a short window: the segment's end time tells the decoder where
        // the audio stops; without them it tends to read a code again and again. The full
        // window, as Whisper was trained, needs none.
        if window == Window::Full {
            prompt.push("<|notimestamps|>");
        }
        let tokens = self
            .whisper
            .generate(&features, &[prompt], &options)
            .map_err(failed)?
            .into_iter()
            .next()
            .and_then(|result| result.sequences.into_iter().next())
            .ok_or_else(|| SpeechError::Recognition("no transcript came back".into()))?;
        let text = tokens
            .into_iter()
            .filter(|token| !token.starts_with("<|"))
            .collect();
        self.tokenizer.decode(text).map_err(failed)
    }
}

/// The ids to suppress when decoding a code: every ordinary token of `vocabulary` (one
/// token a line, its id the line's index) that is not a number or `,` `.` `-`, with or
/// without the leading space (`Ġ`), and `-1`, Whisper's own list. `None`: no end-of-text
/// token, so no telling the ordinary tokens from the special ones.
fn not_digits(vocabulary: &str) -> Option<Vec<i32>> {
    let tokens: Vec<&str> = vocabulary.lines().collect();
    let end_of_text = tokens.iter().position(|&t| t == "<|endoftext|>")?;
    let digit_like = |token: &str| {
        let bare = token.strip_prefix('Ġ').unwrap_or(token);
        !bare.is_empty()
            && (bare.bytes().all(|b| b.is_ascii_digit()) || matches!(bare, "," | "." | "-"))
    };
    let mut suppressed = vec![-1];
    suppressed.extend(
        (0..end_of_text)
            .filter(|&id| !digit_like(tokens[id]))
            .map(|id| id as i32),
    );
    Some(suppressed)
}

/// Silence after the heard audio, in 10 ms frames. Whisper was trained on 30 s windows,
/// speech then silence; with less than about 2 s of silence after a code it more often
/// reads it twice or repeats a digit (the test corpus's 50 codes: 45 heard whole with 1 s,
/// 50 with 2 s), and each second more costs about 30 ms of encoder.
const PADDING_FRAMES: usize = 200;
/// Tokens a code's transcript may have, its prompt and timestamps included: a 10-digit
/// code with commas is about 26; a decoder that repeats itself stops here, a third of a
/// second later.
const CODE_TOKENS: usize = 40;
/// Tokens of 30 s of speech (a username spelled letter by letter takes one each); Whisper's
/// decoder stops at 448 with its prompt.
const MESSAGE_TOKENS: usize = 400;
