//! One FastAGI session: the environment block, then command/reply turns, with typed calls
//! for what the flows need.
//!
//! Asterisk answers every command with exactly one final reply, possibly preceded by
//! `100 Trying` and surrounded by the unsolicited `HANGUP` line, which may arrive before or
//! after any reply. `result=-1` means a hang-up or a failure on a live channel (a missing
//! prompt answers `200 result=-1 endpos=0` and no `HANGUP` follows): [`Session::run_checked`]
//! tells the two apart by asking for the channel's status.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;

use super::command::{Command, UnsendableCommand};
use super::connection::{Connection, LineError};
use super::env::{AgiEnv, EnvError};
use super::reply::{parse_line, Line, MalformedReply, Reply, Success, USAGE_END};

/// Limits on how long the daemon waits for Asterisk.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For the whole environment block after connecting.
    pub env: Duration,
    /// For the final reply to one command (prompts and digit timeouts run inside it).
    pub reply: Duration,
}

/// Longest `520-` usage text kept: the block is read to its end either way.
const MAX_USAGE_LINES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum AgiError {
    #[error("the channel hung up")]
    Hangup,
    #[error("Asterisk closed the connection")]
    Closed,
    #[error("no reply from Asterisk within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Line(LineError),
    #[error(transparent)]
    Malformed(#[from] MalformedReply),
    #[error(transparent)]
    Unsendable(#[from] UnsendableCommand),
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error("Asterisk refused `{command}`: {reply}")]
    Refused { command: String, reply: Reply },
    #[error("the connection to Asterisk is out of step after an earlier error")]
    OutOfStep,
}

impl From<LineError> for AgiError {
    fn from(e: LineError) -> Self {
        if e.is_disconnect() {
            AgiError::Closed
        } else {
            AgiError::Line(e)
        }
    }
}

impl AgiError {
    /// Whether the call ended on the caller's side (as opposed to a fault).
    pub fn is_hangup(&self) -> bool {
        matches!(self, AgiError::Hangup | AgiError::Closed)
    }
}

/// Digits read by GET DATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digits {
    pub digits: String,
    /// Asterisk stopped waiting for more (`(timeout)`), as opposed to the caller pressing `#`
    /// or reaching the maximum.
    pub timed_out: bool,
}

pub struct Session<S> {
    conn: Connection<S>,
    env: AgiEnv,
    hung_up: bool,
    /// False once an exchange failed midway: a late reply would be read as the answer to
    /// the next command, so no further command is sent.
    in_step: bool,
    timeouts: Timeouts,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// Read the environment block that opens every FastAGI connection.
    pub async fn accept(stream: S, timeouts: Timeouts) -> Result<Self, AgiError> {
        let mut conn = Connection::new(stream);
        let env = timeout(timeouts.env, read_env(&mut conn))
            .await
            .map_err(|_| AgiError::Timeout(timeouts.env))??;
        Ok(Self {
            conn,
            env,
            hung_up: false,
            in_step: true,
            timeouts,
        })
    }

    pub fn env(&self) -> &AgiEnv {
        &self.env
    }

    /// Whether Asterisk has said `HANGUP` or answered `511`.
    pub fn hung_up(&self) -> bool {
        self.hung_up
    }

    /// Send any command and return Asterisk's final reply as it is (the escape hatch).
    pub async fn send(&mut self, command: &Command) -> Result<Reply, AgiError> {
        let line = command.encode()?;
        if !self.in_step {
            return Err(AgiError::OutOfStep);
        }
        let result = self.exchange(command, &line).await;
        self.in_step = result.is_ok();
        result
    }

    async fn exchange(&mut self, command: &Command, line: &str) -> Result<Reply, AgiError> {
        tracing::trace!(command = %command.for_log(), "agi >>");
        self.conn.write_line(line).await?;
        let reply = timeout(self.timeouts.reply, self.read_reply())
            .await
            .map_err(|_| AgiError::Timeout(self.timeouts.reply))??;
        if matches!(reply, Reply::DeadChannel(_)) {
            self.hung_up = true;
        }
        Ok(reply)
    }

