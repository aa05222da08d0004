//! `callverify probe` against real SIP peers: Debian's sipp (package sip-tester) as UAS and
//! UAC, and the test's own UDP sockets where a peer must stay silent, send garbage, or show
//! what crossed the wire. The tests fail (never skip) when sipp is missing.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

const SIPP_PCAPS: &str = "/usr/share/sip-tester";

fn fixture(name: &Path) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/probe")
        .join(name)
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A sipp process, killed when dropped.
struct Sipp(Child);

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts sipp on a free port with a scenario of tests/fixtures/probe (or a path) and -key pairs.
fn sipp(
    scenario: impl AsRef<Path>,
    keys: &[(&str, &str)],
    extra: &[&str],
    remote: Option<String>,
) -> (Sipp, u16) {
    assert!(
        Command::new("sipp")
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok(),
        "sipp is not installed: the probe's tests need a real SIP peer \
         (Debian: apt-get install sip-tester; ./scripts/test installs it)"
    );
    // A free port can be taken again before sipp binds it (by a parallel test, or as sipp's
    // own media port): sipp then exits at once with its socket error, and we try new ports.
    let mut failures = Vec::new();
    for _ in 0..5 {
        let port = free_udp_port();
        let media_port = loop {
            let candidate = free_udp_port();
            if candidate.abs_diff(port) > 2 {
                break candidate;
            }
        };
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut command = Command::new("sipp");
        command
            .arg("-sf")
            .arg(fixture(scenario.as_ref()))
            .args([
                "-i",
                "127.0.0.1",
                "-mi",
                "127.0.0.1",
                "-m",
                "1",
                "-timeout",
                "30s",
                "-nostdin",
            ])
            .args(["-p", &port.to_string(), "-mp", &media_port.to_string()])
            .args(extra);
        for (k, v) in keys {
            // sipp does not expand keywords inside -key values: "MEDIA_PORT" stands for its own.
            let v = if *v == "MEDIA_PORT" {
                media_port.to_string()
            } else {
                v.to_string()
            };
            command.args(["-key", k, &v]);
        }
        if let Some(remote) = &remote {
            command.arg(remote);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("starting sipp");
        match wait_until_sipp_binds(&mut child, port) {
            Ok(()) => return (Sipp(child), port),
            Err(status) => {
                failures.push(format!(
                "sipp on port {port} (media {media_port}) exited with {status} before binding: {}",
                std::fs::read_to_string(log.path()).unwrap_or_default().trim()
            ))
            }
        }
    }
    panic!("sipp did not start:\n{}", failures.join("\n"));
}

/// Waits until sipp holds its SIP port, or returns its exit status when it ended with one of
/// its start-up failures (255: fatal error, 254: a socket could not be bound). Any other exit
/// is a scenario that ran to its end before we looked (a quick UAC), which counts as started.
/// sipp binds its media ports just after the SIP port (or the SIP port was someone else's),
/// so a start-up failure is looked for a moment longer once the port is held.
fn wait_until_sipp_binds(child: &mut Child, port: u16) -> Result<(), std::process::ExitStatus> {
    let failed = |child: &mut Child| match child.try_wait().unwrap() {
        Some(status) if matches!(status.code(), Some(254 | 255)) => Err(status),
        _ => Ok(()),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while UdpSocket::bind(("127.0.0.1", port)).is_ok() {
        if child.try_wait().unwrap().is_some() {
            return failed(child);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sipp has not bound 127.0.0.1:{port} in 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    failed(child)
}

/// Wait until a process of the test holds the UDP address (a bind of ours then fails): a
/// loaded machine can take a while to start it, and a request sent before meets a closed port.
fn wait_until_bound(addr: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while UdpSocket::bind(addr).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing bound {addr} in 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts sipp as the called party and calls it: `probe call sip:100@sipp --timeout 5 ARGS`.
fn call_sipp(
    scenario: impl AsRef<Path>,
    keys: &[(&str, &str)],
    flags: &[&str],
    args: &[&str],
) -> (Sipp, i32, Value) {
    let (sipp, port) = sipp(scenario, keys, flags, None);
    let target = format!("sip:100@127.0.0.1:{port}");
    let (code, report) = probe(&[&["call", &target, "--timeout", "5"][..], args].concat());
    (sipp, code, report)
}

/// Runs the probe with a generous hang guard; returns its exit code, stdout and stderr.
fn run_probe(args: &[&str]) -> (i32, String, String) {
    run_probe_with_env(args, &[])
}

/// `run_probe` with environment variables set for the probe.
fn run_probe_with_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_callverify"))
        .arg("probe")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting callverify probe");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("callverify probe {args:?} hung for 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(out.stdout),
        text(out.stderr),
    )
}

/// Runs the probe with --json; returns its exit code and report.
fn probe(args: &[&str]) -> (i32, Value) {
    let (code, stdout, stderr) = run_probe(&[args, &["--json"]].concat());
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}); stdout: {stdout}\nstderr: {stderr}"));
    (code, report)
}

/// One second of a 440 Hz tone then one of silence: a "prompt" for the echo.
fn tone_wav(dir: &Path) -> PathBuf {
    let samples: Vec<i16> = (0..16000)
        .map(|i| {
            if i < 8000 {
                ((i as f64 * 440.0 * std::f64::consts::TAU / 8000.0).sin() * 8000.0) as i16
            } else {
                0
            }
        })
        .collect();
    let path = dir.join("tone.wav");
    callverify_audio::wav::write(&path, &samples).unwrap();
    path
}

/// The recording is audible: some 20 ms frame is louder than -25 dBFS (the tone is -12).
fn assert_holds_the_tone(recording: &Path) {
    let heard = callverify_audio::wav::read(recording).unwrap();
    let loudest = heard
        .chunks(160)
        .map(callverify_probe::vad::level_dbfs)
        .fold(f64::MIN, f64::max);
    assert!(
        loudest > -25.0,
        "the recording holds the tone (loudest frame {loudest} dBFS)"
    );
}

fn keys_received(report: &Value) -> String {
    report["keys_received"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_call_to_an_echoing_sipp_records_audible_audio_and_its_own_key_presses() {
    let dir = tempfile::tempdir().unwrap();
    let tone = tone_wav(dir.path());
    let record = dir.path().join("heard.wav");
    let (mut sipp, code, report) = call_sipp(
        "uas_answer.xml",
        &[("rtp_port", "MEDIA_PORT")],
        &["-rtp_echo"],
        &[
            "--play",
            tone.to_str().unwrap(),
            "--keys",
            "#42",
            "--record",
            record.to_str().unwrap(),
            "--linger",
            "1",
        ],
    );
    assert_eq!(code, 0, "{report:#}");
    assert!(
        sipp.0.wait().unwrap().success(),
        "sipp's scenario passed (the BYE carried the Record-Route set, reversed)"
    );
    assert_eq!(report["codec"], "PCMU");
    assert_eq!(report["event_payload_type"], 101);
    assert_eq!(
        keys_received(&report),
        "#42",
        "the echo carried the probe's RFC 4733 events back: {report:#}"
    );
    assert!(
        !report["prompts"].as_array().unwrap().is_empty(),
        "the echoed tone is a prompt: {report:#}"
    );
    assert_eq!(report["hangup"]["by"], "probe");
    assert_eq!(report["hangup"]["bye_code"], 200);
    assert!(
        report["rtp"]["packets_received"].as_u64().unwrap() > 50,
        "{report:#}"
    );
    assert_holds_the_tone(&record);
}

/// A UDP socket standing in for the peer's RTP, and its port (for sipp's -key rtp_port).
fn rtp_socket(read_timeout: Duration) -> (UdpSocket, String) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(read_timeout)).unwrap();
    let port = socket.local_addr().unwrap().port().to_string();
    (socket, port)
}

/// `probe call TARGET --script SCRIPT --rtp-timeout RTP_TIMEOUT --timeout 5`.
fn call_with_script(target: &str, script: &Path, rtp_timeout: &str) -> (i32, Value) {
    let script = script.to_str().unwrap();
    let args = [
        "call",
        target,
        "--script",
        script,
        "--rtp-timeout",
        rtp_timeout,
    ];
    probe(&[&args[..], &["--timeout", "5"]].concat())
}

/// A script file (`--script`) holding `text`.
fn script_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("press.script");
    std::fs::write(&path, text).unwrap();
    path
}

