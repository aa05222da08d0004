//! The support line end to end: an emulated inbound call (FastAGI + AudioSocket as the
//! captures show) leaves a message; the request is in the API with a playable recording;
//! approving it verifies the verification and the signed webhook follows.

use std::time::{Duration, Instant};

use crate::common::hooks::{receiver, verify_signature, SECRET};
use crate::common::{Daemon, Db, PHONE};
use callverify::config::Config;
use callverify::domain::api_keys::ApiKeys;
use callverify::domain::status::{CallerMatch, Status};
use callverify::domain::NewVerification;
use callverify::flow::prompts::Prompt;
use callverify::support::request::{Decided, Decision, NewManualRequest};
use callverify_testkit::emulator::{inbound_env, AfterTalk, Call, Talk, Transcript};
use serde_json::{json, Value};

/// An inbound call to `agi://HOST/manual` from `caller_id` with presentation `pres`.
fn support_call(caller_id: &str, pres: u32) -> Call {
    Call::with_env(inbound_env("manual", caller_id, pres))
}

/// Voice-like audio: a loud tone (speech to the level detector), `ms` long.
fn voice(ms: u32) -> Vec<i16> {
    (0..ms * 8)
        .map(|i| ((i as f32 * 0.35).sin() * 9000.0) as i16)
        .collect()
}

/// Always closed (no staff days) unless a test opens it.
fn closed(c: &mut Config) {
    c.support.days = Vec::new();
    c.support.max_message_secs = 20;
}

async fn api_key(d: &Daemon) -> String {
    ApiKeys::new(d.store.clone()).create("web").await.unwrap().1
}

struct Api<'a> {
    d: &'a Daemon,
    key: String,
    client: reqwest::Client,
}

impl Api<'_> {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Vec<u8>) {
        let url = format!("http://{}{path}", self.d.http);
        let mut request = self
            .client
            .request(method.parse().unwrap(), url)
            .bearer_auth(&self.key);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.bytes().await.unwrap().to_vec())
    }

    async fn json(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, bytes) = self.call(method, path, body).await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn requests(&self, status: &str) -> Vec<Value> {
        let (code, body) = self
            .json("GET", &format!("/v1/manual-requests?status={status}"), None)
            .await;
        assert_eq!(code, 200, "{body}");
        body["manual_requests"].as_array().unwrap().clone()
    }
}

async fn api(d: &Daemon) -> Api<'_> {
    Api {
        d,
        key: api_key(d).await,
        client: reqwest::Client::new(),
    }
}

/// A verification of `PHONE` made with `key` whose three attempts were used up.
async fn failed_verification(
    d: &Daemon,
    key_id: Option<String>,
    callback: Option<String>,
) -> String {
    let v = d
        .service
        .start(NewVerification {
            phone: PHONE.into(),
            user_ref: "alice".into(),
            api_key_id: key_id,
            callback_url: callback,
            ..Default::default()
        })
        .await
        .unwrap()
        .view;
    d.fail_by_keypad(&v.id).await;
    v.id
}

async fn key_id(d: &Daemon, secret: &str) -> String {
    ApiKeys::new(d.store.clone())
        .authenticate(secret)
        .await
        .unwrap()
        .unwrap()
        .id
}

