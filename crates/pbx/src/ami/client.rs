//! The AMI connection: login, actions answered by ActionID, events broadcast, a keepalive
//! `Ping`, and reconnection with backoff. One task owns the socket.

use std::collections::HashMap;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::codec::Framed;

use super::message::{AmiCodec, AmiCodecError, Frame, Message};
use crate::admission::LogBudget;

/// Which events [`Ami::events`] passes on, and which of their fields: what its listeners
/// read. `Events: call` brings every channel's events on the PBX; listeners blocked for a
/// while (the dialer waits in each Originate) then hold a few hundred bytes per event, not
/// a PBX's channel variables.
#[derive(Debug, Clone, Copy)]
pub struct EventFilter {
    /// Event names (`Event:`), as Asterisk spells them.
    pub events: &'static [&'static str],
    /// Fields kept of those events; `Event` always is.
    pub fields: &'static [&'static str],
}

impl EventFilter {
    /// What listeners get of a message from Asterisk: one of the events with its fields;
    /// nothing of the rest.
    fn keep(&self, m: Message) -> Option<Message> {
        let name = m.event()?;
        if !self.events.iter().any(|e| e.eq_ignore_ascii_case(name)) {
            return None;
        }
        let headers = m
            .headers
            .into_iter()
            .filter(|(k, _)| {
                k.eq_ignore_ascii_case("Event")
                    || self.fields.iter().any(|f| f.eq_ignore_ascii_case(k))
            })
            .collect();
        Some(Message { headers })
    }
}

#[derive(Debug, Clone)]
pub struct AmiConfig {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub secret: String,
    /// A `Ping` this often; no answer within `action_timeout` drops the connection.
    pub keepalive: Duration,
    pub action_timeout: Duration,
    /// What [`Ami::events`] passes on.
    pub events: EventFilter,
}

/// Where the connection stands, for the dialer and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmiState {
    Connecting,
    Connected,
    /// Asterisk refused the credentials; retried with backoff (an admin may fix them).
    LoginFailed,
    Disconnected,
}

