//! The file and the environment laid over the defaults, as TOML trees.

use std::path::Path;

use super::ConfigError;

/// A file's relative paths are its folder's, as in Cargo's config files: whichever folder a
/// command runs in, `/etc/callverify/callverify.toml` saying `sqlite://callverify.db` means
/// `/etc/callverify/callverify.db`, the store the service uses.
pub(super) fn anchor_paths(file: &mut toml::Value, folder: &Path) {
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

/// Whether no message may show the value of `section.key`: a secret or a password, or what
/// may carry one (the database's and the webhooks' URLs), or the QA line's fixed code.
pub(super) fn is_secret(section: &str, key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("secret")
        || key.contains("password")
        || matches!(
            (section, key.as_str()),
            ("database", "url") | ("webhooks", "url") | ("qa", "code")
        )
}

/// The first secret setting (see [`is_secret`]) to which `layer` gives a value of another
/// type than its default's in `defaults`, as a message that names the key and the types and
/// not the value, which serde's would quote (``invalid type: integer `73910384712` ``).
pub(super) fn mistyped_secret(layer: &toml::Value, defaults: &toml::Value) -> Option<String> {
    let a = |value: &toml::Value| match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    };
    let sections = layer.as_table()?;
    sections.iter().find_map(|(section, keys)| {
        keys.as_table()?.iter().find_map(|(key, value)| {
            // Keys of no setting are refused by name alone.
            let default = defaults.get(section)?.get(key)?;
            // A date-time is read as a string (`secret = 1979-05-27`).
            let fits = value.same_type(default) || (default.is_str() && value.is_datetime());
            (is_secret(section, key) && !fits).then(|| {
                format!(
                    "{section}.{key}: expected {}, found {} (the value is not shown: it is \
                     secret)",
                    a(default),
                    a(value)
                )
            })
        })
    })
}

pub(super) fn merge(base: &mut toml::Value, over: toml::Value) {
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
pub(super) fn apply_env(
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
    // A secret's value is not repeated in an error (only a file giving the secret another
    // type than a string's would make one here; the file's own check says so first).
    let shown = if is_secret(section, key) {
        "the value (a secret, not shown)".to_owned()
    } else {
        format!("{value:?}")
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
                .map_err(|_| env_err(format!("{shown} is not a whole number")))?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(
            value
                .trim()
                .parse()
                .map_err(|_| env_err(format!("{shown} is not true or false")))?,
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
    use crate::config::tests::env;
    use crate::config::{Config, Source, FILE_VARIABLE};

    /// A secret's variable is not repeated in an error, whatever type its slot has.
    #[test]
    fn a_secrets_variable_is_not_shown_in_an_error() {
        let mut tree: toml::Value =
            toml::from_str("[ami]\nsecret = 1\nport = 1\n[qa]\ncode = true\n").unwrap();
        for (name, value) in [
            ("CALLVERIFY_AMI_SECRET", "s3cret-value"),
            ("CALLVERIFY_QA_CODE", "739103"),
        ] {
            let rest = name.strip_prefix("CALLVERIFY_").unwrap();
            let error = super::apply_env(&mut tree, name, rest, value)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(name) && error.contains("not shown"),
                "{error}"
            );
            assert!(!error.contains(value), "{error}");
        }
        let error = super::apply_env(&mut tree, "CALLVERIFY_AMI_PORT", "AMI_PORT", "five")
            .unwrap_err()
            .to_string();
        assert!(error.contains("\"five\""), "{error}");
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
}
