//! AGI commands and their encoding on the wire.
//!
//! res_agi.c splits a command line on spaces, honouring double quotes and backslash escapes,
//! so arguments that are empty or hold spaces, quotes or backslashes are quoted. A line
//! break can never be sent: it would end the command and start another.

use std::fmt::Write as _;
use std::time::Duration;

/// A command the daemon can send. `Raw` is the escape hatch for anything not typed here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Answer,
    Hangup,
    ChannelStatus,
    Noop,
    StreamFile {
        file: String,
        escape_digits: String,
        /// Start this many samples in (beyond the end: nothing plays).
        offset: Option<u64>,
    },
    GetData {
        file: String,
        timeout: Duration,
        max_digits: u32,
    },
    WaitForDigit {
        timeout: Duration,
    },
    SayDigits {
        digits: String,
        escape_digits: String,
    },
    SayNumber {
        number: i64,
        escape_digits: String,
    },
    GetVariable(String),
    SetVariable {
        name: String,
        value: String,
    },
    Exec {
        application: String,
        options: String,
    },
    Verbose {
        message: String,
        level: u8,
    },
    Raw(String),
}

/// Longest command line Asterisk reads whole: res_agi.c reads into `AGI_BUF_LEN` (2048)
/// bytes, newline and terminator included, and would run the rest as a second command.
pub const MAX_COMMAND_LEN: usize = 2046;

/// A command that cannot be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsendableCommand {
    #[error("AGI command argument contains a line break: {0:?}")]
    LineBreak(String),
    #[error("AGI command is {0} bytes long; Asterisk reads at most {MAX_COMMAND_LEN}")]
    TooLong(usize),
}

impl Command {
    /// The command line without its trailing `\n`.
    /// The command as logs and errors show it: the digits of SAY DIGITS (a code read back)
    /// are replaced by their count, as the code must never reach a log.
    pub fn for_log(&self) -> String {
        match self {
            Command::SayDigits { digits, .. } => format!("SAY DIGITS <{} digits>", digits.len()),
            other => other
                .encode()
                .unwrap_or_else(|e| format!("(unsendable: {e})")),
        }
    }

    pub fn encode(&self) -> Result<String, UnsendableCommand> {
        let mut line = String::new();
        match self {
            Command::Answer => line.push_str("ANSWER"),
            Command::Hangup => line.push_str("HANGUP"),
            Command::ChannelStatus => line.push_str("CHANNEL STATUS"),
            Command::Noop => line.push_str("NOOP"),
            Command::StreamFile {
                file,
                escape_digits,
                offset,
            } => {
                words(&mut line, "STREAM FILE", &[file, escape_digits]);
                if let Some(offset) = offset {
                    let _ = write!(line, " {offset}");
                }
            }
            Command::GetData {
                file,
                timeout,
                max_digits,
            } => {
                words(&mut line, "GET DATA", &[file]);
                let _ = write!(line, " {} {}", timeout.as_millis(), max_digits);
            }
            Command::WaitForDigit { timeout } => {
                let _ = write!(line, "WAIT FOR DIGIT {}", timeout.as_millis());
            }
            Command::SayDigits {
                digits,
                escape_digits,
            } => words(&mut line, "SAY DIGITS", &[digits, escape_digits]),
            Command::SayNumber {
                number,
                escape_digits,
            } => words(
                &mut line,
                "SAY NUMBER",
                &[&number.to_string(), escape_digits],
            ),
            Command::GetVariable(name) => words(&mut line, "GET VARIABLE", &[name]),
            Command::SetVariable { name, value } => {
                words(&mut line, "SET VARIABLE", &[name, value])
            }
            Command::Exec {
                application,
                options,
            } => words(&mut line, "EXEC", &[application, options]),
            Command::Verbose { message, level } => {
                words(&mut line, "VERBOSE", &[message]);
                let _ = write!(line, " {level}");
            }
            Command::Raw(text) => line.push_str(text),
        }
        if line.contains(['\n', '\r', '\0']) {
            return Err(UnsendableCommand::LineBreak(line));
        }
        if line.len() > MAX_COMMAND_LEN {
            return Err(UnsendableCommand::TooLong(line.len()));
        }
        Ok(line)
    }
}

