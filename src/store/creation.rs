//! Creating a verification as one store operation: the idempotency key, the lockouts and the
//! rate limits are checked and the row inserted together, so that parallel requests for one
//! number, user or API key cannot pass a limit together. On Postgres (several daemons)
//! transaction advisory locks on each counted subject serialise those checks; on SQLite the
//! single writer already runs operations one at a time.

use std::collections::BTreeSet;

use super::sql::{query, Conn};

use crate::domain::verification::Verification;

use super::lockouts::standing;
use super::verifications::insert_verification;
use super::{op, Backend, Store, StoreError};

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
    fn column(self) -> &'static str {
        match self {
            RateSubject::Phone => "phone",
            RateSubject::User => "user_ref",
            RateSubject::ApiKey => "api_key_id",
        }
    }
}

/// At most `max` creations for `subject` = `value` since the window's start.
#[derive(Debug, Clone)]
pub struct RateLimit {
    pub subject: RateSubject,
    pub value: String,
    pub max: i64,
}

/// An `Idempotency-Key` of an API key, with the hash of the request that used it.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub api_key_id: String,
    pub key: String,
    pub request_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// Inserted; the wrong codes its number or user already have against them.
    Inserted { strikes: i64 },
    /// The idempotency key was used before.
    Existing(Earlier),
    /// The number or the user is locked out until then.
    LockedOut(i64),
    /// A limit is reached; the oldest creation in the window, when it is known.
    Limited {
        subject: RateSubject,
        oldest: Option<i64>,
    },
}

const FIND_IDEMPOTENT: &str = "SELECT request_hash, verification_id FROM idempotency_keys \
                               WHERE api_key_id = $1 AND idem_key = $2";

impl Store {
    /// Insert `v` after the checks, all in one transaction: an earlier use of `idempotency`
    /// wins, then lockouts of its number or user in force at `v.created_at`, then `limits`
    /// counted since `window_start`. The strikes counted are those since `strikes_since`.
    pub async fn create_verification(
        &self,
        v: &Verification,
        idempotency: Option<IdempotencyKey>,
        limits: Vec<RateLimit>,
        window_start: i64,
        strikes_since: i64,
    ) -> Result<Created, StoreError> {
        let v = v.clone();
        let backend = self.backend;
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    if let Some(earlier) = earlier_use(c, idempotency.as_ref()).await? {
                        return Ok(Created::Existing(earlier));
                    }
                    let created = checked_insert(
                        c,
                        backend,
                        &v,
                        idempotency.as_ref(),
                        &limits,
                        window_start,
                        strikes_since,
                    )
                    .await;
                    match created {
                        Err(e) => match earlier_use(c, idempotency.as_ref()).await? {
                            // Another daemon won the race for this key: its creation stands.
                            Some(earlier) => Ok(Created::Existing(earlier)),
                            None => Err(e),
                        },
                        other => other,
                    }
                })
            }))
            .await
    }
}

async fn earlier_use(
    c: &mut Conn,
    key: Option<&IdempotencyKey>,
) -> Result<Option<Earlier>, StoreError> {
    match key {
        Some(key) => find_idempotent(c, &key.api_key_id, &key.key).await,
        None => Ok(None),
    }
}

/// The earlier use of `key` by `api_key_id`, if any.
async fn find_idempotent(
    c: &mut Conn,
    api_key_id: &str,
    key: &str,
) -> Result<Option<Earlier>, StoreError> {
    let row = query(FIND_IDEMPOTENT)
        .bind(api_key_id)
        .bind(key)
        .fetch_optional(&mut *c)
        .await?;
    row.map(|r| {
        Ok(Earlier {
            request_hash: r.try_get("request_hash")?,
            verification_id: r.try_get("verification_id")?,
        })
    })
    .transpose()
}

async fn checked_insert(
    c: &mut Conn,
    backend: Backend,
    v: &Verification,
    idempotency: Option<&IdempotencyKey>,
    limits: &[RateLimit],
    window_start: i64,
    strikes_since: i64,
) -> Result<Created, StoreError> {
    let mut tx = c.begin().await?;
    if backend == Backend::Postgres {
        // The number and the user (lockouts) and whatever a limit counts, the API key
        // included. A BTreeSet gives a fixed order, so that two creations never wait for
        // each other's second lock.
        let subjects: BTreeSet<String> =
            [format!("phone:{}", v.phone), format!("user:{}", v.user_ref)]
                .into_iter()
                .chain(
                    limits
                        .iter()
                        .map(|l| format!("{}:{}", l.subject.column(), l.value)),
                )
                .collect();
        for subject in subjects {
            query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(subject)
                .execute(&mut tx)
                .await?;
        }
    }
    let standing = standing(&mut tx, &v.phone, &v.user_ref, v.created_at, strikes_since).await?;
    if let Some(until) = standing.locked_until {
        return Ok(Created::LockedOut(until));
    }
    for limit in limits {
        let row = query(format!(
            "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM verifications \
             WHERE {} = $1 AND created_at > $2 AND is_test = 0",
            limit.subject.column()
        ))
        .bind(&limit.value)
        .bind(window_start)
        .fetch_one(&mut tx)
        .await?;
        let count: i64 = row.try_get("n")?;
        if count >= limit.max {
            return Ok(Created::Limited {
                subject: limit.subject,
                oldest: row.try_get("oldest")?,
            });
        }
    }
    insert_verification(&mut tx, v).await?;
    if let Some(key) = idempotency {
        query(
            "INSERT INTO idempotency_keys \
             (api_key_id, idem_key, request_hash, verification_id, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&key.api_key_id)
        .bind(&key.key)
        .bind(&key.request_hash)
        .bind(&v.id)
        .bind(v.created_at)
        .execute(&mut tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Created::Inserted {
        strikes: standing.strikes,
    })
}
