//! The QA probe (`callverify probe`): a SIP/RTP softphone. `probe call` dials an extension (UAC),
//! `probe answer` waits for a call (UAS); both run a script of prompts and key presses
//! against the call's audio and report what happened.
//!
//! Layers, bottom up: `sip` (transport, transactions, dialog, digest), `sdp`, `rtp` (with
//! `jitter`, `codec`, `dtmf`, `vad`); then `session` (an established call),
//! `call` and `answer` (setting one up, `allow` saying who may call), `load` (many calls),
//! `report`.

pub mod allow;
mod answer;
mod call;
pub mod codec;
pub mod dtmf;
pub mod jitter;
mod load;
pub mod report;
pub mod rtp;
pub mod script;
pub mod sdp;
mod session;
pub mod sip;
pub mod vad;

use std::io::IsTerminal as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use tokio::time::Instant;

use callverify_audio::wav;
use codec::{Codec, Transcoder};
use report::Report;
use rtp::{Media, MediaConfig};
use sdp::Negotiated;
use session::SessionOptions;
use vad::VadConfig;

/// Exit status of a call that failed (refused, unanswered, no RTP, script not finished).
pub const EXIT_CALL_FAILED: u8 = 1;
/// Exit status of a usage error or a local problem (bad WAV, port in use): no call was tried
/// or it could not go on for reasons on this side.
pub const EXIT_ERROR: u8 = 2;

const EXIT_HELP: &str = "Exit status: 0 the call went as scripted (in load mode: every call); \
    1 the call failed (refused, unanswered, unreachable, malformed SIP, codec mismatch, RTP \
    stopped, no prompt, peer hung up mid-script); 2 a usage error or a local problem.";

#[derive(Subcommand)]
pub enum ProbeCommand {
    /// Call a SIP URI (UAC) and run the script: sip:EXT@HOST[:PORT]
    #[command(after_help = EXIT_HELP)]
    Call(CallArgs),
    /// Wait for one incoming call (UAS), answer it and run the script
    #[command(after_help = EXIT_HELP)]
    Answer(AnswerArgs),
}

#[derive(Args, Clone)]
pub struct CallArgs {
    /// Who to call, e.g. sip:600@pbx.example.com or sip:600@192.0.2.10:5060
    pub target: String,
    /// Digest user name for a 401/407 challenge, also the From user (PJSIP finds the endpoint by it)
    #[arg(long)]
    pub user: Option<String>,
    /// Digest password
    #[arg(long, env = "CALLVERIFY_PROBE_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Seconds without any response to the INVITE before giving up (RFC 3261 Timer B)
    #[arg(long, default_value_t = 32.0, value_name = "SECS")]
    pub timeout: f64,
    /// Seconds of ringing before the probe CANCELs
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub ring_timeout: f64,
    /// Load mode: place this many calls
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub calls: u32,
    /// Load mode: new calls per second
    #[arg(long, default_value_t = 1.0, value_name = "R")]
    pub rate: f64,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Clone)]
pub struct AnswerArgs {
    /// Address to receive SIP on: the probe's address that the PBX reaches, e.g.
    /// 192.0.2.20:5062 (and --allow the PBX)
    #[arg(long, default_value = "127.0.0.1:5060", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Host or network that may call, e.g. 192.0.2.10 or 10.0.0.0/8; repeat for more (replaces
    /// the loopback default). SIP from anywhere else gets no answer at all
    #[arg(
        long = "allow",
        value_name = "ADDR/NET",
        default_values = ["127.0.0.0/8", "::1/128"]
    )]
    pub allow: Vec<allow::Network>,
    /// Seconds to wait for the call before giving up
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub wait_call: f64,
    /// Seconds of ringing (180) before answering
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    pub answer_after: f64,
    /// Seconds to wait for the caller's ACK of the 200 (RFC 3261 Timer H); no RTP is sent
    /// before it
    #[arg(long, default_value_t = 32.0, value_name = "SECS")]
    pub timeout: f64,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Clone)]