fn sequence_numbers<'a>(packets: impl Iterator<Item = &'a rtp_rs::RtpReader<'a>>) -> Vec<u16> {
    packets.map(|p| u16::from(p.sequence_number())).collect()
}

fn consecutive(seqs: &[u16]) -> bool {
    seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1))
}

#[test]
fn key_presses_cross_the_wire_as_rfc4733_events() {
    let (sink, sink_port) = rtp_socket(Duration::from_millis(200));
    let (_sipp, port) = sipp("uas_answer.xml", &[("rtp_port", &sink_port)], &[], None);
    let dir = tempfile::tempdir().unwrap();
    let script = script_file(dir.path(), "wait 0.2\npress 5#\nwait 0.2\nhangup\n");
    let target = format!("sip:100@127.0.0.1:{port}");
    let capture = std::thread::spawn(move || {
        let mut packets = Vec::new();
        let mut buf = [0u8; 2048];
        let until = std::time::Instant::now() + Duration::from_secs(20);
        let mut idle = 0;
        while std::time::Instant::now() < until && idle < 10 {
            match sink.recv(&mut buf) {
                Ok(n) => {
                    idle = 0;
                    packets.push(buf[..n].to_vec())
                }
                Err(_) => idle += usize::from(!packets.is_empty()),
            }
        }
        packets
    });
    let (code, report) = call_with_script(&target, &script, "0");
    assert_eq!(code, 0, "{report:#}");
    let packets = capture.join().unwrap();
    let events: Vec<rtp_rs::RtpReader> = packets
        .iter()
        .map(|p| rtp_rs::RtpReader::new(p).expect("only RTP reaches the sink"))
        .filter(|r| r.payload_type() == 101)
        .collect();
    // Per key: start (marker) + continuations every 20 ms for 100 ms, then three end packets.
    let mut presses: Vec<Vec<&rtp_rs::RtpReader>> = Vec::new();
    for e in &events {
        match presses.last_mut() {
            Some(p) if p[0].timestamp() == e.timestamp() => p.push(e),
            _ => presses.push(vec![e]),
        }
    }
    assert_eq!(presses.len(), 2, "two key presses, one timestamp each");
    for (press, code) in presses.iter().zip([5u8, 11]) {
        let payloads: Vec<&[u8]> = press.iter().map(|p| p.payload()).collect();
        assert!(payloads.iter().all(|p| p[0] == code), "event code {code}");
        assert!(
            press[0].mark() && press[1..].iter().all(|p| !p.mark()),
            "marker on the first packet only"
        );
        let ends: Vec<&&[u8]> = payloads.iter().filter(|p| p[1] & 0x80 != 0).collect();
        assert_eq!(ends.len(), 3, "three end packets");
        assert!(
            payloads[payloads.len() - 3..]
                .iter()
                .all(|p| p[1] & 0x80 != 0),
            "the end packets come last"
        );
        let durations: Vec<u16> = payloads
            .iter()
            .map(|p| u16::from_be_bytes([p[2], p[3]]))
            .collect();
        assert!(
            durations.windows(2).all(|w| w[0] <= w[1]),
            "durations grow: {durations:?}"
        );
        assert_eq!(*durations.last().unwrap(), 800, "100 ms at 8 kHz");
        let seqs = sequence_numbers(press.iter().copied());
        assert!(consecutive(&seqs), "consecutive sequence numbers");
    }
    // Audio and events are one stream: sequence numbers run on across both; an event takes
    // the audio's timestamp at its start (the last audio packet's plus one frame), and audio
    // comes back after it, its media time moved on.
    let stream: Vec<rtp_rs::RtpReader> = packets
        .iter()
        .map(|p| rtp_rs::RtpReader::new(p).unwrap())
        .collect();
    let seqs = sequence_numbers(stream.iter());
    assert!(
        consecutive(&seqs),
        "sequence numbers continue across audio and events: {seqs:?}"
    );
    let at = |packet: &rtp_rs::RtpReader| {
        let seq = u16::from(packet.sequence_number());
        seqs.iter().position(|s| *s == seq).unwrap()
    };
    for press in &presses {
        let (first, last) = (at(press[0]), at(press[press.len() - 1]));
        let audio_before = stream[..first]
            .iter()
            .rev()
            .find(|p| p.payload_type() == 0)
            .expect("audio before the key press");
        assert_eq!(
            press[0].timestamp(),
            audio_before.timestamp().wrapping_add(160),
            "the event starts at the audio's timestamp"
        );
        let audio_after = stream[last + 1..]
            .iter()
            .find(|p| p.payload_type() == 0)
            .expect("audio resumes after the key press");
        let moved_on = audio_after.timestamp().wrapping_sub(press[0].timestamp());
        assert!(
            (800..8000).contains(&moved_on),
            "the resumed audio's timestamp is past the event's duration: {moved_on}"
        );
    }
    assert_eq!(report["keys_sent"].as_array().unwrap().len(), 1);
}

