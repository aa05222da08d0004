//! Spoken codes in the verification call, end to end: the emulated Asterisk runs
//! `EXEC AudioSocket` as the capture shows and streams Asterisk's own "Allison" digits
//! (through mu-law) for the code; the daemon's recogniser (Whisper, the real model) hears it.
//! Needs the `speech` feature and CALLVERIFY_TEST_SPEECH_MODEL (./scripts/test sets both).
#![cfg(feature = "speech")]

use std::time::Duration;

use crate::common::{Daemon, Db, PHONE};
use callverify::config::Config;
use callverify::domain::status::{CallOutcome, Status};
use callverify_testkit::corpus::{Voice, ALLISON_DIGITS};
use callverify_testkit::emulator::{AfterTalk, Call, Talk};

fn with_speech(c: &mut Config) {
    c.speech.model = std::env::var("CALLVERIFY_TEST_SPEECH_MODEL").unwrap_or_else(|_| {
        panic!(
            "CALLVERIFY_TEST_SPEECH_MODEL is not set: point it at a CTranslate2 Whisper model \
             (./scripts/fetch-speech-model prints one; ./scripts/test sets it)"
        )
    });
    // The emulated prompts take no time; a real call's reply waits are longer.
    c.agi.reply_timeout_secs = 60;
}

fn voice() -> Voice {
    Voice::load(std::path::Path::new(ALLISON_DIGITS)).expect("Allison's digits")
}

