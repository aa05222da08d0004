//! Read-code mode: the call reads the code after `#`, the web app checks what its user typed
//! in (`POST /v1/verifications/{id}/check`), under the keyed code's rules. Against the
//! emulated Asterisk, on SQLite and Postgres; the stored row is searched for a usable code.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::hooks::{receiver, verify_signature, SECRET};
use crate::common::http::{Api, Reply};
use crate::common::{Daemon, Db, PHONE};
use callverify::domain::sealed::CodeSealer;
use callverify::domain::status::{CallOutcome, Status};
use callverify_testkit::emulator::{Call, Transcript};

const WAIT: &str = "EXEC Wait 0.4";

async fn create(api: &Api, phone: &str, user: &str, extra: Value) -> String {
    let mut body = json!({"phone": phone, "user_ref": user, "mode": "read_code"});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let r = api.post("/v1/verifications", &body, &[]).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["mode"], "read_code");
    assert!(v.get("code").is_none(), "only the call says the code: {v}");
    v["id"].as_str().unwrap().to_owned()
}

async fn check(api: &Api, id: &str, code: &str) -> Reply {
    api.post(
        &format!("/v1/verifications/{id}/check"),
        &json!({ "code": code }),
        &[],
    )
    .await
}

/// A 200 answer's status and remaining attempts.
fn checked(r: &Reply) -> (String, i64) {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    (
        v["status"].as_str().unwrap().to_owned(),
        v["attempts_remaining"].as_i64().unwrap(),
    )
}

/// The digits the daemon said, each reading in turn (SAY DIGITS one digit at a time, each
/// followed by a pause).
fn readings(t: &Transcript, length: usize) -> Vec<String> {
    let said: Vec<(usize, &str)> = t
        .commands
        .iter()
        .enumerate()
        .filter_map(|(i, c)| Some((i, c.strip_prefix("SAY DIGITS ")?)))
        .map(|(i, rest)| (i, rest.split(' ').next().unwrap()))
        .collect();
    for (i, digit) in &said {
        assert_eq!(digit.len(), 1, "one digit at a time: {:?}", t.commands);
        assert_eq!(t.commands[i + 1], WAIT, "a pause after each digit");
    }
    let digits: String = said.iter().map(|(_, d)| *d).collect();
    assert_eq!(digits.len() % length, 0, "{:?}", t.commands);
    digits
        .as_bytes()
        .chunks(length)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect()
}

/// A call that presses `#` (and then `keys`): the code it heard.
async fn hear_code(d: &Daemon, id: &str, keys: &[&str]) -> (String, Transcript) {
    let mut call = Call::verify(id).press("#");
    for k in keys {
        call = call.press(k);
    }
    let t = call.run(d.addr).await.unwrap();
    assert!(t.closed_by_daemon);
    let heard = readings(&t, 6);
    assert!(heard.len() >= 2, "{:?}", t.commands);
    assert!(heard.iter().all(|r| *r == heard[0]), "{heard:?}");
    (heard[0].clone(), t)
}

fn last_outcome(attempts: &[callverify::domain::verification::CallAttempt]) -> CallOutcome {
    attempts.last().unwrap().outcome.unwrap()
}

/// Another code of the same length.
fn wrong(code: &str, n: u32) -> String {
    let value: u32 = code.parse().unwrap();
    format!("{:06}", (value + n) % 1_000_000)
}