fn words(line: &mut String, name: &str, args: &[&str]) {
    line.push_str(name);
    for arg in args {
        line.push(' ');
        push_arg(line, arg);
    }
}

/// Quote an argument the way res_agi.c's `parse_args` reads it back.
fn push_arg(line: &mut String, arg: &str) {
    let needs_quotes = arg.is_empty() || arg.contains([' ', '\t', '"', '\\']);
    if !needs_quotes {
        line.push_str(arg);
        return;
    }
    line.push('"');
    for c in arg.chars() {
        if c == '"' || c == '\\' {
            line.push('\\');
        }
        line.push(c);
    }
    line.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(c: Command) -> String {
        c.encode().unwrap()
    }

    #[test]
    fn logs_never_show_the_digits_read_back() {
        let say = Command::SayDigits {
            digits: "482913".into(),
            escape_digits: String::new(),
        };
        assert_eq!(say.for_log(), "SAY DIGITS <6 digits>");
        assert_eq!(Command::Answer.for_log(), "ANSWER");
    }

    // The expected lines are the ones the capture's FastAGI server sent to Asterisk 22.
    #[test]
    fn encodes_like_the_captures() {
        assert_eq!(enc(Command::Answer), "ANSWER");
        assert_eq!(
            enc(Command::StreamFile {
                file: "beep".into(),
                escape_digits: String::new(),
                offset: None,
            }),
            r#"STREAM FILE beep """#
        );
        assert_eq!(
            enc(Command::StreamFile {
                file: "digits/1".into(),
                escape_digits: String::new(),
                offset: Some(8000),
            }),
            r#"STREAM FILE digits/1 "" 8000"#
        );
        assert_eq!(
            enc(Command::GetData {
                file: "beep".into(),
                timeout: Duration::from_millis(3000),
                max_digits: 6
            }),
            "GET DATA beep 3000 6"
        );
        assert_eq!(
            enc(Command::WaitForDigit {
                timeout: Duration::from_secs(2)
            }),
            "WAIT FOR DIGIT 2000"
        );
        assert_eq!(
            enc(Command::SayDigits {
                digits: "123".into(),
                escape_digits: String::new()
            }),
            r#"SAY DIGITS 123 """#
        );
        assert_eq!(enc(Command::ChannelStatus), "CHANNEL STATUS");
        assert_eq!(
            enc(Command::GetVariable("CALLERID(num)".into())),
            "GET VARIABLE CALLERID(num)"
        );
        assert_eq!(
            enc(Command::SetVariable {
                name: "FOO".into(),
                value: "bar".into()
            }),
            "SET VARIABLE FOO bar"
        );
        assert_eq!(
            enc(Command::Exec {
                application: "Playback".into(),
                options: "silence/1".into()
            }),
            "EXEC Playback silence/1"
        );
        assert_eq!(enc(Command::Hangup), "HANGUP");
    }

    #[test]
    fn quotes_spaces_quotes_and_backslashes() {
        assert_eq!(
            enc(Command::Verbose {
                message: r#"say "hi" \ there"#.into(),
                level: 1
            }),
            r#"VERBOSE "say \"hi\" \\ there" 1"#
        );
    }

    #[test]
    fn refuses_line_breaks() {
        let err = Command::SetVariable {
            name: "X".into(),
            value: "a\nHANGUP".into(),
        }
        .encode()
        .unwrap_err();
        assert!(matches!(err, UnsendableCommand::LineBreak(l) if l.contains("HANGUP")));
        assert!(Command::Raw("NOOP\r".into()).encode().is_err());
    }

    #[test]
    fn refuses_lines_asterisk_would_split() {
        let value = "x".repeat(MAX_COMMAND_LEN);
        let err = Command::SetVariable {
            name: "X".into(),
            value,
        }
        .encode()
        .unwrap_err();
        assert_eq!(err, UnsendableCommand::TooLong(MAX_COMMAND_LEN + 15));
        let fits = "x".repeat(MAX_COMMAND_LEN - "SET VARIABLE X ".len());
        assert!(Command::SetVariable {
            name: "X".into(),
            value: fits
        }
        .encode()
        .is_ok());
    }
}
