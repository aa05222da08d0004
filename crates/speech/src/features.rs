//! Whisper's audio front end: 80 log-mel bins of 25 ms windows every 10 ms at 16 kHz, as
//! OpenAI's `log_mel_spectrogram` computes them (periodic Hann window, centred frames with
//! reflected edges, Slaney mel filters, log10 clamped 8 below the clip's loudest bin), for
//! exactly as much audio as was heard plus a little silence, not Whisper's fixed 30 s window:
//! the encoder's work grows with the frames it reads, and a spoken code is a few seconds.

use std::sync::Arc;

use mel_spec::mel::mel;
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

/// Samples per second the features are computed at.
pub const RATE: usize = 16_000;
/// Window and hop, in samples at [`RATE`].
const N_FFT: usize = 400;
const HOP: usize = 160;
/// Mel bins of Whisper base (and every Whisper before large-v3).
pub const MELS: usize = 80;
/// Frames the encoder reads at most: 30 s.
const MAX_FRAMES: usize = 3000;

/// The front end's fixed parts: the window, the FFT plan, the filters.
pub struct FrontEnd {
    window: Vec<f32>,
    fft: Arc<dyn Fft<f32>>,
    /// `MELS` rows of `N_FFT / 2 + 1` weights.
    filters: Vec<Vec<f32>>,
}

impl FrontEnd {
    pub fn new() -> Self {
        let window = (0..N_FFT)
            .map(|n| {
                let phase = std::f32::consts::TAU * n as f32 / N_FFT as f32;
                0.5 - 0.5 * phase.cos()
            })
            .collect();
        let filters = mel(RATE as f64, N_FFT, MELS, None, None, false, true)
            .rows()
            .into_iter()
            .map(|row| row.iter().map(|&w| w as f32).collect())
            .collect();
        Self {
            window,
            fft: FftPlanner::new().plan_fft_forward(N_FFT),
            filters,
        }
    }

    /// The log-mel features of `audio` (16 kHz, in [-1, 1]) followed by silence (digital
    /// zeros, as Whisper pads) up to `frames` frames, as [`frames_for`] counts them (longer
    /// audio is cut): `MELS` rows of `frames` values, row-major (the encoder's `[1, MELS,
    /// frames]` layout).
    pub fn features(&self, audio: &[f32], frames: usize) -> Vec<f32> {
        let frames = frames.next_multiple_of(2).clamp(2, MAX_FRAMES);
        let total = frames * HOP;
        // The padded signal, centred: N_FFT / 2 reflected samples before and after.
        let half = N_FFT / 2;
        let sample = |i: usize| audio.get(i).copied().unwrap_or(0.0);
        let reflected = |i: isize| -> f32 {
            let len = total as isize;
            let i = if i < 0 {
                -i
            } else if i >= len {
                2 * (len - 1) - i
            } else {
                i
            };
            sample(i.clamp(0, len - 1) as usize)
        };
        let bins = N_FFT / 2 + 1;
        let mut power = vec![0f32; bins];
        let mut buffer = vec![Complex::new(0f32, 0f32); N_FFT];
        let mut scratch = vec![Complex::new(0f32, 0f32); self.fft.get_inplace_scratch_len()];
        let mut values = vec![0f32; MELS * frames];
        for frame in 0..frames {
            let start = (frame * HOP) as isize - half as isize;
            for (k, slot) in buffer.iter_mut().enumerate() {
                *slot = Complex::new(reflected(start + k as isize) * self.window[k], 0.0);
            }
            self.fft.process_with_scratch(&mut buffer, &mut scratch);
            for (p, c) in power.iter_mut().zip(&buffer) {
                *p = c.norm_sqr();
            }
            for (m, filter) in self.filters.iter().enumerate() {
                let energy: f32 = filter.iter().zip(&power).map(|(w, p)| w * p).sum();
                values[m * frames + frame] = energy.max(1e-10).log10();
            }
        }
        let loudest = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for value in &mut values {
            *value = (value.max(loudest - 8.0) + 4.0) / 4.0;
        }
        values
    }
}

/// The frames of `samples` of audio (16 kHz) and `padding` frames of silence: an even
/// number (the encoder halves them), [`MAX_FRAMES`] at most (longer audio is cut to its first
/// 30 s).
pub fn frames_for(samples: usize, padding: usize) -> usize {
    (samples.div_ceil(HOP) + padding)
        .next_multiple_of(2)
        .clamp(2, MAX_FRAMES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f32, seconds: f32) -> Vec<f32> {
        (0..(seconds * RATE as f32) as usize)
            .map(|i| 0.5 * (std::f32::consts::TAU * hz * i as f32 / RATE as f32).sin())
            .collect()
    }

    #[test]
    fn frames_cover_the_audio_and_the_padding_evenly() {
        let front = FrontEnd::new();
        let frames = |audio: &[f32], padding| {
            let values = front.features(audio, frames_for(audio.len(), padding));
            assert_eq!(values.len() % MELS, 0);
            values.len() / MELS
        };
        assert_eq!(frames(&tone(440.0, 1.0), 50), 150);
        assert_eq!(
            frames(&tone(440.0, 1.005), 0),
            102,
            "a part frame counts, and the count is even"
        );
        assert_eq!(frames(&tone(440.0, 40.0), 100), MAX_FRAMES);
        // A batch's clips are padded to the longest one's frames.
        assert_eq!(front.features(&tone(440.0, 1.0), 240).len(), MELS * 240);
    }

    #[test]
    fn a_tone_lights_its_own_mel_bins_and_the_padding_is_the_floor() {
        let front = FrontEnd::new();
        let frames = frames_for(RATE, 100);
        let features = front.features(&tone(1000.0, 1.0), frames);
        let at = |m: usize, t: usize| features[m * frames + t];
        // In the middle of the tone, the loudest bin is the one whose filter covers 1 kHz.
        let loudest = (0..MELS)
            .max_by(|&a, &b| at(a, 50).total_cmp(&at(b, 50)))
            .unwrap();
        let peak = front.filters[loudest]
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(bin, _)| bin as f32 * RATE as f32 / N_FFT as f32)
            .unwrap();
        assert!(
            (peak - 1000.0).abs() < 100.0,
            "bin {loudest} peaks at {peak} Hz"
        );
        // Whisper's normalisation: the loudest value is (max + 4) / 4, the floor 2 under it.
        let max = features.iter().copied().fold(f32::MIN, f32::max);
        let min = features.iter().copied().fold(f32::MAX, f32::min);
        assert!((max - min - 2.0).abs() < 1e-4, "max {max} min {min}");
        // The padded silence is all at the floor.
        assert!((110..200).all(|t| (0..MELS).all(|m| at(m, t) == min)));
    }
}
