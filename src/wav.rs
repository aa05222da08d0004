//! WAV files of 16-bit mono PCM: how support-line messages are stored and played back.

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

/// The rate and samples of a 16-bit mono PCM WAV file; `None` for anything else.
pub fn decode(bytes: &[u8]) -> Option<(u32, Vec<i16>)> {
    if bytes.get(..4)? != b"RIFF" || bytes.get(8..12)? != b"WAVE" {
        return None;
    }
    let mut rest = &bytes[12..];
    let mut rate = None;
    while rest.len() >= 8 {
        let (id, len) = (
            &rest[..4],
            u32::from_le_bytes(rest[4..8].try_into().ok()?) as usize,
        );
        let body = rest.get(8..8 + len)?;
        match id {
            b"fmt " => {
                let format = u16::from_le_bytes(body.get(0..2)?.try_into().ok()?);
                let channels = u16::from_le_bytes(body.get(2..4)?.try_into().ok()?);
                let bits = u16::from_le_bytes(body.get(14..16)?.try_into().ok()?);
                if format != 1 || channels != 1 || bits != 16 {
                    return None;
                }
                rate = Some(u32::from_le_bytes(body.get(4..8)?.try_into().ok()?));
            }
            b"data" => {
                let samples = body
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect();
                return Some((rate?, samples));
            }
            _ => {}
        }
        // Chunks are padded to an even length.
        rest = rest.get(8 + len + (len & 1)..)?;
    }
    None
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
        assert_eq!(decode(&file), Some((8000, samples.to_vec())));
    }

    #[test]
    fn refuses_other_files() {
        assert_eq!(decode(b"not a wav file at all"), None);
        let mut stereo = encode(&[1, 2], 8000);
        stereo[22] = 2;
        assert_eq!(decode(&stereo), None);
        let truncated = &encode(&[1, 2, 3], 8000)[..30];
        assert_eq!(decode(truncated), None);
    }
}
