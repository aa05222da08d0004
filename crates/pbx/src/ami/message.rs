//! AMI messages: blocks of `Key: Value` lines ending in CR LF, closed by an empty line
//! (`shared/captures/asterisk-ami-*.txt`). Keys repeat (`Variable:`), so order is kept.

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::bounded_line::{take_line, TooLong};

/// Longest line, most lines and most bytes per message kept from Asterisk. Real messages
/// are well under these (the events the dialer reads, under 4 KiB); a message over any of
/// them (a ring group's DialString, many channel variables) is dropped whole, and the
/// connection goes on: one odd event among every call on the PBX (`Events: call`) must not
/// end the session.
pub const MAX_LINE: usize = 8192;
pub const MAX_HEADERS: usize = 512;
pub const MAX_MESSAGE: usize = 64 * 1024;

/// One AMI message (action, response or event).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub headers: Vec<(String, String)>,
}

impl Message {
    pub fn action(name: &str, action_id: &str) -> Self {
        let mut m = Message::default();
        m.push("Action", name);
        m.push("ActionID", action_id);
        m
    }

    pub fn push(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.headers.push((key.to_owned(), value.into()));
        self
    }

    /// The first value of `key` (keys compare case-insensitively, as Asterisk does).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// `Event: X` messages are events, even those that also carry `Response:`
    /// (OriginateResponse).
    pub fn event(&self) -> Option<&str> {
        self.get("Event")
    }

    pub fn action_id(&self) -> Option<&str> {
        self.get("ActionID")
    }