#[test]
fn rfc4733_events_from_a_sipp_capture_are_detected_and_rtp_that_stops_fails_the_call() {
    let pcap = format!("{SIPP_PCAPS}/dtmf_2833_1.pcap");
    let (_sipp, code, report) = call_sipp(
        "uas_play.xml",
        &[("rtp_port", "MEDIA_PORT"), ("pcap", &pcap)],
        &[],
        &["--rtp-timeout", "1.5", "--linger", "20"],
    );
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["error"]["kind"], "rtp_timeout", "{report:#}");
    assert_eq!(keys_received(&report), "1", "{report:#}");
    assert_eq!(report["hangup"]["by"], "probe");
    assert_eq!(report["hangup"]["bye_code"], 200);
}

#[test]
fn refusals_give_their_kind_and_a_failing_exit() {
    for (status, reason, kind) in [
        ("486", "Busy Here", "busy"),
        ("503", "Service Unavailable", "unavailable"),
        ("403", "Forbidden", "forbidden"),
        ("488", "Not Acceptable Here", "codec_mismatch"),
    ] {
        // sipp reads a response's status code when it loads the scenario, not from -key.
        let dir = tempfile::tempdir().unwrap();
        let scenario = dir.path().join("refuse.xml");
        let text = std::fs::read_to_string(fixture(Path::new("uas_refuse.xml"))).unwrap();
        std::fs::write(
            &scenario,
            text.replace("CODE REASON", &format!("{status} {reason}")),
        )
        .unwrap();
        let (mut sipp, code, report) = call_sipp(&scenario, &[], &[], &[]);
        assert_eq!(code, 1, "{report:#}");
        assert_eq!(report["error"]["kind"], kind, "{report:#}");
        assert_eq!(report["sip"]["final_code"], status.parse::<u16>().unwrap());
        assert!(
            sipp.0.wait().unwrap().success(),
            "{status}: sipp got the ACK of its refusal"
        );
    }
}

