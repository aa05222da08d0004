//! What each part of the daemon is given, made from the configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::validate::{allowlist, invalid, socket_addr};
use super::{Config, ConfigError};
use crate::domain::phone::PhonePolicy;
use crate::domain::Policy;
use crate::flow::FlowSettings;
use crate::support::hours::BusinessHours;
use crate::support::message::MessageLimits;
use crate::support::{MessageQuota, SupportSettings};
use callverify_pbx::agi::{ServerConfig, Timeouts};
use callverify_pbx::ami::AmiConfig;
use callverify_speech::{EndpointSettings, RecogniserSettings};

impl Config {
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
            events: crate::outbound::dialer::AMI_EVENTS,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::env;
    use crate::config::Source;

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
}
