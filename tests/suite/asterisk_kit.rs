//! The Asterisk kit (`asterisk/`, `dialplan/`, `asterisk/sounds/`) against the daemon's own
//! contracts: parses the shipped `.conf` files the way Asterisk's config loader does
//! (`[section]`, `(!)` templates, `(template)` inheritance, `#include` relative to
//! /etc/asterisk, `;` comments, `exten =>` / `same =>`) and checks that the contexts the
//! dialer and the daemon name exist, that every FastAGI URL names a script the daemon serves,
//! that every prompt the dialplan or a flow plays exists for every shipped language, and that
//! the trunk, softphone and AMI user are set up as the daemon expects.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use callverify::doctor::selftest::TOKEN_VARIABLE;
use callverify::doctor::{KIT_CONTEXTS, SELFTEST_CONTEXT};
use callverify::flow::prompts::{Prompt, LANGUAGES};
use callverify::flow::{manual, qa, SCRIPTS};
use callverify_audio::{wav, SAMPLE_RATE};

/// The channel variable the dialer's Originate sets to the verification id (DESIGN.md).
const DIALER_ID_VAR: &str = "CALLVERIFY_ID";
/// The channel variable the dialer sets to the call's locale.
const DIALER_LANG_VAR: &str = "CALLVERIFY_LANG";
/// Where the dialer's Originate lands.
const OUTBOUND_CONTEXT: &str = "callverify-outbound";
const QA_CONTEXT: &str = "callverify-qa";
const SUPPORT_CONTEXT: &str = "callverify-support";
/// The PJSIP endpoint of the dialer's default channel template `PJSIP/{number}@callverify-trunk`.
const TRUNK_ENDPOINT: &str = "callverify-trunk";

/// Applications the dialplan may use (a typo in an application name loads without error
/// but fails the call at run time).
const KNOWN_APPS: &[&str] = &[
    "AGI",
    "Answer",
    "Dial",
    "Echo",
    "ExecIf",
    "Goto",
    "GotoIf",
    "Hangup",
    "Log",
    "NoOp",
    "Originate",
    "Playback",
    "Read",
    "SayDigits",
    "Set",
    "Wait",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ------------------------------------------------------------------------------------------
// Asterisk config syntax

#[derive(Debug, Clone)]
struct Section {
    name: String,
    is_template: bool,
    /// Inherited entries first (in template order), then the section's own, as Asterisk's
    /// inherit_category does.
    entries: Vec<(String, String)>,
    origin: String,
}

impl Section {
    /// All values of `key`, in order.
    fn all(&self, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The effective value of a single-valued option: the last one set.
    fn get(&self, key: &str) -> Option<&str> {
        self.all(key).last().copied()
    }
}

#[derive(Debug, Default)]
struct Config {
    sections: Vec<Section>,
    /// Repository paths of the files read, the top file first.
    files: Vec<PathBuf>,
}

impl Config {
    /// Sections (not templates) named `name`.
    fn named(&self, name: &str) -> Vec<&Section> {
        self.sections
            .iter()
            .filter(|s| !s.is_template && s.name == name)
            .collect()
    }

    /// The one non-template section named `name` with `type=<ty>` (pjsip.conf).
    fn typed(&self, name: &str, ty: &str) -> &Section {
        let found: Vec<_> = self
            .named(name)
            .into_iter()
            .filter(|s| s.get("type") == Some(ty))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected exactly one [{name}] with type={ty}, found {}",
            found.len()
        );
        found[0]
    }
}

/// Maps an `#include` path (relative to /etc/asterisk, as installed per asterisk/README.md)
/// to the file in this repository: `callverify/X` is `dialplan/X`, a bare `X` is `asterisk/X`.
fn resolve_include(path: &str) -> PathBuf {
    let path = path
        .trim()
        .trim_matches(|c| c == '"' || c == '<' || c == '>');
    if let Some(rest) = path.strip_prefix("callverify/") {
        assert!(!rest.contains('/'), "unexpected include path {path}");
        repo().join("dialplan").join(rest)
    } else {
        assert!(
            !path.contains('/'),
            "include path {path} is not one the install layout provides"
        );
        repo().join("asterisk").join(path)
    }
}

/// Strips a `;` comment (`\;` is a literal semicolon), as Asterisk's config loader does.
fn strip_comment(line: &str) -> String {
    assert!(
        !line.contains(";--"),
        "block comments are not used in the kit: {line}"
    );
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&';') => {
                out.push(';');
                chars.next();
            }
            ';' => break,
            _ => out.push(c),
        }
    }
    out.trim().to_string()
}

fn parse_file(path: &Path) -> Config {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_text(&text, path)
}

fn parse_text(text: &str, path: &Path) -> Config {
    let mut config = Config::default();
    let mut current: Option<usize> = None;
    parse_into(&mut config, &mut current, text, path, 0);
    config
}

