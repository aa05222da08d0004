//! Replies Asterisk sends to AGI commands, parsed into a typed value.
//!
//! The shapes come from res_agi.c and the captures of a real Asterisk 22:
//! `200 result=<raw> [(<data>)] [key=value ...]`, `510 Invalid or unknown command`,
//! `511 Command Not Permitted on a dead channel or intercept routine`, and the
//! `520` usage reply, either on one line or as a `520-` ... `520 End of proper usage.` block.

use std::fmt;

/// One final reply to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `200 result=...`: the command ran.
    Success(Success),
    /// `510`: Asterisk does not know the command.
    InvalidCommand(String),
    /// `511`: the channel is gone; only a few commands still run on a dead channel.
    DeadChannel(String),
    /// `520`: wrong syntax; holds the usage text Asterisk sent.
    Usage(String),
    /// Any other status code, kept so that the caller can report it.
    Other { code: u16, text: String },
}

/// The payload of a `200` reply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Success {
    /// The raw result, exactly as sent: digits with leading zeros, `-1`, an empty string.
    pub result: String,
    /// The text in parentheses after the result, e.g. `timeout` or a variable's value.
    pub data: Option<String>,
    /// Trailing `key=value` pairs such as `endpos=3404`.
    pub attrs: Vec<(String, String)>,
}

impl Success {
    /// The value of a trailing attribute, e.g. `endpos`.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `result=-1`: the command failed, which on a live channel means e.g. a missing prompt,
    /// and otherwise a hang-up.
    pub fn is_failure(&self) -> bool {
        self.result == "-1"
    }

    /// `(timeout)` after the result, as GET DATA and RECORD FILE send it.
    pub fn timed_out(&self) -> bool {
        self.data.as_deref() == Some("timeout")
    }

    /// The result read as the ASCII code of a key (STREAM FILE, WAIT FOR DIGIT): `0` is none.
    pub fn key(&self) -> Option<char> {
        let code: u32 = self.result.parse().ok()?;
        if code == 0 {
            return None;
        }
        char::from_u32(code).filter(|c| is_dtmf(*c))
    }
}

/// Keys a phone keypad can send.
pub fn is_dtmf(c: char) -> bool {
    c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D')
}

/// A line that is not a well-formed reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed AGI reply line {line:?}: {reason}")]
pub struct MalformedReply {
    pub line: String,
    pub reason: &'static str,
}

/// What one line read from Asterisk is, before a final reply is assembled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// The unsolicited `HANGUP` notification: it can arrive before or after any reply.
    Hangup,
    /// `100 result=0 Trying...`: a provisional line; the final reply follows.
    Trying,
    /// The first line of a `520-` usage block; lines up to `520 End of proper usage.` follow.
    UsageStart,
    /// A complete single-line reply.
    Final(Reply),
}

/// The line that closes a `520-` usage block.
pub const USAGE_END: &str = "520 End of proper usage.";

/// Classify one line (without its line ending).
pub fn parse_line(line: &str) -> Result<Line, MalformedReply> {
    if line == "HANGUP" {
        return Ok(Line::Hangup);
    }
    let malformed = |reason| MalformedReply {
        line: line.to_owned(),
        reason,
    };
    let code = line
        .get(..3)
        .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| malformed("no three-digit status code"))?;
    let sep = line.as_bytes().get(3).copied();
    let rest = match sep {
        None => "",
        Some(b' ') | Some(b'-') => &line[4..],
        Some(_) => return Err(malformed("status code not followed by a space")),
    };
    if sep == Some(b'-') {
        return if code == 520 {
            Ok(Line::UsageStart)
        } else {
            Err(malformed("continuation line for a status other than 520"))
        };
    }
    Ok(match code {
        100 => Line::Trying,
        200 => Line::Final(Reply::Success(
            parse_success(rest).ok_or_else(|| malformed("200 reply without result="))?,
        )),
        510 => Line::Final(Reply::InvalidCommand(rest.to_owned())),
        511 => Line::Final(Reply::DeadChannel(rest.to_owned())),
        520 => Line::Final(Reply::Usage(rest.to_owned())),
        _ => Line::Final(Reply::Other {
            code,
            text: rest.to_owned(),
        }),
    })
}

fn parse_success(rest: &str) -> Option<Success> {
    let after = rest.strip_prefix("result=")?;
    let (result, mut tail) = match after.find(' ') {
        Some(i) => (&after[..i], after[i + 1..].trim_start()),
        None => (after, ""),
    };
    let mut data = None;
    if let Some(inner) = tail.strip_prefix('(') {
        // A variable's value may itself hold spaces and parentheses: the data ends at the
        // last `)` after which only `key=value` attributes follow.
        let close = inner
            .rmatch_indices(')')
            .map(|(i, _)| i)
            .find(|&i| is_attr_list(&inner[i + 1..]))?;
        data = Some(inner[..close].to_owned());
        tail = inner[close + 1..].trim_start();
    }
    let attrs = tail
        .split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Some(Success {
        result: result.to_owned(),
        data,
        attrs,
    })
}

