//! Persistence of verifications, call attempts and lockouts, on SQLite or Postgres.
//!
//! One set of queries serves both backends through sqlx's `Any` driver: every statement uses
//! `$N` placeholders (which SQLite reads too), integer columns are 64-bit on both, times are
//! Unix milliseconds. Each state change is one conditional statement, or a transaction where
//! several must go together, so two calls, or two daemons on one Postgres, cannot race it.
//! [`engine`] decides how the statements reach the database.

mod creation;
mod engine;
mod error;
mod support;

pub use creation::{Created, IdempotencyKey, RateLimit};
pub use error::{redact_url, StoreError};
pub use support::{
    AuditEntry, Decided, Decision, ManualRequestRow, NewManualRequest, RequestFilter, StaffRow,
    StaffSession,
};

use std::str::FromStr;

use futures::future::BoxFuture;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyConnection, Connection, Executor, Row};

use crate::domain::api_keys::ApiKey;
use crate::domain::status::{CallOutcome, Status};
use crate::domain::verification::{DialJob, Verification};
use engine::{Engine, Op};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("sql/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("sql/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// An earlier use of an idempotency key: the request's hash and what it created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Earlier {
    pub request_hash: String,
    pub verification_id: String,
}

/// Who a rate limit counts creations of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateSubject {
    Phone,
    User,
    ApiKey,
}

impl RateSubject {
    pub(crate) fn column(self) -> &'static str {
        match self {
            RateSubject::Phone => "phone",
            RateSubject::User => "user_ref",
            RateSubject::ApiKey => "api_key_id",
        }
    }
}

/// One call attempt of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRow {
    pub id: i64,
    pub verification_id: String,
    pub channel: String,
    pub uniqueid: String,
    /// Which daemon handled it (host/FastAGI address).
    pub daemon: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub outcome: Option<CallOutcome>,
}

/// A status change waiting to be posted to the web app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    pub id: i64,
    pub verification_id: String,
    pub status: String,
    pub created_at: i64,
    pub attempts: i64,
    pub callback_url: Option<String>,
}

/// What recovery after a crash closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recovered {
    pub attempts: u64,
    pub verifications: u64,
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

/// A lockout in force for the verification's number or user (at time `$1`).
const LOCKED_OUT: &str = "SELECT 1 FROM lockouts l WHERE l.locked_until > $1 AND \
     ((l.kind = 'phone' AND l.subject = verifications.phone) OR \
      (l.kind = 'user' AND l.subject = verifications.user_ref))";