/// --user qa --password PASSWORD, hanging up half a second after the answer.
fn credentials(password: &str) -> [&str; 6] {
    [
        "--user",
        "qa",
        "--password",
        password,
        "--hangup-after",
        "0.5",
    ]
}

#[test]
fn digest_authentication_answers_the_challenge() {
    // sipp checks the digest of the second INVITE: 200 for the right password, else 403.
    let md5 = r#"Digest realm="callverify-test", nonce="5f1d0c2a9b", algorithm=MD5"#;
    // The usual Asterisk/Kamailio form: a qop list, which the probe answers with qop=auth.
    let qop = r#"Digest realm="callverify-test", nonce="7a3e91c4", qop="auth,auth-int""#;
    for (challenge, password, exit, final_code) in [
        (md5, "secret", 0, 200),
        (md5, "wrong", 1, 403),
        (qop, "secret", 0, 200),
        (qop, "wrong", 1, 403),
    ] {
        let args = credentials(password);
        let keys = [("challenge", challenge)];
        let (mut sipp, code, report) = call_sipp("uas_auth.xml", &keys, &[], &args);
        assert_eq!(code, exit, "{challenge}: {report:#}");
        assert_eq!(report["sip"]["auth_challenges"], 1);
        assert_eq!(report["sip"]["final_code"], final_code, "{report:#}");
        if exit != 0 {
            assert_eq!(report["error"]["kind"], "forbidden");
        }
        assert!(
            sipp.0.wait().unwrap().success(),
            "{challenge}: sipp's scenario ran through"
        );
    }
}

#[test]
fn a_proxy_challenge_then_the_pbxs_are_answered_with_both_credentials() {
    // sipp checks the Proxy-Authorization's form (qop=auth as a token, nc, cnonce, opaque) on
    // the second and third INVITE, and the digest of the third's Authorization: 200 for the
    // right password; the wrong one is challenged again, which is wrong credentials, not a loop.
    for (password, exit, final_code) in [("secret", 0, 200), ("wrong", 1, 401)] {
        let args = credentials(password);
        let (mut sipp, code, report) = call_sipp("uas_proxy_auth.xml", &[], &[], &args);
        assert_eq!(code, exit, "{report:#}");
        assert_eq!(report["sip"]["final_code"], final_code, "{report:#}");
        if exit == 0 {
            assert_eq!(report["sip"]["auth_challenges"], 2, "{report:#}");
        } else {
            assert_eq!(report["sip"]["auth_challenges"], 3, "{report:#}");
            assert_eq!(report["error"]["kind"], "forbidden");
            let message = report["error"]["message"].as_str().unwrap();
            assert!(message.contains("wrong credentials"), "{message}");
        }
        assert!(
            sipp.0.wait().unwrap().success(),
            "{password}: sipp saw both credentials and the ACK of each challenge"
        );
    }
}

/// The probe is no daemon: a broken daemon setting in the environment (or callverify.toml)
/// changes neither its exit codes nor its own CALLVERIFY_PROBE_PASSWORD.
#[test]
fn the_daemons_configuration_does_not_touch_the_probe() {
    let env = [
        ("CALLVERIFY_AGI_LISTEN", "nowhere"),
        ("CALLVERIFY_PROBE_PASSWORD", "secret"),
        ("RUST_LOG", "info"),
    ];
    let (code, _, stderr) = run_probe_with_env(&["call", "mailto:someone"], &env);
    assert_eq!(code, 2, "a usage error stays exit 2: {stderr}");
    assert!(stderr.contains("not a SIP URI"), "{stderr}");
    let challenge = r#"Digest realm="callverify-test", nonce="5f1d0c2a9b", algorithm=MD5"#;
    let (mut sipp, port) = sipp("uas_auth.xml", &[("challenge", challenge)], &[], None);
    let target = format!("sip:100@127.0.0.1:{port}");
    let args = ["call", &target, "--timeout", "5", "--user", "qa"];
    let args = [&args[..], &["--hangup-after", "0.5", "--json"]].concat();
    let (code, stdout, stderr) = run_probe_with_env(&args, &env);
    assert_eq!(
        code, 0,
        "the password came from the environment: {stdout}\n{stderr}"
    );
    assert!(!stderr.contains("no such setting"), "{stderr}");
    assert!(sipp.0.wait().unwrap().success(), "sipp took the digest");
}