impl AmiState {
    pub fn as_str(self) -> &'static str {
        match self {
            AmiState::Connecting => "connecting",
            AmiState::Connected => "connected",
            AmiState::LoginFailed => "login_failed",
            AmiState::Disconnected => "disconnected",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AmiError {
    #[error("not connected to the Asterisk Manager Interface")]
    NotConnected,
    #[error("no AMI response within {0:?}")]
    Timeout(Duration),
    #[error("AMI refused {action}: {message}")]
    Refused { action: String, message: String },
    #[error(transparent)]
    Codec(#[from] AmiCodecError),
    #[error("cannot connect to AMI: {0}")]
    Connect(std::io::Error),
    #[error("AMI login refused ({0}): check ami.username and ami.secret against manager.conf")]
    LoginFailed(String),
    #[error("AMI closed the connection")]
    Closed,
}

type Reply = oneshot::Sender<Result<Message, AmiError>>;

/// A handle on the AMI connection; cheap to clone.
#[derive(Clone)]
pub struct Ami {
    requests: mpsc::Sender<(Message, Reply)>,
    events: broadcast::Sender<Message>,
    state: watch::Receiver<AmiState>,
    timeout: Duration,
}

impl Ami {
    /// Start the connection task; it runs until `shutdown` turns true.
    pub fn start(config: AmiConfig, shutdown: watch::Receiver<bool>) -> Self {
        let (requests, queue) = mpsc::channel(256);
        let (events, _) = broadcast::channel(4096);
        let (state_tx, state) = watch::channel(AmiState::Connecting);
        let timeout = config.action_timeout;
        tokio::spawn(manage(config, queue, events.clone(), state_tx, shutdown));
        Self {
            requests,
            events,
            state,
            timeout,
        }
    }

    /// Send `action` (which carries its ActionID) and wait for its response.
    pub async fn send(&self, action: Message) -> Result<Message, AmiError> {
        if *self.state.borrow() != AmiState::Connected {
            return Err(AmiError::NotConnected);
        }
        let name = action.get("Action").unwrap_or_default().to_owned();
        let (reply, answer) = oneshot::channel();
        self.requests
            .send((action, reply))
            .await
            .map_err(|_| AmiError::NotConnected)?;
        let response = tokio::time::timeout(self.timeout, answer)
            .await
            .map_err(|_| AmiError::Timeout(self.timeout))?
            .map_err(|_| AmiError::Closed)??;
        if response.is_success() {
            Ok(response)
        } else {
            Err(AmiError::Refused {
                action: name,
                message: response.get("Message").unwrap_or_default().to_owned(),
            })
        }
    }

    /// Log in once and off again, to learn whether Asterisk takes the credentials: the
    /// error says why not (no connection, or the login refused).
    pub async fn try_login(config: &AmiConfig) -> Result<(), AmiError> {
        let addr = format!("{}:{}", config.host, config.port);
        let mut framed = connect(&addr, config).await?;
        let logoff = Message::action("Logoff", "callverify-logoff");
        let _ = framed.send(&logoff).await;
        Ok(())
    }

    /// Wait until the connection is up (or its login refused), at most `wait`.
    pub async fn connected(&self, wait: Duration) -> Result<(), AmiError> {
        let mut state = self.state.clone();
        let reached = tokio::time::timeout(wait, state.wait_for(|s| *s == AmiState::Connected))
            .await
            .map_err(|_| AmiError::Timeout(wait))?;
        reached.map(drop).map_err(|_| AmiError::Closed)
    }

    /// The events of [`AmiConfig::events`] from now on, with their fields only.
    pub fn events(&self) -> broadcast::Receiver<Message> {
        self.events.subscribe()
    }

    pub fn state(&self) -> watch::Receiver<AmiState> {
        self.state.clone()
    }
}

async fn manage(
    config: AmiConfig,
    mut queue: mpsc::Receiver<(Message, Reply)>,
    events: broadcast::Sender<Message>,
    state: watch::Sender<AmiState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new();
    let addr = format!("{}:{}", config.host, config.port);
    let dropped = LogBudget::default();
    while !stopping(&shutdown) {
        // A refused login stays the state while retrying, so that it shows.
        if *state.borrow() != AmiState::LoginFailed {
            let _ = state.send(AmiState::Connecting);
        }
        match connect(&addr, &config).await {
            Ok(framed) => {
                tracing::info!(%addr, "AMI connected and logged in");
                let _ = state.send(AmiState::Connected);
                let began = tokio::time::Instant::now();
                let why = session(
                    framed,
                    &config,
                    &mut queue,
                    &events,
                    &mut shutdown,
                    &dropped,
                )
                .await;
                let _ = state.send(AmiState::Disconnected);
                if stopping(&shutdown) {
                    break;
                }
                backoff.session_lasted(began.elapsed());
                tracing::warn!(%addr, reason = %why, retry_in = ?backoff.next,
                    "AMI connection lost; reconnecting");
            }
            Err(AmiError::LoginFailed(message)) => {
                let _ = state.send(AmiState::LoginFailed);
                tracing::error!(%addr, user = %config.username, %message,
                    "AMI login refused: check ami.username and ami.secret against manager.conf");
            }
            Err(e) => {
                let _ = state.send(AmiState::Disconnected);
                tracing::warn!(%addr, error = %e, retry_in = ?backoff.next, "AMI unavailable");
            }
        }
        // Requests queued while down are answered at once rather than left waiting.
        while let Ok((_, reply)) = queue.try_recv() {
            let _ = reply.send(Err(AmiError::NotConnected));
        }
        // An error (the sender gone) is a shutdown too: `stopping` says so.
        tokio::select! {
            () = tokio::time::sleep(backoff.take()) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Whether the connection should end: shutdown turned true, or its sender is gone (nobody
/// is left to ask; waiting on it would return at once, forever).
fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

/// The wait before each reconnection: doubling from [`Backoff::FIRST`] to [`Backoff::MAX`],
/// back to the first only after a session that lasted [`Backoff::STABLE`]. A server that
/// logs in and then drops each session at once (or sends what ends it) is retried less and
/// less often, not twice a second.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);
    const STABLE: Duration = Duration::from_secs(30);

    fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// A logged-in session ended after `lasted`.
    fn session_lasted(&mut self, lasted: Duration) {
        if lasted >= Self::STABLE {
            self.next = Self::FIRST;
        }
    }

    /// The wait before this attempt; the next one waits twice as long.
    fn take(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(Self::MAX);
        wait
    }
}

type Conn = Framed<TcpStream, AmiCodec>;

async fn connect(addr: &str, config: &AmiConfig) -> Result<Conn, AmiError> {
    let stream = tokio::time::timeout(config.action_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| AmiError::Timeout(config.action_timeout))?
        .map_err(AmiError::Connect)?;
    stream.set_nodelay(true).map_err(AmiError::Connect)?;
    let mut framed = Framed::new(stream, AmiCodec::default());
    let mut login = Message::action("Login", "callverify-login");
    login
        .push("Username", config.username.as_str())
        .push("Secret", config.secret.as_str())
        .push("Events", "call");
    framed.send(&login).await?;
    let answer = tokio::time::timeout(config.action_timeout, async {
        while let Some(frame) = framed.next().await {
            if let Frame::Message(m) = frame? {
                if m.event().is_none() && m.action_id() == Some("callverify-login") {
                    return Ok(m);
                }
            }
        }
        Err(AmiError::Closed)
    })
    .await
    .map_err(|_| AmiError::Timeout(config.action_timeout))??;
    if answer.is_success() {
        Ok(framed)
    } else {
        Err(AmiError::LoginFailed(
            answer.get("Message").unwrap_or("refused").to_owned(),
        ))
    }
}

/// Serve one logged-in connection until it fails or shutdown; returns why it ended.
async fn session(
    mut framed: Conn,
    config: &AmiConfig,
    queue: &mut mpsc::Receiver<(Message, Reply)>,
    events: &broadcast::Sender<Message>,
    shutdown: &mut watch::Receiver<bool>,
    dropped: &LogBudget,
) -> String {
    let mut pending: HashMap<String, Reply> = HashMap::new();
    let mut keepalive = tokio::time::interval(config.keepalive);
    keepalive.reset();
    let mut ping_sent: Option<tokio::time::Instant> = None;
    let mut pings = 0u64;
    let why = loop {
        tokio::select! {
            frame = framed.next() => match frame {
                None => break "closed by Asterisk".to_owned(),
                Some(Err(e)) => break e.to_string(),
                Some(Ok(Frame::Banner(_))) => {}
                // One odd message (a long DialString, many channel variables): the
                // connection goes on. Were it an event the dialer waits for, its sweep
                // releases the call.
                Some(Ok(Frame::Dropped { why, event })) => {
                    if let Some(suppressed) = dropped.allow() {
                        tracing::warn!(event = event.as_deref().unwrap_or("?"), suppressed,
                            "AMI message dropped: {why}");
                    }
                }
                Some(Ok(Frame::Message(m))) => {
                    if m.event().is_some() {
                        if let Some(m) = config.events.keep(m) {
                            let _ = events.send(m);
                        }
                    } else if let Some(reply) = m.action_id().and_then(|id| pending.remove(id)) {
                        let _ = reply.send(Ok(m));
                    } else if m.action_id().is_some_and(|id| id.starts_with("callverify-ping")) {
                        ping_sent = None;
                    }
                }
            },
            request = queue.recv() => {
                let Some((action, reply)) = request else { break "shut down".to_owned() };
                let Some(id) = action.action_id().map(str::to_owned) else {
                    let _ = reply.send(Err(AmiError::Refused {
                        action: action.get("Action").unwrap_or_default().to_owned(),
                        message: "no ActionID".into(),
                    }));
                    continue;
                };
                match framed.send(&action).await {
                    Ok(()) => { pending.insert(id, reply); }
                    Err(AmiCodecError::LineBreak(field)) => {
                        let _ = reply.send(Err(AmiCodecError::LineBreak(field).into()));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(AmiError::Closed));
                        break e.to_string();
                    }
                }
            }
            _ = keepalive.tick() => {
                forget_abandoned(&mut pending);
                if let Some(sent) = ping_sent {
                    if sent.elapsed() > config.action_timeout {
                        break "keepalive Ping unanswered".to_owned();
                    }
                    continue;
                }
                pings += 1;
                let ping = Message::action("Ping", &format!("callverify-ping-{pings}"));
                if let Err(e) = framed.send(&ping).await {
                    break e.to_string();
                }
                ping_sent = Some(tokio::time::Instant::now());
            }
            // An error (the sender gone) is a shutdown too.
            _ = shutdown.changed() => {
                let logoff = Message::action("Logoff", "callverify-logoff");
                let _ = framed.send(&logoff).await;
                break "shut down".to_owned();
            }
        }
    };
    for (_, reply) in pending {
        let _ = reply.send(Err(AmiError::Closed));
    }
    why
}

/// Drop the actions whose callers stopped waiting (their reply timed out): an Asterisk that
/// answers the keepalive but never some action would otherwise grow the map for as long as
/// the connection lasts.
fn forget_abandoned(pending: &mut HashMap<String, Reply>) {
    pending.retain(|_, reply| !reply.is_closed());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_nobody_waits_for_are_forgotten() {
        let mut pending = HashMap::new();
        let (waited, _waiting) = oneshot::channel();
        let (abandoned, gave_up) = oneshot::channel();
        pending.insert("a-1".to_owned(), waited);
        pending.insert("a-2".to_owned(), abandoned);
        drop(gave_up);
        forget_abandoned(&mut pending);
        assert_eq!(pending.keys().collect::<Vec<_>>(), ["a-1"]);
    }

    /// A server that drops each session soon after the login (or sends what ends it) is
    /// retried less and less often; a session that lasted starts the waits over.
    #[test]
    fn reconnections_back_off_unless_the_session_lasted() {
        let mut backoff = Backoff::new();
        let mut waits = Vec::new();
        for _ in 0..8 {
            backoff.session_lasted(Duration::from_millis(20));
            waits.push(backoff.take().as_millis());
        }
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        backoff.session_lasted(Backoff::STABLE);
        assert_eq!(backoff.take(), Backoff::FIRST);
    }

    #[test]
    fn listeners_get_the_events_they_read_with_the_fields_they_read() {
        let mut hangup = Message::default();
        hangup
            .push("Event", "Hangup")
            .push("Channel", "PJSIP/qa-00000001")
            .push("ChanVariable(DIALSTRING)", "x".repeat(4000))
            .push("Uniqueid", "qa-1")
            .push("Cause", "16");
        let filter = EventFilter {
            events: &["OriginateResponse", "Hangup"],
            fields: &["Uniqueid", "Cause"],
        };
        let kept = filter.keep(hangup).expect("Hangup is passed on");
        assert_eq!(
            kept.headers,
            [
                ("Event".to_owned(), "Hangup".to_owned()),
                ("Uniqueid".to_owned(), "qa-1".to_owned()),
                ("Cause".to_owned(), "16".to_owned()),
            ]
        );
        let mut other = Message::default();
        other.push("Event", "Newexten").push("Uniqueid", "qa-1");
        assert_eq!(filter.keep(other), None);
    }

    /// The shutdown sender dropped (its owner gone without sending true): the connection
    /// task ends instead of retrying in a loop that never waits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_shutdown_sender_ends_the_connection_task() {
        // A port nothing listens on: every connection is refused at once.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let config = AmiConfig {
            host: "127.0.0.1".into(),
            port,
            username: "callverify".into(),
            secret: "secret".into(),
            keepalive: Duration::from_secs(10),
            action_timeout: Duration::from_secs(1),
            events: EventFilter {
                events: &[],
                fields: &[],
            },
        };
        let (stop, stopped) = watch::channel(false);
        let ami = Ami::start(config, stopped);
        let mut state = ami.state();
        drop(stop);
        // The task owns the state's sender: it is gone when the task ends.
        let ended = tokio::time::timeout(Duration::from_secs(3), async {
            while state.changed().await.is_ok() {}
        })
        .await;
        assert!(ended.is_ok(), "the AMI task still runs");
    }
}
