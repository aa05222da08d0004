//! Configuration: built-in defaults, then one file (see [`Source::locate`]), then environment
//! variables `CALLVERIFY_<SECTION>_<KEY>` (e.g. `CALLVERIFY_AGI_LISTEN`,
//! `CALLVERIFY_DATABASE_URL`). The service and every CLI command find the same file, so they
//! use the same store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::domain::phone::PhonePolicy;
use crate::domain::Policy;
use crate::flow::FlowSettings;
use crate::support::hours::BusinessHours;
use crate::support::message::MessageLimits;
use crate::support::{MessageQuota, SupportSettings};
use callverify_pbx::agi::{ServerConfig, Timeouts};
use callverify_pbx::ami::AmiConfig;
use callverify_speech::{EndpointSettings, RecogniserSettings};

pub const ENV_PREFIX: &str = "CALLVERIFY_";
/// The file in the working directory, looked for after `--config` and [`FILE_VARIABLE`].
pub const DEFAULT_FILE: &str = "callverify.toml";
/// The environment variable naming the configuration file.
pub const FILE_VARIABLE: &str = "CALLVERIFY_CONFIG";
/// The installed service's configuration (the Debian package's conffile), looked for last.
pub const SYSTEM_FILE: &str = "/etc/callverify/callverify.toml";

/// Where the configuration file came from: `--config FILE`, else `$CALLVERIFY_CONFIG`, else
/// `./callverify.toml`, else `/etc/callverify/callverify.toml`, else none (the defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag(PathBuf),
    Variable(PathBuf),
    WorkingDirectory(PathBuf),
    /// `./callverify.toml` that someone else could have written: not read.
    Untrusted {
        path: PathBuf,
        why: String,
    },
    System(PathBuf),
    /// No file: the built-in defaults and the environment.
    Defaults,
}

impl Source {
    /// Where `callverify` finds its configuration: [`Self::locate_in`] the working directory
    /// and [`SYSTEM_FILE`].
    pub fn locate(flag: Option<&Path>) -> Self {
        Self::locate_in(
            flag,
            std::env::var_os(FILE_VARIABLE),
            Path::new(DEFAULT_FILE),
            Path::new(SYSTEM_FILE),
        )
    }

    /// The first of the places in order; a file named by the flag or the variable must exist
    /// (reading it fails otherwise), `local` and `system` are taken only if they exist.
    pub fn locate_in(
        flag: Option<&Path>,
        variable: Option<std::ffi::OsString>,
        local: &Path,
        system: &Path,
    ) -> Self {
        if let Some(path) = flag {
            return Self::Flag(path.to_owned());
        }
        if let Some(path) = variable.filter(|v| !v.is_empty()) {
            return Self::Variable(path.into());
        }
        if local.exists() {
            return match untrusted(local) {
                Some(why) => Self::Untrusted {
                    path: local.to_owned(),
                    why,
                },
                None => Self::WorkingDirectory(local.to_owned()),
            };
        }
        if system.exists() {
            return Self::System(system.to_owned());
        }
        Self::Defaults
    }

    pub fn file(&self) -> Option<&Path> {
        match self {
            Self::Flag(p) | Self::Variable(p) | Self::WorkingDirectory(p) | Self::System(p) => {
                Some(p)
            }
            Self::Untrusted { .. } | Self::Defaults => None,
        }
    }
}

