//! An emulated Asterisk 22 Manager Interface, for tests: the banner, Login, Ping, Logoff,
//! ListCommands and async Originate, answered with the messages and event sequences of
//! `shared/captures/asterisk-ami-*.txt`. What happens to each originated call is decided per
//! number: answered (then the callee's FastAGI call is played against the daemon, as
//! Asterisk would run the dialplan), busy, no answer, no such endpoint, or the connection
//! dropped; `callverify doctor`'s self-test call runs in the emulated [`Pbx`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec};

use super::{outbound_env, Call, Pbx};

/// The channel `callverify doctor` originates its self-test call on.
const SELFTEST_CHANNEL: &str = "Local/s@callverify-selftest";

/// What the callee's side does with an originated call.
#[derive(Debug, Clone)]
pub enum Callee {
    /// Answers; the FastAGI call then presses these keys, one press per prompt (read when
    /// the call is answered, so a test can fill them in after creating the verification).
    Answer(Keys),
    /// Answers, and the FastAGI call waits at the greeting until the value turns true (a
    /// call in progress, for as long as the test wants), then presses the keys as they are
    /// then.
    AnswerHolding(Keys, watch::Receiver<bool>),
    /// `486 Busy Here`: OriginateResponse Reason 0, then Hangup Cause 17.
    Busy,
    /// Rings until the timeout: OriginateResponse Reason 3, then Hangup Cause 19.
    NoAnswer,
    /// No such endpoint: OriginateResponse Reason 0 and no channel at all.
    NoEndpoint,
    /// The AMI connection drops right after the Originate is queued.
    DropConnection,
    /// Never says anything more about the call.
    Silent,
}

/// Keys a callee presses, shared with the test.
pub type Keys = Arc<Mutex<Vec<String>>>;

impl Callee {
    /// Answers and presses `keys`.
    pub fn answer(keys: &[&str]) -> Self {
        Callee::Answer(Arc::new(Mutex::new(
            keys.iter().map(|k| k.to_string()).collect(),
        )))
    }
}

/// A Hangup event as Asterisk sends it for an Originate's channel.
fn hangup(channel: &str, cid: &str, context: &str, cause: &str, text: &str) -> String {
    format!(
        "Event: Hangup\r\nPrivilege: call,all\r\nChannel: {channel}\r\nChannelState: 0\r\nChannelStateDesc: Down\r\nCallerIDNum: <unknown>\r\nCallerIDName: <unknown>\r\nConnectedLineNum: <unknown>\r\nConnectedLineName: <unknown>\r\nLanguage: en\r\nAccountCode: \r\nContext: {context}\r\nExten: s\r\nPriority: 1\r\nUniqueid: {cid}\r\nLinkedid: {cid}\r\nCause: {cause}\r\nCause-txt: {text}\r\n"
    )
}

/// The calls in progress on a trunk, which several emulated PBXes may share: from the
/// Originate until the Hangup (calls that never end, `Silent` or `DropConnection`, are not
/// counted).
#[derive(Clone, Default)]
pub struct TrunkLog(Arc<Mutex<TrunkCalls>>);

#[derive(Default)]
struct TrunkCalls {
    /// Calls in progress per verification id.
    active: HashMap<String, usize>,
    total: usize,
    most_at_once: usize,
    most_for_one: usize,
}

impl TrunkLog {
    fn begin(&self, verification: &str) {
        let mut t = self.0.lock().unwrap();
        let n = t.active.entry(verification.to_owned()).or_default();
        *n += 1;
        let n = *n;
        t.total += 1;
        t.most_at_once = t.most_at_once.max(t.total);
        t.most_for_one = t.most_for_one.max(n);
    }

    fn end(&self, verification: &str) {
        let mut t = self.0.lock().unwrap();
        if let Some(n) = t.active.get_mut(verification) {
            *n -= 1;
            t.total -= 1;
        }
    }

    /// Calls in progress now.
    pub fn in_progress(&self) -> usize {
        self.0.lock().unwrap().total
    }

    /// The most calls that were in progress at once.
    pub fn most_at_once(&self) -> usize {
        self.0.lock().unwrap().most_at_once
    }

    /// The most calls one verification was in at once (more than 1: called twice at once).
    pub fn most_for_one_verification(&self) -> usize {
        self.0.lock().unwrap().most_for_one
    }
}

