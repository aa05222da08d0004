//! Lines out of a byte buffer, bounded, for the line-based protocols (FastAGI, AMI).
//! Bytes that are not UTF-8 (a Latin-1 caller name) are kept lossily rather than failing.

use bytes::{Buf, BytesMut};

/// A line longer than the limit: a protocol error, not a reason to grow memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong;

/// Take the next complete line from `buf`, without its `\n` or `\r\n`; `None` until one is
/// complete. `scanned` keeps how far earlier calls looked, so that a line arriving in
/// pieces is scanned once.
pub fn take_line(
    buf: &mut BytesMut,
    scanned: &mut usize,
    max: usize,
) -> Result<Option<String>, TooLong> {
    let Some(pos) = buf[*scanned..].iter().position(|&b| b == b'\n') else {
        *scanned = buf.len();
        return if buf.len() > max {
            Err(TooLong)
        } else {
            Ok(None)
        };
    };
    let end = *scanned + pos;
    *scanned = 0;
    if end > max {
        return Err(TooLong);
    }
    let mut line = &buf[..end];
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    let text = String::from_utf8_lossy(line).into_owned();
    buf.advance(end + 1);
    Ok(Some(text))
}