fn parse_into(
    config: &mut Config,
    current: &mut Option<usize>,
    text: &str,
    path: &Path,
    depth: usize,
) {
    assert!(
        depth < 10,
        "#include nesting too deep at {}",
        path.display()
    );
    config.files.push(path.to_path_buf());
    let file = path
        .strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string();
    for (n, raw) in text.lines().enumerate() {
        let origin = format!("{file}:{}", n + 1);
        if let Some(directive) = raw.trim_start().strip_prefix('#') {
            let (word, arg) = directive
                .split_once(char::is_whitespace)
                .unwrap_or((directive, ""));
            assert_eq!(word, "include", "{origin}: unsupported directive #{word}");
            let target = resolve_include(&strip_comment(arg));
            let body = fs::read_to_string(&target)
                .unwrap_or_else(|e| panic!("{origin}: #include {}: {e}", target.display()));
            // Asterisk goes on in the current category inside the included file.
            let mut inner = *current;
            parse_into(config, &mut inner, &body, &target, depth + 1);
            if inner != *current {
                *current = inner;
            }
            continue;
        }
        let line = strip_comment(raw);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let (name, after) = rest
                .split_once(']')
                .unwrap_or_else(|| panic!("{origin}: no closing ']'"));
            let mut section = Section {
                name: name.to_string(),
                is_template: false,
                entries: Vec::new(),
                origin: origin.clone(),
            };
            let after = after.trim();
            if !after.is_empty() {
                let options = after
                    .strip_prefix('(')
                    .and_then(|a| a.strip_suffix(')'))
                    .unwrap_or_else(|| panic!("{origin}: bad section options {after:?}"));
                for option in options.split(',').map(str::trim) {
                    match option {
                        "!" => section.is_template = true,
                        "+" => panic!("{origin}: (+) is not used in the kit"),
                        base => {
                            let parent = config
                                .sections
                                .iter()
                                .rev()
                                .find(|s| s.name == base)
                                .unwrap_or_else(|| {
                                    panic!("{origin}: inheritance requested, but [{base}] does not exist (yet)")
                                });
                            section.entries.extend(parent.entries.iter().cloned());
                        }
                    }
                }
            }
            config.sections.push(section);
            *current = Some(config.sections.len() - 1);
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{origin}: no '=' in {line:?}"));
        let value = value.strip_prefix('>').unwrap_or(value);
        let index = current.unwrap_or_else(|| panic!("{origin}: no category context for {line:?}"));
        config.sections[index]
            .entries
            .push((key.trim().to_string(), value.trim().to_string()));
    }
}

// ------------------------------------------------------------------------------------------
// Dialplan

#[derive(Debug, Clone)]
struct Step {
    exten: String,
    /// `1`, `n`, or `n(label)`.
    priority: String,
    app: String,
    args: String,
    origin: String,
}

impl Step {
    fn label(&self) -> Option<&str> {
        let open = self.priority.find('(')?;
        Some(self.priority[open + 1..].trim_end_matches(')'))
    }

    fn arg_list(&self) -> Vec<String> {
        split_args(&self.args)
    }
}

/// Dialplan contexts by name, each with its steps in file order.
fn dialplan(config: &Config) -> BTreeMap<String, Vec<Step>> {
    let mut contexts: BTreeMap<String, Vec<Step>> = BTreeMap::new();
    for section in &config.sections {
        if section.is_template
            || section.name.eq_ignore_ascii_case("general")
            || section.name.eq_ignore_ascii_case("globals")
        {
            continue;
        }
        let steps = contexts.entry(section.name.clone()).or_default();
        let mut last_exten: Option<String> = None;
        for (key, value) in &section.entries {
            let origin = format!("{} [{}]", section.origin, section.name);
            let (exten, rest) = match key.as_str() {
                "exten" => {
                    let (exten, rest) = value
                        .split_once(',')
                        .unwrap_or_else(|| panic!("{origin}: bad exten line {value:?}"));
                    (exten.trim().to_string(), rest)
                }
                "same" => (
                    last_exten
                        .clone()
                        .unwrap_or_else(|| panic!("{origin}: 'same' before any 'exten'")),
                    value.as_str(),
                ),
                other => panic!("{origin}: unexpected {other} => {value} in a context"),
            };
            let (priority, app_call) = rest
                .split_once(',')
                .unwrap_or_else(|| panic!("{origin}: no application in {value:?}"));
            let priority = priority.trim().to_string();
            let first = priority.split('(').next().unwrap();
            assert!(
                first == "n" || first.parse::<u32>().is_ok(),
                "{origin}: priority {priority:?}"
            );
            if key == "exten" {
                assert!(
                    first == "1"
                        || steps.iter().any(|s| s.exten == exten)
                        || last_exten.as_deref() == Some(exten.as_str()),
                    "{origin}: extension {exten} does not start at priority 1"
                );
            }
            let (app, args) = parse_app(app_call.trim(), &origin);
            last_exten = Some(exten.clone());
            steps.push(Step {
                exten,
                priority,
                app,
                args,
                origin,
            });
        }
    }
    contexts
}

/// `App(args)` → (`App`, `args`): the arguments run to the last `)`, as pbx_config reads them.
fn parse_app(call: &str, origin: &str) -> (String, String) {
    match call.find('(') {
        Some(open) => {
            let close = call
                .rfind(')')
                .unwrap_or_else(|| panic!("{origin}: unbalanced application call {call:?}"));
            assert!(
                call[close + 1..].trim().is_empty(),
                "{origin}: text after the application call {call:?}"
            );
            (
                call[..open].trim().to_string(),
                call[open + 1..close].to_string(),
            )
        }
        None => (call.to_string(), String::new()),
    }
}

