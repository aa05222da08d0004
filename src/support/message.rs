//! Recording a support-line message from the caller's AudioSocket stream: it ends on `#`,
//! on a long silence after speech, at the length cap, or when the caller hangs up; silence
//! before and after the speech is trimmed. Durations count received audio (frames that
//! waited in the socket are not silence), and a gap in the frames counts as silence as long
//! as the wall clock says (a channel that sends nothing while its caller is quiet); a
//! wall-clock backstop ends a stalled stream.

use std::time::Duration;

use callverify_audio::SAMPLE_RATE;
use callverify_pbx::audiosocket::{AudioStream, Heard};
use callverify_speech::{self as speech, Sound};
use futures::StreamExt;

#[derive(Debug, Clone, Copy)]
pub struct MessageLimits {
    /// Longest message kept; the rest is cut.
    pub max: Duration,
    /// Silence after speech that ends the message.
    pub end_silence: Duration,
    /// Silence from the tone on that ends it with nothing said.
    pub no_speech: Duration,
}

/// How a message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageEnd {
    Key,
    Silence,
    Cap,
    HungUp,
}

impl MessageEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageEnd::Key => "key",
            MessageEnd::Silence => "silence",
            MessageEnd::Cap => "cap",
            MessageEnd::HungUp => "hangup",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// 8 kHz samples, trimmed of leading and trailing silence.
    pub samples: Vec<i16>,
    pub ended_by: MessageEnd,
}

impl Message {
    /// Whether anything was said.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn duration(&self) -> Duration {
        samples_to_duration(self.samples.len())
    }
}

/// A frame louder than this is speech (the level the capture's endpointer used).
const VOICE_DBFS: f64 = -40.0;
/// Silence kept around the speech when trimming.
const MARGIN: Duration = Duration::from_millis(300);

/// Record until the message ends; the stream is ended, unless the caller hung up.
pub async fn record(mut stream: AudioStream, limits: MessageLimits) -> Message {
    let mut recorder = Recorder::new(limits);
    let backstop = limits.max + limits.no_speech + Duration::from_secs(10);
    let ended_by = tokio::time::timeout(backstop, async {
        let mut pound = false;
        let audio = futures::stream::unfold((&mut stream, &mut pound), |(stream, pound)| async {
            loop {
                match stream.next().await? {
                    Heard::Audio(samples) => return Some((samples, (stream, pound))),
                    Heard::Key('#') => {
                        *pound = true;
                        return None;
                    }
                    // Other keys are not part of the message.
                    Heard::Key(_) => {}
                }
            }
        });
        // A channel that sends no frames while its caller is silent leaves gaps: silence
        // as long as the wall clock says, so the message ends on it.
        let mut sounds = speech::with_gaps(Box::pin(audio), speech::GAP_TICK);
        while let Some(sound) = sounds.next().await {
            if let Some(end) = recorder.hear(sound) {
                return (end, true);
            }
        }
        drop(sounds);
        match pound {
            true => (MessageEnd::Key, true),
            false => (MessageEnd::HungUp, false),
        }
    })
    .await;
    let ended_by = match ended_by {
        Ok((end, still_up)) => {
            if still_up {
                stream.hang_up().await;
            }
            end
        }
        Err(_) => {
            tracing::warn!("AudioSocket stream stalled: ending the message");
            stream.hang_up().await;
            MessageEnd::Cap
        }
    };
    recorder.finish(ended_by)
}

/// The message so far, and where its speech starts and ends.
struct Recorder {
    limits: MessageLimits,
    samples: Vec<i16>,
    first_voice: Option<usize>,
    /// Sample index just after the last voiced frame.
    last_voice: usize,
}

impl Recorder {
    fn new(limits: MessageLimits) -> Self {
        Self {
            limits,
            // The longest message, at once: growing by doubling would hold up to twice it.
            samples: Vec::with_capacity(duration_to_samples(limits.max)),
            first_voice: None,
            last_voice: 0,
        }
    }

