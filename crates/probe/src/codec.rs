//! The audio codecs the probe offers: G.711 µ-law and A-law always, Opus when built with
//! the `opus` feature. Audio inside the probe is 8 kHz mono; Opus is encoded and decoded at
//! that rate too (its RTP clock stays 48 kHz, RFC 7587).

use callverify_audio::g711;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Codec {
    #[serde(rename = "PCMU")]
    Pcmu,
    #[serde(rename = "PCMA")]
    Pcma,
    #[serde(rename = "opus")]
    Opus,
}

impl Codec {
    /// The encoding name in SDP's a=rtpmap.
    pub fn rtpmap_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::Opus => "opus",
        }
    }

    pub fn from_rtpmap_name(name: &str) -> Option<Self> {
        [Codec::Pcmu, Codec::Pcma, Codec::Opus]
            .into_iter()
            .find(|c| c.rtpmap_name().eq_ignore_ascii_case(name))
    }

    /// RTP clock rate (also the clock of telephone-event negotiated alongside it).
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma => 8000,
            Codec::Opus => 48000,
        }
    }

    /// The payload type offered: static ones for G.711, a dynamic one for Opus.
    pub fn offered_payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
            Codec::Opus => 111,
        }
    }

    /// RTP timestamp ticks per 20 ms packet.
    pub fn ticks_per_frame(self) -> u32 {
        self.clock_rate() / 50
    }

    /// Whether this build can encode and decode it.
    pub fn available(self) -> bool {
        self != Codec::Opus || cfg!(feature = "opus")
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.rtpmap_name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("this build has no Opus (rebuild with `cargo build --release --features opus`)")]
    OpusNotBuilt,
    #[cfg(feature = "opus")]
    #[error("opus: {0}")]
    Opus(#[from] audiopus::Error),
}

/// Encoder and decoder state for one call's codec.
pub enum Transcoder {
    Pcmu,
    Pcma,
    #[cfg(feature = "opus")]
    Opus(Box<opus::OpusPair>),
}

impl Transcoder {
    pub fn new(codec: Codec) -> Result<Self, CodecError> {
        match codec {
            Codec::Pcmu => Ok(Transcoder::Pcmu),
            Codec::Pcma => Ok(Transcoder::Pcma),
            #[cfg(feature = "opus")]
            Codec::Opus => Ok(Transcoder::Opus(Box::new(opus::OpusPair::new()?))),
            #[cfg(not(feature = "opus"))]
            Codec::Opus => Err(CodecError::OpusNotBuilt),
        }
    }

    /// One 20 ms frame of samples → one RTP payload.
    pub fn encode(&mut self, frame: &[i16]) -> Vec<u8> {
        match self {
            Transcoder::Pcmu => frame.iter().map(|&s| g711::linear_to_ulaw(s)).collect(),
            Transcoder::Pcma => frame.iter().map(|&s| g711::linear_to_alaw(s)).collect(),
            #[cfg(feature = "opus")]
            Transcoder::Opus(pair) => pair.encode(frame),
        }
    }

    /// One RTP payload → samples (an undecodable Opus packet gives a frame of concealment).
    pub fn decode(&mut self, payload: &[u8]) -> Vec<i16> {
        match self {
            Transcoder::Pcmu => payload.iter().map(|&b| g711::ulaw_to_linear(b)).collect(),
            Transcoder::Pcma => payload.iter().map(|&b| g711::alaw_to_linear(b)).collect(),
            #[cfg(feature = "opus")]
            Transcoder::Opus(pair) => pair.decode(Some(payload)),
        }
    }

    /// Samples standing in for `samples` worth of lost audio.
    pub fn conceal(&mut self, samples: usize) -> Vec<i16> {
        match self {
            #[cfg(feature = "opus")]
            Transcoder::Opus(pair) => {
                let mut out = Vec::with_capacity(samples);
                while out.len() < samples {
                    out.extend(pair.decode(None));
                }
                out.truncate(samples);
                out
            }
            _ => vec![0; samples],
        }
    }
}

#[cfg(feature = "opus")]
mod opus {
    use audiopus::coder::{Decoder, Encoder};
    use audiopus::{Application, Channels, SampleRate};

    use callverify_audio::SAMPLES_PER_20MS;

    /// libopus encoder and decoder, both at 8 kHz mono.
    pub struct OpusPair {
        encoder: Encoder,
        decoder: Decoder,
    }

    impl OpusPair {
        pub fn new() -> Result<Self, audiopus::Error> {
            Ok(Self {
                encoder: Encoder::new(SampleRate::Hz8000, Channels::Mono, Application::Voip)?,
                decoder: Decoder::new(SampleRate::Hz8000, Channels::Mono)?,
            })
        }

        pub fn encode(&mut self, frame: &[i16]) -> Vec<u8> {
            let mut out = vec![0u8; 400];
            match self.encoder.encode(frame, &mut out) {
                Ok(n) => out.truncate(n),
                Err(e) => {
                    tracing::warn!("opus encode failed: {e}");
                    out.clear();
                }
            }
            out
        }

        /// Decodes a packet, or conceals one lost 20 ms frame with `None`.
        pub fn decode(&mut self, payload: Option<&[u8]>) -> Vec<i16> {
            // The longest Opus packet is 120 ms. Concealment fills exactly the buffer it is
            // given (libopus: frame_size is the length of the missing audio), so a lost packet
            // gets one frame's buffer, not 120 ms of made-up audio.
            let len = if payload.is_some() {
                SAMPLES_PER_20MS * 6
            } else {
                SAMPLES_PER_20MS
            };
            let mut out = vec![0i16; len];
            let n = match self.decoder.decode(payload, &mut out[..], false) {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!("opus decode failed: {e}");
                    out.truncate(SAMPLES_PER_20MS);
                    out.fill(0);
                    return out;
                }
            };
            out.truncate(n);
            out
        }
    }
}

#[cfg(all(test, feature = "opus"))]
mod tests {
    use super::*;
    use callverify_audio::SAMPLES_PER_20MS;

    /// One lost packet is concealed with one 20 ms frame (it was 120 ms: libopus conceals as
    /// much as the buffer it is handed).
    #[test]
    fn opus_conceals_one_frame_per_lost_packet() {
        let mut pair = opus::OpusPair::new().unwrap();
        let tone: Vec<i16> = (0..SAMPLES_PER_20MS)
            .map(|i| ((i as f64 * 0.3).sin() * 8000.0) as i16)
            .collect();
        for _ in 0..3 {
            let packet = pair.encode(&tone);
            assert_eq!(pair.decode(Some(&packet)).len(), SAMPLES_PER_20MS);
        }
        assert_eq!(pair.decode(None).len(), SAMPLES_PER_20MS);
        let mut transcoder = Transcoder::new(Codec::Opus).unwrap();
        assert_eq!(
            transcoder.conceal(SAMPLES_PER_20MS * 2).len(),
            SAMPLES_PER_20MS * 2
        );
    }
}
