//! Creating a verification as one store operation: the idempotency key, the lockouts and the
//! rate limits are checked and the row inserted together, so that parallel requests for one
//! number, user or API key cannot pass a limit together: each counted subject is locked first
//! ([`subject_locks`]).

use super::sql::{query, Conn};
use super::subject_locks;

use crate::domain::verification::Verification;

use super::lockouts::{standing_from, STANDING_COLUMNS};
use super::verifications::insert_verification;
use super::{op, Store, StoreError};

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

impl RateLimit {
    /// The subject whose lock serialises its counts ([`subject_locks`]).
    fn lock_subject(&self) -> String {
        format!("{}:{}", self.subject.column(), self.value)
    }
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
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    if let Some(earlier) = earlier_use(c, idempotency.as_ref()).await? {
                        return Ok(Created::Existing(earlier));
                    }
                    let created = checked_insert(
                        c,
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
    v: &Verification,
    idempotency: Option<&IdempotencyKey>,
    limits: &[RateLimit],
    window_start: i64,
    strikes_since: i64,
) -> Result<Created, StoreError> {
    let mut tx = c.begin().await?;
    // The API key's subject is shared by all of a web app's creations: it is locked last, for
    // the count and the insert only, so that creations of other numbers and users wait for
    // each other as briefly as can be.
    let (shared, own): (Vec<&RateLimit>, Vec<&RateLimit>) = limits
        .iter()
        .partition(|l| l.subject == RateSubject::ApiKey);
    // The number and the user (lockouts) and whatever their limits count.
    let subjects = [
        subject_locks::number(&v.phone),
        subject_locks::user(&v.user_ref),
    ]
    .into_iter()
    .chain(own.iter().map(|l| l.lock_subject()));
    subject_locks::lock(&mut tx, subjects).await?;
    // Under those locks, one statement reads the number's and the user's standing and counts
    // their limits.
    let counts = (0..own.len())
        .map(|i| {
            format!(
                ", {}",
                count_sql(own[i].subject, 6 + 2 * i, 5, 7 + 2 * i, i)
            )
        })
        .collect::<String>();
    let mut admission = query(format!("SELECT {}{counts}", STANDING_COLUMNS.as_str()))
        .bind(v.created_at)
        .bind(&v.phone)
        .bind(&v.user_ref)
        .bind(strikes_since);
    if !own.is_empty() {
        admission = own.iter().fold(admission.bind(window_start), |q, limit| {
            q.bind(&limit.value).bind(limit.max)
        });
    }
    let row = admission.fetch_one(&mut tx).await?;
    let standing = standing_from(&row)?;
    if let Some(until) = standing.locked_until {
        return Ok(Created::LockedOut(until));
    }
    for (i, limit) in own.iter().enumerate() {
        if row.try_get::<i64>(&format!("n{i}"))? >= limit.max {
            return limited(&mut tx, limit, window_start).await;
        }
    }
    if !shared.is_empty() {
        subject_locks::lock(&mut tx, shared.iter().map(|l| l.lock_subject())).await?;
    }
    for limit in shared {
        if let Some(limited) = over_limit(&mut tx, limit, window_start).await? {
            return Ok(limited);
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

/// The count of `subject`'s creations (value `$value`) since `$since`, as column `n{i}`:
/// counted up to the limit (`$max`) only, so that a busy subject costs no more than its
/// limit.
fn count_sql(subject: RateSubject, value: usize, since: usize, max: usize, i: usize) -> String {
    let column = subject.column();
    format!(
        "(SELECT COUNT(*) FROM (SELECT 1 FROM verifications \
         WHERE {column} = ${value} AND created_at > ${since} AND is_test = 0 LIMIT ${max}) \
         AS w{i}) AS n{i}"
    )
}

/// `Limited` if `limit` is reached.
async fn over_limit(
    c: &mut Conn,
    limit: &RateLimit,
    window_start: i64,
) -> Result<Option<Created>, StoreError> {
    let row = query(format!("SELECT {}", count_sql(limit.subject, 1, 2, 3, 0)))
        .bind(&limit.value)
        .bind(window_start)
        .bind(limit.max)
        .fetch_one(&mut *c)
        .await?;
    if row.try_get::<i64>("n0")? < limit.max {
        return Ok(None);
    }
    limited(c, limit, window_start).await.map(Some)
}

/// `limit` is reached: since its oldest creation in the window.
async fn limited(
    c: &mut Conn,
    limit: &RateLimit,
    window_start: i64,
) -> Result<Created, StoreError> {
    let column = limit.subject.column();
    let row = query(format!(
        "SELECT MIN(created_at) AS oldest FROM verifications \
         WHERE {column} = $1 AND created_at > $2 AND is_test = 0"
    ))
    .bind(&limit.value)
    .bind(window_start)
    .fetch_one(&mut *c)
    .await?;
    Ok(Created::Limited {
        subject: limit.subject,
        oldest: row.try_get("oldest")?,
    })
}
