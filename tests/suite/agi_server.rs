//! The FastAGI server under bad and hostile peers: malformed or oversized environment blocks,
//! silent peers, peers outside the allowlist, more peers than the session cap, and a graceful
//! shutdown with a call in progress. None of it may kill the daemon or leak a session.

use std::time::Duration;

use crate::common::{Daemon, Db, PHONE};
use callverify::domain::status::{CallOutcome, Status};
use callverify_testkit::emulator::{outbound_env, Action, Call};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Send `bytes`, then read until the daemon closes; returns what it sent back.
async fn send_and_read_to_close(d: &Daemon, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(d.addr).await.unwrap();
    // The daemon may close before it has read everything: a failed write is fine here.
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the daemon must close the connection")
        .ok();
    out
}

/// A normal call still verifies.
async fn still_verifies(d: &Daemon, phone: &str) {
    d.verify_by_keypad(phone, phone).await;
}

/// Open a FastAGI call for verification `id` and read the daemon's first command.
async fn open_call(d: &Daemon, id: &str) -> TcpStream {
    let mut s = TcpStream::connect(d.addr).await.unwrap();
    let mut block = outbound_env("verify", &[id]).join("\n");
    block.push_str("\n\n");
    s.write_all(block.as_bytes()).await.unwrap();
    let mut first = [0u8; 7];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"ANSWER\n");
    s
}

/// A daemon allowing only two sessions at once: a leaked session would soon lock it up.
async fn small_daemon() -> Daemon {
    crate::common::start_with(Db::Sqlite, |c| c.agi.max_sessions = 2).await
}

#[tokio::test]
async fn malformed_environment_blocks_are_closed_on() {
    let d = small_daemon().await;
    let flood: String = (0..300).map(|i| format!("agi_arg_{i}: x\n")).collect();
    let huge = format!(
        "agi_network: yes\nagi_calleridname: {}\n\n",
        "A".repeat(9000)
    );
    let cases: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"agi_network: yes\n\n".to_vec(), // no agi_network_script
        b"\n".to_vec(),
        b"agi_network_script: verify\x00\xff\xfe garbage without colon\n\n".to_vec(),
        huge.into_bytes(),
        vec![b'x'; 100_000],
        format!("agi_network_script: verify\n{flood}\n").into_bytes(),
    ];
    for bytes in cases {
        let answer = send_and_read_to_close(&d, &bytes).await;
        assert!(
            answer.is_empty(),
            "no command may follow a bad block: {answer:?}"
        );
    }
    still_verifies(&d, "+14155550111").await;
    d.stop().await;
}

