//! An emulated Asterisk 22 for tests and benchmarks: it connects to the daemon as res_agi
//! does and answers each command with the bytes a real Asterisk 22.10.1 sends
//! (`shared/captures/asterisk-agi-*.txt`), while a scripted callee presses keys, stays
//! silent or hangs up.
//!
//! Replies are immediate: prompts take no time to play.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

pub mod ami;
pub mod audiosocket;
mod pbx;

pub use audiosocket::{AfterTalk, AudioLog, Ending, Talk};
pub use pbx::Pbx;

/// What the callee does at the next prompt that listens for keys.
#[derive(Debug, Clone)]
pub enum Action {
    /// Press these keys (a STREAM FILE takes only the first, if it is an escape digit).
    Press(String),
    /// Press nothing: the next GET DATA or WAIT FOR DIGIT times out.
    Silence,
    /// Hang up while the next command runs: `200 result=-1`, then `HANGUP`.
    HangUp,
    /// Hang up between commands: `HANGUP` arrives before the next reply, which is a `511`.
    HangUpBetween,
    /// Keep the next command waiting until the value turns true (a caller thinking).
    Hold(watch::Receiver<bool>),
    /// What the caller says and keys when the next `EXEC AudioSocket` runs.
    Talk(Talk),
    /// Press these keys, one press per prompt, as they are when this action is reached (a
    /// test may fill them in after the call started, e.g. once it knows the code).
    PressLater(std::sync::Arc<std::sync::Mutex<Vec<String>>>),
}

/// One emulated call: the environment block, the callee's actions, and canned replies.
#[derive(Debug, Clone)]
pub struct Call {
    env: Vec<String>,
    actions: VecDeque<Action>,
    overrides: Vec<(String, String)>,
    /// (language, file) of sounds not installed; no language: in none.
    missing_prompts: Vec<(Option<String>, String)>,
    /// The dialplan functions, globals and modules a self-test call looks at.
    pbx: Option<Pbx>,
    reply_timeout: Duration,
}

/// What happened on the wire.
#[derive(Debug, Clone, Default)]
pub struct Transcript {
    /// Every command line the daemon sent, in order.
    pub commands: Vec<String>,
    /// The daemon closed the connection (as it must: Asterisk never does).
    pub closed_by_daemon: bool,
    /// For each command, the time from our previous write (the environment block or a
    /// reply) to its arrival: the daemon's turnaround.
    pub turnarounds: Vec<std::time::Duration>,
    /// Each `EXEC AudioSocket`, in order.
    pub audio: Vec<AudioLog>,
}

impl Transcript {
    fn closed(mut self) -> Self {
        self.closed_by_daemon = true;
        self
    }

    /// The prompts played (STREAM FILE and GET DATA), in order.
    pub fn prompts(&self) -> Vec<&str> {
        self.commands
            .iter()
            .filter_map(|c| {
                c.strip_prefix("STREAM FILE ")
                    .or_else(|| c.strip_prefix("GET DATA "))
            })
            .filter_map(|rest| rest.split(' ').next())
            .collect()
    }

    pub fn count_prompt(&self, file: &str) -> usize {
        self.prompts().iter().filter(|p| **p == file).count()
    }
}

static NEXT_CHANNEL: AtomicU64 = AtomicU64::new(5);

/// The 22 variables of an originated PJSIP call (capture session 4), for `script` and `args`.
pub fn outbound_env(script: &str, args: &[&str]) -> Vec<String> {
    let mut env: Vec<String> = [
        "agi_network: yes".to_string(),
        format!("agi_network_script: {script}"),
        format!("agi_request: agi://127.0.0.1:4573/{script}"),
        "agi_channel: PJSIP/callverify-trunk-00000004".into(),
        "agi_language: en".into(),
        "agi_type: PJSIP".into(),
        // Each channel has its own uniqueid, as in Asterisk.
        format!(
            "agi_uniqueid: 1795786096.{}",
            NEXT_CHANNEL.fetch_add(1, Ordering::Relaxed)
        ),
        "agi_version: 22.10.1".into(),
        "agi_callerid: +15550001111".into(),
        "agi_calleridname: QA Verify".into(),
        "agi_callingpres: 0".into(),
        "agi_callingani2: 0".into(),
        "agi_callington: 0".into(),
        "agi_callingtns: 0".into(),
        "agi_dnid: unknown".into(),
        "agi_rdnis: unknown".into(),
        "agi_context: callverify-outbound".into(),
        "agi_extension: s".into(),
        "agi_priority: 3".into(),
        "agi_enhanced: 0.0".into(),
        "agi_accountcode: ".into(),
        "agi_threadid: 140144681268928".into(),
    ]
    .into();
    env.extend(
        args.iter()
            .enumerate()
            .map(|(i, a)| format!("agi_arg_{}: {a}", i + 1)),
    );
    env
}

