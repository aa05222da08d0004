//! Telephone audio: the one sample rate, WAV files, G.711 companding, resampling for the
//! recogniser. Pure functions, no I/O but reading and writing files.

pub mod g711;
pub mod resample;
pub mod wav;

/// The sample rate of everything the PBX carries here: G.711, AudioSocket's signed linear,
/// recordings, the probe (Opus is encoded and decoded at it too).
pub const SAMPLE_RATE: u32 = 8000;

/// Samples in 20 ms at [`SAMPLE_RATE`]: one RTP packet or AudioSocket frame.
pub const SAMPLES_PER_20MS: usize = (SAMPLE_RATE / 50) as usize;
