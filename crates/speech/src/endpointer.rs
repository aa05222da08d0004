//! Where the caller's speech starts, pauses and ends, judged from received audio alone.
//!
//! The audio is cut into 20 ms frames. A frame is voiced when its energy stands
//! [`VOICE_MARGIN_DB`] (after a voiced frame, [`FADE_MARGIN_DB`]) over the noise floor, the
//! quietest frame of the last
//! [`FLOOR_WINDOW_FRAMES`] frames: a line's hiss or hum raises the threshold with it, where a
//! fixed dBFS threshold would take a noisy line for endless speech. Every duration is counted
//! in samples received, never in wall-clock time, so a slow or bursty transport (or a test
//! feeding a whole clip at once) ends at the same place. A gap in the frames (a channel that
//! sends nothing while its caller is silent) comes in as [`Endpointer::push_gap`]: silence of
//! the length the transport measured, which leaves the noise floor as it was.

use std::collections::VecDeque;
use std::time::Duration;

use callverify_audio::SAMPLE_RATE;

/// 20 ms at 8 kHz, AudioSocket's usual frame (chunks of other lengths are fine).
const FRAME: usize = 160;
/// Consecutive voiced frames that make the start of speech (a click is one or two).
const START_FRAMES: u32 = 3;
/// A frame is voiced when this much louder than the noise floor...
const VOICE_MARGIN_DB: f32 = 9.0;
/// ...or this much, right after a voiced frame: a word's fading end, under line noise,
/// would otherwise count as silence and stretch the pauses between digits by 0.1-0.3 s.
const FADE_MARGIN_DB: f32 = 4.0;
/// The noise floor is the quietest frame of the last 2 s: digit gaps are far shorter.
const FLOOR_WINDOW_FRAMES: usize = 100;
/// The floor never goes under this: G.711's idle pattern or digital silence would otherwise
/// make the faintest breath "speech".
const FLOOR_MIN_DBFS: f32 = -65.0;
/// Silence between two stretches of speech that makes them two words: longer than the stop
/// inside a digit ("ei-t", "si-x", about 0.1 s), shorter than the gaps callers leave
/// between digits (0.2 s and more).
const WORD_GAP_FRAMES: usize = 8;
/// Audio kept for the recogniser before the start of speech and after its end: a soft first
/// or last sound may reach a little beyond what the endpointer heard as voiced.
const MARGIN_FRAMES: usize = 15;

/// When to call an interim recognition and when to stop listening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSettings {
    /// Silence after speech that reports [`Endpoint::Pause`]: longer than the gaps between
    /// digits (0.2-0.6 s), shorter than the hangover.
    pub pause: Duration,
    /// The same once as many words as expected were heard ([`Endpointer::expect_words`]):
    /// the caller has probably finished, so the recognition starts this soon after the last
    /// word. A digit gap this long costs a recognition that finds too few digits, no more.
    pub early_pause: Duration,
    /// Silence after speech that ends listening.
    pub hangover: Duration,
    /// The same while what was heard is shorter than the code (see
    /// [`Endpointer::set_hangover`]): a caller pausing between digit groups (1.4 s, more
    /// when the next digit starts softly under line noise) is not cut off.
    pub incomplete_hangover: Duration,
    /// Listening ends after this much audio, speech or not.
    pub max_listen: Duration,
    /// Listening ends when no speech has started after this much audio.
    pub no_speech: Duration,
}

impl Default for EndpointSettings {
    fn default() -> Self {
        Self {
            pause: Duration::from_millis(700),
            early_pause: Duration::from_millis(300),
            hangover: Duration::from_millis(1600),
            incomplete_hangover: Duration::from_millis(2400),
            max_listen: Duration::from_millis(12_000),
            no_speech: Duration::from_millis(5000),
        }
    }
}

/// What [`Endpointer::push`] noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// The caller paused after speaking: a good moment for an interim recognition.
    Pause,
    /// Listening is over.
    End(EndReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Silence for the hangover after speech.
    Hangover,
    /// `max_listen` of audio received.
    Cap,
    /// No speech within `no_speech`.
    NoSpeech,
}