/// An inbound call from the trunk to `agi://HOST/<script>`: caller ID `caller_id` with
/// presentation `presentation` (`agi_callingpres`; 0 allowed, 0x20 bits restricted).
pub fn inbound_env(script: &str, caller_id: &str, presentation: u32) -> Vec<String> {
    outbound_env(script, &[])
        .into_iter()
        .map(|line| match line.split_once(": ") {
            Some(("agi_callerid", _)) => format!("agi_callerid: {caller_id}"),
            Some(("agi_callingpres", _)) => format!("agi_callingpres: {presentation}"),
            Some(("agi_context", _)) => "agi_context: callverify-support".into(),
            _ => line,
        })
        .collect()
}

impl Call {
    /// A dialer call for verification `id`: `agi://HOST/verify` with `agi_arg_1` = id.
    pub fn verify(id: &str) -> Self {
        Self::with_env(outbound_env("verify", &[id]))
    }

    /// A call whose environment block is exactly these lines (then the empty line).
    pub fn with_env(env: Vec<String>) -> Self {
        Self {
            env,
            actions: VecDeque::new(),
            overrides: Vec::new(),
            missing_prompts: Vec::new(),
            pbx: None,
            reply_timeout: Duration::from_secs(30),
        }
    }

    /// Set `agi_uniqueid`, as Asterisk does from an Originate's ChannelId.
    pub fn uniqueid(mut self, uniqueid: &str) -> Self {
        for line in &mut self.env {
            if line.starts_with("agi_uniqueid: ") {
                *line = format!("agi_uniqueid: {uniqueid}");
            }
        }
        self
    }

    pub fn then(mut self, action: Action) -> Self {
        self.actions.push_back(action);
        self
    }

    pub fn press(self, keys: &str) -> Self {
        self.then(Action::Press(keys.into()))
    }

    pub fn silence(self) -> Self {
        self.then(Action::Silence)
    }

    pub fn hang_up(self) -> Self {
        self.then(Action::HangUp)
    }

    /// The caller's side of the next `EXEC AudioSocket`.
    pub fn talk(self, talk: Talk) -> Self {
        self.then(Action::Talk(talk))
    }

    /// Answer the first command starting with `prefix` with `raw` (whole lines, with `\n`).
    pub fn reply_once(mut self, prefix: &str, raw: &str) -> Self {
        self.overrides.push((prefix.into(), raw.into()));
        self
    }

    /// Play `file` as a prompt that is not installed: `200 result=-1 endpos=0`.
    pub fn missing_prompt(mut self, file: &str) -> Self {
        self.missing_prompts.push((None, file.into()));
        self
    }

    /// Run in `pbx`: its contexts and devices answer `DIALPLAN_EXISTS` and `DEVICE_STATE`,
    /// its globals `GET VARIABLE`, its sounds STREAM FILE in the channel's language, and
    /// without app_audiosocket `EXEC AudioSocket` answers `result=-2`.
    pub fn in_pbx(mut self, pbx: &Pbx) -> Self {
        self.missing_prompts.extend(
            pbx.missing_sounds
                .iter()
                .map(|(lang, file)| (Some(lang.clone()), file.clone())),
        );
        self.pbx = Some(pbx.clone());
        self
    }