    async fn read_reply(&mut self) -> Result<Reply, AgiError> {
        loop {
            let line = self.conn.read_line().await?.ok_or(AgiError::Closed)?;
            match parse_line(&line)? {
                Line::Hangup => self.hung_up = true,
                Line::Trying => {}
                Line::Final(reply) => return Ok(reply),
                Line::UsageStart => return self.read_usage_block().await,
            }
        }
    }

    async fn read_usage_block(&mut self) -> Result<Reply, AgiError> {
        let mut usage = Vec::new();
        loop {
            let line = self.conn.read_line().await?.ok_or(AgiError::Closed)?;
            if line == USAGE_END {
                return Ok(Reply::Usage(usage.join("\n")));
            }
            if usage.len() < MAX_USAGE_LINES {
                usage.push(line);
            }
        }
    }

    /// Run a command that must succeed: `511` is a hang-up, `510`/`520` a refusal.
    pub async fn run(&mut self, command: &Command) -> Result<Success, AgiError> {
        match self.send(command).await? {
            Reply::Success(s) => Ok(s),
            Reply::DeadChannel(_) => Err(AgiError::Hangup),
            reply => Err(AgiError::Refused {
                command: command.for_log(),
                reply,
            }),
        }
    }

    /// Like [`Session::run`], but `result=-1` is examined: on a dead channel it is a hang-up;
    /// on a live one the command failed (e.g. a missing prompt), which is logged loudly and
    /// returned as `None` so that the call carries on.
    pub async fn run_checked(&mut self, command: &Command) -> Result<Option<Success>, AgiError> {
        let reply = self.run(command).await?;
        if !reply.is_failure() {
            return Ok(Some(reply));
        }
        if self.hung_up || !self.channel_alive().await? {
            return Err(AgiError::Hangup);
        }
        tracing::error!(
            command = %command.for_log(),
            "Asterisk answered result=-1 on a live channel: is the prompt installed?"
        );
        Ok(None)
    }

    async fn channel_alive(&mut self) -> Result<bool, AgiError> {
        match self.send(&Command::ChannelStatus).await? {
            Reply::Success(s) => Ok(!self.hung_up && !s.is_failure()),
            Reply::DeadChannel(_) => Ok(false),
            reply => Err(AgiError::Refused {
                command: "CHANNEL STATUS".into(),
                reply,
            }),
        }
    }

    pub async fn answer(&mut self) -> Result<(), AgiError> {
        let reply = self.run(&Command::Answer).await?;
        if reply.is_failure() {
            return Err(AgiError::Hangup);
        }
        Ok(())
    }

    /// Hang up the channel. A channel already gone answers `511`, which is fine here.
    pub async fn hangup(&mut self) -> Result<(), AgiError> {
        if !self.hung_up {
            self.send(&Command::Hangup).await?;
            self.hung_up = true;
        }
        Ok(())
    }

    /// Play a prompt; returns the key that interrupted it, if one of `escape_digits` was pressed.
    pub async fn stream_file(
        &mut self,
        file: &str,
        escape_digits: &str,
    ) -> Result<Option<char>, AgiError> {
        let command = Command::StreamFile {
            file: file.into(),
            escape_digits: escape_digits.into(),
            offset: None,
        };
        Ok(self.run_checked(&command).await?.and_then(|s| s.key()))
    }

    /// Whether Asterisk finds the sound `file` in the channel's language, without playing
    /// it: STREAM FILE from beyond its end answers `result=0`, a missing file `result=-1`
    /// (res_agi.c) on a live channel.
    pub async fn sound_exists(&mut self, file: &str) -> Result<bool, AgiError> {
        // An hour of 8 kHz audio: longer than any prompt.
        const PAST_THE_END: u64 = 3600 * 8000;
        let command = Command::StreamFile {
            file: file.into(),
            escape_digits: String::new(),
            offset: Some(PAST_THE_END),
        };
        let reply = self.run(&command).await?;
        if !reply.is_failure() {
            return Ok(true);
        }
        if self.hung_up || !self.channel_alive().await? {
            return Err(AgiError::Hangup);
        }
        Ok(false)
    }

