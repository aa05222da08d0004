//! Creating verifications: the idempotency key, the lockouts and the rate limits are checked
//! and the rows inserted in one transaction, so that parallel requests for one number, user
//! or API key cannot pass a limit together: each counted subject is locked first
//! ([`subject_locks`]). On Postgres, creations that arrive while others are being written
//! wait and are then written together ([`Batcher`]): one transaction and a handful of
//! statements for all of them, each checked as if it ran alone after those before it. (On
//! SQLite the writer commits the operations waiting for it together already.)

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use super::batches::Batcher;
use super::engine::Engine;
use super::lockouts::{standing_columns, standing_from};
use super::sql::{placeholder_rows, query, Conn};
use super::subject_locks;
use super::verifications::insert_verifications;
use super::{op, Backend, Store, StoreError};
use crate::domain::verification::Verification;

/// Most creations written in one transaction.
const MAX_BATCH: usize = 64;

/// An earlier use of an idempotency key: the request's hash and what it created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Earlier {
    pub request_hash: String,
    pub verification_id: String,
}

/// Who a rate limit counts creations of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateSubject {
    Phone,
    User,
    ApiKey,
}

impl RateSubject {
    /// The column of `verifications` that names the subject.
    fn column(self) -> &'static str {
        match self {
            RateSubject::Phone => "phone",
            RateSubject::User => "user_ref",
            RateSubject::ApiKey => "api_key_id",
        }
    }
}

/// The most creations since the window's start for the verification's number, its user and
/// its API key (`None`: not limited).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    pub per_number: Option<i64>,
    pub per_user: Option<i64>,
    pub per_api_key: Option<i64>,
}

impl Limits {
    /// The maxima, in the order [`admission_sql`] binds them.
    fn maxima(self) -> [Option<i64>; 3] {
        [self.per_number, self.per_user, self.per_api_key]
    }

    /// Which limits count: bit 0 the number's, 1 the user's, 2 the API key's.
    fn counted(self) -> usize {
        self.maxima()
            .iter()
            .enumerate()
            .filter(|(_, max)| max.is_some())
            .map(|(bit, _)| 1 << bit)
            .sum()
    }
}

/// An `Idempotency-Key` of an API key, with the hash of the request that used it.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub api_key_id: String,
    pub key: String,
    pub request_hash: String,
}

/// A verification to create, with what is checked before it is.
#[derive(Debug, Clone)]
pub struct Creation {
    pub verification: Verification,
    /// An earlier use of it wins over every check.
    pub idempotency: Option<IdempotencyKey>,
    pub limits: Limits,
    /// Creations since then count against the limits.
    pub window_start: i64,
    /// Wrong codes since then are the number's and the user's strikes.
    pub strikes_since: i64,
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

/// The creations waiting to be written together.
pub(super) type Creations = Arc<Batcher<Creation, Created>>;

/// A new [`Creations`].
pub(super) fn creations() -> Creations {
    Arc::new(Batcher::new(
        run_batch,
        // One statement counts a batch's limits: they are the same for all of it.
        |first, next| first.limits == next.limits,
        MAX_BATCH,
    ))
}

impl Store {
    /// Insert the creation's verification after the checks: an earlier use of its
    /// idempotency key wins, then lockouts of its number or user in force at its
    /// `created_at`, then its limits.
    pub async fn create_verification(&self, creation: Creation) -> Result<Created, StoreError> {
        match self.backend {
            Backend::Postgres => self.creations.run(&self.engine, creation).await,
            // The writer commits the operations waiting for it together already, and keeps
            // taking more while it writes (a batch at a time would leave it idle between
            // batches).
            Backend::Sqlite => run_batch(self.engine.clone(), Arc::new(vec![creation]))
                .await?
                .pop()
                .ok_or(StoreError::NoRow),
        }
    }
}

fn run_batch(
    engine: Engine,
    batch: Arc<Vec<Creation>>,
) -> futures::future::BoxFuture<'static, Result<Vec<Created>, StoreError>> {
    Box::pin(async move {
        engine
            .run(op(move |c| {
                Box::pin(async move { create_all(c, &batch).await })
            }))
            .await
    })
}