    /// Connect to the daemon at `addr` and play the call through.
    pub async fn run(self, addr: SocketAddr) -> std::io::Result<Transcript> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        self.run_on(stream).await
    }

    async fn run_on(mut self, stream: TcpStream) -> std::io::Result<Transcript> {
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        let mut block = self.env.join("\n");
        block.push_str("\n\n");
        let mut transcript = Transcript::default();
        match write.write_all(block.as_bytes()).await {
            Err(e) if closed_on(&e) => return Ok(transcript.closed()),
            other => other?,
        }
        let mut channel = Channel::default();
        if let Some(number) = self
            .env
            .iter()
            .find_map(|l| l.strip_prefix("agi_callerid: "))
        {
            channel.vars.insert("CALLERID(num)".into(), number.into());
        }
        if let Some(language) = self
            .env
            .iter()
            .find_map(|l| l.strip_prefix("agi_language: "))
        {
            channel.vars.insert(LANGUAGE.into(), language.into());
        }
        if let Some(pbx) = &self.pbx {
            channel.vars.extend(pbx.globals.clone());
        }
        let mut line = String::new();
        let mut last_write = std::time::Instant::now();
        loop {
            if matches!(self.actions.front(), Some(Action::HangUpBetween)) && !channel.dead {
                self.actions.pop_front();
                channel.dead = true;
                write.write_all(b"HANGUP\n").await?;
            }
            line.clear();
            let read = tokio::time::timeout(self.reply_timeout, read.read_line(&mut line))
                .await
                .map_err(|_| std::io::Error::other("daemon sent no command in time"))?;
            match read {
                Ok(0) => return Ok(transcript.closed()),
                Ok(_) => {}
                Err(e) if closed_on(&e) => return Ok(transcript.closed()),
                Err(e) => return Err(e),
            }
            transcript.turnarounds.push(last_write.elapsed());
            let command = line.trim_end_matches('\n').to_owned();
            let reply = self.respond(&command, &mut channel, &mut transcript).await;
            transcript.commands.push(command);
            match write.write_all(reply.as_bytes()).await {
                Ok(()) => {}
                // The daemon may close right after its HANGUP, or refuse us at once.
                Err(e) if closed_on(&e) => return Ok(transcript.closed()),
                Err(e) => return Err(e),
            }
            last_write = std::time::Instant::now();
        }
    }

    async fn respond(
        &mut self,
        command: &str,
        channel: &mut Channel,
        transcript: &mut Transcript,
    ) -> String {
        if let Some(i) = self
            .overrides
            .iter()
            .position(|(p, _)| command.starts_with(p.as_str()))
        {
            return self.overrides.remove(i).1;
        }
        let words = split_args(command);
        let verb = verb_of(&words);
        let args = &words[verb.split(' ').count().min(words.len())..];
        let no_audiosocket = self.pbx.as_ref().is_some_and(|p| !p.audiosocket);
        // Commands Asterisk still runs on a dead channel (asterisk-agi-hangup.txt).
        if verb == "EXEC"
            && !channel.dead
            && !no_audiosocket
            && args
                .first()
                .is_some_and(|a| a.eq_ignore_ascii_case("AudioSocket"))
        {
            let talk = match self.actions.pop_front() {
                Some(Action::Talk(talk)) => talk,
                Some(other) => {
                    self.actions.push_front(other);
                    Talk::new()
                }
                None => Talk::new(),
            };
            let log = audiosocket::run(args.get(1).map_or("", String::as_str), talk).await;
            if log.ending == Ending::CallerHungUp {
                channel.dead = true;
            }
            let reply = log.ending.reply().to_owned();
            transcript.audio.push(log);
            return reply;
        }
        match verb {
            "GET VARIABLE" => {
                let name = args.first().map(String::as_str).unwrap_or_default();
                if let Some(value) = self.pbx.as_ref().and_then(|p| p.function(name)) {
                    return format!("200 result=1 ({value})\n");
                }
                return match channel.vars.get(name) {
                    Some(v) => format!("200 result=1 ({v})\n"),
                    None => "200 result=0\n".into(),
                };
            }
            "SET VARIABLE" => {
                if let [name, value, ..] = args {
                    channel.vars.insert(name.clone(), value.clone());
                }
                return "200 result=1\n".into();
            }
            // res_agi.c: an application Asterisk does not have.
            "EXEC"
                if no_audiosocket
                    && args
                        .first()
                        .is_some_and(|a| a.eq_ignore_ascii_case("AudioSocket")) =>
            {
                return "200 result=-2\n".into()
            }
            "EXEC" | "NOOP" => return "200 result=0\n".into(),
            "VERBOSE" => return "200 result=1\n".into(),
            "" => return "510 Invalid or unknown command\n".into(),
            _ => {}
        }
        if channel.dead {
            return DEAD.into();
        }
        if let Some(usage) = usage_error(verb, args.len()) {
            return usage;
        }
        let escape = match verb {
            "STREAM FILE" => args[1].as_str(),
            "RECORD FILE" => args[2].as_str(),
            _ => "",
        };
        // The callee acts while Asterisk listens for keys; other commands return at once.
        let listening = matches!(verb, "GET DATA" | "WAIT FOR DIGIT")
            || (matches!(verb, "STREAM FILE" | "RECORD FILE") && !escape.is_empty());
        if listening {
            while let Some(Action::Hold(rx)) = self.actions.front() {
                let mut rx = rx.clone();
                let _ = rx.wait_for(|go| *go).await;
                self.actions.pop_front();
            }
            if let Some(Action::PressLater(keys)) = self.actions.front() {
                let keys = keys.lock().unwrap().clone();
                self.actions.pop_front();
                for k in keys.into_iter().rev() {
                    self.actions.push_front(Action::Press(k));
                }
            }
            if matches!(self.actions.front(), Some(Action::HangUp)) {
                self.actions.pop_front();
                channel.dead = true;
                return match verb {
                    "STREAM FILE" => "200 result=-1 endpos=1600\nHANGUP\n".into(),
                    "RECORD FILE" => "200 result=-1 (hangup) endpos=1600\nHANGUP\n".into(),
                    _ => "200 result=-1\nHANGUP\n".into(),
                };
            }
        }
        match verb {
            "ANSWER" => "200 result=0\n".into(),
            "HANGUP" => {
                channel.dead = true;
                "200 result=1\nHANGUP\n".into()
            }
            "CHANNEL STATUS" => "200 result=6\n".into(),
            "STREAM FILE" => {
                // res_agi.c answers a missing file with the offset it was given.
                let offset = args.get(2).map_or("0", String::as_str);
                let language = channel.vars.get(LANGUAGE).map(String::as_str);
                let missing = self.missing_prompts.iter().any(|(lang, file)| {
                    *file == args[0] && (lang.is_none() || lang.as_deref() == language)
                });
                if missing {
                    return format!("200 result=-1 endpos={offset}\n");
                }
                match self.take_key_if(|k| escape.contains(k)) {
                    Some(key) => format!("200 result={} endpos=3404\n", u32::from(key)),
                    None => "200 result=0 endpos=3404\n".into(),
                }
            }
            "GET DATA" => {
                let max: usize = args.get(2).and_then(|m| m.parse().ok()).unwrap_or(1024);
                match self.actions.pop_front() {
                    Some(Action::Press(keys)) => {
                        let typed: String = keys.chars().take_while(|k| *k != '#').collect();
                        let ended = keys.contains('#') || typed.chars().count() >= max;
                        let digits: String = typed.chars().take(max).collect();
                        if ended {
                            format!("200 result={digits}\n")
                        } else {
                            format!("200 result={digits} (timeout)\n")
                        }
                    }
                    Some(Action::Silence) | None => "200 result= (timeout)\n".into(),
                    Some(other) => {
                        self.actions.push_front(other);
                        "200 result= (timeout)\n".into()
                    }
                }
            }
            "WAIT FOR DIGIT" => match self.take_key_if(|_| true) {
                Some(key) => format!("200 result={}\n", u32::from(key)),
                None => {
                    self.take_silence();
                    "200 result=0\n".into()
                }
            },
            "SAY DIGITS" | "SAY NUMBER" => "200 result=0\n".into(),
            "RECORD FILE" => match self.take_key_if(|k| escape.contains(k)) {
                Some(key) => format!("200 result={} (dtmf) endpos=10560\n", u32::from(key)),
                None => {
                    self.take_silence();
                    "200 result=0 (timeout) endpos=24000\n".into()
                }
            },
            _ => "510 Invalid or unknown command\n".into(),
        }
    }

    fn take_silence(&mut self) {
        if matches!(self.actions.front(), Some(Action::Silence)) {
            self.actions.pop_front();
        }
    }

    /// Take the next press if its first key passes `accept`.
    fn take_key_if(&mut self, accept: impl Fn(char) -> bool) -> Option<char> {
        let Some(Action::Press(keys)) = self.actions.front() else {
            return None;
        };
        let key = keys.chars().next().filter(|k| accept(*k))?;
        self.actions.pop_front();
        Some(key)
    }
}