pub struct CommonArgs {
    /// Codecs in order of preference: pcmu, pcma, opus
    #[arg(long, value_delimiter = ',', default_value = "pcmu,pcma,opus")]
    pub codec: Vec<String>,
    /// WAV to send (16-bit mono 8 kHz), played once from the answer; silence otherwise
    #[arg(long, value_name = "FILE")]
    pub play: Option<PathBuf>,
    /// Write what the probe heard to this WAV (16-bit mono 8 kHz)
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Keys to press after the next prompt ends; repeat for each prompt, e.g. --keys '#' --keys 123456
    #[arg(long, value_name = "KEYS")]
    pub keys: Vec<String>,
    /// Seconds to wait after the answer before the first action
    #[arg(long, value_name = "SECS")]
    pub wait: Option<f64>,
    /// A script file instead of --wait/--keys (prompt, press KEYS, keys KEYS, wait SECS, hangup)
    #[arg(long, value_name = "FILE", conflicts_with_all = ["keys", "wait"])]
    pub script: Option<PathBuf>,
    /// Hang up this many seconds after the answer, whatever the script is doing
    #[arg(long, value_name = "SECS")]
    pub hangup_after: Option<f64>,
    /// After the script, seconds to listen (for the peer's last prompt or its BYE) before hanging up
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub linger: f64,
    /// Seconds to wait for a prompt to end before failing
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    pub prompt_timeout: f64,
    /// Seconds without RTP from the peer before the call fails (0: never)
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub rtp_timeout: f64,
    /// Level above which a 20 ms frame counts as speech
    #[arg(long, default_value_t = -40.0, value_name = "DBFS", allow_negative_numbers = true)]
    pub speech_threshold: f64,
    /// Silence that ends a prompt, in milliseconds
    #[arg(long, default_value_t = 700, value_name = "MS")]
    pub silence_ms: u32,
    /// How long each key is held, in milliseconds
    #[arg(long, default_value_t = 100, value_name = "MS")]
    pub key_ms: u32,
    /// Print the report as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// A usage problem found before any packet is sent.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(String);

/// Everything a call needs, checked and loaded once.
#[derive(Clone)]
pub struct Prepared {
    codecs: Vec<Codec>,
    play: Option<Arc<Vec<i16>>>,
    session: SessionOptions,
    vad: VadConfig,
    key_frames: u32,
    rtp_timeout: Option<Duration>,
}

fn seconds(name: &str, value: f64) -> Result<Duration, UsageError> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| UsageError(format!("--{name} must be a number of seconds, not {value}")))
}

impl CommonArgs {
    fn prepare(&self, sip_timeout: Duration) -> Result<Prepared, UsageError> {
        let mut codecs = Vec::new();
        for name in &self.codec {
            let codec = Codec::from_rtpmap_name(name.trim())
                .ok_or_else(|| UsageError(format!("unknown codec {name:?} (pcmu, pcma, opus)")))?;
            if codec.available() {
                codecs.push(codec);
            } else if self.codec.len() == 1 {
                return Err(UsageError(codec::CodecError::OpusNotBuilt.to_string()));
            }
        }
        let actions = match &self.script {
            Some(path) => script::from_file(path),
            None => script::from_args(self.wait, &self.keys),
        }
        .map_err(|e| UsageError(e.to_string()))?;
        let play = match &self.play {
            Some(path) => Some(Arc::new(
                wav::read(path).map_err(|e| UsageError(e.to_string()))?,
            )),
            None => None,
        };
        let frames = |ms: u32| (ms / 20).max(1);
        Ok(Prepared {
            codecs,
            play,
            session: SessionOptions {
                actions,
                prompt_timeout: seconds("prompt-timeout", self.prompt_timeout)?,
                hangup_after: self
                    .hangup_after
                    .map(|s| seconds("hangup-after", s))
                    .transpose()?,
                linger: seconds("linger", self.linger)?,
                progress: std::io::stderr().is_terminal(),
                timers: sip::Timers {
                    timeout: sip_timeout,
                    ..Default::default()
                },
            },
            vad: VadConfig {
                threshold_dbfs: self.speech_threshold,
                start_frames: 3,
                end_frames: frames(self.silence_ms),
            },
            key_frames: frames(self.key_ms),
            rtp_timeout: Some(seconds("rtp-timeout", self.rtp_timeout)?).filter(|d| !d.is_zero()),
        })
    }
}