/// The creations in `batch`, in order, in one transaction.
async fn create_all(c: &mut Conn, batch: &[Creation]) -> Result<Vec<Created>, StoreError> {
    let Some(limits) = batch.first().map(|first| first.limits) else {
        return Ok(Vec::new());
    };
    debug_assert!(
        batch.iter().all(|c| c.limits == limits),
        "one batch, one set of limits"
    );
    let mut tx = c.begin().await?;
    subject_locks::lock(&mut tx, batch.iter().flat_map(subjects)).await?;
    let mut earlier = earlier_uses(&mut tx, batch).await?;
    let admissions = admissions(&mut tx, batch, limits).await?;
    let mut results = Vec::with_capacity(batch.len());
    let mut inserted = Vec::with_capacity(batch.len());
    let mut created_here = CreatedHere::default();
    // The oldest stored creation of each subject over its limit, read once a batch.
    let mut oldest: HashMap<(RateSubject, String), Option<i64>> = HashMap::new();
    for (creation, admission) in batch.iter().zip(admissions) {
        let v = &creation.verification;
        let key = creation.idempotency.as_ref();
        let used = key.and_then(|k| earlier.get(&(k.api_key_id.clone(), k.key.clone())));
        if let Some(earlier) = used {
            results.push(Created::Existing(earlier.clone()));
            continue;
        }
        if let Some(until) = admission.locked_until {
            results.push(Created::LockedOut(until));
            continue;
        }
        let over = created_here.over_limit(v, limits, &admission);
        if let Some((subject, value, oldest_here)) = over {
            let key = (subject, value.to_owned());
            let stored = match oldest.get(&key) {
                Some(&stored) => stored,
                None => {
                    let stored =
                        oldest_stored(&mut tx, subject, value, creation.window_start).await?;
                    *oldest.entry(key).or_insert(stored)
                }
            };
            let oldest = [stored, oldest_here].into_iter().flatten().min();
            results.push(Created::Limited { subject, oldest });
            continue;
        }
        created_here.add(v);
        if let Some(k) = key {
            let now_used = Earlier {
                request_hash: k.request_hash.clone(),
                verification_id: v.id.clone(),
            };
            earlier.insert((k.api_key_id.clone(), k.key.clone()), now_used);
        }
        inserted.push(creation);
        results.push(Created::Inserted {
            strikes: admission.strikes,
        });
    }
    insert_verifications(
        &mut tx,
        &inserted.iter().map(|c| &c.verification).collect::<Vec<_>>(),
    )
    .await?;
    remember_keys(&mut tx, &inserted).await?;
    // Whether it committed may be unknown: the batch is not to be run again.
    tx.commit()
        .await
        .map_err(|e| StoreError::Commit(e.to_string()))?;
    Ok(results)
}

/// The subjects a creation locks: its number and user (their lockouts and limits), its
/// idempotency key, its API key (that key's limit).
fn subjects(creation: &Creation) -> Vec<String> {
    let v = &creation.verification;
    let mut subjects = vec![
        subject_locks::number(&v.phone),
        subject_locks::user(&v.user_ref),
    ];
    if let Some(k) = &creation.idempotency {
        subjects.push(subject_locks::idempotency_key(&k.api_key_id, &k.key));
    }
    if let (Some(_), Some(id)) = (creation.limits.per_api_key, &v.api_key_id) {
        subjects.push(subject_locks::api_key(id));
    }
    subjects
}

