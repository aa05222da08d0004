//! The store's state changes, the same tests on SQLite and on a real Postgres server:
//! they must hold against concurrent callers and crashes.

use std::sync::Arc;

use crate::common::{pending_row as row, Db};
use callverify::domain::clock::now_ms;
use callverify::domain::status::{CallOutcome, Status};
use callverify::domain::Verification;
use callverify::store::{Begun, Checked, Checker, DaemonRow, ReadBackRule, Store, StrikeRule};

const DAY: i64 = 24 * 3600 * 1000;

/// A code keyed in call attempt `attempt`.
fn keyed(attempt: i64) -> Checker {
    Checker::Call {
        attempt,
        method: callverify::domain::status::EntryMethod::Keypad,
    }
}

/// Three wrong codes per number and user within a day, then a day's lockout.
fn rule(now: i64) -> StrikeRule {
    StrikeRule {
        max: 3,
        forget_before: now - DAY,
        lock_until: now + DAY,
    }
}

/// The lockout in force for a number or a user at `now`.
async fn locked_until(s: &Store, phone: &str, user: &str, now: i64) -> Option<i64> {
    s.standing(phone, user, now, 0).await.unwrap().locked_until
}

/// Verification `id` of `phone` and `user`, in a call.
async fn in_call(s: &Store, id: &str, phone: &str, user: &str) -> (i64, Verification) {
    s.insert_verification(&row(id, phone, user)).await.unwrap();
    match s.begin_attempt(id, "c", id, "d1", now_ms()).await.unwrap() {
        Begun::Started {
            attempt_id,
            verification,
        } => (attempt_id, verification),
        refused => panic!("{id}: {refused:?}"),
    }
}

async fn store(db: Db) -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = crate::common::fresh_database(db, dir.path()).await;
    let store = Store::connect(&url, 8).await.unwrap();
    store.migrate().await.unwrap();
    // Migrations are idempotent.
    store.migrate().await.unwrap();
    (store, dir)
}

async fn round_trip_and_transitions(db: Db) {
    let (s, _dir) = store(db).await;
    let v = row("vf_a", "+14155550101", "alice");
    s.insert_verification(&v).await.unwrap();
    assert_eq!(s.verification("vf_a").await.unwrap().unwrap(), v);
    assert!(s.verification("vf_none").await.unwrap().is_none());
    assert!(
        s.insert_verification(&v).await.is_err(),
        "duplicate ids are refused"
    );
    let now = now_ms();
    assert!(!s
        .transition("vf_a", &[Status::Calling], Status::Verified, now)
        .await
        .unwrap());
    assert!(s
        .transition("vf_a", &[Status::Pending], Status::Canceled, now)
        .await
        .unwrap());
    assert_eq!(
        s.verification("vf_a").await.unwrap().unwrap().status,
        Status::Canceled
    );
}

async fn one_call_at_a_time_even_when_racing(db: Db) {
    let (s, _dir) = store(db).await;
    s.insert_verification(&row("vf_race", "+14155550101", "alice"))
        .await
        .unwrap();
    let s = Arc::new(s);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.begin_attempt("vf_race", &format!("PJSIP/t-{i}"), "u", "d1", now_ms())
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut started = 0;
    for t in tasks {
        started += usize::from(matches!(t.await.unwrap(), Begun::Started { .. }));
    }
    assert_eq!(started, 1);
    assert_eq!(s.attempts("vf_race").await.unwrap().len(), 1);
}

