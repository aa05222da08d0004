//! `callverify doctor`: checks the live set-up from the daemon's own configuration, one
//! finding per check, each problem with what to do. The store and the secret are checked
//! here; Asterisk over AMI (login, privileges), and then from inside a real call: a
//! self-test call (`Originate` of `Local/s@callverify-selftest`) reaches the running daemon
//! over FastAGI, which reports what the call found ([`selftest`]).

pub mod selftest;

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::config::{Config, Source};
use crate::outbound::dialer::CONTEXT as OUTBOUND_CONTEXT;
use callverify_pbx::ami::{Ami, AmiError, Message};
use selftest::{AudioSocketCheck, Plan, Progress, Report, Selftests, TOKEN_VARIABLE};

/// The shipped context the self-test call runs in (`dialplan/callverify.conf`).
pub const SELFTEST_CONTEXT: &str = "callverify-selftest";

/// The kit's contexts the running dialplan must have, besides the self-test's own.
pub const KIT_CONTEXTS: &[&str] = &[
    OUTBOUND_CONTEXT,
    "callverify-support",
    "callverify-qa",
    "callverify-from-trunk",
];

/// How long the self-test call may take from `Originate` to its report.
const SELFTEST_WAIT: Duration = Duration::from_secs(30);
/// How often the store is asked for the report.
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Problem,
    /// Not checked: an earlier problem stands in the way.
    Skipped,
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
    /// What to do, for a problem.
    pub fix: Option<String>,
}

/// Everything the doctor found, in the order checked.
#[derive(Debug, Clone, Serialize)]
pub struct Findings {
    pub ok: bool,
    pub configuration: String,
    pub checks: Vec<Check>,
}

impl Findings {
    /// One line per check (`ok`, `problem`, `skipped`), and the fix under each problem.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for c in &self.checks {
            let status = match c.status {
                Status::Ok => "ok",
                Status::Problem => "problem",
                Status::Skipped => "skipped",
            };
            text.push_str(&format!("{status:8} {:15} {}\n", c.check, c.detail));
            if let Some(fix) = &c.fix {
                text.push_str(&format!("{:24} fix: {fix}\n", ""));
            }
        }
        let problems = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Problem)
            .count();
        match problems {
            0 => text.push_str("all checks passed\n"),
            n => text.push_str(&format!("{n} problem(s) found\n")),
        }
        text
    }
}

struct Doctor {
    checks: Vec<Check>,
}

impl Doctor {
    fn ok(&mut self, check: &'static str, detail: impl Into<String>) {
        self.push(check, Status::Ok, detail.into(), None);
    }

    fn problem(&mut self, check: &'static str, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(check, Status::Problem, detail.into(), Some(fix.into()));
    }

    fn skipped(&mut self, check: &'static str, why: impl Into<String>) {
        self.push(check, Status::Skipped, why.into(), None);
    }

    fn push(&mut self, check: &'static str, status: Status, detail: String, fix: Option<String>) {
        self.checks.push(Check {
            check,
            status,
            detail,
            fix,
        });
    }
}

/// Run every check against the set-up `config` (read from `source`) describes.
pub async fn examine(config: &Config, source: &Source) -> Findings {
    let mut doctor = Doctor { checks: Vec::new() };
    doctor.ok("configuration", source.to_string());
    let selftests = store_checks(&mut doctor, config).await;
    speech_check(&mut doctor, config).await;
    asterisk_checks(&mut doctor, config, selftests.as_ref()).await;
    if let Some(selftests) = &selftests {
        selftests.store().close().await;
    }
    Findings {
        ok: doctor.checks.iter().all(|c| c.status != Status::Problem),
        configuration: source.to_string(),
        checks: doctor.checks,
    }
}

