//! Spoken codes: when the caller has finished saying the code, and which digits they said.
//!
//! Transport-agnostic: audio comes in as 8 kHz mono `i16` samples (AudioSocket's signed
//! linear), in chunks of any length.
//!
//! - [`Endpointer`] (pure, sync) judges received audio: speech start over an adaptive noise
//!   floor, [`Endpoint::Pause`] after a short silence (a moment for an interim recognition),
//!   [`Endpoint::End`] after the hangover, the listening cap, or no speech at all.
//! - [`digits::digits_in`] reads the digits out of the recogniser's text.
//! - `Recogniser` (cargo feature `whisper`) runs Whisper through CTranslate2 in-process, off
//!   the async runtime, a bounded number at once.
//! - [`hear_code`] is the listening turn, tying them together: it stops as soon as an
//!   interim recognition at a pause has the code's length, else at the end. The call flow
//!   runs its two halves, [`listen_for_code`] and [`Turn::recognise`], so that it can end
//!   the AudioSocket stream in between.
//!
//! ```ignore
//! // At startup (feature `whisper`; blocking, a second or two), when a model is configured:
//! let recogniser = match config.recogniser_settings() {
//!     Some(settings) => Some(speech::Recogniser::load(&settings)?),
//!     None => None, // keypad only
//! };
//! // Per call: `audio` is a Stream of [`Sound`]s: AudioSocket audio payloads, which the
//! // transport ends on DTMF or hang-up, with the gaps in them ([`with_gaps`]).
//! let heard = speech::hear_code(&recogniser, &config.endpoint_settings(), code.len(), audio)
//!     .await?;
//! if heard.digits == code { /* verified */ }
//! ```
//!
//! A flow that wants its own loop (e.g. to watch DTMF in the same `select!`) drives the parts:
//!
//! ```ignore
//! let mut endpointer = Endpointer::new(&settings);
//! while let Some(chunk) = audio.next().await {
//!     match endpointer.push(&chunk) {
//!         Some(Endpoint::Pause) => {
//!             let interim = recogniser.recognise(endpointer.speech().to_vec(), Window::Heard).await?;
//!             if interim.digits.len() == code_len { break; } // heard it whole
//!             endpointer.set_hangover(settings.incomplete_hangover);
//!         }
//!         Some(Endpoint::End(reason)) => break,
//!         None => {}
//!     }
//! }
//! ```
//!
//! Codes are secrets: nothing here logs or `Debug`-prints what was heard, only lengths.

pub mod digits;
mod endpointer;
#[cfg(feature = "whisper")]
mod features;
mod gaps;
#[cfg(feature = "whisper")]
mod model_dir;
#[cfg(feature = "whisper")]
mod recogniser;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::{FutureExt, Stream, StreamExt};

pub use endpointer::{EndReason, Endpoint, EndpointSettings, Endpointer};
pub use gaps::{with_gaps, Sound, GAP_TICK};
#[cfg(feature = "whisper")]
pub use model_dir::ModelCheck;
#[cfg(feature = "whisper")]
pub use recogniser::Recogniser;

/// The recogniser the call flow runs: Whisper in a build with the `speech` feature.
#[cfg(feature = "whisper")]
pub type CodeRecogniser = Recogniser;
/// The recogniser the call flow runs: none in a build without the `speech` feature.
#[cfg(not(feature = "whisper"))]
pub type CodeRecogniser = NoRecogniser;

/// Stands for the recogniser in a build without one: it cannot exist, so a flow holding an
/// `Option<CodeRecogniser>` has `None` and asks for keys only.
#[cfg(not(feature = "whisper"))]
#[derive(Debug, Clone)]
pub enum NoRecogniser {}

#[cfg(not(feature = "whisper"))]
impl NoRecogniser {
    /// Stands for [`Recogniser::transcribe`](recogniser::Recogniser).
    pub async fn transcribe(
        &self,
        _audio: Vec<i16>,
        _language: &str,
    ) -> Result<String, SpeechError> {
        match *self {}
    }
}

