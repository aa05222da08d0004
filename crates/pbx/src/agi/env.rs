//! The `agi_*` environment block Asterisk sends first on every FastAGI connection.

use std::fmt;
use std::ops::Range;

/// At most this many lines, a name sent again counted again: Asterisk sends about 22 plus
/// one per argument.
pub const MAX_VARIABLES: usize = 256;
/// At most this many bytes in all, each line's newline included (every line counted, a
/// value that replaces an earlier one too): Asterisk's block is 1 to 2 KiB.
pub const MAX_BYTES: usize = 64 * 1024;

/// The parsed environment of one AGI session, in the order Asterisk sent it. A list, not a
/// map: it holds some 22 variables, read a few times each, and every call parses one; the
/// names and values share one buffer, not two allocations a line.
#[derive(Clone, Default)]
pub struct AgiEnv {
    /// The names and values, one after another (a value sent again replaces the earlier).
    text: String,
    /// Each variable's name and value in `text`, in the order the names first came.
    vars: Vec<(Range<usize>, Range<usize>)>,
    /// Lines and bytes taken so far, against [`MAX_VARIABLES`] and [`MAX_BYTES`].
    lines: usize,
    bytes: usize,
}

/// What a block of some 22 lines takes: the buffer grows once, if ever.
const TEXT_CAPACITY: usize = 1024;
/// The variables of such a block, with room for arguments: the list grows once, if ever.
const VARS_CAPACITY: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("environment line without `agi_` name and `: `: {0:?}")]
    Malformed(String),
    #[error("environment block has more than {MAX_VARIABLES} lines")]
    TooManyVariables,
    #[error("environment block is larger than {MAX_BYTES} bytes")]
    TooLarge,
    #[error("environment block has no agi_network_script: is this a FastAGI peer?")]
    NoScript,
}

impl AgiEnv {
    /// Add one `agi_name: value` line. The block ends with an empty line, which the caller
    /// detects before calling this.
    pub fn push_line(&mut self, line: &str) -> Result<(), EnvError> {
        let (name, value) = line
            .split_once(':')
            .filter(|(name, _)| name.starts_with("agi_") && !name.contains(' '))
            .ok_or_else(|| EnvError::Malformed(line.chars().take(80).collect()))?;
        // Every line counts, a name sent again too: the limits bound what a peer can make
        // this hold and work through, whatever it sends.
        if self.lines >= MAX_VARIABLES {
            return Err(EnvError::TooManyVariables);
        }
        let bytes = self.bytes + line.len() + 1;
        if bytes > MAX_BYTES {
            return Err(EnvError::TooLarge);
        }
        self.lines += 1;
        self.bytes = bytes;
        let value = value.strip_prefix(' ').unwrap_or(value);
        if self.text.capacity() == 0 {
            self.text.reserve(TEXT_CAPACITY);
            self.vars.reserve(VARS_CAPACITY);
        }
        // A name sent twice: the later value counts, in the earlier one's place.
        match self.position(name) {
            Some(i) => self.replace_value(i, value),
            None => {
                let start = self.text.len();
                self.text.push_str(name);
                let name_at = start..self.text.len();
                self.text.push_str(value);
                let value_at = name_at.end..self.text.len();
                self.vars.push((name_at, value_at));
            }
        }
        Ok(())
    }

    /// Put `value` where variable `i`'s value is, moving the variables after it.
    fn replace_value(&mut self, i: usize, value: &str) {
        let old = self.vars[i].1.clone();
        self.text.replace_range(old.clone(), value);
        let new_end = old.start + value.len();
        self.vars[i].1 = old.start..new_end;
        let moved = |at: usize| at - old.end + new_end;
        for (n, v) in &mut self.vars[i + 1..] {
            *n = moved(n.start)..moved(n.end);
            *v = moved(v.start)..moved(v.end);
        }
    }

    /// The variables, names and values, in the order the names first came.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars
            .iter()
            .map(|(n, v)| (&self.text[n.clone()], &self.text[v.clone()]))
    }

    /// Check that the block describes a FastAGI request.
    pub fn validate(&self) -> Result<(), EnvError> {
        if self.get("agi_network_script").is_some() {
            Ok(())
        } else {
            Err(EnvError::NoScript)
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        let (_, value) = &self.vars[self.position(name)?];
        Some(&self.text[value.clone()])
    }

    /// Where variable `name` is in `vars`. Compared as bytes: every call parses a block of
    /// some 22 lines, each looked up among those before it.
    fn position(&self, name: &str) -> Option<usize> {
        let text = self.text.as_bytes();
        self.vars
            .iter()
            .position(|(n, _)| &text[n.clone()] == name.as_bytes())
    }

    /// The script name from `agi_network_script`, without a query string or slashes:
    /// `verify?x=1` is `verify`.
    pub fn script(&self) -> &str {
        let full = self.get("agi_network_script").unwrap_or_default();
        let path = full.split(['?', '#']).next().unwrap_or_default();
        path.trim_matches('/')
    }

    /// `agi_arg_N`, counted from 1 as in the dialplan.
    pub fn arg(&self, n: usize) -> Option<&str> {
        self.get(&format!("agi_arg_{n}"))
    }

    pub fn channel(&self) -> &str {
        self.get("agi_channel").unwrap_or_default()
    }

    pub fn uniqueid(&self) -> &str {
        self.get("agi_uniqueid").unwrap_or_default()
    }

    pub fn language(&self) -> &str {
        self.get("agi_language").unwrap_or("en")
    }

    pub fn len(&self) -> usize {
        self.vars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }
}

