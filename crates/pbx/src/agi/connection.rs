//! A FastAGI TCP connection framed into lines.
//!
//! Lines are bounded at 8 KiB, far above anything Asterisk sends. A peer that closes
//! mid-line has closed, not erred. Bytes that are not UTF-8 (a Latin-1 caller name) are kept lossily
//! rather than failing the call.

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Decoder, Encoder, Framed};

use crate::bounded_line::take_line;

/// The longest line accepted from a peer, as in Asterisk (`AGI_BUF_LEN`).
pub const MAX_LINE: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl LineError {
    /// The peer closed or reset the connection.
    pub fn is_disconnect(&self) -> bool {
        use std::io::ErrorKind::*;
        matches!(self, LineError::Io(e) if matches!(
            e.kind(),
            BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof
        ))
    }
}

/// Splits on `\n`, drops a `\r` before it, and refuses lines over [`MAX_LINE`].
#[derive(Debug, Default)]
pub struct LineCodec {
    scanned: usize,
}

impl Decoder for LineCodec {
    type Item = String;
    type Error = LineError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<String>, LineError> {
        take_line(buf, &mut self.scanned, MAX_LINE).map_err(|_| LineError::TooLong)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<String>, LineError> {
        match self.decode(buf)? {
            Some(line) => Ok(Some(line)),
            None => {
                // An unfinished last line is dropped: the peer is gone either way.
                buf.clear();
                self.scanned = 0;
                Ok(None)
            }
        }
    }
}

impl Encoder<&str> for LineCodec {
    type Error = LineError;

    fn encode(&mut self, line: &str, buf: &mut BytesMut) -> Result<(), LineError> {
        buf.reserve(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.extend_from_slice(b"\n");
        Ok(())
    }
}

/// A line-framed connection to one peer.
pub struct Connection<S> {
    framed: Framed<S, LineCodec>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(stream: S) -> Self {
        Self {
            framed: Framed::with_capacity(stream, LineCodec::default(), 1024),
        }
    }

    /// The next line, or `None` when the peer closed the connection.
    pub async fn read_line(&mut self) -> Result<Option<String>, LineError> {
        self.framed.next().await.transpose()
    }

    /// Send one line and flush it.
    pub async fn write_line(&mut self, line: &str) -> Result<(), LineError> {
        self.framed.send(line).await
    }

    /// Flush and close the write half: the daemon, not Asterisk, ends a FastAGI session.
    pub async fn close(&mut self) -> Result<(), LineError> {
        SinkExt::<&str>::close(&mut self.framed).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Vec<Result<String, String>> {
        let mut codec = LineCodec::default();
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(line)) => out.push(Ok(line)),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    break;
                }
            }
        }
        out
    }

    #[test]
    fn splits_lines_and_strips_cr() {
        assert_eq!(
            decode_all(b"agi_network: yes\r\n200 result=0\n\npartial"),
            vec![
                Ok("agi_network: yes".into()),
                Ok("200 result=0".into()),
                Ok(String::new())
            ]
        );
    }

    #[test]
    fn refuses_oversized_lines_with_or_without_newline() {
        let mut long = vec![b'a'; MAX_LINE + 1];
        assert!(decode_all(&long)[0].is_err());
        long.push(b'\n');
        assert!(decode_all(&long)[0].is_err());
        let ok = [vec![b'a'; MAX_LINE], b"\n".to_vec()].concat();
        assert_eq!(decode_all(&ok)[0].as_ref().unwrap().len(), MAX_LINE);
    }

    #[test]
    fn keeps_non_utf8_lossily() {
        let out = decode_all(b"agi_calleridname: Jos\xe9\n");
        assert_eq!(out[0].as_ref().unwrap(), "agi_calleridname: Jos\u{fffd}");
    }

    #[test]
    fn incremental_input_is_scanned_once() {
        let mut codec = LineCodec::default();
        let mut buf = BytesMut::from(&b"200 res"[..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"ult=1\n");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "200 result=1");
    }
}