async fn wrong_entries_lock_out_in_one_step(db: Db) {
    let (s, _dir) = store(db).await;
    let v = row("vf_w", "+14155550101", "alice");
    s.insert_verification(&v).await.unwrap();
    let Begun::Started {
        attempt_id: attempt,
        verification: claimed,
    } = s
        .begin_attempt("vf_w", "c", "u", "d1", now_ms())
        .await
        .unwrap()
    else {
        panic!("the call could not start");
    };
    assert_eq!(claimed.status, Status::Calling);
    assert_eq!(claimed.phone, v.phone);
    let now = now_ms();
    assert_eq!(
        s.count_wrong_code(&v, keyed(attempt), rule(now), now)
            .await
            .unwrap(),
        Checked::Wrong { strikes: 1 }
    );
    assert_eq!(
        s.count_wrong_code(&v, keyed(attempt), rule(now), now)
            .await
            .unwrap(),
        Checked::Wrong { strikes: 2 }
    );
    assert_eq!(locked_until(&s, "+14155550101", "alice", now).await, None);
    assert_eq!(
        s.count_wrong_code(&v, keyed(attempt), rule(now), now)
            .await
            .unwrap(),
        Checked::LockedOut
    );
    let stored = s.verification("vf_w").await.unwrap().unwrap();
    assert_eq!((stored.status, stored.attempts_used), (Status::Failed, 3));
    assert_eq!(
        locked_until(&s, "+14155550101", "nobody", now).await,
        Some(now + DAY)
    );
    assert_eq!(
        locked_until(&s, "+19999999999", "alice", now).await,
        Some(now + DAY)
    );
    // The lockout ends when its time is up.
    assert_eq!(
        locked_until(&s, "+14155550101", "alice", now + DAY).await,
        None
    );
    // No more counting once the call's verification has ended.
    assert_eq!(
        s.count_wrong_code(&v, keyed(attempt), rule(now), now)
            .await
            .unwrap(),
        Checked::Ended(Status::Failed)
    );
    s.finish_attempt(attempt, "vf_w", CallOutcome::LockedOut, None, 3, now)
        .await
        .unwrap();
    assert_eq!(
        s.verification("vf_w").await.unwrap().unwrap().status,
        Status::Failed,
        "finishing the attempt does not reopen a failed verification"
    );
    // Another pending verification of the locked number or user cannot be called.
    s.insert_verification(&row("vf_other", "+14155550101", "bob"))
        .await
        .unwrap();
    let refused = s
        .begin_attempt("vf_other", "c", "u", "d1", now_ms())
        .await
        .unwrap();
    assert!(
        matches!(
            &refused,
            Begun::Refused {
                verification: Some(v),
                locked_out: true,
            } if v.status == Status::Pending
        ),
        "{refused:?}"
    );
}

/// The tries are the number's and the user's, not one verification's: wrong codes in two
/// verifications of one number add up, the last one fails every open verification of the
/// number and of the user, and the right code in a sibling's call no longer verifies.
async fn strikes_add_up_across_a_numbers_verifications(db: Db) {
    let (s, _dir) = store(db).await;
    let (attempt_a, a) = in_call(&s, "vf_a", "+14155550101", "alice").await;
    let (attempt_b, b) = in_call(&s, "vf_b", "+14155550101", "bob").await;
    s.insert_verification(&row("vf_bob2", "+14155550177", "bob"))
        .await
        .unwrap();
    s.insert_verification(&row("vf_other", "+14155550199", "carol"))
        .await
        .unwrap();
    let now = now_ms();
    for strikes in 1..=2 {
        assert_eq!(
            s.count_wrong_code(&a, keyed(attempt_a), rule(now), now)
                .await
                .unwrap(),
            Checked::Wrong { strikes }
        );
    }
    assert_eq!(
        s.count_wrong_code(&b, keyed(attempt_b), rule(now), now)
            .await
            .unwrap(),
        Checked::LockedOut
    );
    assert_eq!(
        s.verify_code(&a, keyed(attempt_a), now).await.unwrap(),
        Checked::Ended(Status::Failed)
    );
    for (id, status) in [
        ("vf_a", Status::Failed),
        ("vf_b", Status::Failed),
        ("vf_bob2", Status::Failed),
        ("vf_other", Status::Pending),
    ] {
        assert_eq!(
            s.verification(id).await.unwrap().unwrap().status,
            status,
            "{id}"
        );
    }
    assert_eq!(
        locked_until(&s, "+14155550177", "bob", now).await,
        Some(now + DAY)
    );
}

