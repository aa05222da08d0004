//! Creations waiting together are written in one transaction: each must still be checked as
//! if it ran alone after those before it (limits, idempotency keys, lockouts), and one that
//! fails must fail alone. On SQLite (the writer's group) and on a real Postgres server (a
//! batch of creations).
//!
//! The tests run on one thread, so creations started together all wait while the first
//! batch's task (or the writer's group) has not yet run: they are one batch.

use futures::future::join_all;

use crate::common::{pending_row as row, Db};
use callverify::domain::clock::now_ms;
use callverify::domain::Verification;
use callverify::store::{
    Begun, Checked, Checker, Created, Creation, Earlier, IdempotencyKey, Limits, RateSubject,
    Store, StoreError, StrikeRule,
};

const HOUR: i64 = 3_600_000;

async fn store(db: Db) -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = crate::common::fresh_database(db, dir.path()).await;
    let store = Store::connect(&url, 8).await.unwrap();
    store.migrate().await.unwrap();
    (store, dir)
}

pub fn creation(v: Verification, limits: Limits) -> Creation {
    Creation {
        window_start: v.created_at - HOUR,
        strikes_since: v.created_at - 24 * HOUR,
        verification: v,
        idempotency: None,
        limits,
    }
}

/// Creations of `make(i)` for each `i` of `range`.
fn batch(
    range: std::ops::Range<u32>,
    limits: Limits,
    make: impl Fn(u32) -> Verification,
) -> Vec<Creation> {
    range.map(|i| creation(make(i), limits)).collect()
}

/// Run `creations` together.
async fn create_together(s: &Store, creations: Vec<Creation>) -> Vec<Result<Created, StoreError>> {
    join_all(creations.into_iter().map(|c| s.create_verification(c))).await
}

fn inserted(results: &[Result<Created, StoreError>]) -> usize {
    results
        .iter()
        .filter(|r| matches!(r, Ok(Created::Inserted { .. })))
        .count()
}

/// Those over `subject`'s limit, each with the oldest creation's time.
fn limited(results: &[Result<Created, StoreError>], subject: RateSubject) -> usize {
    results
        .iter()
        .filter(
            |r| matches!(r, Ok(Created::Limited { subject: s, oldest: Some(_) }) if *s == subject),
        )
        .count()
}

async fn creations_together_count_each_other(db: Db) {
    let (s, _dir) = store(db).await;
    // Ten for one number, each another user: two pass the number's limit.
    let per_number = Limits {
        per_number: Some(2),
        ..Limits::default()
    };
    let for_one_number = |i| row(&format!("vf_n{i}"), "+14155550101", &format!("u{i}"));
    let results = create_together(&s, batch(0..10, per_number, for_one_number)).await;
    assert_eq!(inserted(&results), 2, "{results:?}");
    assert_eq!(limited(&results, RateSubject::Phone), 8, "{results:?}");
    // The next ones count the stored two.
    let results = create_together(&s, batch(10..13, per_number, for_one_number)).await;
    assert_eq!(limited(&results, RateSubject::Phone), 3, "{results:?}");

    // Ten for one user, each another number.
    let per_user = Limits {
        per_user: Some(3),
        ..Limits::default()
    };
    let for_one_user = |i| row(&format!("vf_u{i}"), &format!("+1415555020{i}"), "bob");
    let results = create_together(&s, batch(0..10, per_user, for_one_user)).await;
    assert_eq!(inserted(&results), 3, "{results:?}");
    assert_eq!(limited(&results, RateSubject::User), 7, "{results:?}");

    // Ten of one API key, for other numbers and users; creations without a key do not count.
    let per_key = Limits {
        per_api_key: Some(4),
        ..Limits::default()
    };
    let for_one_key = |i| {
        let mut v = row(
            &format!("vf_k{i}"),
            &format!("+14155550{i:03}"),
            &format!("k{i}"),
        );
        v.api_key_id = (i < 10).then(|| "key_a".to_owned());
        v
    };
    let results = create_together(&s, batch(0..12, per_key, for_one_key)).await;
    assert_eq!(inserted(&results), 6, "{results:?}");
    assert_eq!(limited(&results, RateSubject::ApiKey), 6, "{results:?}");
    for (i, result) in results.iter().enumerate().skip(10) {
        assert!(
            matches!(result, Ok(Created::Inserted { .. })),
            "{i}: {result:?}"
        );
    }
}