/// Endpointing state of one listening turn. Pure and synchronous: feed it audio as it
/// arrives, in chunks of any length.
#[derive(Debug)]
pub struct Endpointer {
    pause: usize,
    early_pause: usize,
    /// Words (stretches of speech apart by [`WORD_GAP_FRAMES`]) the caller is expected to
    /// say ([`Endpointer::expect_words`]); `None`: the pause is `pause`, whatever was said.
    expected_words: Option<usize>,
    words: usize,
    hangover: usize,
    max_listen: usize,
    no_speech: usize,
    /// Everything received, up to the end of listening.
    audio: Vec<i16>,
    /// Samples of `audio` already judged, a whole number of frames.
    judged: usize,
    recent_levels: VecDeque<f32>,
    voiced_run: u32,
    /// Sample index where speech started (its first voiced frame), once it has.
    speech_start: Option<usize>,
    /// Sample index just past the last voiced frame, once speech has started.
    speech_end: Option<usize>,
    pause_reported: bool,
    ended: Option<EndReason>,
}

impl Endpointer {
    pub fn new(settings: &EndpointSettings) -> Self {
        Self {
            pause: samples(settings.pause),
            early_pause: samples(settings.early_pause),
            expected_words: None,
            words: 0,
            speech_start: None,
            hangover: samples(settings.hangover),
            max_listen: samples(settings.max_listen),
            no_speech: samples(settings.no_speech),
            audio: Vec::with_capacity(samples(settings.max_listen)),
            judged: 0,
            recent_levels: VecDeque::with_capacity(FLOOR_WINDOW_FRAMES),
            voiced_run: 0,
            speech_end: None,
            pause_reported: false,
            ended: None,
        }
    }

    /// Takes the next received samples (8 kHz mono). Returns the most telling event of this
    /// chunk: an `End` over a `Pause`. After the end, further audio is ignored.
    pub fn push(&mut self, samples: &[i16]) -> Option<Endpoint> {
        if self.ended.is_some() {
            return None;
        }
        let room = self.max_listen - self.audio.len();
        self.audio
            .extend_from_slice(&samples[..samples.len().min(room)]);
        self.judge(false)
    }

    /// Takes a gap in the frames: `gap` of silence the caller's side sent no audio for.
    /// It counts as received silence (the recogniser hears it as such) but is no measure of
    /// the line's noise, so the floor stays as the audio around it set it.
    pub fn push_gap(&mut self, gap: Duration) -> Option<Endpoint> {
        if self.ended.is_some() {
            return None;
        }
        let room = self.max_listen - self.audio.len();
        let new_len = self.audio.len() + samples(gap).min(room);
        self.audio.resize(new_len, 0);
        self.judge(true)
    }

    /// Judges the whole frames received since the last call; `gap`: they are a gap's.
    fn judge(&mut self, gap: bool) -> Option<Endpoint> {
        let mut event = None;
        while self.audio.len() - self.judged >= FRAME {
            let frame_end = self.judged + FRAME;
            let level = (!gap).then(|| level_dbfs(&self.audio[self.judged..frame_end]));
            self.judged = frame_end;
            if let Some(found) = self.judge_frame(level) {
                event = Some(found);
                if let Endpoint::End(reason) = found {
                    self.ended = Some(reason);
                    self.audio.truncate(frame_end);
                    return event;
                }
            }
        }
        if self.audio.len() == self.max_listen {
            self.ended = Some(EndReason::Cap);
            return Some(Endpoint::End(EndReason::Cap));
        }
        event
    }

    /// One frame at `level` dBFS; `None`: a frame of a gap, silent and not a noise sample.
    fn judge_frame(&mut self, level: Option<f32>) -> Option<Endpoint> {
        let voiced = level.is_some_and(|level| self.voiced(level));
        self.voiced_run = if voiced { self.voiced_run + 1 } else { 0 };

        let speaking = self.voiced_run >= START_FRAMES || (voiced && self.speech_end.is_some());
        if speaking {
            match self.speech_end {
                None => {
                    tracing::debug!(at_ms = self.ms(self.judged), "speech started");
                    self.words = 1;
                    self.speech_start = Some(self.judged - START_FRAMES as usize * FRAME);
                }
                Some(end) if self.judged - FRAME - end >= WORD_GAP_FRAMES * FRAME => {
                    self.words += 1;
                }
                Some(_) => {}
            }
            self.speech_end = Some(self.judged);
            self.pause_reported = false;
            return None;
        }
        match self.speech_end {
            None if self.judged >= self.no_speech => Some(Endpoint::End(EndReason::NoSpeech)),
            None => None,
            Some(end) => {
                let silence = self.judged - end;
                // Before the code's number of words (one less, for two digits said as one),
                // the caller has not finished: no interim, which could only come up short.
                let pause = match self.expected_words {
                    None => self.pause,
                    Some(expected) if self.words >= expected => self.early_pause,
                    Some(expected) if self.words + 1 >= expected => self.pause,
                    Some(_) => self.hangover,
                };
                if silence >= self.hangover {
                    Some(Endpoint::End(EndReason::Hangover))
                } else if silence >= pause && !self.pause_reported {
                    self.pause_reported = true;
                    Some(Endpoint::Pause)
                } else {
                    None
                }
            }
        }
    }