const VERIFICATION_COLUMNS: &str = "id, phone, user_ref, code_hash, code_length, status, \
     attempts_used, max_attempts, locale, is_test, created_at, updated_at, expires_at, verified_at, \
     api_key_id, callback_url";

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

    pub async fn insert_verification(&self, v: &Verification) -> Result<(), StoreError> {
        let v = v.clone();
        self.engine
            .run(op(move |c| {
                Box::pin(async move { insert_verification(c, &v).await })
            }))
            .await
    }

    pub async fn insert_api_key(&self, key: &ApiKey, key_hash: &str) -> Result<(), StoreError> {
        let (key, key_hash) = (key.clone(), key_hash.to_owned());
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO api_keys (id, name, key_hash, created_at) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(&key.id)
                    .bind(&key.name)
                    .bind(&key_hash)
                    .bind(key.created_at)
                    .execute(&mut *c)
                    .await?;
                    Ok(())
                })
            }))
            .await
    }

    /// The key whose hash is `key_hash`, revoked or not.
    pub async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let key_hash = key_hash.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let row = sqlx::query(
                        "SELECT id, name, created_at, revoked_at FROM api_keys WHERE key_hash = $1",
                    )
                    .bind(&key_hash)
                    .fetch_optional(&mut *c)
                    .await?;
                    row.map(|r| api_key_from_row(&r)).transpose()
                })
            }))
            .await
    }

    pub async fn api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let rows = sqlx::query(
                        "SELECT id, name, created_at, revoked_at FROM api_keys ORDER BY created_at",
                    )
                    .fetch_all(&mut *c)
                    .await?;
                    rows.iter().map(api_key_from_row).collect()
                })
            }))
            .await
    }

    /// Revoke a key; false if there is no such key or it was revoked already.
    pub async fn revoke_api_key(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let done = sqlx::query(
                        "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                    )
                    .bind(now)
                    .bind(&id)
                    .execute(&mut *c)
                    .await?;
                    Ok(done.rows_affected() == 1)
                })
            }))
            .await
    }

    pub async fn verification(&self, id: &str) -> Result<Option<Verification>, StoreError> {
        let id = id.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let row = sqlx::query(&format!(
                        "SELECT {VERIFICATION_COLUMNS} FROM verifications WHERE id = $1"
                    ))
                    .bind(&id)
                    .fetch_optional(&mut *c)
                    .await?;
                    row.map(|r| verification_from_row(&r)).transpose()
                })
            }))
            .await
    }

    /// Move a verification from one of `from` to `to`; false if it was in another state.
    pub async fn transition(
        &self,
        id: &str,
        from: &[Status],
        to: Status,
        now: i64,
    ) -> Result<bool, StoreError> {
        let (id, from) = (id.to_owned(), status_list(from));
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let verified_at = (to == Status::Verified).then_some(now);
                    let done = sqlx::query(&format!(
                        "UPDATE verifications SET status = $1, updated_at = $2, \
                         verified_at = COALESCE($3, verified_at) \
                         WHERE id = $4 AND status IN ({from})"
                    ))
                    .bind(to.as_str())
                    .bind(now)
                    .bind(verified_at)
                    .bind(&id)
                    .execute(&mut *c)
                    .await?;
                    Ok(done.rows_affected() == 1)
                })
            }))
            .await
    }

    /// The right code in a call: `calling` becomes `verified` and the attempt is closed as
    /// verified, in one operation. False (and nothing done) if the verification is no longer in a
    /// call. Closing the attempt again later changes nothing.
    pub async fn verify_in_call(
        &self,
        id: &str,
        attempt: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    // No transaction, to keep calls cheap: a crash between the two leaves
                    // the attempt open, which recovery closes as interrupted.
                    let done = sqlx::query(
                        "UPDATE verifications SET status = 'verified', updated_at = $1, \
                         verified_at = $1 WHERE id = $2 AND status = 'calling'",
                    )
                    .bind(now)
                    .bind(&id)
                    .execute(&mut *c)
                    .await?;
                    if done.rows_affected() != 1 {
                        return Ok(false);
                    }
                    sqlx::query(
                        "UPDATE call_attempts SET ended_at = $1, outcome = 'verified' \
                         WHERE id = $2 AND ended_at IS NULL",
                    )
                    .bind(now)
                    .bind(attempt)
                    .execute(&mut *c)
                    .await?;
                    Ok(true)
                })
            }))
            .await
    }

    /// Start a call attempt by `daemon`: `pending` becomes `calling`, then an attempt row is
    /// opened; returns the attempt and the verification. `None` when the verification may
    /// not be called: unknown, not `pending` (a verification is never in two calls at once),
    /// expired, out of attempts, or its number or user locked out.
    ///
    /// No transaction of its own, as this runs on every call: if the second statement fails
    /// or the daemon dies between the two, the verification is `calling` with no open
    /// attempt, which is undone here or by recovery at the next start.
    pub async fn begin_attempt(
        &self,
        id: &str,
        channel: &str,
        uniqueid: &str,
        daemon: &str,
        now: i64,
    ) -> Result<Option<(i64, Verification)>, StoreError> {
        let (id, channel, uniqueid, daemon) = (
            id.to_owned(),
            channel.to_owned(),
            uniqueid.to_owned(),
            daemon.to_owned(),
        );
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let claimed = sqlx::query(&format!(
                        "UPDATE verifications SET status = 'calling', updated_at = $1, \
                         claimed_by = NULL, claimed_at = NULL \
                         WHERE id = $2 AND expires_at > $1 AND attempts_used < max_attempts \
                         AND ((status = 'pending' AND channel_id IS NULL \
                               AND NOT EXISTS (SELECT 1 FROM call_attempts a \
                                   WHERE a.verification_id = verifications.id \
                                   AND a.uniqueid = $3)) \
                              OR (status = 'calling' AND channel_id = $3 \
                                  AND claimed_at IS NOT NULL)) \
                         AND NOT EXISTS ({LOCKED_OUT}) \
                         RETURNING {VERIFICATION_COLUMNS}"
                    ))
                    .bind(now)
                    .bind(&id)
                    .bind(&uniqueid)
                    .fetch_optional(&mut *c)
                    .await?;
                    let Some(row) = claimed else {
                        return Ok(None);
                    };
                    let verification = verification_from_row(&row)?;
                    let inserted = sqlx::query(
                        "INSERT INTO call_attempts \
                         (verification_id, channel, uniqueid, daemon, started_at) \
                         VALUES ($1, $2, $3, $4, $5) RETURNING id",
                    )
                    .bind(&id)
                    .bind(&channel)
                    .bind(&uniqueid)
                    .bind(&daemon)
                    .bind(now)
                    .fetch_one(&mut *c)
                    .await;
                    match inserted {
                        Ok(row) => Ok(Some((row.try_get(0)?, verification))),
                        Err(e) => {
                            let _ = sqlx::query(
                                "UPDATE verifications SET status = 'pending' \
                                 WHERE id = $1 AND status = 'calling'",
                            )
                            .bind(&id)
                            .execute(&mut *c)
                            .await;
                            Err(e.into())
                        }
                    }
                })
            }))
            .await
    }

    /// Count one wrong entry of a verification in a call; when that uses up its attempts, it
    /// becomes `failed` and its number and user are locked out until `lock_until`, in the
    /// same transaction. Returns the entries used so far, or `None` if the verification is
    /// no longer in a call (canceled or expired meanwhile): nothing is counted then.
    pub async fn count_wrong_entry(
        &self,
        v: &Verification,
        lock_until: i64,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        let (id, phone, user_ref) = (v.id.clone(), v.phone.clone(), v.user_ref.clone());
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let mut tx = c.begin().await?;
                    let Some(row) = sqlx::query(
                        "UPDATE verifications SET attempts_used = attempts_used + 1, \
                         updated_at = $1 WHERE id = $2 AND status = 'calling' \
                         RETURNING attempts_used, max_attempts",
                    )
                    .bind(now)
                    .bind(&id)
                    .fetch_optional(&mut *tx)
                    .await?
                    else {
                        return Ok(None);
                    };
                    let (used, max): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
                    if used >= max {
                        sqlx::query("UPDATE verifications SET status = 'failed' WHERE id = $1")
                            .bind(&id)
                            .execute(&mut *tx)
                            .await?;
                        for (kind, subject) in [("phone", &phone), ("user", &user_ref)] {
                            sqlx::query(
                                "INSERT INTO lockouts \
                                 (kind, subject, locked_until, verification_id, created_at) \
                                 VALUES ($1, $2, $3, $4, $5)",
                            )
                            .bind(kind)
                            .bind(subject)
                            .bind(lock_until)
                            .bind(&id)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                        }
                    }
                    tx.commit().await?;
                    Ok(Some(used))
                })
            }))
            .await
    }

    /// The latest end of a lockout in force for this number or this user.
    pub async fn locked_until(
        &self,
        phone: &str,
        user_ref: &str,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        let (phone, user_ref) = (phone.to_owned(), user_ref.to_owned());
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let row = sqlx::query(
                        "SELECT MAX(locked_until) FROM lockouts WHERE locked_until > $1 AND \
                         ((kind = 'phone' AND subject = $2) OR (kind = 'user' AND subject = $3))",
                    )
                    .bind(now)
                    .bind(&phone)
                    .bind(&user_ref)
                    .fetch_one(&mut *c)
                    .await?;
                    Ok(row.try_get::<Option<i64>, _>(0)?)
                })
            }))
            .await
    }

    /// Close an attempt with its outcome. A verification the call did not end (`calling`
    /// still) is released: `pending` again, due its next call at `next_call_at` (none: the
    /// dialer leaves it), or `unanswered` once it has had `max_dials` dialer calls.
    pub async fn finish_attempt(
        &self,
        attempt: i64,
        verification_id: &str,
        outcome: CallOutcome,
        next_call_at: Option<i64>,
        max_dials: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let verification_id = verification_id.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    // The attempt first: a crash between the two leaves a `calling`
                    // verification with no open attempt, which recovery puts back.
                    sqlx::query(
                        "UPDATE call_attempts SET ended_at = $1, outcome = $2 \
                         WHERE id = $3 AND ended_at IS NULL",
                    )
                    .bind(now)
                    .bind(outcome.as_str())
                    .bind(attempt)
                    .execute(&mut *c)
                    .await?;
                    if !outcome.ends_verification() {
                        let by = Releaser::Attempt(attempt);
                        release(c, &verification_id, by, next_call_at, max_dials, now).await?;
                    }
                    Ok(())
                })
            }))
            .await
    }

    /// Claim up to `limit` verifications due a call for `daemon`'s dialer: each becomes
    /// `calling` with a fresh ChannelId. On Postgres, daemons sharing the queue skip each
    /// other's rows (`FOR UPDATE SKIP LOCKED`).
    pub async fn claim_due(
        &self,
        daemon: &str,
        limit: i64,
        now: i64,
    ) -> Result<Vec<DialJob>, StoreError> {
        let daemon = daemon.to_owned();
        let skip_locked = match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    // MATERIALIZED: Postgres would otherwise rescan the LIMIT subquery and
                    // claim more rows than asked.
                    let rows = sqlx::query(&format!(
                        "WITH due AS MATERIALIZED (SELECT id FROM verifications \
                             WHERE status = 'pending' AND next_call_at <= $1 AND expires_at > $1 \
                             AND attempts_used < max_attempts AND NOT EXISTS ({LOCKED_OUT}) \
                             ORDER BY next_call_at LIMIT $3 {skip_locked}) \
                         UPDATE verifications SET status = 'calling', \
                         dial_attempts = dial_attempts + 1, \
                         channel_id = id || '-' || CAST(dial_attempts + 1 AS TEXT), \
                         claimed_by = $2, claimed_at = $1, updated_at = $1 \
                         WHERE status = 'pending' AND id IN (SELECT id FROM due) \
                         RETURNING id, phone, locale, channel_id, dial_attempts"
                    ))
                    .bind(now)
                    .bind(&daemon)
                    .bind(limit)
                    .fetch_all(&mut *c)
                    .await?;
                    rows.iter()
                        .map(|r| {
                            Ok(DialJob {
                                verification_id: r.try_get(0)?,
                                phone: r.try_get(1)?,
                                locale: r.try_get(2)?,
                                channel_id: r.try_get(3)?,
                                dial_attempts: r.try_get(4)?,
                            })
                        })
                        .collect()
                })
            }))
            .await
    }

    /// Give back a claim whose Originate was never sent (AMI down): pending again, and the
    /// dial not counted.
    pub async fn unclaim(&self, job: &DialJob, now: i64) -> Result<bool, StoreError> {
        let job = job.clone();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let done = sqlx::query(
                        "UPDATE verifications SET status = 'pending', \
                         dial_attempts = dial_attempts - 1, channel_id = NULL, \
                         claimed_by = NULL, claimed_at = NULL, updated_at = $1 \
                         WHERE id = $2 AND status = 'calling' AND channel_id = $3 \
                         AND claimed_at IS NOT NULL",
                    )
                    .bind(now)
                    .bind(&job.verification_id)
                    .bind(&job.channel_id)
                    .execute(&mut *c)
                    .await?;
                    Ok(done.rows_affected() == 1)
                })
            }))
            .await
    }

    /// A dialer call that never reached the daemon (busy, no answer, failed): recorded as
    /// an attempt and the verification released as [`Store::finish_attempt`] does. Nothing
    /// happens if the call did reach the daemon (an attempt with this ChannelId exists) or
    /// the verification has moved on. Returns whether it applied.
    #[allow(clippy::too_many_arguments)]
    pub async fn dial_failed(
        &self,
        job: &DialJob,
        channel: &str,
        daemon: &str,
        outcome: CallOutcome,
        next_call_at: Option<i64>,
        max_dials: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let (job, channel, daemon) = (job.clone(), channel.to_owned(), daemon.to_owned());
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let mut tx = c.begin().await?;
                    let claimed_at: Option<i64> =
                        sqlx::query("SELECT claimed_at FROM verifications WHERE id = $1")
                            .bind(&job.verification_id)
                            .fetch_optional(&mut *tx)
                            .await?
                            .map(|r| r.try_get(0))
                            .transpose()?
                            .flatten();
                    let released = release(
                        &mut tx,
                        &job.verification_id,
                        Releaser::Dial(&job.channel_id),
                        next_call_at,
                        max_dials,
                        now,
                    )
                    .await?;
                    if released {
                        sqlx::query(
                            "INSERT INTO call_attempts (verification_id, channel, uniqueid, \
                             daemon, started_at, ended_at, outcome) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        )
                        .bind(&job.verification_id)
                        .bind(&channel)
                        .bind(&job.channel_id)
                        .bind(&daemon)
                        .bind(claimed_at.unwrap_or(now))
                        .bind(now)
                        .bind(outcome.as_str())
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                    Ok(released)
                })
            }))
            .await
    }

    /// Take up to `limit` events due for sending, the oldest undelivered one of each
    /// verification only (so that each verification's events go out in order), and hold
    /// them for `lease` ms so that another sender (another daemon) does not take them too.
    pub async fn claim_events(
        &self,
        limit: i64,
        lease: i64,
        now: i64,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let skip_locked = match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let rows = sqlx::query(&format!(
                        "WITH due AS MATERIALIZED (SELECT o.id FROM outbox o \
                             WHERE o.delivered_at IS NULL AND o.next_attempt_at <= $1 \
                             AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.delivered_at IS NULL \
                                 AND p.verification_id = o.verification_id AND p.id < o.id) \
                             ORDER BY o.id LIMIT $2 {skip_locked}) \
                         UPDATE outbox SET next_attempt_at = $3 \
                         WHERE id IN (SELECT id FROM due) \
                         RETURNING id, verification_id, status, created_at, attempts, \
                         (SELECT callback_url FROM verifications v \
                             WHERE v.id = outbox.verification_id)"
                    ))
                    .bind(now)
                    .bind(limit)
                    .bind(now + lease)
                    .fetch_all(&mut *c)
                    .await?;
                    let mut events = rows
                        .iter()
                        .map(|r| {
                            Ok(OutboxEvent {
                                id: r.try_get(0)?,
                                verification_id: r.try_get(1)?,
                                status: r.try_get(2)?,
                                created_at: r.try_get(3)?,
                                attempts: r.try_get(4)?,
                                callback_url: r.try_get(5)?,
                            })
                        })
                        .collect::<Result<Vec<_>, StoreError>>()?;
                    events.sort_by_key(|e| e.id);
                    Ok(events)
                })
            }))
            .await
    }

    /// Record a failed delivery: retried at `retry_at`, or given up (none).
    pub async fn event_failed(
        &self,
        id: i64,
        retry_at: Option<i64>,
        error: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let error: String = error.chars().take(500).collect();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    sqlx::query(
                        "UPDATE outbox SET attempts = attempts + 1, last_error = $1, \
                         delivered_at = CASE WHEN $2 = 0 THEN $3 ELSE NULL END, \
                         next_attempt_at = CASE WHEN $2 = 0 THEN next_attempt_at ELSE $2 END \
                         WHERE id = $4",
                    )
                    .bind(&error)
                    .bind(retry_at.unwrap_or(0))
                    .bind(now)
                    .bind(id)
                    .execute(&mut *c)
                    .await?;
                    Ok(())
                })
            }))
            .await
    }

    /// Note whether status changes of verifications without a `callback_url` have a
    /// receiver (`webhooks.url`): the outbox trigger records them only then.
    pub async fn set_default_webhook(&self, enabled: bool) -> Result<(), StoreError> {
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO settings (key, value) VALUES ('webhooks_default', $1) \
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    )
                    .bind(if enabled { "1" } else { "0" })
                    .execute(&mut *c)
                    .await?;
                    Ok(())
                })
            }))
            .await
    }

    /// Mark events delivered (or skipped, having no receiver), in one statement.
    pub async fn events_delivered(&self, ids: &[i64], now: i64) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        // Integers only, so they can be spelled out in the statement.
        let list = ids
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    sqlx::query(&format!(
                        "UPDATE outbox SET attempts = attempts + 1, delivered_at = $1, \
                         last_error = NULL WHERE id IN ({list})"
                    ))
                    .bind(now)
                    .execute(&mut *c)
                    .await?;
                    Ok(())
                })
            }))
            .await
    }

    /// The outbox of one verification: (status, delivered, attempts), oldest first.
    pub async fn events(
        &self,
        verification_id: &str,
    ) -> Result<Vec<(String, bool, i64)>, StoreError> {
        let verification_id = verification_id.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let rows = sqlx::query(
                        "SELECT status, CASE WHEN delivered_at IS NULL THEN 0 ELSE 1 END, attempts \
                         FROM outbox \
                         WHERE verification_id = $1 ORDER BY id",
                    )
                    .bind(&verification_id)
                    .fetch_all(&mut *c)
                    .await?;
                    rows.iter()
                        .map(|r| Ok((r.try_get(0)?, r.try_get::<i64, _>(1)? != 0, r.try_get(2)?)))
                        .collect()
                })
            }))
            .await
    }

    /// (verifications due a call now, status changes not yet delivered), for `/metrics`.
    pub async fn backlog(&self, now: i64) -> Result<(i64, i64), StoreError> {
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let row = sqlx::query(
                        "SELECT (SELECT COUNT(*) FROM verifications WHERE status = 'pending' \
                             AND next_call_at <= $1 AND expires_at > $1), \
                         (SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL)",
                    )
                    .bind(now)
                    .fetch_one(&mut *c)
                    .await?;
                    Ok((row.try_get(0)?, row.try_get(1)?))
                })
            }))
            .await
    }

    /// Periodic upkeep: dialer claims older than `claims_before` that no FastAGI session
    /// took (the daemon that made them died, or lost their events) go back to `pending`;
    /// verifications waiting past their expiry become `expired`. Returns (released,
    /// expired).
    pub async fn maintain(&self, claims_before: i64, now: i64) -> Result<(u64, u64), StoreError> {
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let released = sqlx::query(
                        "UPDATE verifications SET status = 'pending', next_call_at = $1, \
                         channel_id = NULL, claimed_by = NULL, claimed_at = NULL, updated_at = $1 \
                         WHERE status = 'calling' AND claimed_at IS NOT NULL AND claimed_at < $2",
                    )
                    .bind(now)
                    .bind(claims_before)
                    .execute(&mut *c)
                    .await?
                    .rows_affected();
                    let expired = sqlx::query(
                        "UPDATE verifications SET status = 'expired', updated_at = $1 \
                         WHERE status = 'pending' AND expires_at <= $1",
                    )
                    .bind(now)
                    .execute(&mut *c)
                    .await?
                    .rows_affected();
                    Ok((released, expired))
                })
            }))
            .await
    }

    pub async fn attempts(&self, verification_id: &str) -> Result<Vec<AttemptRow>, StoreError> {
        let verification_id = verification_id.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let rows = sqlx::query(
                        "SELECT id, verification_id, channel, uniqueid, started_at, ended_at, \
                         outcome, daemon FROM call_attempts WHERE verification_id = $1 ORDER BY id",
                    )
                    .bind(&verification_id)
                    .fetch_all(&mut *c)
                    .await?;
                    rows.iter().map(attempt_from_row).collect()
                })
            }))
            .await
    }

    /// After a crash: close as `interrupted` the attempts left open by `daemon` (which, now
    /// starting, cannot have calls) and any attempt started before `stale_before`, and put
    /// verifications left `calling` by a session without an open attempt back to `pending`
    /// (dialer calls that may still ring are [`Store::maintain`]'s). Wrong
    /// entries were counted as they happened and stay counted. Other daemons' live calls on
    /// a shared database are left alone.
    pub async fn recover_interrupted(
        &self,
        daemon: &str,
        stale_before: i64,
        now: i64,
    ) -> Result<Recovered, StoreError> {
        let daemon = daemon.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let mut tx = c.begin().await?;
                    let attempts = sqlx::query(
                        "UPDATE call_attempts SET ended_at = $1, outcome = 'interrupted' \
                         WHERE ended_at IS NULL AND (daemon = $2 OR started_at < $3)",
                    )
                    .bind(now)
                    .bind(&daemon)
                    .bind(stale_before)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    let verifications = sqlx::query(
                        "UPDATE verifications SET status = 'pending', updated_at = $1, \
                         channel_id = NULL \
                         WHERE status = 'calling' AND claimed_at IS NULL \
                         AND NOT EXISTS (SELECT 1 FROM call_attempts a \
                             WHERE a.verification_id = verifications.id AND a.ended_at IS NULL)",
                    )
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    tx.commit().await?;
                    Ok(Recovered {
                        attempts,
                        verifications,
                    })
                })
            }))
            .await
    }
}

