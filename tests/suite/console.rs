//! The support console in a real headless Chromium: sign in, open a request, play its
//! recording, approve it. Wrong passwords, forms without the CSRF token and signed-out
//! requests are refused.

use crate::common::browser::Browser;
use crate::common::{Daemon, Db, PHONE};
use std::time::Duration;

use callverify::domain::status::{CallerMatch, StaffRole, Status};
use callverify::domain::NewVerification;
use callverify::support::request::NewManualRequest;
use callverify::support::staff::Staff;
use callverify_testkit::emulator::{inbound_env, Call, Talk};
use serde_json::Value;

const PASSWORD: &str = "correct horse battery";

async fn daemon_with_a_message() -> (Daemon, String) {
    let d = crate::common::start_with(Db::Sqlite, |c| c.support.days = Vec::new()).await;
    Staff::new(d.store.clone(), std::time::Duration::from_secs(3600))
        .add("alice", PASSWORD)
        .await
        .unwrap();
    let v = d
        .service
        .start(NewVerification {
            phone: PHONE.into(),
            user_ref: "alice-user".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .view;
    d.fail_by_keypad(&v.id).await;
    let env = inbound_env("manual", PHONE, 0);
    let voice: Vec<i16> = (0..16_000)
        .map(|i| ((i as f32 * 0.35).sin() * 9000.0) as i16)
        .collect();
    let t = Call::with_env(env)
        .talk(Talk::new().say(voice).key('#'))
        .run(d.addr)
        .await
        .unwrap();
    assert_eq!(t.count_prompt("callverify/support-thanks"), 1);
    (d, v.id)
}

#[tokio::test]
async fn staff_sign_in_play_and_approve_in_a_browser() {
    let (d, verification) = daemon_with_a_message().await;
    let browser = Browser::start().await;
    let base = format!("http://{}", d.http);

    // Signed out: the queue sends to the sign-in page.
    browser.go(&format!("{base}/console/")).await;
    browser.wait_for_url("/console/login").await;
    browser.type_into("#username", "alice").await;
    browser.type_into("#password", "not the password").await;
    browser.click("#sign-in").await;
    browser
        .wait_for_text("#error", "Wrong name or password.")
        .await;
    assert_eq!(browser.cookie("cv_session").await, None);

    browser.type_into("#username", "alice").await;
    browser.type_into("#password", PASSWORD).await;
    browser.click("#sign-in").await;
    browser.wait_for_url("/console/").await;
    assert_eq!(browser.count("#queue tbody tr").await, 1);
    let queue = browser.source().await;
    assert!(queue.contains("+1415*****01"), "masked in the queue");
    assert!(!queue.contains(PHONE));
    assert!(queue.contains("alice-user"));

    browser.click("a.open").await;
    browser.wait_for_text("#caller", PHONE).await;
    browser
        .wait_for_text("#caller-id", "matched (caller IDs can be faked")
        .await;
    // Play: the browser fetches and decodes the WAV, and playback starts.
    let played = browser
        .run_async(
            "const done = arguments[arguments.length - 1];\
             const a = document.getElementById('recording');\
             a.onerror = () => done({error: 'load failed'});\
             a.play().then(\
               () => setTimeout(() => done({duration: a.duration, time: a.currentTime, paused: a.paused}), 300),\
               e => done({error: String(e)}));",
        )
        .await;
    assert_eq!(played["error"], Value::Null, "{played}");
    let duration = played["duration"].as_f64().unwrap();
    assert!((duration - 2.0).abs() < 0.35, "{played}");
    assert!(
        played["time"].as_f64().unwrap() > 0.0,
        "playback advanced: {played}"
    );

    // A decision takes a second step: nothing is decided until it is confirmed.
    browser.click("#approve").await;
    browser
        .wait_for_text("#confirm-text", "Approve request")
        .await;
    assert_eq!(d.status(&verification).await.status, Status::Failed);
    browser.click("#confirm").await;
    browser.wait_for_text("#status", "approved").await;
    assert_eq!(d.status(&verification).await.status, Status::Verified);

    // Without the form's CSRF token, or signed out, the console refuses.
    let session = browser.cookie("cv_session").await.expect("signed in");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // After the decision the page is the request's, `?after=decision`.
    let url = browser.url().await;
    assert!(url.ends_with("?after=decision"), "{url}");
    let rid = url
        .trim_end_matches("?after=decision")
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let reject = format!("{base}/console/requests/{rid}/reject");
    let forged = client
        .post(&reject)
        .header("cookie", format!("cv_session={session}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("reason=forged")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 403);
    let signed_out = client
        .post(&reject)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("reason=nobody&csrf=x")
        .send()
        .await
        .unwrap();
    assert_eq!(signed_out.status().as_u16(), 401);
    let recording = client
        .get(format!("{base}/console/requests/{rid}/recording.wav"))
        .send()
        .await
        .unwrap();
    assert_eq!(recording.status().as_u16(), 401);

    let audit = d.store.audit_entries(&rid).await.unwrap();
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|a| (a.actor.as_str(), a.action.as_str()))
        .collect();
    assert!(actions.contains(&("staff:alice", "open")), "{actions:?}");
    assert!(actions.contains(&("staff:alice", "play")), "{actions:?}");
    assert!(actions.contains(&("staff:alice", "approve")), "{actions:?}");
    // The page shown after the decision is not a second "open".
    let after = actions
        .iter()
        .skip_while(|(_, action)| *action != "approve")
        .skip(1)
        .collect::<Vec<_>>();
    assert!(
        !after.contains(&&("staff:alice", "open")),
        "the view after approve was audited as an open: {actions:?}"
    );
    // A look at it later is an open again.
    browser.go(&format!("{base}/console/requests/{rid}")).await;
    let audit = d.store.audit_entries(&rid).await.unwrap();
    let opens = audit.iter().filter(|a| a.action == "open").count();
    let before = actions.iter().filter(|(_, a)| *a == "open").count();
    assert_eq!(opens, before + 1, "a later look is audited");

    browser.click("#sign-out").await;
    browser.wait_for_url("/console/login").await;
    browser.go(&format!("{base}/console/")).await;
    browser.wait_for_url("/console/login").await;
    d.stop().await;
}

/// Behind a TLS proxy (`support.secure_cookies`) the console's cookies are marked Secure, so a
/// browser never sends a session over plain HTTP; by default they are not, so that the
/// console works on loopback.
#[tokio::test]
async fn cookies_are_secure_when_configured() {
    for secure in [false, true] {
        let d = crate::common::start_with(Db::Sqlite, |c| c.support.secure_cookies = secure).await;
        let page = reqwest::get(format!("http://{}/console/login", d.http))
            .await
            .unwrap();
        assert_eq!(page.status().as_u16(), 200);
        let cookie = page.headers()["set-cookie"].to_str().unwrap().to_owned();
        assert!(cookie.starts_with("cv_login="), "{cookie}");
        assert_eq!(cookie.ends_with("; Secure"), secure, "{cookie}");
        d.stop().await;
    }
}

/// A new password ends the account's console sessions and its old password; a disabled
/// account enabled again signs in anew. Both are audited.
#[tokio::test]
async fn a_new_password_ends_sessions_and_an_enabled_account_signs_in_again() {
    use callverify::support::staff::StaffError;
    const NEW: &str = "another long enough password";
    let d = crate::common::start(Db::Sqlite).await;
    let staff = Staff::new(d.store.clone(), std::time::Duration::from_secs(3600));
    staff.add("dora", PASSWORD).await.unwrap();
    let signed_in = staff.sign_in("dora", PASSWORD).await.unwrap().unwrap();
    assert!(staff.session(&signed_in.token).await.unwrap().is_some());
    staff.set_password("dora", NEW).await.unwrap();
    assert!(staff.session(&signed_in.token).await.unwrap().is_none());
    assert!(staff.sign_in("dora", PASSWORD).await.unwrap().is_none());
    assert!(staff.sign_in("dora", NEW).await.unwrap().is_some());
    let refused = staff.set_password("dora", "too short").await.unwrap_err();
    assert!(matches!(refused, StaffError::WeakPassword), "{refused}");
    let refused = staff.set_password("nobody", NEW).await.unwrap_err();
    assert!(matches!(refused, StaffError::Unknown(_)), "{refused}");

    staff.disable("dora").await.unwrap();
    assert!(staff.sign_in("dora", NEW).await.unwrap().is_none());
    let refused = staff.set_password("dora", PASSWORD).await.unwrap_err();
    assert!(matches!(refused, StaffError::Unknown(_)), "{refused}");
    staff.enable("dora").await.unwrap();
    let signed_in = staff.sign_in("dora", NEW).await.unwrap().unwrap();
    // Enabling an active account is refused and leaves its sessions alone.
    let refused = staff.enable("dora").await.unwrap_err();
    assert!(matches!(refused, StaffError::NotDisabled(_)), "{refused}");
    assert!(staff.session(&signed_in.token).await.unwrap().is_some());
    let actions: Vec<String> = d
        .store
        .audit_entries("dora")
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.action)
        .collect();
    for action in ["staff_password", "staff_disable", "staff_enable"] {
        assert!(actions.iter().any(|a| a == action), "{action}: {actions:?}");
    }
    d.stop().await;
}

/// Five wrong passwords for an account refuse its sign-ins for a while (even with the right
/// password); a successful sign-in clears the count, and other accounts are not affected.
#[tokio::test]
async fn repeated_wrong_passwords_hold_an_account_back() {
    use callverify::support::staff::StaffError;
    let d = crate::common::start(Db::Sqlite).await;
    let staff = Staff::new(d.store.clone(), std::time::Duration::from_secs(3600));
    for name in ["bob", "carol"] {
        staff.add(name, PASSWORD).await.unwrap();
    }
    for _ in 0..4 {
        assert!(staff
            .sign_in("carol", "not the password")
            .await
            .unwrap()
            .is_none());
    }
    assert!(staff.sign_in("carol", PASSWORD).await.unwrap().is_some());
    assert!(staff
        .sign_in("carol", "not the password")
        .await
        .unwrap()
        .is_none());

    for _ in 0..5 {
        assert!(staff
            .sign_in("bob", "not the password")
            .await
            .unwrap()
            .is_none());
    }
    let refused = staff.sign_in("bob", PASSWORD).await.unwrap_err();
    assert!(matches!(refused, StaffError::Throttled(_)), "{refused}");
    assert!(staff.sign_in("carol", PASSWORD).await.unwrap().is_some());

    // Sign-ins, failed ones and account changes are audited.
    staff.disable("carol").await.unwrap();
    let audit = d.store.audit_entries("carol").await.unwrap();
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|a| (a.actor.as_str(), a.action.as_str()))
        .collect();
    let failed = ("console", "sign_in_failed");
    let signed_in = ("staff:carol", "sign_in");
    assert_eq!(
        actions,
        [
            ("cli", "staff_add"),
            failed,
            failed,
            failed,
            failed,
            signed_in,
            failed,
            signed_in,
            ("cli", "staff_disable")
        ]
    );
    d.stop().await;
}

/// A burst of wrong passwords at once is not a burst of guesses: each attempt is counted
/// before its password is checked, so five are checked and the rest refused, and the right
/// password afterwards is refused too. A name without an account is held back the same way,
/// so the refusal does not tell which names exist.
#[tokio::test]
async fn a_burst_of_sign_ins_gets_five_password_checks() {
    use callverify::support::staff::StaffError;
    let d = crate::common::start(Db::Sqlite).await;
    let staff = std::sync::Arc::new(Staff::new(
        d.store.clone(),
        std::time::Duration::from_secs(3600),
    ));
    staff.add("dora", PASSWORD).await.unwrap();
    for name in ["dora", "nobody"] {
        let burst: Vec<_> = (0..40)
            .map(|_| {
                let staff = staff.clone();
                tokio::spawn(async move { staff.sign_in(name, "not the password").await })
            })
            .collect();
        let (mut checked, mut refused) = (0, 0);
        for attempt in burst {
            match attempt.await.unwrap() {
                Ok(None) => checked += 1,
                Err(StaffError::Throttled(_)) => refused += 1,
                other => panic!("{name}: {other:?}"),
            }
        }
        assert_eq!((checked, refused), (5, 35), "{name}");
        let last = staff.sign_in(name, PASSWORD).await.unwrap_err();
        assert_eq!(
            last.to_string(),
            format!("too many sign-ins for {name:?}: try again in 15 minutes")
        );
    }
    d.stop().await;
}

/// A sign-in form bigger than any real one is refused before it is read.
#[tokio::test]
async fn an_oversized_sign_in_form_is_refused_unread() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = crate::common::start(Db::Sqlite).await;
    let body = format!("username=alice&password={}&csrf=x", "a".repeat(2 << 20));
    let mut s = tokio::net::TcpStream::connect(d.http).await.unwrap();
    let head = format!(
        "POST /console/login HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
         Cookie: cv_login=x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The daemon may answer and close before the whole body is sent.
    let _ = s.write_all(body.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 413"), "{answer}");
    // The framework's own error page is hardened like the console's pages.
    assert!(
        answer.contains("x-content-type-options: nosniff"),
        "{answer}"
    );
    assert!(
        answer.contains("content-security-policy: default-src 'none'"),
        "{answer}"
    );
    d.stop().await;
}

/// The sign-in form's token is the server's, not a cookie the client chose: a token and
/// cookie made up alike (as a cookie planted from a sibling domain would be) are refused.
#[tokio::test]
async fn a_sign_in_token_the_client_chose_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = crate::common::start(Db::Sqlite).await;
    Staff::new(d.store.clone(), std::time::Duration::from_secs(3600))
        .add("alice", PASSWORD)
        .await
        .unwrap();
    let body = format!(
        "username=alice&password={}&csrf=made-up",
        PASSWORD.replace(' ', "+")
    );
    let mut s = tokio::net::TcpStream::connect(d.http).await.unwrap();
    let request = format!(
        "POST /console/login HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
         Cookie: cv_login=made-up\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(!answer.contains("cv_session="), "signed in: {answer}");
    d.stop().await;
}

/// A PNG's width and height (its IHDR chunk).
fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let word = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    (word(16), word(20))
}

/// Save a screenshot of the page beside the test's other output, and check its size.
async fn screenshot(browser: &Browser, name: &str) {
    let png = browser.screenshot().await;
    let (width, height) = png_size(&png);
    assert_eq!((width, height), (1280, 800), "{name}");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, &png).unwrap();
    println!("screenshot {name}: {} ({width}×{height})", path.display());
}

