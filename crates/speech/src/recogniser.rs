//! Whisper through CTranslate2 (ct2rs), in-process and offline: the model is a directory on
//! disk, weights run as int8 on the CPU. The encoder reads the heard audio and two seconds of
//! silence ([`features`](super::features)), not a 30 s window, and a code's decoder may
//! write numbers only.
//!
//! Recognitions that wait for a turn at the same time run as one batch: CTranslate2's int8
//! kernels decode several clips' tokens for little more than one's (on 2 cores, with the ruy
//! build of CTranslate2 used before, two codes together took 1.10 s where one took 0.71 s), so when calls speak at once the turns go
//! further, and a lone caller still gets a turn of their own.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ct2rs::sys::{StorageView, Whisper, WhisperOptions};
use ct2rs::tokenizers::hf;
use ct2rs::{ComputeType, Config, Device, Tokenizer as _};
use tokio::sync::{oneshot, Semaphore};

use callverify_audio::resample;

use super::features::{frames_for, FrontEnd, MELS};
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
    /// Bounds batches in progress: each holds `threads` cores while it runs.
    turns: Arc<Semaphore>,
    /// Recognitions waiting for a turn, oldest first.
    waiting: Mutex<VecDeque<Job>>,
}

/// A recognition waiting for a turn, and where its transcript goes.
struct Job {
    audio: Vec<i16>,
    task: Task,
    reply: oneshot::Sender<Result<String, SpeechError>>,
    /// When it was queued.
    queued: Instant,
}

/// What a recognition asks of the decoder; only recognitions that ask the same run as one
/// batch.
#[derive(Clone, PartialEq, Eq)]
struct Task {
    /// The channel's language, as Whisper names it (`en`).
    language: String,
    decoding: Decoding,
    window: Window,
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
        let shared = Shared {
            whisper,
            tokenizer,
            front_end: FrontEnd::new(),
            not_digits,
            turns: Arc::new(Semaphore::new(replicas)),
            waiting: Mutex::new(VecDeque::new()),
        };
        tracing::info!(
            model = %settings.model.display(),
            replicas,
            threads = settings.threads,
            took_ms = started.elapsed().as_millis() as u64,
            checked = %model_check,
            "speech model loaded"
        );
        Ok(Self {
            shared: Arc::new(shared),
            model_check,
        })
    }

    /// What was checked of the model's files before it was read (`callverify doctor`).
    pub fn model_check(&self) -> ModelCheck {
        self.model_check
    }

    /// What `audio` (8 kHz mono, at most 30 s) says in `language` (the channel's language,
    /// as `en` or `es-MX`), written out in full: a support message's transcript. It waits
    /// for a turn as code recognitions do, behind every code waiting, and runs alone: a long
    /// message delays a live call by one part at most.
    pub async fn transcribe(&self, audio: Vec<i16>, language: &str) -> Result<String, SpeechError> {
        let task = Task {
            language: language.get(..2).unwrap_or("en").to_ascii_lowercase(),
            decoding: Decoding::Text,
            window: Window::Heard,
        };
        self.run(audio, task).await
    }

    /// Queues a recognition and waits for its transcript. Whoever gets a turn runs the
    /// oldest waiting recognitions, as one batch, on a blocking thread: its own, or others'
    /// first (then it waits for the next turn), or none when another turn took its own.
    async fn run(&self, audio: Vec<i16>, task: Task) -> Result<String, SpeechError> {
        let (reply, mut transcript) = oneshot::channel();
        self.shared.waiting().push_back(Job {
            audio,
            task,
            reply,
            queued: Instant::now(),
        });
        loop {
            let turn = tokio::select! {
                biased;
                done = &mut transcript => return done.unwrap_or_else(|_| Err(lost())),
                turn = self.shared.turns.clone().acquire_owned() => {
                    turn.expect("the semaphore is never closed")
                }
            };
            let batch = self.shared.next_batch();
            if batch.is_empty() {
                // Another turn took this recognition: its batch answers.
                drop(turn);
                return transcript.await.unwrap_or_else(|_| Err(lost()));
            }
            let shared = self.shared.clone();
            // The batch runs to its end and answers every caller in it, and holds the turn
            // until then, even if this caller is gone meanwhile.
            let ran = tokio::task::spawn_blocking(move || {
                shared.run_batch(batch);
                drop(turn);
            })
            .await;
            if let Err(e) = ran {
                tracing::error!(error = %e, "a recognition batch stopped");
            }
        }
    }
}

