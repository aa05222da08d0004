//! The emulated Asterisk's `AudioSocket` application (app_audiosocket + res_audiosocket, as
//! `shared/captures/asterisk-audiosocket.txt` shows them): it connects to the address in
//! the options, names the UUID, streams the caller's audio (160-sample frames, the last of
//! each sound shorter) and keys, and ends as Asterisk does: on the daemon's hangup message
//! or close (`200 result=0`), on the caller's hang-up (close, `200 result=-1`, `HANGUP`),
//! after 2 s with no message either way, or at once when nothing listens (`200 result=-1`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::{FramedRead, FramedWrite};
use uuid::Uuid;

use callverify_pbx::audiosocket::{Frame, FrameCodec, SAMPLES_PER_FRAME};

/// app_audiosocket's fixed inactivity timeout.
const INACTIVITY: Duration = Duration::from_secs(2);
/// Longest silent tail the caller keeps up while waiting for the daemon to end the stream.
const MAX_SILENT_TAIL: usize = 60 * 50;

/// What the caller does while the daemon listens.
#[derive(Debug, Clone)]
pub struct Talk {
    parts: Vec<Sound>,
    then: AfterTalk,
    pace: Duration,
}

#[derive(Debug, Clone)]
enum Sound {
    Samples(Vec<i16>),
    Key(char),
    /// No frames at all for a while (a Local channel in `Wait()`).
    NoFrames(Duration),
}

/// How the caller's side goes on once its sounds are out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterTalk {
    /// Silent frames until the daemon ends the stream (a quiet line).
    Silence,
    /// The caller hangs up.
    HangUp,
    /// No frames: Asterisk's inactivity timer ends the stream unless the daemon talks.
    Quiet,
}

impl Talk {
    /// Frames are sent as fast as the daemon reads them: endpointing counts received audio.
    pub fn new() -> Self {
        Self {
            parts: Vec::new(),
            then: AfterTalk::Silence,
            pace: Duration::ZERO,
        }
    }

    /// Say these 8 kHz samples.
    pub fn say(mut self, samples: Vec<i16>) -> Self {
        self.parts.push(Sound::Samples(samples));
        self
    }

    /// `ms` milliseconds of silent audio.
    pub fn pause(self, ms: u32) -> Self {
        self.say(vec![0; ms as usize * 8])
    }

    pub fn key(mut self, key: char) -> Self {
        self.parts.push(Sound::Key(key));
        self
    }

    pub fn no_frames(mut self, wait: Duration) -> Self {
        self.parts.push(Sound::NoFrames(wait));
        self
    }

    pub fn then(mut self, then: AfterTalk) -> Self {
        self.then = then;
        self
    }

    /// Send one frame per `pace` (20 ms is real time).
    pub fn paced(mut self, pace: Duration) -> Self {
        self.pace = pace;
        self
    }
}

impl Default for Talk {
    fn default() -> Self {
        Self::new()
    }
}

/// How one AudioSocket run ended, and what crossed the wire.
#[derive(Debug, Clone, Default)]
pub struct AudioLog {
    pub uuid: Option<Uuid>,
    /// Whether the TCP connection to the daemon was made.
    pub connected: bool,
    /// Audio frames the daemon sent (its keep-alive silence).
    pub frames_from_daemon: usize,
    /// The daemon sent the hangup message (rather than only closing).
    pub hangup_message: bool,
    pub ending: Ending,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Ending {
    /// The daemon ended the stream: `200 result=0`.
    #[default]
    ByDaemon,
    /// The caller hung up: `200 result=-1`, then `HANGUP`.
    CallerHungUp,
    /// Connecting failed, or 2 s passed with no message: `200 result=-1`, channel up.
    Failed,
}

impl Ending {
    pub(super) fn reply(self) -> &'static str {
        match self {
            Ending::ByDaemon => "200 result=0\n",
            Ending::CallerHungUp => "200 result=-1\nHANGUP\n",
            Ending::Failed => "200 result=-1\n",
        }
    }
}