/// The secret and the store; the self-test rows when the store is usable.
async fn store_checks(doctor: &mut Doctor, config: &Config) -> Option<Selftests> {
    let store = crate::store::redact_url(&config.database.url);
    if config.security.secret.is_empty()
        && !std::path::Path::new(&config.security.secret_file).exists()
    {
        doctor.problem(
            "secret",
            format!(
                "no security.secret and no key file {}",
                config.security.secret_file
            ),
            "run `callverify migrate` with the service's configuration, or set security.secret",
        );
        doctor.skipped("store", "needs the secret");
        return None;
    }
    let file = std::path::Path::new(&config.security.secret_file);
    if let Err(e) = crate::domain::codes::server_key(&config.security.secret, file) {
        doctor.problem(
            "secret",
            e.to_string(),
            "the service refuses to start with this key: see the message",
        );
        doctor.skipped("store", "needs the secret");
        return None;
    }
    doctor.ok("secret", "set");
    let app = match crate::daemon::open_existing(config).await {
        Ok(app) => app,
        Err(e) => {
            doctor.problem(
                "store",
                format!("{store}: {e}"),
                "check database.url; the service creates the store when it first starts, and \
                 `callverify migrate` brings its schema to this release",
            );
            return None;
        }
    };
    let selftests = Selftests::new(app.store);
    // Writing the self-test's row is the write check.
    match selftests.create(&Plan::default()).await {
        Ok(token) => {
            let _ = selftests.delete(&token).await;
            doctor.ok(
                "store",
                format!("{store}: reachable, migrated and writable"),
            );
            Some(selftests)
        }
        Err(e) => {
            doctor.problem(
                "store",
                format!("{store}: cannot write: {e}"),
                "run the doctor as the service's user (or root), and check the disk",
            );
            None
        }
    }
}

/// Spoken codes: off, or the configured model checked against its SHA256SUMS and loaded
/// as `serve` loads it.
async fn speech_check(doctor: &mut Doctor, config: &Config) {
    const CHECK: &str = "spoken codes";
    let Some(settings) = config.recogniser_settings() else {
        doctor.ok(CHECK, "off: keypad entry only (speech.model is empty)");
        return;
    };
    let model = settings.model.display().to_string();
    #[cfg(feature = "speech")]
    {
        match crate::daemon::load_recogniser(settings).await {
            Ok(recogniser) => doctor.ok(
                CHECK,
                format!("{model}: {}; loads", recogniser.model_check()),
            ),
            Err(e) => doctor.problem(
                CHECK,
                e.to_string(),
                "set speech.model to the directory the package callverify-speech-model \
                 installs (/usr/share/callverify/speech/whisper-base) or that \
                 ./scripts/fetch-speech-model prints; empty turns spoken codes off",
            ),
        }
    }
    #[cfg(not(feature = "speech"))]
    doctor.problem(
        CHECK,
        format!("speech.model is {model}, but this build has no recogniser"),
        "install the Debian package (built with spoken codes) or build with `--features \
         speech`; or leave speech.model empty",
    );
}

async fn asterisk_checks(doctor: &mut Doctor, config: &Config, selftests: Option<&Selftests>) {
    if config.ami.host.is_empty() {
        doctor.problem(
            "ami.login",
            "ami.host is not set: the dialer places no calls",
            "set ami.host, ami.username and ami.secret as in asterisk/callverify-manager.conf",
        );
        doctor.skipped("selftest", "needs AMI");
        return;
    }
    let ami_config = config.ami_config();
    let at = format!(
        "{}@{}:{}",
        ami_config.username, ami_config.host, ami_config.port
    );
    match Ami::try_login(&ami_config).await {
        Ok(()) => doctor.ok("ami.login", format!("{at}: login accepted")),
        Err(AmiError::LoginFailed(message)) => {
            doctor.problem(
                "ami.login",
                format!("{at}: login refused ({})", message.escape_debug()),
                "ami.username and ami.secret must match the [callverify] user in manager.conf \
                 (and its permit= the daemon's address); then `manager reload`",
            );
            doctor.skipped("selftest", "needs AMI");
            return;
        }
        Err(e) => {
            doctor.problem(
                "ami.login",
                format!("{at}: {e}"),
                "is Asterisk running with manager.conf's enabled = yes, and ami.host/ami.port \
                 its bindaddr/port?",
            );
            doctor.skipped("selftest", "needs AMI");
            return;
        }
    }
    let (stop, stopped) = watch::channel(false);
    let ami = Ami::start(ami_config.clone(), stopped);
    if let Err(e) = ami.connected(ami_config.action_timeout).await {
        doctor.problem(
            "ami.privileges",
            format!("{at}: {e}"),
            "run the doctor again",
        );
    } else {
        privileges(doctor, &ami).await;
        match selftests {
            Some(selftests) => self_test(doctor, config, &ami, selftests).await,
            None => doctor.skipped("selftest", "needs the store"),
        }
    }
    let _ = stop.send(true);
}