fn status_list(statuses: &[Status]) -> String {
    statuses
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_column<T: FromStr>(column: &'static str, value: &str) -> Result<T, StoreError> {
    value.parse().map_err(|_| StoreError::Corrupt {
        column,
        value: value.to_owned(),
    })
}

/// Which call asks to release a `calling` verification.
#[derive(Clone, Copy)]
enum Releaser<'a> {
    /// The dialer's call with this ChannelId, while no FastAGI session has taken it.
    Dial(&'a str),
    /// This FastAGI attempt, unless the verification is in a newer dialer call.
    Attempt(i64),
}

/// Put a `calling` verification back to `pending`, due again at `next_call_at`, or make it
/// `unanswered` when a retry is due but it has had `max_dials` calls.
async fn release(
    c: &mut AnyConnection,
    id: &str,
    by: Releaser<'_>,
    next_call_at: Option<i64>,
    max_dials: i64,
    now: i64,
) -> Result<bool, StoreError> {
    let give_up_at = if next_call_at.is_some() {
        max_dials
    } else {
        i64::MAX
    };
    let (channel_id, attempt) = match by {
        Releaser::Dial(channel_id) => (channel_id, 0),
        Releaser::Attempt(attempt) => ("", attempt),
    };
    let done = sqlx::query(
        "UPDATE verifications SET \
         status = CASE WHEN dial_attempts >= $1 THEN 'unanswered' ELSE 'pending' END, \
         next_call_at = $2, channel_id = NULL, claimed_by = NULL, claimed_at = NULL, \
         updated_at = $3 \
         WHERE id = $4 AND status = 'calling' AND ( \
             ($5 <> '' AND channel_id = $5 AND claimed_at IS NOT NULL) OR \
             ($5 = '' AND (channel_id IS NULL OR channel_id = \
                 (SELECT a.uniqueid FROM call_attempts a WHERE a.id = $6))))",
    )
    .bind(give_up_at)
    .bind(next_call_at)
    .bind(now)
    .bind(id)
    .bind(channel_id)
    .bind(attempt)
    .execute(c)
    .await?;
    Ok(done.rows_affected() == 1)
}

async fn insert_verification(c: &mut AnyConnection, v: &Verification) -> Result<(), StoreError> {
    // Due a call at once, except test verifications, which the QA line calls itself.
    sqlx::query(&format!(
        "INSERT INTO verifications ({VERIFICATION_COLUMNS}, next_call_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
    ))
    .bind(&v.id)
    .bind(&v.phone)
    .bind(&v.user_ref)
    .bind(&v.code_hash)
    .bind(v.code_length)
    .bind(v.status.as_str())
    .bind(v.attempts_used)
    .bind(v.max_attempts)
    .bind(&v.locale)
    .bind(i64::from(v.is_test))
    .bind(v.created_at)
    .bind(v.updated_at)
    .bind(v.expires_at)
    .bind(v.verified_at)
    .bind(&v.api_key_id)
    .bind(&v.callback_url)
    .bind((!v.is_test).then_some(v.created_at))
    .execute(c)
    .await?;
    Ok(())
}

fn api_key_from_row(r: &sqlx::any::AnyRow) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        created_at: r.try_get(2)?,
        revoked_at: r.try_get(3)?,
    })
}

