//! What the probe does once the call is up: wait for prompts, press keys, pause, hang up.
//!
//! From the command line (`--wait`, `--keys`, each pressed after the next prompt ends) or a
//! script file, one action a line (`;` starts a comment):
//!
//! ```text
//! prompt          ; wait until the next prompt ends
//! press 123#      ; press keys now
//! keys #          ; prompt, then press
//! wait 1.5        ; seconds
//! hangup
//! ```

use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    WaitPrompt,
    Press(String),
    Pause(Duration),
    Hangup,
}

#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("{0}: {1}")]
    Read(String, std::io::Error),
    #[error("script line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("{0:?} has characters that are no DTMF keys (0-9, *, #, A-D)")]
    Keys(String),
    #[error("--wait takes seconds (0 or more), not {0}")]
    Wait(f64),
}

/// A pause of `secs` seconds; None for a negative, NaN, infinite or overlong one (which
/// Duration::from_secs_f64 would panic on).
fn pause(secs: f64) -> Option<Action> {
    Duration::try_from_secs_f64(secs).ok().map(Action::Pause)
}

/// The actions of `--wait` and `--keys`.
pub fn from_args(wait: Option<f64>, keys: &[String]) -> Result<Vec<Action>, ScriptError> {
    let mut actions = Vec::new();
    if let Some(secs) = wait {
        actions.push(pause(secs).ok_or(ScriptError::Wait(secs))?);
    }
    for k in keys {
        actions.push(Action::WaitPrompt);
        actions.push(Action::Press(checked_keys(k)?));
    }
    Ok(actions)
}

pub fn from_file(path: &Path) -> Result<Vec<Action>, ScriptError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ScriptError::Read(path.display().to_string(), e))?;
    parse(&text)
}

pub fn parse(text: &str) -> Result<Vec<Action>, ScriptError> {
    let mut actions = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.split(';').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |message: String| ScriptError::Line {
            line: index + 1,
            message,
        };
        let (verb, arg) = line
            .split_once(char::is_whitespace)
            .map_or((line, ""), |(v, a)| (v, a.trim()));
        match (verb, arg) {
            ("prompt", "") => actions.push(Action::WaitPrompt),
            ("hangup", "") => actions.push(Action::Hangup),
            ("press", keys) | ("keys", keys) if !keys.is_empty() => {
                if verb == "keys" {
                    actions.push(Action::WaitPrompt);
                }
                actions.push(Action::Press(
                    checked_keys(keys).map_err(|e| bad(e.to_string()))?,
                ));
            }
            ("wait", secs) => {
                let wait = secs.parse().ok().and_then(pause);
                actions
                    .push(wait.ok_or_else(|| bad(format!("`wait` takes seconds, not {secs:?}")))?);
            }
            _ => {
                return Err(bad(format!(
                    "unknown action {line:?} (prompt, press KEYS, keys KEYS, wait SECS, hangup)"
                )))
            }
        }
    }
    Ok(actions)
}

fn checked_keys(keys: &str) -> Result<String, ScriptError> {
    let keys: String = keys.chars().filter(|c| !c.is_whitespace()).collect();
    if keys.is_empty() || !keys.chars().all(|c| super::dtmf::event_code(c).is_some()) {
        return Err(ScriptError::Keys(keys));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_file_reads_as_actions() {
        let actions = parse("; verify\nkeys #\nwait 0.5\npress 12 34 ; code\n\nhangup\n").unwrap();
        assert_eq!(
            actions,
            [
                Action::WaitPrompt,
                Action::Press("#".into()),
                Action::Pause(Duration::from_millis(500)),
                Action::Press("1234".into()),
                Action::Hangup
            ]
        );
        assert!(parse("press 12x")
            .unwrap_err()
            .to_string()
            .contains("line 1"));
        assert!(parse("dance").is_err());
    }

    /// Duration::from_secs_f64 panics on these (exit 101): they are usage errors instead.
    #[test]
    fn a_negative_nan_or_overlong_wait_is_an_error_not_a_panic() {
        for secs in [-1.0, f64::NAN, f64::INFINITY, 1e300] {
            let error = from_args(Some(secs), &[]).unwrap_err();
            assert!(
                error.to_string().contains("--wait takes seconds"),
                "{error}"
            );
        }
        assert_eq!(
            from_args(Some(0.5), &[]).unwrap(),
            [Action::Pause(Duration::from_millis(500))]
        );
        for text in ["wait -1", "wait NaN", "wait 1e300", "wait inf"] {
            assert!(
                parse(text).unwrap_err().to_string().contains("line 1"),
                "{text}"
            );
        }
    }
}
