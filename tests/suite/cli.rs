//! The `callverify` binary as admins and scripts use it, including a daemon killed with
//! SIGKILL mid-call and restarted.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use callverify::domain::status::CallOutcome;
use callverify::store::Store;
use callverify_testkit::emulator::ami::{AmiPeer, Callee};
use callverify_testkit::emulator::{Action, Call};

use crate::common::{Db, PHONE};
use serde_json::Value;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_callverify");

/// The binary, run in `dir` with a clean CALLVERIFY_* environment.
pub(crate) fn callverify(dir: &Path) -> Command {
    let mut cmd = in_clean_env(BIN, dir);
    cmd.env("RUST_LOG", "info");
    cmd
}

/// `program`, run in `dir` without the CALLVERIFY_* settings of the test's environment.
pub(crate) fn in_clean_env(program: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir);
    for (name, _) in std::env::vars() {
        if name.starts_with("CALLVERIFY_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

pub(crate) fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run callverify")
}

pub(crate) fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A folder with a new store in it, as `callverify migrate` creates it (the other commands
/// create none).
fn with_store() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    migrate(dir.path());
    dir
}

pub(crate) fn migrate(dir: &Path) {
    let out = run(callverify(dir).arg("migrate"));
    assert!(out.status.success(), "{}", stderr(&out));
}

fn start(dir: &Path, phone: &str, user: &str) -> Output {
    run(callverify(dir).args([
        "verify", "start", "--phone", phone, "--user", user, "--json",
    ]))
}

fn status(dir: &Path, id: &str) -> Value {
    let out = run(callverify(dir).args(["verify", "status", id, "--json"]));
    assert!(out.status.success(), "{}", stderr(&out));
    json(&out)
}

#[test]
fn start_prints_id_and_code_and_status_reads_it_back() {
    let dir = with_store();
    let out = start(dir.path(), "+14155550101", "alice");
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    let id = v["id"].as_str().unwrap();
    let code = v["code"].as_str().unwrap();
    assert!(id.starts_with("vf_"));
    assert_eq!(code.len(), 6);
    assert!(code.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(v["status"], "pending");
    assert!(v["expires_at"].as_str().unwrap().ends_with('Z'));
    // The store keeps no plain code, and status never shows it.
    let s = status(dir.path(), id);
    assert_eq!(s["status"], "pending");
    assert!(s.get("code").is_none());
    // The store and its key are the service user's alone.
    for (file, required) in [
        ("callverify.db", true),
        ("callverify.secret", true),
        // Present only while a connection is open.
        ("callverify.db-wal", false),
    ] {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(dir.path().join(file)) {
            Ok(m) => assert_eq!(m.permissions().mode() & 0o777, 0o600, "{file}"),
            Err(e) => assert!(!required, "{file}: {e}"),
        }
    }
    let db = std::fs::read(dir.path().join("callverify.db")).unwrap();
    let wal = std::fs::read(dir.path().join("callverify.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(!bytes.windows(code.len()).any(|w| w == code.as_bytes()));
    }
    // Human output too.
    let out = run(callverify(dir.path()).args(["verify", "status", id]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("status:             pending"));
    // Cancel.
    let out = run(callverify(dir.path()).args(["verify", "cancel", id, "--json"]));
    assert_eq!(json(&out)["status"], "canceled");
}

/// `staff add --admin --time-zone` and `staff set`: roles and zones, a wrong zone refused
/// before any account is made.
#[test]
fn staff_roles_and_time_zones() {
    use std::io::Write as _;
    let dir = with_store();
    let add = |args: &[&str]| {
        let mut child = callverify(dir.path())
            .args(["staff", "add"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "a long enough password").unwrap();
        child.wait_with_output().unwrap()
    };
    let out = add(&["dana", "--time-zone", "Mars/Olympus_Mons"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unknown time zone"),
        "{}",
        stderr(&out)
    );
    let out = add(&["dana", "--admin", "--time-zone", "Europe/Madrid"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = add(&["erik"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(callverify(dir.path()).args([
        "staff",
        "set",
        "erik",
        "--time-zone",
        "America/New_York",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(callverify(dir.path()).args(["staff", "list"]));
    let list = String::from_utf8_lossy(&out.stdout);
    let line = |name: &str| {
        list.lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .to_owned()
    };
    assert!(
        line("dana").contains("admin  Europe/Madrid  active"),
        "{list}"
    );
    assert!(
        line("erik").contains("agent  America/New_York  active"),
        "{list}"
    );
    let out = run(callverify(dir.path()).args(["staff", "set", "nobody", "--admin"]));
    assert_eq!(out.status.code(), Some(1));
    // A new password from stdin; disabled, then enabled again.
    let mut child = callverify(dir.path())
        .args(["staff", "passwd", "erik"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "another long enough password").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("sessions ended"));
    for (command, code) in [("disable", 0), ("enable", 0), ("enable", 1)] {
        let out = run(callverify(dir.path()).args(["staff", command, "erik"]));
        assert_eq!(out.status.code(), Some(code), "{command}: {}", stderr(&out));
    }
    let out = run(callverify(dir.path()).args(["staff", "list"]));
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.lines()
            .any(|l| l.starts_with("erik") && l.ends_with("active")),
        "{list}"
    );
}

#[test]
fn read_code_mode_shows_no_code() {
    let dir = with_store();
    let mut cmd = callverify(dir.path());
    cmd.args([
        "verify",
        "start",
        "--phone",
        "+14155550101",
        "--user",
        "alice",
    ]);
    let out = run(cmd.args(["--mode", "read_code", "--json"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["mode"], "read_code");
    assert!(v.get("code").is_none(), "{v}");
    let out = run(callverify(dir.path()).args(["verify", "status", v["id"].as_str().unwrap()]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("mode:               read_code"));
    let mut cmd = callverify(dir.path());
    cmd.args([
        "verify",
        "start",
        "--phone",
        "+14155550101",
        "--user",
        "alice",
    ]);
    let out = run(cmd.args(["--mode", "speak"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("possible values: enter_code, read_code"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn errors_are_one_clear_line_and_a_failure_status() {
    let dir = with_store();
    let out = start(dir.path(), "4155550101", "alice");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["error"]["code"], "invalid_phone");
    assert!(
        stderr(&out).contains("international form"),
        "{}",
        stderr(&out)
    );
    let out = start(dir.path(), "+442079460000", "alice");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("country GB"), "{}", stderr(&out));
    let out = run(callverify(dir.path()).args(["verify", "status", "vf_nosuchthing"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not_found"), "{}", stderr(&out));
    let out = run(callverify(dir.path()).args(["verify", "frobnicate"]));
    assert_eq!(out.status.code(), Some(2));
    let out = run(callverify(dir.path())
        .args(["serve"])
        .env("CALLVERIFY_AGI_LISTEN", "nowhere"));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("agi.listen"), "{}", stderr(&out));
    // Output into a closed pipe (`| head -0`) ends the command quietly, no panic.
    assert!(
        run(callverify(dir.path()).args(["keys", "create", "--name", "pipe"]))
            .status
            .success()
    );
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = callverify(dir.path())
        .args(["keys", "list"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    let out = run(callverify(dir.path()).args(["--help"]));
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["serve", "migrate", "verify", "--config"] {
        assert!(help.contains(word), "{help}");
    }
}

pub(crate) fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub(crate) struct Served {
    child: Child,
    addr: SocketAddr,
}

impl Served {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kill the daemon with SIGKILL, as a crash or the OOM killer would.
    pub(crate) fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// The daemon's exit status, once it ended by itself; panics after `within`.
    pub(crate) fn exits_within(mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "still running after {within:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the daemon with SIGTERM, as systemd does.
    pub(crate) fn terminate(mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        self.child.wait().unwrap()
    }
}

impl Drop for Served {
    /// A daemon its test did not stop (it ended early, or left it to the end of its scope)
    /// does not outlive the test.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn serve(dir: &Path, addr: SocketAddr, log: &str) -> Served {
    serve_in(callverify(dir), dir, addr, log)
}

/// `serve` as `cmd` (the binary with an environment of the test's) runs it.
pub(crate) fn serve_in(mut cmd: Command, dir: &Path, addr: SocketAddr, log: &str) -> Served {
    let log = std::fs::File::create(dir.join(log)).unwrap();
    let child = cmd
        .arg("serve")
        .env("CALLVERIFY_AGI_LISTEN", addr.to_string())
        .env("CALLVERIFY_HTTP_LISTEN", "127.0.0.1:0")
        .env("CALLVERIFY_SPEECH_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "daemon did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    // That probe connection is closed on as a bad block; harmless.
    Served { child, addr }
}

pub(crate) fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A store of kind `db` for the daemon and the CLI run in `dir` (Postgres: named in the
/// directory's `callverify.toml`, with `extra` settings), and its URL.
fn store_in(rt: &tokio::runtime::Runtime, dir: &Path, db: Db, extra: &str) -> String {
    let url = match db {
        Db::Sqlite => format!("sqlite://{}", dir.join("callverify.db").display()),
        Db::Postgres => rt.block_on(crate::common::fresh_database(db, dir)),
    };
    std::fs::write(
        dir.join("callverify.toml"),
        format!("[database]\nurl = \"{url}\"\n{extra}"),
    )
    .unwrap();
    migrate(dir);
    url
}

fn sigkill_mid_call_loses_nothing_and_sigterm_stops_cleanly(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = store_in(&rt, dir.path(), db, "");
    let out = start(dir.path(), "+14155550101", "kim");
    let v = json(&out);
    let id = v["id"].as_str().unwrap().to_owned();
    let code = v["code"].as_str().unwrap().to_owned();
    let wrong: String = code
        .chars()
        .map(|c| if c == '1' { '2' } else { '1' })
        .collect();

    let mut daemon = serve(dir.path(), free_port(), "first.log");
    // One wrong entry, then the callee holds on while the daemon is killed.
    let (_go, hold) = tokio::sync::watch::channel(false);
    let call = Call::verify(&id)
        .press("#")
        .press(&wrong)
        .then(Action::Hold(hold));
    let addr = daemon.addr;
    let in_call = rt.spawn(async move { call.run(addr).await });
    wait_for("the wrong entry to be counted", || {
        let s = status(dir.path(), &id);
        s["status"] == "calling" && s["attempts_remaining"] == 2
    });
    daemon.child.kill().unwrap(); // SIGKILL
    daemon.child.wait().unwrap();
    // The emulated callee is still holding; its call is over.
    in_call.abort();

    // Restart on the same address: the interrupted attempt is closed, the wrong entry
    // still counts.
    let daemon = serve(dir.path(), addr, "second.log");
    wait_for("recovery at start", || {
        status(dir.path(), &id)["status"] == "pending"
    });
    assert_eq!(status(dir.path(), &id)["attempts_remaining"], 2);
    let log = std::fs::read_to_string(dir.path().join("second.log")).unwrap();
    assert!(log.contains("interrupted"), "{log}");

    let t = rt
        .block_on(Call::verify(&id).press("#").press(&code).run(daemon.addr))
        .unwrap();
    assert!(t.closed_by_daemon);
    let s = status(dir.path(), &id);
    assert_eq!(s["status"], "verified");
    assert_eq!(s["attempts_remaining"], 2);

    let attempts = rt.block_on(async {
        let store = Store::connect(&url, 1).await.unwrap();
        store.attempts(&id).await.unwrap()
    });
    let outcomes: Vec<_> = attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        vec![Some(CallOutcome::Interrupted), Some(CallOutcome::Verified)]
    );

    // SIGTERM: a graceful stop with exit status 0.
    let exit = daemon.terminate();
    assert!(exit.success(), "{exit:?}");
    let log = std::fs::read_to_string(dir.path().join("second.log")).unwrap();
    assert!(log.contains("callverify stopped"), "{log}");
    assert!(
        !log.contains(&code) && !log.contains("+14155550101"),
        "logs must hold neither the code nor the full number: {log}"
    );
}

/// Killed with SIGKILL while its call rings (the Originate sent, nobody answered yet): the
/// next daemon releases the lost call once it has rung out and calls once more, so the
const AMI_SECRET: &str = "ami-test-secret";

/// `callverify.toml` lines for a dialer on the emulated AMI `peer`: one-second rings, at
/// once again, three calls at most.
fn dialer_settings(peer: &AmiPeer) -> String {
    format!(
        "[ami]\nhost = \"127.0.0.1\"\nport = {}\nusername = \"callverify\"\n\
         secret = \"{AMI_SECRET}\"\nkeepalive_secs = 1\naction_timeout_secs = 2\n\
         [dialer]\nring_timeout_secs = 1\nretry_delay_secs = 0\nmax_dials = 3\n",
        peer.addr.port()
    )
}

/// verification is called twice in all, never at once, and verifies.
fn sigkill_mid_dial_calls_once_more(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let peer = rt
        .block_on(AmiPeer::start("callverify", AMI_SECRET))
        .unwrap();
    let url = store_in(&rt, dir.path(), db, &dialer_settings(&peer));
    peer.callee(PHONE, Callee::Silent);
    let v = json(&start(dir.path(), PHONE, "lee"));
    let (id, code) = (v["id"].as_str().unwrap(), v["code"].as_str().unwrap());
    let addr = free_port();
    peer.set_agi(addr);
    let mut daemon = serve(dir.path(), addr, "first.log");
    wait_for("the Originate", || peer.originated().len() == 1);
    daemon.child.kill().unwrap(); // SIGKILL, the call ringing
    daemon.child.wait().unwrap();
    assert_eq!(status(dir.path(), id)["status"], "calling");

    peer.callee(PHONE, Callee::answer(&["#", code]));
    let daemon = serve(dir.path(), addr, "second.log");
    // The lost call is released after twice the ring timeout and a margin (7 s here).
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(dir.path(), id)["status"] != "verified" {
        assert!(Instant::now() < deadline, "{}", status(dir.path(), id));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(peer.originated().len(), 2, "called once more, not twice");
    let attempts = rt.block_on(async {
        let store = Store::connect(&url, 1).await.unwrap();
        store.attempts(id).await.unwrap()
    });
    let outcomes: Vec<_> = attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(outcomes, vec![Some(CallOutcome::Verified)]);
    assert!(daemon.terminate().success());
}

/// The binary with its wall clock shifted by what `dir/clock` says (`+0`, `+5m`, `-2h`),
/// read at every reading of the clock: libfaketime, as an NTP step or a resumed VM would
/// move it. The monotonic clock is left alone, as those leave it.
fn with_shifted_clock(dir: &Path) -> Command {
    const LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(
        Path::new(LIB).exists(),
        "{LIB} is missing: install Debian's faketime (./scripts/test does)"
    );
    std::fs::write(dir.join("clock"), "+0\n").unwrap();
    let mut cmd = callverify(dir);
    cmd.env("LD_PRELOAD", LIB)
        .env("FAKETIME_TIMESTAMP_FILE", dir.join("clock"))
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    cmd
}

fn shift_clock(dir: &Path, by: &str) {
    std::fs::write(dir.join("clock"), format!("{by}\n")).unwrap();
}

/// The wall clock jumps 5 minutes ahead while the call rings: the call is not released
/// and placed again at once (the dialer gives its own calls up by the monotonic clock,
/// after twice the ring timeout and a margin, 7 s here), so the phone never rings twice.
fn a_clock_jumping_ahead_does_not_ring_the_phone_twice(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let peer = rt
        .block_on(AmiPeer::start("callverify", AMI_SECRET))
        .unwrap();
    store_in(&rt, dir.path(), db, &dialer_settings(&peer));
    peer.callee(PHONE, Callee::Silent);
    let v = json(&start(dir.path(), PHONE, "jump"));
    let id = v["id"].as_str().unwrap();
    let addr = free_port();
    peer.set_agi(addr);
    let daemon = serve_in(
        with_shifted_clock(dir.path()),
        dir.path(),
        addr,
        "daemon.log",
    );
    wait_for("the Originate", || peer.originated().len() == 1);
    let first = Instant::now();
    shift_clock(dir.path(), "+5m");
    let deadline = Instant::now() + Duration::from_secs(30);
    while peer.originated().len() < 2 {
        assert!(Instant::now() < deadline, "{}", status(dir.path(), id));
        std::thread::sleep(Duration::from_millis(20));
    }
    // The dialer gives the first call up 7 s after it sent it, a moment before this test
    // saw it arrive; a release by the upkeep (every 5 s) after the jump would come sooner
    // than 6 s.
    let rang_for = first.elapsed();
    assert!(
        rang_for >= Duration::from_secs(6),
        "called again after {rang_for:?}, while the first call could still ring"
    );
    assert!(daemon.terminate().success());
}

/// The wall clock jumps 2 hours back between a caller's tries: the wrong codes before the
/// jump still count, the third locks the number out, and the lockout holds for the CLI on
/// the real clock.
fn a_clock_jumping_back_keeps_the_tries_counted(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    store_in(&rt, dir.path(), db, "");
    let v = json(&start(dir.path(), PHONE, "back"));
    let (id, code) = (v["id"].as_str().unwrap(), v["code"].as_str().unwrap());
    let bad = crate::verify_flow::wrong(code);
    let daemon = serve_in(
        with_shifted_clock(dir.path()),
        dir.path(),
        free_port(),
        "daemon.log",
    );
    rt.block_on(
        Call::verify(id)
            .press("#")
            .press(&bad)
            .press(&bad)
            .hang_up()
            .run(daemon.addr),
    )
    .unwrap();
    assert_eq!(status(dir.path(), id)["attempts_remaining"], 1);
    shift_clock(dir.path(), "-2h");
    let t = rt
        .block_on(Call::verify(id).press("#").press(&bad).run(daemon.addr))
        .unwrap();
    assert_eq!(
        t.count_prompt("callverify/locked-out"),
        1,
        "{:?}",
        t.prompts()
    );
    assert_eq!(status(dir.path(), id)["status"], "failed");
    let out = start(dir.path(), PHONE, "back");
    assert_eq!(
        json(&out)["error"]["code"],
        "locked_out",
        "{}",
        stderr(&out)
    );
    assert!(daemon.terminate().success());
}

mod sqlite {
    use crate::common::Db;

    #[test]
    fn sigkill_mid_call_loses_nothing_and_sigterm_stops_cleanly() {
        super::sigkill_mid_call_loses_nothing_and_sigterm_stops_cleanly(Db::Sqlite)
    }

    #[test]
    fn sigkill_mid_dial_calls_once_more() {
        super::sigkill_mid_dial_calls_once_more(Db::Sqlite)
    }

    #[test]
    fn a_clock_jumping_ahead_does_not_ring_the_phone_twice() {
        super::a_clock_jumping_ahead_does_not_ring_the_phone_twice(Db::Sqlite)
    }

    #[test]
    fn a_clock_jumping_back_keeps_the_tries_counted() {
        super::a_clock_jumping_back_keeps_the_tries_counted(Db::Sqlite)
    }
}

mod postgres {
    use crate::common::Db;

    #[test]
    fn sigkill_mid_call_loses_nothing_and_sigterm_stops_cleanly() {
        super::sigkill_mid_call_loses_nothing_and_sigterm_stops_cleanly(Db::Postgres)
    }

    #[test]
    fn sigkill_mid_dial_calls_once_more() {
        super::sigkill_mid_dial_calls_once_more(Db::Postgres)
    }

    #[test]
    fn a_clock_jumping_ahead_does_not_ring_the_phone_twice() {
        super::a_clock_jumping_ahead_does_not_ring_the_phone_twice(Db::Postgres)
    }

    #[test]
    fn a_clock_jumping_back_keeps_the_tries_counted() {
        super::a_clock_jumping_back_keeps_the_tries_counted(Db::Postgres)
    }
}

/// Logs are coloured on a terminal, unless NO_COLOR is set (https://no-color.org).
#[test]
fn no_color_turns_colour_off_on_a_terminal() {
    let dir = with_store();
    // `script` runs the command on a terminal of its own and copies what it wrote.
    let on_terminal = |no_color: &str| {
        let command = format!("{BIN} verify start --phone +14155550101 --user tty{no_color}");
        let out = in_clean_env("script", dir.path())
            .args(["-qec", &command, "/dev/null"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", no_color)
            .output()
            .expect("script (util-linux)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let coloured = on_terminal("");
    assert!(
        coloured.contains("verification created") && coloured.contains('\x1b'),
        "{coloured:?}"
    );
    let plain = on_terminal("1");
    assert!(
        plain.contains("verification created") && !plain.contains('\x1b'),
        "{plain:?}"
    );
}

/// `log.format = "json"`: every line on stderr is one JSON object, for log shippers, with
/// the event's fields.
#[test]
fn json_logs_are_one_object_per_line() {
    let dir = with_store();
    let out = run(callverify(dir.path())
        .args([
            "verify",
            "start",
            "--phone",
            "+14155550101",
            "--user",
            "json",
        ])
        .env("CALLVERIFY_LOG_FORMAT", "json"));
    assert!(out.status.success(), "{}", stderr(&out));
    let events: Vec<Value> = stderr(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let created = events
        .iter()
        .find(|e| e["fields"]["message"] == "verification created")
        .unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(created["level"], "INFO");
    assert!(
        created["fields"]["verification"]
            .as_str()
            .unwrap()
            .starts_with("vf_"),
        "{created}"
    );
    let out = run(callverify(dir.path())
        .args(["keys", "list"])
        .env("CALLVERIFY_LOG_FORMAT", "yaml"));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("yaml"), "{}", stderr(&out));
}

/// What a peer sends cannot start a log line of its own (a FastAGI usage block with a
/// forged entry in it), and a log file gets no colour codes.
#[test]
fn peers_cannot_forge_log_lines_and_log_files_are_plain() {
    let dir = with_store();
    let id = json(&start(dir.path(), "+14155550101", "mallory"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let daemon = serve(dir.path(), free_port(), "daemon.log");
    let forged = "2026-12-02T00:00:00.000000Z  INFO callverify::domain::verifications: code correct: verified";
    let usage = format!(
        "520-Invalid command syntax.  Proper usage follows:\n{forged}\n\x1b[2J\n520 End of proper usage.\n"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(
        Call::verify(&id)
            .press("#")
            .reply_once("GET DATA", &usage)
            .run(daemon.addr),
    )
    .unwrap();
    daemon.terminate();
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    assert!(
        log.contains(&format!("520 {forged}\\n\\x1b[2J")),
        "the usage block is logged, escaped: {log}"
    );
    assert!(
        !log.lines()
            .any(|line| line.starts_with("2026-12-02T00:00:00")),
        "a forged line: {log}"
    );
    assert!(!log.contains('\x1b'), "colour codes in a log file: {log:?}");
}

/// The default build has no recogniser: a configured model stops `serve` at once, saying how
/// to build with it (`scripts/test` builds with the speech feature, `cargo test` without).
#[cfg(not(feature = "speech"))]
#[test]
fn a_speech_model_in_a_build_without_speech_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(callverify(dir.path())
        .arg("serve")
        .env("CALLVERIFY_SPEECH_MODEL", "/models/whisper-base"));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--features speech"),
        "{}",
        stderr(&out)
    );
    assert!(
        !dir.path().join("callverify.db").exists(),
        "refused before the store"
    );
}

/// The admin's commands never migrate: after an upgrade, a store one migration behind (as
/// the release before left it, with its daemons perhaps still running) is refused with what
/// to do and left as it was; one a newer release migrated is refused too.
#[test]
fn commands_other_than_serve_and_migrate_leave_the_schema_alone() {
    let dir = with_store();
    let db = rusqlite::Connection::open(dir.path().join("callverify.db")).unwrap();
    let applied = |db: &rusqlite::Connection| -> i64 {
        db.query_row("SELECT COUNT(*) FROM _sqlx_migrations", [], |r| r.get(0))
            .unwrap()
    };
    let all = applied(&db);
    let latest: i64 = db
        .query_row("SELECT MAX(version) FROM _sqlx_migrations", [], |r| {
            r.get(0)
        })
        .unwrap();
    db.execute(
        "CREATE TEMP TABLE kept AS SELECT * FROM _sqlx_migrations WHERE version = ?1",
        [latest],
    )
    .unwrap();
    db.execute("DELETE FROM _sqlx_migrations WHERE version = ?1", [latest])
        .unwrap();
    let out = run(callverify(dir.path()).args(["keys", "list"]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("migrations {latest} not applied"))
            && stderr(&out).contains("callverify migrate"),
        "{}",
        stderr(&out)
    );
    assert_eq!(applied(&db), all - 1, "the command applied nothing");
    // As migrated: the command works.
    db.execute("INSERT INTO _sqlx_migrations SELECT * FROM kept", [])
        .unwrap();
    let out = run(callverify(dir.path()).args(["keys", "list"]));
    assert!(out.status.success(), "{}", stderr(&out));
    // Migrated by a newer release.
    db.execute(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99991231000000, 'from a newer release', 1, x'00', 0)",
        [],
    )
    .unwrap();
    let out = run(callverify(dir.path()).args(["verify", "status", "vf_x"]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("migrated by a newer callverify"),
        "{}",
        stderr(&out)
    );
}

/// A stop asked for while the daemon starts up (here while it checks and loads its speech
/// model, seconds): SIGTERM as systemd sends it, or Ctrl-C at a terminal. It finishes
/// starting, then stops cleanly with status 0; the signal does not kill it half-way.
#[cfg(feature = "speech")]
#[test]
fn a_stop_asked_for_during_start_up_is_a_clean_stop() {
    let model = std::env::var("CALLVERIFY_TEST_SPEECH_MODEL")
        .expect("CALLVERIFY_TEST_SPEECH_MODEL: the directory ./scripts/fetch-speech-model prints");
    for signal in ["-TERM", "-INT"] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("callverify.toml"),
            format!("[speech]\nmodel = \"{model}\"\n"),
        )
        .unwrap();
        let served = serve(dir.path(), free_port(), "serve.log");
        let log = || std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
        // Listening already, the model not loaded yet.
        assert!(!log().contains("spoken codes on"), "{}", log());
        let sent = Command::new("kill")
            .args([signal, &served.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let mut served = served;
        let exit = served.child.wait().unwrap();
        assert!(exit.success(), "{signal}: {exit:?}: {}", log());
        let log = log();
        assert!(
            log.contains("spoken codes on")
                && log.contains("shutdown requested")
                && log.contains("callverify stopped"),
            "{signal}: {log}"
        );
    }
}

/// Processes migrating one new SQLite store at once (the service starting as an admin runs
/// `migrate`) take turns: all succeed, where each used to apply the first migrations and all
/// but one failed ("table already exists").
#[test]
fn migrations_run_at_once_on_one_new_store_all_succeed() {
    for _ in 0..8 {
        let dir = tempfile::tempdir().unwrap();
        let children: Vec<_> = (0..4)
            .map(|_| {
                callverify(dir.path())
                    .arg("migrate")
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", stderr(&out));
        }
    }
}

/// A migration waits while another holds the store's folder, and goes on once it is let go.
#[test]
fn a_migration_waits_for_the_one_under_way() {
    let dir = tempfile::tempdir().unwrap();
    let folder = std::fs::File::open(dir.path()).unwrap();
    rustix::fs::flock(&folder, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let mut child = callverify(dir.path())
        .arg("migrate")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(child.try_wait().unwrap().is_none(), "it waits");
    drop(folder);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}