/// Splits application arguments at top-level commas (not inside `(...)`, `[...]` or `{...}`).
fn split_args(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in args.chars() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out
}

/// The applications a step runs: itself, and those inside `ExecIf(expr?A(..):B(..))`.
fn apps_of(step: &Step) -> Vec<(String, String)> {
    if step.app != "ExecIf" {
        return vec![(step.app.clone(), step.args.clone())];
    }
    let (_, branches) = step
        .args
        .split_once('?')
        .unwrap_or_else(|| panic!("{}: ExecIf without '?'", step.origin));
    let mut apps = vec![(step.app.clone(), step.args.clone())];
    // Split the branches at a top-level ':'.
    let mut depth = 0i32;
    let mut parts = vec![String::new()];
    for c in branches.chars() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ':' if depth == 0 => {
                parts.push(String::new());
                continue;
            }
            _ => {}
        }
        parts.last_mut().unwrap().push(c);
    }
    for part in parts.iter().filter(|p| !p.trim().is_empty()) {
        apps.push(parse_app(part.trim(), &step.origin));
    }
    apps
}

/// Every sound file a step plays (Playback, Background, ControlPlayback, Read's prompts).
fn played_sounds(step: &Step) -> Vec<String> {
    let mut sounds = Vec::new();
    for (app, args) in apps_of(step) {
        let args = split_args(&args);
        let list = match app.to_ascii_lowercase().as_str() {
            "playback" | "background" | "controlplayback" => args.first().cloned(),
            "read" => args.get(1).cloned(),
            _ => None,
        };
        if let Some(list) = list {
            sounds.extend(
                list.split('&')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty()),
            );
        }
    }
    sounds
}

fn kit_extensions() -> Config {
    parse_file(&repo().join("asterisk/extensions.conf"))
}

// ------------------------------------------------------------------------------------------
// Tests

#[test]
fn extensions_conf_includes_the_dialplan_and_its_globals() {
    let config = kit_extensions();
    for file in [
        "dialplan/callverify.conf",
        "dialplan/callverify-globals.conf",
    ] {
        assert!(
            config.files.contains(&repo().join(file)),
            "asterisk/extensions.conf does not #include {file}"
        );
    }
    // The globals file is #included inside the admin's [globals] (Asterisk reads only the
    // first [globals] of extensions.conf), so it must not open a section of its own.
    let globals_text = fs::read_to_string(repo().join("dialplan/callverify-globals.conf")).unwrap();
    for line in globals_text.lines().map(strip_comment) {
        assert!(
            !line.starts_with('['),
            "callverify-globals.conf opens a section: {line}"
        );
    }
    let globals: Vec<_> = config
        .sections
        .iter()
        .filter(|s| s.name.eq_ignore_ascii_case("globals"))
        .collect();
    assert_eq!(globals.len(), 1, "exactly one [globals] section");
    let host = globals[0]
        .get("CALLVERIFY_AGI_HOST")
        .expect("CALLVERIFY_AGI_HOST in [globals]");
    let (h, port) = host
        .rsplit_once(':')
        .expect("CALLVERIFY_AGI_HOST is host:port");
    assert!(
        !h.is_empty() && port.parse::<u16>().is_ok(),
        "CALLVERIFY_AGI_HOST={host}"
    );
    assert_eq!(host, "127.0.0.1:4573", "the daemon's default agi.listen");
    assert_eq!(globals[0].get("CALLVERIFY_TRUNK"), Some(TRUNK_ENDPOINT));
    // The dialplan file itself has contexts only.
    let dialplan_file = parse_file(&repo().join("dialplan/callverify.conf"));
    for s in &dialplan_file.sections {
        assert!(
            !["general", "globals"].contains(&s.name.to_ascii_lowercase().as_str()),
            "dialplan/callverify.conf must not define [{}]",
            s.name
        );
    }
}

#[test]
fn the_contexts_the_dialer_and_the_daemon_name_exist() {
    let contexts = dialplan(&kit_extensions());
    let outbound = contexts
        .get(OUTBOUND_CONTEXT)
        .unwrap_or_else(|| panic!("context {OUTBOUND_CONTEXT} missing"));
    assert!(
        outbound.iter().any(|s| s.exten == "s" && s.priority == "1"),
        "{OUTBOUND_CONTEXT} has no exten s, priority 1 (where Originate lands)"
    );
    let qa = contexts
        .get(QA_CONTEXT)
        .unwrap_or_else(|| panic!("context {QA_CONTEXT} missing"));
    for exten in ["7000", "7001", "7002", "7003"] {
        assert!(
            qa.iter().any(|s| s.exten == exten && s.priority == "1"),
            "{QA_CONTEXT} has no extension {exten}"
        );
    }
    // Every context the doctor checks for, and its self-test call's own, which hands the
    // doctor's token to the selftest script.
    for context in KIT_CONTEXTS.iter().chain([&SELFTEST_CONTEXT]) {
        assert!(contexts.contains_key(*context), "context {context} missing");
    }
    let selftest = &contexts[SELFTEST_CONTEXT];
    let token = format!("${{{TOKEN_VARIABLE}}}");
    assert!(
        selftest
            .iter()
            .filter(|s| s.exten == "s")
            .flat_map(apps_of)
            .any(|(app, args)| app == "AGI" && args.ends_with(&format!("/selftest,{token}"))),
        "{SELFTEST_CONTEXT} does not run agi://.../selftest,{token} at exten s"
    );
    // The QA context runs the daemon's qa script, reads DTMF back, echoes.
    let apps: BTreeSet<_> = qa.iter().flat_map(apps_of).map(|(a, _)| a).collect();
    for app in ["AGI", "Read", "SayDigits", "Echo"] {
        assert!(apps.contains(app), "{QA_CONTEXT} does not use {app}");
    }
}