async fn an_idempotency_key_used_twice_together_creates_once(db: Db) {
    let (s, _dir) = store(db).await;
    let key = callverify::domain::api_keys::ApiKey {
        id: "key_a".into(),
        name: "web".into(),
        created_at: now_ms(),
        revoked_at: None,
    };
    s.insert_api_key(&key, "hash_a").await.unwrap();
    let keyed = |id: &str, hash: &str| {
        let mut v = row(id, &format!("+1415555010{}", id.len()), id);
        v.api_key_id = Some("key_a".into());
        let mut c = creation(v, Limits::default());
        c.idempotency = Some(IdempotencyKey {
            api_key_id: "key_a".into(),
            key: "order-7".into(),
            request_hash: hash.into(),
        });
        c
    };
    let results = create_together(&s, vec![keyed("vf_first", "h1"), keyed("vf_again", "h2")]).await;
    let first = Earlier {
        request_hash: "h1".into(),
        verification_id: "vf_first".into(),
    };
    assert!(
        matches!(results[0], Ok(Created::Inserted { .. })),
        "{results:?}"
    );
    assert_eq!(
        results[1].as_ref().unwrap(),
        &Created::Existing(first.clone())
    );
    assert!(s.verification("vf_again").await.unwrap().is_none());
    // And once it is stored.
    let later = create_together(&s, vec![keyed("vf_later", "h3")]).await;
    assert_eq!(later[0].as_ref().unwrap(), &Created::Existing(first));
}

async fn a_failing_creation_fails_alone(db: Db) {
    let (s, _dir) = store(db).await;
    s.insert_verification(&row("vf_taken", "+14155550199", "zed"))
        .await
        .unwrap();
    let batch = ["vf_a", "vf_taken", "vf_b"]
        .iter()
        .enumerate()
        .map(|(i, id)| creation(row(id, &format!("+1415555010{i}"), id), Limits::default()))
        .collect();
    let results = create_together(&s, batch).await;
    assert!(
        matches!(results[0], Ok(Created::Inserted { .. })),
        "{results:?}"
    );
    assert!(results[1].is_err(), "{results:?}");
    assert!(
        matches!(results[2], Ok(Created::Inserted { .. })),
        "{results:?}"
    );
    for id in ["vf_a", "vf_b"] {
        assert!(s.verification(id).await.unwrap().is_some(), "{id}");
    }
    // The taken id's row is the first one still.
    let taken = s.verification("vf_taken").await.unwrap().unwrap();
    assert_eq!(taken.phone, "+14155550199");
}

/// `wrong` wrong codes keyed in a call of verification `id`.
async fn wrong_codes(s: &Store, id: &str, phone: &str, user: &str, wrong: usize) {
    let now = now_ms();
    s.insert_verification(&row(id, phone, user)).await.unwrap();
    let (attempt, v) = match s.begin_attempt(id, "c", id, "d1", now).await.unwrap() {
        Begun::Started {
            attempt_id,
            verification,
        } => (attempt_id, verification),
        refused => panic!("{id}: {refused:?}"),
    };
    let rule = StrikeRule {
        max: 3,
        forget_before: now - 24 * HOUR,
        lock_until: now + 24 * HOUR,
    };
    let checker = Checker::Call {
        attempt,
        method: callverify::domain::status::EntryMethod::Keypad,
    };
    for _ in 0..wrong {
        let checked = s.count_wrong_code(&v, checker.clone(), rule, now).await;
        assert!(matches!(
            checked.unwrap(),
            Checked::Wrong { .. } | Checked::LockedOut
        ));
    }
}

async fn each_creation_of_a_batch_has_its_own_standing(db: Db) {
    let (s, _dir) = store(db).await;
    // Ann's three wrong codes lock out her and her number; Dan has one.
    wrong_codes(&s, "vf_ann", "+14155550101", "ann", 3).await;
    wrong_codes(&s, "vf_dan", "+14155550104", "dan", 1).await;
    let batch = vec![
        creation(row("vf_free", "+14155550102", "ben"), Limits::default()),
        creation(row("vf_number", "+14155550101", "cat"), Limits::default()),
        creation(row("vf_strikes", "+14155550104", "eve"), Limits::default()),
        creation(row("vf_user", "+14155550103", "ann"), Limits::default()),
    ];
    let results = create_together(&s, batch).await;
    assert_eq!(
        results[0].as_ref().unwrap(),
        &Created::Inserted { strikes: 0 }
    );
    assert!(
        matches!(results[1], Ok(Created::LockedOut(_))),
        "{results:?}"
    );
    assert_eq!(
        results[2].as_ref().unwrap(),
        &Created::Inserted { strikes: 1 }
    );
    assert!(
        matches!(results[3], Ok(Created::LockedOut(_))),
        "{results:?}"
    );
}

on_both_backends!(
    creations_together_count_each_other,
    an_idempotency_key_used_twice_together_creates_once,
    a_failing_creation_fails_alone,
    each_creation_of_a_batch_has_its_own_standing,
    a_limited_creation_names_the_oldest_in_the_window,
);