/// A recognition whose batch stopped before it answered.
fn lost() -> SpeechError {
    SpeechError::Recognition("the recognition stopped before it answered".into())
}

impl Recognise for Recogniser {
    /// Recognises `audio` (8 kHz mono), a code said in English.
    async fn recognise(&self, audio: Vec<i16>, window: Window) -> Result<Recognition, SpeechError> {
        let started = Instant::now();
        let task = Task {
            language: "en".into(),
            decoding: Decoding::Digits,
            window,
        };
        let text = self.run(audio, task).await?;
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
#[derive(Clone, Copy, PartialEq, Eq)]
enum Decoding {
    /// A code: numbers and their punctuation, [`CODE_TOKENS`] at most.
    Digits,
    /// A message: any text, [`MESSAGE_TOKENS`] at most.
    Text,
}

impl Shared {
    fn waiting(&self) -> std::sync::MutexGuard<'_, VecDeque<Job>> {
        // A panic cannot leave the queue half-changed: push, retain and remove are whole.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next batch of waiting recognitions, as the free function `next_batch` picks it.
    fn next_batch(&self) -> Vec<Job> {
        next_batch(&mut self.waiting(), Instant::now())
    }

    /// Runs `batch` (one task) through Whisper and answers each job.
    fn run_batch(&self, batch: Vec<Job>) {
        let started = Instant::now();
        let task = batch[0].task.clone();
        let audio: Vec<Vec<f32>> = batch.iter().map(|j| resample::to_16k(&j.audio)).collect();
        let transcripts = self.transcribe(&audio, &task);
        tracing::debug!(
            clips = batch.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "recognition batch"
        );
        match transcripts {
            Ok(texts) => {
                for (job, text) in batch.into_iter().zip(texts) {
                    let _ = job.reply.send(Ok(text));
                }
            }
            Err(e) => {
                let e = e.to_string();
                for job in batch {
                    let _ = job.reply.send(Err(SpeechError::Recognition(e.clone())));
                }
            }
        }
    }

    /// One transcript for each clip of `audio` (16 kHz), decoded together: each clip's
    /// features padded with silence to the longest one's.
    fn transcribe(&self, audio: &[Vec<f32>], task: &Task) -> Result<Vec<String>, SpeechError> {
        let failed = |e: anyhow::Error| SpeechError::Recognition(format!("{e:#}"));
        let frames = match task.window {
            Window::Heard => audio
                .iter()
                .map(|clip| frames_for(clip.len(), PADDING_FRAMES))
                .max()
                .unwrap_or(2),
            Window::Long => audio
                .iter()
                .map(|clip| frames_for(clip.len(), LONG_PADDING_FRAMES))
                .max()
                .unwrap_or(2),
        };
        let mut values = Vec::with_capacity(audio.len() * MELS * frames);
        for clip in audio {
            values.extend(self.front_end.features(clip, frames));
        }
        let features = StorageView::new(
            &[audio.len(), MELS, frames],
            &mut values,
            Default::default(),
        )
        .map_err(failed)?;
        let (max_length, suppress_tokens) = match task.decoding {
            Decoding::Digits => (CODE_TOKENS, self.not_digits.clone()),
            Decoding::Text => (MESSAGE_TOKENS, vec![-1]),
        };
        let options = WhisperOptions {
            // Two beams: greedy decoding dropped the first digit of a code said over line
            // noise (1 of the corpus's 50) where two beams read it, for about 5 % more work.
            beam_size: 2,
            max_length,
            suppress_tokens,
            ..WhisperOptions::default()
        };
        let language = format!("<|{}|>", task.language);
        let mut prompt = vec!["<|startoftranscript|>", &language, "<|transcribe|>"];
        // With timestamps on a short window: the segment's end time tells the decoder where
        // the audio stops; without them it tends to read a code again and again. The long
        // window's silence tells it as much.
        if task.window == Window::Long {
            prompt.push("<|notimestamps|>");
        }
        let results = self
            .whisper
            .generate(&features, &vec![prompt; audio.len()], &options)
            .map_err(failed)?;
        if results.len() != audio.len() {
            return Err(SpeechError::Recognition(format!(
                "{} transcripts came back for {} clips",
                results.len(),
                audio.len()
            )));
        }
        results
            .into_iter()
            .map(|result| {
                let tokens =
                    result.sequences.into_iter().next().ok_or_else(|| {
                        SpeechError::Recognition("no transcript came back".into())
                    })?;
                let text = tokens
                    .into_iter()
                    .filter(|token| !token.starts_with("<|"))
                    .collect();
                self.tokenizer.decode(text).map_err(failed)
            })
            .collect()
    }
}

/// Takes the next batch from `waiting` at `now`: the oldest code and up to [`BATCH`] in all
/// of the next ones that ask the same of the decoder; a message's transcript only when no
/// code waits or it has waited [`TEXT_PATIENCE`], and alone (a caller saying a code is live
/// on the line; a message is read for staff later, but read it is, however busy the line).
/// Recognitions whose caller is gone are dropped.
fn next_batch(waiting: &mut VecDeque<Job>, now: Instant) -> Vec<Job> {
    waiting.retain(|job| !job.reply.is_closed());
    let overdue = |job: &Job| {
        job.task.decoding == Decoding::Text
            && now.saturating_duration_since(job.queued) >= TEXT_PATIENCE
    };
    let first = waiting
        .iter()
        .position(|job| job.task.decoding == Decoding::Digits)
        .filter(|_| !waiting.iter().any(overdue))
        .unwrap_or(0);
    let Some(first) = waiting.remove(first) else {
        return Vec::new();
    };
    let room = match first.task.decoding {
        Decoding::Digits => BATCH,
        Decoding::Text => 1,
    };
    let mut batch = vec![first];
    let mut i = 0;
    while batch.len() < room && i < waiting.len() {
        if waiting[i].task == batch[0].task {
            batch.extend(waiting.remove(i));
        } else {
            i += 1;
        }
    }
    batch
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

/// Recognitions at most in one batch. On this project's 2 cores, with CTranslate2's own
/// library, one turn of one thread (`callverify-bench --speech`, p50 of each recognition):
/// 0.30 s alone, 0.30 s two together (decoding one token for two costs hardly more than
/// for one), 0.44-0.47 s three together; with the default two turns, 4 in flight 0.58 s and
/// 6 in flight 0.85 s (p95 1.23 s). Three keeps a batch well within the p95 that callers
/// are promised. (With the ruy build used before: 0.71, 1.10, 1.45 and, four together,
/// 1.80 s.)
const BATCH: usize = 3;

/// The longest a message's transcript waits behind codes: then it takes the next turn, so
/// that callers speaking codes all day cannot keep messages (and their audio, in memory)
/// waiting for ever. A turn of it costs a live caller a few seconds once in a while.
const TEXT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);
/// Silence after the heard audio, in 10 ms frames. Whisper was trained on 30 s windows,
/// speech then silence; with less than about 2 s of silence after a code it more often
/// reads it twice or repeats a digit (the test corpus's 50 codes: 45 heard whole with 1 s,
/// 50 with 2 s), and each second more costs about 30 ms of encoder.
const PADDING_FRAMES: usize = 200;
/// Silence after the heard audio in the long window, [`Window::Long`], in 10 ms frames. Where
/// the quick reading repeated a digit (5 of 150 codes of both corpora), 8 s of silence read
/// every one right, as Whisper's whole 30 s window did, in well under half the time.
const LONG_PADDING_FRAMES: usize = 800;
/// Tokens a code's transcript may have, its prompt and timestamps included: a 10-digit
/// code with commas is about 26; a decoder that repeats itself stops here, a third of a
/// second later.
const CODE_TOKENS: usize = 40;
/// Tokens of 30 s of speech (a username spelled letter by letter takes one each); Whisper's
/// decoder stops at 448 with its prompt.
const MESSAGE_TOKENS: usize = 400;

#[cfg(test)]
mod tests {
    use super::*;

    /// A waiting recognition of `samples` samples, and the receiver its caller holds.
    fn job(
        samples: usize,
        decoding: Decoding,
        window: Window,
    ) -> (Job, oneshot::Receiver<Result<String, SpeechError>>) {
        let (reply, receiver) = oneshot::channel();
        let task = Task {
            language: "en".into(),
            decoding,
            window,
        };
        let audio = vec![0; samples];
        let queued = Instant::now();
        (
            Job {
                audio,
                task,
                reply,
                queued,
            },
            receiver,
        )
    }

    /// A queue of `jobs` (samples, decoding, window), oldest first, and their callers.
    fn queue(
        jobs: &[(usize, Decoding, Window)],
    ) -> (
        VecDeque<Job>,
        Vec<oneshot::Receiver<Result<String, SpeechError>>>,
    ) {
        jobs.iter()
            .map(|&(samples, decoding, window)| job(samples, decoding, window))
            .unzip()
    }

    fn sizes(batch: &[Job]) -> Vec<usize> {
        batch.iter().map(|job| job.audio.len()).collect()
    }

    #[test]
    fn the_oldest_codes_that_ask_the_same_run_together_up_to_the_batch() {
        let code = Decoding::Digits;
        let (mut waiting, _callers) = queue(&[
            (1, code, Window::Heard),
            (2, code, Window::Long),
            (3, code, Window::Heard),
            (4, code, Window::Heard),
            (5, code, Window::Heard),
        ]);
        assert_eq!(BATCH, 3);
        assert_eq!(sizes(&next_batch(&mut waiting, Instant::now())), [1, 3, 4]);
        assert_eq!(sizes(&next_batch(&mut waiting, Instant::now())), [2]);
        assert_eq!(sizes(&next_batch(&mut waiting, Instant::now())), [5]);
        assert!(next_batch(&mut waiting, Instant::now()).is_empty());
    }

    #[test]
    fn codes_go_before_a_message_which_runs_alone() {
        let (mut waiting, _callers) = queue(&[
            (1, Decoding::Text, Window::Heard),
            (2, Decoding::Text, Window::Heard),
            (3, Decoding::Digits, Window::Heard),
        ]);
        assert_eq!(sizes(&next_batch(&mut waiting, Instant::now())), [3]);
        assert_eq!(sizes(&next_batch(&mut waiting, Instant::now())), [1]);
        assert_eq!(sizes(&next_batch(&mut waiting, Instant::now())), [2]);
    }

    #[test]
    fn a_message_waiting_too_long_goes_before_codes() {
        let (mut waiting, _callers) = queue(&[
            (1, Decoding::Text, Window::Heard),
            (2, Decoding::Text, Window::Heard),
            (3, Decoding::Digits, Window::Heard),
        ]);
        let later = Instant::now() + TEXT_PATIENCE;
        waiting[2].queued = later;
        assert_eq!(sizes(&next_batch(&mut waiting, later)), [1]);
        assert_eq!(sizes(&next_batch(&mut waiting, later)), [2]);
        assert_eq!(sizes(&next_batch(&mut waiting, later)), [3]);
    }

    #[test]
    fn a_caller_gone_while_waiting_costs_no_recognition() {
        let mut waiting = VecDeque::new();
        let (gone, caller) = job(1, Decoding::Digits, Window::Heard);
        waiting.push_back(gone);
        drop(caller);
        let (kept, _caller) = job(2, Decoding::Digits, Window::Heard);
        waiting.push_back(kept);
        assert_eq!(sizes(&next_batch(&mut waiting, Instant::now())), [2]);
        assert!(waiting.is_empty());
    }
}
