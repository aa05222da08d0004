//! The verification call end to end: an emulated Asterisk 22 (answering byte for byte as the
//! captures show) calls the daemon's `verify` script; the store's state is checked after.
//! Every scenario runs on SQLite and on a real Postgres server.

use crate::common::{Daemon, Db, PHONE};
use callverify::domain::status::{CallOutcome, Status};
use callverify::domain::{NewVerification, VerifyError};
use callverify::flow::prompts::Prompt;
use callverify_testkit::emulator::{Action, Call};

pub(crate) fn wrong(code: &str) -> String {
    code.chars()
        .map(|c| if c == '9' { '0' } else { '9' })
        .collect()
}

async fn outcomes(d: &Daemon, id: &str) -> Vec<CallOutcome> {
    d.store
        .attempts(id)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.outcome.expect("attempt closed"))
        .collect()
}

/// A normal call still verifies: the daemon survived whatever came before.
async fn still_verifies(d: &Daemon) {
    d.verify_by_keypad("+14155550199", "healthy").await;
}

async fn happy_path(db: Db) {
    let d = crate::common::start(db).await;
    let v = d.new_verification(PHONE, "alice").await;
    let code = v.code.clone().unwrap();
    let t = Call::verify(&v.id)
        .press("#")
        .press(&format!("{code}#"))
        .run(d.addr)
        .await
        .unwrap();
    assert_eq!(t.commands[0], "ANSWER");
    assert_eq!(
        t.prompts(),
        vec![
            Prompt::Greeting.file(),
            Prompt::EnterCode.file(),
            Prompt::Verified.file(),
            Prompt::Goodbye.file()
        ]
    );
    assert_eq!(t.commands.last().unwrap(), "HANGUP");
    assert!(t.closed_by_daemon, "the daemon must close the socket");
    let view = d.status(&v.id).await;
    assert_eq!(view.status, Status::Verified);
    assert!(view.verified_at.is_some());
    assert_eq!(view.attempts_remaining, 3);
    assert_eq!(outcomes(&d, &v.id).await, vec![CallOutcome::Verified]);
    let attempt = &d.store.attempts(&v.id).await.unwrap()[0];
    assert_eq!(attempt.channel, "PJSIP/callverify-trunk-00000004");
    assert!(
        attempt.uniqueid.starts_with("1795786096."),
        "{}",
        attempt.uniqueid
    );
    d.stop().await;
}

async fn right_on_third_try(db: Db) {
    let d = crate::common::start(db).await;
    let v = d.new_verification(PHONE, "bob").await;
    let code = v.code.clone().unwrap();
    let t = Call::verify(&v.id)
        .press("#")
        .press(&wrong(&code))
        .press(&wrong(&code))
        .press(&code)
        .run(d.addr)
        .await
        .unwrap();
    assert_eq!(t.count_prompt(Prompt::CodeIncorrect.file()), 2);
    let view = d.status(&v.id).await;
    assert_eq!(view.status, Status::Verified);
    assert_eq!(view.attempts_remaining, 1);
    d.stop().await;
}

