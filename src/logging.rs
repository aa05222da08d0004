//! Log output of the daemon and the CLI: one line per event, on stderr.
//!
//! Peers write much of what is logged (FastAGI usage blocks, AMI messages, channel names,
//! SIP headers). Every control character of an event is escaped as it is written (a newline
//! becomes `\n`), so that no peer can start a line of its own and forge an entry; the event's
//! own final newline is the only one. Colour only when stderr is a terminal and `NO_COLOR` is
//! not set: log files and journald get plain text. With `log.format = "json"`, one JSON object
//! per event and line, escaped as JSON escapes strings.

use std::io::{self, IsTerminal, Write};

use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Log to stderr at `default_level` unless `RUST_LOG` says otherwise.
pub fn init(default_level: &str, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    if format == LogFormat::Json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(io::stderr)
            .init();
        return;
    }
    // https://no-color.org: a NO_COLOR that is set and not empty turns colour off.
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let ansi = io::stderr().is_terminal() && !no_color;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(OneLinePerEvent { colour: ansi })
        .init();
}

/// Stderr, each event escaped onto one line.
#[derive(Debug, Clone, Copy)]
struct OneLinePerEvent {
    /// Keep ESC: the formatter's own colour codes (terminals only).
    colour: bool,
}

impl<'a> MakeWriter<'a> for OneLinePerEvent {
    type Writer = Escaping<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        Escaping {
            inner: io::stderr(),
            keep_esc: self.colour,
        }
    }
}

/// Writes what it is given with control characters escaped, except a final newline.
/// The formatter writes each event whole, so each event stays one line.
pub struct Escaping<W> {
    inner: W,
    keep_esc: bool,
}

impl<W: Write> Write for Escaping<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (body, end): (&[u8], &[u8]) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, b"\n"),
            None => (buf, b""),
        };
        let mut out = Vec::with_capacity(buf.len() + 16);
        escape(body, self.keep_esc, &mut out);
        out.extend_from_slice(end);
        self.inner.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `bytes` with C0 and C1 control characters and DEL escaped (`\n`, `\r`, `\x1b`, `\u{85}`);
/// tabs and, with `keep_esc`, colour codes (`ESC [ 0-9; m`) stay as they are. Any other
/// escape sequence is escaped even on a terminal: the formatter colours only, and a peer's
/// text (a `%Display` field is written as it is) could otherwise move the cursor, erase
/// lines or set the clipboard.
fn escape(bytes: &[u8], keep_esc: bool, out: &mut Vec<u8>) {
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.push(b),
            0x1b if keep_esc && colour_code_len(&bytes[i..]) > 0 => {
                let len = colour_code_len(&bytes[i..]);
                out.extend_from_slice(&bytes[i..i + len]);
                i += len;
                continue;
            }
            0x00..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            // C1 controls, U+0080..U+009F, are 0xC2 0x80..0x9F in UTF-8.
            0xc2 if bytes.get(i + 1).is_some_and(|c| (0x80..=0x9f).contains(c)) => {
                out.extend_from_slice(format!("\\u{{{:x}}}", bytes[i + 1]).as_bytes());
                i += 1;
            }
            _ => out.push(b),
        }
        i += 1;
    }
}

/// The length of the colour code (SGR: `ESC [`, digits and `;`, `m`) `bytes` starts with,
/// or 0.
fn colour_code_len(bytes: &[u8]) -> usize {
    let Some(rest) = bytes.strip_prefix(b"\x1b[") else {
        return 0;
    };
    let params = rest
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b';')
        .count();
    match rest.get(params) {
        Some(b'm') => 2 + params + 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(input: &[u8], keep_esc: bool) -> String {
        let mut writer = Escaping {
            inner: Vec::new(),
            keep_esc,
        };
        writer.write_all(input).unwrap();
        String::from_utf8(writer.inner).unwrap()
    }

    #[test]
    fn an_event_stays_one_line() {
        let forged =
            b"WARN call flow failed: 520 usage\n2026-12-02T00:00:00Z INFO code correct: verified\n";
        assert_eq!(
            escaped(forged, false),
            "WARN call flow failed: 520 usage\\n2026-12-02T00:00:00Z INFO code correct: verified\n"
        );
        assert_eq!(
            escaped(b"a\rb\x00c\x7f\td\n", false),
            "a\\rb\\x00c\\x7f\td\n"
        );
    }

    #[test]
    fn colour_codes_pass_only_on_a_terminal() {
        assert_eq!(
            escaped(b"\x1b[31mred\x1b[0m\n", false),
            "\\x1b[31mred\\x1b[0m\n"
        );
        assert_eq!(
            escaped(b"\x1b[31mred\x1b[0m\n", true),
            "\x1b[31mred\x1b[0m\n"
        );
        // On a terminal too, a peer's other sequences are escaped: cursor up, erase the
        // line, set the clipboard (OSC 52), and an ESC at the very end.
        assert_eq!(
            escaped(b"\x1b[2;1mok\x1b[1A\x1b[2K\x1b]52;c;aGk=\x07\x1b\n", true),
            "\x1b[2;1mok\\x1b[1A\\x1b[2K\\x1b]52;c;aGk=\\x07\\x1b\n"
        );
    }

    #[test]
    fn unicode_stays_and_its_controls_are_escaped() {
        assert_eq!(escaped("café\u{85}x\n".as_bytes(), false), "café\\u{85}x\n");
    }
}