#[cfg(not(feature = "whisper"))]
impl Recognise for NoRecogniser {
    fn recognise(
        &self,
        _audio: Vec<i16>,
        _window: Window,
    ) -> impl Future<Output = Result<Recognition, SpeechError>> + Send {
        let never = self;
        async move { match *never {} }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpeechError {
    #[error(
        "spoken codes need a callverify built with them: `cargo build --release --features \
         speech` (needs cmake, g++ and ./scripts/fetch-ctranslate2); for keypad entry only, \
         leave speech.model (CALLVERIFY_SPEECH_MODEL) empty"
    )]
    NotBuilt,
    #[error("speech model {path}: {message}")]
    Model { path: PathBuf, message: String },
    #[error("speech recognition failed: {0}")]
    Recognition(String),
}

/// Where the recogniser's model is and how much CPU it may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecogniserSettings {
    /// A CTranslate2 Whisper model directory (`scripts/fetch-speech-model`).
    pub model: PathBuf,
    /// Recognitions running at once; more wait their turn.
    pub max_concurrent: usize,
    /// CPU threads of each running recognition.
    pub threads: usize,
}

/// One recognition's result.
#[derive(Clone, PartialEq, Eq)]
pub struct Recognition {
    /// What the recogniser wrote.
    pub text: String,
    /// The digits in `text`, in order.
    pub digits: String,
    /// Wall-clock time of the recognition, waiting for a turn included.
    pub took: Duration,
}

impl fmt::Debug for Recognition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recognition")
            .field("text_chars", &self.text.chars().count())
            .field("digits", &self.digits.len())
            .field("took", &self.took)
            .finish()
    }
}

/// Turns received audio (8 kHz mono) into a [`Recognition`]. [`Recogniser`] is the real
/// one; tests of the listening turn use scripted ones.
pub trait Recognise {
    fn recognise(
        &self,
        audio: Vec<i16>,
        window: Window,
    ) -> impl Future<Output = Result<Recognition, SpeechError>> + Send;
}

/// How much the recogniser reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The heard audio and two seconds of silence: fast, the usual reading.
    Heard,
    /// The heard audio and eight seconds of silence, nearer the 30 s windows Whisper was
    /// trained on: about twice the work, surer where the quick reading slips (a digit said
    /// twice read three times).
    Long,
}

/// Why a listening turn stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// An interim recognition at a pause already had the code's length.
    Complete,
    /// The endpointer ended listening.
    Endpoint(EndReason),
    /// The audio stream ended first (DTMF, hang-up): what was heard until then.
    InputEnded,
}

/// The outcome of [`hear_code`].
#[derive(Clone, PartialEq, Eq)]
pub struct Heard {
    /// The digits heard (empty when no speech was heard).
    pub digits: String,
    pub ending: Ending,
    /// Received audio up to the end of the last speech (`None`: no speech).
    pub speech_end: Option<Duration>,
    /// Received audio when listening stopped (with [`Ending::Complete`]: when the
    /// recognition that completed it began).
    pub stopped_at: Duration,
    /// Recognitions run, interim ones included.
    pub recognitions: u32,
    /// Wall-clock wait, after listening stopped, for the result that was used.
    pub result_wait: Duration,
}

impl Heard {
    /// From the end of speech to the result, as the caller lives it: the silence the
    /// endpointer waited for, then the recognition.
    pub fn latency(&self) -> Option<Duration> {
        self.speech_end
            .map(|end| self.stopped_at.saturating_sub(end) + self.result_wait)
    }
}

impl fmt::Debug for Heard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Heard")
            .field("digits", &self.digits.len())
            .field("ending", &self.ending)
            .field("speech_end", &self.speech_end)
            .field("stopped_at", &self.stopped_at)
            .field("recognitions", &self.recognitions)
            .field("result_wait", &self.result_wait)
            .finish()
    }
}