#[test]
fn a_silent_peer_and_a_peer_sending_garbage_fail_after_the_timeout() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = format!("sip:100@{}", silent.local_addr().unwrap());
    let (code, report) = probe(&["call", &target, "--timeout", "1"]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["error"]["kind"], "timeout");
    assert!(
        report["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no response to INVITE"),
        "{report:#}"
    );

    // Not SIP at all; and SIP that belongs to no transaction (no Via, no CSeq).
    let replies: [&[u8]; 2] = [
        b"SIP/2.0 OK but not really\r\nthis is not SIP\r\n\r\n",
        b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    ];
    for reply in replies {
        let garbage = UdpSocket::bind("127.0.0.1:0").unwrap();
        garbage
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let target = format!("sip:100@{}", garbage.local_addr().unwrap());
        let answerer = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            if let Ok((_, from)) = garbage.recv_from(&mut buf) {
                garbage.send_to(reply, from).unwrap();
            }
        });
        let (code, report) = probe(&["call", &target, "--timeout", "1"]);
        answerer.join().unwrap();
        assert_eq!(code, 1, "{report:#}");
        assert_eq!(report["error"]["kind"], "malformed_sip", "{report:#}");
    }
}

/// A response to `request` (SIP text): its Via, From, Call-ID and CSeq (with `method` for the
/// CSeq's), and To with a tag.
fn reply_to(request: &str, status: &str, method: &str) -> String {
    let mut reply = format!("SIP/2.0 {status}\r\n");
    for line in request.lines() {
        let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
        match name.as_str() {
            "via" | "from" | "call-id" => reply.push_str(&format!("{line}\r\n")),
            "to" => reply.push_str(&format!("{line};tag=peer1\r\n")),
            "cseq" => {
                let number = line[5..].split_whitespace().next().unwrap();
                reply.push_str(&format!("CSeq: {number} {method}\r\n"));
            }
            _ => {}
        }
    }
    reply + "Content-Length: 0\r\n\r\n"
}

/// Interrupted before any provisional response, the probe must not CANCEL (RFC 3261 §9.1)
/// until one comes; then it CANCELs and ACKs the 487.
#[test]
fn an_interrupted_call_cancels_only_after_a_provisional_response() {
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let target = format!("sip:100@{}", peer.local_addr().unwrap());
    let child = Command::new(env!("CARGO_BIN_EXE_callverify"))
        .args(["probe", "call", &target, "--timeout", "5", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 4096];
    let receive = |buf: &mut [u8], within: Duration| {
        let until = std::time::Instant::now() + within;
        let mut got = Vec::new();
        while std::time::Instant::now() < until {
            if let Ok((n, from)) = peer.recv_from(buf) {
                got.push((String::from_utf8_lossy(&buf[..n]).into_owned(), from));
            }
        }
        got
    };
    let (invite, from) = receive(&mut buf, Duration::from_secs(2))
        .into_iter()
        .next()
        .expect("the INVITE");
    assert!(invite.starts_with("INVITE "), "{invite}");
    let interrupt = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupt.success());
    let before = receive(&mut buf, Duration::from_secs(1));
    assert!(
        before.iter().all(|(m, _)| !m.starts_with("CANCEL ")),
        "no CANCEL before a provisional response: {before:?}"
    );
    peer.send_to(reply_to(&invite, "180 Ringing", "INVITE").as_bytes(), from)
        .unwrap();
    let after = receive(&mut buf, Duration::from_secs(2));
    let (cancel, _) = after
        .iter()
        .find(|(m, _)| m.starts_with("CANCEL "))
        .expect("a CANCEL once the peer rang");
    peer.send_to(reply_to(cancel, "200 OK", "CANCEL").as_bytes(), from)
        .unwrap();
    let terminated = reply_to(&invite, "487 Request Terminated", "INVITE");
    peer.send_to(terminated.as_bytes(), from).unwrap();
    let acked = receive(&mut buf, Duration::from_secs(2));
    assert!(
        acked.iter().any(|(m, _)| m.starts_with("ACK ")),
        "the 487 is acknowledged: {acked:?}"
    );
    let out = child.wait_with_output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    assert_eq!(report["error"]["kind"], "interrupted", "{report:#}");
}

/// Starts `probe answer ARGS` on a free port, has sipp call it with a UAC scenario, and
/// returns whether sipp's scenario completed, with the probe's exit code and report.
fn answer_sipp(scenario: &str, keys: &[(&str, &str)], args: &[&str]) -> (bool, i32, Value) {
    let listen = format!("127.0.0.1:{}", free_udp_port());
    let answering = {
        let listen = listen.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            probe(
                &[
                    &["answer", "--listen", &listen, "--wait-call", "20"][..],
                    &args,
                ]
                .concat(),
            )
        })
    };
    wait_until_bound(&listen);
    let (mut sipp, _) = sipp(scenario, keys, &["-s", "100"], Some(listen));
    let (code, report) = answering.join().unwrap();
    (sipp.0.wait().unwrap().success(), code, report)
}