impl PartialEq for AgiEnv {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for AgiEnv {}

impl fmt::Debug for AgiEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(lines: &[&str]) -> AgiEnv {
        let mut env = AgiEnv::default();
        for l in lines {
            env.push_line(l).unwrap();
        }
        env
    }

    #[test]
    fn parses_capture_block_with_args_and_query() {
        let e = env(&[
            "agi_network: yes",
            "agi_network_script: verify?x=1&lang=en",
            "agi_channel: PJSIP/qa-00000008",
            "agi_uniqueid: 1795786223.14",
            "agi_accountcode: ",
            "agi_arg_1: code=4821",
            "agi_arg_2: +15551234567",
        ]);
        e.validate().unwrap();
        assert_eq!(e.script(), "verify");
        assert_eq!(e.arg(1), Some("code=4821"));
        assert_eq!(e.arg(2), Some("+15551234567"));
        assert_eq!(e.arg(3), None);
        assert_eq!(e.get("agi_accountcode"), Some(""));
        assert_eq!(e.channel(), "PJSIP/qa-00000008");
    }

    #[test]
    fn a_name_sent_twice_keeps_the_later_value() {
        let e = env(&["agi_channel: PJSIP/a-1", "agi_channel: PJSIP/b-2"]);
        assert_eq!((e.channel(), e.len()), ("PJSIP/b-2", 1));
    }

    #[test]
    fn a_repeated_name_counts_against_the_line_limit() {
        let mut e = AgiEnv::default();
        for _ in 0..MAX_VARIABLES {
            e.push_line("agi_x: 1").unwrap();
        }
        assert_eq!(e.push_line("agi_x: 1"), Err(EnvError::TooManyVariables));
    }

    #[test]
    fn a_repeated_name_replaces_its_value_in_the_buffer() {
        let e = env(&[
            "agi_a: 1",
            "agi_x: first",
            "agi_b: 2",
            "agi_x: second, longer",
            "agi_x: 3",
        ]);
        let vars: Vec<_> = e.iter().collect();
        assert_eq!(vars, [("agi_a", "1"), ("agi_x", "3"), ("agi_b", "2")]);
        assert_eq!(e.text, "agi_a1agi_x3agi_b2");
    }

    #[test]
    fn the_blocks_size_is_capped() {
        let big = "v".repeat(8000);
        // One name sent again and again, and a new name each line.
        let names: [fn(usize) -> String; 2] = [|_| "agi_x".into(), |i| format!("agi_arg_{i}")];
        for name in names {
            let mut e = AgiEnv::default();
            let mut bytes = 0;
            let refused = (0..1000).find_map(|i| {
                let line = format!("{}: {big}", name(i));
                bytes += line.len() + 1;
                e.push_line(&line).err()
            });
            assert_eq!(refused, Some(EnvError::TooLarge));
            assert!(bytes <= MAX_BYTES + big.len() + 16, "{bytes} bytes taken");
            assert!(e.text.len() <= MAX_BYTES, "{} bytes held", e.text.len());
        }
    }

    #[test]
    fn script_path_variants() {
        for (raw, want) in [
            ("verify", "verify"),
            ("/verify", "verify"),
            ("verify?x=1", "verify"),
            ("manual/", "manual"),
        ] {
            assert_eq!(env(&[&format!("agi_network_script: {raw}")]).script(), want);
        }
    }

    #[test]
    fn rejects_garbage_and_floods() {
        let mut e = AgiEnv::default();
        assert!(matches!(
            e.push_line("GET / HTTP/1.1"),
            Err(EnvError::Malformed(_))
        ));
        assert!(matches!(
            e.push_line("agi_x y: 1"),
            Err(EnvError::Malformed(_))
        ));
        for i in 0..MAX_VARIABLES {
            e.push_line(&format!("agi_arg_{i}: x")).unwrap();
        }
        assert_eq!(
            e.push_line("agi_one_more: x"),
            Err(EnvError::TooManyVariables)
        );
        assert_eq!(AgiEnv::default().validate(), Err(EnvError::NoScript));
    }
}