/// Three daemons on one Postgres, each with its own batches, creating at once for shared
/// numbers, users, an API key and idempotency keys: no limit is passed and no key used twice,
/// however the creations fall into batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daemons_creating_at_once_on_one_postgres_pass_no_limit() {
    let dir = tempfile::tempdir().unwrap();
    let url = crate::common::fresh_database(Db::Postgres, dir.path()).await;
    let mut stores = Vec::new();
    for _ in 0..3 {
        let s = Store::connect(&url, 8).await.unwrap();
        s.migrate().await.unwrap();
        stores.push(s);
    }
    for id in ["key_a", "key_b"] {
        let key = callverify::domain::api_keys::ApiKey {
            id: id.into(),
            name: id.into(),
            created_at: now_ms(),
            revoked_at: None,
        };
        stores[0].insert_api_key(&key, id).await.unwrap();
    }
    let mut db = crate::common::raw_connection(&url).await.unwrap();

    // 600 for 100 numbers and 150 users, a third of them with one of ten idempotency keys.
    let limits = Limits {
        per_number: Some(3),
        per_user: Some(4),
        per_api_key: None,
    };
    let results = create_on(&stores, 600, |i| {
        let mut v = row(
            &format!("vf_a{i}"),
            &format!("+1415555{:04}", i % 100),
            &format!("u{}", i % 150),
        );
        v.api_key_id = Some("key_a".into());
        let mut c = creation(v, limits);
        if i % 3 == 0 {
            c.idempotency = Some(IdempotencyKey {
                api_key_id: "key_a".into(),
                key: format!("order-{}", i % 10),
                request_hash: "h".into(),
            });
        }
        c
    })
    .await;
    let mut inserted_with_key = std::collections::HashMap::<String, usize>::new();
    for (creation, created) in &results {
        if let (Some(key), Ok(Created::Inserted { .. })) = (&creation.idempotency, created) {
            *inserted_with_key.entry(key.key.clone()).or_default() += 1;
        }
    }
    assert!(
        inserted_with_key.values().all(|&n| n == 1),
        "{inserted_with_key:?}"
    );
    assert!(most_for_one(&mut db, "phone").await <= 3);
    assert!(most_for_one(&mut db, "user_ref").await <= 4);

    // 600 of another API key, each for a number and user of its own.
    let limits = Limits {
        per_api_key: Some(150),
        ..limits
    };
    create_on(&stores, 600, |i| {
        let mut v = row(
            &format!("vf_b{i}"),
            &format!("+1628555{i:04}"),
            &format!("b{i}"),
        );
        v.api_key_id = Some("key_b".into());
        creation(v, limits)
    })
    .await;
    let of_key_b = "SELECT COUNT(*) AS n FROM verifications WHERE api_key_id = 'key_b'";
    let n: i64 = sqlx::Row::get(
        &sqlx::query(of_key_b).fetch_one(&mut db).await.unwrap(),
        "n",
    );
    assert_eq!(n, 150, "the API key's limit is reached, not passed");
}

/// `n` creations made by `make`, spread over `stores` and run at once.
async fn create_on(
    stores: &[Store],
    n: u32,
    make: impl Fn(u32) -> Creation,
) -> Vec<(Creation, Result<Created, StoreError>)> {
    let running = (0..n).map(|i| {
        let (c, s) = (make(i), stores[i as usize % stores.len()].clone());
        tokio::spawn(async move { (c.clone(), s.create_verification(c).await) })
    });
    join_all(running)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

/// The most verifications stored for one value of `column`.
async fn most_for_one(db: &mut sqlx::AnyConnection, column: &str) -> i64 {
    let most = format!(
        "SELECT CAST(COALESCE(MAX(n), 0) AS BIGINT) AS n FROM \
         (SELECT COUNT(*) AS n FROM verifications GROUP BY {column}) AS c"
    );
    sqlx::Row::get(&sqlx::query(&most).fetch_one(db).await.unwrap(), "n")
}

async fn a_limited_creation_names_the_oldest_in_the_window(db: Db) {
    let (s, _dir) = store(db).await;
    let per_number = Limits {
        per_number: Some(2),
        ..Limits::default()
    };
    let mut first = row("vf_old", "+14155550101", "a");
    first.created_at -= 60_000;
    let stored_at = first.created_at;
    s.create_verification(creation(first, per_number))
        .await
        .unwrap();
    let for_one_number = |i| row(&format!("vf_n{i}"), "+14155550101", &format!("u{i}"));
    let results = create_together(&s, batch(0..3, per_number, for_one_number)).await;
    assert!(
        matches!(results[0], Ok(Created::Inserted { .. })),
        "{results:?}"
    );
    for result in &results[1..] {
        assert_eq!(
            result.as_ref().unwrap(),
            &Created::Limited {
                subject: RateSubject::Phone,
                oldest: Some(stored_at)
            }
        );
    }
}
