//! The AudioSocket listener and the listening phase, against the emulated Asterisk's
//! `AudioSocket` application (which speaks what shared/captures/asterisk-audiosocket.txt shows).

use std::net::SocketAddr;
use std::time::Duration;

use callverify::flow::listen::{listen, Listened, Why};
use callverify_pbx::admission::ESTABLISH_WAIT;
use callverify_pbx::agi::{Session, Timeouts};
use callverify_pbx::audiosocket::{
    self, AudioStream, Frame, FrameCodec, Heard, Hub, ListenerConfig,
};
use callverify_testkit::emulator::{outbound_env, AfterTalk, Call, Ending, Talk, Transcript};
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use uuid::Uuid;

/// What the test flow heard: samples in total, and keys.
#[derive(Debug, Default, PartialEq, Eq)]
struct Got {
    samples: usize,
    keys: String,
}

/// Read until `#` or `enough` samples, then end the stream as the flows do.
async fn collect(mut stream: AudioStream, enough: usize) -> Got {
    let mut got = Got::default();
    while let Some(heard) = stream.next().await {
        match heard {
            Heard::Audio(samples) => got.samples += samples.len(),
            Heard::Key(key) => got.keys.push(key),
        }
        if got.keys.ends_with('#') || got.samples >= enough {
            stream.hang_up().await;
            return got;
        }
    }
    got
}

struct Rig {
    hub: Hub,
    agi: TcpListener,
    audio: SocketAddr,
}

/// An AudioSocket listener (advertised as `advertise`, or its own address) and a FastAGI port.
async fn rig(advertise: Option<&str>) -> Rig {
    rig_allowing(advertise, "127.0.0.0/8").await
}

async fn rig_allowing(advertise: Option<&str>, allow: &str) -> Rig {
    rig_with(advertise, allow, Duration::from_secs(2)).await
}

/// Room for 10 calls' audio; a connection waits `uuid_timeout` for its UUID.
async fn rig_with(advertise: Option<&str>, allow: &str, uuid_timeout: Duration) -> Rig {
    let audio = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let audio_addr = audio.local_addr().unwrap();
    let own = audio_addr.to_string();
    let hub = Hub::new(advertise.unwrap_or(&own));
    let config = ListenerConfig {
        allow: vec![allow.parse().unwrap()],
        max_connections: 10,
        uuid_timeout,
    };
    tokio::spawn(audiosocket::serve(
        audio,
        config,
        hub.clone(),
        std::future::pending(),
    ));
    let agi = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Rig {
        hub,
        agi,
        audio: audio_addr,
    }
}

/// Play `call` against one listening phase; then the flow plays one prompt, as a flow
/// carries on after it.
async fn run(rig: Rig, call: Call, enough: usize) -> (Listened<Got>, Transcript) {
    let addr: SocketAddr = rig.agi.local_addr().unwrap();
    let peer = tokio::spawn(call.run(addr));
    let (stream, _) = rig.agi.accept().await.unwrap();
    let timeouts = Timeouts {
        env: Duration::from_secs(5),
        reply: Duration::from_secs(30),
    };
    let mut session = Session::accept(stream, timeouts).await.unwrap();
    let listened = listen(&mut session, &rig.hub, |s| collect(s, enough))
        .await
        .unwrap();
    if !session.hung_up() {
        session.stream_file("auth-thankyou", "").await.unwrap();
    }
    session.close().await;
    (listened, peer.await.unwrap().unwrap())
}

fn call() -> Call {
    Call::with_env(outbound_env("speech", &[]))
}

fn tone(ms: u32) -> Vec<i16> {
    (0..ms * 8)
        .map(|i| ((i as f32 * 0.3).sin() * 8000.0) as i16)
        .collect()
}

#[tokio::test]
async fn the_daemon_hears_audio_and_keys_and_ends_the_stream() {
    let talk = Talk::new().say(tone(700)).pause(300).key('4').key('#');
    let (listened, transcript) = run(rig(None).await, call().talk(talk), usize::MAX).await;
    assert_eq!(
        listened,
        Listened::Heard(Got {
            samples: 8000,
            keys: "4#".into()
        })
    );
    let log = &transcript.audio[0];
    assert!(
        log.hangup_message,
        "the daemon ends with the hangup message"
    );
    assert_eq!(log.ending, Ending::ByDaemon);
    // EXEC answered 200 result=0 and the call went on.
    assert!(transcript.commands[0].starts_with("EXEC AudioSocket "));
    assert_eq!(transcript.commands[1], "STREAM FILE auth-thankyou \"\"");
}