/// One listening turn for a code of `code_length` digits: [`listen_for_code`], then
/// [`Turn::recognise`].
pub async fn hear_code<R: Recognise>(
    recogniser: &R,
    settings: &EndpointSettings,
    code_length: usize,
    audio: impl Stream<Item = Sound> + Unpin,
) -> Result<Heard, SpeechError> {
    listen_for_code(recogniser, settings, code_length, audio)
        .await?
        .recognise(recogniser)
        .await
}

/// Interim recognitions in one listening turn, at most: a caller pausing between digit
/// groups and once more at the end needs two or three.
const MAX_INTERIMS: u32 = 3;

/// A listening turn whose audio has stopped, before its last recognition: the transport can
/// end the stream (and the caller hears the call go on) before that recognition runs.
pub struct Turn {
    endpointer: Endpointer,
    code_length: usize,
    ending: Ending,
    recognitions: u32,
    /// The last interim result, with the end of speech it covered: reused when the caller
    /// said nothing more after it (with [`Ending::Complete`], it is the result).
    interim: Option<(Option<Duration>, Recognition)>,
    /// Received audio when listening stopped (with [`Ending::Complete`]: when the
    /// recognition that completed it began).
    stopped_at: Duration,
    stopped: Instant,
}

/// Feeds `audio` to an [`Endpointer`], runs an interim recognition at each pause and stops
/// as soon as one has `code_length` digits and the caller did not speak again while it ran,
/// else when the endpointer or the stream ends. The pause comes sooner once `code_length`
/// words were heard ([`EndpointSettings::early_pause`]). While a recognition runs, `audio`
/// is not polled: the transport should buffer (the endpointer counts received audio, so
/// nothing is judged late), and a gap measured meanwhile ([`with_gaps`]) is silence the
/// caller kept.
pub async fn listen_for_code<R: Recognise>(
    recogniser: &R,
    settings: &EndpointSettings,
    code_length: usize,
    mut audio: impl Stream<Item = Sound> + Unpin,
) -> Result<Turn, SpeechError> {
    let mut endpointer = Endpointer::new(settings);
    endpointer.expect_words(code_length);
    let mut recognitions = 0;
    let mut interims = 0;
    let mut interim: Option<(Option<Duration>, Recognition)> = None;
    // Received audio when an interim with the code's length began: it is the result unless
    // the audio that came while it ran (read without waiting) has speech again.
    let mut complete_at = None;
    let ending = loop {
        let next = match complete_at {
            Some(_) => match audio.next().now_or_never() {
                Some(next) => next,
                None => break Ending::Complete,
            },
            None => audio.next().await,
        };
        let event = match next {
            Some(Sound::Audio(chunk)) => endpointer.push(&chunk),
            Some(Sound::Gap(gap)) => endpointer.push_gap(gap),
            None if complete_at.is_some() => break Ending::Complete,
            None => break Ending::InputEnded,
        };
        let covered = interim.as_ref().map(|(covered, _)| *covered);
        if complete_at.is_some() && covered != Some(endpointer.speech_end()) {
            // The caller went on after the pause: that was not all.
            complete_at = None;
        }
        match event {
            // Each interim costs a recognition or two: a caller making short noises with
            // pauses between them cannot have more than a few.
            Some(Endpoint::Pause) if interims == MAX_INTERIMS => {}
            Some(Endpoint::Pause) => {
                interims += 1;
                let started_at = endpointer.received();
                let result = read(recogniser, &endpointer, code_length, &mut recognitions).await?;
                let heard = result.digits.len();
                interim = Some((endpointer.speech_end(), result));
                if heard == code_length {
                    complete_at = Some(started_at);
                    continue;
                }
                endpointer.set_hangover(if heard < code_length {
                    settings.incomplete_hangover
                } else {
                    settings.hangover
                });
            }
            Some(Endpoint::End(_)) if complete_at.is_some() => break Ending::Complete,
            Some(Endpoint::End(reason)) => break Ending::Endpoint(reason),
            None => {}
        }
    };
    Ok(Turn {
        stopped_at: complete_at.unwrap_or_else(|| endpointer.received()),
        endpointer,
        code_length,
        ending,
        recognitions,
        interim,
        stopped: Instant::now(),
    })
}

