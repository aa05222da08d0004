//! Spoken test codes from a real human voice: Asterisk's "Allison" digit prompts (Debian
//! package `asterisk-core-sounds-en-wav`), joined with the gaps people leave between digits
//! and between digit groups, sent through G.711 mu-law as a phone line does, some with line
//! noise. Deterministic for a seed. For the tests and `callverify-bench --speech`.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use callverify_audio::{g711, wav, SAMPLE_RATE};

/// Where Debian's `asterisk-core-sounds-en-wav` puts Allison's digits (8 kHz, 16-bit mono).
pub const ALLISON_DIGITS: &str = "/usr/share/asterisk/sounds/en_US_f_Allison/digits";

/// Samples quieter than this (about -40 dBFS) at a prompt's ends are the recording's
/// silence, trimmed so that the gaps are the corpus's own.
const TRIM_LEVEL: i16 = 330;
/// Noisy clips: the noise is this far under the speech's power.
const NOISY_SNR_DB: f32 = 20.0;

#[derive(Debug, thiserror::Error)]
#[error("{0} (install Debian's asterisk-core-sounds-en-wav)")]
pub struct CorpusError(#[from] wav::WavError);

/// One spoken code.
pub struct Clip {
    pub code: String,
    /// 8 kHz mono, mu-law decoded, ending in silence longer than any hangover.
    pub audio: Vec<i16>,
    pub noisy: bool,
    /// Whether the code is said in two groups, with a 1.0-1.4 s pause between.
    pub group_pause: bool,
    /// Seconds from the start to the end of the last digit.
    pub speech_secs: f32,
}

/// The ten digit prompts, trimmed.
pub struct Voice {
    digits: Vec<Vec<i16>>,
}

impl Voice {
    /// Reads `0.wav` .. `9.wav` from `dir` (e.g. [`ALLISON_DIGITS`]).
    pub fn load(dir: &Path) -> Result<Self, CorpusError> {
        let digits = (0..10)
            .map(|d| wav::read(&dir.join(format!("{d}.wav"))).map(|s| trim(&s).to_vec()))
            .collect::<Result<_, _>>()?;
        Ok(Self { digits })
    }

    /// `count` clips of 4 to 8 digits: half clean, half with noise at 20 dB SNR; gaps of
    /// 0.2-0.6 s between digits, and in one clip of three a 1.0-1.4 s pause between groups.
    pub fn clips(&self, count: usize, seed: u64) -> Vec<Clip> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..count)
            .map(|i| self.clip(&mut rng, i % 2 == 1))
            .collect()
    }

    /// `code` said as a caller would (gaps of 0.2-0.6 s, perhaps one group pause), then 3 s
    /// of silence, through G.711 mu-law: what reaches the daemon over AudioSocket.
    pub fn say(&self, code: &str, seed: u64) -> Vec<i16> {
        self.said(code, seed, false)
    }

    /// As [`Voice::say`], over line noise at 20 dB SNR.
    pub fn say_over_noise(&self, code: &str, seed: u64) -> Vec<i16> {
        self.said(code, seed, true)
    }

    fn said(&self, code: &str, seed: u64, noisy: bool) -> Vec<i16> {
        let mut rng = StdRng::seed_from_u64(seed);
        self.speak(&mut rng, code.to_owned(), noisy).audio
    }

    fn clip(&self, rng: &mut StdRng, noisy: bool) -> Clip {
        let length = rng.gen_range(4..=8);
        let code: String = (0..length)
            .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
            .collect();
        self.speak(rng, code, noisy)
    }

    fn speak(&self, rng: &mut StdRng, code: String, noisy: bool) -> Clip {
        let ms = |n: u32| vec![0i16; (n * SAMPLE_RATE / 1000) as usize];
        let length = code.len();
        let group_after = rng
            .gen_bool(1.0 / 3.0)
            .then(|| rng.gen_range(2..length - 1));
        let mut audio = ms(rng.gen_range(300..1000));
        for (i, digit) in code.bytes().enumerate() {
            audio.extend(&self.digits[usize::from(digit - b'0')]);
            if i + 1 < length {
                let gap = if group_after == Some(i + 1) {
                    rng.gen_range(1000..=1400)
                } else {
                    rng.gen_range(200..=600)
                };
                audio.extend(ms(gap));
            }
        }
        let speech_secs = audio.len() as f32 / SAMPLE_RATE as f32;
        audio.extend(ms(3000));
        if noisy {
            add_noise(&mut audio, rng);
        }
        let audio = audio
            .into_iter()
            .map(|s| g711::ulaw_to_linear(g711::linear_to_ulaw(s)))
            .collect();
        Clip {
            code,
            audio,
            noisy,
            group_pause: group_after.is_some(),
            speech_secs,
        }
    }
}

/// Gaussian noise at [`NOISY_SNR_DB`] under the power of the clip's speech (its louder
/// samples, so that gaps do not count).
fn add_noise(audio: &mut [i16], rng: &mut StdRng) {
    let speech: Vec<f32> = audio
        .iter()
        .filter(|s| s.unsigned_abs() > TRIM_LEVEL as u16)
        .map(|&s| f32::from(s))
        .collect();
    let power = speech.iter().map(|s| s * s).sum::<f32>() / speech.len().max(1) as f32;
    let sigma = (power / 10f32.powf(NOISY_SNR_DB / 10.0)).sqrt();
    for sample in audio {
        // Box-Muller: two uniform draws, one normal.
        let (u1, u2): (f32, f32) = (rng.gen_range(f32::EPSILON..1.0), rng.gen());
        let normal = (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos();
        *sample = (f32::from(*sample) + sigma * normal).clamp(-32768.0, 32767.0) as i16;
    }
}

fn trim(samples: &[i16]) -> &[i16] {
    let loud = |s: &i16| s.unsigned_abs() > TRIM_LEVEL as u16;
    let start = samples.iter().position(loud).unwrap_or(0);
    let end = samples.iter().rposition(loud).map_or(start, |i| i + 1);
    &samples[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_the_recordings_silence() {
        assert_eq!(trim(&[0, 5, 1000, -2000, 3, 0]), &[1000, -2000]);
        assert_eq!(trim(&[0, 1, 2]), &[] as &[i16]);
    }
}