#[tokio::test]
async fn peers_that_go_silent_or_vanish_are_closed_on() {
    let d = small_daemon().await;
    // Connects and says nothing: closed after agi.env_timeout_secs (1 s in tests).
    let started = std::time::Instant::now();
    assert!(send_and_read_to_close(&d, b"").await.is_empty());
    assert!(started.elapsed() < Duration::from_secs(4));
    // Half an environment block, then silence.
    assert!(
        send_and_read_to_close(&d, b"agi_network: yes\nagi_network_script: verify\n")
            .await
            .is_empty()
    );
    // A call that stops answering mid-call: the daemon gives up after the reply timeout.
    let v = d.new_verification(PHONE, "silent").await;
    let mut s = open_call(&d, &v.id).await;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("closed after the reply timeout")
        .unwrap();
    // A peer that vanishes mid-call.
    let v2 = d.new_verification("+14155550112", "vanish").await;
    drop(open_call(&d, &v2.id).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for id in [&v.id, &v2.id] {
        let attempts = d.store.attempts(id).await.unwrap();
        assert_eq!(attempts.len(), 1);
        assert!(attempts[0].ended_at.is_some(), "attempt closed");
        assert_eq!(d.status(id).await.status, Status::Pending);
    }
    still_verifies(&d, "+14155550113").await;
    d.stop().await;
}

#[tokio::test]
async fn garbage_replies_end_the_call_but_not_the_daemon() {
    let d = small_daemon().await;
    let v = d.new_verification(PHONE, "garbage").await;
    let mut s = open_call(&d, &v.id).await;
    s.write_all(&vec![b'2'; 20_000]).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("the daemon closes on an oversized reply")
        .ok();
    still_verifies(&d, "+14155550114").await;
    d.stop().await;
}

#[tokio::test]
async fn peers_outside_the_allowlist_are_refused() {
    let d =
        crate::common::start_with(Db::Sqlite, |c| c.agi.allow = vec!["10.9.8.0/24".into()]).await;
    let v = d.new_verification(PHONE, "outsider").await;
    let t = Call::verify(&v.id).press("#").run(d.addr).await.unwrap();
    assert!(t.commands.is_empty(), "{:?}", t.commands);
    assert!(t.closed_by_daemon);
    assert!(d.store.attempts(&v.id).await.unwrap().is_empty());
    d.stop().await;
}

/// Over the cap, a call waits a moment for a place instead of being reset at once: one that
/// comes while both places are taken verifies when one frees up.
#[tokio::test]
async fn a_call_over_the_cap_waits_for_a_place() {
    let d = small_daemon().await;
    let (go, hold) = tokio::sync::watch::channel(false);
    let mut held = Vec::new();
    for i in 0..2 {
        let v = d
            .new_verification(&format!("+1415555014{i}"), &format!("holder{i}"))
            .await;
        let call = Call::verify(&v.id)
            .press("#")
            .then(Action::Hold(hold.clone()))
            .press(v.code.as_deref().unwrap());
        let addr = d.addr;
        held.push(tokio::spawn(async move { call.run(addr).await }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v = d.new_verification("+14155550150", "patient").await;
    let call = Call::verify(&v.id)
        .press("#")
        .press(v.code.as_deref().unwrap());
    let addr = d.addr;
    let patient = tokio::spawn(async move { call.run(addr).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    go.send(true).unwrap();
    for h in held {
        h.await.unwrap().unwrap();
    }
    patient.await.unwrap().unwrap();
    assert_eq!(d.status(&v.id).await.status, Status::Verified);
    d.stop().await;
}

/// Peers that connect and say nothing hold a greeting place for agi.env_timeout_secs at
/// most, never a call's: two hundred of them at once do not keep calls out, even with
/// room for only two calls.
#[tokio::test]
async fn silent_connections_do_not_crowd_out_calls() {
    let d = small_daemon().await;
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(d.addr).await.unwrap());
    }
    let mut calls = Vec::new();
    for i in 0..4 {
        let v = d
            .new_verification(&format!("+1415555016{i}"), &format!("caller{i}"))
            .await;
        let call = Call::verify(&v.id)
            .press("#")
            .press(v.code.as_deref().unwrap());
        let addr = d.addr;
        calls.push((v.id, tokio::spawn(async move { call.run(addr).await })));
    }
    for (id, call) in calls {
        // A hang guard, not a timing target.
        tokio::time::timeout(Duration::from_secs(60), call)
            .await
            .expect("the call got through")
            .unwrap()
            .unwrap();
        assert_eq!(d.status(&id).await.status, Status::Verified);
    }
    drop(silent);
    d.stop().await;
}

/// When every place stays taken, a call is turned away after a short wait, and the cap
/// frees up when calls end.
#[tokio::test]
async fn sessions_over_the_cap_are_closed_and_the_cap_frees_up() {
    let d = small_daemon().await;
    let (go, hold) = tokio::sync::watch::channel(false);
    let mut waiting = Vec::new();
    let mut ids = Vec::new();
    for i in 0..2 {
        let v = d
            .new_verification(&format!("+1415555012{i}"), &format!("held{i}"))
            .await;
        ids.push(v.id.clone());
        let call = Call::verify(&v.id)
            .press("#")
            .then(Action::Hold(hold.clone()))
            .press(v.code.as_deref().unwrap());
        let addr = d.addr;
        waiting.push(tokio::spawn(async move { call.run(addr).await }));
    }
    // Wait until both held calls are in, then a third is turned away.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v = d.new_verification("+14155550130", "third").await;
    let t = Call::verify(&v.id).run(d.addr).await.unwrap();
    assert!(t.commands.is_empty());
    go.send(true).unwrap();
    for w in waiting {
        w.await.unwrap().unwrap();
    }
    for id in &ids {
        assert_eq!(d.status(id).await.status, Status::Verified);
    }
    still_verifies(&d, "+14155550131").await;
    d.stop().await;
}

#[tokio::test]
async fn shutdown_lets_a_call_in_progress_finish_and_stops_accepting() {
    let mut d = crate::common::start(Db::Sqlite).await;
    let v = d.new_verification(PHONE, "finisher").await;
    let (go, hold) = tokio::sync::watch::channel(false);
    let call = Call::verify(&v.id)
        .press("#")
        .then(Action::Hold(hold))
        .press(v.code.as_deref().unwrap());
    let addr = d.addr;
    let in_progress = tokio::spawn(async move { call.run(addr).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    d.signal_stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no new calls after the shutdown signal"
    );
    go.send(true).unwrap();
    let t = in_progress.await.unwrap().unwrap();
    assert!(t.closed_by_daemon);
    d.join().await;
    assert_eq!(d.status(&v.id).await.status, Status::Verified);
}

#[tokio::test]
async fn calls_past_the_grace_period_are_ended_and_recovered_as_interrupted() {
    let mut d = crate::common::start_with(Db::Sqlite, |c| c.agi.shutdown_grace_secs = 1).await;
    let v = d.new_verification(PHONE, "straggler").await;
    let (_go, hold) = tokio::sync::watch::channel(false);
    let call = Call::verify(&v.id).press("#").then(Action::Hold(hold));
    let addr = d.addr;
    let in_progress = tokio::spawn(async move { call.run(addr).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    d.signal_stop();
    d.join().await;
    in_progress.abort();
    // Recovered by the stop itself (the daemon then leaves the list of daemons, so no
    // takeover would): queued again at once, not left `calling` until it expires.
    assert_eq!(d.status(&v.id).await.status, Status::Pending);
    let attempts = d.store.attempts(&v.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, Some(CallOutcome::Interrupted));
    let recovered = d.service.recover_interrupted().await.unwrap();
    assert_eq!(
        (recovered.attempts, recovered.verifications),
        (0, 0),
        "nothing left for the next start"
    );
}

/// A stop whose cut-off calls take a while to close (the webhook sender's batch hangs on a
/// receiver that never answers, for up to 5 s) goes on heartbeating until they are closed:
/// until then another daemon on the store must not take them over.
#[tokio::test]
async fn a_stop_heartbeats_until_its_cut_off_calls_are_closed() {
    // Takes connections (the kernel's backlog) and never answers.
    let silent_receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", silent_receiver.local_addr().unwrap());
    let mut d = crate::common::start_with(Db::Sqlite, |c| {
        c.agi.shutdown_grace_secs = 1;
        c.database.heartbeat_secs = 1;
        c.database.takeover_after_secs = 3;
        c.webhooks.url = url;
        c.webhooks.secret = crate::common::hooks::SECRET.into();
        c.webhooks.timeout_secs = 60;
    })
    .await;
    let v = d.new_verification(PHONE, "cut off").await;
    let (_go, hold) = tokio::sync::watch::channel(false);
    let call = Call::verify(&v.id).press("#").then(Action::Hold(hold));
    let addr = d.addr;
    let in_progress = tokio::spawn(async move { call.run(addr).await });
    d.until_calls_in_progress(1).await;
    let (name, store) = (d.service.daemon().to_owned(), d.store.clone());
    // The daemon's last heartbeat, read until it leaves the list.
    let last_heartbeat = tokio::spawn({
        let name = name.clone();
        async move {
            let mut last = 0;
            while let Some(row) = store.daemon(&name).await.unwrap() {
                last = row.last_seen;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            last
        }
    });
    d.signal_stop();
    d.join().await;
    in_progress.abort();
    let last_heartbeat = tokio::time::timeout(Duration::from_secs(5), last_heartbeat)
        .await
        .expect("left the list once the cut-off call was closed")
        .unwrap();
    // And no heartbeat put it back on the list after it left.
    assert_eq!(d.store.daemon(&name).await.unwrap(), None, "left for good");
    // The cut-off call was closed after the grace (1 s) and the webhooks' wait (5 s): the
    // heartbeat (every second) went on until then.
    let closed: i64 = {
        use sqlx::Row;
        let mut db = crate::common::raw_connection(&d.config.database.url)
            .await
            .unwrap();
        sqlx::query("SELECT ended_at FROM call_attempts WHERE verification_id = ?")
            .bind(&v.id)
            .fetch_one(&mut db)
            .await
            .unwrap()
            .get("ended_at")
    };
    assert!(
        closed - last_heartbeat < 2_500,
        "no heartbeat in the {} ms before the cut-off call was closed",
        closed - last_heartbeat
    );
    assert_eq!(d.status(&v.id).await.status, Status::Pending);
}

/// The trunk calls counted on the store (every daemon's).
async fn trunk_calls(d: &Daemon) -> i64 {
    use sqlx::Row;
    let mut db = crate::common::raw_connection(&d.config.database.url)
        .await
        .unwrap();
    sqlx::query("SELECT COUNT(*) AS n FROM trunk_calls")
        .fetch_one(&mut db)
        .await
        .unwrap()
        .get("n")
}

/// A dialled call still in progress when the grace runs out: the stop itself closes its
/// attempt as interrupted, gives its place on the trunk back (dialer.max_concurrent holds
/// for every daemon on the store) and queues its verification again, since the daemon then
/// leaves the list of daemons and no takeover would.
async fn a_dialled_call_cut_off_after_the_grace_is_queued_again_and_frees_the_trunk(db: Db) {
    use callverify_testkit::emulator::ami::{AmiPeer, Callee, Keys};
    let peer = AmiPeer::start("callverify", "ami-test-secret")
        .await
        .unwrap();
    let port = peer.addr.port();
    let mut d = crate::common::start_with(db, |c| {
        c.agi.shutdown_grace_secs = 1;
        c.ami.host = "127.0.0.1".into();
        c.ami.port = port;
        c.ami.username = "callverify".into();
        c.ami.secret = "ami-test-secret".into();
        c.ami.keepalive_secs = 1;
        c.ami.action_timeout_secs = 2;
        c.dialer.max_per_second = 100;
        c.dialer.max_concurrent = 5;
        c.dialer.retry_delay_secs = 0;
    })
    .await;
    peer.set_agi(d.addr);
    let (_go, hold) = tokio::sync::watch::channel(false);
    peer.callee(PHONE, Callee::AnswerHolding(Keys::default(), hold));
    let v = d.new_verification(PHONE, "cut-off").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !d
        .store
        .attempts(&v.id)
        .await
        .unwrap()
        .iter()
        .any(|a| a.ended_at.is_none())
    {
        assert!(std::time::Instant::now() < deadline, "the call never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(trunk_calls(&d).await, 1);
    d.signal_stop();
    d.join().await;
    assert_eq!(d.status(&v.id).await.status, Status::Pending);
    let attempts = d.store.attempts(&v.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, Some(CallOutcome::Interrupted));
    assert_eq!(trunk_calls(&d).await, 0, "its trunk place given back");
}

crate::on_both_backends!(
    a_dialled_call_cut_off_after_the_grace_is_queued_again_and_frees_the_trunk
);