#[test]
fn probe_answer_takes_a_call_from_sipp_and_hears_its_key_press() {
    let pcap = format!("{SIPP_PCAPS}/dtmf_2833_1.pcap");
    let (sipp_ok, code, report) = answer_sipp(
        "uac_play.xml",
        &[("pcap", &pcap)],
        &["--rtp-timeout", "0", "--linger", "20"],
    );
    assert_eq!(code, 0, "{report:#}");
    assert!(
        sipp_ok,
        "sipp's scenario completed (INVITE, 200, ACK, BYE, 200)"
    );
    assert_eq!(report["role"], "uas");
    assert_eq!(report["codec"], "PCMU");
    assert_eq!(keys_received(&report), "1", "{report:#}");
    assert_eq!(report["hangup"]["by"], "peer");
}

#[test]
fn probe_answer_refuses_an_offer_without_a_common_codec_with_488() {
    let (sipp_ok, code, report) = answer_sipp("uac_g729.xml", &[], &[]);
    assert_eq!(code, 1, "{report:#}");
    assert!(sipp_ok, "sipp got its 488 and sent the ACK");
    assert_eq!(report["error"]["kind"], "codec_mismatch", "{report:#}");
    assert_eq!(report["sip"]["final_code"], 488);
}

#[test]
fn ringing_without_an_answer_is_canceled() {
    let (mut sipp, code, report) = call_sipp("uas_ring.xml", &[], &[], &["--ring-timeout", "1"]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["error"]["kind"], "no_answer", "{report:#}");
    assert!(
        report["sip"]["post_dial_delay_ms"].is_u64(),
        "the 180 counts: {report:#}"
    );
    let status = sipp.0.wait().unwrap();
    assert!(
        status.success(),
        "sipp saw CANCEL, sent 487 and got its ACK"
    );
}

/// The 200 to the INVITE crosses the probe's CANCEL: the call is up after all, so the probe
/// ACKs it and hangs up (sipp fails without the ACK and the BYE).
#[test]
fn an_answer_crossing_the_cancel_is_acknowledged_and_hung_up() {
    let args = ["--ring-timeout", "1"];
    let (mut sipp, code, report) = call_sipp("uas_cancel_race.xml", &[], &[], &args);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["error"]["kind"], "no_answer", "{report:#}");
    let message = report["error"]["message"].as_str().unwrap();
    assert!(message.contains("crossed"), "{message}");
    assert!(
        sipp.0.wait().unwrap().success(),
        "sipp got the ACK of its 200 and a BYE"
    );
}

#[test]
fn an_answer_without_a_common_codec_is_acknowledged_and_hung_up() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("g729.xml");
    let text = std::fs::read_to_string(fixture(Path::new("uas_answer.xml"))).unwrap();
    let g729 = text
        .replace("RTP/AVP 0 101", "RTP/AVP 18")
        .replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:18 G729/8000");
    std::fs::write(&scenario, g729).unwrap();
    let (mut sipp, code, report) = call_sipp(&scenario, &[("rtp_port", "MEDIA_PORT")], &[], &[]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["error"]["kind"], "codec_mismatch", "{report:#}");
    assert!(
        report["error"]["message"]
            .as_str()
            .unwrap()
            .contains("G729/8000"),
        "{report:#}"
    );
    assert!(
        sipp.0.wait().unwrap().success(),
        "sipp got the ACK and the BYE"
    );
}

#[test]
fn load_mode_places_the_calls_and_summarizes_them() {
    let (_sipp, code, summary) = call_sipp(
        "uas_answer.xml",
        &[("rtp_port", "MEDIA_PORT")],
        &["-rtp_echo", "-m", "3"],
        &["--calls", "3", "--rate", "10", "--hangup-after", "0.5"],
    );
    assert_eq!(code, 0, "{summary:#}");
    assert_eq!(summary["calls"], 3);
    assert_eq!(summary["succeeded"], 3);
    assert_eq!(summary["success_rate"], 1.0);
    assert!(summary["answer_ms"]["p99"].is_u64(), "{summary:#}");
}

#[cfg(feature = "opus")]
#[test]
fn two_probes_talk_opus_and_hear_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let tone = tone_wav(dir.path());
    let listen = format!("127.0.0.1:{}", free_udp_port());
    let answering = {
        let (listen, tone) = (listen.clone(), tone.clone());
        std::thread::spawn(move || {
            probe(&[
                "answer",
                "--listen",
                &listen,
                "--codec",
                "opus",
                "--play",
                tone.to_str().unwrap(),
                "--wait-call",
                "20",
                "--linger",
                "20",
                "--rtp-timeout",
                "0",
            ])
        })
    };
    wait_until_bound(&listen);
    let record = dir.path().join("heard.wav");
    let target = format!("sip:100@{listen}");
    let (code, report) = probe(&[
        "call",
        &target,
        "--codec",
        "opus",
        "--keys",
        "#",
        "--record",
        record.to_str().unwrap(),
        "--linger",
        "0.5",
        "--timeout",
        "5",
    ]);
    let (answer_code, answered) = answering.join().unwrap();
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(answer_code, 0, "{answered:#}");
    assert_eq!(report["codec"], "opus");
    assert_eq!(report["event_payload_type"], 110);
    assert_eq!(keys_received(&answered), "#", "{answered:#}");
    assert_eq!(answered["hangup"]["by"], "peer");
    assert_holds_the_tone(&record);
}