    /// Whether a frame at `level` is voice over the noise floor, which it then joins.
    fn voiced(&mut self, level: f32) -> bool {
        if self.recent_levels.len() == FLOOR_WINDOW_FRAMES {
            self.recent_levels.pop_front();
        }
        self.recent_levels.push_back(level);
        let floor = self
            .recent_levels
            .iter()
            .copied()
            .fold(f32::INFINITY, f32::min)
            .max(FLOOR_MIN_DBFS);
        let margin = if self.voiced_run > 0 {
            FADE_MARGIN_DB
        } else {
            VOICE_MARGIN_DB
        };
        level > floor + margin
    }

    /// Expects `words` words, a code of that many digits: the pause is reported sooner once
    /// they were heard ([`EndpointSettings::early_pause`]), after `pause` when one is
    /// missing (two digits said as one), and not at all before (a pause between digit
    /// groups is no moment to recognise).
    pub fn expect_words(&mut self, words: usize) {
        self.expected_words = Some(words);
    }

    /// Words heard so far: stretches of speech apart by 0.16 s or more.
    pub fn words(&self) -> usize {
        self.words
    }

    /// Changes the silence that ends listening from now on, e.g. to
    /// `incomplete_hangover` when an interim recognition heard too few digits.
    pub fn set_hangover(&mut self, hangover: Duration) {
        self.hangover = samples(hangover);
    }

    /// Everything received so far (after the end: up to the end).
    pub fn audio(&self) -> &[i16] {
        &self.audio
    }

    /// What the recogniser needs of [`Endpointer::audio`]: the speech, with 0.3 s of what
    /// came before and after it (the silence around it is only work for the recogniser, which
    /// adds silence of its own); empty before speech started.
    pub fn speech(&self) -> &[i16] {
        match (self.speech_start, self.speech_end) {
            (Some(start), Some(end)) => {
                let margin = MARGIN_FRAMES * FRAME;
                &self.audio[start.saturating_sub(margin)..(end + margin).min(self.audio.len())]
            }
            _ => &[],
        }
    }

    /// Audio received so far.
    pub fn received(&self) -> Duration {
        self.duration(self.audio.len())
    }

    /// Where the last voiced frame ended, in received audio; `None` before speech started.
    pub fn speech_end(&self) -> Option<Duration> {
        self.speech_end.map(|end| self.duration(end))
    }

    pub fn ended(&self) -> Option<EndReason> {
        self.ended
    }

    fn duration(&self, samples: usize) -> Duration {
        Duration::from_micros(samples as u64 * 1_000_000 / SAMPLE_RATE as u64)
    }

    fn ms(&self, samples: usize) -> u128 {
        self.duration(samples).as_millis()
    }
}

fn samples(duration: Duration) -> usize {
    (duration.as_millis() as usize * SAMPLE_RATE as usize) / 1000
}

