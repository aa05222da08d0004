//! The history's end (`verification.retention_days`): ended verifications past it are
//! deleted with what names them, and what a rule still needs is kept; failed console
//! sign-ins leave the audit log after `support.retention_days`. On SQLite and Postgres.

use crate::common::{manual_request, manual_request_ids, Daemon, Db, PHONE};
use callverify::domain::status::Status;

const DAY_MS: i64 = 86_400_000;

/// Make verification `id` `days` days older.
async fn age(d: &Daemon, id: &str, days: i64) {
    let mut db = crate::common::raw_connection(&d.config.database.url)
        .await
        .unwrap();
    sqlx::query("UPDATE verifications SET created_at = created_at - $1 WHERE id = $2")
        .bind(days * DAY_MS)
        .bind(id)
        .execute(&mut db)
        .await
        .unwrap();
}

/// The user of the verification that is deleted: a string found nowhere else.
const OLD_USER: &str = "user-4d7e1c9a0b";

async fn ended_history_past_retention_is_deleted(db: Db) {
    let d = crate::common::start_with(db, |c| c.verification.retention_days = 2).await;
    let now = callverify::domain::clock::now_ms();
    // Old and ended: deleted, with its call and code check, and a decided request about it.
    let old = d.verify_by_keypad(PHONE, OLD_USER).await.id;
    assert!(!d.store.attempts(&old).await.unwrap().is_empty());
    // Old, but its lockout is in force: kept.
    let locked = d.new_verification("+14155550177", "bob").await.id;
    d.fail_by_keypad(&locked).await;
    // Old and ended, but a support request about it is open: kept.
    let waited_on = d.new_verification("+14155550178", "cat").await.id;
    d.service.cancel(&waited_on).await.unwrap();
    // Recent: kept.
    let recent = d.verify_by_keypad(PHONE, "dan").await.id;
    // Old and not ended (a clock set back, say): kept.
    let open = d.new_verification("+14155550179", "eve").await.id;
    for id in [&old, &locked, &waited_on, &open] {
        age(&d, id, 3).await;
    }
    let old_request = now - 3 * DAY_MS;
    for new in [
        manual_request("mr_about_old", Some(&old), old_request),
        manual_request("mr_waiting", Some(&waited_on), old_request),
        manual_request("mr_unmatched_old", None, old_request),
        manual_request("mr_unmatched_open", None, old_request),
        manual_request("mr_unmatched_recent", None, now),
    ] {
        d.store.insert_manual_request(new).await.unwrap();
    }
    for (id, reason) in [("mr_about_old", "done"), ("mr_unmatched_old", "spam")] {
        d.store
            .decide_manual(
                id,
                callverify::support::request::Decision::Reject {
                    reason: reason.into(),
                },
                "staff",
                now,
            )
            .await
            .unwrap();
    }

    let deleted = d.service.purge_history().await.unwrap();
    // The janitor may have purged it first.
    assert!(deleted <= 1, "{deleted}");
    assert_eq!(d.service.purge_history().await.unwrap(), 0, "no more due");
    assert!(d.store.verification(&old).await.unwrap().is_none());
    assert!(d.store.attempts(&old).await.unwrap().is_empty());
    assert!(d.store.checks_of(&old).await.unwrap().checks.is_empty());
    if db == Db::Sqlite {
        // Overwritten in the database's pages (secure_delete) and gone from the write-ahead
        // log's older images of them: read as the purge left them.
        for file in ["test.db", "test.db-wal"] {
            let path = d.dir.as_ref().unwrap().path().join(file);
            let bytes = std::fs::read(&path).unwrap_or_default();
            assert!(
                !bytes
                    .windows(OLD_USER.len())
                    .any(|w| w == OLD_USER.as_bytes()),
                "the deleted verification's user is still in {file}"
            );
        }
    }
    for id in [&locked, &waited_on, &recent, &open] {
        assert!(
            d.store.verification(id).await.unwrap().is_some(),
            "{id} kept"
        );
    }
    assert_eq!(d.status(&locked).await.status, Status::Failed);
    assert!(
        d.store
            .standing("+14155550177", "bob", now, 0)
            .await
            .unwrap()
            .locked_until
            .is_some(),
        "the lockout still holds"
    );
    assert_eq!(
        manual_request_ids(&d).await,
        ["mr_unmatched_open", "mr_unmatched_recent", "mr_waiting"]
    );
    d.stop().await;
}

