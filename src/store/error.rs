//! What can go wrong in the store, and the one way a database URL is shown.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {}: use sqlite://FILE or postgres://USER@HOST/DB", redact_url(.0))]
    UnsupportedUrl(String),
    // The sqlx errors are in the message, not chained as sources, so that a report of the
    // chain does not say them twice.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    #[error("SQLite error: {0}")]
    Sqlite(rusqlite::Error),
    #[error("a statement returned no row where one was expected")]
    NoRow,
    #[error("a statement returned no column {0}")]
    NoColumn(String),
    #[error("column {column} holds {value}, not the type read")]
    ColumnType { column: String, value: String },
    #[error("stored value {value:?} in column {column} is not valid")]
    Corrupt { column: &'static str, value: String },
    #[error("database commit failed: {0}")]
    Commit(String),
    #[error("cannot write the SQLite file {}: {source}", path.display())]
    SqliteFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot lock the store's folder {} to migrate it: {source}", path.display())]
    MigrationLock {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("the store is closed")]
    Closed,
    #[error("a batch of {operations} store operations gave {results} results")]
    Results { operations: usize, results: usize },
    #[error("a store operation panicked")]
    Panicked,
    #[error(
        "the store's schema is older than this callverify (migrations {} not applied): stop \
         every daemon using it, run `callverify migrate`, then start them with this release",
        versions(missing)
    )]
    SchemaBehind { missing: Vec<i64> },
    #[error(
        "the store was migrated by a newer callverify (migrations {} unknown to this one): use \
         that release",
        versions(unknown)
    )]
    SchemaAhead { unknown: Vec<i64> },
}