    /// Play a prompt and collect up to `max_digits` keys; `#` ends early.
    pub async fn get_data(
        &mut self,
        file: &str,
        per_digit_timeout: Duration,
        max_digits: u32,
    ) -> Result<Digits, AgiError> {
        let command = Command::GetData {
            file: file.into(),
            timeout: per_digit_timeout,
            max_digits,
        };
        Ok(match self.run_checked(&command).await? {
            Some(s) => Digits {
                timed_out: s.timed_out(),
                digits: s.result,
            },
            None => Digits {
                digits: String::new(),
                timed_out: true,
            },
        })
    }

    /// Wait for one key; `None` when the time ran out.
    pub async fn wait_for_digit(&mut self, wait: Duration) -> Result<Option<char>, AgiError> {
        let command = Command::WaitForDigit { timeout: wait };
        Ok(self.run_checked(&command).await?.and_then(|s| s.key()))
    }

    pub async fn say_digits(
        &mut self,
        digits: &str,
        escape_digits: &str,
    ) -> Result<Option<char>, AgiError> {
        let command = Command::SayDigits {
            digits: digits.into(),
            escape_digits: escape_digits.into(),
        };
        Ok(self.run_checked(&command).await?.and_then(|s| s.key()))
    }

    pub async fn say_number(
        &mut self,
        number: i64,
        escape_digits: &str,
    ) -> Result<Option<char>, AgiError> {
        let command = Command::SayNumber {
            number,
            escape_digits: escape_digits.into(),
        };
        Ok(self.run_checked(&command).await?.and_then(|s| s.key()))
    }

    /// A channel variable or function; `None` when it is not set. Works on a dead channel.
    pub async fn get_variable(&mut self, name: &str) -> Result<Option<String>, AgiError> {
        let reply = self.run(&Command::GetVariable(name.into())).await?;
        Ok((reply.result == "1").then(|| reply.data.unwrap_or_default()))
    }

    pub async fn set_variable(&mut self, name: &str, value: &str) -> Result<(), AgiError> {
        self.run(&Command::SetVariable {
            name: name.into(),
            value: value.into(),
        })
        .await
        .map(drop)
    }

    /// Run a dialplan application; the raw result is the application's return value.
    pub async fn exec(&mut self, application: &str, options: &str) -> Result<Success, AgiError> {
        self.run(&Command::Exec {
            application: application.into(),
            options: options.into(),
        })
        .await
    }

    pub async fn verbose(&mut self, message: &str, level: u8) -> Result<(), AgiError> {
        self.run(&Command::Verbose {
            message: message.into(),
            level,
        })
        .await
        .map(drop)
    }

    /// The channel state as Asterisk numbers it (6 = up).
    pub async fn channel_status(&mut self) -> Result<i32, AgiError> {
        let reply = self.run(&Command::ChannelStatus).await?;
        reply.result.parse().map_err(|_| {
            AgiError::Malformed(MalformedReply {
                line: reply.result.clone(),
                reason: "CHANNEL STATUS result is not a number",
            })
        })
    }

    /// Close the connection: Asterisk never does it itself.
    pub async fn close(mut self) {
        if let Err(e) = self.conn.close().await {
            tracing::debug!(error = %e, "closing the AGI connection");
        }
    }
}