/// Why the file in the working directory may not be the admin's own: a command run as root
/// in a folder another user controls (`/tmp`) would otherwise act on whatever store, with
/// whatever keys, that user's file names. The file and its folder must belong to this user
/// or root, and neither may be writable by anyone else (others, or a group other than this
/// user's own); a sticky folder (`/tmp`) lets nobody swap another's file. Then nobody else
/// can change the file between this check and its reading. `None`: it may be read.
fn untrusted(path: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let (me, my_group) = (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        let folder = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let stat = |path: &Path| {
            std::fs::metadata(path).map_err(|e| format!("{} cannot be read: {e}", path.display()))
        };
        let (file, folder) = match (stat(path), stat(folder)) {
            (Ok(file), Ok(folder)) => (file, folder),
            (Err(why), _) | (_, Err(why)) => return Some(why),
        };
        // Writable by someone else: by all, or by a group that is not this user's.
        let others_write = |meta: &std::fs::Metadata| {
            meta.mode() & 0o002 != 0 || (meta.mode() & 0o020 != 0 && meta.gid() != my_group)
        };
        if file.uid() != me && file.uid() != 0 {
            return Some(format!(
                "it belongs to user id {}, not to you or root",
                file.uid()
            ));
        }
        if others_write(&file) {
            return Some(format!(
                "others may write it (mode {:o})",
                file.mode() & 0o7777
            ));
        }
        // A folder's owner may replace any file in it, sticky or not.
        if folder.uid() != me && folder.uid() != 0 {
            return Some(format!(
                "its folder belongs to user id {}, who may replace it",
                folder.uid()
            ));
        }
        if others_write(&folder) && folder.mode() & 0o1000 == 0 {
            return Some("others may replace it: its folder is writable by them".into());
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    None
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Flag(p) => write!(f, "{} (--config)", p.display()),
            Self::Variable(p) => write!(f, "{} (${FILE_VARIABLE})", p.display()),
            Self::WorkingDirectory(p) => write!(f, "{} (in the working directory)", p.display()),
            Self::Untrusted { path, why } => write!(
                f,
                "{} (in the working directory; not read: {why})",
                path.display()
            ),
            Self::System(p) => write!(f, "{} (the installed service's)", p.display()),
            Self::Defaults => write!(
                f,
                "none: the defaults (no --config, no ${FILE_VARIABLE}, no ./{DEFAULT_FILE}, no {SYSTEM_FILE})"
            ),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub agi: AgiSection,
    pub http: HttpSection,
    pub database: DatabaseSection,
    pub verification: VerificationSection,
    pub security: SecuritySection,
    pub ami: AmiSection,
    pub dialer: DialerSection,
    pub webhooks: WebhooksSection,
    pub qa: QaSection,
    pub speech: SpeechSection,
    pub support: SupportSection,
    pub log: LogSection,
    /// What loading passed over (environment variables naming no setting), for the log once
    /// it is set up.
    #[serde(skip)]
    pub ignored: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// `text` (one line per event) or `json` (one JSON object per line, for log shippers).
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupportSection {
    /// When live staff answer (an IANA time zone, weekdays, and a local window).
    pub timezone: String,
    pub days: Vec<String>,
    pub opens: String,
    pub closes: String,
    /// Dates (YYYY-MM-DD, local) when staff do not answer.
    pub holidays: Vec<String>,
    pub max_message_secs: u64,
    /// Silence after speech that ends a message.
    pub end_silence_secs: u64,
    /// Silence after the tone that counts as no message.
    pub no_speech_secs: u64,
    /// Recordings and transcripts are deleted after this many days.
    pub retention_days: u64,
    /// Messages one caller ID may leave in 24 hours.
    pub max_messages_per_caller: u32,
    /// Messages all callers together may leave in an hour (caller IDs can be faked).
    pub max_messages_per_hour: u32,
    /// Recordings of open requests at most, in megabytes: past it, no message is taken
    /// until staff decide some.
    pub max_recordings_mb: u64,
    /// Console sign-ins last this long.
    pub session_hours: u64,
    /// Mark the console's cookies `Secure`, so browsers send them over HTTPS only. Turn it
    /// on when a TLS proxy serves the console beyond loopback.
    pub secure_cookies: bool,
}

impl Default for SupportSection {
    fn default() -> Self {
        Self {
            timezone: "America/Los_Angeles".into(),
            days: ["Mon", "Tue", "Wed", "Thu", "Fri"].map(String::from).into(),
            opens: "05:00".into(),
            closes: "17:00".into(),
            holidays: Vec::new(),
            max_message_secs: 90,
            end_silence_secs: 5,
            no_speech_secs: 10,
            retention_days: 30,
            max_messages_per_caller: 3,
            max_messages_per_hour: 30,
            max_recordings_mb: 2048,
            session_hours: 12,
            secure_cookies: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksSection {
    /// Receiver of status changes for verifications without a `callback_url`.
    pub url: String,
    /// Signing key of the `Callverify-Signature` header; shared with the web app.
    pub secret: String,
    pub timeout_secs: u64,
    /// First retry of an undelivered event after this; doubling up to an hour.
    pub retry_base_ms: u64,
    /// Accept callback URLs on loopback and private networks (labs and tests only).
    pub allow_private_callbacks: bool,
}

impl Default for WebhooksSection {
    fn default() -> Self {
        Self {
            url: String::new(),
            secret: String::new(),
            timeout_secs: 10,
            retry_base_ms: 5000,
            allow_private_callbacks: false,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QaSection {
    /// Code of the QA line's test verifications (so a scripted caller can key it); when
    /// empty, a random code that the call says first.
    pub code: String,
    /// The numbers the QA call-back extensions (80/81 and a number) may ring, in E.164 and
    /// within `dialer.allowed_countries`; empty: call-backs are refused.
    pub callback_numbers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpeechSection {
    /// Where Asterisk's AudioSocket connections (the caller's audio) are accepted.
    pub listen: String,
    /// The address given to Asterisk's AudioSocket(); empty: `listen`.
    pub advertise: String,
    /// CTranslate2 Whisper model directory; empty: no spoken codes, keypad only.
    pub model: String,
    /// Recognition turns: batches running at once (each a few hundred ms to a second).
    pub max_concurrent: u32,
    /// CPU threads of one turn.
    pub threads: u32,
    /// Silence after speech that ends listening.
    pub hangover_ms: u64,
    /// The same while fewer digits than the code's were heard (pauses between groups).
    pub incomplete_hangover_ms: u64,
    /// Silence after speech that triggers an interim recognition (stop early when the
    /// code's length was heard); shorter than `hangover_ms`, longer than digit gaps.
    pub pause_ms: u64,
    /// The same once as many words as the code has digits were heard: the recognition
    /// starts this soon after the caller's probable last digit.
    pub early_pause_ms: u64,
    /// Listening ends after this much audio.
    pub max_listen_ms: u64,
    /// Listening ends when no speech started within this.
    pub no_speech_ms: u64,
}

impl Default for SpeechSection {
    fn default() -> Self {
        let endpoint = EndpointSettings::default();
        let ms = |d: Duration| d.as_millis() as u64;
        Self {
            listen: "127.0.0.1:4574".into(),
            advertise: String::new(),
            model: String::new(),
            // On 2 cores, two turns of one thread each served 6.0 recognitions a second
            // where one turn of both served 3.4: README, Spoken codes.
            max_concurrent: 2,
            threads: 1,
            hangover_ms: ms(endpoint.hangover),
            incomplete_hangover_ms: ms(endpoint.incomplete_hangover),
            pause_ms: ms(endpoint.pause),
            early_pause_ms: ms(endpoint.early_pause),
            max_listen_ms: ms(endpoint.max_listen),
            no_speech_ms: ms(endpoint.no_speech),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgiSection {
    pub listen: String,
    /// Networks or addresses allowed to connect (AGI itself has no authentication).
    pub allow: Vec<String>,
    pub max_sessions: u32,
    pub env_timeout_secs: u64,
    pub reply_timeout_secs: u64,
    pub shutdown_grace_secs: u64,
}

impl Default for AgiSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:4573".into(),
            allow: vec!["127.0.0.0/8".into(), "::1/128".into()],
            max_sessions: 1000,
            env_timeout_secs: 5,
            reply_timeout_secs: 120,
            shutdown_grace_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// The web app's JSON API and the support console.
    pub listen: String,
    /// Networks or addresses allowed to connect (every `/v1` request needs an API key too).
    pub allow: Vec<String>,
    /// Larger request bodies are refused with 413.
    pub max_body_bytes: u64,
    /// Connections at once; more wait to be accepted. Apart from the calls' places, so that
    /// HTTP clients can never take what calls need.
    pub max_connections: u64,
    /// For a request's headers (and the wait for the next request on a kept-alive
    /// connection), and for a request's handling, its body included.
    pub timeout_secs: u64,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            // This host and the private networks: the web app and the support desk, not
            // the Internet.
            allow: [
                "127.0.0.0/8",
                "::1/128",
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "fc00::/7",
            ]
            .map(String::from)
            .to_vec(),
            max_body_bytes: 16 * 1024,
            max_connections: 256,
            timeout_secs: 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSection {
    /// `sqlite://FILE` or `postgres://USER:PASSWORD@HOST/DB`.
    pub url: String,
    pub max_connections: u32,
    /// How often a daemon tells the store it is alive (several daemons on one Postgres).
    pub heartbeat_secs: u64,
    /// A daemon unheard for this long is declared dead and its calls taken over.
    pub takeover_after_secs: u64,
}

impl Default for DatabaseSection {
    fn default() -> Self {
        Self {
            url: "sqlite://callverify.db".into(),
            max_connections: 8,
            heartbeat_secs: 5,
            takeover_after_secs: 20,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerificationSection {
    pub code_length: u32,
    pub code_ttl_secs: u64,
    pub max_attempts: u32,
    pub lockout_secs: u64,
    pub ack_prompts: u32,
    pub ack_wait_ms: u64,
    pub entry_silences: u32,
    pub digit_timeout_ms: u64,
    pub max_per_number_per_hour: u32,
    pub max_per_user_per_hour: u32,
    pub max_per_api_key_per_hour: u32,
    /// Days an ended verification is kept from its creation (0: kept for ever).
    pub retention_days: u64,
}

impl Default for VerificationSection {
    fn default() -> Self {
        Self {
            code_length: 6,
            code_ttl_secs: 600,
            max_attempts: 3,
            lockout_secs: 24 * 3600,
            ack_prompts: 3,
            ack_wait_ms: 5000,
            entry_silences: 3,
            digit_timeout_ms: 5000,
            max_per_number_per_hour: 5,
            max_per_user_per_hour: 5,
            max_per_api_key_per_hour: 1000,
            retention_days: 90,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecuritySection {
    /// Key for the codes' HMAC; when empty, the key in `secret_file` (created if missing).
    pub secret: String,
    pub secret_file: String,
}

impl Default for SecuritySection {
    fn default() -> Self {
        Self {
            secret: String::new(),
            secret_file: "callverify.secret".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmiSection {
    /// Asterisk's manager host; empty: no dialer (verifications wait for inbound calls).
    pub host: String,
    pub port: u16,
    pub username: String,
    pub secret: String,
    pub keepalive_secs: u64,
    pub action_timeout_secs: u64,
}

impl Default for AmiSection {
    fn default() -> Self {
        Self {
            host: String::new(),
            port: 5038,
            username: "callverify".into(),
            secret: String::new(),
            keepalive_secs: 20,
            action_timeout_secs: 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DialerSection {
    /// ISO 3166 country codes that may be called.
    pub allowed_countries: Vec<String>,
    /// The Originate channel; `{number}` is the E.164 number.
    pub channel: String,
    /// Caller ID shown to the callee, e.g. `"Verify" <+14155550000>`; empty: the trunk's.
    pub caller_id: String,
    pub ring_timeout_secs: u64,
    /// Calls in progress at once (the trunk's capacity).
    pub max_concurrent: u32,
    /// New calls started per second.
    pub max_per_second: u32,
    /// Calls per verification (busy, no answer, no acknowledgement), then `unanswered`.
    pub max_dials: u32,
    pub retry_delay_secs: u64,
}

impl Default for DialerSection {
    fn default() -> Self {
        Self {
            allowed_countries: vec!["US".into(), "CA".into()],
            channel: "PJSIP/{number}@callverify-trunk".into(),
            caller_id: String::new(),
            ring_timeout_secs: 30,
            max_concurrent: 10,
            max_per_second: 2,
            max_dials: 3,
            retry_delay_secs: 300,
        }
    }
}

/// The longest any duration setting may be (10 years of 365 days): far beyond a sensible
/// value, and far from overflowing a timestamp in milliseconds it is added to.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {name}: {message}")]
    Env { name: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error(
        "{path} is not read: {why}. Run the command from another folder, or name the file \
         with --config if you trust it"
    )]
    Untrusted { path: PathBuf, why: String },
}

impl Config {
    /// Defaults, then the file of `source` (its relative paths taken from the file's
    /// folder), then `vars`.
    pub fn load(
        source: &Source,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        if let Source::Untrusted { path, why } = source {
            return Err(ConfigError::Untrusted {
                path: path.clone(),
                why: why.clone(),
            });
        }
        let mut tree = toml::Value::try_from(Config::default()).expect("defaults serialize");
        let file = source.file().map(Path::to_path_buf);
        if let Some(path) = &file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let mut parsed: toml::Value =
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    message: e.message().to_owned(),
                })?;
            anchor_paths(&mut parsed, path.parent().unwrap_or(Path::new("")));
            merge(&mut tree, parsed);
        }
        let mut ignored = Vec::new();
        for (name, value) in vars {
            if name == FILE_VARIABLE {
                continue;
            }
            if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
                if let Some(why) = apply_env(&mut tree, &name, rest, &value)? {
                    ignored.push(format!("{name} ignored: {why}"));
                }
            }
        }
        let mut config: Config =
            tree.try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: file.unwrap_or_else(|| PathBuf::from("(defaults and environment)")),
                    message: e.message().to_owned(),
                })?;
        config.validate()?;
        config.ignored = ignored;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        // First: the checks below add some of these up.
        self.validate_durations()?;
        self.support_settings()?;
        let support = &self.support;
        // The message is taken while Asterisk waits in EXEC AudioSocket.
        if support.max_message_secs == 0
            || support.max_message_secs + support.no_speech_secs + 10 >= self.agi.reply_timeout_secs
        {
            return invalid(
                "support.max_message_secs",
                "must be at least 1, and with no_speech_secs + 10 below agi.reply_timeout_secs",
            );
        }
        if support.end_silence_secs == 0 || support.no_speech_secs == 0 {
            return invalid(
                "support",
                "end_silence_secs and no_speech_secs must be at least 1",
            );
        }
        if support.retention_days == 0 || support.session_hours == 0 {
            return invalid(
                "support",
                "retention_days and session_hours must be at least 1",
            );
        }
        self.agi_listen()?;
        self.agi_server()?;
        self.http_listen()?;
        let v = &self.verification;
        if !crate::domain::codes::LENGTHS.contains(&v.code_length) {
            return invalid("verification.code_length", "must be between 4 and 10");
        }
        if v.max_attempts == 0 {
            return invalid("verification.max_attempts", "must be at least 1");
        }
        if !self.dialer.channel.contains("{number}") {
            return invalid(
                "dialer.channel",
                "must contain {number}, e.g. PJSIP/{number}@trunk",
            );
        }
        if self.dialer.max_dials == 0
            || self.dialer.max_concurrent == 0
            || self.dialer.max_per_second == 0
        {
            return invalid(
                "dialer",
                "max_dials, max_concurrent and max_per_second must be at least 1",
            );
        }
        let d = &self.database;
        if d.heartbeat_secs == 0 || d.takeover_after_secs < 2 * d.heartbeat_secs {
            return invalid(
                "database.takeover_after_secs",
                "must be at least twice database.heartbeat_secs, which must be at least 1",
            );
        }
        if !self.ami.host.is_empty() && self.ami.secret.is_empty() {
            return invalid(
                "ami.secret",
                "is needed when ami.host is set (CALLVERIFY_AMI_SECRET)",
            );
        }
        // The kit's manager.conf ships a placeholder: anyone who read it could place calls.
        if self.ami.secret.to_ascii_uppercase().contains("CHANGE-ME") {
            return invalid(
                "ami.secret",
                "is the Asterisk kit's placeholder: set a long random secret here and in \
                 manager.conf's [callverify] user",
            );
        }
        // It signs every webhook, to `webhooks.url` and to `callback_url`s alike.
        if !self.webhooks.url.is_empty() && self.webhooks.secret.is_empty() {
            return invalid(
                "webhooks.secret",
                "is needed (16 characters or more) when webhooks.url is set",
            );
        }
        if !self.webhooks.secret.is_empty() && self.webhooks.secret.len() < 16 {
            return invalid(
                "webhooks.secret",
                "must be at least 16 characters (it signs the webhooks to webhooks.url and to \
                 callback_urls): set a longer key here and in the web app",
            );
        }
        if !self.qa.code.is_empty() && !crate::domain::codes::is_valid_code(&self.qa.code) {
            return invalid("qa.code", "must be 4 to 10 digits");
        }
        let phones = self.phone_policy();
        for number in &self.qa.callback_numbers {
            if let Err(e) = phones.parse(number) {
                return invalid(
                    "qa.callback_numbers",
                    &format!("{number:?}: {e}: list numbers in E.164 form, e.g. +14155550101"),
                );
            }
        }
        if !self.security.secret.is_empty() && self.security.secret.len() < 16 {
            return invalid("security.secret", "must be at least 16 characters");
        }
        self.validate_speech()
    }

    /// No duration is longer than [`MAX_DURATION`]: they are added to timestamps in
    /// milliseconds (`now + lockout`) and to each other, which must not overflow.
    fn validate_durations(&self) -> Result<(), ConfigError> {
        const MS: u64 = 1;
        const SECS: u64 = 1000;
        const HOURS: u64 = 3600 * SECS;
        const DAYS: u64 = 24 * HOURS;
        let (agi, db, v, ami) = (&self.agi, &self.database, &self.verification, &self.ami);
        let (dial, hooks, s, sup) = (&self.dialer, &self.webhooks, &self.speech, &self.support);
        let durations = [
            ("agi.env_timeout_secs", agi.env_timeout_secs, SECS),
            ("agi.reply_timeout_secs", agi.reply_timeout_secs, SECS),
            ("agi.shutdown_grace_secs", agi.shutdown_grace_secs, SECS),
            ("http.timeout_secs", self.http.timeout_secs, SECS),
            ("database.heartbeat_secs", db.heartbeat_secs, SECS),
            ("database.takeover_after_secs", db.takeover_after_secs, SECS),
            ("verification.code_ttl_secs", v.code_ttl_secs, SECS),
            ("verification.lockout_secs", v.lockout_secs, SECS),
            ("verification.ack_wait_ms", v.ack_wait_ms, MS),
            ("verification.digit_timeout_ms", v.digit_timeout_ms, MS),
            ("verification.retention_days", v.retention_days, DAYS),
            ("ami.keepalive_secs", ami.keepalive_secs, SECS),
            ("ami.action_timeout_secs", ami.action_timeout_secs, SECS),
            ("dialer.ring_timeout_secs", dial.ring_timeout_secs, SECS),
            ("dialer.retry_delay_secs", dial.retry_delay_secs, SECS),
            ("webhooks.timeout_secs", hooks.timeout_secs, SECS),
            ("webhooks.retry_base_ms", hooks.retry_base_ms, MS),
            ("speech.hangover_ms", s.hangover_ms, MS),
            (
                "speech.incomplete_hangover_ms",
                s.incomplete_hangover_ms,
                MS,
            ),
            ("speech.pause_ms", s.pause_ms, MS),
            ("speech.early_pause_ms", s.early_pause_ms, MS),
            ("speech.max_listen_ms", s.max_listen_ms, MS),
            ("speech.no_speech_ms", s.no_speech_ms, MS),
            ("support.max_message_secs", sup.max_message_secs, SECS),
            ("support.end_silence_secs", sup.end_silence_secs, SECS),
            ("support.no_speech_secs", sup.no_speech_secs, SECS),
            ("support.retention_days", sup.retention_days, DAYS),
            ("support.session_hours", sup.session_hours, HOURS),
        ];
        for (key, value, unit) in durations {
            let max = MAX_DURATION.as_secs() * 1000 / unit;
            if value > max {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("must be at most {max} (10 years)"),
                });
            }
        }
        Ok(())
    }

    fn validate_speech(&self) -> Result<(), ConfigError> {
        self.speech_listen()?;
        if self.speech_advertise()?.ip().is_unspecified() {
            // Asterisk would be told to connect to 0.0.0.0: only a PBX on this very host
            // could, and elsewhere every spoken code and message would quietly fail.
            return invalid(
                "speech.advertise",
                "speech.listen binds all addresses: set speech.advertise \
                 (CALLVERIFY_SPEECH_ADVERTISE) to the host:port Asterisk should connect to",
            );
        }
        let s = &self.speech;
        if s.max_concurrent == 0 || s.threads == 0 {
            return invalid("speech", "max_concurrent and threads must be at least 1");
        }
        if !(s.early_pause_ms <= s.pause_ms
            && s.pause_ms < s.hangover_ms
            && s.hangover_ms <= s.incomplete_hangover_ms
            && s.incomplete_hangover_ms < s.max_listen_ms)
        {
            return invalid(
                "speech",
                "needs early_pause_ms <= pause_ms < hangover_ms <= incomplete_hangover_ms \
                 < max_listen_ms",
            );
        }
        if s.no_speech_ms == 0 {
            return invalid("speech.no_speech_ms", "must be at least 1");
        }
        Ok(())
    }

    /// Where the AudioSocket listener binds.
    pub fn speech_listen(&self) -> Result<SocketAddr, ConfigError> {
        socket_addr("speech.listen", &self.speech.listen, "127.0.0.1:4574")
    }

    /// The AudioSocket address to give Asterisk.
    pub fn speech_advertise(&self) -> Result<SocketAddr, ConfigError> {
        match self.speech.advertise.as_str() {
            "" => self.speech_listen(),
            advertise => socket_addr("speech.advertise", advertise, "192.0.2.1:4574"),
        }
    }

    pub fn endpoint_settings(&self) -> EndpointSettings {
        let s = &self.speech;
        EndpointSettings {
            pause: Duration::from_millis(s.pause_ms),
            early_pause: Duration::from_millis(s.early_pause_ms),
            hangover: Duration::from_millis(s.hangover_ms),
            incomplete_hangover: Duration::from_millis(s.incomplete_hangover_ms),
            max_listen: Duration::from_millis(s.max_listen_ms),
            no_speech: Duration::from_millis(s.no_speech_ms),
        }
    }

    /// The recogniser's settings; `None` when no model is configured (keypad only).
    pub fn recogniser_settings(&self) -> Option<RecogniserSettings> {
        let s = &self.speech;
        (!s.model.is_empty()).then(|| RecogniserSettings {
            model: PathBuf::from(&s.model),
            max_concurrent: s.max_concurrent as usize,
            threads: s.threads as usize,
        })
    }

    pub fn agi_listen(&self) -> Result<SocketAddr, ConfigError> {
        socket_addr("agi.listen", &self.agi.listen, "127.0.0.1:4573")
    }

    /// Who may connect to the HTTP listener.
    pub fn http_allow(&self) -> Result<Vec<IpNet>, ConfigError> {
        allowlist("http.allow", &self.http.allow)
    }

    pub fn http_listen(&self) -> Result<SocketAddr, ConfigError> {
        socket_addr("http.listen", &self.http.listen, "127.0.0.1:8080")
    }

    /// The AMI connection, as the dialer and `callverify doctor` make it.
    pub fn ami_config(&self) -> AmiConfig {
        AmiConfig {
            host: self.ami.host.clone(),
            port: self.ami.port,
            username: self.ami.username.clone(),
            secret: self.ami.secret.clone(),
            keepalive: Duration::from_secs(self.ami.keepalive_secs.max(1)),
            action_timeout: Duration::from_secs(self.ami.action_timeout_secs.max(1)),
        }
    }

    pub fn agi_server(&self) -> Result<ServerConfig, ConfigError> {
        let allow = allowlist("agi.allow", &self.agi.allow)?;
        if self.agi.max_sessions == 0 {
            return invalid("agi.max_sessions", "must be at least 1");
        }
        Ok(ServerConfig {
            allow,
            max_sessions: self.agi.max_sessions as usize,
            timeouts: Timeouts {
                env: Duration::from_secs(self.agi.env_timeout_secs),
                reply: Duration::from_secs(self.agi.reply_timeout_secs),
            },
            grace: Duration::from_secs(self.agi.shutdown_grace_secs),
        })
    }

    pub fn policy(&self) -> Policy {
        let v = &self.verification;
        Policy {
            code_length: v.code_length,
            code_ttl: Duration::from_secs(v.code_ttl_secs),
            max_attempts: v.max_attempts,
            lockout: Duration::from_secs(v.lockout_secs),
            per_number_per_hour: v.max_per_number_per_hour,
            per_user_per_hour: v.max_per_user_per_hour,
            per_key_per_hour: v.max_per_api_key_per_hour,
            max_dials: self.dialer.max_dials,
            retry_delay: Duration::from_secs(self.dialer.retry_delay_secs),
            ring_timeout: Duration::from_secs(self.dialer.ring_timeout_secs),
            longest_call: self
                .flow_settings()
                .longest_call(v.max_attempts, self.endpoint_settings().max_listen),
            dead_after: Duration::from_secs(self.database.takeover_after_secs),
            allow_private_callbacks: self.webhooks.allow_private_callbacks,
            retention: (v.retention_days > 0)
                .then(|| Duration::from_secs(v.retention_days * 86_400)),
            signs_webhooks: !self.webhooks.secret.is_empty(),
        }
    }

    pub fn support_settings(&self) -> Result<SupportSettings, ConfigError> {
        let s = &self.support;
        let hours = BusinessHours::new(&s.timezone, &s.days, &s.opens, &s.closes, &s.holidays)
            .map_err(|e| ConfigError::Invalid {
                key: "support",
                message: e.to_string(),
            })?;
        Ok(SupportSettings {
            hours,
            limits: MessageLimits {
                max: Duration::from_secs(s.max_message_secs),
                end_silence: Duration::from_secs(s.end_silence_secs),
                no_speech: Duration::from_secs(s.no_speech_secs),
            },
            retention: Duration::from_secs(s.retention_days * 86_400),
            quota: MessageQuota {
                per_caller_per_day: s.max_messages_per_caller.into(),
                per_hour: s.max_messages_per_hour.into(),
                max_bytes: i64::try_from(s.max_recordings_mb.saturating_mul(1 << 20))
                    .unwrap_or(i64::MAX),
            },
            overdue_after: Duration::from_secs(86_400),
        })
    }

    pub fn flow_settings(&self) -> FlowSettings {
        let v = &self.verification;
        let phones = self.phone_policy();
        FlowSettings {
            ack_prompts: v.ack_prompts,
            ack_wait: Duration::from_millis(v.ack_wait_ms),
            entry_silences: v.entry_silences.max(1),
            digit_timeout: Duration::from_millis(v.digit_timeout_ms),
            qa_code: Some(self.qa.code.clone()).filter(|c| !c.is_empty()),
            qa_callback_numbers: self
                .qa
                .callback_numbers
                .iter()
                .filter_map(|n| phones.parse(n).ok())
                .map(|n| n.as_str().to_owned())
                .collect(),
        }
    }

    pub fn phone_policy(&self) -> PhonePolicy {
        PhonePolicy {
            allowed_countries: self
                .dialer
                .allowed_countries
                .iter()
                .map(|c| c.trim().to_ascii_uppercase())
                .collect(),
        }
    }
}

/// An allowlist setting: addresses or networks like 10.0.0.0/8.
fn allowlist(key: &'static str, entries: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    entries
        .iter()
        .map(|a| {
            a.parse::<IpNet>()
                .or_else(|_| a.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| ConfigError::Invalid {
                    key,
                    message: format!("{a:?} is not an address or network like 10.0.0.0/8"),
                })
        })
        .collect()
}

fn socket_addr(key: &'static str, value: &str, example: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| ConfigError::Invalid {
        key,
        message: format!("{value:?} is not HOST:PORT, e.g. {example}"),
    })
}

fn invalid<T>(key: &'static str, message: &str) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid {
        key,
        message: message.to_owned(),
    })
}

/// A file's relative paths are its folder's, as in Cargo's config files: whichever folder a
/// command runs in, `/etc/callverify/callverify.toml` saying `sqlite://callverify.db` means
/// `/etc/callverify/callverify.db`, the store the service uses.
fn anchor_paths(file: &mut toml::Value, folder: &Path) {
    let mut anchor = |section: &str, key: &str, anchored: fn(&Path, &str) -> Option<String>| {
        if let Some(value) = file.get_mut(section).and_then(|s| s.get_mut(key)) {
            if let Some(new) = value.as_str().and_then(|text| anchored(folder, text)) {
                *value = toml::Value::String(new);
            }
        }
    };
    anchor("database", "url", |folder, url| {
        let path = crate::store::sqlite_path(url).filter(|p| p.is_relative())?;
        let query = url
            .split_once('?')
            .map_or(String::new(), |(_, q)| format!("?{q}"));
        Some(format!("sqlite://{}{query}", folder.join(path).display()))
    });
    for (section, key) in [("security", "secret_file"), ("speech", "model")] {
        anchor(section, key, |folder, path| {
            let relative = !path.is_empty() && Path::new(path).is_relative();
            relative.then(|| folder.join(path).display().to_string())
        });
    }
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(base), toml::Value::Table(over)) => {
            for (k, v) in over {
                match base.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        base.insert(k, v);
                    }
                }
            }
        }
        (slot, over) => *slot = over,
    }
}

/// Set `section.key` from `CALLVERIFY_SECTION_KEY`, typed like the default it replaces.
/// Set the setting `CALLVERIFY_<rest>` names; `Some(why)` when it names none.
fn apply_env(
    tree: &mut toml::Value,
    name: &str,
    rest: &str,
    value: &str,
) -> Result<Option<&'static str>, ConfigError> {
    let env_err = |message: String| ConfigError::Env {
        name: name.to_owned(),
        message,
    };
    let rest = rest.to_ascii_lowercase();
    let Some((section, key)) = rest.split_once('_') else {
        return Ok(Some("not CALLVERIFY_<SECTION>_<KEY>"));
    };
    let Some(slot) = tree.get_mut(section).and_then(|s| s.get_mut(key)) else {
        // Settings of parts not built into this version (e.g. AMI) are ignored, not fatal.
        return Ok(Some("no such setting in this version"));
    };
    *slot = match slot {
        toml::Value::Integer(_) => toml::Value::Integer(
            value
                .trim()
                .parse()
                .map_err(|_| env_err(format!("{value:?} is not a whole number")))?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(
            value
                .trim()
                .parse()
                .map_err(|_| env_err(format!("{value:?} is not true or false")))?,
        ),
        toml::Value::Array(_) => toml::Value::Array(
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
        _ => toml::Value::String(value.to_owned()),
    };
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_design() {
        let c = Config::load(&Source::Flag("/dev/null".into()), env(&[])).unwrap();
        assert_eq!(c.agi.listen, "127.0.0.1:4573");
        assert_eq!(c.database.url, "sqlite://callverify.db");
        assert_eq!(c.verification.code_length, 6);
        assert_eq!(c.verification.max_attempts, 3);
        assert_eq!(c.verification.lockout_secs, 86400);
        assert_eq!(c.phone_policy().allowed_countries, vec!["US", "CA"]);
        // 3 × ("press #" + 5 s), then 6 entries (3 silences, 3 wrong codes) of 10 keys × 5 s
        // or 12 s of speech, with three prompts each.
        assert_eq!(c.policy().longest_call, Duration::from_secs(702));
    }

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[agi]\nlisten = \"0.0.0.0:5000\"\nmax_sessions = 5\n[verification]\ncode_length = 8\n",
        )
        .unwrap();
        let c = Config::load(
            &Source::Flag(path.clone()),
            env(&[
                ("CALLVERIFY_AGI_MAX_SESSIONS", "7"),
                ("CALLVERIFY_DATABASE_URL", "postgres://u@h/db"),
                ("CALLVERIFY_DIALER_ALLOWED_COUNTRIES", "us, gb"),
                ("CALLVERIFY_AMI_HOST", "pbx"),
                ("CALLVERIFY_AMI_SECRET", "s3cret"),
                ("CALLVERIFY_SPEECH_MODEL", "/models"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.agi.listen, "0.0.0.0:5000");
        assert_eq!(c.agi.max_sessions, 7);
        assert_eq!(c.verification.code_length, 8);
        assert_eq!(c.database.url, "postgres://u@h/db");
        assert_eq!(c.phone_policy().allowed_countries, vec!["US", "GB"]);
        assert_eq!((c.ami.host.as_str(), c.ami.port), ("pbx", 5038));
        let speech = c.recogniser_settings().unwrap();
        assert_eq!(speech.model, Path::new("/models"));
    }

    #[test]
    fn the_kits_placeholder_ami_secret_is_refused() {
        let error = Config::load(
            &Source::Flag("/dev/null".into()),
            env(&[
                ("CALLVERIFY_AMI_HOST", "127.0.0.1"),
                ("CALLVERIFY_AMI_SECRET", "CHANGE-ME-to-a-long-random-secret"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("ami.secret: is the Asterisk kit's placeholder"),
            "{error}"
        );
    }

    #[test]
    fn qa_call_back_numbers_are_callable_and_kept_in_e164() {
        let load = |numbers: &str| {
            Config::load(
                &Source::Flag("/dev/null".into()),
                env(&[("CALLVERIFY_QA_CALLBACK_NUMBERS", numbers)]),
            )
        };
        let c = load("+1 (415) 555-0102, +16135550102").unwrap();
        assert_eq!(
            c.flow_settings().qa_callback_numbers,
            vec!["+14155550102", "+16135550102"]
        );
        for refused in ["4155550102", "+19005550102", "+442079460000", "+1415555"] {
            let error = load(refused).unwrap_err().to_string();
            assert!(error.starts_with("qa.callback_numbers: "), "{error}");
            assert!(error.contains(refused), "{error}");
        }
        assert!(load("")
            .unwrap()
            .flow_settings()
            .qa_callback_numbers
            .is_empty());
    }

    #[test]
    fn speech_defaults_and_overrides() {
        let c = Config::load(&Source::Flag("/dev/null".into()), env(&[])).unwrap();
        assert_eq!(c.speech_listen().unwrap().to_string(), "127.0.0.1:4574");
        assert_eq!(c.speech_advertise().unwrap(), c.speech_listen().unwrap());
        assert_eq!(c.recogniser_settings(), None, "keypad only without a model");
        let everywhere = [("CALLVERIFY_SPEECH_LISTEN", "0.0.0.0:4574")];
        let error = Config::load(&Source::Flag("/dev/null".into()), env(&everywhere))
            .unwrap_err()
            .to_string();
        assert!(error.contains("speech.advertise"), "{error}");
        let advertised = env(&[
            everywhere[0],
            ("CALLVERIFY_SPEECH_ADVERTISE", "192.0.2.7:4574"),
        ]);
        let c = Config::load(&Source::Flag("/dev/null".into()), advertised).unwrap();
        assert_eq!(c.speech_advertise().unwrap().to_string(), "192.0.2.7:4574");
        assert_eq!(c.endpoint_settings(), EndpointSettings::default());
        assert_eq!(c.endpoint_settings().hangover, Duration::from_millis(1600));
        assert_eq!(
            c.endpoint_settings().max_listen,
            Duration::from_millis(12_000)
        );

        let c = Config::load(
            &Source::Flag("/dev/null".into()),
            env(&[
                ("CALLVERIFY_SPEECH_ADVERTISE", "192.0.2.7:4574"),
                ("CALLVERIFY_SPEECH_MODEL", "/m"),
                ("CALLVERIFY_SPEECH_MAX_CONCURRENT", "3"),
                ("CALLVERIFY_SPEECH_HANGOVER_MS", "1200"),
            ]),
        )
        .unwrap();
        assert_eq!(c.speech_advertise().unwrap().to_string(), "192.0.2.7:4574");
        let r = c.recogniser_settings().unwrap();
        assert_eq!((r.max_concurrent, r.threads), (3, 1));
        assert_eq!(c.endpoint_settings().hangover, Duration::from_millis(1200));

        let bad = Config::load(
            &Source::Flag("/dev/null".into()),
            env(&[("CALLVERIFY_SPEECH_PAUSE_MS", "2000")]),
        )
        .unwrap_err()
        .to_string();
        assert!(bad.contains("pause_ms"), "{bad}");
    }

    #[test]
    fn the_shipped_example_is_valid_and_says_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("callverify.example.toml");
        let mut example = Config::load(&Source::Flag(path), env(&[])).unwrap();
        // Its relative paths are its folder's.
        let folder = env!("CARGO_MANIFEST_DIR");
        assert_eq!(
            example.database.url,
            format!("sqlite://{folder}/callverify.db")
        );
        assert_eq!(
            example.security.secret_file,
            format!("{folder}/callverify.secret")
        );
        let defaults = Config::default();
        example.database.url = defaults.database.url.clone();
        example.security.secret_file = defaults.security.secret_file.clone();
        let defaults = toml::Value::try_from(defaults).unwrap();
        assert_eq!(toml::Value::try_from(example).unwrap(), defaults);
    }

    /// The Debian package's conffile: the store in the state directory, every other key
    /// commented out with its default, so that it says what the example says.
    #[test]
    fn the_packaged_configuration_is_the_example_with_the_services_paths() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let packaged = root.join("packaging/callverify.toml");
        let config = Config::load(&Source::System(packaged.clone()), env(&[])).unwrap();
        assert_eq!(
            config.database.url,
            "sqlite:///var/lib/callverify/callverify.db"
        );
        assert_eq!(
            config.security.secret_file,
            "/var/lib/callverify/callverify.secret"
        );
        let text: String = std::fs::read_to_string(&packaged)
            .unwrap()
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(key) if key.starts_with(|c: char| c.is_ascii_lowercase()) => key,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let uncommented: Config = toml::from_str(&text).unwrap();
        let example = Config::load(
            &Source::Flag(root.join("callverify.example.toml")),
            env(&[]),
        )
        .unwrap();
        let mut example = toml::Value::try_from(example).unwrap();
        example["database"]["url"] = config.database.url.clone().into();
        example["security"]["secret_file"] = config.security.secret_file.clone().into();
        assert_eq!(toml::Value::try_from(uncommented).unwrap(), example);
    }

    #[test]
    fn the_file_is_looked_for_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (local, system) = (
            dir.path().join("local.toml"),
            dir.path().join("system.toml"),
        );
        let flag = Path::new("flag.toml");
        let variable = || Some(std::ffi::OsString::from("variable.toml"));
        let locate = |flag, variable| Source::locate_in(flag, variable, &local, &system);
        assert_eq!(locate(None, None), Source::Defaults);
        std::fs::write(&system, "").unwrap();
        assert_eq!(locate(None, None), Source::System(system.clone()));
        std::fs::write(&local, "").unwrap();
        assert_eq!(locate(None, None), Source::WorkingDirectory(local.clone()));
        assert_eq!(
            locate(None, Some("".into())),
            Source::WorkingDirectory(local.clone())
        );
        assert_eq!(
            locate(None, variable()),
            Source::Variable("variable.toml".into())
        );
        assert_eq!(locate(Some(flag), variable()), Source::Flag(flag.into()));
        // Each says where it came from.
        assert!(Source::Defaults.to_string().contains(SYSTEM_FILE));
        assert!(locate(None, variable()).to_string().contains(FILE_VARIABLE));
    }

    /// A command run as root in a folder another user controls must not act on a store (or
    /// make keys and staff in one) that a file planted there names.
    #[cfg(unix)]
    #[test]
    fn a_working_directory_file_others_could_write_is_not_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (local, system) = (dir.path().join("c.toml"), dir.path().join("none.toml"));
        std::fs::write(&local, "").unwrap();
        let mode = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        let locate = || Source::locate_in(None, None, &local, &system);
        let refused = |why: &str| {
            let source = locate();
            assert!(
                matches!(&source, Source::Untrusted { why: w, .. } if w.contains(why)),
                "{source:?}"
            );
            let error = Config::load(&source, env(&[])).unwrap_err().to_string();
            assert!(error.contains("--config"), "{error}");
        };
        mode(&local, 0o644);
        assert_eq!(locate(), Source::WorkingDirectory(local.clone()));
        mode(&local, 0o666);
        refused("others may write it");
        // Group-writable is fine when the group is the user's own (a umask of 002).
        std::os::unix::fs::chown(&local, None, Some(rustix::process::getegid().as_raw())).unwrap();
        mode(&local, 0o664);
        assert_eq!(locate(), Source::WorkingDirectory(local.clone()));
        mode(&local, 0o644);
        mode(dir.path(), 0o777);
        refused("its folder is writable by them");
        mode(dir.path(), 0o1777);
        assert_eq!(locate(), Source::WorkingDirectory(local.clone()));
        if rustix::process::geteuid().is_root() {
            // A group of other users may write it.
            std::os::unix::fs::chown(&local, None, Some(65534)).unwrap();
            mode(&local, 0o664);
            refused("others may write it");
            mode(&local, 0o644);
            std::os::unix::fs::chown(&local, Some(65534), None).unwrap();
            refused("belongs to user id 65534");
            std::os::unix::fs::chown(&local, Some(0), None).unwrap();
            mode(dir.path(), 0o755);
            std::os::unix::fs::chown(dir.path(), Some(65534), None).unwrap();
            refused("its folder belongs to user id 65534");
            std::os::unix::fs::chown(dir.path(), Some(0), None).unwrap();
        }
        mode(dir.path(), 0o700);
    }

    #[test]
    fn a_files_relative_paths_are_its_folders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("callverify.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Config::load(&Source::System(path.clone()), env(&[])).unwrap()
        };
        let folder = dir.path().display();
        let c = load(
            "[database]\nurl = \"sqlite://cv.db?mode=rwc\"\n[security]\nsecret_file = \"k\"\n",
        );
        assert_eq!(c.database.url, format!("sqlite://{folder}/cv.db?mode=rwc"));
        assert_eq!(c.security.secret_file, format!("{folder}/k"));
        for url in [
            "sqlite:///var/lib/callverify/callverify.db",
            "sqlite::memory:",
            "postgres://u@h/db",
        ] {
            let c = load(&format!("[database]\nurl = {url:?}\n"));
            assert_eq!(c.database.url, url);
        }
        // The defaults and the environment are the working directory's.
        let c = Config::load(
            &Source::Defaults,
            env(&[
                ("CALLVERIFY_SECURITY_SECRET_FILE", "k"),
                (FILE_VARIABLE, "x.toml"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (c.database.url.as_str(), c.security.secret_file.as_str()),
            ("sqlite://callverify.db", "k")
        );
    }

    fn load_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load(&Source::Flag("/dev/null".into()), env(vars))
    }

    /// Every webhook is signed with it, to `webhooks.url` and to `callback_url`s alike.
    #[test]
    fn a_webhook_secret_is_16_characters_whenever_it_is_set() {
        let url = ("CALLVERIFY_WEBHOOKS_URL", "https://app.example.com/hooks");
        for vars in [
            &[("CALLVERIFY_WEBHOOKS_SECRET", "short")][..],
            &[("CALLVERIFY_WEBHOOKS_SECRET", "0123456789abcde")],
            &[url, ("CALLVERIFY_WEBHOOKS_SECRET", "short")],
            &[url],
        ] {
            let error = load_env(vars).unwrap_err().to_string();
            assert!(
                error.starts_with("webhooks.secret:") && error.contains("16 characters"),
                "{vars:?}: {error}"
            );
        }
        for vars in [
            &[][..],
            &[("CALLVERIFY_WEBHOOKS_SECRET", "0123456789abcdef")],
            &[url, ("CALLVERIFY_WEBHOOKS_SECRET", "0123456789abcdef")],
        ] {
            load_env(vars).unwrap();
        }
    }

    /// `now + millis(lockout)` and the like cannot overflow: no duration setting may be
    /// more than 10 years, whichever its unit.
    #[test]
    fn durations_are_at_most_ten_years() {
        let ten_years = 10 * 365 * 86_400_u64;
        let lockout =
            |secs: u64| load_env(&[("CALLVERIFY_VERIFICATION_LOCKOUT_SECS", &secs.to_string())]);
        assert_eq!(
            lockout(ten_years).unwrap().policy().lockout.as_secs(),
            ten_years
        );
        let error = lockout(ten_years + 1).unwrap_err().to_string();
        assert!(error.starts_with("verification.lockout_secs:"), "{error}");
        assert!(error.contains("10 years"), "{error}");
        let error = lockout(i64::MAX as u64).unwrap_err().to_string();
        assert!(error.starts_with("verification.lockout_secs:"), "{error}");

        // Every setting in seconds, milliseconds, hours or days, just over the bound.
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        let mut checked = 0;
        for (section, keys) in defaults.as_table().unwrap() {
            for (key, value) in keys.as_table().unwrap() {
                if !value.is_integer() {
                    continue; // support.days
                }
                let unit = match key.rsplit('_').next().unwrap() {
                    "ms" => 1,
                    "secs" => 1000,
                    "hours" => 3_600_000,
                    "days" => 86_400_000,
                    _ => continue,
                };
                let over = ten_years * 1000 / unit + 1;
                let name = format!("CALLVERIFY_{section}_{key}").to_ascii_uppercase();
                let error = match load_env(&[(&name, &over.to_string())]) {
                    Ok(_) => panic!("{name}={over} is accepted"),
                    Err(e) => e.to_string(),
                };
                assert!(
                    error.starts_with(&format!("{section}.{key}:")) && error.contains("10 years"),
                    "{name}={over}: {error}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 20, "{checked} settings");
    }

    #[test]
    fn clear_errors() {
        let bad_num = Config::load(
            &Source::Flag("/dev/null".into()),
            env(&[("CALLVERIFY_AGI_MAX_SESSIONS", "lots")]),
        )
        .unwrap_err()
        .to_string();
        assert!(bad_num.contains("CALLVERIFY_AGI_MAX_SESSIONS"), "{bad_num}");
        let bad_listen = Config::load(
            &Source::Flag("/dev/null".into()),
            env(&[("CALLVERIFY_AGI_LISTEN", "nowhere")]),
        )
        .unwrap_err()
        .to_string();
        assert!(bad_listen.contains("agi.listen"), "{bad_listen}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[agi]\nlisten_on = \"x\"\n").unwrap();
        let unknown = Config::load(&Source::Flag(path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("listen_on"), "{unknown}");
        let missing = Config::load(&Source::Variable(dir.path().join("nope.toml")), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("nope.toml"), "{missing}");
    }
}
