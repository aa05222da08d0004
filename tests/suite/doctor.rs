//! `callverify doctor`, run as the admin runs it (the binary, the service's configuration)
//! against a running daemon and the emulated Asterisk: a set-up as the guide leaves it
//! passes every check, and each fault (a wrong AMI secret, too many AMI privileges, a
//! context not loaded, an unreachable trunk, a prompt missing in one language, no
//! app_audiosocket, an AudioSocket address Asterisk cannot reach, a daemon Asterisk cannot
//! reach, no self-test context) is named with what to do, and fails the exit status.

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::cli::{callverify, free_port, run};
use crate::common::{Daemon, Db};
use callverify::flow::prompts::{sound_files, Prompt, LANGUAGES};
use callverify_testkit::emulator::ami::AmiPeer;
use callverify_testkit::emulator::{outbound_env, Call, Pbx};

const SECRET: &str = "doctor-test-secret";

/// The daemon's settings, as the service's callverify.toml in `dir` has them, with the AMI
/// of `peer` and `ami_secret`.
fn write_config(d: &Daemon, dir: &Path, peer: &AmiPeer, ami_secret: &str) {
    let c = &d.config;
    std::fs::write(
        dir.join("callverify.toml"),
        format!(
            "[database]\nurl = \"{}\"\n[security]\nsecret_file = \"{}\"\n\
             [agi]\nlisten = \"{}\"\n\
             [ami]\nhost = \"127.0.0.1\"\nport = {}\nusername = \"callverify\"\n\
             secret = \"{ami_secret}\"\naction_timeout_secs = 2\n",
            c.database.url,
            c.security.secret_file,
            d.addr,
            peer.addr.port()
        ),
    )
    .unwrap();
}

/// `callverify doctor [--json]` in `dir`, off the test's runtime (the daemon and the
/// emulator run on it meanwhile).
async fn doctor(dir: &Path, json: bool) -> Output {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut cmd = callverify(&dir);
        cmd.arg("doctor");
        if json {
            cmd.arg("--json");
        }
        run(&mut cmd)
    })
    .await
    .unwrap()
}

/// The JSON findings, as `check` → (status, detail, fix).
async fn findings(dir: &Path) -> (bool, Vec<(String, String, String, String)>) {
    let out = doctor(dir, true).await;
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            crate::cli::stderr(&out)
        )
    });
    let ok = json["ok"].as_bool().unwrap();
    assert_eq!(
        out.status.success(),
        ok,
        "exit status follows \"ok\": {json}"
    );
    let checks = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (s("check"), s("status"), s("detail"), s("fix"))
        })
        .collect();
    (ok, checks)
}

fn find<'a>(
    checks: &'a [(String, String, String, String)],
    name: &str,
) -> &'a (String, String, String, String) {
    checks
        .iter()
        .find(|c| c.0 == name)
        .unwrap_or_else(|| panic!("no check {name}: {checks:?}"))
}

async fn setup(db: Db, tweak: impl FnOnce(&mut callverify::config::Config)) -> (AmiPeer, Daemon) {
    let peer = AmiPeer::start("callverify", SECRET).await.unwrap();
    let d = crate::common::start_with(db, tweak).await;
    peer.set_agi(d.addr);
    (peer, d)
}

async fn a_set_up_as_the_guide_says_passes_every_check(db: Db) {
    let (peer, d) = setup(db, |_| {}).await;
    let dir = d.dir.as_ref().unwrap().path();
    write_config(&d, dir, &peer, SECRET);

    let out = doctor(dir, false).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", crate::cli::stderr(&out));
    for check in [
        "configuration",
        "secret",
        "store",
        "ami.login",
        "ami.privileges",
        "fastagi",
        "dialplan",
        "trunk",
        "prompts",
        "audiosocket",
        "spoken codes",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("ok ") && l.contains(&format!(" {check} "))),
            "no ok line for {check}:\n{text}"
        );
    }
    assert!(text.ends_with("all checks passed\n"), "{text}");

    let (ok, checks) = findings(dir).await;
    assert!(ok, "{checks:?}");
    // Every sound of every flow, in every language, was looked for through Asterisk.
    let sounds = sound_files().count() * LANGUAGES.len();
    assert!(sounds > Prompt::ALL.len() * 2);
    assert!(
        find(&checks, "prompts")
            .2
            .contains(&format!("all {sounds} sound files")),
        "{checks:?}"
    );
    assert!(find(&checks, "trunk")
        .2
        .contains("PJSIP/callverify-trunk: NOT_INUSE"));
    assert!(find(&checks, "fastagi").2.contains("127.0.0.1:4573"));
    assert!(find(&checks, "spoken codes").2.starts_with("off: keypad"));
    // Each doctor run leaves no self-test behind.
    assert_eq!(d.store.selftest("st_x").await.unwrap(), None);
    d.stop().await;
}

