//! SDP offer/answer (RFC 3264) for one audio stream: what the probe offers or answers, and
//! what it understands of the peer's description.

use std::net::{IpAddr, SocketAddr};

use super::codec::Codec;

/// One payload format of an m= line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pub payload_type: u8,
    pub name: String,
    pub clock_rate: u32,
}

/// The audio stream of a peer's session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioDescription {
    /// Where the peer receives RTP (port 0: the stream was refused).
    pub rtp: SocketAddr,
    /// In the peer's order of preference.
    pub formats: Vec<Format>,
    /// The stream's direction as the peer wrote it (media level over session level).
    pub direction: Direction,
}

/// A stream's direction attribute (RFC 3264 §5.1, §8.4: hold is a=sendonly or a=inactive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn parse(attribute: &str) -> Option<Self> {
        Some(match attribute {
            "sendrecv" => Self::SendRecv,
            "sendonly" => Self::SendOnly,
            "recvonly" => Self::RecvOnly,
            "inactive" => Self::Inactive,
            _ => return None,
        })
    }

    fn attribute(self) -> &'static str {
        match self {
            Self::SendRecv => "sendrecv",
            Self::SendOnly => "sendonly",
            Self::RecvOnly => "recvonly",
            Self::Inactive => "inactive",
        }
    }

    /// The other side's direction: an answer to sendonly is recvonly, and so on.
    pub fn mirrored(self) -> Self {
        match self {
            Self::SendOnly => Self::RecvOnly,
            Self::RecvOnly => Self::SendOnly,
            other => other,
        }
    }

    /// Whether the side with this direction sends RTP.
    pub fn sends(self) -> bool {
        matches!(self, Self::SendRecv | Self::SendOnly)
    }

    /// Whether the side with this direction expects RTP.
    pub fn receives(self) -> bool {
        matches!(self, Self::SendRecv | Self::RecvOnly)
    }
}

/// What both sides agreed: the audio codec and its payload type, and telephone-event's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub remote_rtp: SocketAddr,
    pub codec: Codec,
    pub audio_pt: u8,
    /// None when the peer takes no RFC 4733 events at the codec's clock rate.
    pub event_pt: Option<u8>,
    /// The probe's direction: the peer's mirrored (recvonly or inactive while it holds).
    pub direction: Direction,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SdpError {
    #[error("malformed SDP: {0}")]
    Malformed(String),
    #[error("no common codec (peer offers {offered}; probe has {ours})")]
    NoCommonCodec { offered: String, ours: String },
}

const EVENT_PT_8K: u8 = 101;
const EVENT_PT_48K: u8 = 110;

/// The probe's offer: its codecs in order of preference, and telephone-event at each clock
/// rate they use.
pub fn offer(local_rtp: SocketAddr, codecs: &[Codec], session_id: u64) -> String {
    let formats: Vec<(u8, Codec)> = codecs
        .iter()
        .map(|&c| (c.offered_payload_type(), c))
        .collect();
    let events: Vec<(u8, u32)> = [(EVENT_PT_8K, 8000), (EVENT_PT_48K, 48000)]
        .into_iter()
        .filter(|(_, clock)| codecs.iter().any(|c| c.clock_rate() == *clock))
        .collect();
    describe(
        local_rtp,
        &formats,
        &events,
        Direction::SendRecv,
        session_id,
    )
}

/// The answer to an offer: only the chosen codec and its telephone-event, with the
/// offerer's payload type numbers, and the offer's direction mirrored.
pub fn answer(local_rtp: SocketAddr, chosen: &Negotiated, session_id: u64) -> String {
    let events: Vec<(u8, u32)> = chosen
        .event_pt
        .map(|pt| (pt, chosen.codec.clock_rate()))
        .into_iter()
        .collect();
    describe(
        local_rtp,
        &[(chosen.audio_pt, chosen.codec)],
        &events,
        chosen.direction,
        session_id,
    )
}