#[test]
fn every_agi_url_points_at_the_daemon_and_a_script_it_serves() {
    let contexts = dialplan(&kit_extensions());
    let mut scripts_used = BTreeSet::new();
    for step in contexts.values().flatten() {
        for (app, args) in apps_of(step) {
            if !["agi", "eagi", "deadagi"].contains(&app.to_ascii_lowercase().as_str()) {
                continue;
            }
            let url = split_args(&args)[0].trim().to_string();
            let path = url
                .strip_prefix("agi://${CALLVERIFY_AGI_HOST}/")
                .unwrap_or_else(|| {
                    panic!(
                        "{}: AGI URL {url} does not use agi://${{CALLVERIFY_AGI_HOST}}/",
                        step.origin
                    )
                });
            assert!(
                SCRIPTS.contains(&path),
                "{}: script {path:?} is not one the daemon serves ({SCRIPTS:?})",
                step.origin
            );
            scripts_used.insert(path.to_string());
        }
    }
    for script in ["verify", "manual", "qa", "qa-callback", "selftest"] {
        assert!(
            scripts_used.contains(script),
            "no extension runs agi://.../{script}"
        );
    }
}

#[test]
fn the_outbound_context_passes_the_dialers_id_and_apologises_when_the_daemon_did_not_run_the_call()
{
    let contexts = dialplan(&kit_extensions());
    let steps: Vec<_> = contexts[OUTBOUND_CONTEXT]
        .iter()
        .filter(|s| s.exten == "s")
        .collect();
    let agi: Vec<_> = steps.iter().filter(|s| s.app == "AGI").collect();
    assert_eq!(agi.len(), 1, "one AGI call in {OUTBOUND_CONTEXT}");
    let args = agi[0].arg_list();
    assert_eq!(args[0], "agi://${CALLVERIFY_AGI_HOST}/verify");
    assert_eq!(
        args.get(1).map(String::as_str),
        Some(format!("${{{DIALER_ID_VAR}}}").as_str()),
        "the verification id (agi_arg_1) must be the dialer's {DIALER_ID_VAR}"
    );
    assert_eq!(
        args.len(),
        2,
        "exactly one AGI argument: the verification id"
    );

    let agi_at = steps.iter().position(|s| s.app == "AGI").unwrap();
    // The language is set from the dialer's variable before the daemon speaks.
    assert!(
        steps[..agi_at]
            .iter()
            .any(|s| apps_of(s).iter().any(|(app, a)| app == "Set"
                && a.starts_with("CHANNEL(language)=")
                && a.contains(&format!("${{{DIALER_LANG_VAR}}}")))),
        "CHANNEL(language) is not set from {DIALER_LANG_VAR} before the AGI"
    );
    check_apology_when_the_daemon_did_not_hang_up(&steps, agi_at);
    // The QA line and the support line (each of its sessions) apologise the same way.
    for (context, exten) in [(QA_CONTEXT, "7000"), (SUPPORT_CONTEXT, "s")] {
        let steps: Vec<_> = contexts[context]
            .iter()
            .filter(|s| s.exten == exten)
            .collect();
        let sessions: Vec<_> = (0..steps.len())
            .filter(|&at| steps[at].app == "AGI")
            .collect();
        assert!(!sessions.is_empty(), "{context}: no AGI");
        for at in sessions {
            check_apology_when_the_daemon_did_not_hang_up(&steps, at);
        }
    }
}