async fn each_fault_is_named_with_what_to_do(db: Db) {
    let unreachable = free_port().to_string();
    let (peer, d) = setup(db, |c| c.speech.advertise = unreachable.clone()).await;
    let dir = d.dir.as_ref().unwrap().path();
    write_config(&d, dir, &peer, SECRET);
    let mut pbx = Pbx::default();
    pbx.contexts.retain(|c| c != "callverify-support");
    pbx.devices
        .insert("PJSIP/callverify-trunk".into(), "UNAVAILABLE".into());
    pbx.missing_sounds
        .push(("es".into(), Prompt::Greeting.file().into()));
    pbx.write = vec!["all".into()];
    peer.set_pbx(pbx.clone());

    let (ok, checks) = findings(dir).await;
    assert!(!ok);
    let problem = |name: &str, words: &[&str]| {
        let (_, status, detail, fix) = find(&checks, name);
        assert_eq!(status, "problem", "{name}: {checks:?}");
        assert!(!fix.is_empty(), "{name} says what to do");
        for w in words {
            assert!(
                detail.contains(w) || fix.contains(w),
                "{name}: {w:?} not in {detail:?} / {fix:?}"
            );
        }
    };
    problem(
        "ami.privileges",
        &["command", "config", "write = originate"],
    );
    problem("dialplan", &["callverify-support", "dialplan reload"]);
    problem("trunk", &["UNAVAILABLE"]);
    problem(
        "prompts",
        &["1 of", "es:callverify/greeting", "asterisk/sounds"],
    );
    problem("audiosocket", &[&unreachable, "speech.advertise"]);
    for fine in ["ami.login", "fastagi", "store"] {
        assert_eq!(find(&checks, fine).1, "ok", "{fine}: {checks:?}");
    }

    // Without app_audiosocket, Asterisk's EXEC answers -2: the module is named.
    pbx.audiosocket = false;
    pbx.write = vec!["originate".into()];
    peer.set_pbx(pbx);
    let (_, checks) = findings(dir).await;
    problem_in(&checks, "audiosocket", "app_audiosocket");
    assert_eq!(find(&checks, "ami.privileges").1, "ok", "{checks:?}");
    d.stop().await;
}

fn problem_in(checks: &[(String, String, String, String)], name: &str, word: &str) {
    let (_, status, detail, fix) = find(checks, name);
    assert_eq!(status, "problem", "{checks:?}");
    assert!(detail.contains(word) || fix.contains(word), "{checks:?}");
}

/// A key file cut short (a first start that died mid-write, a full disk) is a problem the
/// doctor names, not "set": an empty key would let anyone with the database try every code.
#[tokio::test]
async fn a_damaged_key_file_is_a_problem() {
    let (peer, d) = setup(Db::Sqlite, |_| {}).await;
    let dir = d.dir.as_ref().unwrap().path();
    write_config(&d, dir, &peer, SECRET);
    std::fs::write(&d.config.security.secret_file, "").unwrap();
    let (ok, checks) = findings(dir).await;
    assert!(!ok);
    problem_in(&checks, "secret", "not a 32-byte hex key");
    assert_eq!(find(&checks, "store").1, "skipped", "{checks:?}");
    d.stop().await;
}

#[tokio::test]
async fn a_refused_ami_login_stops_at_the_login() {
    let (peer, d) = setup(Db::Sqlite, |_| {}).await;
    let dir = d.dir.as_ref().unwrap().path();
    write_config(&d, dir, &peer, "wrong-secret");
    let out = doctor(dir, false).await;
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let login = text.lines().find(|l| l.contains(" ami.login ")).unwrap();
    assert!(login.starts_with("problem"), "{text}");
    assert!(
        login.contains("login refused (Authentication failed)"),
        "{text}"
    );
    assert!(text.contains("fix: ami.username and ami.secret"), "{text}");
    assert!(text
        .lines()
        .any(|l| l.starts_with("skipped") && l.contains(" selftest ")));
    assert!(peer.originated().is_empty(), "no call without a login");
    d.stop().await;
}

