//! Persistence of verifications, call attempts and lockouts, on SQLite or Postgres.
//!
//! One set of queries serves both backends through [`sql`] (rusqlite on SQLite, sqlx on
//! Postgres): every statement uses `$N` placeholders (which SQLite reads too), integer
//! columns are 64-bit on both, times are Unix milliseconds. Each state change is one
//! conditional statement, or a transaction where several must go together, so two calls,
//! or two daemons on one Postgres, cannot race it.
//! Columns are read by name, and every expression a statement returns is given one (`AS`),
//! so that the names are the same on both backends.
//! [`engine`] decides how the statements reach the database.
//!
//! One file per table family, each an `impl Store` block: `verifications.rs` (and
//! `creation.rs`, the checked insert), `attempts.rs` (call attempts and lockouts),
//! `lockouts.rs` (code checks, strikes) with `read_backs.rs` (spoken codes read back),
//! `dial_queue.rs`, `trunk.rs` (the trunk's caps), `daemons.rs` (heartbeats and takeover),
//! `outbox.rs` (webhook events), `api_keys.rs`, `upkeep.rs`, `retention.rs` (the history's
//! end), and the support line's `manual_requests.rs` and `staff.rs` (with `sign_ins.rs`, the
//! console's sign-in attempts), and `selftests.rs` (`callverify doctor`'s self-test calls).
//! `subject_locks.rs` orders the operations on one number, user, API key or sign-in name.

mod api_keys;
mod attempts;
mod batches;
mod creation;
mod daemons;
mod dial_queue;
mod engine;
pub mod error;
mod lockouts;
mod manual_requests;
mod outbox;
pub mod owner;
mod read_backs;
mod retention;
mod selftests;
mod sign_ins;
mod sql;
mod staff;
mod subject_locks;
mod trunk;
mod upkeep;
mod verifications;

pub use attempts::{Begun, Recovered};
pub use creation::{Created, Creation, Earlier, IdempotencyKey, Limits, RateSubject};
pub use daemons::{DaemonRow, TakenOver};
pub use error::{redact_url, StoreError};
pub use lockouts::{CheckRow, Checked, Checker, Checks, Standing, StrikeRule};
pub use manual_requests::AuditBudget;
pub use read_backs::ReadBackRule;
pub use selftests::SelftestRow;
pub use sign_ins::{Attempt, AttemptRule};
pub use trunk::Trunk;

use std::str::FromStr;
use std::sync::Arc;

use futures::future::BoxFuture;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::Connection as _;

use engine::{Connect, Engine, Op};
use sql::{query, Conn};

/// A pooled Postgres connection idle this long is pinged before it is used again.
const PING_IDLE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("sql/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("sql/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The clause that makes a `SELECT` of queued rows take only rows no other transaction
    /// holds, and hold them (Postgres: several daemons take from one queue); SQLite's single
    /// writer needs none.
    fn skip_locked(self) -> &'static str {
        match self {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        }
    }
}

#[derive(Clone)]
pub struct Store {
    engine: Engine,
    backend: Backend,
    /// Where it is (the migrations of a SQLite store run on a connection of their own).
    url: Arc<str>,
    /// When the history purge last emptied SQLite's WAL, and whether it deleted since.
    history_wal: Arc<std::sync::Mutex<retention::WalDebt>>,
    /// Creations waiting to be written together.
    creations: creation::Creations,
}

/// Box an operation for the engine.
fn op<T, F>(f: F) -> Op<T>
where
    F: for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Result<T, StoreError>> + Send + 'static,
{
    Box::new(f)
}

