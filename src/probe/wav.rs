//! 16-bit mono 8 kHz PCM WAV files: what the probe plays and what it records.

use std::path::Path;

/// The one sample rate the probe works at (G.711's; Opus is encoded and decoded at it too).
pub const SAMPLE_RATE: u32 = 8000;

#[derive(Debug, thiserror::Error)]
pub enum WavError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a WAV file the probe can play ({reason}); convert it with `sox IN -r 8000 -c 1 -b 16 OUT.wav`")]
    Format { path: String, reason: &'static str },
}

/// Reads a 16-bit mono 8 kHz PCM WAV file into samples.
pub fn read(path: &Path) -> Result<Vec<i16>, WavError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| WavError::Io {
        path: name.clone(),
        source,
    })?;
    parse(&bytes).map_err(|reason| WavError::Format { path: name, reason })
}

fn parse(bytes: &[u8]) -> Result<Vec<i16>, &'static str> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err("no RIFF/WAVE header");
    }
    let mut format_ok = false;
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let size = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        let body = &bytes[at + 8..(at + 8 + size).min(bytes.len())];
        match id {
            b"fmt " if body.len() >= 16 => {
                let format = u16::from_le_bytes([body[0], body[1]]);
                let channels = u16::from_le_bytes([body[2], body[3]]);
                let rate = u32::from_le_bytes(body[4..8].try_into().unwrap());
                let bits = u16::from_le_bytes([body[14], body[15]]);
                if format != 1 || channels != 1 || rate != SAMPLE_RATE || bits != 16 {
                    return Err("must be 16-bit mono PCM at 8000 Hz");
                }
                format_ok = true;
            }
            b"data" if format_ok => {
                return Ok(body
                    .chunks_exact(2)
                    .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
                    .collect());
            }
            _ => {}
        }
        at += 8 + size + (size & 1);
    }
    Err(if format_ok {
        "no data chunk"
    } else {
        "no fmt chunk before the data"
    })
}

/// Writes samples as a 16-bit mono 8 kHz PCM WAV file.
pub fn write(path: &Path, samples: &[i16]) -> Result<(), WavError> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&SAMPLE_RATE.to_le_bytes());
    out.extend_from_slice(&(SAMPLE_RATE * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, out).map_err(|source| WavError::Io {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn what_is_written_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");
        let samples: Vec<i16> = (0..800).map(|i| (i * 37 % 2000 - 1000) as i16).collect();
        super::write(&path, &samples).unwrap();
        assert_eq!(super::read(&path).unwrap(), samples);
    }
}