fn describe(
    local_rtp: SocketAddr,
    formats: &[(u8, Codec)],
    events: &[(u8, u32)],
    direction: Direction,
    session_id: u64,
) -> String {
    let ip = local_rtp.ip();
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let mut pts: Vec<String> = Vec::new();
    let mut attrs = String::new();
    for &(pt, codec) in formats {
        pts.push(pt.to_string());
        match codec {
            Codec::Opus => attrs.push_str(&format!(
                "a=rtpmap:{pt} opus/48000/2\r\na=fmtp:{pt} useinbandfec=1\r\n"
            )),
            _ => attrs.push_str(&format!("a=rtpmap:{pt} {}/8000\r\n", codec.rtpmap_name())),
        }
    }
    for &(pt, clock) in events {
        pts.push(pt.to_string());
        attrs.push_str(&format!(
            "a=rtpmap:{pt} telephone-event/{clock}\r\na=fmtp:{pt} 0-16\r\n"
        ));
    }
    format!(
        "v=0\r\no=callverify {session_id} {session_id} IN {family} {ip}\r\ns=callverify probe\r\n\
         c=IN {family} {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {pts}\r\n{attrs}a=ptime:20\r\na={direction}\r\n",
        port = local_rtp.port(),
        pts = pts.join(" "),
        direction = direction.attribute(),
    )
}

/// Parses the first audio stream of a session description.
pub fn parse(text: &str) -> Result<AudioDescription, SdpError> {
    let mut session_ip: Option<IpAddr> = None;
    let mut media_ip: Option<IpAddr> = None;
    let mut media: Option<(u16, Vec<u8>)> = None;
    let mut rtpmaps: Vec<Format> = Vec::new();
    let mut session_direction: Option<Direction> = None;
    let mut media_direction: Option<Direction> = None;
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(c) = line.strip_prefix("c=") {
            let ip = parse_connection(c)?;
            if media.is_some() {
                media_ip = Some(ip);
            } else {
                session_ip = Some(ip);
            }
        } else if let Some(m) = line.strip_prefix("m=") {
            if media.is_some() {
                break; // only the first audio stream matters
            }
            let mut fields = m.split_whitespace();
            if fields.next() != Some("audio") {
                continue;
            }
            let port = fields
                .next()
                .and_then(|p| p.split('/').next()?.parse().ok())
                .ok_or_else(|| SdpError::Malformed(format!("bad m= line {line:?}")))?;
            let _proto = fields.next();
            let pts = fields.filter_map(|f| f.parse().ok()).collect();
            media = Some((port, pts));
        } else if let Some(direction) = line.strip_prefix("a=").and_then(Direction::parse) {
            if media.is_some() {
                media_direction = Some(direction);
            } else {
                session_direction = Some(direction);
            }
        } else if let Some(map) = line.strip_prefix("a=rtpmap:") {
            if media.is_some() {
                if let Some(format) = parse_rtpmap(map) {
                    rtpmaps.push(format);
                }
            }
        }
    }
    let (port, pts) = media.ok_or_else(|| SdpError::Malformed("no m=audio line".into()))?;
    let ip = media_ip
        .or(session_ip)
        .ok_or_else(|| SdpError::Malformed("no c= line".into()))?;
    let formats = pts
        .into_iter()
        .filter_map(|pt| {
            rtpmaps
                .iter()
                .find(|f| f.payload_type == pt)
                .cloned()
                .or_else(|| static_format(pt))
        })
        .collect();
    Ok(AudioDescription {
        rtp: SocketAddr::new(ip, port),
        formats,
        direction: media_direction.or(session_direction).unwrap_or_default(),
    })
}

fn parse_connection(c: &str) -> Result<IpAddr, SdpError> {
    let address = c
        .split_whitespace()
        .nth(2)
        .and_then(|a| a.split('/').next())
        .ok_or_else(|| SdpError::Malformed(format!("bad c= line {c:?}")))?;
    address
        .parse()
        .map_err(|_| SdpError::Malformed(format!("bad address in c= line {c:?}")))
}

fn parse_rtpmap(map: &str) -> Option<Format> {
    let (pt, encoding) = map.split_once(' ')?;
    let mut parts = encoding.trim().split('/');
    Some(Format {
        payload_type: pt.parse().ok()?,
        name: parts.next()?.to_string(),
        clock_rate: parts.next()?.parse().ok()?,
    })
}

/// RFC 3551's static payload types the probe knows, for m= lines without a=rtpmap.
fn static_format(pt: u8) -> Option<Format> {
    let name = match pt {
        0 => "PCMU",
        8 => "PCMA",
        _ => return None,
    };
    Some(Format {
        payload_type: pt,
        name: name.into(),
        clock_rate: 8000,
    })
}

