//! The rules a loaded configuration must keep before anything starts.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::{Config, ConfigError};

/// The longest any duration setting may be (10 years of 365 days): far beyond a sensible
/// value, and far from overflowing a timestamp in milliseconds it is added to.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

impl Config {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
        // Sent to Asterisk as AMI fields, where a line break would end the field (and a
        // `\r` left by a file with CRLF line ends makes every login fail).
        for (key, value) in [
            ("ami.username", &self.ami.username),
            ("ami.secret", &self.ami.secret),
            ("dialer.channel", &self.dialer.channel),
            ("dialer.caller_id", &self.dialer.caller_id),
        ] {
            if value.chars().any(char::is_control) {
                return invalid(
                    key,
                    "contains a control character (a line break, a tab, or a \\r left by a \
                     file with CRLF line ends): remove it",
                );
            }
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
}

/// An allowlist setting: addresses or networks like 10.0.0.0/8.
pub(super) fn allowlist(key: &'static str, entries: &[String]) -> Result<Vec<IpNet>, ConfigError> {
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

pub(super) fn socket_addr(
    key: &'static str,
    value: &str,
    example: &str,
) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| ConfigError::Invalid {
        key,
        message: format!("{value:?} is not HOST:PORT, e.g. {example}"),
    })
}

pub(super) fn invalid<T>(key: &'static str, message: &str) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid {
        key,
        message: message.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{env, load_env};
    use crate::config::Source;

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

    /// They go to Asterisk as AMI fields: a control character is refused at load, and the
    /// error does not repeat the value (a secret).
    #[test]
    fn ami_fields_with_control_characters_are_refused() {
        let host = ("CALLVERIFY_AMI_HOST", "127.0.0.1");
        for (name, key, value) in [
            ("CALLVERIFY_AMI_SECRET", "ami.secret", "s3cret-from-crlf\r"),
            ("CALLVERIFY_AMI_SECRET", "ami.secret", "s3cret\u{1b}"),
            ("CALLVERIFY_AMI_USERNAME", "ami.username", "callverify\n"),
            (
                "CALLVERIFY_DIALER_CHANNEL",
                "dialer.channel",
                "PJSIP/{number}@trunk\r",
            ),
            (
                "CALLVERIFY_DIALER_CALLER_ID",
                "dialer.caller_id",
                "\"Verify\"\t<+1415>",
            ),
        ] {
            let secret = ("CALLVERIFY_AMI_SECRET", "a-long-random-secret");
            let error = load_env(&[host, secret, (name, value)])
                .unwrap_err()
                .to_string();
            assert!(
                error.starts_with(&format!("{key}: contains a control character")),
                "{name}: {error}"
            );
            assert!(!error.contains(value.trim_end()), "{error}");
        }
        load_env(&[host, ("CALLVERIFY_AMI_SECRET", "a-long-random-secret")]).unwrap();
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
}