/// Connections that say nothing (no UUID) hold one of the greeting places (giving it up to
/// newer ones when all are taken), never a call's: three hundred of them, more than the 256
/// greeting places and far more than the 10 calls' places, each left silent for as long as
/// the UUID may take (30 s here, longer than the call waits for its audio), do not keep a
/// call's audio out.
#[tokio::test]
async fn silent_connections_do_not_keep_a_calls_audio_out() {
    let rig = rig_with(None, "127.0.0.0/8", Duration::from_secs(30)).await;
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(rig.audio).await.unwrap());
    }
    let talk = Talk::new().say(tone(700)).pause(300).key('4').key('#');
    let (listened, _) = run(rig, call().talk(talk), usize::MAX).await;
    assert_eq!(
        listened,
        Listened::Heard(Got {
            samples: 8000,
            keys: "4#".into()
        })
    );
    drop(silent);
}

#[tokio::test]
async fn odd_sized_frames_are_taken_at_their_length() {
    // 70 ms: frames of 160, 160, 160 and a short 80-sample one, as Asterisk's last frame.
    let talk = Talk::new().say(tone(70)).then(AfterTalk::Silence);
    let (listened, _) = run(rig(None).await, call().talk(talk), 560).await;
    assert_eq!(
        listened,
        Listened::Heard(Got {
            samples: 560,
            keys: String::new()
        })
    );
}

#[tokio::test]
async fn keepalive_silence_holds_asterisk_timer_while_the_caller_is_silent() {
    // Capture session 6: 3 s with no frames from the caller; the daemon's silence keeps
    // app_audiosocket from ending at 2 s.
    let talk = Talk::new()
        .no_frames(Duration::from_millis(3000))
        .say(tone(200))
        .key('#');
    let (listened, transcript) = run(rig(None).await, call().talk(talk), usize::MAX).await;
    assert!(
        matches!(listened, Listened::Heard(Got { samples: 1600, .. })),
        "{listened:?}"
    );
    let frames = transcript.audio[0].frames_from_daemon;
    assert!(
        frames >= 50,
        "the daemon sent {frames} keep-alive frames in 3 s"
    );
}

#[tokio::test]
async fn a_caller_hanging_up_mid_stream_keeps_what_was_heard() {
    let talk = Talk::new().say(tone(400)).then(AfterTalk::HangUp);
    let (listened, transcript) = run(rig(None).await, call().talk(talk), usize::MAX).await;
    assert_eq!(
        listened,
        Listened::HungUp(Some(Got {
            samples: 3200,
            keys: String::new()
        }))
    );
    assert_eq!(transcript.audio[0].ending, Ending::CallerHungUp);
    // Capture session 4: result=-1, CHANNEL STATUS meets HANGUP and 511; nothing more.
    assert_eq!(transcript.commands.len(), 2, "{:?}", transcript.commands);
    assert_eq!(transcript.commands[1], "CHANNEL STATUS");
}

#[tokio::test]
async fn nothing_listening_at_the_advertised_address_is_unavailable() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let (listened, transcript) = run(rig(Some(&closed)).await, call(), usize::MAX).await;
    assert_eq!(listened, Listened::Unavailable(Why::NotReached));
    assert!(!transcript.audio[0].connected);
    // Told from a hang-up by CHANNEL STATUS, then the call goes on.
    assert_eq!(transcript.commands[1], "CHANNEL STATUS");
    assert_eq!(transcript.commands[2], "STREAM FILE auth-thankyou \"\"");
}

#[tokio::test]
async fn a_stream_with_an_unknown_uuid_is_closed() {
    let rig = rig(None).await;
    let addr = rig.hub.advertise().to_owned();
    let waiting = rig.hub.expect();
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut framed = tokio_util::codec::Framed::new(stream, audiosocket::FrameCodec);
    framed
        .send(audiosocket::Frame::Uuid(uuid::Uuid::new_v4()))
        .await
        .unwrap();
    // The daemon closes the connection without a word.
    let next = tokio::time::timeout(
        Duration::from_secs(5),
        futures::StreamExt::next(&mut framed),
    )
    .await
    .expect("closed in time");
    assert!(next.is_none(), "{next:?}");
    drop(waiting);
}

