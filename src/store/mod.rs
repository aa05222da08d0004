//! Persistence of verifications, call attempts and lockouts, on SQLite or Postgres.
//!
//! One set of queries serves both backends through sqlx's `Any` driver: every statement uses
//! `$N` placeholders (which SQLite reads too), integer columns are 64-bit on both, times are
//! Unix milliseconds. Each state change is one conditional statement, or a transaction where
//! several must go together, so two calls, or two daemons on one Postgres, cannot race it.
//! Columns are read by name, and every expression a statement returns is given one (`AS`),
//! so that the names are the same on both backends.
//! [`engine`] decides how the statements reach the database.
//!
//! One file per table family, each an `impl Store` block: `verifications.rs` (and
//! `creation.rs`, the checked insert), `attempts.rs` (call attempts and lockouts),
//! `dial_queue.rs`, `trunk.rs` (the trunk's caps), `daemons.rs` (heartbeats and takeover),
//! `outbox.rs` (webhook events), `api_keys.rs`, `upkeep.rs`, and the support
//! line's `manual_requests.rs` and `staff.rs`, and `selftests.rs` (`callverify doctor`'s
//! self-test calls).

mod api_keys;
mod attempts;
mod creation;
mod daemons;
mod dial_queue;
mod engine;
mod error;
mod lockouts;
mod manual_requests;
mod outbox;
pub mod owner;
mod selftests;
mod staff;
mod trunk;
mod upkeep;
mod verifications;

pub use attempts::{Begun, Recovered};
pub use creation::{Created, Earlier, IdempotencyKey, RateLimit, RateSubject};
pub use daemons::{DaemonRow, TakenOver};
pub use error::{redact_url, StoreError};
pub use lockouts::{CheckRow, Checked, Checker, Checks, Standing, StrikeRule};
pub use selftests::SelftestRow;
pub use trunk::Trunk;

use std::str::FromStr;
use std::sync::Arc;

use futures::future::BoxFuture;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyConnection, Connection, Executor};

use engine::{Connect, Engine, Op};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("sql/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("sql/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    engine: Engine,
    backend: Backend,
}

/// Box an operation for the engine.
fn op<T, F>(f: F) -> Op<T>
where
    F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<T, StoreError>>
        + Send
        + 'static,
{
    Box::new(f)
}

impl Store {
    /// Connect to `url` (`sqlite://callverify.db`, `postgres://...`). A SQLite file is
    /// created if missing and put in WAL mode, with secure_delete: a purged recording is
    /// overwritten with zeros, not left in free pages.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        if url.starts_with("sqlite:") {
            let url = if url.contains("mode=") {
                url.to_owned()
            } else if url.contains('?') {
                format!("{url}&mode=rwc")
            } else {
                format!("{url}?mode=rwc")
            };
            create_private(&url);
            let options = AnyConnectOptions::from_str(&url)?;
            let connect: Connect = Arc::new(move || {
                let options = options.clone();
                Box::pin(async move { open_sqlite(&options).await })
            });
            let conn = match connect().await {
                Ok(conn) => conn,
                // Say why in the file system's words, if that is where it fails.
                Err(e) => return Err(sqlite_file_error(&url).unwrap_or(e)),
            };
            return Ok(Self {
                engine: Engine::writer(conn, connect),
                backend: Backend::Sqlite,
            });
        }
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        }
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect_with(AnyConnectOptions::from_str(url)?)
            .await?;
        Ok(Self {
            engine: Engine::Pool(pool),
            backend: Backend::Postgres,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Apply the migrations under `sql/<backend>/`.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    migrator.run_direct(c).await?;
                    Ok(())
                })
            }))
            .await
    }

    /// Finish pending writes and close the database connections.
    pub async fn close(&self) {
        self.engine.close().await;
    }
}

/// A SQLite connection as the writer uses it: WAL, a busy timeout for other processes (a CLI,
/// a second daemon), foreign keys, and secure_delete.
async fn open_sqlite(options: &AnyConnectOptions) -> Result<AnyConnection, StoreError> {
    let mut conn = AnyConnection::connect_with(options).await?;
    conn.execute(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
         PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
         PRAGMA secure_delete = ON;",
    )
    .await?;
    Ok(conn)
}

/// The SQLite file of `url`, as a path; `None` for another database or an in-memory one.
pub fn sqlite_path(url: &str) -> Option<&std::path::Path> {
    let path = url
        .strip_prefix("sqlite:")?
        .trim_start_matches("//")
        .split('?')
        .next()
        .filter(|p| !p.is_empty() && *p != ":memory:")?;
    Some(std::path::Path::new(path))
}

/// Create a missing SQLite file readable by its owner only: it holds phone numbers and voice
/// recordings. SQLite gives its `-wal` and `-shm` files the same mode. (Failing here is left
/// to SQLite to report when it opens the file.)
fn create_private(url: &str) {
    let Some(path) = sqlite_path(url) else { return };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let _ = options.open(path);
}

/// Why the SQLite file of `url` cannot be written, if the file system says so (a read-only
/// disk, a missing directory, no permission): SQLite only says "unable to open database file".
fn sqlite_file_error(url: &str) -> Option<StoreError> {
    let path = sqlite_path(url)?;
    let probe = if path.exists() {
        std::fs::OpenOptions::new().append(true).open(path).err()
    } else {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
        std::fs::metadata(dir).err()
    };
    probe.map(|source| StoreError::SqliteFile {
        path: path.to_owned(),
        source,
    })
}