impl Turn {
    /// Whether the caller said anything (else there is nothing to recognise).
    pub fn heard_speech(&self) -> bool {
        self.endpointer.speech_end().is_some()
    }

    /// The digits heard: the interim result when it covered all the speech, else a
    /// recognition of everything heard.
    pub async fn recognise<R: Recognise>(self, recogniser: &R) -> Result<Heard, SpeechError> {
        let Turn {
            endpointer,
            code_length,
            ending,
            mut recognitions,
            interim,
            stopped_at,
            stopped,
        } = self;
        let result = match interim {
            _ if endpointer.speech_end().is_none() => Recognition {
                text: String::new(),
                digits: String::new(),
                took: Duration::ZERO,
            },
            Some((_, result)) if ending == Ending::Complete => {
                let took = result.took;
                return Ok(finish(
                    &endpointer,
                    ending,
                    result,
                    recognitions,
                    stopped_at,
                    took,
                ));
            }
            Some((covered, result)) if covered == endpointer.speech_end() => result,
            _ => read(recogniser, &endpointer, code_length, &mut recognitions).await?,
        };
        let wait = stopped.elapsed();
        Ok(finish(
            &endpointer,
            ending,
            result,
            recognitions,
            stopped_at,
            wait,
        ))
    }
}

/// Recognises the speech `endpointer` heard, quickly; again over the long window when as
/// many words as the code has digits were heard but the quick reading has another number
/// of digits.
async fn read<R: Recognise>(
    recogniser: &R,
    endpointer: &Endpointer,
    code_length: usize,
    recognitions: &mut u32,
) -> Result<Recognition, SpeechError> {
    let speech = endpointer.speech().to_vec();
    *recognitions += 1;
    let quick = recogniser.recognise(speech.clone(), Window::Heard).await?;
    if quick.digits.len() == code_length || endpointer.words() < code_length {
        return Ok(quick);
    }
    *recognitions += 1;
    let full = recogniser.recognise(speech, Window::Long).await?;
    Ok(Recognition {
        took: quick.took + full.took,
        ..full
    })
}