/// Fewest arguments each command takes, as res_agi.c checks them; fewer gets the 520 block
/// (first and last lines as res_agi.c sends them; the usage text between is abridged).
fn usage_error(verb: &str, args: usize) -> Option<String> {
    let (min, usage) = match verb {
        "STREAM FILE" => (2, "STREAM FILE <filename> <escape_digits> [sample offset]"),
        "GET DATA" => (1, "GET DATA <file to be streamed> [timeout] [maxdigits]"),
        "WAIT FOR DIGIT" => (1, "WAIT FOR DIGIT <timeout>"),
        "SAY DIGITS" => (2, "SAY DIGITS <number> <escape_digits>"),
        "SAY NUMBER" => (2, "SAY NUMBER <number> <escape_digits> [gender]"),
        "RECORD FILE" => (
            4,
            "RECORD FILE <filename> <format> <escape_digits> <timeout> [offset samples] [BEEP] [s=silence]",
        ),
        _ => return None,
    };
    (args < min).then(|| {
        format!(
            "520-Invalid command syntax.  Proper usage follows:\n Usage: {usage}\n520 End of proper usage.\n"
        )
    })
}

/// The daemon closed or reset the connection.
fn closed_on(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
    )
}

/// The channel's language, as dialplan and AGI name it.
const LANGUAGE: &str = "CHANNEL(language)";