/// Five verifications of one number in five calls at once, three wrong codes each: three
/// are counted in all, one locks the number out, the rest are refused.
async fn strikes_hold_under_concurrent_calls(db: Db) {
    let (s, _dir) = store(db).await;
    let s = Arc::new(s);
    let mut calls = Vec::new();
    for i in 0..5 {
        calls.push(in_call(&s, &format!("vf_c{i}"), "+14155550101", &format!("u{i}")).await);
    }
    let now = now_ms();
    let tasks: Vec<_> = calls
        .into_iter()
        .flat_map(|call| std::iter::repeat_n(call, 3))
        .map(|(attempt, v)| {
            let s = s.clone();
            tokio::spawn(async move {
                s.count_wrong_code(&v, keyed(attempt), rule(now), now)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let count = |f: fn(&Checked) -> bool| results.iter().filter(|r| f(r)).count();
    assert_eq!(
        count(|r| matches!(r, Checked::Wrong { .. })),
        2,
        "{results:?}"
    );
    assert_eq!(count(|r| *r == Checked::LockedOut), 1, "{results:?}");
    let mut used = 0;
    for i in 0..5 {
        let v = s.verification(&format!("vf_c{i}")).await.unwrap().unwrap();
        assert_eq!(v.status, Status::Failed);
        used += v.attempts_used;
    }
    assert_eq!(used, 3, "wrong codes counted in all");
}

async fn a_canceled_verification_counts_no_wrong_entry(db: Db) {
    let (s, _dir) = store(db).await;
    let v = row("vf_c", "+14155550101", "alice");
    s.insert_verification(&v).await.unwrap();
    let Begun::Started {
        attempt_id: attempt,
        ..
    } = s
        .begin_attempt("vf_c", "c", "u", "d1", now_ms())
        .await
        .unwrap()
    else {
        panic!("the call could not start");
    };
    s.transition("vf_c", &[Status::Calling], Status::Canceled, now_ms())
        .await
        .unwrap();
    let now = now_ms();
    assert_eq!(
        s.count_wrong_code(&v, keyed(attempt), rule(now), now)
            .await
            .unwrap(),
        Checked::Ended(Status::Canceled)
    );
    assert_eq!(locked_until(&s, "+14155550101", "alice", now).await, None);
}

async fn expired_or_exhausted_cannot_be_called(db: Db) {
    let (s, _dir) = store(db).await;
    let mut expired = row("vf_e", "+14155550101", "alice");
    expired.expires_at = now_ms() - 1;
    s.insert_verification(&expired).await.unwrap();
    let mut exhausted = row("vf_x", "+14155550102", "bob");
    exhausted.attempts_used = 3;
    s.insert_verification(&exhausted).await.unwrap();
    for (id, known) in [("vf_e", true), ("vf_x", true), ("vf_missing", false)] {
        let refused = s.begin_attempt(id, "c", "u", "d1", now_ms()).await.unwrap();
        assert!(
            matches!(
                &refused,
                Begun::Refused {
                    verification,
                    locked_out: false,
                } if verification.as_ref().map(|v| v.status) == known.then_some(Status::Pending)
            ),
            "{id}: {refused:?}"
        );
    }
}

async fn recovery_closes_only_this_daemons_and_stale_attempts(db: Db) {
    let (s, _dir) = store(db).await;
    s.set_default_webhook(true).await.unwrap();
    for (id, phone) in [
        ("vf_mine", "+14155550101"),
        ("vf_theirs", "+14155550102"),
        ("vf_old", "+14155550103"),
    ] {
        s.insert_verification(&row(id, phone, id)).await.unwrap();
    }
    let now = now_ms();
    s.begin_attempt("vf_mine", "c", "u", "host/a", now)
        .await
        .unwrap();
    s.begin_attempt("vf_theirs", "c", "u", "host/b", now)
        .await
        .unwrap();
    s.begin_attempt("vf_old", "c", "u", "host/gone", now - 2 * 3_600_000)
        .await
        .unwrap();
    // Each call's `calling` webhook is being sent: vf_mine's by host/b, the others' by an
    // earlier run of host/a, which died before it could say how the sending went.
    let lease = 3_600_000;
    let claimed = |who: &'static str, limit| {
        let s = s.clone();
        async move {
            let events = s.claim_events(who, limit, lease, now).await.unwrap();
            events
                .into_iter()
                .map(|e| (e.verification_id, e.status))
                .collect::<Vec<_>>()
        }
    };
    let calling = |id: &str| (id.to_owned(), "calling".to_owned());
    assert_eq!(claimed("host/b", 1).await, [calling("vf_mine")]);
    assert_eq!(
        claimed("host/a", 10).await,
        [calling("vf_theirs"), calling("vf_old")]
    );
    let r = s
        .recover_interrupted("host/a", now - 3_600_000, now)
        .await
        .unwrap();
    assert_eq!((r.attempts, r.verifications, r.events), (2, 2, 2));
    assert_eq!(
        claimed("host/c", 10).await,
        [calling("vf_theirs"), calling("vf_old")],
        "host/a's events are due again, host/b's still held (and vf_mine's later ones wait)"
    );
    let status = |id: &'static str| {
        let s = s.clone();
        async move { s.verification(id).await.unwrap().unwrap().status }
    };
    assert_eq!(status("vf_mine").await, Status::Pending);
    assert_eq!(status("vf_old").await, Status::Pending);
    assert_eq!(
        status("vf_theirs").await,
        Status::Calling,
        "a live call elsewhere"
    );
    let mine = s.attempts("vf_mine").await.unwrap();
    assert_eq!(mine[0].outcome, Some(CallOutcome::Interrupted));
    assert!(s.attempts("vf_theirs").await.unwrap()[0].ended_at.is_none());
}

/// A verification whose daemon died mid-call stays `calling`; once it expired longer ago
/// than any call lasts, the upkeep expires it (with its webhook) and closes its attempt as
/// interrupted. A call that may still be live, and a call that is ringing, are left alone.
async fn a_stranded_call_expires(db: Db) {
    use sqlx::Connection as _;
    let dir = tempfile::tempdir().unwrap();
    let url = crate::common::fresh_database(db, dir.path()).await;
    let s = Store::connect(&url, 8).await.unwrap();
    s.migrate().await.unwrap();
    s.set_default_webhook(true).await.unwrap();
    let now = now_ms();
    let longest = 15 * 60 * 1000;
    let mut raw = crate::common::raw_connection(&url).await.unwrap();
    for (id, phone, expired_ago) in [
        ("vf_stranded", "+14155550101", longest + 1),
        ("vf_live", "+14155550102", longest - 60_000),
    ] {
        s.insert_verification(&row(id, phone, id)).await.unwrap();
        s.begin_attempt(id, "PJSIP/x", id, "host/gone", now)
            .await
            .unwrap();
        // Its code's lifetime ran out `expired_ago` before `now`.
        sqlx::query("UPDATE verifications SET expires_at = $1 WHERE id = $2")
            .bind(now - expired_ago)
            .bind(id)
            .execute(&mut raw)
            .await
            .unwrap();
    }
    raw.close().await.unwrap();
    let (released, expired) = s
        .maintain(
            now - 65_000,
            "host/here",
            now - 3_600_000,
            now - longest,
            now,
        )
        .await
        .unwrap();
    assert_eq!((released, expired), (0, 1));
    let status = |id: &'static str| {
        let s = s.clone();
        async move { s.verification(id).await.unwrap().unwrap().status }
    };
    assert_eq!(status("vf_stranded").await, Status::Expired);
    assert_eq!(status("vf_live").await, Status::Calling);
    let outcomes = |id: &'static str| {
        let s = s.clone();
        async move {
            let attempts = s.attempts(id).await.unwrap();
            attempts.iter().map(|a| a.outcome).collect::<Vec<_>>()
        }
    };
    assert_eq!(
        outcomes("vf_stranded").await,
        vec![Some(CallOutcome::Interrupted)]
    );
    assert_eq!(outcomes("vf_live").await, vec![None]);
    let events: Vec<String> = s
        .events("vf_stranded")
        .await
        .unwrap()
        .into_iter()
        .map(|(status, _, _)| status)
        .collect();
    assert_eq!(
        events.last().map(String::as_str),
        Some("expired"),
        "{events:?}"
    );
}