fn finish(
    endpointer: &Endpointer,
    ending: Ending,
    result: Recognition,
    recognitions: u32,
    stopped_at: Duration,
    result_wait: Duration,
) -> Heard {
    let heard = Heard {
        digits: result.digits,
        ending,
        speech_end: endpointer.speech_end(),
        stopped_at,
        recognitions,
        result_wait,
    };
    tracing::info!(
        digits = heard.digits.len(),
        ending = ?heard.ending,
        heard_ms = heard.stopped_at.as_millis() as u64,
        recognitions,
        latency_ms = heard.latency().map(|l| l.as_millis() as u64),
        "spoken code heard"
    );
    heard
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use callverify_audio::SAMPLE_RATE;

    /// Answers each recognition with the next scripted text, recording the audio lengths.
    struct Scripted {
        answers: Mutex<Vec<&'static str>>,
        heard_samples: Mutex<Vec<usize>>,
        windows: Mutex<Vec<Window>>,
    }

    impl Scripted {
        fn new(answers: &[&'static str]) -> Self {
            Self {
                answers: Mutex::new(answers.iter().rev().copied().collect()),
                heard_samples: Mutex::new(Vec::new()),
                windows: Mutex::new(Vec::new()),
            }
        }
    }

    impl Recognise for Scripted {
        async fn recognise(
            &self,
            audio: Vec<i16>,
            window: Window,
        ) -> Result<Recognition, SpeechError> {
            self.heard_samples.lock().unwrap().push(audio.len());
            self.windows.lock().unwrap().push(window);
            let text = self
                .answers
                .lock()
                .unwrap()
                .pop()
                .expect("a scripted answer");
            Ok(Recognition {
                text: text.into(),
                digits: digits::digits_in(text),
                took: Duration::from_millis(5),
            })
        }
    }

    /// `spoken` 0.4 s tones with 0.3 s gaps, a pause of `group_ms` after the first three,
    /// then 3 s of silence, in 20 ms chunks.
    fn call_audio(spoken: usize, group_ms: usize) -> Vec<Vec<i16>> {
        let ms = |n: usize| n * SAMPLE_RATE as usize / 1000;
        let tone: Vec<i16> = (0..ms(400))
            .map(|i| (8000.0 * (i as f32 * 0.3).sin()) as i16)
            .collect();
        let mut audio = vec![0; ms(300)];
        for digit in 0..spoken {
            audio.extend(&tone);
            let gap = if digit == 2 { group_ms } else { 300 };
            audio.extend(std::iter::repeat_n(0, ms(gap)));
        }
        audio.extend(std::iter::repeat_n(0, ms(3000)));
        audio.chunks(160).map(<[i16]>::to_vec).collect()
    }

    /// A 6-digit code's listening turn with the default settings.
    async fn hear(recogniser: &Scripted, chunks: Vec<Vec<i16>>) -> Heard {
        let settings = EndpointSettings::default();
        let audio = futures::stream::iter(chunks).map(Sound::Audio);
        hear_code(recogniser, &settings, 6, audio).await.unwrap()
    }

    #[tokio::test]
    async fn stops_soon_after_the_codes_number_of_words_when_the_interim_has_its_length() {
        let recogniser = Scripted::new(&["4, 8, 2, 9, 1, 3."]);
        let heard = hear(&recogniser, call_audio(6, 1200)).await;
        assert_eq!(heard.digits, "482913");
        assert_eq!(heard.ending, Ending::Complete);
        assert_eq!(
            heard.recognitions, 1,
            "none at the pause between the groups"
        );
        // 0.3 + 6 * 0.4 + 4 * 0.3 + 1.2 = 5.1 s of speech, then the early pause, 0.3 s.
        assert_eq!(heard.speech_end, Some(Duration::from_millis(5100)));
        assert_eq!(heard.stopped_at, Duration::from_millis(5400));
        assert_eq!(heard.latency(), Some(Duration::from_millis(305)));
        // The recogniser heard the speech with 0.3 s around it, from the first tone less
        // 0.3 s (the start of the audio) to the early pause.
        let heard = recogniser.heard_samples.lock().unwrap().clone();
        assert_eq!(heard, [5400 * 8]);
    }

    #[tokio::test]
    async fn a_quick_reading_of_another_length_is_read_again_over_the_full_window() {
        let recogniser = Scripted::new(&["4, 8, 2, 9, 9, 1, 3.", "4, 8, 2, 9, 1, 3."]);
        let heard = hear(&recogniser, call_audio(6, 300)).await;
        assert_eq!(heard.digits, "482913");
        assert_eq!(heard.ending, Ending::Complete);
        assert_eq!(heard.recognitions, 2);
        let windows = recogniser.windows.lock().unwrap().clone();
        assert_eq!(windows, [Window::Heard, Window::Long]);
        assert_eq!(heard.latency(), Some(Duration::from_millis(310)));
    }

    #[tokio::test]
    async fn a_pause_with_a_digit_missing_is_recognised_after_the_longer_pause() {
        // Five words for a 6-digit code (two digits said as one): the interim waits for
        // `pause`, 0.7 s.
        let recogniser = Scripted::new(&["4, 8, 2, 9, 1, 3."]);
        let heard = hear(&recogniser, call_audio(5, 300)).await;
        assert_eq!(heard.ending, Ending::Complete);
        assert_eq!(heard.latency(), Some(Duration::from_millis(705)));
    }

    #[test]
    fn nothing_of_what_was_heard_is_debug_printed() {
        let heard = Heard {
            digits: "482913".into(),
            ending: Ending::Complete,
            speech_end: None,
            stopped_at: Duration::ZERO,
            recognitions: 1,
            result_wait: Duration::ZERO,
        };
        let recognition = Recognition {
            text: "4, 8, 2, 9, 1, 3.".into(),
            digits: "482913".into(),
            took: Duration::ZERO,
        };
        for printed in [format!("{heard:?}"), format!("{recognition:?}")] {
            assert!(
                !printed.contains("482913") && !printed.contains("4, 8"),
                "{printed}"
            );
        }
    }

    #[tokio::test]
    async fn a_short_interim_waits_for_the_end_and_an_unchanged_one_is_reused() {
        let recogniser = Scripted::new(&["4, 8, 2, 9, 1"]);
        let heard = hear(&recogniser, call_audio(5, 300)).await;
        assert_eq!(heard.digits, "48291");
        assert_eq!(heard.ending, Ending::Endpoint(EndReason::Hangover));
        assert_eq!(heard.recognitions, 1, "nothing was said after the pause");
    }

    #[tokio::test]
    async fn a_caller_who_goes_on_after_the_codes_length_is_heard_to_the_end() {
        // Seven digits for a 6-digit code, the seventh after a 0.5 s gap: the interim after
        // the sixth has the code's length, but the caller spoke again while it ran.
        let recogniser = Scripted::new(&["4 8 2 9 1 3", "4 8 2 9 1 3 7", "4 8 2 9 1 3 7"]);
        let mut audio = call_audio(6, 300);
        let tone_and_end = call_audio(7, 300).split_off(audio.len() - 150);
        audio.truncate(audio.len() - 150);
        audio.extend(vec![vec![0; 160]; 10]); // a 0.5 s gap before the seventh
        audio.extend(tone_and_end);
        let heard = hear(&recogniser, audio).await;
        assert_eq!(heard.digits, "4829137");
        assert_eq!(heard.ending, Ending::Endpoint(EndReason::Hangover));
        assert_eq!(
            heard.recognitions, 3,
            "the sixth's interim, the seventh's, read twice"
        );
        let lengths = recogniser.heard_samples.lock().unwrap().clone();
        assert!(lengths[0] < lengths[1], "the end recognises all the audio");
    }

    #[tokio::test]
    async fn short_noises_with_pauses_between_cost_a_few_recognitions() {
        // Six digits, then 20 ms noises 0.3 s apart until the listening cap: each is
        // followed by the early pause; none of the readings has the code's length.
        let recogniser = Scripted::new(&["4 8 2"; 40]);
        let mut audio = call_audio(6, 300);
        audio.truncate(audio.len() - 150);
        let noise: Vec<i16> = (0..160)
            .map(|i| (8000.0 * (i as f32 * 0.3).sin()) as i16)
            .collect();
        for _ in 0..40 {
            audio.push(noise.clone());
            audio.extend(vec![vec![0; 160]; 15]);
        }
        let heard = hear(&recogniser, audio).await;
        assert_eq!(heard.ending, Ending::Endpoint(EndReason::Cap));
        assert!(
            heard.recognitions <= 2 * MAX_INTERIMS + 2,
            "{} recognitions",
            heard.recognitions
        );
    }

    #[tokio::test]
    async fn silence_is_not_sent_to_the_recogniser() {
        let recogniser = Scripted::new(&[]);
        let silence = vec![vec![0i16; 160]; 400];
        let heard = hear(&recogniser, silence).await;
        assert_eq!(heard.digits, "");
        assert_eq!(heard.ending, Ending::Endpoint(EndReason::NoSpeech));
        assert_eq!((heard.recognitions, heard.latency()), (0, None));
    }

    #[tokio::test]
    async fn input_that_ends_early_is_recognised_as_it_is() {
        let recogniser = Scripted::new(&["4 8 2"]);
        let mut chunks = call_audio(4, 300);
        chunks.truncate(100); // 2 s: into the third digit, no pause yet
        let heard = hear(&recogniser, chunks).await;
        assert_eq!(heard.ending, Ending::InputEnded);
        assert_eq!(heard.digits, "482");
    }
}