const DEAD: &str = "511 Command Not Permitted on a dead channel or intercept routine\n";

#[derive(Default)]
struct Channel {
    dead: bool,
    vars: HashMap<String, String>,
}

const VERBS: &[&str] = &[
    "ANSWER",
    "HANGUP",
    "NOOP",
    "EXEC",
    "VERBOSE",
    "CHANNEL STATUS",
    "STREAM FILE",
    "GET DATA",
    "WAIT FOR DIGIT",
    "SAY DIGITS",
    "SAY NUMBER",
    "RECORD FILE",
    "GET VARIABLE",
    "SET VARIABLE",
];

fn verb_of(words: &[String]) -> &'static str {
    VERBS
        .iter()
        .find(|verb| {
            let parts: Vec<&str> = verb.split(' ').collect();
            words.len() >= parts.len()
                && parts
                    .iter()
                    .zip(words)
                    .all(|(p, w)| p.eq_ignore_ascii_case(w))
        })
        .copied()
        .unwrap_or("")
}

/// Split like res_agi.c's `parse_args`: spaces separate, double quotes group, `\` escapes.
fn split_args(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let (mut quoted, mut escaped, mut started) = (false, false, false);
    for c in line.chars() {
        match c {
            _ if escaped => {
                current.push(c);
                escaped = false;
            }
            '\\' => escaped = true,
            '"' => {
                quoted = !quoted;
                started = true;
            }
            ' ' | '\t' if !quoted => {
                if started || !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
                started = false;
            }
            _ => current.push(c),
        }
    }
    if started || !current.is_empty() {
        words.push(current);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_res_agi() {
        assert_eq!(
            split_args(r#"STREAM FILE beep """#),
            vec!["STREAM", "FILE", "beep", ""]
        );
        assert_eq!(
            split_args(r#"VERBOSE "say \"hi\" \\ x" 1"#),
            vec!["VERBOSE", r#"say "hi" \ x"#, "1"]
        );
        assert_eq!(verb_of(&split_args("GET DATA x 1 2")), "GET DATA");
        assert_eq!(verb_of(&split_args("FOO BAR")), "");
    }
}