/// The trunk is dialled from the dialplan only for a QA call-back, and only after the
/// daemon's gate allowed that very number: the gate's variable is cleared first (so that a
/// daemon that is down refuses), the gate is asked for the number the trunk is dialled with,
/// and anything but `allowed` jumps past the dial.
#[test]
fn every_trunk_call_of_the_dialplan_asks_the_daemon_first() {
    let contexts = dialplan(&kit_extensions());
    let var = format!("${{{}}}", qa::CALLBACK_VARIABLE);
    let mut dials = 0;
    for steps in contexts.values() {
        for (at, step) in steps.iter().enumerate() {
            let dialled = apps_of(step).into_iter().find_map(|(app, args)| {
                let channel = split_args(&args)[0].trim().to_string();
                (["Dial", "Originate"].contains(&app.as_str())
                    && channel.contains("${CALLVERIFY_TRUNK}"))
                .then_some(channel)
            });
            let Some(channel) = dialled else { continue };
            dials += 1;
            let number = channel
                .strip_prefix("PJSIP/")
                .and_then(|c| c.strip_suffix("@${CALLVERIFY_TRUNK}"))
                .unwrap_or_else(|| panic!("{}: trunk channel {channel}", step.origin));
            let before: Vec<&Step> = steps[..at]
                .iter()
                .filter(|s| s.exten == step.exten)
                .collect();
            let cleared = before.iter().position(|s| {
                s.app == "Set" && s.args.trim() == format!("{}=", qa::CALLBACK_VARIABLE)
            });
            let asked = before.iter().position(|s| {
                s.app == "AGI"
                    && s.arg_list()
                        == [
                            "agi://${CALLVERIFY_AGI_HOST}/qa-callback".to_string(),
                            number.into(),
                        ]
            });
            let guard = before.iter().position(|s| {
                s.app == "GotoIf" && s.args.starts_with(&format!(r#"$["{var}" != "allowed"]?"#))
            });
            let (Some(cleared), Some(asked), Some(guard)) = (cleared, asked, guard) else {
                panic!(
                    "{}: the trunk is dialled without clearing {var}, asking \
                     agi://.../qa-callback for {number} and jumping away unless it is allowed \
                     ({cleared:?}, {asked:?}, {guard:?})",
                    step.origin
                );
            };
            assert!(
                cleared < asked && asked < guard,
                "{}: gate out of order",
                step.origin
            );
            let label = before[guard].args.split_once('?').unwrap().1;
            let target = steps
                .iter()
                .position(|s| s.exten == step.exten && s.label() == Some(label))
                .unwrap_or_else(|| panic!("{}: no label {label}", step.origin));
            assert!(
                target > at,
                "{}: a refusal jumps back before the dial",
                step.origin
            );
        }
    }
    assert!(dials > 0, "no call-back dials the trunk");
}

/// The daemon ends the dialplan by hanging up when it is done. Still in the dialplan after
/// the AGI, it could not be reached (AGISTATUS FAILURE) or closed the session without running
/// the call to its end (over its capacity, stopping, killed: AGISTATUS SUCCESS, as res_agi
/// sets it when a FastAGI server closes): whatever AGISTATUS says, the way on, past every
/// `GotoIf` not taken (the daemon's own route variables), plays the technical-problem
/// prompt before the call is hung up.
fn check_apology_when_the_daemon_did_not_hang_up(steps: &[&Step], agi_at: usize) {
    let origin = &steps[agi_at].origin;
    let mut played = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut at = agi_at + 1;
    loop {
        assert!(seen.insert(at), "{origin}: the way on after the AGI loops");
        let step = steps
            .get(at)
            .unwrap_or_else(|| panic!("{origin}: the way on after the AGI never hangs up"));
        match step.app.as_str() {
            "Hangup" => break,
            "Goto" => {
                let label = step.args.trim();
                at = steps
                    .iter()
                    .position(|s| s.label() == Some(label))
                    .unwrap_or_else(|| panic!("{}: no label {label}", step.origin));
                continue;
            }
            _ => played.extend(played_sounds(step)),
        }
        at += 1;
    }
    assert!(
        played.iter().any(|p| p == Prompt::TechnicalProblem.file()),
        "{origin}: the dialplan goes on after the AGI to a hang-up without playing {} \
         (played: {played:?})",
        Prompt::TechnicalProblem.file()
    );
}

#[test]
fn every_application_is_known_and_every_label_and_variable_exists() {
    let config = kit_extensions();
    let globals: BTreeSet<_> = config
        .sections
        .iter()
        .filter(|s| s.name.eq_ignore_ascii_case("globals"))
        .flat_map(|s| s.entries.iter().map(|(k, _)| k.clone()))
        .collect();
    for (name, steps) in dialplan(&config) {
        for step in &steps {
            for (app, _) in apps_of(step) {
                assert!(
                    KNOWN_APPS.contains(&app.as_str()),
                    "{}: unknown application {app}",
                    step.origin
                );
            }
            // Every ${CALLVERIFY_*} is a global or a variable the dialer sets.
            let mut rest = step.args.as_str();
            while let Some(at) = rest.find("${CALLVERIFY_") {
                let var = &rest[at + 2..];
                let end = var
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap();
                let var = &var[..end];
                assert!(
                    globals.contains(var)
                        || [
                            DIALER_ID_VAR,
                            DIALER_LANG_VAR,
                            manual::ROUTE_VARIABLE,
                            qa::CALLBACK_VARIABLE,
                            TOKEN_VARIABLE
                        ]
                        .contains(&var),
                    "{}: ${{{var}}} is neither a global nor set by the dialer, the doctor or the daemon",
                    step.origin
                );
                rest = &rest[at + 2 + end..];
            }
            // Goto/GotoIf to a label of the same extension.
            let targets: Vec<String> = match step.app.as_str() {
                "GotoIf" => step
                    .args
                    .split_once('?')
                    .map(|(_, t)| t.split(':').map(str::to_string).collect())
                    .unwrap_or_default(),
                "Goto" if !step.args.contains(',') => vec![step.args.clone()],
                _ => Vec::new(),
            };
            for target in targets.iter().filter(|t| !t.is_empty()) {
                if let Some((context, _)) = target.split_once(',') {
                    assert!(
                        dialplan(&config).contains_key(context),
                        "{}: jump to a context {context} that does not exist",
                        step.origin
                    );
                    continue;
                }
                assert!(
                    steps
                        .iter()
                        .any(|s| s.exten == step.exten && s.label() == Some(target.as_str())),
                    "{}: [{name}] {} has no label {target}",
                    step.origin,
                    step.exten
                );
            }
        }
    }
}

/// `asterisk/sounds/<lang>/callverify/<name>.wav` for `callverify/<name>`.
fn wav_path(lang: &str, file: &str) -> PathBuf {
    repo()
        .join("asterisk/sounds")
        .join(lang)
        .join(format!("{file}.wav"))
}

#[test]
fn every_prompt_the_dialplan_plays_exists_for_every_language() {
    let catalogue: BTreeSet<_> = Prompt::ALL.iter().map(|p| p.file()).collect();
    let mut checked = 0;
    for step in dialplan(&kit_extensions()).values().flatten() {
        for sound in played_sounds(step) {
            if !sound.starts_with("callverify/") {
                continue; // an Asterisk core sound (goodbye, beep, demo-echotest, ...)
            }
            assert!(
                catalogue.contains(sound.as_str()),
                "{}: {sound} is not in the prompt catalogue",
                step.origin
            );
            for lang in LANGUAGES {
                let wav = wav_path(lang, &sound);
                assert!(wav.is_file(), "{}: {} missing", step.origin, wav.display());
            }
            checked += 1;
        }
    }
    assert!(checked > 0, "the dialplan plays no callverify prompt");
}

#[test]
fn every_catalogue_prompt_is_a_telephone_quality_wav_for_every_language() {
    for lang in LANGUAGES {
        for prompt in Prompt::ALL.iter().filter(|p| !p.is_core_sound()) {
            let wav = wav_path(lang, prompt.file());
            let bytes = fs::read(&wav)
                .unwrap_or_else(|e| panic!("{prompt:?} {lang}: {}: {e}", wav.display()));
            let (format, data) = wav::parse(&bytes)
                .unwrap_or_else(|e| panic!("{}: not a WAV file: {e}", wav.display()));
            assert_eq!(
                format,
                wav::Format {
                    encoding: 1,
                    channels: 1,
                    rate: SAMPLE_RATE,
                    bits: 16
                },
                "{}",
                wav.display()
            );
            let secs = data.len() as f64 / f64::from(2 * SAMPLE_RATE);
            assert!(
                (0.5..30.0).contains(&secs),
                "{}: {secs:.2} s of audio",
                wav.display()
            );
        }
        // And nothing stale: every shipped WAV is a catalogue prompt.
        let dir = repo().join("asterisk/sounds").join(lang).join("callverify");
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let name = format!("callverify/{}", path.file_stem().unwrap().to_string_lossy());
            assert!(
                path.extension().is_some_and(|e| e == "wav")
                    && Prompt::ALL.iter().any(|p| p.file() == name),
                "{} is not a catalogue prompt",
                path.display()
            );
        }
    }
}

#[test]
fn the_listening_check_plays_the_whole_catalogue_in_order() {
    let contexts = dialplan(&kit_extensions());
    let played: Vec<String> = contexts[QA_CONTEXT]
        .iter()
        .filter(|s| s.exten == "7003")
        .flat_map(played_sounds)
        .collect();
    let catalogue: Vec<String> = Prompt::ALL.iter().map(|p| p.file().to_string()).collect();
    assert_eq!(
        played, catalogue,
        "extension 7003 must play Prompt::ALL in order"
    );
}

// ------------------------------------------------------------------------------------------
// pjsip.conf and manager.conf

const REGISTER_INCLUDE: &str = "#include callverify-trunk-register.conf";
const IP_INCLUDE: &str = "#include callverify-trunk-ip.conf";

/// The kit's PJSIP part, `callverify-pjsip.conf`, as shipped (registering trunk) and with the
/// IP-authenticated trunk instead, each with the transports of the sample pjsip.conf that
/// includes it (on an existing PBX, the admin's own).
fn pjsip_variants() -> Vec<(&'static str, Config)> {
    let sample = parse_file(&repo().join("asterisk/pjsip.conf"));
    let path = repo().join("asterisk/callverify-pjsip.conf");
    assert!(
        sample.files.contains(&path),
        "the sample pjsip.conf includes the kit's part"
    );
    let transports: Vec<Section> = sample
        .sections
        .iter()
        .filter(|s| s.get("type") == Some("transport"))
        .cloned()
        .collect();
    let text = fs::read_to_string(&path).unwrap();
    let active: Vec<_> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("#include"))
        .collect();
    assert_eq!(
        active,
        vec![REGISTER_INCLUDE],
        "callverify-pjsip.conf must #include exactly the registering trunk by default"
    );
    let commented = format!(";{IP_INCLUDE}");
    assert!(
        text.contains(&commented),
        "callverify-pjsip.conf must offer {commented}"
    );
    let ip_text = text
        .replace(REGISTER_INCLUDE, &format!(";{REGISTER_INCLUDE}"))
        .replace(&commented, IP_INCLUDE);
    let with_transports = |mut kit: Config| {
        kit.sections.extend(transports.iter().cloned());
        kit
    };
    vec![
        (
            "registering trunk",
            with_transports(parse_text(&text, &path)),
        ),
        (
            "IP-authenticated trunk",
            with_transports(parse_text(&ip_text, &path)),
        ),
    ]
}

