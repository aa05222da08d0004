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

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{}@{}", &url[..scheme + 3], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}