/// The actions `ListCommands` offers this user (manager.c lists those its write
/// privileges allow, and those needing none): Originate, and nothing more.
async fn privileges(doctor: &mut Doctor, ami: &Ami) {
    let reply = match ami
        .send(Message::action(
            "ListCommands",
            "callverify-doctor-commands",
        ))
        .await
    {
        Ok(reply) => reply,
        Err(e) => {
            doctor.problem(
                "ami.privileges",
                format!("ListCommands: {e}"),
                "check the AMI user in manager.conf",
            );
            return;
        }
    };
    let (may_originate, extra) = granted(&reply);
    if !may_originate {
        doctor.problem(
            "ami.privileges",
            "the AMI user cannot Originate: the dialer cannot place calls",
            "set `write = originate` for the user in manager.conf, then `manager reload`",
        );
        return;
    }
    if extra.privileges.is_empty() {
        doctor.ok("ami.privileges", "write = originate, nothing more");
        return;
    }
    doctor.problem(
        "ami.privileges",
        format!(
            "the AMI user may also write {} (e.g. {}): more than the dialer needs",
            extra.privileges.into_iter().collect::<Vec<_>>().join(", "),
            extra.examples.join(", ")
        ),
        "set `write = originate` and `read = call,system` for the user in manager.conf \
         (asterisk/callverify-manager.conf), then `manager reload`",
    );
}

#[derive(Default)]
struct Extra {
    privileges: BTreeSet<String>,
    examples: Vec<String>,
}

/// From a `ListCommands` reply (`Action: synopsis (Priv: a,b,all)` lines): whether
/// Originate is there, and the privileges beyond `originate` the listed actions need.
fn granted(reply: &Message) -> (bool, Extra) {
    let mut may_originate = false;
    let mut extra = Extra::default();
    for (action, line) in &reply.headers {
        let Some(privs) = line
            .rsplit_once("(Priv: ")
            .and_then(|(_, p)| p.strip_suffix(')'))
        else {
            continue;
        };
        if action.eq_ignore_ascii_case("Originate") {
            may_originate = true;
        }
        let beyond: Vec<&str> = privs
            .split(',')
            .map(str::trim)
            .filter(|p| !matches!(*p, "originate" | "all" | "<none>" | ""))
            .collect();
        // An action needing originate alone (or nothing) is not an extra.
        if beyond.is_empty() || privs.split(',').any(|p| p.trim() == "originate") {
            continue;
        }
        extra
            .privileges
            .extend(beyond.iter().map(|p| p.escape_debug().to_string()));
        if extra.examples.len() < 3 {
            extra.examples.push(action.escape_debug().to_string());
        }
    }
    (may_originate, extra)
}

/// The trunk as a device for `DEVICE_STATE`, from the dialer's channel template:
/// `PJSIP/{number}@trunk` and `PJSIP/trunk/sip:{number}@host` both name endpoint `trunk`.
pub fn trunk_device(channel: &str) -> Option<String> {
    let rest = channel.strip_prefix("PJSIP/")?;
    let endpoint = match rest.strip_prefix("{number}@") {
        Some(endpoint) => endpoint,
        None => rest.split('/').next()?,
    };
    (!endpoint.is_empty() && !endpoint.contains('{')).then(|| format!("PJSIP/{endpoint}"))
}

/// How the `Originate` of the self-test call went, from its `OriginateResponse`.
enum Answer {
    NotYet,
    Success,
    Failure(String),
}