/// Migration versions, for a message: `17, 18`.
fn versions(versions: &[i64]) -> String {
    versions
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl StoreError {
    /// Whether the statement read a table that does not exist.
    pub(super) fn is_missing_table(&self) -> bool {
        match self {
            // undefined_table
            StoreError::Database(sqlx::Error::Database(e)) => e.code().as_deref() == Some("42P01"),
            StoreError::Sqlite(e) => e.to_string().starts_with("no such table"),
            _ => false,
        }
    }

    /// Whether this failure came before the commit of what failed: nothing of it was
    /// written, so it may be run again. After a failed commit, or a commit that gave
    /// the wrong results, it may have been written.
    pub(super) fn before_commit(&self) -> bool {
        !matches!(self, StoreError::Commit(_) | StoreError::Results { .. })
    }

    /// This failure again, for another caller of the same operation: itself when it can be
    /// said twice, else its message.
    pub(super) fn again(&self) -> StoreError {
        match self {
            StoreError::Commit(why) => StoreError::Commit(why.clone()),
            &StoreError::Results {
                operations,
                results,
            } => StoreError::Results {
                operations,
                results,
            },
            StoreError::Panicked => StoreError::Panicked,
            StoreError::Unavailable(why) => StoreError::Unavailable(why.clone()),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(e)
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(e)
    }
}

/// A database URL without its password, for messages: neither in the user part nor as a
/// parameter whose name holds `password` (sqlx takes `password` and `sslpassword`), nor an
/// inline PEM key. The URL is read as sqlx reads it (the URL standard, through the `url`
/// crate), so that whatever sqlx would take for a password is what is hidden; the fragment,
/// which sqlx ignores and where the rest of a password with an unescaped `#` would be, is
/// dropped. What cannot be read is shown as its scheme alone (`postgres://…`). SQLite URLs,
/// a path and parameters, are shown as written, but for such parameters.
pub fn redact_url(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("sqlite:") {
        // As the store reads it (`sqlite_path`): the path, then the parameters.
        return match rest.split_once('?') {
            Some((path, query)) => format!("sqlite:{path}?{}", redact_query(query)),
            None => url.to_owned(),
        };
    }
    let Some((scheme, rest)) = url.split_once(':') else {
        return "…".into();
    };
    let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !is_scheme {
        return "…".into();
    }
    if !rest.starts_with("//") {
        return format!("{scheme}:…");
    }
    let standard = url::Url::parse(url).ok();
    let has_user_info = standard
        .as_ref()
        .is_some_and(|u| !u.username().is_empty() || u.password().is_some());
    // A password holding an unescaped / ? or # ends the standard's user part early: then the
    // URL does not parse (`cv:ab/cd@db`, "ab" is no port), or parses without a user part
    // and with the rest of the password in the path, query or fragment (`cv:12/cd@db`).
    let misread = match &standard {
        None => unescaped_user_info(scheme, &rest[2..]),
        Some(_) if !has_user_info => unescaped_user_info(scheme, &rest[2..]),
        Some(_) => None,
    };
    match misread.or(standard) {
        Some(parsed) => shown(parsed).unwrap_or_else(|| format!("{scheme}://…")),
        None => format!("{scheme}://…"),
    }
}

/// `url`, parsed, without its password, password parameters and fragment; `None` if the
/// password cannot be taken out.
fn shown(mut url: url::Url) -> Option<String> {
    if url.password().is_some() {
        url.set_password(None).ok()?;
    }
    url.set_fragment(None);
    if let Some(query) = url.query().map(redact_query) {
        url.set_query(Some(&query));
    }
    Some(url.into())
}

/// `authority_on` (what follows `scheme://`) read as `USER:PASSWORD@HOST...` where the
/// password holds / ? # unescaped, when it can be: the first `@` after which the rest is a
/// URL with a host and no user part, before which a user name (no / ? # [ ] @) and a colon
/// stand, and no `?` followed by `=` (which make it a query's, as in `?password=p@ss`).
fn unescaped_user_info(scheme: &str, authority_on: &str) -> Option<url::Url> {
    authority_on
        .match_indices('@')
        .find_map(|(at, _)| {
            let (user, password) = authority_on[..at].split_once(':')?;
            let user_ok = !user.is_empty() && !user.contains(['/', '?', '#', '[', ']']);
            let query = password
                .split_once('?')
                .is_some_and(|(_, q)| q.contains('='));
            if !user_ok || query {
                return None;
            }
            let rest = url::Url::parse(&format!("{scheme}://{}", &authority_on[at + 1..])).ok()?;
            let plain = rest.username().is_empty() && rest.password().is_none();
            (plain && rest.has_host()).then(|| (user, &authority_on[at + 1..]))
        })
        .and_then(|(user, rest)| url::Url::parse(&format!("{scheme}://{user}@{rest}")).ok())
}

/// A query string with the value of each parameter whose name holds `password` (in any case,
/// percent-encoded or not, as sqlx decodes it) and each inline PEM key shown as `***`. A
/// parameter without `=` right after such a one is taken for the rest of its value (an
/// unescaped `&`) and dropped.
fn redact_query(query: &str) -> String {
    let mut shown: Vec<String> = Vec::new();
    let mut after_secret = false;
    for param in query.split('&') {
        let (key, value) = url::form_urlencoded::parse(param.as_bytes())
            .next()
            .unwrap_or_default();
        let secret =
            key.to_lowercase().contains("password") || value.trim_start().starts_with("-----BEGIN");
        match param.split_once('=') {
            Some((raw_key, _)) if secret => {
                shown.push(format!("{raw_key}=***"));
                after_secret = true;
            }
            None if after_secret => {}
            _ => {
                shown.push(param.to_owned());
                after_secret = false;
            }
        }
    }
    shown.join("&")
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn a_url_loses_its_password_wherever_it_is() {
        for (url, shown) in [
            ("postgres://cv:Hunter2@db/cv", "postgres://cv@db/cv"),
            ("postgres://cv:p@ss@db:5432/cv", "postgres://cv@db:5432/cv"),
            ("postgres://cv:ab/cd@db/cv", "postgres://cv@db/cv"),
            (
                "postgres://cv:ab?c#d@db/cv?sslmode=require",
                "postgres://cv@db/cv?sslmode=require",
            ),
            (
                "postgres://cv@db/cv?password=Hunter2&sslmode=require",
                "postgres://cv@db/cv?password=***&sslmode=require",
            ),
            (
                "postgres://db/cv?sslmode=verify-full&SSLPASSWORD=k3y",
                "postgres://db/cv?sslmode=verify-full&SSLPASSWORD=***",
            ),
            (
                "postgres://cv@db/cv?application_name=a@b",
                "postgres://cv@db/cv?application_name=a@b",
            ),
            // An @ after the host, or a password in the query, is no user part.
            (
                "postgres://cv@db/cv?password=p@ssw0rd",
                "postgres://cv@db/cv?password=***",
            ),
            (
                "postgres://db/cv?password=Hunter2&application_name=cv@host1",
                "postgres://db/cv?password=***&application_name=cv@host1",
            ),
            (
                "postgres://db/cv?sslmode=require&password=Hun:ter@2",
                "postgres://db/cv?sslmode=require&password=***",
            ),
            (
                "postgres://cv:Hunter2@db:5432/cv?application_name=a@b&sslpassword=k:e@y",
                "postgres://cv@db:5432/cv?application_name=a@b&sslpassword=***",
            ),
            // Any parameter whose name holds "password", however spelt or encoded; the rest
            // of a value cut by an unescaped & or #; an inline key.
            (
                "postgres://db/cv?db_Password=x&pass%77ord=y&sslmode=require",
                "postgres://db/cv?db_Password=***&pass%77ord=***&sslmode=require",
            ),
            (
                "postgres://db/cv?password=ab&cd&sslmode=require#ef@g",
                "postgres://db/cv?password=***&sslmode=require",
            ),
            (
                "postgres://db/cv?sslkey=-----BEGIN%20PRIVATE%20KEY-----x",
                "postgres://db/cv?sslkey=***",
            ),
            ("postgres://:Hunter2@db/cv", "postgres://db/cv"),
            // A password with an unescaped / ? or # that starts like a port.
            ("postgres://cv:1234/x@db/cv", "postgres://cv@db/cv"),
            ("postgres://cv:12#x@db/cv", "postgres://cv@db/cv"),
            ("postgres://cv:12?x@db/cv", "postgres://cv@db/cv"),
            // What cannot be read is shown as its scheme.
            ("postgres://db:xx/cv?password=p@ss", "postgres://…"),
            ("postgres://cv:pw@db:port/cv", "postgres://…"),
            ("postgres:cv:pw@db/cv", "postgres:…"),
            ("cv:pw@db/cv", "cv:…"),
            ("Hunter2", "…"),
            ("postgres://db/c@v", "postgres://db/c@v"),
            ("postgres://cv@[::1]:5432/cv", "postgres://cv@[::1]:5432/cv"),
            (
                "postgresql:///cv?host=/run/postgresql&password=pw",
                "postgresql:///cv?host=/run/postgresql&password=***",
            ),
            // Not a URL to sqlx either (a user part and no host).
            (
                "postgresql://cv:pw@/cv?host=/run/postgresql",
                "postgresql://…",
            ),
            ("sqlite://callverify.db", "sqlite://callverify.db"),
            ("sqlite::memory:", "sqlite::memory:"),
            ("sqlite:///srv/u@x/cv.db", "sqlite:///srv/u@x/cv.db"),
            (
                "sqlite:///var/lib/callverify/x.db?mode=rwc",
                "sqlite:///var/lib/callverify/x.db?mode=rwc",
            ),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