async fn three_wrong_entries_lock_out_number_and_user(db: Db) {
    let d = crate::common::start(db).await;
    let v = d.new_verification(PHONE, "carol").await;
    let sibling = d.new_verification("+14155550124", "carol").await;
    let bad = wrong(v.code.as_deref().unwrap());
    let t = Call::verify(&v.id)
        .press("#")
        .press(&bad)
        .press(&bad)
        .press(&bad)
        .run(d.addr)
        .await
        .unwrap();
    assert_eq!(t.count_prompt(Prompt::CodeIncorrect.file()), 3);
    assert_eq!(t.count_prompt(Prompt::LockedOut.file()), 1);
    let view = d.status(&v.id).await;
    assert_eq!(view.status, Status::Failed);
    assert_eq!(view.attempts_remaining, 0);
    assert_eq!(outcomes(&d, &v.id).await, vec![CallOutcome::LockedOut]);

    for (phone, user) in [(PHONE, "someone-else"), ("+14155550123", "carol")] {
        let err = d
            .service
            .start(NewVerification {
                phone: phone.into(),
                user_ref: user.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        match err {
            VerifyError::LockedOut { retry_at } => {
                let hours = (retry_at - callverify::domain::clock::now_ms()) as f64 / 3.6e6;
                assert!((23.9..=24.0).contains(&hours), "{hours}");
            }
            other => panic!("{other:?}"),
        }
    }
    // A failed verification cannot be called again, nor can another verification of the
    // locked user made before the lockout: the lockout ended it too, and its call says so.
    assert_eq!(d.status(&sibling.id).await.status, Status::Failed);
    for id in [&v.id, &sibling.id] {
        let t = Call::verify(id).press("#").run(d.addr).await.unwrap();
        assert_eq!(
            t.prompts()[0..2],
            [Prompt::LockedOut.file(), Prompt::Goodbye.file()]
        );
    }
    d.new_verification("+14155550123", "dave").await;
    d.stop().await;
}

/// The three tries are the number's: a call already waiting at code entry when a sibling
/// verification of its number uses up the tries hears that the number is locked out, even
/// with the right code, and its verification ends `failed`.
async fn a_siblings_lockout_ends_a_call_waiting_at_code_entry(db: Db) {
    let d = crate::common::start(db).await;
    let waiting = d.new_verification(PHONE, "frank").await;
    let sibling = d.new_verification(PHONE, "grace").await;
    let (go, hold) = tokio::sync::watch::channel(false);
    let first = Call::verify(&waiting.id)
        .press("#")
        .then(callverify_testkit::emulator::Action::Hold(hold))
        .press(waiting.code.as_deref().unwrap());
    let addr = d.addr;
    let first = tokio::spawn(async move { first.run(addr).await });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while d.status(&waiting.id).await.status != Status::Calling {
        assert!(
            std::time::Instant::now() < deadline,
            "the first call never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let bad = wrong(sibling.code.as_deref().unwrap());
    let t = Call::verify(&sibling.id)
        .press("#")
        .press(&bad)
        .press(&bad)
        .press(&bad)
        .run(d.addr)
        .await
        .unwrap();
    assert_eq!(t.count_prompt(Prompt::LockedOut.file()), 1);
    assert_eq!(d.status(&waiting.id).await.status, Status::Failed);
    go.send(true).unwrap();
    let t = first.await.unwrap().unwrap();
    assert_eq!(
        t.count_prompt(Prompt::LockedOut.file()),
        1,
        "{:?}",
        t.prompts()
    );
    assert_eq!(t.count_prompt(Prompt::Verified.file()), 0);
    assert_eq!(d.status(&waiting.id).await.status, Status::Failed);
    assert_eq!(
        outcomes(&d, &waiting.id).await,
        vec![CallOutcome::LockedOut]
    );
    d.stop().await;
}

/// Wrong codes in calls of one number's verifications add up: after three, the number is
/// locked out whichever verification they were made in.
async fn wrong_entries_count_across_a_numbers_verifications(db: Db) {
    let d = crate::common::start(db).await;
    let first = d.new_verification(PHONE, "heidi").await;
    let second = d.new_verification(PHONE, "ivan").await;
    let bad = wrong(first.code.as_deref().unwrap());
    let t = Call::verify(&first.id)
        .press("#")
        .press(&bad)
        .press(&bad)
        .hang_up()
        .run(d.addr)
        .await
        .unwrap();
    assert_eq!(t.count_prompt(Prompt::CodeIncorrect.file()), 2);
    // The tries left are the number's: a sibling that was never called, and one made now,
    // show the one try the number has left.
    assert_eq!(d.status(&second.id).await.attempts_remaining, 1);
    let third = d.new_verification(PHONE, "judy").await;
    assert_eq!(third.attempts_remaining, 1);
    let t = Call::verify(&second.id)
        .press("#")
        .press(&wrong(second.code.as_deref().unwrap()))
        .run(d.addr)
        .await
        .unwrap();
    assert_eq!(
        t.count_prompt(Prompt::LockedOut.file()),
        1,
        "{:?}",
        t.prompts()
    );
    for id in [&first.id, &second.id, &third.id] {
        let view = d.status(id).await;
        assert_eq!((view.status, view.attempts_remaining), (Status::Failed, 0));
    }
    d.stop().await;
}

async fn wrong_entries_count_across_calls(db: Db) {
    let d = crate::common::start(db).await;
    let v = d.new_verification(PHONE, "erin").await;
    let bad = wrong(v.code.as_deref().unwrap());
    Call::verify(&v.id)
        .press("#")
        .press(&bad)
        .hang_up()
        .run(d.addr)
        .await
        .unwrap();
    let view = d.status(&v.id).await;
    assert_eq!(view.status, Status::Pending);
    assert_eq!(view.attempts_remaining, 2);
    Call::verify(&v.id)
        .press("#")
        .press(&bad)
        .press(&bad)
        .run(d.addr)
        .await
        .unwrap();
    assert_eq!(d.status(&v.id).await.status, Status::Failed);
    assert_eq!(
        outcomes(&d, &v.id).await,
        vec![CallOutcome::HungUp, CallOutcome::LockedOut]
    );
    d.stop().await;
}

async fn silence_at_the_pound_prompt_ends_politely(db: Db) {
    let d = crate::common::start(db).await;
    let v = d.new_verification(PHONE, "frank").await;
    let t = Call::verify(&v.id).run(d.addr).await.unwrap();
    assert_eq!(t.count_prompt(Prompt::PressPound.file()), 3);
    assert_eq!(
        t.commands
            .iter()
            .filter(|c| c.starts_with("WAIT FOR DIGIT"))
            .count(),
        3
    );
    assert_eq!(t.count_prompt(Prompt::NoAcknowledgement.file()), 1);
    assert_eq!(t.commands.last().unwrap(), "HANGUP");
    let view = d.status(&v.id).await;
    assert_eq!(view.status, Status::Pending, "can be called again");
    assert_eq!(
        outcomes(&d, &v.id).await,
        vec![CallOutcome::NoAcknowledgement]
    );
    d.stop().await;
}

async fn wrong_key_at_the_pound_prompt_asks_again(db: Db) {
    let d = crate::common::start(db).await;
    let v = d.new_verification(PHONE, "grace").await;
    let t = Call::verify(&v.id)
        .press("5")
        .press("#")
        .press(v.code.as_deref().unwrap())
        .run(d.addr)
        .await
        .unwrap();
    assert_eq!(t.count_prompt(Prompt::NotPound.file()), 1);
    assert_eq!(d.status(&v.id).await.status, Status::Verified);
    d.stop().await;
}

async fn silence_at_the_code_prompt_uses_no_attempt(db: Db) {
    let d = crate::common::start(db).await;
    let v = d.new_verification(PHONE, "heidi").await;
    let t = Call::verify(&v.id)
        .press("#")
        .silence()
        .silence()
        .press(v.code.as_deref().unwrap())
        .run(d.addr)
        .await
        .unwrap();
    assert_eq!(t.count_prompt(Prompt::EnterCode.file()), 3);
    let view = d.status(&v.id).await;
    assert_eq!(view.status, Status::Verified);
    assert_eq!(view.attempts_remaining, 3);

    let v = d.new_verification("+14155550102", "ivan").await;
    let t = Call::verify(&v.id).press("#").run(d.addr).await.unwrap();
    assert_eq!(t.count_prompt(Prompt::EnterCode.file()), 3);
    assert_eq!(t.count_prompt(Prompt::NoInput.file()), 1);
    let view = d.status(&v.id).await;
    assert_eq!((view.status, view.attempts_remaining), (Status::Pending, 3));
    assert_eq!(outcomes(&d, &v.id).await, vec![CallOutcome::NoInput]);
    d.stop().await;
}

async fn hang_ups_are_recorded(db: Db) {
    let d = crate::common::start(db).await;
    // Before '#', during the greeting.
    let v = d.new_verification(PHONE, "judy").await;
    let t = Call::verify(&v.id).hang_up().run(d.addr).await.unwrap();
    assert!(t.closed_by_daemon);
    // During code entry; then, between commands (HANGUP before the reply).
    let v2 = d.new_verification("+14155550103", "ken").await;
    Call::verify(&v2.id)
        .press("#")
        .hang_up()
        .run(d.addr)
        .await
        .unwrap();
    Call::verify(&v2.id)
        .press("#")
        .then(Action::HangUpBetween)
        .run(d.addr)
        .await
        .unwrap();
    for (id, calls) in [(&v.id, 1), (&v2.id, 2)] {
        let view = d.status(id).await;
        assert_eq!((view.status, view.attempts_remaining), (Status::Pending, 3));
        assert_eq!(outcomes(&d, id).await, vec![CallOutcome::HungUp; calls]);
    }
    // And the same verification can still be completed.
    Call::verify(&v2.id)
        .press("#")
        .press(v2.code.as_deref().unwrap())
        .run(d.addr)
        .await
        .unwrap();
    assert_eq!(d.status(&v2.id).await.status, Status::Verified);
    d.stop().await;
}

async fn refusals_and_dead_channel_replies(db: Db) {
    let d = crate::common::start(db).await;
    let v = d.new_verification(PHONE, "leo").await;
    // 510 to the greeting: the flow cannot go on; the attempt is closed as an error.
    let t = Call::verify(&v.id)
        .reply_once(
            "STREAM FILE callverify/greeting",
            "510 Invalid or unknown command\n",
        )
        .run(d.addr)
        .await
        .unwrap();
    assert!(t.closed_by_daemon);
    // A 520 usage block to the code prompt.
    Call::verify(&v.id)
        .press("#")
        .reply_once(
            "GET DATA",
            "520-Invalid command syntax.  Proper usage follows:\nUsage: GET DATA <file to be streamed> [timeout] [maxdigits]\n520 End of proper usage.\n",
        )
        .run(d.addr)
        .await
        .unwrap();
    // 511 to ANSWER: the channel is already gone.
    Call::verify(&v.id)
        .reply_once(
            "ANSWER",
            "511 Command Not Permitted on a dead channel or intercept routine\n",
        )
        .run(d.addr)
        .await
        .unwrap();
    assert_eq!(
        outcomes(&d, &v.id).await,
        vec![CallOutcome::Error, CallOutcome::Error, CallOutcome::HungUp]
    );
    let view = d.status(&v.id).await;
    assert_eq!((view.status, view.attempts_remaining), (Status::Pending, 3));
    still_verifies(&d).await;
    d.stop().await;
}

async fn missing_prompt_is_not_a_hang_up(db: Db) {
    let d = crate::common::start(db).await;
    let v = d.new_verification(PHONE, "mallory").await;
    let t = Call::verify(&v.id)
        .missing_prompt(Prompt::Greeting.file())
        .press("#")
        .press(v.code.as_deref().unwrap())
        .run(d.addr)
        .await
        .unwrap();
    // result=-1 on a live channel: the daemon asked CHANNEL STATUS and carried on.
    assert_eq!(t.commands[2], "CHANNEL STATUS");
    assert_eq!(d.status(&v.id).await.status, Status::Verified);
    d.stop().await;
}

async fn unknown_and_missing_ids(db: Db) {
    let d = crate::common::start(db).await;
    for call in [
        Call::verify("vf_doesnotexist"),
        Call::verify("'; DROP TABLE verifications; --"),
        Call::with_env(callverify_testkit::emulator::outbound_env("verify", &[])),
    ] {
        let t = call.run(d.addr).await.unwrap();
        assert_eq!(
            t.prompts(),
            vec![Prompt::NotAvailable.file(), Prompt::Goodbye.file()]
        );
        assert_eq!(t.commands.last().unwrap(), "HANGUP");
        assert!(t.closed_by_daemon);
    }
    let t = Call::with_env(callverify_testkit::emulator::outbound_env(
        "nosuchscript",
        &[],
    ))
    .run(d.addr)
    .await
    .unwrap();
    assert_eq!(
        t.commands,
        vec![r#"VERBOSE "callverify: unknown script nosuchscript" 1"#]
    );
    still_verifies(&d).await;
    d.stop().await;
}

async fn expired_verification(db: Db) {
    let d = crate::common::start_with(db, |c| c.verification.code_ttl_secs = 0).await;
    let v = d.new_verification(PHONE, "nina").await;
    let t = Call::verify(&v.id).press("#").run(d.addr).await.unwrap();
    assert_eq!(t.prompts()[0], Prompt::Expired.file());
    assert_eq!(d.status(&v.id).await.status, Status::Expired);
    d.stop().await;
}

async fn qa_line_with_a_configured_code(db: Db) {
    let d = crate::common::start_with(db, |c| c.qa.code = "4821".into()).await;
    let t = Call::with_env(callverify_testkit::emulator::outbound_env("qa", &[]))
        .press("#")
        .press("4821")
        .run(d.addr)
        .await
        .unwrap();
    assert_eq!(t.count_prompt(Prompt::TestCodeIs.file()), 0);
    assert_eq!(t.count_prompt(Prompt::Verified.file()), 1);
    assert!(t.closed_by_daemon);
    d.stop().await;
}

async fn qa_line_says_a_random_code_and_locks_out_no_real_user(db: Db) {
    let d = crate::common::start(db).await;
    let t = Call::with_env(callverify_testkit::emulator::outbound_env("qa", &[]))
        .press("#")
        .press("0000000")
        .press("0000000")
        .press("0000000")
        .run(d.addr)
        .await
        .unwrap();
    let said = t
        .commands
        .iter()
        .find_map(|c| c.strip_prefix("SAY DIGITS "))
        .expect("the test code is said");
    let code = said.split(' ').next().unwrap();
    assert_eq!(code.len(), 6, "{said}");
    let test_code_is = t
        .commands
        .iter()
        .position(|c| c.contains(Prompt::TestCodeIs.file()))
        .unwrap();
    assert!(t.commands[test_code_is + 1].starts_with("SAY DIGITS"));
    assert_eq!(t.count_prompt(Prompt::LockedOut.file()), 1);
    // The lockout is the test call's own: real numbers and users are untouched.
    d.new_verification(PHONE, "alice").await;
    d.stop().await;
}

/// The QA call-back extensions ring only the numbers the admin listed: the daemon's gate
/// says `allowed` for one of `qa.callback_numbers` and `refused` for any other number (a
/// premium-rate one, one of a country not allowed, garbage); with none listed, for all.
#[tokio::test]
async fn qa_call_backs_ring_only_listed_numbers() {
    async fn gate(d: &Daemon, asked: &str) -> Vec<String> {
        let t = Call::with_env(callverify_testkit::emulator::outbound_env(
            "qa-callback",
            &[asked],
        ))
        .run(d.addr)
        .await
        .unwrap();
        assert!(t.closed_by_daemon, "{asked}");
        t.commands
    }
    let allowed = vec!["SET VARIABLE CALLVERIFY_QA_CALLBACK allowed".to_string()];
    let refused = vec!["SET VARIABLE CALLVERIFY_QA_CALLBACK refused".to_string()];
    let d = crate::common::start_with(Db::Sqlite, |c| {
        // Listed in another form than the dialplan passes: compared in E.164.
        c.qa.callback_numbers = vec!["+1 (415) 555-0102".into()];
        c.dialer.allowed_countries = vec!["US".into()];
    })
    .await;
    assert_eq!(gate(&d, "+14155550102").await, allowed);
    for asked in [
        "+14155550101",
        "+19005550103",
        "+16135550102",
        "14155550102x",
        "",
        "+14155550102'; DROP TABLE verifications; --",
    ] {
        assert_eq!(gate(&d, asked).await, refused, "{asked}");
    }
    let long = format!("+1415555010{}", "2".repeat(4000));
    assert_eq!(gate(&d, &long).await, refused);
    d.stop().await;
    let d = crate::common::start(Db::Sqlite).await;
    assert_eq!(gate(&d, "+14155550102").await, refused);
    d.stop().await;
}

/// A QA call whose caller never presses `#` is not queued for the dialer to call back: a
/// test verification has no number to call.
async fn an_unacknowledged_qa_call_is_not_called_again(db: Db) {
    use sqlx::Row;
    let d = crate::common::start_with(db, |c| c.verification.ack_wait_ms = 100).await;
    Call::with_env(callverify_testkit::emulator::outbound_env("qa", &[]))
        .run(d.addr)
        .await
        .unwrap();
    let mut db = crate::common::raw_connection(&d.config.database.url)
        .await
        .unwrap();
    let rows = sqlx::query("SELECT status, next_call_at FROM verifications WHERE is_test = 1")
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let status: String = rows[0].get("status");
    let next_call_at: Option<i64> = rows[0].get("next_call_at");
    assert_eq!((status.as_str(), next_call_at), ("pending", None));
    d.stop().await;
}

on_both_backends!(
    an_unacknowledged_qa_call_is_not_called_again,
    happy_path,
    right_on_third_try,
    three_wrong_entries_lock_out_number_and_user,
    a_siblings_lockout_ends_a_call_waiting_at_code_entry,
    wrong_entries_count_across_a_numbers_verifications,
    wrong_entries_count_across_calls,
    silence_at_the_pound_prompt_ends_politely,
    wrong_key_at_the_pound_prompt_asks_again,
    silence_at_the_code_prompt_uses_no_attempt,
    hang_ups_are_recorded,
    refusals_and_dead_channel_replies,
    missing_prompt_is_not_a_hang_up,
    unknown_and_missing_ids,
    expired_verification,
    qa_line_with_a_configured_code,
    qa_line_says_a_random_code_and_locks_out_no_real_user,
);