/// The lines the guide (asterisk/README.md, "Add the kit to Asterisk") has an admin add to
/// an existing PBX's files, one per file.
const MERGE_LINES: &[(&str, &str)] = &[
    ("pjsip.conf", "#include callverify-pjsip.conf"),
    ("manager.conf", "#include callverify-manager.conf"),
    (
        "extensions.conf",
        "#include callverify/callverify-globals.conf",
    ),
    ("extensions.conf", "#include callverify/callverify.conf"),
];

/// The kit merges into a PBX that has its own transport, AMI settings and dialplan: the
/// guide's lines add callverify's sections and change none of the admin's.
#[test]
fn the_guides_lines_merge_the_kit_into_an_existing_pbx() {
    let guide = fs::read_to_string(repo().join("asterisk/README.md")).unwrap();
    for (file, line) in MERGE_LINES {
        assert!(
            guide.contains(line),
            "the guide does not tell to add {line:?} to {file}"
        );
    }
    let lines = |file: &str| -> String {
        MERGE_LINES
            .iter()
            .filter(|(f, _)| *f == file)
            .map(|(_, l)| format!("{l}\n"))
            .collect()
    };
    let dir = repo().join("asterisk");

    let existing = "[transport-tls]\ntype=transport\nprotocol=tls\nbind=0.0.0.0:5061\n\n\
                    [101]\ntype=endpoint\ncontext=internal\n\n";
    let pjsip = parse_text(
        &format!("{existing}{}", lines("pjsip.conf")),
        &dir.join("pjsip.conf"),
    );
    let transports: Vec<_> = pjsip
        .sections
        .iter()
        .filter(|s| s.get("type") == Some("transport"))
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        transports,
        vec!["transport-tls"],
        "the kit adds no transport"
    );
    assert_eq!(
        pjsip.typed("101", "endpoint").get("context"),
        Some("internal")
    );
    let trunk = pjsip.typed(TRUNK_ENDPOINT, "endpoint");
    assert_eq!(
        trunk.get("transport"),
        None,
        "the trunk uses the PBX's transport"
    );
    assert_eq!(trunk.get("dtmf_mode"), Some("rfc4733"));

    let existing = "[general]\nenabled = yes\nbindaddr = 127.0.0.1\n\n[admin]\nsecret = s\nread = all\nwrite = all\n\n";
    let manager = parse_text(
        &format!("{existing}{}", lines("manager.conf")),
        &dir.join("manager.conf"),
    );
    assert_eq!(
        manager.named("general").len(),
        1,
        "the kit adds no [general]"
    );
    assert_eq!(manager.named("admin")[0].get("write"), Some("all"));
    assert_eq!(
        manager.named("callverify")[0].get("write"),
        Some("originate")
    );

    // extensions.conf: the globals inside the admin's [globals], the contexts after it.
    let dialplan_lines = lines("extensions.conf");
    let (globals_line, contexts_line) = dialplan_lines.split_once('\n').unwrap();
    let existing = format!(
        "[general]\nstatic=yes\n\n[globals]\nTRUNK=PJSIP/provider\n{globals_line}\n\n\
         [internal]\nexten => 100,1,Answer()\n\n{contexts_line}"
    );
    let extensions = parse_text(&existing, &dir.join("extensions.conf"));
    let globals = extensions.named("globals");
    assert_eq!(globals.len(), 1, "one [globals]");
    let names: Vec<_> = globals[0].entries.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        names.contains(&"TRUNK") && names.contains(&"CALLVERIFY_AGI_HOST"),
        "{names:?}"
    );
    for context in ["internal", OUTBOUND_CONTEXT, QA_CONTEXT] {
        assert_eq!(extensions.named(context).len(), 1, "[{context}]");
    }
}

