//! RFC 4733 telephone events (DTMF over RTP): the payload, the packets of one key press,
//! and the detection of the events a peer sends.

/// Volume sent with each event, in -dBm0 (RFC 4733 §2.5.2.2: 0 to 63; 10 is a usual level).
const VOLUME: u8 = 10;

/// How many times the final packet of an event is sent (RFC 4733 §2.5.1.4 recommends three).
pub const END_PACKETS: usize = 3;

/// The event code of a DTMF key (RFC 4733 §3.2), or None for a character that is no key.
pub fn event_code(key: char) -> Option<u8> {
    match key {
        '0'..='9' => Some(key as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(key as u8 - b'A' + 12),
        'a'..='d' => Some(key as u8 - b'a' + 12),
        _ => None,
    }
}

/// The key of an event code, or None for events that are not DTMF keys.
pub fn key_of(code: u8) -> Option<char> {
    match code {
        0..=9 => Some((b'0' + code) as char),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some((b'A' + code - 12) as char),
        _ => None,
    }
}

/// One RFC 4733 event payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPayload {
    pub code: u8,
    pub end: bool,
    pub volume: u8,
    /// In RTP timestamp units since the event's timestamp.
    pub duration: u16,
}

impl EventPayload {
    pub fn to_bytes(self) -> [u8; 4] {
        let flags = if self.end { 0x80 } else { 0 } | (self.volume & 0x3f);
        let d = self.duration.to_be_bytes();
        [self.code, flags, d[0], d[1]]
    }

    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < 4 {
            return None;
        }
        Some(Self {
            code: bytes[0],
            end: bytes[1] & 0x80 != 0,
            volume: bytes[1] & 0x3f,
            duration: u16::from_be_bytes([bytes[2], bytes[3]]),
        })
    }
}

/// One packet of a key press: its payload, and whether it carries the marker bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPacket {
    pub payload: EventPayload,
    pub marker: bool,
}

/// The packets of one key press held `frames` packet intervals long (every packet shares
/// the event's timestamp): a start packet with the marker bit, a continuation every
/// interval with the duration so far, then the final duration sent three times with E set.
pub fn key_press(code: u8, frames: u32, ticks_per_frame: u32) -> Vec<EventPacket> {
    let frames = frames.max(1);
    let mut packets = Vec::with_capacity(frames as usize + END_PACKETS);
    for n in 1..=frames {
        packets.push(EventPacket {
            payload: EventPayload {
                code,
                end: false,
                volume: VOLUME,
                duration: duration_ticks(n * ticks_per_frame),
            },
            marker: n == 1,
        });
    }
    let end = EventPayload {
        code,
        end: true,
        volume: VOLUME,
        duration: duration_ticks(frames * ticks_per_frame),
    };
    packets.extend(std::iter::repeat_n(
        EventPacket {
            payload: end,
            marker: false,
        },
        END_PACKETS,
    ));
    packets
}

/// Durations longer than the 16-bit field are clamped; the probe's key presses are short.
fn duration_ticks(ticks: u32) -> u16 {
    ticks.min(u16::MAX as u32) as u16
}

/// What one received event packet told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// A new event began (first packet with a new timestamp).
    Began { key: char },
    /// The event ended; `duration` in RTP timestamp units.
    Ended { key: char, duration: u16 },
}

/// Turns a stream of event packets into key presses: a new timestamp starts an event, the
/// first packet with E set ends it, and the retransmitted end packets are ignored.
#[derive(Debug, Default)]
pub struct Detector {
    current: Option<(u32, bool)>,
}

impl Detector {
    pub fn on_packet(&mut self, timestamp: u32, payload: &[u8]) -> Vec<Detected> {
        let Some(event) = EventPayload::parse(payload) else {
            return Vec::new();
        };
        let Some(key) = key_of(event.code) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let ended = match self.current {
            Some((ts, ended)) if ts == timestamp => ended,
            _ => {
                out.push(Detected::Began { key });
                false
            }
        };
        if event.end && !ended {
            out.push(Detected::Ended {
                key,
                duration: event.duration,
            });
        }
        self.current = Some((timestamp, ended || event.end));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_press_is_start_continuations_and_three_ends() {
        let packets = key_press(11, 5, 160);
        assert_eq!(packets.len(), 5 + 3);
        assert!(packets[0].marker);
        assert!(packets[1..].iter().all(|p| !p.marker));
        let durations: Vec<u16> = packets.iter().map(|p| p.payload.duration).collect();
        assert_eq!(durations, [160, 320, 480, 640, 800, 800, 800, 800]);
        assert!(packets[5..].iter().all(|p| p.payload.end));
        assert_eq!(packets[0].payload.to_bytes(), [11, 10, 0, 160]);
    }

    #[test]
    fn the_detector_reports_each_press_once() {
        let mut d = Detector::default();
        let mut seen = Vec::new();
        for (ts, p) in [(100, key_press(1, 3, 160)), (900, key_press(11, 2, 160))] {
            for packet in p {
                seen.extend(d.on_packet(ts, &packet.payload.to_bytes()));
            }
        }
        assert_eq!(
            seen,
            [
                Detected::Began { key: '1' },
                Detected::Ended {
                    key: '1',
                    duration: 480
                },
                Detected::Began { key: '#' },
                Detected::Ended {
                    key: '#',
                    duration: 320
                },
            ]
        );
    }
}
