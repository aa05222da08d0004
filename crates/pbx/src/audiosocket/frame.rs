//! AudioSocket messages (res_audiosocket.c): a kind byte, a big-endian u16 payload length,
//! then the payload. Asterisk sends the call's UUID first, then audio and DTMF; either side
//! ends the stream with a hangup message or by closing.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};
use uuid::Uuid;

const KIND_HANGUP: u8 = 0x00;
const KIND_UUID: u8 = 0x01;
const KIND_DTMF: u8 = 0x03;
const KIND_AUDIO: u8 = 0x10;
const KIND_ERROR: u8 = 0xff;
const HEADER_LEN: usize = 3;

/// 20 ms of signed linear audio at 8 kHz: what Asterisk sends and expects.
pub const SAMPLES_PER_FRAME: usize = callverify_audio::SAMPLES_PER_20MS;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hangup,
    Uuid(Uuid),
    /// One key, sent by Asterisk when the key is released.
    Dtmf(char),
    /// Signed 16-bit little-endian PCM, 8 kHz mono; usually 320 bytes, not always.
    Audio(Bytes),
    /// An error report; the payload is an optional application error code.
    Error(Bytes),
}

impl Frame {
    /// An audio message of `samples` zero samples (silence).
    pub fn silence(samples: usize) -> Self {
        Frame::Audio(Bytes::from(vec![0u8; samples * 2]))
    }

    /// An audio message carrying `samples`.
    pub fn audio(samples: &[i16]) -> Self {
        let mut payload = BytesMut::with_capacity(samples.len() * 2);
        for s in samples {
            payload.put_i16_le(*s);
        }
        Frame::Audio(payload.freeze())
    }
}

/// The samples of an audio payload (an odd trailing byte is dropped).
pub fn samples(payload: &[u8]) -> Vec<i16> {
    payload
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("AudioSocket message of unknown kind 0x{0:02x}")]
    UnknownKind(u8),
    #[error("AudioSocket {kind} message with a {len}-byte payload")]
    BadLength { kind: &'static str, len: usize },
    #[error("AudioSocket DTMF message with a non-key byte 0x{0:02x}")]
    BadKey(u8),
    #[error("audio message of {0} bytes is too long for one AudioSocket frame")]
    TooLong(usize),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Frames AudioSocket messages on a byte stream.
#[derive(Debug, Default)]
pub struct FrameCodec;

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let kind = src[0];
        let len = u16::from_be_bytes([src[1], src[2]]) as usize;
        // Refuse unknown kinds from the header alone: no need to buffer their payload.
        if !matches!(
            kind,
            KIND_HANGUP | KIND_UUID | KIND_DTMF | KIND_AUDIO | KIND_ERROR
        ) {
            return Err(FrameError::UnknownKind(kind));
        }
        if src.len() < HEADER_LEN + len {
            src.reserve(HEADER_LEN + len - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let payload = src.split_to(len).freeze();
        let frame = match kind {
            KIND_HANGUP => Frame::Hangup,
            KIND_UUID => {
                let bytes: [u8; 16] = payload[..]
                    .try_into()
                    .map_err(|_| FrameError::BadLength { kind: "UUID", len })?;
                Frame::Uuid(Uuid::from_bytes(bytes))
            }
            KIND_DTMF => match payload[..] {
                [key] if is_key(key) => Frame::Dtmf(key as char),
                [key] => return Err(FrameError::BadKey(key)),
                _ => return Err(FrameError::BadLength { kind: "DTMF", len }),
            },
            KIND_AUDIO => Frame::Audio(payload),
            _ => Frame::Error(payload),
        };
        Ok(Some(frame))
    }
}

fn is_key(byte: u8) -> bool {
    byte.is_ascii_digit() || matches!(byte, b'*' | b'#' | b'A'..=b'D')
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let (kind, payload): (u8, &[u8]) = match &frame {
            Frame::Hangup => (KIND_HANGUP, &[]),
            Frame::Uuid(uuid) => (KIND_UUID, uuid.as_bytes()),
            Frame::Dtmf(key) => (KIND_DTMF, &[*key as u8]),
            Frame::Audio(payload) => (KIND_AUDIO, payload),
            Frame::Error(payload) => (KIND_ERROR, payload),
        };
        let len = u16::try_from(payload.len()).map_err(|_| FrameError::TooLong(payload.len()))?;
        dst.reserve(HEADER_LEN + payload.len());
        dst.put_u8(kind);
        dst.put_u16(len);
        dst.put_slice(payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut buf = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(f) = FrameCodec.decode(&mut buf)? {
            frames.push(f);
        }
        Ok(frames)
    }

    #[test]
    fn decodes_the_captured_messages() {
        // Capture session 1: the UUID message, then a short last audio frame, then '#'.
        let mut wire = hex::decode("0100107ad46f166a9647c9a6fb9a053bbfbc89").unwrap();
        wire.extend([0x10, 0x00, 0x48]);
        wire.extend(std::iter::repeat_n(0u8, 72));
        wire.extend([0x03, 0x00, 0x01, b'#', 0x00, 0x00, 0x00]);
        let frames = decode_all(&wire).unwrap();
        assert_eq!(
            frames[0],
            Frame::Uuid("7ad46f16-6a96-47c9-a6fb-9a053bbfbc89".parse().unwrap())
        );
        assert!(matches!(&frames[1], Frame::Audio(p) if p.len() == 72));
        assert_eq!(frames[2], Frame::Dtmf('#'));
        assert_eq!(frames[3], Frame::Hangup);
    }

    #[test]
    fn waits_for_whole_messages() {
        let mut buf = BytesMut::from(&[0x10, 0x01][..]);
        assert!(FrameCodec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&[0x40]);
        buf.extend_from_slice(&[1u8; 319]);
        assert!(FrameCodec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&[1u8]);
        assert!(
            matches!(FrameCodec.decode(&mut buf).unwrap(), Some(Frame::Audio(p)) if p.len() == 320)
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_malformed_messages() {
        assert!(matches!(
            decode_all(&[0x42, 0, 0]),
            Err(FrameError::UnknownKind(0x42))
        ));
        assert!(matches!(
            decode_all(&[0x01, 0, 2, 1, 2]),
            Err(FrameError::BadLength { kind: "UUID", .. })
        ));
        assert!(matches!(
            decode_all(&[0x03, 0, 1, b'x']),
            Err(FrameError::BadKey(b'x'))
        ));
        assert!(matches!(
            decode_all(&[0x03, 0, 2, b'1', b'2']),
            Err(FrameError::BadLength { kind: "DTMF", .. })
        ));
    }

    #[test]
    fn encodes_what_asterisk_reads() {
        let mut out = BytesMut::new();
        FrameCodec.encode(Frame::Hangup, &mut out).unwrap();
        FrameCodec
            .encode(Frame::silence(SAMPLES_PER_FRAME), &mut out)
            .unwrap();
        assert_eq!(&out[..6], &[0x00, 0x00, 0x00, 0x10, 0x01, 0x40]);
        assert_eq!(out.len(), 6 + 320);
        let frame = Frame::audio(&[1, -2]);
        assert_eq!(frame, Frame::Audio(Bytes::from_static(&[1, 0, 0xfe, 0xff])));
        assert_eq!(samples(&[1, 0, 0xfe, 0xff, 7]), vec![1, -2]);
    }
}