fn attempt_from_row(r: &sqlx::any::AnyRow) -> Result<AttemptRow, StoreError> {
    let outcome: Option<String> = r.try_get(6)?;
    Ok(AttemptRow {
        id: r.try_get(0)?,
        verification_id: r.try_get(1)?,
        channel: r.try_get(2)?,
        uniqueid: r.try_get(3)?,
        started_at: r.try_get(4)?,
        ended_at: r.try_get(5)?,
        outcome: outcome.map(|o| parse_column("outcome", &o)).transpose()?,
        daemon: r.try_get(7)?,
    })
}

fn verification_from_row(r: &sqlx::any::AnyRow) -> Result<Verification, StoreError> {
    let status: String = r.try_get("status")?;
    Ok(Verification {
        id: r.try_get("id")?,
        phone: r.try_get("phone")?,
        user_ref: r.try_get("user_ref")?,
        code_hash: r.try_get("code_hash")?,
        code_length: r.try_get("code_length")?,
        status: parse_column("status", &status)?,
        attempts_used: r.try_get("attempts_used")?,
        max_attempts: r.try_get("max_attempts")?,
        locale: r.try_get("locale")?,
        is_test: r.try_get::<i64, _>("is_test")? != 0,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        expires_at: r.try_get("expires_at")?,
        verified_at: r.try_get("verified_at")?,
        api_key_id: r.try_get("api_key_id")?,
        callback_url: r.try_get("callback_url")?,
    })
}