/// The batch's idempotency keys used before, by API key and key.
async fn earlier_uses(
    c: &mut Conn,
    batch: &[Creation],
) -> Result<HashMap<(String, String), Earlier>, StoreError> {
    let keys: Vec<&IdempotencyKey> = batch
        .iter()
        .filter_map(|c| c.idempotency.as_ref())
        .collect();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let matches = (0..keys.len())
        .map(|i| {
            format!(
                "(api_key_id = ${} AND idem_key = ${})",
                2 * i + 1,
                2 * i + 2
            )
        })
        .collect::<Vec<_>>()
        .join(" OR ");
    let find = query(format!(
        "SELECT api_key_id, idem_key, request_hash, verification_id FROM idempotency_keys \
         WHERE {matches}"
    ));
    let mut find = if keys.len() > 1 { find.once() } else { find };
    for k in &keys {
        find = find.bind(&k.api_key_id).bind(&k.key);
    }
    find.fetch_all(c)
        .await?
        .iter()
        .map(|r| {
            let key = (r.try_get("api_key_id")?, r.try_get("idem_key")?);
            let earlier = Earlier {
                request_hash: r.try_get("request_hash")?,
                verification_id: r.try_get("verification_id")?,
            };
            Ok((key, earlier))
        })
        .collect()
}

/// What the store says about one creation, under the batch's locks.
struct Admission {
    locked_until: Option<i64>,
    strikes: i64,
    /// Creations counted in each limit's window, up to the limit (0 when not limited), in
    /// the order of [`Limits::maxima`].
    counts: [i64; 3],
}

/// Values bound for each creation [`admissions`] reads.
const ADMISSION_VALUES: usize = 7;

/// For each creation of `batch`, in order: its number's and user's standing and its counts
/// in `limits`, in one statement. Each count stops at its limit, so that a busy subject
/// costs no more than its limit.
async fn admissions(
    c: &mut Conn,
    batch: &[Creation],
    limits: Limits,
) -> Result<Vec<Admission>, StoreError> {
    let mut read = match batch.len() {
        1 => query(ADMISSION_OF_ONE[limits.counted()].as_str()),
        n => query(admission_sql(n, limits.counted())),
    };
    for (i, creation) in batch.iter().enumerate() {
        let v = &creation.verification;
        read = read
            .bind(i as i64)
            .bind(v.created_at)
            .bind(&v.phone)
            .bind(&v.user_ref)
            .bind(creation.strikes_since)
            .bind(creation.window_start)
            .bind(&v.api_key_id);
    }
    for max in limits.maxima().into_iter().flatten() {
        read = read.bind(max);
    }
    let rows = read.fetch_all(c).await?;
    if rows.len() != batch.len() {
        return Err(StoreError::NoRow);
    }
    rows.iter()
        .map(|r| {
            let standing = standing_from(r)?;
            Ok(Admission {
                locked_until: standing.locked_until,
                strikes: standing.strikes,
                counts: [
                    r.try_get("phone_count")?,
                    r.try_get("user_ref_count")?,
                    r.try_get("api_key_id_count")?,
                ],
            })
        })
        .collect()
}

/// The statement [`admissions`] runs for `n` creations, with the limits whose bits are set
/// in `counted` ([`Limits::counted`]).
fn admission_sql(n: usize, counted: usize) -> String {
    let mut next = n * ADMISSION_VALUES;
    let counts = [
        (RateSubject::Phone, "t.phone"),
        (RateSubject::User, "t.user_ref"),
        (RateSubject::ApiKey, "t.api_key"),
    ]
    .into_iter()
    .enumerate()
    .map(|(bit, (subject, value))| {
        let column = subject.column();
        if counted & (1 << bit) == 0 {
            return format!(", 0 AS {column}_count");
        }
        next += 1;
        format!(
            ", (SELECT COUNT(*) FROM (SELECT 1 FROM verifications \
             WHERE {column} = {value} AND created_at > t.window_start AND is_test = 0 \
             LIMIT ${next}) AS w) AS {column}_count"
        )
    })
    .collect::<String>();
    format!(
        "WITH t (i, at, phone, user_ref, strikes_since, window_start, api_key) AS \
         (VALUES {}) \
         SELECT t.i AS i, {}{counts} FROM t ORDER BY t.i",
        placeholder_rows(n, ADMISSION_VALUES),
        standing_columns("t.at", "t.phone", "t.user_ref", "t.strikes_since")
    )
}

