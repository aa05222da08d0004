//! Configuration: built-in defaults, then one file (see [`Source::locate`]), then environment
//! variables `CALLVERIFY_<SECTION>_<KEY>` (e.g. `CALLVERIFY_AGI_LISTEN`,
//! `CALLVERIFY_DATABASE_URL`). The service and every CLI command find the same file, so they
//! use the same store.

mod layers;
mod sections;
mod settings;
mod source;
mod validate;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use layers::{anchor_paths, apply_env, merge, mistyped_secret};

pub use sections::*;
pub use source::{Source, DEFAULT_FILE, FILE_VARIABLE, SYSTEM_FILE};
pub use validate::MAX_DURATION;

pub const ENV_PREFIX: &str = "CALLVERIFY_";

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
        match source {
            Source::Untrusted { path, why } => {
                return Err(ConfigError::Untrusted {
                    path: path.clone(),
                    why: why.clone(),
                })
            }
            // Not the defaults: the admin's file is there, or may be.
            Source::Unreadable { path, kind, why } => {
                return Err(ConfigError::Read {
                    path: path.clone(),
                    source: std::io::Error::new(*kind, why.clone()),
                })
            }
            _ => {}
        }
        let mut tree = toml::Value::try_from(Config::default()).expect("defaults serialize");
        let file = source.file().map(Path::to_path_buf);
        if let Some(path) = &file {
            let text = match source {
                // Checked again on the file read: it may have changed since it was found.
                Source::WorkingDirectory(_) => {
                    let mut opened =
                        source::open_trusted(path).map_err(|why| ConfigError::Untrusted {
                            path: path.clone(),
                            why,
                        })?;
                    let mut text = String::new();
                    std::io::Read::read_to_string(&mut opened, &mut text).map(|_| text)
                }
                _ => std::fs::read_to_string(path),
            }
            .map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let mut parsed: toml::Value =
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    message: e.message().to_owned(),
                })?;
            // Before the environment is laid over: a variable would be typed like the file's
            // value, and serde's message would quote it.
            if let Some(message) = mistyped_secret(&parsed, &tree) {
                return Err(ConfigError::Parse {
                    path: path.clone(),
                    message,
                });
            }
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
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;

    pub fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The defaults and `vars`, as with an empty file.
    pub fn load_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load(&Source::Flag("/dev/null".into()), env(vars))
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

    /// A secret of the wrong type (an unquoted number) is named, its value not shown: the
    /// error goes to the terminal and the journal.
    #[test]
    fn a_mistyped_secret_is_named_not_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        for (text, key, value, found) in [
            (
                "[ami]\nsecret = 73910384712\n",
                "ami.secret",
                "73910384712",
                "an integer",
            ),
            (
                "[ami]\nsecret = 7391.0384712\n",
                "ami.secret",
                "7391.0384712",
                "a float",
            ),
            (
                "[security]\nsecret = 0x7391abc\n",
                "security.secret",
                "121182908",
                "an integer",
            ),
            (
                "[webhooks]\nsecret = 73910384712\n",
                "webhooks.secret",
                "73910384712",
                "an integer",
            ),
            (
                "[database]\nurl = 73910384712\n",
                "database.url",
                "73910384712",
                "an integer",
            ),
            ("[qa]\ncode = 739103\n", "qa.code", "739103", "an integer"),
        ] {
            std::fs::write(&path, text).unwrap();
            // The environment's secret does not show either (it would be typed like the file's).
            for vars in [
                &[][..],
                &[("CALLVERIFY_AMI_SECRET", "s3cret-in-the-environment")],
            ] {
                let error = Config::load(&Source::Flag(path.clone()), env(vars))
                    .unwrap_err()
                    .to_string();
                assert!(
                    error.contains(&format!("{key}: expected a string, found {found}")),
                    "{error}"
                );
                assert!(error.contains("c.toml"), "{error}");
                assert!(
                    !error.contains(value) && !error.contains("s3cret"),
                    "{error}"
                );
            }
        }
        // A date-time is read as a string, as before.
        std::fs::write(&path, "[qa]\ncode = 1979-05-27\n").unwrap();
        let error = Config::load(&Source::Flag(path.clone()), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("qa.code: must be 4 to 10 digits"),
            "{error}"
        );
        // Other settings' errors still quote the value.
        std::fs::write(&path, "[ami]\nport = \"5038\"\n").unwrap();
        let error = Config::load(&Source::Flag(path.clone()), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("5038"), "{error}");
    }
}