async fn the_code_is_said_after_pound_and_the_web_app_checks_it(db: Db) {
    let (hook, received) = receiver(0).await;
    let api = Api::with(db, |c| {
        c.webhooks.secret = SECRET.into();
        c.webhooks.retry_base_ms = 50;
    })
    .await;
    let d = &api.d;
    let id = create(
        &api,
        PHONE,
        "alice",
        json!({"callback_url": format!("http://{hook}/hook")}),
    )
    .await;
    let r = check(&api, &id, "123456").await;
    assert_eq!(
        (r.status, r.error_code()),
        (409, "code_not_delivered".into())
    );

    // No `#`: the code is not said, and the call counts as unacknowledged (retried).
    let t = Call::verify(&id).run(d.addr).await.unwrap();
    assert!(t.count_prompt("callverify/press-pound-for-code") >= 1);
    assert_eq!(t.count_prompt("callverify/press-pound"), 0);
    assert!(!t.commands.iter().any(|c| c.starts_with("SAY DIGITS")));
    assert_eq!(t.count_prompt("callverify/your-code-is"), 0);
    let attempts = d.store.attempts(&id).await.unwrap();
    assert_eq!(last_outcome(&attempts), CallOutcome::NoAcknowledgement);
    assert_eq!(d.status(&id).await.status, Status::Pending);
    let r = check(&api, &id, "123456").await;
    assert_eq!(
        (r.status, r.error_code()),
        (409, "code_not_delivered".into())
    );

    // `#`: the code twice, then once more for each 1.
    let (code, t) = hear_code(d, &id, &["1"]).await;
    assert_eq!(readings(&t, 6).len(), 3);
    let first_said = t
        .commands
        .iter()
        .position(|c| c.starts_with("SAY DIGITS"))
        .unwrap();
    let prompts = t.prompts();
    assert_eq!(
        prompts,
        [
            "callverify/greeting",
            "callverify/your-code-is",
            "callverify/code-again",
            "callverify/repeat-code",
            "callverify/code-again",
            "callverify/repeat-code",
            "callverify/enter-code-on-page",
            "goodbye",
        ]
    );
    assert!(t.commands[..first_said]
        .iter()
        .any(|c| c.contains("callverify/your-code-is")));
    assert_eq!(t.commands.last().unwrap(), "HANGUP");
    let attempts = d.store.attempts(&id).await.unwrap();
    assert_eq!(last_outcome(&attempts), CallOutcome::CodeRead);
    // Read: no more calls, the web app's turn.
    let stored = d.store.verification(&id).await.unwrap().unwrap();
    assert_eq!(stored.status, Status::Pending);
    assert!(stored.code_delivered_at.is_some());

    // Not the code's shape: refused, not counted.
    for bad in ["12345", "1234567", "12a456", ""] {
        let r = check(&api, &id, bad).await;
        assert_eq!((r.status, r.error_code()), (422, "invalid_code".into()));
    }
    let r = api
        .post(
            &format!("/v1/verifications/{id}/check"),
            &json!({"code": code, "extra": 1}),
            &[],
        )
        .await;
    assert_eq!(r.status, 422);
    // A wrong code counts once, also when the request is retried.
    let miss = wrong(&code, 1);
    assert_eq!(
        checked(&check(&api, &id, &miss).await),
        ("pending".into(), 2)
    );
    assert_eq!(
        checked(&check(&api, &id, &miss).await),
        ("pending".into(), 2)
    );
    assert_eq!(
        d.store
            .verification(&id)
            .await
            .unwrap()
            .unwrap()
            .attempts_used,
        1
    );
    // The right one verifies; retried, the same answer.
    assert_eq!(checked(&check(&api, &id, &code).await).0, "verified");
    assert_eq!(checked(&check(&api, &id, &code).await).0, "verified");
    let r = check(&api, &id, &wrong(&code, 2)).await;
    assert_eq!((r.status, r.error_code()), (409, "not_checkable".into()));
    let stored = d.store.verification(&id).await.unwrap().unwrap();
    assert_eq!(stored.status, Status::Verified);
    assert_eq!(
        stored.sealed_code, None,
        "wiped once the verification ended"
    );
    // The desk's history: one wrong and one right check from the web page, counted once each.
    let checks = d.store.checks_of(&id).await.unwrap().checks;
    let seen: Vec<_> = checks.iter().map(|c| (c.method, c.right)).collect();
    use callverify::domain::status::EntryMethod::WebPage;
    assert_eq!(seen, [(WebPage, false), (WebPage, true)]);

    // The webhook of each status change, ending with `verified`.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let statuses: Vec<String> = received
            .got
            .lock()
            .unwrap()
            .iter()
            .map(|(signature, body)| {
                verify_signature(signature, body);
                let v: Value = serde_json::from_slice(body).unwrap();
                v["status"].as_str().unwrap().to_owned()
            })
            .collect();
        if statuses.last().map(String::as_str) == Some("verified") {
            assert_eq!(
                statuses,
                ["calling", "pending", "calling", "pending", "verified"]
            );
            break;
        }
        assert!(Instant::now() < deadline, "webhooks so far: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An enter_code verification has nothing to check.
    let r = api
        .post(
            "/v1/verifications",
            &json!({"phone": PHONE, "user_ref": "bob"}),
            &[],
        )
        .await;
    assert_eq!(r.json()["mode"], "enter_code");
    let other = r.json()["id"].as_str().unwrap().to_owned();
    let r = check(&api, &other, "123456").await;
    assert_eq!((r.status, r.error_code()), (409, "wrong_mode".into()));
    api.d.stop().await;
}

async fn three_wrong_checks_lock_out_the_number_and_the_user(db: Db) {
    let api = Api::new(db).await;
    let d = &api.d;
    let id = create(&api, PHONE, "carol", json!({})).await;
    // An open verification of the same user on another number: the lockout fails it too.
    let sibling = d.new_verification("+14155550177", "carol").await;
    let (code, _) = hear_code(d, &id, &[]).await;
    assert_eq!(
        checked(&check(&api, &id, &wrong(&code, 1)).await),
        ("pending".into(), 2)
    );
    assert_eq!(
        checked(&check(&api, &id, &wrong(&code, 2)).await),
        ("pending".into(), 1)
    );
    assert_eq!(
        checked(&check(&api, &id, &wrong(&code, 3)).await),
        ("failed".into(), 0)
    );
    // The last wrong check retried: the same answer.
    assert_eq!(
        checked(&check(&api, &id, &wrong(&code, 3)).await),
        ("failed".into(), 0)
    );
    let r = check(&api, &id, &code).await;
    assert_eq!((r.status, r.error_code()), (409, "not_checkable".into()));
    assert_eq!(d.status(&sibling.id).await.status, Status::Failed);
    let stored = d.store.verification(&id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.attempts_used), (Status::Failed, 3));
    assert_eq!(stored.sealed_code, None);
    for (phone, user) in [(PHONE, "someone-else"), ("+14155550188", "carol")] {
        let r = api
            .post(
                "/v1/verifications",
                &json!({"phone": phone, "user_ref": user, "mode": "read_code"}),
                &[],
            )
            .await;
        assert_eq!((r.status, r.error_code()), (429, "locked_out".into()));
    }
    // A new call for it is refused and says nothing.
    let t = Call::verify(&id).press("#").run(d.addr).await.unwrap();
    assert!(!t.commands.iter().any(|c| c.starts_with("SAY DIGITS")));
    api.d.stop().await;
}