impl Store {
    /// Connect to `url` (`sqlite://callverify.db`, `postgres://...`). A SQLite file is
    /// created if missing and put in WAL mode, with secure_delete: a purged recording is
    /// overwritten with zeros, not left in free pages.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            let url = if url.contains("mode=") {
                url.to_owned()
            } else if url.contains('?') {
                format!("{url}&mode=rwc")
            } else {
                format!("{url}?mode=rwc")
            };
            create_private(&url);
            let path = sqlite_path(&url)
                .ok_or_else(|| StoreError::UnsupportedUrl(url.clone()))?
                .to_owned();
            let connect: Connect = Arc::new(move || open_sqlite(&path));
            // Off the runtime's threads: opening may wait for another process's lock.
            let first = tokio::task::spawn_blocking({
                let connect = connect.clone();
                move || connect()
            });
            let conn = match first
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?
            {
                Ok(conn) => conn,
                // Say why in the file system's words, if that is where it fails.
                Err(e) => return Err(sqlite_file_error(&url).unwrap_or(e)),
            };
            return Ok(Self {
                engine: Engine::writer(conn, connect),
                backend: Backend::Sqlite,
                url: url.into(),
                history_wal: Arc::default(),
                creations: creation::creations(),
            });
        }
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            // sqlx pings a connection as it goes back to the pool, and by default again as
            // it is taken out: two round trips on top of every operation's own. The second
            // is kept only for a connection that has lain idle, which a restarted server
            // may have closed since; a busy daemon reuses them within milliseconds.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IDLE_AFTER {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            // A batch of creations adds a statement of each of its kinds for each batch
            // size (1, 2, 4, ... 64) to the hundred or so of the rest of the store: more
            // than sqlx's 100 a connection, which would evict the calls' own.
            .connect_with(PgConnectOptions::from_str(url)?.statement_cache_capacity(256))
            .await?;
        Ok(Self {
            engine: Engine::Pool(pool),
            backend: Backend::Postgres,
            url: url.into(),
            history_wal: Arc::default(),
            creations: creation::creations(),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Apply the migrations under `sql/<backend>/`.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self.backend {
            // On a connection of sqlx's own, while the writer waits (it holds no lock
            // between groups), and while holding the store's folder (see `migration_lock`).
            Backend::Sqlite => {
                let _lock = migration_lock(&self.url).await?;
                let mut conn = sqlx::SqliteConnection::connect(&self.url).await?;
                SQLITE_MIGRATIONS.run_direct(&mut conn).await?;
                conn.close().await?;
                Ok(())
            }
            Backend::Postgres => {
                self.engine
                    .run(op(move |c| {
                        Box::pin(async move {
                            let pg = c.as_postgres().expect("a Postgres store");
                            POSTGRES_MIGRATIONS.run_direct(pg).await?;
                            Ok(())
                        })
                    }))
                    .await
            }
        }
    }

    /// Whether the store's schema is this binary's, without changing it: every migration
    /// applied, none unknown. For the admin's commands, which must not migrate a store under
    /// daemons of the release before (`serve` and `migrate` migrate).
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        let known: Vec<i64> = match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.iter().map(|m| m.version).collect(),
            Backend::Postgres => POSTGRES_MIGRATIONS.iter().map(|m| m.version).collect(),
        };
        let applied: Vec<i64> = self
            .engine
            .run(op(move |c| {
                Box::pin(async move {
                    let rows = match query("SELECT version FROM _sqlx_migrations WHERE success")
                        .fetch_all(&mut *c)
                        .await
                    {
                        Ok(rows) => rows,
                        // No table of migrations: no schema at all.
                        Err(e) if e.is_missing_table() => Vec::new(),
                        Err(e) => return Err(e),
                    };
                    rows.iter().map(|r| r.try_get("version")).collect()
                })
            }))
            .await?;
        let unknown: Vec<i64> = applied
            .iter()
            .copied()
            .filter(|v| !known.contains(v))
            .collect();
        if !unknown.is_empty() {
            return Err(StoreError::SchemaAhead { unknown });
        }
        let missing: Vec<i64> = known.into_iter().filter(|v| !applied.contains(v)).collect();
        if !missing.is_empty() {
            return Err(StoreError::SchemaBehind { missing });
        }
        Ok(())
    }

    /// SQLite: copy the write-ahead log into the database and empty the `-wal` file (a
    /// TRUNCATE checkpoint), after rows were deleted: secure_delete zeroes the database's
    /// pages, but the log's older images of them would keep what was deleted until SQLite
    /// writes over them (on a quiet installation, days). On a connection of its own, which
    /// waits for the writer's transaction to end and holds the next one off while it runs.
    /// Postgres: nothing to do here.
    async fn empty_wal(&self) -> Result<(), StoreError> {
        let Some(path) = sqlite_path(&self.url).map(ToOwned::to_owned) else {
            return Ok(());
        };
        let checkpoint = tokio::task::spawn_blocking(move || {
            let db = rusqlite::Connection::open(&path)?;
            db.busy_timeout(SQLITE_BUSY_TIMEOUT)?;
            db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            })
        });
        let busy = checkpoint
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))??;
        if busy != 0 {
            // Another process (a CLI, a second daemon) was reading: the next purge that
            // deletes something empties it, and SQLite's own checkpoints reuse it meanwhile.
            tracing::warn!("the SQLite WAL could not be emptied: a reader was busy");
        }
        Ok(())
    }

    /// Finish pending writes and close the database connections.
    pub async fn close(&self) {
        self.engine.close().await;
    }
}