#[test]
fn usage_and_local_errors_exit_2_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let not_wav = dir.path().join("not.wav");
    std::fs::write(&not_wav, "hello").unwrap();
    let port = free_udp_port().to_string();
    let target = format!("sip:100@127.0.0.1:{port}");
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    for (args, says) in [
        (vec!["call", &target, "--codec", "g729"], "unknown codec"),
        (
            vec!["call", &target, "--play", not_wav.to_str().unwrap()],
            "not a WAV file",
        ),
        (vec!["call", &target, "--keys", "12x"], "no DTMF keys"),
        (
            vec!["call", "mailto:someone", "--timeout", "1"],
            "not a SIP URI",
        ),
        (vec!["answer", "--listen", &taken], "cannot listen"),
        (
            vec!["call", &target, "--calls", "2", "--rate", "1e12"],
            "--rate must be",
        ),
        (vec!["call", &target, "--wait=-1"], "--wait takes seconds"),
        (
            vec!["call", &target, "--wait", "NaN"],
            "--wait takes seconds",
        ),
    ] {
        let (code, _, stderr) = run_probe(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn re_invites_move_the_media_or_are_refused_with_488() {
    let dir = tempfile::tempdir().unwrap();
    let tone = tone_wav(dir.path());
    let record = dir.path().join("heard.wav");
    // The first answer sends the probe's RTP to a socket that never answers; only after the
    // re-INVITE does it reach sipp's echo.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port().to_string();
    let (mut sipp, code, report) = call_sipp(
        "uas_reinvite.xml",
        &[("rtp_port", &silent_port)],
        &["-rtp_echo"],
        &[
            "--play",
            tone.to_str().unwrap(),
            "--record",
            record.to_str().unwrap(),
        ]
        .into_iter()
        .chain(["--rtp-timeout", "0", "--hangup-after", "2.5"])
        .collect::<Vec<_>>(),
    );
    assert_eq!(code, 0, "{report:#}");
    assert!(
        sipp.0.wait().unwrap().success(),
        "sipp got 200 to the first re-INVITE and 488 to the second"
    );
    assert!(
        report["rtp"]["packets_received"].as_u64().unwrap() > 0,
        "the echo came back: {report:#}"
    );
    assert_holds_the_tone(&record);
}

/// A re-INVITE moving telephone-event from 101 to 96 is applied to both directions; hold
/// (a=sendonly) is answered a=recvonly, the probe goes quiet and its RTP timeout waits; an
/// UPDATE without SDP gets a 200 without one (sipp checks the answers).
#[test]
fn renegotiated_payload_types_and_hold_are_applied_to_the_media() {
    let (echo, echo_port) = rtp_socket(Duration::from_millis(20));
    let (mut sipp, port) = sipp(
        "uas_renegotiate.xml",
        &[("rtp_port", &echo_port)],
        &[],
        None,
    );
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    // Echoes the probe's RTP, with events re-labelled 96: the probe hears its key only if its
    // receiver took the new payload type too.
    let echoing = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 2048];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok((n, from)) = echo.recv_from(&mut buf) else {
                continue;
            };
            seen.push((std::time::Instant::now(), buf[1] & 0x7f));
            if matches!(buf[1] & 0x7f, 96 | 101) {
                buf[1] = (buf[1] & 0x80) | 96;
            }
            let _ = echo.send_to(&buf[..n], from);
        }
        seen
    });
    let dir = tempfile::tempdir().unwrap();
    let script = script_file(dir.path(), "wait 1\npress 5\nwait 3.6\nhangup\n");
    let target = format!("sip:100@127.0.0.1:{port}");
    let (code, report) = call_with_script(&target, &script, "1");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = echoing.join().unwrap();
    assert_eq!(code, 0, "no RTP timeout on hold: {report:#}");
    assert!(
        sipp.0.wait().unwrap().success(),
        "sipp saw telephone-event 96 in the answer, a=recvonly to the hold, a bare 200 to UPDATE"
    );
    let events: Vec<u8> = seen.iter().map(|s| s.1).filter(|&pt| pt != 0).collect();
    assert!(!events.is_empty(), "the key press crossed the wire");
    assert!(
        events.iter().all(|&pt| pt == 96),
        "events use the renegotiated payload type: {events:?}"
    );
    assert_eq!(keys_received(&report), "5", "{report:#}");
    let (longest_gap, at) = seen
        .windows(2)
        .map(|w| (w[1].0 - w[0].0, w[1].0))
        .max()
        .unwrap();
    assert!(
        longest_gap > Duration::from_millis(1200),
        "the probe was quiet on hold (longest gap {longest_gap:?})"
    );
    assert!(seen.last().unwrap().0 > at, "and sent again once resumed");
}