    /// For a response: `Success` (or `Goodbye`), not `Error`.
    pub fn is_success(&self) -> bool {
        matches!(self.get("Response"), Some(r) if !r.eq_ignore_ascii_case("Error"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AmiCodecError {
    /// Names the field only: its value may be the secret.
    #[error("AMI field {0:?} contains a line break")]
    LineBreak(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Why a message from Asterisk was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oversize {
    Line,
    Lines,
    Bytes,
}

impl std::fmt::Display for Oversize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Oversize::Line => write!(f, "a line longer than {MAX_LINE} bytes"),
            Oversize::Lines => write!(f, "more than {MAX_HEADERS} lines"),
            Oversize::Bytes => write!(f, "more than {MAX_MESSAGE} bytes"),
        }
    }
}

/// What the codec reads: the banner Asterisk sends first, then messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Banner(String),
    Message(Message),
    /// A message too large to keep, read to its end and dropped; `event` is its `Event:`
    /// name if that came first and is a plain name.
    Dropped {
        why: Oversize,
        event: Option<String>,
    },
}

#[derive(Debug, Default)]
pub struct AmiCodec {
    banner_read: bool,
    partial: Message,
    /// Bytes of `partial`'s lines.
    partial_bytes: usize,
    scanned: usize,
    /// In the middle of a line too long to keep: its bytes are discarded up to its LF.
    discarding_line: bool,
    /// The message being read is dropped: its lines are discarded up to its empty line.
    dropping: Option<(Oversize, Option<String>)>,
}

impl AmiCodec {
    /// Drop the message being read (once: the first reason is kept).
    fn drop_message(&mut self, why: Oversize) {
        if self.dropping.is_none() {
            let event = self
                .partial
                .headers
                .first()
                .filter(|(k, v)| {
                    k.eq_ignore_ascii_case("Event")
                        && v.len() <= 64
                        && v.bytes().all(|b| b.is_ascii_alphanumeric())
                })
                .map(|(_, v)| v.clone());
            self.dropping = Some((why, event));
        }
        self.partial = Message::default();
        self.partial_bytes = 0;
    }
}

impl Decoder for AmiCodec {
    type Item = Frame;
    type Error = AmiCodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, AmiCodecError> {
        loop {
            if self.discarding_line {
                let Some(end) = memchr::memchr(b'\n', buf) else {
                    buf.clear();
                    return Ok(None);
                };
                buf.advance(end + 1);
                self.discarding_line = false;
                continue;
            }
            let line = match take_line(buf, &mut self.scanned, MAX_LINE) {
                Ok(Some(line)) => line,
                Ok(None) => return Ok(None),
                Err(TooLong) => {
                    // Discarded up to its LF, which may not have come yet: memory stays
                    // bounded by what one read brings.
                    self.scanned = 0;
                    self.discarding_line = true;
                    if self.banner_read {
                        self.drop_message(Oversize::Line);
                    } else {
                        // No message follows the banner's line to drop with it.
                        self.banner_read = true;
                    }
                    continue;
                }
            };
            if !self.banner_read {
                self.banner_read = true;
                return Ok(Some(Frame::Banner(line)));
            }
            if line.is_empty() {
                if let Some((why, event)) = self.dropping.take() {
                    return Ok(Some(Frame::Dropped { why, event }));
                }
                if self.partial.headers.is_empty() {
                    continue;
                }
                self.partial_bytes = 0;
                return Ok(Some(Frame::Message(std::mem::take(&mut self.partial))));
            }
            if self.dropping.is_some() {
                continue;
            }
            if self.partial.headers.len() >= MAX_HEADERS {
                self.drop_message(Oversize::Lines);
                continue;
            }
            self.partial_bytes += line.len() + 2;
            if self.partial_bytes > MAX_MESSAGE {
                self.drop_message(Oversize::Bytes);
                continue;
            }
            // A line without `: ` (e.g. command output) is kept whole as a value.
            let (key, value) = match line.split_once(':') {
                Some((k, v)) => (k.to_owned(), v.strip_prefix(' ').unwrap_or(v).to_owned()),
                None => (String::new(), line),
            };
            self.partial.headers.push((key, value));
        }
    }
}

impl Encoder<&Message> for AmiCodec {
    type Error = AmiCodecError;

    fn encode(&mut self, m: &Message, buf: &mut BytesMut) -> Result<(), AmiCodecError> {
        for (k, v) in &m.headers {
            if k.contains(['\r', '\n']) || v.contains(['\r', '\n']) {
                return Err(AmiCodecError::LineBreak(k.clone()));
            }
        }
        for (k, v) in &m.headers {
            buf.extend_from_slice(k.as_bytes());
            buf.extend_from_slice(b": ");
            buf.extend_from_slice(v.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        buf.extend_from_slice(b"\r\n");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Vec<Frame> {
        let mut codec = AmiCodec::default();
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            out.push(f);
        }
        out
    }

    #[test]
    fn banner_response_and_event_from_the_capture() {
        let frames = decode_all(
            b"Asterisk Call Manager/11.0.0\r\nResponse: Success\r\nActionID: login-1\r\nMessage: Authentication accepted\r\n\r\nEvent: OriginateResponse\r\nPrivilege: call,all\r\nActionID: orig-busy\r\nResponse: Failure\r\nChannel: PJSIP/qa\r\nReason: 0\r\nUniqueid: <unknown>\r\n\r\nEvent: Hangup\r\nAccountCode: \r\n",
        );
        assert_eq!(frames.len(), 3);
        assert_eq!(
            frames[0],
            Frame::Banner("Asterisk Call Manager/11.0.0".into())
        );
        let Frame::Message(login) = &frames[1] else {
            panic!()
        };
        assert!(login.is_success());
        assert_eq!(login.event(), None);
        assert_eq!(login.action_id(), Some("login-1"));
        let Frame::Message(orig) = &frames[2] else {
            panic!()
        };
        assert_eq!(orig.event(), Some("OriginateResponse"));
        assert_eq!(orig.get("reason"), Some("0"));
        assert!(!orig.is_success() || orig.get("Response") == Some("Failure"));
    }

    #[test]
    fn encodes_actions_and_refuses_injection() {
        let mut m = Message::action("Originate", "dial-1");
        m.push("Variable", "CALLVERIFY_ID=vf_x");
        m.push("Variable", "CALLVERIFY_LANG=en");
        let mut buf = BytesMut::new();
        AmiCodec::default().encode(&m, &mut buf).unwrap();
        assert_eq!(
            &buf[..],
            b"Action: Originate\r\nActionID: dial-1\r\nVariable: CALLVERIFY_ID=vf_x\r\nVariable: CALLVERIFY_LANG=en\r\n\r\n"
        );
        let mut bad = Message::action("Originate", "x");
        bad.push("Channel", "PJSIP/1\r\nAction: Command");
        assert!(AmiCodec::default()
            .encode(&bad, &mut BytesMut::new())
            .is_err());
    }

    fn event(name: &str, uniqueid: &str) -> String {
        format!("Event: {name}\r\nPrivilege: call,all\r\nUniqueid: {uniqueid}\r\n\r\n")
    }

    fn messages(frames: &[Frame]) -> Vec<&Message> {
        frames
            .iter()
            .filter_map(|f| match f {
                Frame::Message(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    /// A ring group's DialString over 8 KiB: its event is dropped, the next one comes.
    #[test]
    fn an_overlong_line_drops_its_message_only() {
        let mut input = b"Asterisk Call Manager/11.0.0\r\n".to_vec();
        input.extend_from_slice(b"Event: DialBegin\r\nPrivilege: call,all\r\nDialString: ");
        input.extend_from_slice(&[b'x'; 9000]);
        input.extend_from_slice(b"\r\nUniqueid: 1.1\r\n\r\n");
        input.extend_from_slice(event("Hangup", "1.2").as_bytes());
        let frames = decode_all(&input);
        assert_eq!(
            frames[1],
            Frame::Dropped {
                why: Oversize::Line,
                event: Some("DialBegin".into())
            }
        );
        let kept = messages(&frames);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].event(), Some("Hangup"));
        assert_eq!(kept[0].get("Uniqueid"), Some("1.2"));
    }

    /// The line arrives in pieces (as reads bring it): its bytes are let go as they come,
    /// not held until its end.
    #[test]
    fn an_overlong_line_in_pieces_is_discarded_as_it_comes() {
        let mut codec = AmiCodec::default();
        let mut buf =
            BytesMut::from(&b"Asterisk Call Manager/11.0.0\r\nEvent: VarSet\r\nValue: "[..]);
        assert!(matches!(codec.decode(&mut buf), Ok(Some(Frame::Banner(_)))));
        for _ in 0..100 {
            buf.extend_from_slice(&[b'y'; 4096]);
            assert!(codec.decode(&mut buf).unwrap().is_none());
            assert!(buf.len() <= MAX_LINE + 4096, "{} bytes held", buf.len());
        }
        buf.extend_from_slice(b"\r\nUniqueid: 1.1\r\n\r\n");
        buf.extend_from_slice(event("Hangup", "1.3").as_bytes());
        assert!(matches!(
            codec.decode(&mut buf),
            Ok(Some(Frame::Dropped {
                why: Oversize::Line,
                ..
            }))
        ));
        let Ok(Some(Frame::Message(m))) = codec.decode(&mut buf) else {
            panic!("the next event")
        };
        assert_eq!(m.get("Uniqueid"), Some("1.3"));
    }

    /// Lines each under the limit adding up to more than 64 KiB: dropped whole.
    #[test]
    fn an_oversize_message_is_dropped_and_the_next_delivered() {
        let mut input = b"Asterisk Call Manager/11.0.0\r\nEvent: Newexten\r\n".to_vec();
        for i in 0..20 {
            input.extend_from_slice(format!("ChanVariable(v{i}): ").as_bytes());
            input.extend_from_slice(&[b'z'; 4000]);
            input.extend_from_slice(b"\r\n");
        }
        input.extend_from_slice(b"\r\n");
        input.extend_from_slice(event("OriginateResponse", "1.4").as_bytes());
        let frames = decode_all(&input);
        assert_eq!(
            frames[1],
            Frame::Dropped {
                why: Oversize::Bytes,
                event: Some("Newexten".into())
            }
        );
        let kept = messages(&frames);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].get("Uniqueid"), Some("1.4"));
    }

    #[test]
    fn a_message_of_too_many_lines_is_dropped_and_the_next_delivered() {
        let mut input = b"Asterisk Call Manager/11.0.0\r\nEvent: Newexten\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            input.extend_from_slice(format!("V{i}: 1\r\n").as_bytes());
        }
        input.extend_from_slice(b"\r\n");
        input.extend_from_slice(event("Hangup", "1.5").as_bytes());
        let frames = decode_all(&input);
        assert!(matches!(
            frames[1],
            Frame::Dropped {
                why: Oversize::Lines,
                ..
            }
        ));
        assert_eq!(messages(&frames)[0].get("Uniqueid"), Some("1.5"));
    }

    /// A secret with a `\r` (a CRLF env file) is refused without being copied into the
    /// error, which is logged.
    #[test]
    fn a_refused_field_is_named_not_quoted() {
        let mut login = Message::action("Login", "callverify-login");
        login.push("Username", "callverify").push("Secret", "abc\r");
        let error = AmiCodec::default()
            .encode(&login, &mut BytesMut::new())
            .unwrap_err()
            .to_string();
        assert!(error.contains("Secret"), "{error}");
        assert!(!error.contains("abc"), "{error}");
    }
}