#[test]
fn the_trunk_endpoint_the_dialer_dials_exists_with_rfc4733() {
    let dialplan_contexts = dialplan(&kit_extensions());
    for (variant, pjsip) in pjsip_variants() {
        let endpoint = pjsip.typed(TRUNK_ENDPOINT, "endpoint");
        assert_eq!(endpoint.get("dtmf_mode"), Some("rfc4733"), "{variant}");
        assert_eq!(endpoint.get("direct_media"), Some("no"), "{variant}");
        let codecs: Vec<_> = endpoint
            .all("allow")
            .iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        for codec in ["ulaw", "alaw", "opus"] {
            assert!(codecs.contains(&codec), "{variant}: {codec} not allowed");
        }
        assert_eq!(codecs[0], "ulaw", "{variant}: ulaw preferred");
        assert_eq!(endpoint.all("disallow"), vec!["all"], "{variant}");
        let context = endpoint.get("context").expect("trunk context");
        assert!(
            dialplan_contexts.contains_key(context),
            "{variant}: the trunk's context {context} is not in the dialplan"
        );
        check_references(&pjsip, endpoint, variant);
        let aor = pjsip.typed(TRUNK_ENDPOINT, "aor");
        assert!(
            aor.get("contact").is_some(),
            "{variant}: the trunk aor has no contact"
        );
        match variant {
            "registering trunk" => {
                let reg = pjsip.typed(TRUNK_ENDPOINT, "registration");
                let auth = reg
                    .get("outbound_auth")
                    .expect("registration outbound_auth");
                pjsip.typed(auth, "auth");
                assert_eq!(endpoint.get("outbound_auth"), Some(auth), "{variant}");
                assert_eq!(reg.get("endpoint"), Some(TRUNK_ENDPOINT));
                assert!(reg.get("server_uri").is_some() && reg.get("client_uri").is_some());
            }
            _ => {
                let identify: Vec<_> = pjsip
                    .sections
                    .iter()
                    .filter(|s| {
                        s.get("type") == Some("identify")
                            && s.get("endpoint") == Some(TRUNK_ENDPOINT)
                    })
                    .collect();
                assert_eq!(identify.len(), 1, "{variant}: one identify for the trunk");
                assert!(
                    !identify[0].all("match").is_empty(),
                    "{variant}: identify match"
                );
                assert!(
                    pjsip
                        .sections
                        .iter()
                        .all(|s| s.get("type") != Some("registration")),
                    "{variant}: no registration"
                );
            }
        }
    }
}