/// Run the application with `options` (`<uuid>,<host:port>`).
pub(super) async fn run(options: &str, talk: Talk) -> AudioLog {
    let mut log = AudioLog {
        ending: Ending::Failed,
        ..AudioLog::default()
    };
    let Some((uuid, address)) = options.split_once(',') else {
        return log;
    };
    let Ok(uuid) = uuid.parse::<Uuid>() else {
        return log;
    };
    log.uuid = Some(uuid);
    let Ok(stream) = TcpStream::connect(address).await else {
        return log;
    };
    log.connected = true;
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut to_daemon = FramedWrite::new(write, FrameCodec);
    let mut from_daemon = FramedRead::new(read, FrameCodec);
    if to_daemon.send(Frame::Uuid(uuid)).await.is_err() {
        return log;
    }
    let activity = Activity::new();
    let mut caller = Caller {
        to_daemon,
        activity: &activity,
    };
    let ending = tokio::select! {
        ending = caller.talk(&talk) => ending,
        () = watch_daemon(&mut from_daemon, &activity, &mut log) => Ending::ByDaemon,
    };
    log.ending = ending;
    log
}

/// When the last message went either way: app_audiosocket's timer.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    /// Wait `wait` with no frames of our own; false if Asterisk's timer fired meanwhile.
    async fn quiet_for(&self, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        loop {
            let idle = self.idle();
            if idle >= INACTIVITY {
                return false;
            }
            let now = Instant::now();
            if now >= until {
                return true;
            }
            tokio::time::sleep((INACTIVITY - idle).min(until - now)).await;
        }
    }
}

struct Caller<'a> {
    to_daemon: FramedWrite<tokio::net::tcp::OwnedWriteHalf, FrameCodec>,
    activity: &'a Activity,
}

impl Caller<'_> {
    /// The caller's side; returns only when the caller ends it or Asterisk's timer does
    /// (the daemon ending it is noticed by [`watch_daemon`]).
    async fn talk(&mut self, talk: &Talk) -> Ending {
        for part in &talk.parts {
            let sent = match part {
                Sound::Samples(samples) => self.send_audio(samples, talk.pace).await,
                Sound::Key(key) => self.send(Frame::Dtmf(*key)).await,
                Sound::NoFrames(wait) => {
                    if !self.activity.quiet_for(*wait).await {
                        return Ending::Failed;
                    }
                    true
                }
            };
            if !sent {
                return std::future::pending().await;
            }
        }
        match talk.then {
            AfterTalk::HangUp => Ending::CallerHungUp,
            AfterTalk::Silence => {
                let pace = talk.pace.max(Duration::from_micros(200));
                for _ in 0..MAX_SILENT_TAIL {
                    if !self.send(Frame::silence(SAMPLES_PER_FRAME)).await {
                        return std::future::pending().await;
                    }
                    tokio::time::sleep(pace).await;
                }
                Ending::Failed
            }
            AfterTalk::Quiet => {
                self.activity.quiet_for(Duration::from_secs(3600)).await;
                Ending::Failed
            }
        }
    }

    async fn send_audio(&mut self, samples: &[i16], pace: Duration) -> bool {
        for chunk in samples.chunks(SAMPLES_PER_FRAME) {
            if !self.send(Frame::audio(chunk)).await {
                return false;
            }
            if pace.is_zero() {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(pace).await;
            }
        }
        true
    }

    async fn send(&mut self, frame: Frame) -> bool {
        self.activity.touch();
        self.to_daemon.send(frame).await.is_ok()
    }
}

/// Read the daemon's messages until it ends the stream (hangup message or close). Malformed
/// messages end it too: Asterisk drops the connection on them.
async fn watch_daemon(
    from_daemon: &mut FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>,
    activity: &Activity,
    log: &mut AudioLog,
) {
    while let Some(Ok(frame)) = from_daemon.next().await {
        activity.touch();
        match frame {
            Frame::Audio(_) => log.frames_from_daemon += 1,
            Frame::Hangup => {
                log.hangup_message = true;
                return;
            }
            _ => {}
        }
    }
}
