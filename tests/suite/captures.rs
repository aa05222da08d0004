//! Replays of the real Asterisk 22.10.1 FastAGI transcripts in `tests/fixtures/` (copied from
//! `shared/captures/`): the emulated Asterisk must answer the captured commands with the
//! captured bytes, and the daemon's session layer must send the captured commands and read
//! the captured replies.

use std::time::Duration;

use callverify_pbx::agi::reply::{parse_line, Line};
use callverify_pbx::agi::{Reply, Session, Timeouts};
use callverify_testkit::emulator::{Action, Call};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One FastAGI session of a capture: the environment block, then each command with the
/// exact bytes Asterisk sent back before the next command.
struct Captured {
    env: Vec<String>,
    exchanges: Vec<(String, Vec<u8>)>,
}

/// Decode a Python bytes repr `b'...'`.
fn unrepr(text: &str) -> Vec<u8> {
    let inner = text
        .strip_prefix("b'")
        .and_then(|t| t.strip_suffix('\''))
        .or_else(|| text.strip_prefix("b\"").and_then(|t| t.strip_suffix('"')))
        .unwrap_or_else(|| panic!("not a bytes repr: {text}"));
    let mut out = Vec::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next().unwrap() {
            'n' => out.push(b'\n'),
            'r' => out.push(b'\r'),
            't' => out.push(b'\t'),
            'x' => {
                let hex: String = chars.by_ref().take(2).collect();
                out.push(u8::from_str_radix(&hex, 16).unwrap());
            }
            other => out.push(other as u8),
        }
    }
    out
}

/// The sessions of a capture file, split at its `SESSION` (or log) headings.
fn sessions(file: &str) -> Vec<Captured> {
    let text = std::fs::read_to_string(format!(
        "{}/tests/fixtures/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut out: Vec<Captured> = Vec::new();
    for line in text.lines() {
        if line.starts_with("SESSION ") || line == "FastAGI server log" {
            out.push(Captured {
                env: Vec::new(),
                exchanges: Vec::new(),
            });
            continue;
        }
        if line.starts_with("APPENDIX") {
            break;
        }
        let Some(current) = out.last_mut() else {
            continue;
        };
        let (dir, bytes) = if let Some(i) = line.find("] <<< ") {
            ("<<<", unrepr(&line[i + 6..]))
        } else if let Some(i) = line.find("] >>> ") {
            (">>>", unrepr(&line[i + 6..]))
        } else {
            continue;
        };
        match dir {
            ">>>" => {
                let command = String::from_utf8(bytes).unwrap();
                current
                    .exchanges
                    .push((command.trim_end().to_owned(), Vec::new()));
            }
            _ => match current.exchanges.last_mut() {
                Some((_, reply)) => reply.extend_from_slice(&bytes),
                None if bytes != b"\n" => {
                    let line = String::from_utf8(bytes).unwrap();
                    current.env.push(line.trim_end_matches('\n').to_owned());
                }
                None => {}
            },
        }
    }
    out
}

/// The emulator, given the captured caller's behaviour, answers the captured commands with
/// the captured bytes.
async fn emulator_replays(captured: &Captured, actions: Vec<Action>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut call = Call::with_env(captured.env.clone());
    for a in actions {
        call = call.then(a);
    }
    let peer = tokio::spawn(call.run(addr));
    let (stream, _) = listener.accept().await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut env = Vec::new();
    loop {
        let mut line = String::new();
        read.read_line(&mut line).await.unwrap();
        if line == "\n" {
            break;
        }
        env.push(line.trim_end_matches('\n').to_owned());
    }
    assert_eq!(env, captured.env);
    for (command, expected) in &captured.exchanges {
        write
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        let mut got = vec![0; expected.len()];
        tokio::time::timeout(Duration::from_secs(5), read.read_exact(&mut got))
            .await
            .unwrap_or_else(|_| panic!("no reply to {command}"))
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected),
            "reply to {command}"
        );
    }
    drop(write);
    drop(read);
    let transcript = peer.await.unwrap().unwrap();
    assert!(transcript.closed_by_daemon);
    assert_eq!(transcript.commands.len(), captured.exchanges.len());
}

