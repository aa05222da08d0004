//! Spoken test codes from a real human voice: Asterisk's "Allison" digit prompts (Debian
//! package `asterisk-core-sounds-en-wav`), joined with the gaps people leave between digits
//! and between digit groups, sent through G.711 mu-law as a phone line does, some with line
//! noise. Deterministic for a seed. For the tests and `callverify bench --speech`.

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::SAMPLE_RATE;

/// Where Debian's `asterisk-core-sounds-en-wav` puts Allison's digits (8 kHz, 16-bit mono).
pub const ALLISON_DIGITS: &str = "/usr/share/asterisk/sounds/en_US_f_Allison/digits";

/// Samples quieter than this (about -40 dBFS) at a prompt's ends are the recording's
/// silence, trimmed so that the gaps are the corpus's own.
const TRIM_LEVEL: i16 = 330;
/// Noisy clips: the noise is this far under the speech's power.
const NOISY_SNR_DB: f32 = 20.0;

#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("{path}: {source} (install Debian's asterisk-core-sounds-en-wav)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
}

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
            .map(|d| read_wav(&dir.join(format!("{d}.wav"))).map(|s| trim(&s).to_vec()))
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
            .map(|s| ulaw_decode(ulaw_encode(s)))
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

/// A 16-bit mono 8 kHz PCM WAV file's samples.
fn read_wav(path: &Path) -> Result<Vec<i16>, CorpusError> {
    let bytes = std::fs::read(path).map_err(|source| CorpusError::Read {
        path: path.to_owned(),
        source,
    })?;
    let bad = |message: &str| CorpusError::Format {
        path: path.to_owned(),
        message: message.to_owned(),
    };
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(bad("not a RIFF WAVE file"));
    }
    let mut at = 12;
    let mut format_ok = false;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let size = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        let body = bytes
            .get(at + 8..at + 8 + size)
            .ok_or_else(|| bad("truncated chunk"))?;
        match id {
            b"fmt " if body.len() >= 16 => {
                let field = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
                let rate = u32::from_le_bytes(body[4..8].try_into().unwrap());
                // PCM, mono, 8 kHz, 16 bits.
                format_ok =
                    field(0) == 1 && field(2) == 1 && rate == SAMPLE_RATE && field(14) == 16;
            }
            b"data" if format_ok => {
                return Ok(body
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect())
            }
            b"data" => return Err(bad("not 16-bit PCM mono 8 kHz")),
            _ => {}
        }
        at += 8 + size + size % 2;
    }
    Err(bad("no data chunk"))
}

const ULAW_BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 32635;

/// G.711 mu-law encoding of one sample.
fn ulaw_encode(sample: i16) -> u8 {
    let sign = if sample < 0 { 0x80 } else { 0 };
    let magnitude = (i32::from(sample).abs().min(ULAW_CLIP) + ULAW_BIAS) as u32;
    let exponent = (31 - magnitude.leading_zeros()).saturating_sub(7).min(7);
    let mantissa = (magnitude >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

/// G.711 mu-law decoding of one byte.
fn ulaw_decode(byte: u8) -> i16 {
    let byte = !byte;
    let exponent = i32::from((byte >> 4) & 0x07);
    let mantissa = i32::from(byte & 0x0F);
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    (if byte & 0x80 != 0 {
        -magnitude
    } else {
        magnitude
    }) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_round_trip_is_within_its_step() {
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_encode(-1), 0x7F);
        for sample in (-32768..=32767).step_by(7) {
            let back = i32::from(ulaw_decode(ulaw_encode(sample as i16)));
            // A segment's step is 1/16 of its top (the decoder takes the step's lower
            // edge); above 32635 the encoder clips.
            let error = (sample - back).abs();
            assert!(
                error <= (sample.abs() + 132) / 16 + 1 || sample.abs() > 32635,
                "{sample} -> {back}"
            );
        }
    }

    #[test]
    fn trims_the_recordings_silence() {
        assert_eq!(trim(&[0, 5, 1000, -2000, 3, 0]), &[1000, -2000]);
        assert_eq!(trim(&[0, 1, 2]), &[] as &[i16]);
    }
}
