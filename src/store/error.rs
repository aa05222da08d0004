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
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("the store is closed")]
    Closed,
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
/// `password` or `sslpassword` parameter (which sqlx takes too).
pub fn redact_url(url: &str) -> String {
    // The user part ends at the last @ (a password may hold / ? # unescaped).
    let (head, rest) = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = url[scheme + 3..at].split(':').next().unwrap_or_default();
            (format!("{}{user}@", &url[..scheme + 3]), &url[at + 1..])
        }
        _ => (String::new(), url),
    };
    let Some((path, query)) = rest.split_once('?') else {
        return format!("{head}{rest}");
    };
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((key, _))
                if key.eq_ignore_ascii_case("password")
                    || key.eq_ignore_ascii_case("sslpassword") =>
            {
                format!("{key}=***")
            }
            _ => param.to_owned(),
        })
        .collect();
    format!("{head}{path}?{}", params.join("&"))
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
            ("sqlite://callverify.db", "sqlite://callverify.db"),
            (
                "sqlite:///var/lib/callverify/x.db?mode=rwc",
                "sqlite:///var/lib/callverify/x.db?mode=rwc",
            ),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