fn dtmf_caller() -> Vec<Action> {
    // Session 1's caller: 1234# during GET DATA, 5 during WAIT FOR DIGIT, # during RECORD.
    vec![
        Action::Press("1234#".into()),
        Action::Press("5".into()),
        Action::Press("#".into()),
    ]
}

#[tokio::test]
async fn emulator_matches_the_dtmf_sessions() {
    let all = sessions("asterisk-agi-session.txt");
    assert_eq!(all.len(), 5);
    for i in [0, 3, 4] {
        emulator_replays(&all[i], dtmf_caller()).await;
    }
}

#[tokio::test]
async fn emulator_matches_the_timeout_session() {
    let all = sessions("asterisk-agi-session.txt");
    let caller = vec![Action::Press("12".into()), Action::Silence, Action::Silence];
    emulator_replays(&all[1], caller).await;
}

#[tokio::test]
async fn emulator_matches_the_hangup_session() {
    let all = sessions("asterisk-agi-hangup.txt");
    assert_eq!(all.len(), 1);
    emulator_replays(&all[0], vec![Action::HangUp]).await;
}

#[test]
fn every_captured_reply_line_parses() {
    let mut lines = 0;
    for file in ["asterisk-agi-session.txt", "asterisk-agi-hangup.txt"] {
        for s in sessions(file) {
            for (_, reply) in &s.exchanges {
                for line in String::from_utf8(reply.clone()).unwrap().lines() {
                    parse_line(line).unwrap_or_else(|e| panic!("{e}"));
                    lines += 1;
                }
            }
        }
    }
    assert!(lines > 100, "{lines}");
}

/// The daemon's session layer against the captured bytes: typed calls send exactly the
/// captured commands and read the captured replies right.
#[tokio::test]
async fn session_layer_speaks_the_captured_hangup_call() {
    let captured = sessions("asterisk-agi-hangup.txt").remove(0);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let env = captured.env.clone();
    let exchanges = captured.exchanges.clone();
    let asterisk = tokio::spawn(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        write
            .write_all(format!("{}\n\n", env.join("\n")).as_bytes())
            .await
            .unwrap();
        let mut sent = Vec::new();
        let mut replies = exchanges.into_iter();
        loop {
            let mut line = String::new();
            if read.read_line(&mut line).await.unwrap() == 0 {
                return sent;
            }
            let line = line.trim_end().to_owned();
            // The session asks CHANNEL STATUS to tell a hang-up from a failed prompt. On the
            // dead channel Asterisk answers it as it answered the capture's next command
            // (WAIT FOR DIGIT): the pending HANGUP line, then 511.
            let reply = match replies.next() {
                Some((command, reply)) if command == line || line == "CHANNEL STATUS" => reply,
                other => panic!("unexpected {line:?}, capture has {other:?}"),
            };
            write.write_all(&reply).await.unwrap();
            sent.push(line);
        }
    });
    let (stream, _) = listener.accept().await.unwrap();
    let t = Timeouts {
        env: Duration::from_secs(2),
        reply: Duration::from_secs(2),
    };
    let mut s = Session::accept(stream, t).await.unwrap();
    assert_eq!(s.env().script(), "verify");
    assert_eq!(s.env().uniqueid(), "1795786054.3");
    s.answer().await.unwrap();
    assert_eq!(s.stream_file("beep", "").await.unwrap(), None);
    let err = s
        .get_data("beep", Duration::from_millis(3000), 6)
        .await
        .unwrap_err();
    assert!(err.is_hangup());
    assert!(s.hung_up());
    s.close().await;
    let sent = asterisk.await.unwrap();
    assert_eq!(
        sent,
        [
            "ANSWER",
            r#"STREAM FILE beep """#,
            "GET DATA beep 3000 6",
            "CHANNEL STATUS"
        ]
    );
    // And the raw escape hatch reads the rest of the capture's replies as they are.
    let captured = sessions("asterisk-agi-hangup.txt").remove(0);
    let (command, reply) = &captured.exchanges[3];
    assert_eq!(command, "WAIT FOR DIGIT 2000");
    let text = String::from_utf8(reply.clone()).unwrap();
    let kinds: Vec<_> = text.lines().map(|l| parse_line(l).unwrap()).collect();
    assert_eq!(kinds[0], Line::Hangup);
    assert!(matches!(kinds[1], Line::Final(Reply::DeadChannel(_))));
}