async fn a_failed_caller_leaves_a_message_that_is_approved(db: Db) {
    let (hook, received) = receiver(0).await;
    let d = crate::common::start_with(db, |c| {
        closed(c);
        c.webhooks.secret = SECRET.into();
        c.webhooks.retry_base_ms = 50;
    })
    .await;
    let api = api(&d).await;
    let key = key_id(&d, &api.key).await;
    let id = failed_verification(&d, Some(key), Some(format!("http://{hook}/hook"))).await;
    // The trunk sends the caller ID in national form.
    let talk = Talk::new().say(voice(2000)).then(AfterTalk::Silence);
    let t = support_call("4155550101", 0)
        .talk(talk)
        .run(d.addr)
        .await
        .unwrap();
    assert_eq!(t.count_prompt("callverify/support-closed"), 1);
    assert_eq!(
        t.count_prompt("callverify/support-menu"),
        0,
        "no agent after hours"
    );
    assert_eq!(
        t.count_prompt("callverify/support-thanks"),
        1,
        "{:?}",
        t.commands
    );
    assert!(t.audio[0].hangup_message);

    let listed = api.requests("open").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let request = &listed[0];
    assert_eq!(request["caller"], "+1415*****01", "masked in lists");
    assert_eq!(request["caller_match"], "matched");
    assert_eq!(request["verification"]["id"], id.as_str());
    assert_eq!(request["verification"]["user_ref"], "alice");
    assert_eq!(request["ended_by"], "silence");
    assert_eq!(request["overdue"], false);
    let rid = request["id"].as_str().unwrap().to_owned();

    let (code, one) = api
        .json("GET", &format!("/v1/manual-requests/{rid}"), None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(one["caller"], PHONE, "in full when opened");
    let fetched = api
        .client
        .get(format!(
            "http://{}{}",
            d.http,
            one["recording_url"].as_str().unwrap()
        ))
        .bearer_auth(&api.key)
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 200);
    // Not kept by a cache on the way: it outlives no purge.
    assert_eq!(fetched.headers()["cache-control"], "no-store");
    let wav = fetched.bytes().await.unwrap();
    let (rate, samples) = callverify_audio::wav::decode(&wav).expect("a WAV file");
    assert_eq!(rate, 8000);
    // Two seconds of voice, trimmed silence but for a 300 ms margin after it.
    assert_eq!(samples.len(), 2300 * 8);

    let (code, approved) = api
        .json("POST", &format!("/v1/manual-requests/{rid}/approve"), None)
        .await;
    assert_eq!(code, 200, "{approved}");
    assert_eq!(approved["status"], "approved");
    assert_eq!(d.status(&id).await.status, Status::Verified);
    let (code, again) = api
        .json("POST", &format!("/v1/manual-requests/{rid}/approve"), None)
        .await;
    assert_eq!(
        (code, again["error"]["code"].clone()),
        (409, json!("already_decided"))
    );

    // The web app hears of it as of any status change, signed.
    let deadline = Instant::now() + Duration::from_secs(20);
    let verified = loop {
        let got = received.got.lock().unwrap().clone();
        let found = got.into_iter().find(|(_, body)| {
            serde_json::from_slice::<Value>(body).unwrap()["status"] == "verified"
        });
        if let Some(found) = found {
            break found;
        }
        assert!(Instant::now() < deadline, "no verified webhook");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    verify_signature(&verified.0, &verified.1);

    let audit = d.store.audit_entries(&rid).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(actions, ["open", "play", "approve"]);
    assert!(audit.iter().all(|a| a.actor.starts_with("api:key_")));
    d.stop().await;
}

async fn run_support(d: &Daemon, call: Call) -> Transcript {
    call.run(d.addr).await.unwrap()
}

/// Anyone on the phone network can call the support line: it takes at most
/// `max_messages_per_caller` messages from one caller ID in 24 hours, at most
/// `max_messages_per_hour` from all callers (faked and withheld caller IDs too), and none
/// once the recordings kept fill `max_recordings_mb`. Past a limit the caller is told so
/// before the tone, and nothing is kept; callers at once are counted one after the other.
async fn the_support_line_takes_a_bounded_number_of_messages(db: Db) {
    let d = crate::common::start_with(db, |c| {
        closed(c);
        c.support.max_messages_per_caller = 2;
        c.support.max_messages_per_hour = 4;
    })
    .await;
    let message = || Talk::new().say(voice(500)).key('#');
    // One caller, five calls at once: two kept, whichever come first; the others are told.
    let calls: Vec<_> = (0..5)
        .map(|_| run_support(&d, support_call(PHONE, 0).talk(message())))
        .collect();
    let mut thanked = 0;
    for t in futures::future::join_all(calls).await {
        let (thanks, full) = (
            t.count_prompt(Prompt::SupportThanks.file()),
            t.count_prompt(Prompt::SupportFull.file()),
        );
        assert_eq!(thanks + full, 1, "{:?}", t.commands);
        thanked += thanks;
    }
    assert_eq!(thanked, 2);
    assert_eq!(crate::common::manual_request_ids(&d).await.len(), 2);
    // Told before the tone: no instructions, no beep, nothing to say.
    let t = run_support(&d, support_call(PHONE, 0).talk(message())).await;
    assert_eq!(
        t.prompts(),
        [
            Prompt::SupportWelcome.file(),
            Prompt::SupportClosed.file(),
            Prompt::SupportFull.file(),
            Prompt::Goodbye.file()
        ],
        "{:?}",
        t.commands
    );
    // Other callers fill the hour: a withheld one and another number, then nobody.
    let t = run_support(&d, support_call("anonymous", 0x23).talk(message())).await;
    assert_eq!(t.count_prompt(Prompt::SupportThanks.file()), 1);
    let t = run_support(&d, support_call("+14155550142", 0).talk(message())).await;
    assert_eq!(t.count_prompt(Prompt::SupportThanks.file()), 1);
    for caller in ["+14155550143", "anonymous"] {
        let t = run_support(&d, support_call(caller, 0).talk(message())).await;
        assert_eq!(t.count_prompt(Prompt::SupportFull.file()), 1, "{caller}");
    }
    assert_eq!(crate::common::manual_request_ids(&d).await.len(), 4);
    // Each refusal is counted for monitoring, by the limit reached.
    let metrics = d.metrics();
    for (limit, refused) in [("caller_full", 4), ("line_full", 2), ("storage_full", 0)] {
        let line =
            format!("callverify_support_messages_refused_total{{limit=\"{limit}\"}} {refused}\n");
        assert!(metrics.contains(&line), "{line}{metrics}");
    }
    d.stop().await;

    // The open requests' recordings fill their space (1 MiB here); decided ones do not
    // count, so staff reopen a flooded line by rejecting what the flood left.
    let d = crate::common::start_with(db, |c| {
        closed(c);
        c.support.max_recordings_mb = 1;
    })
    .await;
    let now = callverify::domain::clock::now_ms();
    let big = |id: &str| NewManualRequest {
        recording: vec![0; 2 << 20],
        ..crate::common::manual_request(id, None, now - 2 * 86_400_000)
    };
    d.store
        .insert_manual_request(big("mr_decided"))
        .await
        .unwrap();
    let reject = Decision::Reject {
        reason: "spam".into(),
    };
    d.store
        .decide_manual("mr_decided", reject, "staff", now)
        .await
        .unwrap();
    let t = run_support(&d, support_call(PHONE, 0).talk(message())).await;
    assert_eq!(t.count_prompt(Prompt::SupportThanks.file()), 1);
    d.store.insert_manual_request(big("mr_open")).await.unwrap();
    let t = run_support(&d, support_call("+14155550142", 0).talk(message())).await;
    assert_eq!(t.count_prompt(Prompt::SupportFull.file()), 1);
    assert_eq!(crate::common::manual_request_ids(&d).await.len(), 3);
    d.stop().await;
}

async fn hang_up_silence_overlong_and_withheld_callers(db: Db) {
    let d = crate::common::start_with(db, |c| {
        closed(c);
        c.support.max_message_secs = 3;
    })
    .await;
    let api = api(&d).await;
    // Hangs up mid-message: what was said is kept.
    let talk = Talk::new().say(voice(1000)).then(AfterTalk::HangUp);
    let t = run_support(&d, support_call("+14155550199", 0).talk(talk)).await;
    assert_eq!(t.count_prompt("callverify/support-thanks"), 0);
    // Silent twice: told so each time, then goodbye; nothing kept.
    let t = run_support(&d, support_call("+14155550198", 0)).await;
    assert_eq!(
        t.count_prompt("callverify/support-no-message"),
        2,
        "{:?}",
        t.commands
    );
    assert_eq!(t.count_prompt("goodbye"), 1);
    assert!(t.closed_by_daemon);
    // Talks past the cap: cut at 3 s.
    let talk = Talk::new().say(voice(5000));
    let t = run_support(&d, support_call("+14155550197", 0).talk(talk)).await;
    assert_eq!(
        t.count_prompt("callverify/support-thanks"),
        1,
        "{:?}",
        t.commands
    );
    // Caller ID withheld (presentation "prohibited").
    let talk = Talk::new().say(voice(800)).key('#');
    let t = run_support(&d, support_call("anonymous", 0x23).talk(talk)).await;
    assert_eq!(t.count_prompt("callverify/support-thanks"), 1);

    // Open requests come oldest first (the work queue); every other view newest first.
    let listed = api.requests("open").await;
    let ids =
        |requests: &[Value]| -> Vec<Value> { requests.iter().map(|r| r["id"].clone()).collect() };
    let mut newest_first = ids(&listed);
    newest_first.reverse();
    assert_eq!(ids(&api.requests("all").await), newest_first);
    let summary: Vec<(Value, Value, Value, Value)> = listed
        .iter()
        .map(|r| {
            (
                r["caller"].clone(),
                r["caller_match"].clone(),
                r["ended_by"].clone(),
                r["duration_ms"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                json!("+1415*****99"),
                json!("unmatched"),
                json!("hangup"),
                json!(1000)
            ),
            (
                json!("+1415*****97"),
                json!("unmatched"),
                json!("cap"),
                json!(3000)
            ),
            (json!(null), json!("withheld"), json!("key"), json!(800)),
        ]
    );
    d.stop().await;
}

async fn staff_answer_within_business_hours(db: Db) {
    let d = crate::common::start_with(db, |c| {
        c.support.timezone = "UTC".into();
        c.support.days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
            .map(String::from)
            .into();
        c.support.opens = "00:00".into();
        c.support.closes = "23:59:59.999".into();
    })
    .await;
    let t = run_support(&d, support_call(PHONE, 0).press("1")).await;
    assert_eq!(t.count_prompt("callverify/support-menu"), 1);
    assert!(
        t.commands
            .contains(&"SET VARIABLE CALLVERIFY_SUPPORT_ROUTE agent".to_string()),
        "{:?}",
        t.commands
    );
    assert!(t.audio.is_empty(), "no message taken");
    // No key: a message, as after hours.
    let t = run_support(&d, support_call(PHONE, 0).talk(Talk::new().say(voice(500)))).await;
    assert!(t
        .commands
        .contains(&"SET VARIABLE CALLVERIFY_SUPPORT_ROUTE message".to_string()));
    assert_eq!(t.count_prompt("callverify/support-thanks"), 1);
    // Back from an agent who did not answer (dialplan passes "message"): no menu again.
    let mut env = inbound_env("manual", PHONE, 0);
    env.push("agi_arg_1: message".into());
    let t = run_support(&d, Call::with_env(env).talk(Talk::new().say(voice(500)))).await;
    assert_eq!(t.count_prompt("callverify/support-menu"), 0);
    assert_eq!(t.count_prompt("callverify/support-no-agent"), 1);
    assert_eq!(t.count_prompt("callverify/support-thanks"), 1);
    d.stop().await;
}

async fn decisions_are_checked_and_scoped(db: Db) {
    let d = crate::common::start_with(db, closed).await;
    let api = api(&d).await;
    let other = Api {
        d: &d,
        key: api_key(&d).await,
        client: reqwest::Client::new(),
    };
    let key = key_id(&d, &api.key).await;
    failed_verification(&d, Some(key.clone()), None).await;
    let talk = Talk::new().say(voice(500)).key('#');
    run_support(&d, support_call(PHONE, 0).talk(talk)).await;
    let rid = api.requests("open").await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Another key's web app does not see it.
    assert!(other.requests("open").await.is_empty());
    let approve = format!("/v1/manual-requests/{rid}/approve");
    let (code, _) = other.json("POST", &approve, None).await;
    assert_eq!(code, 404);
    // Matched by caller ID, it is not approved for another verification of the key, nor
    // for one made with the CLI (no key's own).
    let own = d
        .service
        .start(NewVerification {
            phone: "+14155550123".into(),
            user_ref: "bob".into(),
            api_key_id: Some(key.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .view
        .id;
    let from_cli = d.new_verification("+14155550124", "carol").await.id;
    for (vid, why) in [
        (own, "matched another verification"),
        (from_cli, "no such verification"),
    ] {
        let (code, body) = api
            .json("POST", &approve, Some(json!({ "verification_id": vid })))
            .await;
        assert_eq!(code, 422, "{body}");
        assert_eq!(body["error"]["code"], "not_approvable");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{message}");
    }
    // Rejecting needs a reason.
    let path = format!("/v1/manual-requests/{rid}/reject");
    let (code, body) = api
        .json("POST", &path, Some(json!({ "reason": " " })))
        .await;
    assert_eq!(
        (code, body["error"]["code"].clone()),
        (422, json!("invalid_reason"))
    );
    let (code, body) = api.json("POST", &path, Some(json!({ "why": "x" }))).await;
    assert_eq!(code, 422, "{body}");
    let (code, body) = api
        .json(
            "POST",
            &path,
            Some(json!({ "reason": "email does not match" })),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "rejected");
    assert_eq!(body["reason"], "email does not match");
    assert!(api.requests("open").await.is_empty());
    assert_eq!(api.requests("rejected").await.len(), 1);
    let (code, _) = api
        .json("GET", "/v1/manual-requests?status=bogus", None)
        .await;
    assert_eq!(code, 400);
    let (code, _) = api
        .json("GET", "/v1/manual-requests/mr_nonesuch", None)
        .await;
    assert_eq!(code, 404);
    d.stop().await;
}

/// Whether the SQLite database's file holds `bytes`, after a checkpoint has moved the
/// write-ahead log's pages into it.
async fn sqlite_files_hold(d: &Daemon, bytes: &[u8]) -> bool {
    use sqlx::{Connection, Executor};
    let path = d.dir.as_ref().unwrap().path().join("test.db");
    let mut conn = crate::common::raw_connection(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    conn.execute("PRAGMA busy_timeout = 10000; PRAGMA wal_checkpoint(TRUNCATE)")
        .await
        .unwrap();
    conn.close().await.unwrap();
    let file = std::fs::read(&path).unwrap();
    file.windows(bytes.len()).any(|w| w == bytes)
}

async fn recordings_are_deleted_after_retention(db: Db) {
    let d = crate::common::start_with(db, closed).await;
    let api = api(&d).await;
    run_support(
        &d,
        support_call(PHONE, 0).talk(Talk::new().say(voice(500)).key('#')),
    )
    .await;
    let rid = api.requests("open").await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let store = &d.store;
    let wav = store.manual_recording(&rid).await.unwrap().unwrap();
    // A stretch of the recording's samples, to look for in the database's files.
    let sample = wav[wav.len() / 2..wav.len() / 2 + 256].to_vec();
    if db == Db::Sqlite {
        assert!(
            sqlite_files_hold(&d, &sample).await,
            "the recording is stored"
        );
    }
    let now = callverify::domain::clock::now_ms();
    // Nothing is due yet; a day past the 30-day retention, it is.
    assert_eq!(
        store
            .purge_support(now - 30 * 86_400_000, now)
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.purge_support(now + 1, now).await.unwrap(), 1);
    assert_eq!(store.manual_recording(&rid).await.unwrap(), None);
    if db == Db::Sqlite {
        // Overwritten, not left in the file's free pages (secure_delete), nor in the
        // write-ahead log's older images of those pages: read as the purge left them.
        for file in ["test.db", "test.db-wal"] {
            let path = d.dir.as_ref().unwrap().path().join(file);
            let bytes = std::fs::read(&path).unwrap_or_default();
            assert!(
                !bytes.windows(sample.len()).any(|w| w == sample),
                "the recording is still in {file}"
            );
        }
    }
    let listed = api.requests("open").await;
    assert_eq!(listed[0]["recording_url"], Value::Null);
    assert_eq!(listed[0]["overdue"], false);
    // A message left 25 hours ago and still open is overdue.
    store
        .insert_manual_request(NewManualRequest {
            id: "mr_old".into(),
            created_at: now - 25 * 3_600_000,
            caller: None,
            caller_match: CallerMatch::Withheld,
            verification_id: None,
            ended_by: "key",
            duration_ms: 1000,
            recording: callverify_audio::wav::encode(&[0; 8], 8000),
            transcript: None,
            language: "en".into(),
        })
        .await
        .unwrap();
    let listed = api.requests("open").await;
    assert_eq!(listed[0]["id"], "mr_old", "oldest first");
    assert_eq!(listed[0]["overdue"], true);
    assert_eq!(listed[1]["overdue"], false);
    d.stop().await;
}

/// The daemon's upkeep deletes recordings past `support.retention_days` by itself, and keeps
/// younger ones.
async fn the_daemon_purges_old_recordings_by_itself(db: Db) {
    let d = crate::common::start_with(db, |c| c.support.retention_days = 30).await;
    let store = &d.store;
    let now = callverify::domain::clock::now_ms();
    let day = 86_400_000;
    for (id, age) in [("mr_31_days", 31 * day), ("mr_29_days", 29 * day)] {
        store
            .insert_manual_request(NewManualRequest {
                id: id.into(),
                created_at: now - age,
                caller: None,
                caller_match: CallerMatch::Withheld,
                verification_id: None,
                ended_by: "key",
                duration_ms: 1000,
                recording: callverify_audio::wav::encode(&[7; 8000], 8000),
                transcript: Some("kept until then".into()),
                language: "en".into(),
            })
            .await
            .unwrap();
    }
    // The upkeep runs every 5 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    while store
        .manual_recording("mr_31_days")
        .await
        .unwrap()
        .is_some()
    {
        assert!(
            Instant::now() < deadline,
            "the old recording was not purged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(store
        .manual_recording("mr_29_days")
        .await
        .unwrap()
        .is_some());
    d.stop().await;
}

/// A stored message for the search and paging tests.
fn message(
    id: &str,
    created_at: i64,
    caller: Option<&str>,
    verification_id: Option<&str>,
    transcript: &str,
) -> NewManualRequest {
    NewManualRequest {
        id: id.into(),
        created_at,
        caller: caller.map(str::to_owned),
        caller_match: if verification_id.is_some() {
            CallerMatch::Matched
        } else {
            CallerMatch::Unmatched
        },
        verification_id: verification_id.map(str::to_owned),
        ended_by: "key",
        duration_ms: 4000,
        recording: callverify_audio::wav::encode(&[0; 8], 8000),
        transcript: Some(transcript.into()),
        language: "en".into(),
    }
}

/// The ids of a listing's page, and its next cursor.
async fn page(api: &Api<'_>, query: &str) -> (Vec<String>, Option<String>) {
    let (code, body) = api
        .json("GET", &format!("/v1/manual-requests?{query}"), None)
        .await;
    assert_eq!(code, 200, "{query}: {body}");
    let ids = body["manual_requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    (ids, body["next_cursor"].as_str().map(str::to_owned))
}

/// What a search of every status finds.
async fn found(api: &Api<'_>, q: &str) -> Vec<String> {
    let mut encoded = String::new();
    for b in q.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    page(api, &format!("status=all&q={encoded}")).await.0
}

/// The desk's one box finds a request by the caller's number in any format, the user_ref,
/// the request's or the verification's id, and words of the transcript; a listing of 1,200
/// requests is paged through by cursor, each request exactly once, also while new ones
/// arrive.
async fn the_desk_finds_requests_by_each_key_and_pages_through_them(db: Db) {
    let d = crate::common::start(db).await;
    let api = api(&d).await;
    let key = key_id(&d, &api.key).await;
    let v = d
        .service
        .start(NewVerification {
            phone: "+14155550142".into(),
            user_ref: "Zoe.Example".into(),
            api_key_id: Some(key),
            ..Default::default()
        })
        .await
        .unwrap()
        .view;
    let now = callverify::domain::clock::now_ms();
    let store = &d.store;
    for m in [
        message(
            "mr_zoe",
            now - 5000,
            Some("+14155550142"),
            Some(&v.id),
            "I want my number verified, my username is zoe, email zoe at example dot com",
        ),
        message(
            "mr_bob",
            now - 4000,
            Some("+442079460123"),
            None,
            "hello this is bob, 50%_off is not my name",
        ),
    ] {
        store.insert_manual_request(m).await.unwrap();
    }
    for q in [
        "(415) 555-0142",
        "4155550142",
        "+1 415 555 0142",
        "zoe.EXAMPLE",
        &v.id,
        "mr_zoe",
        "ZOE AT example",
    ] {
        assert_eq!(found(&api, q).await, ["mr_zoe"], "{q}");
    }
    // LIKE's wildcards are the characters themselves.
    for q in ["+44 20 7946 0123", "mr_bob", "50%_off", "BOB", "%", "_"] {
        assert_eq!(found(&api, q).await, ["mr_bob"], "{q}");
    }
    for q in ["0142x", "555-9999", "zoe.examples"] {
        assert!(found(&api, q).await.is_empty(), "{q}");
    }
    let (code, body) = api
        .json("GET", "/v1/manual-requests?cursor=garbage", None)
        .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("invalid_query"))
    );

    // 1,200 open requests, three to a millisecond, paged 100 at a time; five more arrive
    // while the desk pages.
    let base = now - 1_000_000;
    for i in 0..1200 {
        let id = format!("mr_fill{i:04}");
        store
            .insert_manual_request(message(&id, base + i / 3, None, None, "a message"))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &cursor {
            Some(c) => format!("status=open&limit=100&cursor={c}"),
            None => "status=open&limit=100".into(),
        };
        let (ids, next) = page(&api, &query).await;
        seen.extend(ids);
        pages += 1;
        if pages == 3 {
            for i in 0..5 {
                store
                    .insert_manual_request(message(
                        &format!("mr_late{i}"),
                        now + i,
                        None,
                        None,
                        "late",
                    ))
                    .await
                    .unwrap();
            }
        }
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let unique: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no request twice");
    assert_eq!(seen.len(), 1200 + 2 + 5, "every request once");
    assert_eq!(seen[0], "mr_fill0000", "oldest first");
    assert_eq!(seen.last().unwrap(), "mr_late4", "the new ones at the end");
    assert_eq!(pages, 13);
    d.stop().await;
}

/// A request approved for a verification that is verified already (a second message about
/// it) changes nothing more: the wrong codes its number made since still count.
async fn a_second_approval_forgets_no_wrong_codes(db: Db) {
    let d = crate::common::start_with(db, closed).await;
    let x = failed_verification(&d, None, None).await;
    let now = callverify::domain::clock::now_ms();
    for id in ["mr_first", "mr_second"] {
        let request = crate::common::manual_request(id, Some(&x), now);
        d.store.insert_manual_request(request).await.unwrap();
    }
    let approve = Decision::Approve {
        verification_id: None,
    };
    let decided = d
        .store
        .decide_manual("mr_first", approve.clone(), "staff", now)
        .await
        .unwrap();
    assert!(matches!(decided, Decided::Done { .. }), "{decided:?}");
    assert_eq!(d.status(&x).await.status, Status::Verified);
    // A wrong code for the number, in another verification.
    let y = d.new_verification(PHONE, "bob").await;
    Call::verify(&y.id)
        .press("#")
        .press("000000#")
        .run(d.addr)
        .await
        .unwrap();
    let strikes = |d: &Daemon| {
        let store = d.store.clone();
        async move {
            let now = callverify::domain::clock::now_ms();
            store
                .standing(PHONE, "nobody", now, 0)
                .await
                .unwrap()
                .strikes
        }
    };
    assert_eq!(strikes(&d).await, 1);
    let decided = d
        .store
        .decide_manual("mr_second", approve, "staff", now)
        .await
        .unwrap();
    assert!(matches!(decided, Decided::Done { .. }), "{decided:?}");
    assert_eq!(strikes(&d).await, 1, "the number's wrong code still counts");
    d.stop().await;
}

/// A verification made with the CLI is no API key's: a key cannot read, cancel or approve
/// it, and a support request matched to it is not in the key's queue (staff decide it).
async fn a_cli_verification_is_no_keys(db: Db) {
    let d = crate::common::start_with(db, closed).await;
    let api = api(&d).await;
    let id = failed_verification(&d, None, None).await;
    let talk = Talk::new().say(voice(500)).key('#');
    run_support(&d, support_call(PHONE, 0).talk(talk)).await;
    assert!(api.requests("all").await.is_empty());
    let rid = crate::common::manual_request_ids(&d).await[0].clone();
    for (method, path) in [
        ("GET", format!("/v1/manual-requests/{rid}")),
        ("POST", format!("/v1/manual-requests/{rid}/approve")),
        ("GET", format!("/v1/verifications/{id}")),
        ("POST", format!("/v1/verifications/{id}/cancel")),
    ] {
        let (code, body) = api.json(method, &path, None).await;
        assert_eq!(code, 404, "{method} {path}: {body}");
    }
    assert_eq!(d.status(&id).await.status, Status::Failed);
    d.stop().await;
}

/// Each message being recorded holds up to a minute and a half of audio in memory: twice as
/// many callers record at once as the line takes in an hour, at most, and the next is told
/// before the tone.
#[tokio::test]
async fn callers_recording_at_once_are_bounded_by_the_lines_quota() {
    let d = crate::common::start_with(Db::Sqlite, |c| {
        closed(c);
        c.support.max_messages_per_hour = 1;
    })
    .await;
    // Two recordings of 3.5 s, in real time (a call's AGI reply timeout here is 5 s).
    let talking = |caller: &'static str| {
        let talk = Talk::new()
            .say(voice(3500))
            .key('#')
            .paced(std::time::Duration::from_millis(20));
        tokio::spawn(support_call(caller, 0).talk(talk).run(d.addr))
    };
    let (first, second) = (talking("+14155550181"), talking("+14155550182"));
    // Both are being handled, and a second on from there they record (their prompts take
    // no time here).
    d.until_calls_in_progress(2).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let third = run_support(&d, support_call("+14155550183", 0).talk(Talk::new())).await;
    assert_eq!(
        third.count_prompt(Prompt::SupportFull.file()),
        1,
        "{:?}",
        third.commands
    );
    assert_eq!(third.count_prompt("beep"), 0, "told before the tone");
    let (first, second) = (
        first.await.unwrap().unwrap(),
        second.await.unwrap().unwrap(),
    );
    let thanked = [first, second]
        .iter()
        .map(|t| t.count_prompt(Prompt::SupportThanks.file()))
        .sum::<usize>();
    assert_eq!(thanked, 1, "the hour's one message");
    // Counted apart from the hour's quota (line_full: the second recording, not kept).
    let metrics = d.metrics();
    for (limit, refused) in [("recording_full", 1), ("line_full", 1)] {
        let line =
            format!("callverify_support_messages_refused_total{{limit=\"{limit}\"}} {refused}\n");
        assert!(metrics.contains(&line), "{line}{metrics}");
    }
    d.stop().await;
}

/// Local channels, and SIP legs with silence suppression, send no frames while the caller is
/// quiet: the message ends on that silence as on silent frames, not at the wall-clock
/// backstop (here 3 + 10 + 10 s).
#[tokio::test]
async fn a_message_on_a_channel_that_sends_no_frames_in_silence_ends_on_it() {
    let d = crate::common::start_with(Db::Sqlite, |c| {
        closed(c);
        c.support.max_message_secs = 3;
        c.support.end_silence_secs = 1;
    })
    .await;
    let api = api(&d).await;
    let talk = Talk::new().say(voice(800)).then(AfterTalk::Quiet);
    let t = run_support(&d, support_call("+14155550196", 0).talk(talk)).await;
    assert_eq!(
        t.count_prompt("callverify/support-thanks"),
        1,
        "{:?}",
        t.commands
    );
    let listed = api.requests("open").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["ended_by"], "silence");
    d.stop().await;
}

on_both_backends!(
    the_support_line_takes_a_bounded_number_of_messages,
    a_cli_verification_is_no_keys,
    a_second_approval_forgets_no_wrong_codes,
    the_desk_finds_requests_by_each_key_and_pages_through_them,
    the_daemon_purges_old_recordings_by_itself,
    a_failed_caller_leaves_a_message_that_is_approved,
    hang_up_silence_overlong_and_withheld_callers,
    staff_answer_within_business_hours,
    decisions_are_checked_and_scoped,
    recordings_are_deleted_after_retention,
);

/// A support call in progress when the daemon is told to stop (every package upgrade stops
/// the service) is one the grace lets finish: thinking over the menu at the stop, the caller
/// then leaves a message, whose AudioSocket leg is still accepted and which is kept; the web
/// app's requests are answered meanwhile. Only new calls are refused.
#[tokio::test]
async fn a_support_call_in_progress_at_a_stop_still_leaves_its_message() {
    use callverify_testkit::emulator::Action;
    let mut d = crate::common::start_with(Db::Sqlite, |c| {
        c.support.timezone = "UTC".into();
        c.support.days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
            .map(String::from)
            .into();
        c.support.opens = "00:00".into();
        c.support.closes = "23:59:59.999".into();
    })
    .await;
    let (key, http) = (api_key(&d).await, d.http);
    let (go, hold) = tokio::sync::watch::channel(false);
    let call = support_call(PHONE, 0)
        .then(Action::Hold(hold))
        .talk(Talk::new().say(voice(500)));
    let addr = d.addr;
    let in_progress = tokio::spawn(async move { call.run(addr).await });
    d.until_calls_in_progress(1).await;
    d.signal_stop();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "no new calls after the stop signal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let listed = reqwest::Client::new()
        .get(format!("http://{http}/v1/manual-requests?status=open"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("the API answers during the grace");
    assert_eq!(listed.status(), 200);
    go.send(true).unwrap();
    let t = tokio::time::timeout(Duration::from_secs(20), in_progress)
        .await
        .expect("the call ends")
        .unwrap()
        .unwrap();
    assert_eq!(t.audio.len(), 1, "{:?}", t.commands);
    assert!(
        t.audio[0].connected,
        "AudioSocket accepted during the grace"
    );
    assert_eq!(t.count_prompt("callverify/technical-problem"), 0);
    assert_eq!(
        t.count_prompt("callverify/support-thanks"),
        1,
        "{:?}",
        t.commands
    );
    d.join().await;
    assert_eq!(crate::common::manual_request_ids(&d).await.len(), 1);
}