/// How long a SQLite connection waits for another process's lock (a CLI, a second daemon).
const SQLITE_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A SQLite connection as the writer uses it: WAL, a busy timeout for other processes (a CLI,
/// a second daemon), foreign keys, and secure_delete; statements prepared once.
fn open_sqlite(path: &std::path::Path) -> Result<Conn, StoreError> {
    let db = rusqlite::Connection::open(path)?;
    db.busy_timeout(SQLITE_BUSY_TIMEOUT)?;
    set_wal(&db)?;
    db.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA secure_delete = ON;",
    )?;
    db.set_prepared_statement_cache_capacity(256);
    Ok(Conn::sqlite(db))
}

/// Put the database in WAL mode (kept in the file: once for a store). Switching a new file
/// takes its lock without SQLite's busy wait, so a process opening a new store while another
/// switches it is told "database is locked" at once (1 in 40 of four `migrate`s at once):
/// it tries again, for about as long as the busy timeout.
fn set_wal(db: &rusqlite::Connection) -> Result<(), StoreError> {
    let deadline = std::time::Instant::now() + SQLITE_BUSY_TIMEOUT;
    loop {
        match db.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)) {
            Ok(mode) => {
                if !mode.eq_ignore_ascii_case("wal") {
                    // (A file system without shared memory, for one.)
                    tracing::warn!(mode = %mode,
                        "the SQLite store is not in WAL mode: readers wait for the writer");
                }
                return Ok(());
            }
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    }
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

/// The folder a SQLite store's file is in (`.` for a bare file name).
fn store_folder(path: &std::path::Path) -> &std::path::Path {
    match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => std::path::Path::new("."),
    }
}

/// sqlx takes no lock to migrate SQLite (on Postgres, an advisory lock): processes
/// migrating one new store at once (the service starting as an admin runs `migrate`) each
/// applied the first migrations, and all but one failed ("table already exists"). They take
/// turns on an exclusive `flock` of the store's folder, held until the returned file is
/// dropped; the later ones find nothing left to apply. Not of the database file itself:
/// closing another descriptor of it would drop this process's SQLite (POSIX) locks on it.
/// A folder that cannot be opened or locked (no read permission, a file system without
/// flock) migrates without it, as before; one held for [`MIGRATION_LOCK_WAIT`] (a migration
/// stopped half-way, another user holding the folder) is an error, not a start that hangs.
async fn migration_lock(url: &str) -> Result<Option<std::fs::File>, StoreError> {
    use rustix::fs::{flock, FlockOperation};
    let Some(path) = sqlite_path(url) else {
        return Ok(None);
    };
    let folder = store_folder(path).to_owned();
    let Ok(dir) = std::fs::File::open(&folder) else {
        return Ok(None);
    };
    let deadline = tokio::time::Instant::now() + MIGRATION_LOCK_WAIT;
    loop {
        match flock(&dir, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(Some(dir)),
            Err(rustix::io::Errno::WOULDBLOCK) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(StoreError::MigrationLock {
                    path: folder,
                    source: std::io::Error::other(format!(
                        "another process has held it for {} s",
                        MIGRATION_LOCK_WAIT.as_secs()
                    )),
                })
            }
            Err(e) => {
                tracing::debug!(folder = %folder.display(), error = %e,
                    "migrating without the folder's lock");
                return Ok(None);
            }
        }
    }
}