/// The desk's day: search by each key from one box, page through 1,200 requests, the counts
/// per status, open one and see why its call failed, approve it with its confirmation; at a
/// 1280×800 viewport.
#[tokio::test]
async fn the_desk_searches_pages_and_decides_with_confirmation() {
    let (d, verification) = daemon_with_a_message().await;
    let now = callverify::domain::clock::now_ms();
    let filler = |id: &str, at: i64, caller: Option<&str>, transcript: &str| NewManualRequest {
        id: id.into(),
        created_at: at,
        caller: caller.map(str::to_owned),
        caller_match: if caller.is_some() {
            CallerMatch::Unmatched
        } else {
            CallerMatch::Withheld
        },
        verification_id: None,
        ended_by: "key",
        duration_ms: 3000,
        recording: callverify_audio::wav::encode(&[0; 8], 8000),
        transcript: Some(transcript.into()),
        language: "en".into(),
    };
    let zoe = "my username is zoe and my email is zoe at example dot com";
    let mut messages = vec![filler("mr_zoe", now - 2_000_000, None, zoe)];
    for i in 0..1200 {
        let id = format!("mr_fill{i:04}");
        messages.push(filler(&id, now - 1_000_000 + i, None, "hello"));
    }
    // The same caller again, later.
    messages.push(filler(
        "mr_again",
        now - 1000,
        Some(PHONE),
        "it is me again",
    ));
    for m in messages {
        d.store.insert_manual_request(m).await.unwrap();
    }
    let matched = d
        .store
        .manual_requests(callverify::support::request::RequestFilter {
            search: callverify::support::request::Search::parse(&verification).unwrap(),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .requests[0]
        .id
        .clone();
    let browser = Browser::start().await;
    let base = format!("http://{}", d.http);
    browser.go(&format!("{base}/console/login")).await;
    // A 1280×800 viewport: the window less what its frame takes.
    browser.window_size(1280, 800).await;
    let (_, inner) = png_size(&browser.screenshot().await);
    browser.window_size(1280, 1600 - inner).await;
    browser.type_into("#username", "alice").await;
    browser.type_into("#password", PASSWORD).await;
    browser.click("#sign-in").await;
    browser.wait_for_url("/console/").await;
    browser.wait_for_text("#tab-open .count", "1203").await;
    screenshot(&browser, "queue").await;

    // One box, each key.
    let searches: [(&str, Vec<&str>); 5] = [
        ("(415) 555-0101", vec![&matched, "mr_again"]),
        ("ALICE-USER", vec![&matched]),
        (&verification, vec![&matched]),
        (&matched, vec![&matched]),
        ("zoe at EXAMPLE", vec!["mr_zoe"]),
    ];
    for (q, expected) in searches {
        browser.go(&format!("{base}/console/?status=all")).await;
        browser.type_into("#q", q).await;
        browser.click("#search").await;
        browser.wait_for_url(&format!("q={}", urlencoded(q))).await;
        assert_eq!(
            browser.count("#queue tbody tr").await,
            expected.len(),
            "{q}"
        );
        let rows = browser.source().await;
        for id in expected {
            assert!(
                rows.contains(&format!("/console/requests/{id}\"")),
                "{q}: {id}"
            );
        }
    }

    // Page through the open queue: every request once.
    browser.go(&format!("{base}/console/?status=open")).await;
    let mut seen = std::collections::HashSet::new();
    let mut pages = 0;
    loop {
        let source = browser.source().await;
        for part in source.split("/console/requests/").skip(1) {
            let id = part.split('"').next().unwrap().to_owned();
            assert!(seen.insert(id.clone()), "{id} twice");
        }
        pages += 1;
        let more = browser
            .count_within("#next-page", Duration::from_millis(300))
            .await;
        if more == 0 {
            break;
        }
        let cursor = source
            .split("id=\"next-page\" rel=\"next\" href=\"")
            .nth(1)
            .and_then(|link| link.split('"').next())
            .and_then(|link| link.split("cursor=").nth(1))
            .unwrap()
            .to_owned();
        browser.click("#next-page").await;
        browser.wait_for_url(&format!("cursor={cursor}")).await;
    }
    assert_eq!(seen.len(), 1203);
    assert_eq!(pages, 25, "50 a page");

    // Its history says why the call did not verify: three wrong keyed codes, the lockout,
    // and the same caller's other request.
    browser
        .go(&format!("{base}/console/requests/{matched}"))
        .await;
    browser.wait_for_text("#caller", PHONE).await;
    browser
        .wait_for_text("#calls tbody tr td:nth-child(3)", "locked_out")
        .await;
    assert_eq!(browser.count("#checks tbody tr").await, 3);
    let page = browser.source().await;
    assert_eq!(page.matches("<td>keyed</td><td>wrong</td>").count(), 3);
    for digits in ["000000", "111111", "222222"] {
        assert!(!page.contains(digits), "never the digits");
    }
    browser
        .wait_for_text("#lockout", "The number and the user were locked out until")
        .await;
    assert!(
        page.contains("href=\"/console/requests/mr_again\""),
        "the same caller's other request"
    );
    screenshot(&browser, "request").await;

    // Approve: a second step, cancel, then confirm.
    browser.click("#approve").await;
    browser
        .wait_for_text("#confirm-text", "Approve request")
        .await;
    browser.click("#cancel").await;
    browser.wait_for_text("#status", "open").await;
    assert_eq!(d.status(&verification).await.status, Status::Failed);
    browser.click("#approve").await;
    browser.click("#confirm").await;
    browser.wait_for_text("#status", "approved").await;
    assert_eq!(d.status(&verification).await.status, Status::Verified);
    browser.go(&format!("{base}/console/?status=open")).await;
    browser.wait_for_text("#tab-approved .count", "1").await;
    browser.wait_for_text("#tab-open .count", "1202").await;
    // Times in alice's zone, how long ago, the UTC timestamp on hover.
    let queue = browser.source().await;
    assert!(queue.contains(" PST <span class=\"ago\">("), "local times");
    assert!(queue.contains(" min ago)</span>"), "how long ago");
    assert!(queue.contains("title=\"20"), "the UTC time on hover");

    // The audit view: administrators only.
    assert_eq!(
        browser
            .count_within("#audit-link", Duration::from_millis(300))
            .await,
        0
    );
    browser.go(&format!("{base}/console/audit")).await;
    browser.wait_for_text("h1", "Administrators only").await;
    Staff::new(d.store.clone(), Duration::from_secs(3600))
        .set("alice", StaffRole::Admin, Some("America/Los_Angeles"))
        .await
        .unwrap();
    browser.go(&format!("{base}/console/")).await;
    browser.click("#audit-link").await;
    browser.wait_for_text("h1", "Audit log").await;
    browser.type_into("#action", "approve").await;
    browser.click("#filter").await;
    browser.wait_for_url("action=approve&from=&to=").await;
    assert_eq!(browser.count("#audit tbody tr").await, 1);
    let audit = browser.source().await;
    assert!(audit.contains("staff:alice") && audit.contains(&format!(">{matched}</a>")));
    // No second "open" after the decision, and the decision's CSV for today.
    let opens = d.store.audit_entries(&matched).await.unwrap();
    let actions: Vec<&str> = opens.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["open", "approve"], "one open, one decision");
    let today = jiff::Timestamp::now()
        .to_zoned_datetime(jiff::tz::TimeZone::get("America/Los_Angeles").unwrap())
        .date()
        .to_string();
    let session = browser.cookie("cv_session").await.unwrap();
    let csv = reqwest::Client::new()
        .get(format!(
            "{base}/console/audit/decisions.csv?from={today}&to={today}"
        ))
        .header("cookie", format!("cv_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status().as_u16(), 200);
    assert!(csv.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains(".csv"));
    let csv = csv.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "at_utc,at_local,staff,decision,request,detail");
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(
        lines[1].contains(&format!(
            r#","staff:alice","approve","{matched}","verified {verification}""#
        )),
        "{csv}"
    );
    screenshot(&browser, "audit").await;

    // On a tablet (768 px wide) the page itself does not scroll sideways: wide tables do.
    browser.window_size(768, 1024).await;
    browser.go(&format!("{base}/console/?status=open")).await;
    browser.wait_for_text("#tab-open .count", "1202").await;
    let widths = browser
        .run_async(
            "const done = arguments[arguments.length - 1];\
             done({page: document.documentElement.scrollWidth, view: window.innerWidth});",
        )
        .await;
    assert!(
        widths["page"].as_i64() <= widths["view"].as_i64(),
        "{widths}"
    );
    d.stop().await;
}

fn urlencoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A client that sees the console's redirects (a signed-in form answers 303).
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A sign-in form's token from the daemon at `http` (its cookie holds the same).
async fn login_token(client: &reqwest::Client, http: std::net::SocketAddr) -> String {
    let page = client
        .get(format!("http://{http}/console/login"))
        .send()
        .await
        .unwrap();
    let cookie = page.headers()["set-cookie"].to_str().unwrap();
    let token = cookie.strip_prefix("cv_login=").unwrap().split(';').next();
    token.unwrap().to_owned()
}

/// Post the sign-in form to the daemon at `http`: the answer's status.
async fn post_sign_in(
    client: &reqwest::Client,
    http: std::net::SocketAddr,
    token: &str,
    username: &str,
    password: &str,
) -> u16 {
    let body = format!(
        "username={}&password={}&csrf={token}",
        urlencoded(username),
        urlencoded(password)
    );
    client
        .post(format!("http://{http}/console/login"))
        .header("cookie", format!("cv_login={token}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The rows of the audit log, read behind the store's back.
async fn audit_rows(d: &Daemon) -> i64 {
    use sqlx::Row;
    let mut db = crate::common::raw_connection(&d.config.database.url)
        .await
        .unwrap();
    sqlx::query("SELECT COUNT(*) AS n FROM audit_log")
        .fetch_one(&mut db)
        .await
        .unwrap()
        .get("n")
}

/// How many answers had each status.
fn tally(statuses: impl IntoIterator<Item = u16>) -> std::collections::BTreeMap<u16, usize> {
    let mut tally = std::collections::BTreeMap::new();
    for status in statuses {
        *tally.entry(status).or_insert(0) += 1;
    }
    tally
}

/// A flood of sign-ins with a name no account can have (a script, a password typed into the
/// name field) is counted as one name: five are answered as wrong, the rest refused, and the
/// audit log gets a handful of entries, not one each.
async fn a_flood_of_sign_ins_without_a_staff_name_writes_a_handful_of_audit_entries(db: Db) {
    let d = crate::common::start(db).await;
    let client = no_redirects();
    let token = login_token(&client, d.http).await;
    let before = audit_rows(&d).await;
    let mut statuses = Vec::new();
    for _ in 0..1000 {
        statuses.push(post_sign_in(&client, d.http, &token, "x y", "not the password").await);
    }
    let written = audit_rows(&d).await - before;
    assert!(written <= 6, "{written} audit entries for 1,000 sign-ins");
    assert_eq!(tally(statuses), [(401, 5), (429, 995)].into());
    d.stop().await;
}

/// Anyone who reaches the console can try endless names of a staff name's shape, each five
/// times: failed sign-ins at names of no account are audited 100 an hour at most, all
/// together, then noted once as unaudited, also when they come at once; those at an account
/// are all audited still.
async fn failed_sign_ins_at_names_of_no_account_are_audited_within_a_budget(db: Db) {
    use callverify::support::request::AuditFilter;
    let d = crate::common::start(db).await;
    let staff = std::sync::Arc::new(Staff::new(d.store.clone(), Duration::from_secs(3600)));
    staff.add("erin", PASSWORD).await.unwrap();
    let tries: Vec<_> = (0..110)
        .map(|i| {
            let staff = staff.clone();
            tokio::spawn(async move { staff.sign_in(&format!("ghost{i}"), "a guess").await })
        })
        .collect();
    for t in tries {
        assert!(t.await.unwrap().unwrap().is_none());
    }
    for _ in 0..3 {
        assert!(staff.sign_in("erin", "a guess").await.unwrap().is_none());
    }
    let log = d
        .store
        .audit_log(AuditFilter {
            limit: 1000,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let count = |action: &str, at_ghosts: bool| {
        log.iter()
            .filter(|e| e.action == action && e.subject.starts_with("ghost") == at_ghosts)
            .count()
    };
    assert_eq!(count("sign_in_failed", true), 100, "{log:?}");
    assert!(log
        .iter()
        .filter(|e| e.subject.starts_with("ghost"))
        .all(|e| e.detail == "no such account"));
    assert_eq!(count("sign_in_unaudited", false), 1, "{log:?}");
    assert_eq!(count("sign_in_failed", false), 3, "{log:?}");
    d.stop().await;
}

on_both_backends!(
    a_flood_of_sign_ins_without_a_staff_name_writes_a_handful_of_audit_entries,
    failed_sign_ins_at_names_of_no_account_are_audited_within_a_budget,
);

/// Two daemons on one Postgres count sign-in attempts together, and a restart forgets none:
/// 40 parallel wrong passwords for one account, half to each daemon, get five password checks
/// (401, five failed sign-ins audited) and 35 refusals (429, one audited); after a restart
/// the right password is still refused.
#[tokio::test]
async fn two_daemons_give_a_burst_of_sign_ins_five_password_checks() {
    let first = crate::common::start(Db::Postgres).await;
    let second = crate::common::start_config(first.config.clone()).await;
    Staff::new(first.store.clone(), Duration::from_secs(3600))
        .add("dora", PASSWORD)
        .await
        .unwrap();
    let client = no_redirects();
    let burst: Vec<_> = (0..40)
        .map(|i| {
            let http = [first.http, second.http][i % 2];
            let client = client.clone();
            tokio::spawn(async move {
                let token = login_token(&client, http).await;
                post_sign_in(&client, http, &token, "dora", "not the password").await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for attempt in burst {
        statuses.push(attempt.await.unwrap());
    }
    assert_eq!(tally(statuses), [(401, 5), (429, 35)].into());
    let audit = first.store.audit_entries("dora").await.unwrap();
    let actions = tally(audit.iter().map(|a| match a.action.as_str() {
        "sign_in_failed" => 1,
        "sign_in_throttled" => 2,
        _ => 0,
    }));
    assert_eq!(actions, [(0, 1), (1, 5), (2, 1)].into(), "{audit:?}");

    second.stop().await;
    let (config, dir) = first.halt().await;
    let again = crate::common::start_config(config).await;
    let token = login_token(&client, again.http).await;
    assert_eq!(
        post_sign_in(&client, again.http, &token, "dora", PASSWORD).await,
        429,
        "the count survives a restart"
    );
    again.stop().await;
    drop(dir);
}