impl Prepared {
    /// Starts the media of a negotiated call with the SIP peer at `peer_host` on its RTP
    /// socket; without `send_from_start` the sender waits for [`Media::start_sending`].
    fn start_media(
        &self,
        socket: tokio::net::UdpSocket,
        negotiated: Negotiated,
        epoch: Instant,
        send_from_start: bool,
        peer_host: IpAddr,
    ) -> Result<Media, codec::CodecError> {
        let config = MediaConfig {
            negotiated,
            play: self.play.clone(),
            vad: self.vad,
            key_frames: self.key_frames,
            rtp_timeout: self.rtp_timeout,
            epoch,
            send_from_start,
            peer_host,
        };
        Ok(Media::start(
            socket,
            config,
            Transcoder::new(negotiated.codec)?,
            Transcoder::new(negotiated.codec)?,
        ))
    }
}

/// The local address the OS would use to reach `peer` (for Via, Contact and SDP).
fn local_ip_towards(peer: SocketAddr) -> std::io::Result<IpAddr> {
    let any: SocketAddr = if peer.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .expect("literal");
    let probe = std::net::UdpSocket::bind(any)?;
    probe.connect(peer)?;
    Ok(probe.local_addr()?.ip())
}

/// Runs `probe call` or `probe answer`; the exit status tells the outcome (0 as scripted,
/// 1 the call failed, 2 a usage or local error, which is printed here).
pub async fn run(command: ProbeCommand) -> anyhow::Result<ExitCode> {
    Ok(match run_command(command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    })
}

async fn run_command(command: ProbeCommand) -> anyhow::Result<ExitCode> {
    let (report, common) = match &command {
        ProbeCommand::Call(args) => {
            let prepared = seconds("timeout", args.timeout).and_then(|t| args.common.prepare(t))?;
            if args.calls > 1 {
                return load::run(args, prepared).await;
            }
            let record = args.common.record.as_deref();
            (call::call(args, &prepared, record).await?, &args.common)
        }
        ProbeCommand::Answer(args) => {
            let prepared = seconds("timeout", args.timeout).and_then(|t| args.common.prepare(t))?;
            (answer::answer(args, &prepared).await?, &args.common)
        }
    };
    print_report(&report, common.json);
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_CALL_FAILED)
    })
}

fn print_report(report: &Report, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).expect("reports serialize")
        );
        if let Some(e) = &report.error {
            eprintln!("error: {} ({})", e.message, e.kind);
        }
    } else {
        print!("{}", report.human());
    }
}

/// `callverify probe ARGS` as the command line gives them (the tests' calls and answers).
#[cfg(test)]
fn command_line(args: &[&str]) -> ProbeCommand {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: ProbeCommand,
    }
    let argv = std::iter::once(&"callverify-probe").chain(args);
    <Cli as clap::Parser>::try_parse_from(argv).unwrap().command
}

/// Writes the recording and fills the report's media fields when a call's media stops.
async fn finish_media(
    media: Media,
    report: &mut Report,
    record: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let result = media.stop().await;
    report.rtp = Some(result.stats);
    if let Some(path) = record {
        wav::write(path, &result.recording).context("writing the recording")?;
        report.recording = Some(path.display().to_string());
    }
    Ok(())
}