async fn self_test(doctor: &mut Doctor, config: &Config, ami: &Ami, selftests: &Selftests) {
    let plan = Plan {
        contexts: KIT_CONTEXTS.iter().map(|c| c.to_string()).collect(),
        trunk: trunk_device(&config.dialer.channel),
    };
    let token = match selftests.create(&plan).await {
        Ok(token) => token,
        Err(e) => {
            doctor.problem(
                "selftest",
                format!("cannot store the self-test: {e}"),
                "check the store",
            );
            return;
        }
    };
    let action_id = format!("callverify-doctor-{token}");
    let mut originate = Message::action("Originate", &action_id);
    originate
        .push("Channel", format!("Local/s@{SELFTEST_CONTEXT}"))
        .push("Application", "Wait")
        .push("Data", SELFTEST_WAIT.as_secs().to_string())
        .push("Async", "true")
        .push("ChannelId", action_id.as_str())
        .push("Timeout", "10000")
        .push("CallerID", "\"callverify doctor\" <selftest>")
        .push("Variable", format!("{TOKEN_VARIABLE}={token}"));
    // Only the dialer's AMI_EVENTS arrive: what this reads is listed there.
    let mut events = ami.events();
    if let Err(e) = ami.send(originate).await {
        doctor.problem(
            "selftest",
            format!("Originate of the self-test call: {e}"),
            "the AMI user needs `write = originate`",
        );
        let _ = selftests.delete(&token).await;
        return;
    }
    let deadline = tokio::time::Instant::now() + SELFTEST_WAIT;
    let mut answer = Answer::NotYet;
    let mut progress = Progress::Waiting;
    let mut poll = tokio::time::interval(POLL);
    while tokio::time::Instant::now() < deadline {
        tokio::select! {
            event = events.recv() => match event {
                Ok(m) if m.event() == Some("OriginateResponse")
                    && m.action_id() == Some(action_id.as_str()) =>
                {
                    answer = match m.get("Response") {
                        Some(r) if r.eq_ignore_ascii_case("Success") => Answer::Success,
                        _ => Answer::Failure(m.get("Reason").unwrap_or("?").escape_debug().to_string()),
                    };
                    if matches!(answer, Answer::Failure(_)) {
                        break;
                    }
                }
                // The call ended (Asterisk could not reach the daemon, or the flow is
                // done): whatever report there is has been written.
                Ok(m) if m.event() == Some("Hangup")
                    && m.get("Uniqueid") == Some(action_id.as_str()) =>
                {
                    tokio::time::sleep(POLL * 3).await;
                    progress = selftests.state(&token).await.unwrap_or(Progress::Waiting);
                    break;
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => break,
            },
            _ = poll.tick() => {
                progress = selftests.state(&token).await.unwrap_or(Progress::Waiting);
                if matches!(progress, Progress::Done(_)) {
                    break;
                }
            }
        }
    }
    let _ = selftests.delete(&token).await;
    let agi = &config.agi.listen;
    match (answer, progress) {
        (Answer::Failure(reason), _) => doctor.problem(
            "selftest",
            format!("Asterisk could not start the self-test call into {SELFTEST_CONTEXT} (Reason {reason})"),
            "include the kit's dialplan (asterisk/README.md, step 2) and run `dialplan reload`",
        ),
        (_, Progress::Waiting) => doctor.problem(
            "fastagi",
            format!("the self-test call did not reach this daemon's FastAGI server ({agi})"),
            format!(
                "is `callverify serve` running with this configuration? CALLVERIFY_AGI_HOST in \
                 callverify-globals.conf must be where Asterisk reaches agi.listen ({agi}), and \
                 res_agi loaded"
            ),
        ),
        (_, Progress::Reached) => doctor.problem(
            "selftest",
            "the self-test call reached the daemon but did not finish",
            "see the daemon's log (journalctl -u callverify) for the call",
        ),
        (answer, Progress::Done(report)) => {
            if matches!(answer, Answer::NotYet) {
                doctor.problem(
                    "ami.events",
                    "no OriginateResponse event came: the dialer cannot learn how its calls go",
                    "set `read = call,system` for the AMI user in manager.conf",
                );
            }
            call_findings(doctor, &report);
        }
    }
}

/// The findings of the self-test call's report.
fn call_findings(doctor: &mut Doctor, report: &Report) {
    let host = report
        .agi_host
        .as_deref()
        .unwrap_or("(unset)")
        .escape_debug();
    doctor.ok(
        "fastagi",
        format!("Asterisk reached the daemon (CALLVERIFY_AGI_HOST = {host}; res_agi loaded)"),
    );
    let missing: Vec<&str> = report
        .contexts
        .iter()
        .filter(|(_, found)| !found)
        .map(|(c, _)| c.as_str())
        .collect();
    if missing.is_empty() {
        doctor.ok(
            "dialplan",
            format!(
                "contexts {SELFTEST_CONTEXT}, {} loaded",
                KIT_CONTEXTS.join(", ")
            ),
        );
    } else {
        doctor.problem(
            "dialplan",
            format!("the running dialplan has no context {}", missing.join(", ")),
            "include dialplan/callverify.conf as asterisk/README.md step 2 shows, then \
             `dialplan reload`",
        );
    }
    match &report.trunk {
        None => doctor.skipped("trunk", "dialer.channel names no PJSIP endpoint"),
        Some((device, state)) => {
            let state = state.escape_debug().to_string();
            match state.as_str() {
                "INVALID" => doctor.problem(
                    "trunk",
                    format!("{device}: no such endpoint ({state})"),
                    "include callverify-pjsip.conf and a trunk file (asterisk/README.md), check \
                     chan_pjsip is loaded, then `pjsip reload`",
                ),
                "UNAVAILABLE" => doctor.problem(
                    "trunk",
                    format!("{device}: unreachable or not registered ({state})"),
                    "check the trunk's contact/registration: `pjsip show endpoint` and \
                     `pjsip show registrations` in the Asterisk CLI",
                ),
                _ => doctor.ok("trunk", format!("{device}: {state}")),
            }
        }
    }
    if report.prompts_missing.is_empty() {
        doctor.ok(
            "prompts",
            format!(
                "all {} sound files found (every prompt and digit, in each language)",
                report.prompts_checked
            ),
        );
    } else {
        let missing: Vec<String> = report
            .prompts_missing
            .iter()
            .map(|(lang, file)| format!("{}:{}", lang.escape_debug(), file.escape_debug()))
            .collect();
        doctor.problem(
            "prompts",
            format!(
                "{} of {} sound files missing: {}",
                missing.len(),
                report.prompts_checked,
                missing.join(", ")
            ),
            "copy asterisk/sounds/<language>/ into Asterisk's sounds directory (asterisk/README.md \
             step 2); digits and goodbye come with asterisk-core-sounds-<language>",
        );
    }
    match &report.audiosocket {
        AudioSocketCheck::Reached { address } => doctor.ok(
            "audiosocket",
            format!(
                "Asterisk reached the daemon's AudioSocket at {}",
                address.escape_debug()
            ),
        ),
        AudioSocketCheck::NoModule => doctor.problem(
            "audiosocket",
            "Asterisk has no AudioSocket application: spoken codes and support messages fail",
            "load app_audiosocket (`module load app_audiosocket.so`, and in modules.conf)",
        ),
        AudioSocketCheck::NotReached { address } => doctor.problem(
            "audiosocket",
            format!(
                "AudioSocket from Asterisk did not reach {}",
                address.escape_debug()
            ),
            "speech.advertise must be the address at which Asterisk reaches speech.listen",
        ),
        AudioSocketCheck::NotRun => doctor.problem(
            "audiosocket",
            "the call ended before AudioSocket was tried",
            "see the daemon's log",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trunk_is_the_endpoint_the_channel_names() {
        assert_eq!(
            trunk_device("PJSIP/{number}@callverify-trunk").as_deref(),
            Some("PJSIP/callverify-trunk")
        );
        assert_eq!(
            trunk_device("PJSIP/carrier/sip:{number}@sip.example.net").as_deref(),
            Some("PJSIP/carrier")
        );
        assert_eq!(trunk_device("SIP/{number}@old"), None);
        assert_eq!(trunk_device("PJSIP/{number}"), None);
    }

    fn commands(lines: &[(&str, &str)]) -> Message {
        let mut m = Message::default();
        m.push("Response", "Success").push("ActionID", "x");
        for (action, line) in lines {
            m.push(action, *line);
        }
        m
    }

    #[test]
    fn originate_alone_is_least_privilege() {
        let (originate, extra) = granted(&commands(&[
            ("Ping", "Keepalive command. (Priv: <none>)"),
            ("Originate", "Originate a call. (Priv: originate,all)"),
        ]));
        assert!(originate);
        assert!(extra.privileges.is_empty());
    }

    #[test]
    fn more_than_originate_is_named() {
        let (originate, extra) = granted(&commands(&[
            ("Originate", "Originate a call. (Priv: originate,all)"),
            (
                "Command",
                "Execute Asterisk CLI Command. (Priv: command,all)",
            ),
            ("Hangup", "Hangup channel. (Priv: system,call,all)"),
        ]));
        assert!(originate);
        assert_eq!(
            extra.privileges.into_iter().collect::<Vec<_>>(),
            ["call", "command", "system"]
        );
        assert_eq!(extra.examples, ["Command", "Hangup"]);
        let (originate, _) = granted(&commands(&[("Ping", "Keepalive. (Priv: <none>)")]));
        assert!(!originate);
    }
}