/// A frame's mean power in dB relative to a full-scale square wave (digital silence: -inf).
fn level_dbfs(frame: &[i16]) -> f32 {
    let power = frame.iter().map(|&s| f32::from(s).powi(2)).sum::<f32>() / frame.len() as f32;
    10.0 * (power / (32768.0f32 * 32768.0)).log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tone at `dbfs` (peak amplitude), or silence for `None`.
    fn tone(ms: usize, dbfs: Option<f32>) -> Vec<i16> {
        let n = ms * SAMPLE_RATE as usize / 1000;
        let Some(dbfs) = dbfs else {
            return vec![0; n];
        };
        let amplitude = 32767.0 * 10f32.powf(dbfs / 20.0);
        (0..n)
            .map(|i| (amplitude * (i as f32 * 0.35).sin()) as i16)
            .collect()
    }

    /// White-ish noise at `dbfs` from a fixed-seed xorshift, so tests are deterministic.
    fn noise(ms: usize, dbfs: f32, seed: &mut u32) -> Vec<i16> {
        let amplitude = 32767.0 * 10f32.powf(dbfs / 20.0);
        (0..ms * SAMPLE_RATE as usize / 1000)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 17;
                *seed ^= *seed << 5;
                (amplitude * (*seed as f32 / u32::MAX as f32 * 2.0 - 1.0)) as i16
            })
            .collect()
    }

    fn mix(a: &[i16], b: &[i16]) -> Vec<i16> {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| x.saturating_add(y))
            .collect()
    }

    /// Feeds `audio` in `chunk`-sample pieces; returns each event with the sample count
    /// received when it came.
    fn run(settings: &EndpointSettings, audio: &[i16], chunk: usize) -> Vec<(usize, Endpoint)> {
        let mut ep = Endpointer::new(settings);
        let mut events = Vec::new();
        let mut fed = 0;
        for piece in audio.chunks(chunk) {
            fed += piece.len();
            if let Some(event) = ep.push(piece) {
                events.push((fed, event));
            }
        }
        events
    }

    fn speech_like(digits: usize, gap_ms: usize) -> Vec<i16> {
        let mut audio = tone(500, None);
        for _ in 0..digits {
            audio.extend(tone(400, Some(-12.0)));
            audio.extend(tone(gap_ms, None));
        }
        audio.extend(tone(3000, None));
        audio
    }

    /// A channel that sends no frames while its caller is silent: the gaps are silence, the
    /// first reading ends after the hangover, and the floor is still the line's.
    #[test]
    fn a_gap_in_the_frames_is_silence_that_ends_listening() {
        let settings = EndpointSettings::default();
        let mut seed = 7;
        let mut ep = Endpointer::new(&settings);
        let mut said = noise(500, -50.0, &mut seed);
        for _ in 0..6 {
            said = [
                said,
                mix(&tone(400, Some(-12.0)), &noise(400, -50.0, &mut seed)),
            ]
            .concat();
            said.extend(noise(300, -50.0, &mut seed));
        }
        assert_eq!(ep.push(&said), None);
        let spoken = ep.audio().len();
        assert_eq!(
            ep.push_gap(Duration::from_millis(800)),
            Some(Endpoint::Pause)
        );
        assert_eq!(ep.push_gap(Duration::from_millis(400)), None);
        assert_eq!(
            ep.push_gap(Duration::from_millis(600)),
            Some(Endpoint::End(EndReason::Hangover))
        );
        // The gap is in the audio as silence, up to the end.
        let audio = ep.audio();
        assert!(audio.len() > spoken && audio[spoken..].iter().all(|&s| s == 0));
        assert!(ep.push(&tone(400, Some(-12.0))).is_none(), "ended");

        // Line noise after a gap is still noise: the gap's digital silence did not lower
        // the floor.
        let mut ep = Endpointer::new(&settings);
        ep.push(&noise(1000, -45.0, &mut seed));
        ep.push_gap(Duration::from_millis(1000));
        assert_eq!(ep.push(&noise(1000, -45.0, &mut seed)), None);
        assert_eq!(ep.speech_end(), None, "noise after a gap is not speech");
        assert_eq!(
            ep.push_gap(Duration::from_secs(5)),
            Some(Endpoint::End(EndReason::NoSpeech))
        );
    }

    #[test]
    fn ends_after_the_hangover_counted_in_received_audio() {
        let audio = speech_like(4, 400);
        let events = run(&EndpointSettings::default(), &audio, 160);
        // speech ends at 0.5 + 4 * 0.8 - 0.4 = 3.3 s; hangover 1.6 s: the end at 4.9 s.
        let (at, last) = *events.last().unwrap();
        assert_eq!(last, Endpoint::End(EndReason::Hangover));
        assert_eq!(at, 4900 * 8);
        // The 0.4 s digit gaps are no pause; the final silence is, once.
        let pauses: Vec<_> = events.iter().filter(|e| e.1 == Endpoint::Pause).collect();
        assert_eq!(pauses.len(), 1);
        assert_eq!(pauses[0].0, 4000 * 8);
    }

    #[test]
    fn the_pause_comes_sooner_once_the_expected_words_were_heard_and_not_before_one_short() {
        let audio = speech_like(4, 400);
        let events = |expected: usize| {
            let mut ep = Endpointer::new(&EndpointSettings::default());
            ep.expect_words(expected);
            let mut events = Vec::new();
            for (i, piece) in audio.chunks(160).enumerate() {
                if let Some(event) = ep.push(piece) {
                    events.push(((i + 1) * 160, event));
                }
            }
            assert_eq!(ep.words(), 4);
            events
        };
        // Speech ends at 3.3 s (see above); the 0.4 s digit gaps are no pause.
        assert_eq!(
            events(4),
            [
                (3600 * 8, Endpoint::Pause),
                (4900 * 8, Endpoint::End(EndReason::Hangover))
            ]
        );
        assert_eq!(events(5)[0], (4000 * 8, Endpoint::Pause), "one word short");
        assert_eq!(
            events(6),
            [(4900 * 8, Endpoint::End(EndReason::Hangover))],
            "two words short: no interim"
        );
    }

    #[test]
    fn chunk_length_does_not_matter() {
        let audio = speech_like(6, 300);
        let reference = run(&EndpointSettings::default(), &audio, 160);
        for chunk in [1, 72, 153, 306, 320, 4000, audio.len()] {
            let events = run(&EndpointSettings::default(), &audio, chunk);
            let ends: Vec<_> = events
                .iter()
                .filter(|e| matches!(e.1, Endpoint::End(_)))
                .collect();
            assert_eq!(ends.len(), 1, "chunk {chunk}");
            assert_eq!(ends[0].1, reference.last().unwrap().1, "chunk {chunk}");
            // The end falls on the same frame, reported with the chunk holding it.
            assert!(ends[0].0 >= reference.last().unwrap().0, "chunk {chunk}");
            assert!(ends[0].0 < reference.last().unwrap().0 + chunk.max(160));
        }
    }

    #[test]
    fn a_whole_clip_at_once_reports_the_end_and_keeps_audio_up_to_it() {
        let audio = speech_like(4, 400);
        let mut ep = Endpointer::new(&EndpointSettings::default());
        assert_eq!(ep.push(&audio), Some(Endpoint::End(EndReason::Hangover)));
        assert_eq!(ep.audio().len(), 4900 * 8);
        assert_eq!(ep.speech_end(), Some(Duration::from_millis(3300)));
        assert_eq!(ep.push(&audio), None, "ignored after the end");
    }

    #[test]
    fn a_group_pause_reports_pause_and_speech_goes_on() {
        let mut audio = tone(300, None);
        audio.extend(tone(400, Some(-10.0)));
        audio.extend(tone(1000, None));
        audio.extend(tone(400, Some(-10.0)));
        audio.extend(tone(2000, None));
        let events = run(&EndpointSettings::default(), &audio, 160);
        let kinds: Vec<_> = events.iter().map(|e| e.1).collect();
        assert_eq!(
            kinds,
            [
                Endpoint::Pause,
                Endpoint::Pause,
                Endpoint::End(EndReason::Hangover)
            ]
        );
    }

    #[test]
    fn steady_line_noise_is_not_speech_but_speech_over_it_is() {
        let mut seed = 7;
        let line = noise(9000, -30.0, &mut seed);
        let quiet = run(&EndpointSettings::default(), &line, 160);
        assert_eq!(
            quiet,
            [(5000 * 8, Endpoint::End(EndReason::NoSpeech))],
            "-30 dBFS hiss is a noise floor, not speech"
        );

        let spoken = mix(&speech_like(5, 300), &line);
        let events = run(&EndpointSettings::default(), &spoken, 160);
        assert_eq!(events.last().unwrap().1, Endpoint::End(EndReason::Hangover));
    }

    #[test]
    fn speech_from_the_first_frame_is_heard() {
        let mut audio = tone(600, Some(-12.0));
        audio.extend(tone(300, None));
        audio.extend(tone(600, Some(-12.0)));
        audio.extend(tone(2000, None));
        let mut ep = Endpointer::new(&EndpointSettings::default());
        let mut last = None;
        for piece in audio.chunks(160) {
            last = ep.push(piece).or(last);
        }
        assert_eq!(last, Some(Endpoint::End(EndReason::Hangover)));
        assert_eq!(ep.speech_end(), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn clicks_do_not_start_speech() {
        let mut audio = tone(1000, None);
        audio.extend(tone(40, Some(-6.0)));
        audio.extend(tone(5000, None));
        let events = run(&EndpointSettings::default(), &audio, 160);
        assert_eq!(events, [(5000 * 8, Endpoint::End(EndReason::NoSpeech))]);
    }

    #[test]
    fn endless_speech_is_capped() {
        let settings = EndpointSettings {
            max_listen: Duration::from_millis(3000),
            ..EndpointSettings::default()
        };
        let audio = tone(10_000, Some(-12.0));
        let mut ep = Endpointer::new(&settings);
        assert_eq!(ep.push(&audio[..16_000]), None);
        assert_eq!(
            ep.push(&audio[16_000..]),
            Some(Endpoint::End(EndReason::Cap))
        );
        assert_eq!(ep.received(), Duration::from_millis(3000));
        assert_eq!(ep.ended(), Some(EndReason::Cap));
    }
}