/// A listener with one place (`max_connections` = 1), and the place held by a live call's
/// stream: the stream, and the emulated Asterisk's end of it.
async fn one_place_held() -> (SocketAddr, Hub, AudioStream, Framed<TcpStream, FrameCodec>) {
    let audio = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = audio.local_addr().unwrap();
    let hub = Hub::new(&addr.to_string());
    let config = ListenerConfig {
        allow: vec!["127.0.0.0/8".parse().unwrap()],
        max_connections: 1,
        // Longer than any test: no connection is closed for its silence.
        uuid_timeout: Duration::from_secs(3600),
    };
    tokio::spawn(audiosocket::serve(
        audio,
        config,
        hub.clone(),
        std::future::pending(),
    ));
    let mut expected = hub.expect();
    let asterisk = connect_naming(addr, expected.uuid()).await;
    let live = expected.connected().await.expect("the call's stream");
    (addr, hub, live, asterisk)
}

/// Connect to the AudioSocket listener at `addr` and name `uuid`, as Asterisk does.
async fn connect_naming(addr: SocketAddr, uuid: Uuid) -> Framed<TcpStream, FrameCodec> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut framed = Framed::new(stream, FrameCodec);
    framed.send(Frame::Uuid(uuid)).await.unwrap();
    framed
}

#[tokio::test(start_paused = true)]
async fn over_the_cap_unknown_uuids_are_closed_without_waiting_for_a_place() {
    let (addr, _hub, live, mut asterisk) = one_place_held().await;
    // Virtual time: it moves only when every task waits, to the next timer (the live
    // stream's keep-alive, or a connection's wait for a place).
    let start = tokio::time::Instant::now();
    let strangers: Vec<_> = (0..100)
        .map(|_| {
            tokio::spawn(async move {
                let mut framed = connect_naming(addr, Uuid::new_v4()).await;
                framed.next().await
            })
        })
        .collect();
    for stranger in futures::future::join_all(strangers).await {
        let next = stranger.unwrap();
        assert!(next.is_none(), "closed without a word: {next:?}");
    }
    // Had they waited for a place, none could have been closed before the wait ran out.
    let elapsed = start.elapsed();
    assert!(
        elapsed < ESTABLISH_WAIT,
        "closed after {elapsed:?}: they waited for a place"
    );
    // And the place was held all along: the call's stream still runs.
    let next = asterisk.next().await;
    assert!(matches!(next, Some(Ok(Frame::Audio(_)))), "{next:?}");
    live.hang_up().await;
}

#[tokio::test(start_paused = true)]
async fn over_the_cap_a_waited_for_uuid_waits_for_a_place_and_gets_it() {
    let (addr, hub, live, _asterisk) = one_place_held().await;
    let mut expected = hub.expect();
    let _second = connect_naming(addr, expected.uuid()).await;
    let early = tokio::time::timeout(ESTABLISH_WAIT / 2, expected.connected()).await;
    assert!(early.is_err(), "no place yet: the stream waits");
    live.hang_up().await;
    let stream = tokio::time::timeout(ESTABLISH_WAIT / 4, expected.connected())
        .await
        .expect("the place the first call gave back")
        .expect("the second call's stream");
    stream.hang_up().await;
}

#[tokio::test(start_paused = true)]
async fn over_the_cap_a_waited_for_uuid_is_closed_when_no_place_comes_free() {
    let (addr, hub, _live, _asterisk) = one_place_held().await;
    let mut expected = hub.expect();
    let start = tokio::time::Instant::now();
    let mut second = connect_naming(addr, expected.uuid()).await;
    let next = second.next().await;
    assert!(next.is_none(), "closed without a word: {next:?}");
    assert!(
        start.elapsed() >= ESTABLISH_WAIT,
        "it waited for a place first"
    );
    // The call still waits (a later connection could still come), as before.
    let nothing = tokio::time::timeout(Duration::from_millis(100), expected.connected()).await;
    assert!(nothing.is_err());
}

#[tokio::test]
async fn a_peer_outside_the_allowlist_is_refused() {
    let (listened, transcript) = run(rig_allowing(None, "10.0.0.0/8").await, call(), 1).await;
    assert_eq!(listened, Listened::Unavailable(Why::NotReached));
    assert!(transcript.audio[0].connected);
    assert_eq!(transcript.audio[0].frames_from_daemon, 0);
}
