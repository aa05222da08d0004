//! The file's sections and their defaults: what an admin writes, as written.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use callverify_speech::EndpointSettings;

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