/// One Originate the peer received.
#[derive(Debug, Clone)]
pub struct Originated {
    pub action_id: String,
    pub channel: String,
    pub channel_id: String,
    pub variables: Vec<String>,
    pub context: String,
    pub exten: String,
}

#[derive(Default)]
struct Shared {
    callees: HashMap<String, Callee>,
    originated: Vec<Originated>,
    logins: Vec<(String, bool)>,
    /// Every logged-in connection gets every event, as with `read=call`.
    listeners: Vec<mpsc::UnboundedSender<String>>,
}

/// The emulated AMI server.
#[derive(Clone)]
pub struct AmiPeer {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    username: String,
    secret: String,
    agi: Arc<Mutex<Option<SocketAddr>>>,
    pbx: Arc<Mutex<Pbx>>,
    trunk: Arc<Mutex<TrunkLog>>,
}

const BANNER: &str = "Asterisk Call Manager/11.0.0";

impl AmiPeer {
    /// Listen on loopback, accepting `username` / `secret`.
    pub async fn start(username: &str, secret: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let peer = Self {
            addr: listener.local_addr()?,
            shared: Arc::default(),
            username: username.into(),
            secret: secret.into(),
            agi: Arc::default(),
            pbx: Arc::default(),
            trunk: Arc::default(),
        };
        let server = peer.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(server.clone().connection(stream));
            }
        });
        Ok(peer)
    }

    /// Where answered calls' FastAGI sessions go (the daemon's agi.listen).
    pub fn set_agi(&self, addr: SocketAddr) {
        *self.agi.lock().unwrap() = Some(addr);
    }

    /// Count this PBX's calls in `log` (shared with other PBXes on the same trunk).
    pub fn log_calls(&self, log: &TrunkLog) {
        *self.trunk.lock().unwrap() = log.clone();
    }

    /// What the PBX has loaded and installed (the doctor's self-test call finds it out).
    pub fn set_pbx(&self, pbx: Pbx) {
        *self.pbx.lock().unwrap() = pbx;
    }

    /// What the callee at `number` (as in the Originate channel) does.
    pub fn callee(&self, number: &str, callee: Callee) {
        self.shared
            .lock()
            .unwrap()
            .callees
            .insert(number.into(), callee);
    }

    pub fn originated(&self) -> Vec<Originated> {
        self.shared.lock().unwrap().originated.clone()
    }

    /// (username, accepted) of each Login.
    pub fn logins(&self) -> Vec<(String, bool)> {
        self.shared.lock().unwrap().logins.clone()
    }

    /// Drop every AMI connection (as when Asterisk restarts).
    pub fn drop_connections(&self) {
        self.shared.lock().unwrap().listeners.clear();
    }

    async fn connection(self, stream: TcpStream) {
        let (read, write) = stream.into_split();
        let mut lines = FramedRead::new(read, LinesCodec::new_with_max_length(8192));
        let mut out = FramedWrite::new(write, LinesCodec::new());
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        // The writer: every message ends with an empty line; lines end in CR LF.
        let writer = tokio::spawn(async move {
            if out.send(format!("{BANNER}\r")).await.is_err() {
                return;
            }
            while let Some(message) = rx.recv().await {
                for line in message.split("\r\n") {
                    if out.send(format!("{line}\r")).await.is_err() {
                        return;
                    }
                }
            }
        });
        let mut headers: Vec<(String, String)> = Vec::new();
        let mut logged_in = false;
        while let Some(Ok(line)) = lines.next().await {
            let line = line.trim_end_matches('\r').to_owned();
            if !line.is_empty() {
                if let Some((k, v)) = line.split_once(": ") {
                    headers.push((k.to_owned(), v.to_owned()));
                }
                continue;
            }
            let action = std::mem::take(&mut headers);
            let get = |key: &str| {
                action
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(key))
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let id = get("ActionID");
            match get("Action").to_ascii_lowercase().as_str() {
                "login" => {
                    let ok = get("Username") == self.username && get("Secret") == self.secret;
                    self.shared
                        .lock()
                        .unwrap()
                        .logins
                        .push((get("Username"), ok));
                    if !ok {
                        // Asterisk answers after about a second, then closes.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let _ = tx.send(format!(
                            "Response: Error\r\nActionID: {id}\r\nMessage: Authentication failed\r\n"
                        ));
                        drop(tx);
                        let _ = writer.await;
                        return;
                    }
                    logged_in = true;
                    let _ = tx.send(format!(
                        "Response: Success\r\nActionID: {id}\r\nMessage: Authentication accepted\r\n"
                    ));
                    let _ = tx.send(
                        "Event: FullyBooted\r\nPrivilege: system,all\r\nUptime: 145\r\nLastReload: 145\r\nStatus: Fully Booted\r\n"
                            .into(),
                    );
                    self.shared.lock().unwrap().listeners.push(tx.clone());
                }
                _ if !logged_in => {
                    let _ = tx.send(format!(
                        "Response: Error\r\nActionID: {id}\r\nMessage: Permission denied\r\n"
                    ));
                }
                "ping" => {
                    let _ = tx.send(format!(
                        "Response: Success\r\nActionID: {id}\r\nPing: Pong\r\nTimestamp: 1795786096.123456\r\n"
                    ));
                }
                "listcommands" => {
                    let reply = self.pbx.lock().unwrap().list_commands(&id);
                    let _ = tx.send(reply);
                }
                "logoff" => {
                    let _ = tx.send(format!(
                        "Response: Goodbye\r\nActionID: {id}\r\nMessage: Thanks for all the fish.\r\n"
                    ));
                    break;
                }
                "originate" => {
                    if get("Channel").is_empty() {
                        let _ = tx.send(format!(
                            "Response: Error\r\nActionID: {id}\r\nMessage: Channel not specified\r\n"
                        ));
                        continue;
                    }
                    let _ = tx.send(format!(
                        "Response: Success\r\nActionID: {id}\r\nMessage: Originate successfully queued\r\n"
                    ));
                    let call = Originated {
                        action_id: id,
                        channel: get("Channel"),
                        channel_id: get("ChannelId"),
                        variables: action
                            .iter()
                            .filter(|(k, _)| k.eq_ignore_ascii_case("Variable"))
                            .map(|(_, v)| v.clone())
                            .collect(),
                        context: get("Context"),
                        exten: get("Exten"),
                    };
                    let callee = {
                        let mut shared = self.shared.lock().unwrap();
                        shared.originated.push(call.clone());
                        shared
                            .callees
                            .iter()
                            .find(|(number, _)| call.channel.contains(number.as_str()))
                            .map(|(_, c)| c.clone())
                            .unwrap_or(Callee::Silent)
                    };
                    if matches!(callee, Callee::DropConnection) {
                        break;
                    }
                    tokio::spawn(self.clone().play(call, callee));
                }
                other => {
                    let _ = tx.send(format!(
                        "Response: Error\r\nActionID: {id}\r\nMessage: Invalid/unknown command: {other}. Use Action: ListCommands to show available commands.\r\n"
                    ));
                }
            }
        }
        drop(tx);
        writer.abort();
    }

    /// Send `message` (its lines each ending in CR LF, without the empty line that closes
    /// it) to every logged-in connection, as Asterisk sends an event.
    pub fn send_event(&self, message: &str) {
        self.broadcast(message.to_owned());
    }

    fn broadcast(&self, message: String) {
        let mut shared = self.shared.lock().unwrap();
        shared.listeners.retain(|l| l.send(message.clone()).is_ok());
    }

    async fn play(self, call: Originated, callee: Callee) {
        if call.channel == SELFTEST_CHANNEL {
            return self.selftest(call).await;
        }
        let cid = &call.channel_id;
        let channel = format!(
            "{}-00000006",
            call.channel.split('@').next().unwrap_or("PJSIP/x")
        );
        let failure = |reason: &str| {
            format!(
                "Event: OriginateResponse\r\nPrivilege: call,all\r\nActionID: {}\r\nResponse: Failure\r\nChannel: {}\r\nContext: {}\r\nExten: {}\r\nReason: {reason}\r\nUniqueid: <unknown>\r\nCallerIDNum: <unknown>\r\nCallerIDName: <unknown>\r\n",
                call.action_id, call.channel, call.context, call.exten
            )
        };
        let verification = call
            .variables
            .iter()
            .find_map(|v| v.strip_prefix("CALLVERIFY_ID="))
            .unwrap_or_default()
            .to_owned();
        let trunk = self.trunk.lock().unwrap().clone();
        let ends = !matches!(callee, Callee::Silent | Callee::DropConnection);
        if ends {
            trunk.begin(&verification);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        match callee {
            Callee::Busy => {
                self.broadcast(failure("0"));
                self.broadcast(hangup(&channel, cid, &call.context, "17", "User busy"));
            }
            Callee::NoAnswer => {
                self.broadcast(failure("3"));
                self.broadcast(hangup(
                    &channel,
                    cid,
                    &call.context,
                    "19",
                    "User alerting, no answer",
                ));
            }
            Callee::NoEndpoint => self.broadcast(failure("0")),
            Callee::Answer(keys) => {
                self.answer(&call, &channel, &verification, keys, None)
                    .await
            }
            Callee::AnswerHolding(keys, release) => {
                self.answer(&call, &channel, &verification, keys, Some(release))
                    .await
            }
            Callee::DropConnection | Callee::Silent => {}
        }
        if ends {
            trunk.end(&verification);
        }
    }

    /// An answered call: its FastAGI session (held at the greeting until `hold` turns true),
    /// then its Hangup.
    async fn answer(
        &self,
        call: &Originated,
        channel: &str,
        verification: &str,
        keys: Keys,
        hold: Option<watch::Receiver<bool>>,
    ) {
        let cid = &call.channel_id;
        self.broadcast(format!(
            "Event: OriginateResponse\r\nPrivilege: call,all\r\nActionID: {}\r\nResponse: Success\r\nChannel: {channel}\r\nContext: {}\r\nExten: {}\r\nReason: 4\r\nUniqueid: {cid}\r\nCallerIDNum: +15550001111\r\nCallerIDName: QA Verify\r\n",
            call.action_id, call.context, call.exten
        ));
        let agi = *self.agi.lock().unwrap();
        if let Some(agi) = agi {
            let mut fastagi = Call::verify(verification).uniqueid(cid);
            match hold {
                // The keys as they are once the call goes on.
                Some(hold) => {
                    fastagi = fastagi
                        .then(super::Action::Hold(hold))
                        .then(super::Action::PressLater(keys));
                }
                None => {
                    let keys = keys.lock().unwrap().clone();
                    for k in &keys {
                        fastagi = fastagi.press(k);
                    }
                }
            }
            let _ = fastagi.run(agi).await;
        }
        self.broadcast(hangup(channel, cid, &call.context, "16", "Normal Clearing"));
    }

    /// `callverify doctor`'s self-test call: a Local channel into `callverify-selftest`,
    /// whose `;2` half runs `AGI(agi://.../selftest,${CALLVERIFY_SELFTEST})` (the variable
    /// copied from `;1`, as core_local.c does). Without the context, Asterisk fails the
    /// Originate as `asterisk-ami-errors.txt` shows for a missing extension.
    async fn selftest(self, call: Originated) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let pbx = self.pbx.lock().unwrap().clone();
        if !pbx.contexts.iter().any(|c| c == "callverify-selftest") {
            self.broadcast(format!(
                "Event: OriginateResponse\r\nPrivilege: call,all\r\nActionID: {}\r\nResponse: Failure\r\nChannel: {}\r\nContext: \r\nExten: \r\nReason: 0\r\nUniqueid: <unknown>\r\nCallerIDNum: <unknown>\r\nCallerIDName: <unknown>\r\n",
                call.action_id, call.channel
            ));
            return;
        }
        let channel = "Local/s@callverify-selftest-00000002;1";
        let uniqueid = match call.channel_id.as_str() {
            "" => "1795786096.20",
            id => id,
        };
        self.broadcast(format!(
            "Event: OriginateResponse\r\nPrivilege: call,all\r\nActionID: {}\r\nResponse: Success\r\nChannel: {channel}\r\nContext: \r\nExten: \r\nReason: 4\r\nUniqueid: {uniqueid}\r\nCallerIDNum: selftest\r\nCallerIDName: callverify doctor\r\n",
            call.action_id
        ));
        let token = call
            .variables
            .iter()
            .find_map(|v| v.strip_prefix("CALLVERIFY_SELFTEST="))
            .unwrap_or_default()
            .to_owned();
        let agi = *self.agi.lock().unwrap();
        if let Some(agi) = agi {
            let env = outbound_env("selftest", &[&token])
                .into_iter()
                .map(|line| match line.split_once(": ") {
                    Some(("agi_channel", _)) => {
                        "agi_channel: Local/s@callverify-selftest-00000002;2".into()
                    }
                    Some(("agi_type", _)) => "agi_type: Local".into(),
                    Some(("agi_context", _)) => "agi_context: callverify-selftest".into(),
                    Some(("agi_priority", _)) => "agi_priority: 2".into(),
                    _ => line,
                })
                .collect();
            // Refused (nothing listens at CALLVERIFY_AGI_HOST): AGISTATUS=FAILURE, hang up.
            let _ = Call::with_env(env).in_pbx(&pbx).run(agi).await;
        }
        self.broadcast(format!(
            "Event: Hangup\r\nPrivilege: call,all\r\nChannel: {channel}\r\nChannelState: 6\r\nChannelStateDesc: Up\r\nCallerIDNum: selftest\r\nCallerIDName: callverify doctor\r\nConnectedLineNum: <unknown>\r\nConnectedLineName: <unknown>\r\nLanguage: en\r\nAccountCode: \r\nContext: \r\nExten: \r\nPriority: 1\r\nUniqueid: {uniqueid}\r\nLinkedid: {uniqueid}\r\nCause: 16\r\nCause-txt: Normal Clearing\r\n"
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use callverify_pbx::ami::{Ami, AmiConfig, AmiState, Message};

    use super::*;

    const SECRET: &str = "ami-secret";

    fn config(peer: &AmiPeer) -> AmiConfig {
        AmiConfig {
            host: "127.0.0.1".into(),
            port: peer.addr.port(),
            username: "callverify".into(),
            secret: SECRET.into(),
            keepalive: Duration::from_secs(10),
            action_timeout: Duration::from_secs(2),
            events: callverify::outbound::dialer::AMI_EVENTS,
        }
    }

    /// A ring group's DialString over 8 KiB on some channel of the PBX: that event is
    /// dropped, the connection and the next event are not.
    #[tokio::test]
    async fn an_overlong_line_costs_one_event_not_the_connection() {
        let peer = AmiPeer::start("callverify", SECRET).await.unwrap();
        let (_stop, stopped) = watch::channel(false);
        let ami = Ami::start(config(&peer), stopped);
        ami.connected(Duration::from_secs(5)).await.unwrap();
        let mut events = ami.events();
        peer.send_event(&format!(
            "Event: DialBegin\r\nPrivilege: call,all\r\nDialString: {}\r\n",
            "PJSIP/ext&".repeat(1000)
        ));
        peer.send_event(&hangup(
            "PJSIP/qa-1",
            "qa-1",
            "ctx",
            "16",
            "Normal Clearing",
        ));
        let event = tokio::time::timeout(Duration::from_secs(2), events.recv())
            .await
            .expect("the next event comes")
            .unwrap();
        assert_eq!(event.get("Uniqueid"), Some("qa-1"));
        // A reconnection would come within 500 ms.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(peer.logins().len(), 1);
        assert_eq!(*ami.state().borrow(), AmiState::Connected);
    }

    /// A server that drops each session soon after the login is retried less and less
    /// often, not every 500 ms.
    #[tokio::test]
    async fn sessions_dropped_at_once_are_retried_with_growing_waits() {
        let peer = AmiPeer::start("callverify", SECRET).await.unwrap();
        peer.callee("+15550000001", Callee::DropConnection);
        let (_stop, stopped) = watch::channel(false);
        let ami = Ami::start(config(&peer), stopped);
        let mut state = ami.state();
        let mut waits = Vec::new();
        for i in 0..3 {
            ami.connected(Duration::from_secs(10)).await.unwrap();
            let mut originate = Message::action("Originate", &format!("drop-{i}"));
            originate.push("Channel", "PJSIP/+15550000001@trunk");
            let _ = ami.send(originate).await;
            state.wait_for(|s| *s != AmiState::Connected).await.unwrap();
            let lost = Instant::now();
            state.wait_for(|s| *s == AmiState::Connected).await.unwrap();
            waits.push(lost.elapsed());
        }
        assert!(
            waits[2] >= Duration::from_millis(1800),
            "reconnected after {waits:?}"
        );
    }

    /// The shutdown sender dropped while connected: the connection ends, and is not
    /// retried in a loop.
    #[tokio::test]
    async fn a_dropped_shutdown_sender_ends_the_session() {
        let peer = AmiPeer::start("callverify", SECRET).await.unwrap();
        let (stop, stopped) = watch::channel(false);
        let ami = Ami::start(config(&peer), stopped);
        ami.connected(Duration::from_secs(5)).await.unwrap();
        let mut state = ami.state();
        drop(stop);
        // The connection task owns the state's sender: it is gone when the task ends.
        let ended = tokio::time::timeout(Duration::from_secs(3), async {
            while state.changed().await.is_ok() {}
        })
        .await;
        assert!(ended.is_ok(), "the AMI task still runs");
        assert_eq!(peer.logins().len(), 1);
    }
}