#[tokio::test]
async fn a_daemon_asterisk_cannot_reach_and_a_missing_selftest_context_are_named() {
    let (peer, d) = setup(Db::Sqlite, |_| {}).await;
    let dir = d.dir.as_ref().unwrap().path();
    write_config(&d, dir, &peer, SECRET);
    // CALLVERIFY_AGI_HOST names a port nothing listens on: AGI fails, the call hangs up.
    peer.set_agi(free_port());
    let (_, checks) = findings(dir).await;
    problem_in(&checks, "fastagi", "CALLVERIFY_AGI_HOST");
    problem_in(&checks, "fastagi", &d.addr.to_string());
    let originated = peer.originated();
    assert_eq!(originated.len(), 1);
    assert_eq!(originated[0].channel, "Local/s@callverify-selftest");
    assert!(originated[0].variables[0].starts_with("CALLVERIFY_SELFTEST=st_"));

    let mut pbx = Pbx::default();
    pbx.contexts.retain(|c| c != "callverify-selftest");
    peer.set_pbx(pbx);
    let (_, checks) = findings(dir).await;
    problem_in(&checks, "selftest", "callverify-selftest");
    d.stop().await;
}

#[tokio::test]
async fn the_selftest_script_does_nothing_for_a_token_no_doctor_made() {
    let d = crate::common::start(Db::Sqlite).await;
    let t = Call::with_env(outbound_env("selftest", &["st_notadoctorstoken"]))
        .run(d.addr)
        .await
        .unwrap();
    assert_eq!(t.commands, ["HANGUP"]);
    let t = Call::with_env(outbound_env("selftest", &[]))
        .run(d.addr)
        .await
        .unwrap();
    assert_eq!(t.commands, ["HANGUP"]);
    d.stop().await;
}

on_both_backends!(
    a_set_up_as_the_guide_says_passes_every_check,
    each_fault_is_named_with_what_to_do,
);

/// Spoken codes on: the model is checked against its SHA256SUMS (as fetch-speech-model and
/// the package callverify-speech-model leave it) and loaded as `serve` loads it; a model
/// file changed on disk is named, with what to do, and fails the exit status.
#[cfg(feature = "speech")]
#[tokio::test]
async fn the_speech_model_is_checked_against_its_sums_and_loaded() {
    let model =
        std::path::PathBuf::from(std::env::var("CALLVERIFY_TEST_SPEECH_MODEL").expect(
            "CALLVERIFY_TEST_SPEECH_MODEL: the directory ./scripts/fetch-speech-model prints",
        ));
    let dir = tempfile::tempdir().unwrap();
    let configure = |model: &Path| {
        std::fs::write(
            dir.path().join("callverify.toml"),
            format!(
                "[database]\nurl = \"sqlite://{}/doctor.db\"\n[ami]\nport = {}\n\
                 [speech]\nmodel = \"{}\"\n",
                dir.path().display(),
                free_port().port(),
                model.display()
            ),
        )
        .unwrap()
    };
    configure(&model);
    let (_, checks) = findings(dir.path()).await;
    let (_, status, detail, _) = find(&checks, "spoken codes");
    assert_eq!(status, "ok", "{checks:?}");
    assert!(
        detail.ends_with("5 files match its SHA256SUMS; loads"),
        "{detail}"
    );

    // The same model with one byte of config.json changed: the others are links to it.
    let damaged = dir.path().join("damaged");
    std::fs::create_dir(&damaged).unwrap();
    for entry in std::fs::read_dir(&model).unwrap() {
        let entry = entry.unwrap();
        let to = damaged.join(entry.file_name());
        if entry.file_name() == "config.json" {
            let mut bytes = std::fs::read(entry.path()).unwrap();
            bytes[0] ^= 1;
            std::fs::write(to, bytes).unwrap();
        } else {
            std::os::unix::fs::symlink(entry.path(), to).unwrap();
        }
    }
    configure(&damaged);
    let out = doctor(dir.path(), false).await;
    assert_eq!(out.status.code(), Some(1));
    let (ok, checks) = findings(dir.path()).await;
    assert!(!ok);
    problem_in(
        &checks,
        "spoken codes",
        "config.json does not match its SHA256SUMS",
    );
    problem_in(&checks, "spoken codes", "callverify-speech-model");
}