/// baresip, headless: auto-answers, plays `play` (it hangs up when the file ends) and logs
/// the RFC 4733 events it receives. Killed when dropped; its log is read afterwards.
struct Baresip {
    child: Child,
    log: PathBuf,
    port: u16,
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn baresip(dir: &Path, play: &Path) -> Baresip {
    assert!(
        Command::new("baresip").arg("-h").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok(),
        "baresip is not installed: this test calls a real softphone \
         (Debian: apt-get install --no-install-recommends baresip-core; ./scripts/test installs it)"
    );
    // A free port may be taken by another test before baresip binds it: then baresip
    // exits, and is started again on another (as sipp is, see `Sipp`).
    let mut tries = 0;
    loop {
        tries += 1;
        match start_baresip(dir, play) {
            Ok(baresip) => return baresip,
            Err(why) if tries < 3 => eprintln!("baresip did not start ({why}); again"),
            Err(why) => panic!("baresip did not start, {tries} times: {why}"),
        }
    }
}

/// One start of baresip on a free port: `Err` with its log when it exits or is not ready
/// within 20 s.
fn start_baresip(dir: &Path, play: &Path) -> Result<Baresip, String> {
    let port = free_udp_port();
    let config = format!(
        "poll_method epoll\nsip_listen 127.0.0.1:{port}\naudio_player aufile,{heard}\n\
         audio_source aufile,{play}\naudio_alert aufile,/dev/null\n\
         module_path /usr/lib/baresip/modules\nmodule g711.so\nmodule aufile.so\n\
         module account.so\nmodule menu.so\n",
        heard = dir.join("baresip-heard.wav").display(),
        play = play.display(),
    );
    std::fs::write(dir.join("config"), config).unwrap();
    std::fs::write(
        dir.join("accounts"),
        "<sip:qa@127.0.0.1>;regint=0;answermode=auto;audio_codecs=PCMU\n",
    )
    .unwrap();
    let log = dir.join("baresip.log");
    let child = Command::new("baresip")
        .arg("-f")
        .arg(dir)
        .args(["-t", "30"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting baresip");
    let mut baresip = Baresip { child, log, port };
    // baresip prints this once its SIP socket is up.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let printed = std::fs::read_to_string(&baresip.log).unwrap_or_default();
        if printed.contains("baresip is ready") {
            return Ok(baresip);
        }
        let exited = baresip.child.try_wait().ok().flatten();
        if exited.is_some() || std::time::Instant::now() > deadline {
            return Err(format!(
                "port {port}, {}, its log: {printed}",
                exited.map_or("not ready in 20 s".into(), |status| status.to_string())
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_call_to_baresip_hears_its_prompt_and_baresip_receives_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    // A one-second "prompt", then silence long enough for the keys.
    let mut samples = callverify_audio::wav::read(&tone_wav(dir.path())).unwrap();
    samples.resize(8000 * 8, 0);
    let prompt = dir.path().join("prompt.wav");
    callverify_audio::wav::write(&prompt, &samples).unwrap();
    let phone = baresip(dir.path(), &prompt);
    let target = format!("sip:qa@127.0.0.1:{}", phone.port);
    let (code, report) = probe(&[
        "call",
        &target,
        "--keys",
        "#12",
        "--linger",
        "0.5",
        "--timeout",
        "5",
    ]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["prompts"].as_array().unwrap().len(), 1, "{report:#}");
    assert_eq!(report["hangup"]["by"], "probe");
    let log_path = phone.log.clone();
    drop(phone);
    let log = std::fs::read_to_string(log_path).unwrap();
    let received: String = log
        .lines()
        .filter(|l| l.contains("(end=1)"))
        .filter_map(|l| l.split("received event: '").nth(1)?.chars().next())
        .collect();
    assert_eq!(received, "#12", "baresip's log of RFC 4733 events:\n{log}");
}

#[test]
fn probe_answer_takes_a_cancel_while_ringing() {
    let (sipp_ok, code, report) = answer_sipp("uac_cancel.xml", &[], &["--answer-after", "10"]);
    assert_eq!(code, 1, "{report:#}");
    assert!(sipp_ok, "sipp got 200 to its CANCEL and 487 to its INVITE");
    assert_eq!(report["error"]["kind"], "no_answer", "{report:#}");
    assert_eq!(report["sip"]["final_code"], 487);
}

#[test]
fn a_peer_hanging_up_mid_script_fails_the_call() {
    let (mut sipp, code, report) = call_sipp(
        "uas_bye.xml",
        &[("rtp_port", "MEDIA_PORT")],
        &[],
        &["--keys", "#", "--rtp-timeout", "0"],
    );
    assert_eq!(code, 1, "{report:#}");
    assert!(sipp.0.wait().unwrap().success(), "sipp's BYE got its 200");
    assert_eq!(report["error"]["kind"], "peer_hung_up", "{report:#}");
    assert_eq!(report["hangup"]["by"], "peer");
}
