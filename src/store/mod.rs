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
//! `dial_queue.rs`, `outbox.rs` (webhook events), `api_keys.rs`, `upkeep.rs`, and the support
//! line's `manual_requests.rs` and `staff.rs`.

mod api_keys;
mod attempts;
mod creation;
mod dial_queue;
mod engine;
mod error;
mod lockouts;
mod manual_requests;
mod outbox;
mod staff;
mod upkeep;
mod verifications;

pub use attempts::{Begun, Recovered};
pub use creation::{Created, Earlier, IdempotencyKey, RateLimit, RateSubject};
pub use error::{redact_url, StoreError};
pub use lockouts::{InCall, StrikeRule};

use std::str::FromStr;

use futures::future::BoxFuture;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyConnection, Connection, Executor};

use engine::{Engine, Op};

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
            let mut conn = AnyConnection::connect_with(&AnyConnectOptions::from_str(&url)?).await?;
            conn.execute(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                 PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
                 PRAGMA secure_delete = ON;",
            )
            .await?;
            return Ok(Self {
                engine: Engine::writer(conn),
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