/// Expired or canceled: not checkable, and the sealed code is gone.
async fn an_ended_verification_cannot_be_checked(db: Db) {
    let api = Api::with(db, |c| c.verification.code_ttl_secs = 2).await;
    let d = &api.d;
    let id = create(&api, PHONE, "dave", json!({})).await;
    let (code, _) = hear_code(d, &id, &[]).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = check(&api, &id, &code).await;
    assert_eq!((r.status, r.error_code()), (409, "not_checkable".into()));
    let stored = d.store.verification(&id).await.unwrap().unwrap();
    assert_eq!(stored.status, Status::Expired);
    assert_eq!(stored.sealed_code, None);

    let id = create(&api, PHONE, "erin", json!({})).await;
    assert!(d
        .store
        .verification(&id)
        .await
        .unwrap()
        .unwrap()
        .sealed_code
        .is_some());
    d.service.cancel(&id).await.unwrap();
    let stored = d.store.verification(&id).await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.sealed_code),
        (Status::Canceled, None)
    );
    api.d.stop().await;
}

on_both_backends!(
    the_code_is_said_after_pound_and_the_web_app_checks_it,
    three_wrong_checks_lock_out_the_number_and_the_user,
    an_ended_verification_cannot_be_checked,
);

/// The dialer calls again when the callee did not press `#`; the next call reads the code.
#[tokio::test]
async fn no_pound_is_called_again_and_the_next_call_reads_the_code() {
    use callverify_testkit::emulator::ami::{AmiPeer, Callee};
    let peer = AmiPeer::start("callverify", "ami-secret").await.unwrap();
    let port = peer.addr.port();
    let api = Api::with(Db::Sqlite, move |c| {
        c.ami.host = "127.0.0.1".into();
        c.ami.port = port;
        c.ami.secret = "ami-secret".into();
        c.dialer.retry_delay_secs = 0;
        c.dialer.max_per_second = 50;
    })
    .await;
    peer.set_agi(api.d.addr);
    peer.callee(PHONE, Callee::answer(&[]));
    let id = create(&api, PHONE, "frank", json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while api.d.store.attempts(&id).await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "never called");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    peer.callee(PHONE, Callee::answer(&["#"]));
    loop {
        let attempts = api.d.store.attempts(&id).await.unwrap();
        let outcomes: Vec<_> = attempts.iter().filter_map(|a| a.outcome).collect();
        if outcomes.contains(&CallOutcome::CodeRead) {
            assert_eq!(outcomes[0], CallOutcome::NoAcknowledgement, "{outcomes:?}");
            assert_eq!(*outcomes.last().unwrap(), CallOutcome::CodeRead);
            break;
        }
        assert!(Instant::now() < deadline, "outcomes so far: {outcomes:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Read: the dialer leaves it alone from then on.
    let calls = peer.originated().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(peer.originated().len(), calls);
    let stored = api.d.store.verification(&id).await.unwrap().unwrap();
    assert_eq!(stored.status, Status::Pending);
    assert!(stored.code_delivered_at.is_some());
    api.d.stop().await;
}

/// The code survives a restart: sealed in the store, said again by the new run, checked.
#[tokio::test]
async fn a_restart_between_the_call_and_the_check_loses_nothing() {
    let api = Api::new(Db::Sqlite).await;
    let id = create(&api, PHONE, "grace", json!({})).await;
    let (code, _) = hear_code(&api.d, &id, &[]).await;
    let Api { d, key } = api;
    let (config, dir) = d.halt().await;
    let mut api = Api {
        d: crate::common::start_config(config).await,
        key,
    };
    api.d.dir = dir;
    let (again, _) = hear_code(&api.d, &id, &[]).await;
    assert_eq!(again, code, "a new call reads the same code");
    assert_eq!(checked(&check(&api, &id, &code).await).0, "verified");
    api.d.stop().await;
}

/// Two daemons on one Postgres: either says the code, either checks it.
#[tokio::test]
async fn two_daemons_on_postgres_share_the_sealed_code() {
    let api = Api::new(Db::Postgres).await;
    let second = crate::common::start_config(api.d.config.clone()).await;
    let id = create(&api, PHONE, "heidi", json!({})).await;
    let (code, _) = hear_code(&api.d, &id, &[]).await;
    let (again, _) = hear_code(&second, &id, &[]).await;
    assert_eq!(again, code);
    let second = Api {
        d: second,
        key: api.key.clone(),
    };
    assert_eq!(checked(&check(&second, &id, &wrong(&code, 5)).await).1, 2);
    assert_eq!(checked(&check(&second, &id, &code).await).0, "verified");
    assert_eq!(api.d.status(&id).await.status, Status::Verified);
    second.d.stop().await;
    api.d.stop().await;
}

/// Postgres, several daemons: a cancel (or an expiry) committed while a check of the web app
/// waits for the verification's row is not undone. The right code does not verify it, and a
/// wrong one costs no attempt and no strike: the check answers `not_checkable`.
#[tokio::test]
async fn a_check_racing_a_cancel_on_postgres_changes_nothing() {
    use sqlx::Connection;
    let api = Api::new(Db::Postgres).await;
    let d = &api.d;
    for (user, right) in [("judy", true), ("karl", false)] {
        let id = create(&api, PHONE, user, json!({})).await;
        let (code, _) = hear_code(d, &id, &[]).await;
        let entered = if right { code.clone() } else { wrong(&code, 1) };
        // Another daemon's cancel: the row changed, not yet committed.
        let mut canceler = crate::common::raw_connection(&d.config.database.url)
            .await
            .unwrap();
        let mut tx = canceler.begin().await.unwrap();
        sqlx::query("UPDATE verifications SET status = 'canceled' WHERE id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await
            .unwrap();
        let commit = async {
            // Until the check waits for the row.
            let mut watcher = crate::common::raw_connection(&d.config.database.url)
                .await
                .unwrap();
            crate::common::until_a_lock_wait(&mut watcher, "the check (for the row)").await;
            tx.commit().await.unwrap();
        };
        let (r, ()) = tokio::join!(check(&api, &id, &entered), commit);
        assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.error_code(), "not_checkable");
        let stored = d.store.verification(&id).await.unwrap().unwrap();
        assert_eq!((stored.status, stored.attempts_used), (Status::Canceled, 0));
        let now = callverify::domain::clock::now_ms();
        let standing = d.store.standing(PHONE, user, now, 0).await.unwrap();
        assert_eq!(
            standing.strikes, 0,
            "no strike for a check of a canceled one"
        );
    }
    api.d.stop().await;
}

/// The stored row holds no clear-text code, and nothing in it finds the code offline
/// without the secret: the keyless hashes an attacker would try match none of the 10^6
/// six-digit codes, while the server's keyed hash finds exactly the one (so the search is
/// real), and the sealed code opens only with the secret.
#[tokio::test]
async fn the_stored_row_holds_no_code_findable_without_the_secret() {
    let api = Api::new(Db::Sqlite).await;
    let id = create(&api, PHONE, "ivan", json!({})).await;
    let (code, _) = hear_code(&api.d, &id, &[]).await;
    let stored = api.d.store.verification(&id).await.unwrap().unwrap();
    let sealed = stored.sealed_code.clone().unwrap();
    for text in [&stored.code_hash, &sealed, &stored.user_ref, &stored.locale] {
        assert!(!text.contains(&code), "{text}");
    }
    let secret_file = std::path::PathBuf::from(&api.d.config.security.secret_file);
    let secret = callverify::domain::codes::server_key("", &secret_file).unwrap();
    assert_eq!(CodeSealer::new(b"").open(&id, &sealed).ok(), None);
    assert_eq!(CodeSealer::new(&secret).open(&id, &sealed).unwrap(), code);

    let target = hex::decode(&stored.code_hash).unwrap();
    let (id2, secret2) = (id.clone(), secret.clone());
    let found = tokio::task::spawn_blocking(move || {
        let mut keyless = 0;
        let mut keyed = Vec::new();
        for n in 0..1_000_000u32 {
            let candidate = format!("{n:06}");
            let bound = format!("{id2}\0{candidate}");
            let tries = [
                Sha256::digest(candidate.as_bytes()).to_vec(),
                Sha256::digest(bound.as_bytes()).to_vec(),
                Sha256::digest(format!("{id2}{candidate}").as_bytes()).to_vec(),
                hmac(b"", bound.as_bytes()),
                hmac(id2.as_bytes(), candidate.as_bytes()),
            ];
            keyless += tries.iter().filter(|t| **t == target).count();
            if hmac(&secret2, bound.as_bytes()) == target {
                keyed.push(candidate);
            }
        }
        (keyless, keyed)
    })
    .await
    .unwrap();
    assert_eq!(found, (0, vec![code]));
    api.d.stop().await;
}

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}