#[test]
fn the_qa_softphone_lands_in_the_qa_context() {
    for (variant, pjsip) in pjsip_variants() {
        let endpoints: Vec<_> = pjsip
            .sections
            .iter()
            .filter(|s| !s.is_template && s.get("type") == Some("endpoint"))
            .filter(|s| s.get("context") == Some(QA_CONTEXT))
            .collect();
        assert_eq!(endpoints.len(), 1, "{variant}: one QA softphone endpoint");
        let phone = endpoints[0];
        assert_eq!(phone.get("dtmf_mode"), Some("rfc4733"));
        check_references(&pjsip, phone, variant);
        let auth = phone.get("auth").expect("the softphone authenticates");
        pjsip.typed(auth, "auth");
    }
}

/// The endpoint's transport (the one named, else the first of pjsip.conf) and aors exist.
fn check_references(pjsip: &Config, endpoint: &Section, variant: &str) {
    match endpoint.get("transport") {
        Some(transport) => {
            pjsip.typed(transport, "transport");
        }
        None => assert!(
            pjsip
                .sections
                .iter()
                .any(|s| s.get("type") == Some("transport")),
            "{variant}: [{}] names no transport and there is none",
            endpoint.name
        ),
    }
    for aor in endpoint.get("aors").expect("endpoint aors").split(',') {
        pjsip.typed(aor.trim(), "aor");
    }
    for section in &pjsip.sections {
        assert!(
            section.get("type").is_some(),
            "{variant}: [{}] has no type",
            section.name
        );
    }
}

#[test]
fn the_ami_user_has_least_privilege_and_an_acl() {
    let manager = parse_file(&repo().join("asterisk/manager.conf"));
    let general = &manager.named("general")[0];
    assert_eq!(general.get("enabled"), Some("yes"));
    let users = manager.named("callverify");
    assert_eq!(users.len(), 1, "one [callverify] AMI user");
    let user = users[0];
    let classes = |key: &str| -> BTreeSet<String> {
        user.get(key)
            .unwrap_or_else(|| panic!("no {key}="))
            .split(',')
            .map(|c| c.trim().to_ascii_lowercase())
            .collect()
    };
    let write = classes("write");
    assert!(write.contains("originate"), "write must allow originate");
    assert_eq!(write.len(), 1, "write = originate only, got {write:?}");
    let read = classes("read");
    assert!(read.contains("call"), "read must include call events");
    for class in ["all", "command", "config", "agent", "user"] {
        assert!(!read.contains(class), "read includes {class}");
    }
    assert_eq!(user.all("deny"), vec!["0.0.0.0/0.0.0.0"], "deny all first");
    assert!(!user.all("permit").is_empty(), "an explicit permit");
    assert!(user.get("secret").is_some_and(|s| !s.is_empty()));
}

/// The shipped unit gives the daemon descriptors enough for its caps: two sockets a call,
/// the greeting places of both Asterisk listeners and the HTTP connections, with room left.
#[test]
fn the_systemd_unit_allows_descriptors_for_every_cap() {
    let unit = fs::read_to_string(repo().join("packaging/callverify.service")).unwrap();
    let limit: usize = unit
        .lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .expect("the unit sets LimitNOFILE")
        .trim()
        .parse()
        .unwrap();
    let config = callverify::config::Config::default();
    let needed = 2 * config.agi.max_sessions as usize
        + 2 * callverify_pbx::admission::greeting_places(config.agi.max_sessions as usize)
        + config.http.max_connections as usize;
    assert!(
        limit >= 2 * needed,
        "LimitNOFILE={limit}, the caps need {needed}"
    );
}