/// [`admission_sql`] for one creation, for each set of limits, built once: most creations
/// run alone.
static ADMISSION_OF_ONE: LazyLock<Vec<String>> =
    LazyLock::new(|| (0..8).map(|counted| admission_sql(1, counted)).collect());

/// The creations a batch has inserted so far, for each subject: how many, and the oldest's
/// time.
#[derive(Default)]
struct CreatedHere(HashMap<(RateSubject, String), (i64, i64)>);

impl CreatedHere {
    /// The first of `limits` that `v` is over, counting the store's creations
    /// (`admission`) and these: its subject, the subject's value, and the oldest of these.
    fn over_limit<'v>(
        &self,
        v: &'v Verification,
        limits: Limits,
        admission: &Admission,
    ) -> Option<(RateSubject, &'v str, Option<i64>)> {
        let counted = subjects_of(v).into_iter().zip(limits.maxima());
        counted
            .zip(admission.counts)
            .find_map(|(((subject, value), max), stored)| {
                let (value, max) = (value?, max?);
                let (here, oldest) = match self.0.get(&(subject, value.to_owned())) {
                    Some(&(n, oldest)) => (n, Some(oldest)),
                    None => (0, None),
                };
                (stored + here >= max).then_some((subject, value, oldest))
            })
    }

    fn add(&mut self, v: &Verification) {
        for (subject, value) in subjects_of(v) {
            if let Some(value) = value {
                let entry = self
                    .0
                    .entry((subject, value.to_owned()))
                    .or_insert((0, v.created_at));
                entry.0 += 1;
            }
        }
    }
}

/// Who `v`'s creation counts for, in the order of [`Limits::maxima`]: its number, its user,
/// its API key (if any).
fn subjects_of(v: &Verification) -> [(RateSubject, Option<&str>); 3] {
    [
        (RateSubject::Phone, Some(v.phone.as_str())),
        (RateSubject::User, Some(v.user_ref.as_str())),
        (RateSubject::ApiKey, v.api_key_id.as_deref()),
    ]
}

/// The oldest creation of `subject` = `value` in the window, in the store.
async fn oldest_stored(
    c: &mut Conn,
    subject: RateSubject,
    value: &str,
    window_start: i64,
) -> Result<Option<i64>, StoreError> {
    let column = subject.column();
    query(format!(
        "SELECT MIN(created_at) AS oldest FROM verifications \
         WHERE {column} = $1 AND created_at > $2 AND is_test = 0"
    ))
    .bind(value)
    .bind(window_start)
    .fetch_one(c)
    .await?
    .try_get("oldest")
}

/// Remember the idempotency keys of the `inserted` creations.
async fn remember_keys(c: &mut Conn, inserted: &[&Creation]) -> Result<(), StoreError> {
    let keyed: Vec<(&IdempotencyKey, &Verification)> = inserted
        .iter()
        .filter_map(|c| Some((c.idempotency.as_ref()?, &c.verification)))
        .collect();
    if keyed.is_empty() {
        return Ok(());
    }
    let insert = query(format!(
        "INSERT INTO idempotency_keys \
         (api_key_id, idem_key, request_hash, verification_id, created_at) VALUES {}",
        placeholder_rows(keyed.len(), 5)
    ));
    let mut insert = if keyed.len() > 1 {
        insert.once()
    } else {
        insert
    };
    for (key, v) in keyed {
        insert = insert
            .bind(&key.api_key_id)
            .bind(&key.key)
            .bind(&key.request_hash)
            .bind(&v.id)
            .bind(v.created_at);
    }
    insert.execute(c).await?;
    Ok(())
}
