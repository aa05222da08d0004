//! RIFF/WAVE files of 16-bit mono PCM: support-line recordings, what the probe plays and
//! records, the spoken-digit corpus, the kit's prompts. One reader and one writer for all.

use std::path::Path;

use crate::SAMPLE_RATE;

/// The `fmt ` chunk of a WAV file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    /// 1 is integer PCM.
    pub encoding: u16,
    pub channels: u16,
    pub rate: u32,
    pub bits: u16,
}

impl Format {
    /// 16-bit mono integer PCM, the only format encoded or decoded here.
    pub fn is_pcm16_mono(&self) -> bool {
        self.encoding == 1 && self.channels == 1 && self.bits == 16
    }
}

/// Why bytes are not a WAV file this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("no RIFF/WAVE header")]
    NotWav,
    #[error("a chunk runs past the end of the file")]
    Truncated,
    #[error("no fmt chunk before the data")]
    NoFormat,
    #[error("no data chunk")]
    NoData,
    #[error("must be 16-bit mono PCM")]
    NotPcm16Mono,
    #[error("must be at {SAMPLE_RATE} Hz")]
    Rate,
}

/// A WAV file that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WavError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a WAV file this can use ({reason}); convert it with `sox IN -r 8000 -c 1 -b 16 OUT.wav`")]
    Format { path: String, reason: FormatError },
}

/// A RIFF/WAVE file holding `samples` at `rate` Hz.
pub fn encode(samples: &[i16], rate: u32) -> Vec<u8> {
    let data_len = u32::try_from(samples.len() * 2).unwrap_or(u32::MAX - 36);
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes()); // bytes per second
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// The format and the `data` chunk's bytes of any RIFF/WAVE file.
pub fn parse(bytes: &[u8]) -> Result<(Format, &[u8]), FormatError> {
    if bytes.get(..4) != Some(b"RIFF") || bytes.get(8..12) != Some(b"WAVE") {
        return Err(FormatError::NotWav);
    }
    let mut rest = &bytes[12..];
    let mut format = None;
    while rest.len() >= 8 {
        let id = &rest[..4];
        let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let body = rest
            .get(8..8usize.saturating_add(len))
            .ok_or(FormatError::Truncated)?;
        match id {
            b"fmt " => {
                let u16_at =
                    |i: usize| body.get(i..i + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
                let rate = body
                    .get(4..8)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                format = Some(Format {
                    encoding: u16_at(0).ok_or(FormatError::Truncated)?,
                    channels: u16_at(2).ok_or(FormatError::Truncated)?,
                    rate: rate.ok_or(FormatError::Truncated)?,
                    bits: u16_at(14).ok_or(FormatError::Truncated)?,
                });
            }
            b"data" => return Ok((format.ok_or(FormatError::NoFormat)?, body)),
            _ => {}
        }
        // Chunks are padded to an even length.
        rest = rest.get(8 + len + (len & 1)..).unwrap_or_default();
    }
    Err(if format.is_some() {
        FormatError::NoData
    } else {
        FormatError::NoFormat
    })
}

/// The rate and samples of a 16-bit mono PCM WAV file at any rate.
pub fn decode(bytes: &[u8]) -> Result<(u32, Vec<i16>), FormatError> {
    let (format, data) = parse(bytes)?;
    if !format.is_pcm16_mono() {
        return Err(FormatError::NotPcm16Mono);
    }
    let samples = data
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    Ok((format.rate, samples))
}

/// Reads a 16-bit mono PCM WAV file at [`SAMPLE_RATE`].
pub fn read(path: &Path) -> Result<Vec<i16>, WavError> {
    let name = || path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| WavError::Io {
        path: name(),
        source,
    })?;
    match decode(&bytes) {
        Ok((SAMPLE_RATE, samples)) => Ok(samples),
        Ok(_) => Err(FormatError::Rate),
        Err(reason) => Err(reason),
    }
    .map_err(|reason| WavError::Format {
        path: name(),
        reason,
    })
}

/// Writes samples as a 16-bit mono PCM WAV file at [`SAMPLE_RATE`].
pub fn write(path: &Path, samples: &[i16]) -> Result<(), WavError> {
    std::fs::write(path, encode(samples, SAMPLE_RATE)).map_err(|source| WavError::Io {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_has_the_standard_header() {
        let samples = [0i16, 1, -1, i16::MAX, i16::MIN];
        let file = encode(&samples, 8000);
        assert_eq!(file.len(), 44 + 10);
        assert_eq!(&file[..4], b"RIFF");
        assert_eq!(u32::from_le_bytes(file[24..28].try_into().unwrap()), 8000);
        assert_eq!(decode(&file), Ok((8000, samples.to_vec())));
    }

    #[test]
    fn refuses_other_files() {
        assert_eq!(decode(b"not a wav file at all"), Err(FormatError::NotWav));
        let mut stereo = encode(&[1, 2], 8000);
        stereo[22] = 2;
        assert_eq!(decode(&stereo), Err(FormatError::NotPcm16Mono));
        let truncated = &encode(&[1, 2, 3], 8000)[..30];
        assert_eq!(decode(truncated), Err(FormatError::Truncated));
        let mut huge_chunk = encode(&[1], 8000);
        huge_chunk[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&huge_chunk), Err(FormatError::Truncated));
    }

    #[test]
    fn skips_unknown_chunks_and_their_padding() {
        let plain = encode(&[5, 6], 8000);
        let mut file = plain[..36].to_vec();
        file.extend_from_slice(b"LIST\x03\x00\x00\x00abc\x00");
        file.extend_from_slice(&plain[36..]);
        assert_eq!(decode(&file), Ok((8000, vec![5, 6])));
    }

    #[test]
    fn what_is_written_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");
        let samples: Vec<i16> = (0..800).map(|i| (i * 37 % 2000 - 1000) as i16).collect();
        write(&path, &samples).unwrap();
        assert_eq!(read(&path).unwrap(), samples);
        std::fs::write(&path, encode(&samples, 16_000)).unwrap();
        assert!(matches!(
            read(&path),
            Err(WavError::Format {
                reason: FormatError::Rate,
                ..
            })
        ));
    }
}