/// Daemon `d1`, started a minute before `now` and unheard for 30 s.
fn dead_daemon(now: i64) -> DaemonRow {
    DaemonRow {
        name: "d1".into(),
        incarnation: "run_1".into(),
        boot_id: "boot".into(),
        pid: 1,
        started_at: now - 60_000,
        last_seen: now - 30_000,
        taken_over_by: None,
    }
}

/// A daemon unheard for too long is taken over once, however many live daemons notice at
/// the same moment; its late writes for the calls taken over are refused (fencing).
async fn a_dead_daemon_is_taken_over_once_and_fenced(db: Db) {
    let (s, _dir) = store(db).await;
    let s = Arc::new(s);
    let now = now_ms();
    let dead = dead_daemon(now);
    assert!(s.register_daemon(&dead, None).await.unwrap());
    assert!(
        !s.register_daemon(&dead, None).await.unwrap(),
        "the name is taken"
    );
    s.set_default_webhook(true).await.unwrap();
    let (attempt, v) = in_call(&s, "vf_t", "+14155550101", "tina").await;
    in_call(&s, "vf_u", "+14155550199", "uma").await;
    // The dead daemon was sending both calls' `calling` webhooks, held for an hour (claimed
    // a minute on, as the calls began after `now`).
    let hour = 3_600_000;
    let sending = |who: &'static str| {
        let s = s.clone();
        async move {
            let events = s.claim_events(who, 10, hour, now + 60_000).await.unwrap();
            events
                .into_iter()
                .map(|e| (e.verification_id, e.status))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(sending("d1").await.len(), 2);
    assert!(sending("live0").await.is_empty(), "held by d1");
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.take_over(&format!("live{i}"), now - 10_000, 3, now)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut takers = Vec::new();
    for t in tasks {
        let taken = t.await.unwrap();
        if !taken.daemons.is_empty() {
            takers.push(taken);
        }
    }
    assert_eq!(takers.len(), 1, "{takers:?}");
    assert_eq!(takers[0].daemons, ["d1"]);
    assert_eq!(
        (takers[0].attempts, takers[0].released, takers[0].events),
        (2, 2, 2)
    );
    assert_eq!(
        sending("live0").await,
        [
            ("vf_t".to_owned(), "calling".to_owned()),
            ("vf_u".to_owned(), "calling".to_owned())
        ],
        "the dead daemon's webhooks are due again, in order"
    );
    for id in ["vf_t", "vf_u"] {
        let stored = s.verification(id).await.unwrap().unwrap();
        assert_eq!(stored.status, Status::Pending, "{id}");
        let attempts = s.attempts(id).await.unwrap();
        assert_eq!(attempts[0].outcome, Some(CallOutcome::Interrupted));
    }
    assert!(s
        .daemon("d1")
        .await
        .unwrap()
        .unwrap()
        .taken_over_by
        .is_some());
    assert!(!s.heartbeat("d1", "run_1", now).await.unwrap());
    assert!(s
        .take_over("live0", now - 10_000, 3, now)
        .await
        .unwrap()
        .daemons
        .is_empty());

    // The verification is in a live daemon's call now: the dead one's late writes for its
    // old call are refused, the new call's go through.
    let Begun::Started {
        attempt_id: new_attempt,
        ..
    } = s
        .begin_attempt("vf_t", "c", "u2", "live0", now)
        .await
        .unwrap()
    else {
        panic!("the new call could not start");
    };
    let old = keyed(attempt);
    assert_eq!(
        s.count_wrong_code(&v, old.clone(), rule(now), now)
            .await
            .unwrap(),
        Checked::Fenced
    );
    assert_eq!(s.verify_code(&v, old, now).await.unwrap(), Checked::Fenced);
    s.finish_attempt(
        attempt,
        "vf_t",
        CallOutcome::NoAcknowledgement,
        Some(now),
        3,
        now,
    )
    .await
    .unwrap();
    let stored = s.verification("vf_t").await.unwrap().unwrap();
    assert_eq!((stored.status, stored.attempts_used), (Status::Calling, 0));
    let new = keyed(new_attempt);
    assert_eq!(
        s.verify_code(&v, new, now).await.unwrap(),
        Checked::Verified
    );
}

/// Wrong codes count over the last day whenever it starts: one a minute before a day has
/// passed since the first, and two just after, are three within a day, and lock the number
/// out (a window from the first wrong code would have begun again, and counted two).
async fn the_strike_window_slides(db: Db) {
    let (s, _dir) = store(db).await;
    let t = now_ms();
    let minute = 60_000;
    let mut last = Checked::Wrong { strikes: 0 };
    for (n, at) in [t, t + DAY - minute, t + DAY + minute, t + DAY + 2 * minute]
        .into_iter()
        .enumerate()
    {
        let id = format!("vf_slide{n}");
        let (attempt, v) = in_call(&s, &id, "+14155550101", &format!("user{n}")).await;
        last = s
            .count_wrong_code(&v, keyed(attempt), rule(at), at)
            .await
            .unwrap();
        let expected = [
            Checked::Wrong { strikes: 1 },
            Checked::Wrong { strikes: 2 },
            Checked::Wrong { strikes: 2 },
            Checked::LockedOut,
        ][n];
        assert_eq!(last, expected, "wrong code {n}");
    }
    assert_eq!(last, Checked::LockedOut);
    assert!(
        locked_until(&s, "+14155550101", "nobody", t + DAY + 3 * minute)
            .await
            .is_some()
    );
}

/// Read-backs of wrong spoken codes: calls of one number racing for them get two in all,
/// for the number and for each user; they count over the lockout window, and the history
/// purge deletes them once they no longer count.
async fn read_backs_hold_under_concurrent_calls(db: Db) {
    let (s, _dir) = store(db).await;
    let s = Arc::new(s);
    let phone = "+14155550101";
    let mut calls = Vec::new();
    for i in 0..5 {
        calls.push(in_call(&s, &format!("vf_r{i}"), phone, &format!("u{i}")).await);
    }
    let now = now_ms();
    let rule = |at: i64| ReadBackRule {
        max: 2,
        forget_before: at - DAY,
    };
    let tasks: Vec<_> = calls
        .iter()
        .cloned()
        .flat_map(|call| std::iter::repeat_n(call, 4))
        .map(|(attempt, v)| {
            let s = s.clone();
            tokio::spawn(async move { s.take_read_back(&v, attempt, rule(now), now).await })
        })
        .collect();
    let mut taken = 0;
    for t in tasks {
        taken += usize::from(t.await.unwrap().unwrap());
    }
    assert_eq!(taken, 2, "read-backs taken of 20 racing for them");
    assert_eq!(s.read_backs(phone, "u0", now - DAY).await.unwrap(), 2);
    assert_eq!(s.read_backs("+14155550199", "nobody", 0).await.unwrap(), 0);

    // A day later the window holds none of them: one is taken again, and the purge deletes
    // those that no longer count.
    let later = now + DAY + 1;
    let (attempt, v) = &calls[0];
    assert!(s
        .take_read_back(v, *attempt, rule(later), later)
        .await
        .unwrap());
    s.purge_history(None, later - DAY, later, 500)
        .await
        .unwrap();
    assert_eq!(s.read_backs(phone, "u0", 0).await.unwrap(), 1);
}

on_both_backends!(
    read_backs_hold_under_concurrent_calls,
    the_strike_window_slides,
    a_dead_daemon_is_taken_over_once_and_fenced,
    a_stranded_call_expires,
    round_trip_and_transitions,
    one_call_at_a_time_even_when_racing,
    wrong_entries_lock_out_in_one_step,
    strikes_add_up_across_a_numbers_verifications,
    strikes_hold_under_concurrent_calls,
    a_canceled_verification_counts_no_wrong_entry,
    expired_or_exhausted_cannot_be_called,
    recovery_closes_only_this_daemons_and_stale_attempts,
);

#[tokio::test]
async fn unsupported_urls_are_refused_without_leaking_passwords() {
    let err = Store::connect("mysql://app:hunter2@db/x", 1)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("mysql://app@db/x"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

/// A takeover locks a call's verification before its attempt, as a code check in that call
/// does: a check in flight (a daemon declared dead may only be paused) is waited for, and
/// neither is aborted as a deadlock.
#[tokio::test]
async fn a_takeover_waits_for_a_check_in_flight_on_postgres() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let url = crate::common::fresh_database(Db::Postgres, dir.path()).await;
    let s = Store::connect(&url, 8).await.unwrap();
    s.migrate().await.unwrap();
    let now = now_ms();
    let dead = dead_daemon(now);
    assert!(s.register_daemon(&dead, None).await.unwrap());
    let (attempt, _) = in_call(&s, "vf_t", "+14155550101", "tina").await;
    let mut checker = crate::common::raw_connection(&url).await.unwrap();
    let mut watcher = crate::common::raw_connection(&url).await.unwrap();
    // The check's first change: the verification's row.
    let mut check = checker.begin().await.unwrap();
    sqlx::query("UPDATE verifications SET status = 'verified' WHERE id = 'vf_t'")
        .execute(&mut *check)
        .await
        .unwrap();
    let taking = tokio::spawn({
        let s = s.clone();
        async move { s.take_over("live0", now - 10_000, 3, now).await }
    });
    crate::common::until_a_lock_wait(&mut watcher, "the takeover").await;
    assert!(
        !taking.is_finished(),
        "the takeover did not wait for the check"
    );
    // The check's second change: its attempt, which the waiting takeover must not hold.
    sqlx::query("UPDATE call_attempts SET ended_at = $1, outcome = 'verified' WHERE id = $2")
        .bind(now)
        .bind(attempt)
        .execute(&mut *check)
        .await
        .expect("the check ends its attempt");
    check.commit().await.unwrap();
    let taken = taking.await.unwrap().expect("the takeover completes");
    assert_eq!(taken.daemons, ["d1"]);
    assert_eq!(taken.attempts, 0, "the verified call's attempt had ended");
    let stored = s.verification("vf_t").await.unwrap().unwrap();
    assert_eq!(stored.status, Status::Verified);
    drop(dir);
}

/// Postgres, several daemons: a code check, a staff approval and a creation for one number
/// each wait for the number's lock (held here from another connection, as another daemon's
/// operation on the number would hold it), so that none of them passes a rule while another
/// changes the number's standing.
#[tokio::test]
async fn checks_approvals_and_creations_of_a_number_wait_for_its_lock() {
    use futures::future::BoxFuture;
    use sqlx::{Connection, Row};
    let dir = tempfile::tempdir().unwrap();
    let url = crate::common::fresh_database(Db::Postgres, dir.path()).await;
    let s = Store::connect(&url, 8).await.unwrap();
    s.migrate().await.unwrap();
    let phone = "+14155550101";
    let (attempt, v) = in_call(&s, "vf_checked", phone, "alice").await;
    s.insert_verification(&row("vf_approved", phone, "bob"))
        .await
        .unwrap();
    let request = crate::common::manual_request("mr_locked", Some("vf_approved"), now_ms());
    s.insert_manual_request(request).await.unwrap();
    let now = now_ms();
    let operations: Vec<(&str, BoxFuture<'static, ()>)> = vec![
        ("a code check", {
            let s = s.clone();
            Box::pin(async move {
                let checked = s.count_wrong_code(&v, keyed(attempt), rule(now), now);
                assert_eq!(checked.await.unwrap(), Checked::Wrong { strikes: 1 });
            })
        }),
        ("a staff approval", {
            let s = s.clone();
            Box::pin(async move {
                let approve = callverify::support::request::Decision::Approve {
                    verification_id: None,
                };
                s.decide_manual("mr_locked", approve, "staff", now)
                    .await
                    .unwrap();
            })
        }),
        ("a creation", {
            let s = s.clone();
            Box::pin(async move {
                let new = row("vf_created", phone, "carol");
                let created = s
                    .create_verification(crate::creation::creation(new, Default::default()))
                    .await;
                assert!(matches!(
                    created.unwrap(),
                    callverify::store::Created::Inserted { .. }
                ));
            })
        }),
    ];
    let mut holder = crate::common::raw_connection(&url).await.unwrap();
    let mut watcher = crate::common::raw_connection(&url).await.unwrap();
    for (what, operation) in operations {
        let mut tx = holder.begin().await.unwrap();
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("phone:{phone}"))
            .execute(&mut *tx)
            .await
            .unwrap();
        let running = tokio::spawn(operation);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let waiting: i64 = sqlx::query(
                "SELECT COUNT(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
            )
            .fetch_one(&mut watcher)
            .await
            .unwrap()
            .get("n");
            if waiting > 0 {
                break;
            }
            assert!(
                !running.is_finished(),
                "{what} did not wait for the number's lock"
            );
            assert!(std::time::Instant::now() < deadline, "{what} never waited");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(!running.is_finished(), "{what} went on under the lock");
        tx.commit().await.unwrap();
        running.await.unwrap();
    }
    drop(dir);
}