/// `retention_days = 0` keeps every verification; wrong codes older than the lockout's
/// window, which no longer count, go all the same.
async fn no_retention_keeps_everything(db: Db) {
    use sqlx::Row;
    let d = crate::common::start_with(db, |c| c.verification.retention_days = 0).await;
    let old = d.verify_by_keypad(PHONE, OLD_USER).await.id;
    age(&d, &old, 10_000).await;
    let mut db = crate::common::raw_connection(&d.config.database.url)
        .await
        .unwrap();
    let now = callverify::domain::clock::now_ms();
    for at in [now - 2 * DAY_MS, now - DAY_MS / 2] {
        sqlx::query("INSERT INTO wrong_codes (kind, subject, at) VALUES ('phone', $1, $2)")
            .bind(PHONE)
            .bind(at)
            .execute(&mut db)
            .await
            .unwrap();
    }
    assert_eq!(d.service.purge_history().await.unwrap(), 0);
    assert!(d.store.verification(&old).await.unwrap().is_some());
    let left: Vec<i64> = sqlx::query("SELECT at FROM wrong_codes")
        .fetch_all(&mut db)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("at"))
        .collect();
    assert_eq!(left, [now - DAY_MS / 2]);
    d.stop().await;
}

/// Failed and refused console sign-ins, which anyone can cause, leave the audit log after
/// `support.retention_days`; the rest of it (sign-ins, account changes, decisions) stays.
/// Sign-in attempts go once they no longer count (15 minutes).
async fn old_failed_sign_ins_leave_the_audit_log(db: Db) {
    use sqlx::Row;
    let d = crate::common::start_with(db, |c| c.support.retention_days = 1).await;
    let support = callverify::support::Support::new(
        d.store.clone(),
        d.config.phone_policy(),
        d.config.support_settings().unwrap(),
        None,
    );
    let now = callverify::domain::clock::now_ms();
    let old = now - 2 * DAY_MS;
    let entries = [
        ("sign_in_failed", "alice", old),
        ("sign_in_failed", "(not a staff name)", old),
        ("sign_in_throttled", "alice", old),
        ("sign_in_unaudited", "(names of no account)", old),
        ("sign_in", "alice", old),
        ("staff_add", "alice", old),
        ("reject", "mr_old", old),
        ("sign_in_failed", "alice", now),
    ];
    for (action, subject, at) in entries {
        d.store
            .audit("console", action, subject, "", at)
            .await
            .unwrap();
    }
    support.purge(now).await.unwrap();
    let mut raw = crate::common::raw_connection(&d.config.database.url)
        .await
        .unwrap();
    let left: Vec<(String, String, i64)> =
        sqlx::query("SELECT action, subject, at FROM audit_log ORDER BY id")
            .fetch_all(&mut raw)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get("action"), r.get("subject"), r.get("at")))
            .collect();
    let kept: Vec<(String, String, i64)> = entries[4..]
        .iter()
        .map(|&(action, subject, at)| (action.into(), subject.into(), at))
        .collect();
    assert_eq!(left, kept);

    let minute = 60_000;
    for (name, kind, at) in [
        ("alice", "attempt", now - 16 * minute),
        ("bob", "refused", now - 20 * minute),
        ("alice", "attempt", now - minute),
    ] {
        sqlx::query("INSERT INTO sign_in_attempts (name, kind, at) VALUES ($1, $2, $3)")
            .bind(name)
            .bind(kind)
            .bind(at)
            .execute(&mut raw)
            .await
            .unwrap();
    }
    support.purge(now).await.unwrap();
    let left: Vec<(String, i64)> = sqlx::query("SELECT name, at FROM sign_in_attempts")
        .fetch_all(&mut raw)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("name"), r.get("at")))
        .collect();
    assert_eq!(left, [("alice".to_owned(), now - minute)]);
    d.stop().await;
}

on_both_backends!(
    ended_history_past_retention_is_deleted,
    no_retention_keeps_everything,
    old_failed_sign_ins_leave_the_audit_log
);