    /// Take what was heard (a gap is silence: kept as such, so the pauses stay in the
    /// message); the reason the message ends, if it does.
    fn hear(&mut self, sound: Sound) -> Option<MessageEnd> {
        let max = duration_to_samples(self.limits.max);
        let room = max.saturating_sub(self.samples.len());
        match sound {
            Sound::Audio(frame) => {
                let frame = &frame[..frame.len().min(room)];
                if dbfs(frame) > VOICE_DBFS {
                    self.first_voice.get_or_insert(self.samples.len());
                    self.last_voice = self.samples.len() + frame.len();
                }
                self.samples.extend_from_slice(frame);
            }
            Sound::Gap(gap) => {
                let silence = duration_to_samples(gap).min(room);
                self.samples.resize(self.samples.len() + silence, 0);
            }
        }
        let heard = self.samples.len();
        if heard >= max {
            return Some(MessageEnd::Cap);
        }
        let (quiet_since, allowed) = match self.first_voice {
            Some(_) => (self.last_voice, self.limits.end_silence),
            None => (0, self.limits.no_speech),
        };
        (heard - quiet_since >= duration_to_samples(allowed)).then_some(MessageEnd::Silence)
    }

    fn finish(self, ended_by: MessageEnd) -> Message {
        let mut samples = self.samples;
        match self.first_voice {
            None => samples = Vec::new(),
            // Trimmed in place: no second copy of a long message.
            Some(first) => {
                let margin = duration_to_samples(MARGIN);
                samples.truncate(self.last_voice + margin);
                samples.drain(..first.saturating_sub(margin));
            }
        }
        Message { samples, ended_by }
    }
}

/// Level of a frame in dB below full scale (RMS); silence is -inf.
fn dbfs(frame: &[i16]) -> f64 {
    if frame.is_empty() {
        return f64::NEG_INFINITY;
    }
    let power: f64 = frame.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / frame.len() as f64;
    10.0 * (power / f64::from(i16::MAX).powi(2)).log10()
}

fn duration_to_samples(d: Duration) -> usize {
    (d.as_millis() as usize) * (SAMPLE_RATE as usize) / 1000
}

fn samples_to_duration(n: usize) -> Duration {
    Duration::from_millis((n * 1000 / SAMPLE_RATE as usize) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> MessageLimits {
        MessageLimits {
            max: Duration::from_secs(10),
            end_silence: Duration::from_secs(3),
            no_speech: Duration::from_secs(5),
        }
    }

    fn voice(ms: usize) -> Vec<i16> {
        (0..ms * 8)
            .map(|i| if i % 2 == 0 { 6000 } else { -6000 })
            .collect()
    }

    fn silence(ms: usize) -> Vec<i16> {
        vec![0; ms * 8]
    }

    /// Feed in 20 ms frames; the end, if reached.
    fn feed(r: &mut Recorder, samples: &[i16]) -> Option<MessageEnd> {
        samples
            .chunks(160)
            .find_map(|f| r.hear(Sound::Audio(f.to_vec())))
    }

    #[test]
    fn speech_then_silence_ends_and_is_trimmed() {
        let mut r = Recorder::new(limits());
        assert_eq!(feed(&mut r, &silence(1000)), None);
        assert_eq!(feed(&mut r, &voice(2000)), None);
        assert_eq!(feed(&mut r, &silence(3000)), Some(MessageEnd::Silence));
        let m = r.finish(MessageEnd::Silence);
        assert_eq!(m.duration(), Duration::from_millis(2600));
    }

    #[test]
    fn a_silent_caller_leaves_nothing() {
        let mut r = Recorder::new(limits());
        assert_eq!(feed(&mut r, &silence(6000)), Some(MessageEnd::Silence));
        assert!(r.finish(MessageEnd::Silence).is_empty());
    }

    #[test]
    fn the_cap_cuts_a_long_message() {
        let mut r = Recorder::new(limits());
        assert_eq!(feed(&mut r, &voice(12_000)), Some(MessageEnd::Cap));
        let m = r.finish(MessageEnd::Cap);
        assert_eq!(m.duration(), Duration::from_secs(10));
    }

    #[test]
    fn a_gap_in_the_frames_is_silence_kept_in_the_message() {
        let mut r = Recorder::new(limits());
        assert_eq!(feed(&mut r, &voice(500)), None);
        assert_eq!(r.hear(Sound::Gap(Duration::from_millis(1000))), None);
        assert_eq!(feed(&mut r, &voice(500)), None);
        assert_eq!(
            r.hear(Sound::Gap(Duration::from_millis(3000))),
            Some(MessageEnd::Silence)
        );
        let m = r.finish(MessageEnd::Silence);
        assert_eq!(m.duration(), Duration::from_millis(2300));
    }

    #[test]
    fn levels() {
        assert!(dbfs(&silence(20)).is_infinite());
        assert!((dbfs(&voice(20)) - (-14.74)).abs() < 0.1);
        assert!(dbfs(&[40; 160]) < VOICE_DBFS);
    }
}