impl AudioDescription {
    /// Picks the first of the peer's formats that is among `ours`, and the peer's
    /// telephone-event at that codec's clock rate.
    pub fn negotiate(&self, ours: &[Codec]) -> Result<Negotiated, SdpError> {
        let chosen = self.formats.iter().find_map(|f| {
            let codec = Codec::from_rtpmap_name(&f.name)?;
            (ours.contains(&codec) && f.clock_rate == codec.clock_rate()).then_some((codec, f))
        });
        let Some((codec, format)) = chosen.filter(|_| self.rtp.port() != 0) else {
            let names = |v: Vec<String>| {
                if v.is_empty() {
                    "nothing".into()
                } else {
                    v.join(", ")
                }
            };
            return Err(SdpError::NoCommonCodec {
                offered: names(
                    self.formats
                        .iter()
                        .map(|f| format!("{}/{}", f.name, f.clock_rate))
                        .collect(),
                ),
                ours: names(ours.iter().map(|c| c.to_string()).collect()),
            });
        };
        let event_pt = self
            .formats
            .iter()
            .find(|f| {
                f.name.eq_ignore_ascii_case("telephone-event") && f.clock_rate == codec.clock_rate()
            })
            .map(|f| f.payload_type);
        Ok(Negotiated {
            remote_rtp: self.rtp,
            codec,
            audio_pt: format.payload_type,
            event_pt,
            direction: self.direction.mirrored(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_offer_parses_back_and_negotiates_the_first_codec() {
        let addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let offer = offer(addr, &[Codec::Pcmu, Codec::Pcma, Codec::Opus], 7);
        let parsed = parse(&offer).unwrap();
        assert_eq!(parsed.rtp, addr);
        assert_eq!(parsed.formats.len(), 5);
        let n = parsed.negotiate(&[Codec::Pcma]).unwrap();
        assert_eq!(
            (n.codec, n.audio_pt, n.event_pt),
            (Codec::Pcma, 8, Some(101))
        );
        let n = parsed.negotiate(&[Codec::Opus]).unwrap();
        assert_eq!(
            (n.codec, n.audio_pt, n.event_pt),
            (Codec::Opus, 111, Some(110))
        );
    }

    #[test]
    fn an_answer_uses_the_offerers_payload_types() {
        let chosen = Negotiated {
            remote_rtp: "10.0.0.1:5000".parse().unwrap(),
            codec: Codec::Pcmu,
            audio_pt: 0,
            event_pt: Some(96),
            direction: Direction::SendRecv,
        };
        let text = answer("127.0.0.1:4000".parse().unwrap(), &chosen, 1);
        assert!(text.contains("m=audio 4000 RTP/AVP 0 96\r\n"), "{text}");
        assert!(
            text.contains("a=rtpmap:96 telephone-event/8000\r\n"),
            "{text}"
        );
        let back = parse(&text).unwrap().negotiate(&[Codec::Pcmu]).unwrap();
        assert_eq!(back.event_pt, Some(96));
    }

    /// Hold (RFC 3264 §8.4): a=sendonly is answered a=recvonly, a=inactive with a=inactive.
    #[test]
    fn a_hold_offer_is_answered_with_the_mirrored_direction() {
        for (offered, answered) in [
            ("sendonly", "recvonly"),
            ("inactive", "inactive"),
            ("recvonly", "sendonly"),
            ("sendrecv", "sendrecv"),
        ] {
            let sdp = format!(
                "v=0\r\nc=IN IP4 10.0.0.1\r\na=sendrecv\r\nm=audio 5000 RTP/AVP 0\r\na={offered}\r\n"
            );
            let chosen = parse(&sdp).unwrap().negotiate(&[Codec::Pcmu]).unwrap();
            let text = answer("127.0.0.1:4000".parse().unwrap(), &chosen, 1);
            assert!(
                text.contains(&format!("a={answered}\r\n")),
                "{offered}: {text}"
            );
        }
        let session_level = "v=0\r\nc=IN IP4 10.0.0.1\r\na=inactive\r\nm=audio 5000 RTP/AVP 0\r\n";
        let chosen = parse(session_level)
            .unwrap()
            .negotiate(&[Codec::Pcmu])
            .unwrap();
        assert_eq!(chosen.direction, Direction::Inactive);
    }

    #[test]
    fn refused_or_unknown_codecs_are_a_mismatch() {
        let sdp =
            "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 5000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n";
        let err = parse(sdp).unwrap().negotiate(&[Codec::Pcmu]).unwrap_err();
        assert!(err.to_string().contains("G729/8000"), "{err}");
    }
}