/// A new verification whose code is `code`. The tests say fixed codes, so that what the
/// recogniser hears is the same on every run (its accuracy over many codes has its own
/// test); the daemon drew a random one, so the stored hash is replaced.
async fn code_of(d: &Daemon, user: &str, code: &str) -> (String, String) {
    use sqlx::Connection;
    let v = d.new_verification(PHONE, user).await;
    let security = &d.config.security;
    let key = callverify::domain::codes::server_key(
        &security.secret,
        std::path::Path::new(&security.secret_file),
    )
    .unwrap();
    let hash = callverify::domain::codes::CodeHasher::new(key).hash(&v.id, code);
    let mut db = crate::common::raw_connection(&d.config.database.url)
        .await
        .unwrap();
    sqlx::query("UPDATE verifications SET code_hash = $1 WHERE id = $2")
        .bind(hash)
        .bind(&v.id)
        .execute(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();
    (v.id, code.to_owned())
}

/// Another code of the same length: each digit of `code` plus five.
fn misheard(code: &str) -> String {
    code.chars()
        .map(|c| char::from(b'0' + (c as u8 - b'0' + 5) % 10))
        .collect()
}

async fn outcomes(d: &Daemon, id: &str) -> Vec<Option<CallOutcome>> {
    let attempts = d.store.attempts(id).await.unwrap();
    attempts.iter().map(|a| a.outcome).collect()
}

async fn spoken_and_keyed_codes_verify(db: Db) {
    let d = crate::common::start_with(db, with_speech).await;
    let voice = voice();

    // Said: heard, checked, verified.
    let (id, code) = code_of(&d, "speaker", "482913").await;
    let t = Call::verify(&id)
        .press("#")
        .talk(Talk::new().say(voice.say(&code, 1)))
        .run(d.addr)
        .await
        .unwrap();
    assert!(t
        .commands
        .iter()
        .any(|c| c.starts_with("EXEC AudioSocket ")));
    assert_eq!(t.count_prompt("callverify/verified"), 1, "{:?}", t.commands);
    assert_eq!(d.status(&id).await.status, Status::Verified);

    // Keyed while the daemon listens: DTMF over AudioSocket counts as keys.
    let (id, code) = code_of(&d, "keyer", "570264").await;
    let mut talk = Talk::new().pause(400);
    for key in code.chars() {
        talk = talk.key(key);
    }
    let t = Call::verify(&id)
        .press("#")
        .talk(talk.key('#'))
        .run(d.addr)
        .await
        .unwrap();
    assert_eq!(t.count_prompt("callverify/verified"), 1, "{:?}", t.commands);

    // A wrong code read back and not confirmed costs no attempt; then the right one.
    let (id, code) = code_of(&d, "corrected", "913857").await;
    let t = Call::verify(&id)
        .press("#")
        .talk(Talk::new().say(voice.say(&misheard(&code), 2)))
        .press("2")
        .talk(Talk::new().say(voice.say(&code, 3)))
        .run(d.addr)
        .await
        .unwrap();
    assert_eq!(t.count_prompt("callverify/you-said"), 1, "{:?}", t.commands);
    assert!(
        t.commands.iter().any(|c| c.starts_with("SAY DIGITS ")),
        "the heard code is read back"
    );
    assert_eq!(t.count_prompt("callverify/code-incorrect"), 0);
    let view = d.status(&id).await;
    assert_eq!(view.status, Status::Verified);
    assert_eq!(
        view.attempts_remaining, 3,
        "the unconfirmed slip cost nothing"
    );

    // The caller hangs up while speaking: the call ends cleanly as hung up.
    let (id, code) = code_of(&d, "leaver", "206481").await;
    let half = voice.say(&code[..3], 4);
    let t = Call::verify(&id)
        .press("#")
        .talk(
            Talk::new()
                .say(half[..8000].to_vec())
                .then(AfterTalk::HangUp),
        )
        .run(d.addr)
        .await
        .unwrap();
    assert!(t.closed_by_daemon);
    assert_eq!(outcomes(&d, &id).await, vec![Some(CallOutcome::HungUp)]);
    d.stop().await;
}

/// The trailing silence [`Voice::say`] adds after the code.
const TRAILING_SILENCE: usize = 3 * 8000;

async fn said_then_pound_over_noise_and_in_other_languages(db: Db) {
    let d = crate::common::start_with(db, with_speech).await;
    let voice = voice();

    // Said, then `#` at once (capture excerpt 2): the key ends the turn, what was said counts.
    let (id, code) = code_of(&d, "pounder", "748305").await;
    let said = voice.say(&code, 6);
    let t = Call::verify(&id)
        .press("#")
        .talk(
            Talk::new()
                .say(said[..said.len() - TRAILING_SILENCE].to_vec())
                .key('#'),
        )
        .run(d.addr)
        .await
        .unwrap();
    assert_eq!(t.count_prompt("callverify/verified"), 1, "{:?}", t.commands);
    assert_eq!(d.status(&id).await.status, Status::Verified);

    // Said over line noise.
    let (id, code) = code_of(&d, "noisy", "395172").await;
    let t = Call::verify(&id)
        .press("#")
        .talk(Talk::new().say(voice.say_over_noise(&code, 7)))
        .run(d.addr)
        .await
        .unwrap();
    assert_eq!(t.count_prompt("callverify/verified"), 1, "{:?}", t.commands);

    // A Spanish callee is asked for keys only: the recogniser hears English.
    let v = d
        .service
        .start(callverify::domain::NewVerification {
            phone: PHONE.into(),
            user_ref: "hablante".into(),
            locale: Some("es".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .view;
    let t = Call::verify(&v.id)
        .press("#")
        .press(v.code.as_deref().unwrap())
        .run(d.addr)
        .await
        .unwrap();
    assert_eq!(
        t.count_prompt("callverify/enter-code"),
        1,
        "{:?}",
        t.commands
    );
    assert_eq!(t.count_prompt("callverify/say-or-enter-code"), 0);
    assert!(!t.commands.iter().any(|c| c.starts_with("EXEC AudioSocket")));
    assert_eq!(d.status(&v.id).await.status, Status::Verified);
    d.stop().await;
}

async fn without_a_working_audiosocket_the_keypad_takes_over(db: Db) {
    // Asterisk cannot reach the advertised address (capture session 7): 200 result=-1 on a
    // live channel, then keypad entry.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let d = crate::common::start_with(db, |c| {
        with_speech(c);
        c.speech.advertise = closed.to_string();
    })
    .await;
    let (id, code) = code_of(&d, "keypad", "651490").await;
    let t = Call::verify(&id)
        .press("#")
        // No key during the prompt; AudioSocket is tried (and fails); then the keypad.
        .talk(Talk::new())
        .press(&format!("{code}#"))
        .run(d.addr)
        .await
        .unwrap();
    assert!(!t.audio[0].connected);
    assert_eq!(
        t.count_prompt("callverify/use-keypad"),
        1,
        "{:?}",
        t.commands
    );
    assert_eq!(d.status(&id).await.status, Status::Verified);
    d.stop().await;
}

async fn a_stream_without_frames_ends_listening(db: Db) {
    // A channel that sends no audio at all (a Local channel in Wait()): the daemon's silence
    // keeps Asterisk's 2 s timer from firing, and its own backstop ends the turn.
    let d = crate::common::start_with(db, |c| {
        with_speech(c);
        c.speech.max_listen_ms = 1000;
        c.verification.entry_silences = 1;
    })
    .await;
    let (id, _) = code_of(&d, "mute", "104729").await;
    let t = Call::verify(&id)
        .press("#")
        .talk(Talk::new().no_frames(Duration::from_secs(30)))
        .run(d.addr)
        .await
        .unwrap();
    assert!(t.audio[0].hangup_message, "the daemon ended the stream");
    assert!(
        t.audio[0].frames_from_daemon > 10,
        "keep-alive silence was sent"
    );
    assert_eq!(t.count_prompt("callverify/no-input"), 1, "{:?}", t.commands);
    assert_eq!(outcomes(&d, &id).await, vec![Some(CallOutcome::NoInput)]);
    d.stop().await;
}

/// Seen on a real Asterisk 22: a caller on a channel that sends no frames while silent (a
/// Local channel; SIP with silence suppression) said the code three times with 8 s pauses,
/// and the readings ran together, because the pauses never arrived as audio. A gap in the
/// frames is silence by the wall clock: the first reading ends listening and verifies.
async fn a_channel_silent_between_readings_verifies_on_the_first(db: Db) {
    let d = crate::common::start_with(db, with_speech).await;
    let voice = voice();
    let (id, code) = code_of(&d, "vad", "305817").await;
    let said = voice.say(&code, 5);
    let reading = said[..said.len() - TRAILING_SILENCE].to_vec();
    let mut talk = Talk::new().paced(Duration::from_millis(20));
    for _ in 0..3 {
        talk = talk.say(reading.clone()).no_frames(Duration::from_secs(8));
    }
    let t = Call::verify(&id)
        .press("#")
        .talk(talk.then(AfterTalk::Quiet))
        .run(d.addr)
        .await
        .unwrap();
    assert_eq!(t.count_prompt("callverify/verified"), 1, "{:?}", t.commands);
    assert_eq!(d.status(&id).await.status, Status::Verified);
    assert!(t.audio[0].hangup_message, "the daemon ended the stream");
    // One reading was heard, not three run together: no wrong code was counted.
    assert_eq!(
        t.count_prompt("callverify/code-incorrect"),
        0,
        "{:?}",
        t.commands
    );
    assert_eq!(d.status(&id).await.attempts_remaining, 3);
    d.stop().await;
}

async fn support_messages_get_a_transcript(db: Db) {
    let d = crate::common::start_with(db, |c| {
        with_speech(c);
        c.support.days = Vec::new();
    })
    .await;
    let env = callverify_testkit::emulator::inbound_env("manual", PHONE, 0);
    let t = Call::with_env(env)
        .talk(Talk::new().say(voice().say("4829", 5)))
        .run(d.addr)
        .await
        .unwrap();
    assert_eq!(t.count_prompt("callverify/support-thanks"), 1);
    let transcript = transcript_of_the_request(&d).await;
    assert_eq!(callverify_speech::digits::digits_in(&transcript), "4829");
    d.stop().await;
}

/// A daemon stopped while it wrote a message's transcript (it runs in the background, after
/// the caller heard "thank you") leaves the request without one: the next daemon writes it.
async fn a_transcript_a_stop_left_unwritten_is_written_later(db: Db) {
    let d = crate::common::start_with(db, with_speech).await;
    let kept_before_the_stop = callverify::domain::clock::now_ms() - 20 * 60_000;
    let samples = voice().say("6175", 5);
    let request = callverify::support::request::NewManualRequest {
        id: "mr_lost".into(),
        created_at: kept_before_the_stop,
        caller: Some(PHONE.into()),
        caller_match: callverify::domain::status::CallerMatch::Unmatched,
        verification_id: None,
        ended_by: "silence",
        duration_ms: (samples.len() / 8) as i64,
        recording: callverify_audio::wav::encode(&samples, 8000),
        transcript: None,
        language: "en".into(),
    };
    let quota = callverify::support::MessageQuota {
        per_caller_per_day: 10,
        per_hour: 10,
        max_bytes: 10_000_000,
    };
    d.store.keep_manual_request(request, quota).await.unwrap();
    // The next daemon on the store: its upkeep looks for lost transcripts at once (this
    // one's first look may have come before the request was there; the next is ten minutes
    // on).
    let (config, dir) = d.halt().await;
    let mut d = crate::common::start_config(config).await;
    d.dir = dir;
    let transcript = transcript_of_the_request(&d).await;
    assert_eq!(callverify_speech::digits::digits_in(&transcript), "6175");
    d.stop().await;
}

/// The transcript of the only support request, once it is written.
async fn transcript_of_the_request(d: &Daemon) -> String {
    let filter = callverify::support::request::RequestFilter {
        limit: 10,
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let requests = d
            .store
            .manual_requests(filter.clone())
            .await
            .unwrap()
            .requests;
        if let Some(text) = requests[0].transcript.clone() {
            return text;
        }
        assert!(std::time::Instant::now() < deadline, "no transcript");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A caller who keys one digit while the daemon listens and then waits, on a channel that
/// keeps sending (silent) audio: the key's timeout still ends the entry, and the short code
/// is checked (a wrong code), instead of the frames keeping the call waiting for keys.
async fn a_key_then_silence_ends_on_the_key_timeout(db: Db) {
    let d = crate::common::start_with(db, |c| {
        with_speech(c);
        c.verification.digit_timeout_ms = 1000;
    })
    .await;
    let (id, _) = code_of(&d, "hesitant", "618204").await;
    let talk = Talk::new()
        .paced(Duration::from_millis(20))
        .pause(400)
        .key('5')
        .then(AfterTalk::Silence);
    let call = Call::verify(&id).press("#").talk(talk).run(d.addr);
    // The silent tail lasts a minute: a daemon that waits for it is far past this.
    let t = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("the key's timeout ended the entry")
        .unwrap();
    assert!(
        t.count_prompt("callverify/code-incorrect") >= 1,
        "{:?}",
        t.commands
    );
    let stored = d.store.verification(&id).await.unwrap().unwrap();
    assert!(stored.attempts_used >= 1, "the keyed digit was checked");
    d.stop().await;
}

/// A read-back of a wrong spoken code tells the caller it was wrong: a guess that costs no
/// attempt when declined. A number and a user have two in all within the lockout window,
/// whatever the calls and verifications: a caller who says a wrong code in one call and
/// again in another call of another verification, declining both read-backs, is then asked
/// for the keypad, and so are the number's and the user's later calls.
async fn read_backs_are_few_across_a_numbers_calls(db: Db) {
    let d = crate::common::start_with(db, with_speech).await;
    let wrong = voice().say(&misheard("913857"), 2);
    let say_wrong_and_decline = |id: &str| {
        Call::verify(id)
            .press("#")
            .talk(Talk::new().say(wrong.clone()))
            .press("2")
    };

    // One read-back, declined; the caller hangs up at the next prompt.
    let (first, _) = code_of(&d, "guesser", "913857").await;
    let t = say_wrong_and_decline(&first)
        .hang_up()
        .run(d.addr)
        .await
        .unwrap();
    assert_eq!(t.count_prompt("callverify/you-said"), 1, "{:?}", t.commands);
    assert_eq!(
        t.count_prompt("callverify/say-or-enter-code"),
        2,
        "one read-back is left: the call offers speech again"
    );

    // Another verification of the number and user: the second read-back, and then the
    // keypad only.
    let (second, code) = code_of(&d, "guesser", "913857").await;
    let t = say_wrong_and_decline(&second)
        .press(&code)
        .run(d.addr)
        .await
        .unwrap();
    assert_eq!(t.count_prompt("callverify/you-said"), 1, "{:?}", t.commands);
    assert_eq!(
        t.count_prompt("callverify/say-or-enter-code"),
        1,
        "{:?}",
        t.commands
    );
    assert_eq!(
        t.count_prompt("callverify/use-keypad"),
        1,
        "{:?}",
        t.commands
    );
    let view = d.status(&second).await;
    assert_eq!(view.status, Status::Verified);
    assert_eq!(
        view.attempts_remaining, 3,
        "the declined read-backs cost nothing"
    );

    // Later calls of the number (another user), and of the user (another number), offer no
    // spoken entry.
    for (phone, user) in [(PHONE, "someone-else"), ("+14155550123", "guesser")] {
        let v = d.new_verification(phone, user).await;
        let t = Call::verify(&v.id)
            .press("#")
            .press(v.code.as_deref().unwrap())
            .run(d.addr)
            .await
            .unwrap();
        assert_eq!(t.count_prompt("callverify/say-or-enter-code"), 0, "{user}");
        assert!(!t.commands.iter().any(|c| c.starts_with("EXEC AudioSocket")));
        assert_eq!(
            t.count_prompt("callverify/use-keypad"),
            1,
            "{:?}",
            t.commands
        );
        assert_eq!(d.status(&v.id).await.status, Status::Verified);
    }
    d.stop().await;
}

on_both_backends!(
    read_backs_are_few_across_a_numbers_calls,
    a_key_then_silence_ends_on_the_key_timeout,
    support_messages_get_a_transcript,
    a_transcript_a_stop_left_unwritten_is_written_later,
    spoken_and_keyed_codes_verify,
    said_then_pound_over_noise_and_in_other_languages,
    without_a_working_audiosocket_the_keypad_takes_over,
    a_stream_without_frames_ends_listening,
    a_channel_silent_between_readings_verifies_on_the_first,
);