async fn read_env<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<S>,
) -> Result<AgiEnv, AgiError> {
    let mut env = AgiEnv::default();
    loop {
        let line = conn.read_line().await?.ok_or(AgiError::Closed)?;
        if line.is_empty() {
            env.validate()?;
            return Ok(env);
        }
        env.push_line(&line)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};

    const ENV: &str = "agi_network: yes\nagi_network_script: verify?x=1\nagi_channel: PJSIP/qa-00000003\nagi_uniqueid: 1795786054.3\nagi_arg_1: abc\n\n";

    fn timeouts() -> Timeouts {
        Timeouts {
            env: Duration::from_secs(2),
            reply: Duration::from_secs(2),
        }
    }

    /// A peer that expects each command line and answers with the given raw bytes.
    async fn session_with(
        script: Vec<(&'static str, &'static str)>,
    ) -> (Session<DuplexStream>, tokio::task::JoinHandle<()>) {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let peer = tokio::spawn(async move {
            let (r, mut w) = tokio::io::split(theirs);
            let mut r = BufReader::new(r);
            w.write_all(ENV.as_bytes()).await.unwrap();
            for (expect, answer) in script {
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                assert_eq!(line.trim_end(), expect);
                w.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        (Session::accept(ours, timeouts()).await.unwrap(), peer)
    }

    #[tokio::test]
    async fn hangup_during_get_data_then_511() {
        // asterisk-agi-hangup.txt: result=-1, then HANGUP at once, then 511 for more commands.
        // The session asks CHANNEL STATUS to tell the hang-up from a failed prompt.
        let (mut s, peer) = session_with(vec![
            ("GET DATA beep 3000 6", "200 result=-1\nHANGUP\n"),
            (
                "CHANNEL STATUS",
                "511 Command Not Permitted on a dead channel or intercept routine\n",
            ),
            (
                "WAIT FOR DIGIT 2000",
                "511 Command Not Permitted on a dead channel or intercept routine\n",
            ),
        ])
        .await;
        assert_eq!(s.env().arg(1), Some("abc"));
        let err = s
            .get_data("beep", Duration::from_millis(3000), 6)
            .await
            .unwrap_err();
        assert!(err.is_hangup(), "{err:?}");
        assert!(s.hung_up());
        let err = s.wait_for_digit(Duration::from_secs(2)).await.unwrap_err();
        assert!(err.is_hangup());
        peer.await.unwrap();
    }

    #[tokio::test]
    async fn result_minus_one_with_channel_up_is_a_missing_prompt() {
        let (mut s, peer) = session_with(vec![
            ("STREAM FILE callverify/nope #", "200 result=-1 endpos=0\n"),
            ("CHANNEL STATUS", "200 result=6\n"),
            ("WAIT FOR DIGIT 2000", "200 result=35\n"),
        ])
        .await;
        assert_eq!(s.stream_file("callverify/nope", "#").await.unwrap(), None);
        assert!(!s.hung_up());
        assert_eq!(
            s.wait_for_digit(Duration::from_secs(2)).await.unwrap(),
            Some('#')
        );
        peer.await.unwrap();
    }

    #[tokio::test]
    async fn hangup_line_before_a_reply_and_after_our_hangup() {
        let (mut s, peer) = session_with(vec![
            ("HANGUP", "200 result=1\n"),
            (
                "CHANNEL STATUS",
                "HANGUP\n511 Command Not Permitted on a dead channel or intercept routine\n",
            ),
            ("GET VARIABLE FOO", "200 result=1 (bar)\n"),
        ])
        .await;
        assert_eq!(
            s.send(&Command::Hangup).await.unwrap(),
            Reply::Success(Success {
                result: "1".into(),
                ..Default::default()
            })
        );
        assert!(matches!(
            s.send(&Command::ChannelStatus).await.unwrap(),
            Reply::DeadChannel(_)
        ));
        assert!(s.hung_up());
        assert_eq!(s.get_variable("FOO").await.unwrap().as_deref(), Some("bar"));
        peer.await.unwrap();
    }

    #[tokio::test]
    async fn usage_block_and_510_are_refusals_and_the_session_stays_in_step() {
        let (mut s, peer) = session_with(vec![
            (
                "SAY NUMBER 12 \"\"",
                "520-Invalid command syntax.  Proper usage follows:\nUsage: SAY NUMBER <number> <escape digits> [gender]\n\tSays a number.\n520 End of proper usage.\n",
            ),
            ("FOO BAR", "510 Invalid or unknown command\n"),
            ("NOOP", "100 result=0 Trying...\n200 result=0\n"),
        ])
        .await;
        match s.say_number(12, "").await.unwrap_err() {
            AgiError::Refused {
                reply: Reply::Usage(text),
                ..
            } => assert!(text.contains("Says a number."), "{text}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.send(&Command::Raw("FOO BAR".into())).await.unwrap(),
            Reply::InvalidCommand(_)
        ));
        assert_eq!(s.run(&Command::Noop).await.unwrap().result, "0");
        peer.await.unwrap();
    }

    #[tokio::test]
    async fn get_data_partial_and_empty_timeouts() {
        let (mut s, peer) = session_with(vec![
            ("GET DATA beep 3000 6", "200 result=12 (timeout)\n"),
            ("GET DATA beep 3000 6", "200 result= (timeout)\n"),
            ("GET DATA beep 3000 6", "200 result=001234\n"),
        ])
        .await;
        let t = Duration::from_millis(3000);
        let d = s.get_data("beep", t, 6).await.unwrap();
        assert_eq!((d.digits.as_str(), d.timed_out), ("12", true));
        let d = s.get_data("beep", t, 6).await.unwrap();
        assert_eq!((d.digits.as_str(), d.timed_out), ("", true));
        let d = s.get_data("beep", t, 6).await.unwrap();
        assert_eq!((d.digits.as_str(), d.timed_out), ("001234", false));
        peer.await.unwrap();
    }

    #[tokio::test]
    async fn silent_peer_times_out() {
        let (ours, _theirs) = tokio::io::duplex(1024);
        let t = Timeouts {
            env: Duration::from_millis(50),
            reply: Duration::from_millis(50),
        };
        let err = Session::accept(ours, t).await.err().unwrap();
        assert!(matches!(err, AgiError::Timeout(_)), "{err:?}");
    }

    #[tokio::test]
    async fn after_a_timeout_no_further_command_is_sent() {
        let (ours, theirs) = tokio::io::duplex(4096);
        let t = Timeouts {
            env: Duration::from_secs(1),
            reply: Duration::from_millis(50),
        };
        let (r, mut w) = tokio::io::split(theirs);
        w.write_all(ENV.as_bytes()).await.unwrap();
        let mut s = Session::accept(ours, t).await.unwrap();
        assert!(matches!(s.answer().await, Err(AgiError::Timeout(_))));
        // The late reply arrives; it must not be taken as the answer to the next command.
        w.write_all(b"200 result=0\n").await.unwrap();
        assert!(matches!(s.channel_status().await, Err(AgiError::OutOfStep)));
        let mut sent = String::new();
        let mut r = BufReader::new(r);
        r.read_line(&mut sent).await.unwrap();
        assert_eq!(sent, "ANSWER\n");
    }

    #[tokio::test]
    async fn a_peer_closing_mid_line_is_a_hang_up() {
        let (ours, theirs) = tokio::io::duplex(4096);
        let (_r, mut w) = tokio::io::split(theirs);
        w.write_all(ENV.as_bytes()).await.unwrap();
        let mut s = Session::accept(ours, timeouts()).await.unwrap();
        w.write_all(b"200 res").await.unwrap();
        drop(w);
        drop(_r);
        let err = s.answer().await.unwrap_err();
        assert!(err.is_hangup(), "{err:?}");
    }

    #[tokio::test]
    async fn malformed_reply_is_an_error() {
        let (mut s, peer) = session_with(vec![("ANSWER", "OK fine\n")]).await;
        assert!(matches!(
            s.answer().await.unwrap_err(),
            AgiError::Malformed(_)
        ));
        peer.await.unwrap();
    }
}
