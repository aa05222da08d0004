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
    let Some(pos) = memchr::memchr(b'\n', &buf[*scanned..]) else {
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
    let text = utf8_lossy(line);
    buf.advance(end + 1);
    Ok(Some(text))
}

/// `bytes` as text, any bytes that are not UTF-8 replaced (U+FFFD). Checked as UTF-8 first,
/// which for the ASCII lines these protocols send costs far less than the lossy decoder.
fn utf8_lossy(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_come_whole_and_bytes_that_are_not_utf8_are_replaced() {
        let mut buf = BytesMut::from(&b"200 result=1\r\nJos\xe9 caf\xc3\xa9\npart"[..]);
        let mut scanned = 0;
        assert_eq!(
            take_line(&mut buf, &mut scanned, 64),
            Ok(Some("200 result=1".into()))
        );
        assert_eq!(
            take_line(&mut buf, &mut scanned, 64),
            Ok(Some("Jos\u{FFFD} café".into()))
        );
        assert_eq!(take_line(&mut buf, &mut scanned, 64), Ok(None));
        assert_eq!(scanned, 4);
        buf.extend_from_slice(b"ial\n");
        assert_eq!(
            take_line(&mut buf, &mut scanned, 64),
            Ok(Some("partial".into()))
        );
        buf.extend_from_slice(&[b'x'; 65]);
        assert_eq!(take_line(&mut buf, &mut scanned, 64), Err(TooLong));
    }
}