/// How long a migration of a SQLite store waits for another's (see [`migration_lock`]).
const MIGRATION_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

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

#[cfg(test)]
mod tests {
    use std::ops::RangeInclusive;

    use super::SQLITE_MIGRATIONS;

    /// The SQLite store's migrations numbered `versions`, on `db`.
    fn migrate(db: &rusqlite::Connection, versions: RangeInclusive<i64>) {
        for m in SQLITE_MIGRATIONS
            .iter()
            .filter(|m| versions.contains(&m.version))
        {
            db.execute_batch(&m.sql)
                .unwrap_or_else(|e| panic!("migration {}: {e}", m.version));
        }
    }

    /// A process opening a new store while another holds its write lock (switching it to
    /// WAL, migrating) waits for it: SQLite answers the switch "database is locked" at once,
    /// without its busy wait.
    #[test]
    fn opening_a_new_store_waits_for_another_process_s_write_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        let other = rusqlite::Connection::open(&path).unwrap();
        other
            .execute_batch("BEGIN IMMEDIATE; CREATE TABLE t (x INTEGER);")
            .unwrap();
        let commit = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            other.busy_timeout(super::SQLITE_BUSY_TIMEOUT).unwrap();
            other.execute_batch("COMMIT").unwrap();
        });
        super::open_sqlite(&path).expect("opened once the other process committed");
        commit.join().unwrap();
        let db = rusqlite::Connection::open(&path).unwrap();
        let mode: String = db
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    /// Migration 13 rebuilds `code_checks` (its CHECK written as comparisons): the rows, their
    /// ids and the id sequence stay (an id given out before is not given out again, even when
    /// the newest rows were deleted), and the CHECK still refuses what it refused.
    #[test]
    fn rebuilding_code_checks_keeps_rows_ids_and_their_sequence() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        migrate(&db, 1..=12);
        db.execute(
            "INSERT INTO verifications (id, phone, user_ref, code_hash, code_length, status, \
             max_attempts, locale, created_at, updated_at, expires_at) \
             VALUES ('vf_1', '+15550100', 'u1', 'h', 6, 'calling', 3, 'en', 1, 1, 2)",
            [],
        )
        .unwrap();
        let check = "INSERT INTO code_checks (verification_id, at, method, right_code) \
                     VALUES ('vf_1', 1, ?1, 0)";
        for method in ["keypad", "speech", "web", "keypad", "web"] {
            db.execute(check, [method]).unwrap();
        }
        db.execute("DELETE FROM code_checks WHERE id >= 4", [])
            .unwrap();
        migrate(&db, 13..=13);

        let rows: Vec<(i64, String)> = db
            .prepare("SELECT id, method FROM code_checks ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            [
                (1, "keypad".into()),
                (2, "speech".into()),
                (3, "web".into())
            ]
        );
        db.execute(check, ["speech"]).unwrap();
        assert_eq!(
            db.last_insert_rowid(),
            6,
            "ids 4 and 5 were given out before"
        );
        let refused = db.execute(check, ["fax"]).unwrap_err().to_string();
        assert!(refused.contains("CHECK constraint failed"), "{refused}");
        let index: i64 = db
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'code_checks_verification'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(index, 1, "the index is rebuilt");
    }
}
