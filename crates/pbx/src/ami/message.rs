//! AMI messages: blocks of `Key: Value` lines ending in CR LF, closed by an empty line
//! (`shared/captures/asterisk-ami-*.txt`). Keys repeat (`Variable:`), so order is kept.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::bounded_line::take_line;

/// Longest line and most lines per message accepted from Asterisk.
pub const MAX_LINE: usize = 8192;
pub const MAX_HEADERS: usize = 512;

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
    #[error("AMI line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("AMI message with more than {MAX_HEADERS} lines")]
    TooManyLines,
    #[error("AMI field contains a line break: {0:?}")]
    LineBreak(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What the codec reads: the banner Asterisk sends first, then messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Banner(String),
    Message(Message),
}

#[derive(Debug, Default)]
pub struct AmiCodec {
    banner_read: bool,
    partial: Message,
    scanned: usize,
}

impl Decoder for AmiCodec {
    type Item = Frame;
    type Error = AmiCodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, AmiCodecError> {
        loop {
            let line = take_line(buf, &mut self.scanned, MAX_LINE)
                .map_err(|_| AmiCodecError::LineTooLong)?;
            let Some(line) = line else {
                return Ok(None);
            };
            if !self.banner_read {
                self.banner_read = true;
                return Ok(Some(Frame::Banner(line)));
            }
            if line.is_empty() {
                if self.partial.headers.is_empty() {
                    continue;
                }
                return Ok(Some(Frame::Message(std::mem::take(&mut self.partial))));
            }
            if self.partial.headers.len() >= MAX_HEADERS {
                return Err(AmiCodecError::TooManyLines);
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
                return Err(AmiCodecError::LineBreak(format!("{k}: {v}")));
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

    #[test]
    fn oversized_input_is_an_error() {
        let mut codec = AmiCodec::default();
        let mut buf = BytesMut::from(&[b'x'; MAX_LINE + 10][..]);
        assert!(codec.decode(&mut buf).is_err());
    }
}