fn is_attr_list(s: &str) -> bool {
    s.split_whitespace().all(|pair| {
        pair.split_once('=').is_some_and(|(k, _)| {
            !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
    }) && (s.is_empty() || s.starts_with(' '))
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Success(s) => {
                write!(f, "200 result={}", s.result)?;
                if let Some(d) = &s.data {
                    write!(f, " ({d})")?;
                }
                for (k, v) in &s.attrs {
                    write!(f, " {k}={v}")?;
                }
                Ok(())
            }
            Reply::InvalidCommand(t) => write!(f, "510 {t}"),
            Reply::DeadChannel(t) => write!(f, "511 {t}"),
            Reply::Usage(t) => write!(f, "520 {t}"),
            Reply::Other { code, text } => write!(f, "{code} {text}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn success(line: &str) -> Success {
        match parse_line(line).unwrap() {
            Line::Final(Reply::Success(s)) => s,
            other => panic!("{line}: {other:?}"),
        }
    }

    // Every reply shape below is copied from ../shared/captures (Asterisk 22.10.1).
    #[test]
    fn plain_results_keep_their_raw_text() {
        assert_eq!(success("200 result=0").result, "0");
        assert_eq!(success("200 result=1234").result, "1234");
        assert_eq!(success("200 result=-1").result, "-1");
        assert!(success("200 result=-1").is_failure());
        assert_eq!(success("200 result=0012").result, "0012");
    }

    #[test]
    fn endpos_attribute() {
        let s = success("200 result=0 endpos=3404");
        assert_eq!(s.result, "0");
        assert_eq!(s.data, None);
        assert_eq!(s.attr("endpos"), Some("3404"));
    }

    #[test]
    fn get_data_timeouts_with_and_without_digits() {
        let s = success("200 result=12 (timeout)");
        assert_eq!(s.result, "12");
        assert!(s.timed_out());
        let s = success("200 result= (timeout)");
        assert_eq!(s.result, "");
        assert!(s.timed_out());
    }

    #[test]
    fn record_file_dtmf_and_timeout() {
        let s = success("200 result=35 (dtmf) endpos=10560");
        assert_eq!(s.key(), Some('#'));
        assert_eq!(s.data.as_deref(), Some("dtmf"));
        assert_eq!(s.attr("endpos"), Some("10560"));
        let s = success("200 result=0 (timeout) endpos=24000");
        assert!(s.timed_out());
        assert_eq!(s.key(), None);
    }

    #[test]
    fn wait_for_digit_key_codes() {
        assert_eq!(success("200 result=53").key(), Some('5'));
        assert_eq!(success("200 result=42").key(), Some('*'));
        assert_eq!(success("200 result=0").key(), None);
        assert_eq!(success("200 result=-1").key(), None);
    }

    #[test]
    fn variable_values_with_spaces_and_parentheses() {
        assert_eq!(
            success("200 result=1 (+15551234567)").data.as_deref(),
            Some("+15551234567")
        );
        let s = success("200 result=1 (QA Caller (desk) x)");
        assert_eq!(s.data.as_deref(), Some("QA Caller (desk) x"));
        assert!(s.attrs.is_empty());
    }

    #[test]
    fn error_codes() {
        assert_eq!(
            parse_line("510 Invalid or unknown command").unwrap(),
            Line::Final(Reply::InvalidCommand("Invalid or unknown command".into()))
        );
        assert_eq!(
            parse_line("511 Command Not Permitted on a dead channel or intercept routine").unwrap(),
            Line::Final(Reply::DeadChannel(
                "Command Not Permitted on a dead channel or intercept routine".into()
            ))
        );
        assert_eq!(
            parse_line("520 Invalid command syntax.  Proper usage not available.").unwrap(),
            Line::Final(Reply::Usage(
                "Invalid command syntax.  Proper usage not available.".into()
            ))
        );
        assert_eq!(
            parse_line("520-Invalid command syntax.  Proper usage follows:").unwrap(),
            Line::UsageStart
        );
    }

    #[test]
    fn hangup_and_trying() {
        assert_eq!(parse_line("HANGUP").unwrap(), Line::Hangup);
        assert_eq!(parse_line("100 result=0 Trying...").unwrap(), Line::Trying);
    }

    #[test]
    fn garbage_is_rejected_with_the_line() {
        for bad in [
            "",
            "20",
            "abc result=1",
            "200result=1",
            "200 result",
            "300-x",
        ] {
            let err = parse_line(bad).unwrap_err();
            assert_eq!(err.line, bad);
        }
    }

    #[test]
    fn display_round_trips() {
        for line in [
            "200 result=35 (dtmf) endpos=10560",
            "200 result= (timeout)",
            "511 Command Not Permitted on a dead channel or intercept routine",
        ] {
            let Line::Final(reply) = parse_line(line).unwrap() else {
                panic!()
            };
            assert_eq!(reply.to_string(), line);
        }
    }
}
