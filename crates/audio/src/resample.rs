//! 8 kHz telephone audio to Whisper's 16 kHz.

/// Input samples on each side of an interpolated one.
const HALF_TAPS: usize = 16;

/// Doubles the sample rate and scales to [-1, 1]. Even output samples are the input ones;
/// odd ones are interpolated halfway by a windowed sinc cut off at 4 kHz, so the upsampling
/// adds no images above the telephone band.
pub fn to_16k(audio: &[i16]) -> Vec<f32> {
    let taps = halfway_taps();
    let at = |i: isize| {
        usize::try_from(i)
            .ok()
            .and_then(|i| audio.get(i))
            .map_or(0.0, |&s| f32::from(s) / 32768.0)
    };
    let mut out = Vec::with_capacity(audio.len() * 2);
    for n in 0..audio.len() as isize {
        out.push(at(n));
        let first = n + 1 - HALF_TAPS as isize;
        out.push(
            taps.iter()
                .enumerate()
                .map(|(k, tap)| tap * at(first + k as isize))
                .sum(),
        );
    }
    out
}

/// sinc(t) under a Blackman window, at t = -H+0.5 .. H-0.5 input samples from the midpoint,
/// normalised to unit gain.
fn halfway_taps() -> [f32; 2 * HALF_TAPS] {
    use std::f64::consts::PI;
    let mut taps = [0f32; 2 * HALF_TAPS];
    let span = HALF_TAPS as f64;
    for (k, tap) in taps.iter_mut().enumerate() {
        let t = k as f64 - span + 0.5;
        let sinc = (PI * t).sin() / (PI * t);
        let x = (t + span) / (2.0 * span); // 0..1 across the window
        let window = 0.42 - 0.5 * (2.0 * PI * x).cos() + 0.08 * (4.0 * PI * x).cos();
        *tap = (sinc * window) as f32;
    }
    let sum: f32 = taps.iter().sum();
    taps.map(|t| t / sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_input_and_interpolates_a_tone_between() {
        // 1 kHz at 8 kHz; upsampled it should be the same tone at 16 kHz.
        let tone = |rate: f32, n: usize| -> Vec<f32> {
            (0..n)
                .map(|i| 0.5 * (std::f32::consts::TAU * 1000.0 * i as f32 / rate).sin())
                .collect()
        };
        let input: Vec<i16> = tone(8000.0, 400)
            .iter()
            .map(|s| (s * 32768.0) as i16)
            .collect();
        let out = to_16k(&input);
        assert_eq!(out.len(), 800);
        let expected = tone(16000.0, 800);
        // Away from the edges, within 1 % of full scale.
        for i in 64..736 {
            assert!(
                (out[i] - expected[i]).abs() < 0.01,
                "sample {i}: {} vs {}",
                out[i],
                expected[i]
            );
        }
    }
}
