//! The dialer against an emulated Asterisk Manager Interface that answers as the captures
//! show: a verification leads to one Originate; the answered call's FastAGI session verifies
//! it; busy, no answer, missing endpoints, a refused login, a dropped AMI connection and a
//! restarted daemon each end as they should, and no verification is ever in two calls.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use callverify::config::Config;
use std::sync::Arc;

use crate::common::{Daemon, Db, PHONE};
use callverify::domain::status::{CallOutcome, Status};
use callverify::domain::NewVerification;
use callverify_testkit::emulator::ami::{AmiPeer, Callee, Keys};

const SECRET: &str = "ami-test-secret";

fn with_ami(peer: &AmiPeer, secret: &str) -> impl FnOnce(&mut Config) {
    let (port, secret) = (peer.addr.port(), secret.to_owned());
    move |c: &mut Config| {
        c.ami.host = "127.0.0.1".into();
        c.ami.port = port;
        c.ami.username = "callverify".into();
        c.ami.secret = secret;
        c.ami.keepalive_secs = 1;
        c.ami.action_timeout_secs = 2;
        c.dialer.max_per_second = 100;
        c.dialer.max_concurrent = 20;
        c.dialer.max_dials = 2;
        c.dialer.retry_delay_secs = 0;
        c.dialer.ring_timeout_secs = 1;
    }
}

async fn setup(db: Db) -> (AmiPeer, Daemon) {
    let peer = AmiPeer::start("callverify", SECRET).await.unwrap();
    let d = crate::common::start_with(db, with_ami(&peer, SECRET)).await;
    peer.set_agi(d.addr);
    (peer, d)
}

async fn wait_for_status(d: &Daemon, id: &str, want: Status, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = d.status(id).await.status;
        if now == want {
            return;
        }
        assert!(Instant::now() < deadline, "{id} is {now}, not {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The outcomes of a verification's call attempts, once they are all closed (a call's
/// attempt is closed by the statement right after its verification's status changes).
async fn outcomes(d: &Daemon, id: &str) -> Vec<Option<CallOutcome>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempts = d.store.attempts(id).await.unwrap();
        let outcomes: Vec<_> = attempts.iter().map(|a| a.outcome).collect();
        if outcomes.iter().all(Option::is_some) || Instant::now() > deadline {
            return outcomes;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn answered_call_verifies(db: Db) {
    let (peer, d) = setup(db).await;
    let keys: Keys = Arc::default();
    peer.callee(PHONE, Callee::Answer(keys.clone()));
    let v = d.new_verification(PHONE, "alice").await;
    *keys.lock().unwrap() = vec!["#".into(), v.code.clone().unwrap()];
    wait_for_status(&d, &v.id, Status::Verified, Duration::from_secs(10)).await;
    let calls = peer.originated();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.channel, format!("PJSIP/{PHONE}@callverify-trunk"));
    assert_eq!(
        (call.context.as_str(), call.exten.as_str()),
        ("callverify-outbound", "s")
    );
    assert!(call.variables.contains(&format!("CALLVERIFY_ID={}", v.id)));
    assert!(call.variables.contains(&"CALLVERIFY_LANG=en".to_owned()));
    assert_eq!(call.channel_id, call.action_id);
    assert_eq!(outcomes(&d, &v.id).await, vec![Some(CallOutcome::Verified)]);
    let attempts = d.store.attempts(&v.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        attempts[0].uniqueid, call.channel_id,
        "AGI uniqueid ties to the ChannelId"
    );
    assert_eq!(attempts[0].outcome, Some(CallOutcome::Verified));
    // Logged in as the configured user (a loaded machine may miss a 1 s keep-alive and log
    // in again: every login is the same, and succeeds).
    let logins = peer.logins();
    assert!(!logins.is_empty());
    assert!(
        logins.iter().all(|l| *l == ("callverify".to_owned(), true)),
        "{logins:?}"
    );
    d.stop().await;
}

async fn busy_and_no_answer_are_retried_then_unanswered(db: Db) {
    let (peer, d) = setup(db).await;
    peer.callee(PHONE, Callee::Busy);
    peer.callee("+14155550102", Callee::NoAnswer);
    peer.callee("+14155550103", Callee::NoEndpoint);
    let busy = d.new_verification(PHONE, "busy").await;
    let ringing = d.new_verification("+14155550102", "ringing").await;
    let missing = d.new_verification("+14155550103", "missing").await;
    for id in [&busy.id, &ringing.id, &missing.id] {
        wait_for_status(&d, id, Status::Unanswered, Duration::from_secs(15)).await;
    }
    assert_eq!(
        outcomes(&d, &busy.id).await,
        vec![Some(CallOutcome::Busy); 2]
    );
    assert_eq!(
        outcomes(&d, &ringing.id).await,
        vec![Some(CallOutcome::NoAnswer); 2]
    );
    assert_eq!(
        outcomes(&d, &missing.id).await,
        vec![Some(CallOutcome::DialFailed); 2]
    );
    // Each dial had its own ChannelId: never two calls of one verification at once.
    let ids: HashSet<String> = peer
        .originated()
        .into_iter()
        .map(|c| c.channel_id)
        .collect();
    assert_eq!(ids.len(), 6);
    d.stop().await;
}

async fn refused_login_places_no_call(db: Db) {
    let peer = AmiPeer::start("callverify", SECRET).await.unwrap();
    let d = crate::common::start_with(db, with_ami(&peer, "wrong-secret")).await;
    let v = d.new_verification(PHONE, "alice").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(peer.originated().is_empty());
    assert!(peer.logins().iter().all(|(_, ok)| !ok));
    assert_eq!(
        d.status(&v.id).await.status,
        Status::Pending,
        "nothing lost"
    );
    let health = reqwest_json(d.http, "/healthz").await;
    assert_eq!(health["ami"], "login_failed");
    d.stop().await;
}

async fn dropped_ami_connection_is_recovered(db: Db) {
    let (peer, d) = setup(db).await;
    peer.callee(PHONE, Callee::DropConnection);
    let v = d.new_verification(PHONE, "alice").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while peer.originated().is_empty() {
        assert!(Instant::now() < deadline, "no Originate");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The connection is gone with the call's events; the callee will answer next time.
    peer.callee(PHONE, Callee::answer(&["#", v.code.as_deref().unwrap()]));
    wait_for_status(&d, &v.id, Status::Verified, Duration::from_secs(20)).await;
    let calls = peer.originated();
    assert_eq!(
        calls.len(),
        2,
        "called again only after the lost call was released"
    );
    assert!(peer.logins().len() >= 2, "logged in again");
    assert_eq!(
        outcomes(&d, &v.id).await,
        vec![Some(CallOutcome::DialFailed), Some(CallOutcome::Verified)]
    );
    d.stop().await;
}

async fn restarted_daemon_loses_nothing_of_the_queue(db: Db) {
    let peer = AmiPeer::start("callverify", SECRET).await.unwrap();
    let d = crate::common::start_with(db, with_ami(&peer, SECRET)).await;
    peer.set_agi(d.addr);
    let mut codes = Vec::new();
    for i in 0..3 {
        let phone = format!("+1415555011{i}");
        peer.callee(&phone, Callee::Silent);
        let v = d.new_verification(&phone, &format!("user{i}")).await;
        codes.push((phone, v.id, v.code.unwrap()));
    }
    for (_, id, _) in &codes {
        wait_for_status(&d, id, Status::Calling, Duration::from_secs(5)).await;
    }
    // `calling` is set when a call is claimed, before its Originate reaches the peer: wait
    // until the peer has all three ringing (silent), or a late one would be answered below.
    let deadline = Instant::now() + Duration::from_secs(10);
    while peer.originated().len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the three Originates never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stop it with the three calls ringing, then start another on the same store.
    let (config, dir) = d.halt().await;
    for (phone, _, code) in &codes {
        peer.callee(phone, Callee::answer(&["#", code]));
    }
    let d2 = crate::common::start_config(config).await;
    peer.set_agi(d2.addr);
    // The calls left ringing are not called again before they can have stopped ringing
    // (twice the ring timeout and a margin), then they are.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        peer.originated().len(),
        3,
        "no second ring right after the restart"
    );
    for (_, id, _) in &codes {
        wait_for_status(&d2, id, Status::Verified, Duration::from_secs(25)).await;
    }
    assert_eq!(peer.originated().len(), 6);
    d2.stop().await;
    drop(dir);
}

/// Two daemons, one store, 200 verifications: each is called exactly once.
async fn two_daemons_drain_one_queue(db: Db) {
    let peer = AmiPeer::start("callverify", SECRET).await.unwrap();
    let ports: Vec<u16> = (0..2)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let one_dial = |port: u16| {
        let base = with_ami(&peer, SECRET);
        move |c: &mut Config| {
            base(c);
            // Distinct FastAGI addresses: two daemons, as on two hosts.
            c.agi.listen = format!("127.0.0.1:{port}");
            c.dialer.max_dials = 1;
            c.dialer.max_concurrent = 50;
        }
    };
    let first = crate::common::start_with(db, one_dial(ports[0])).await;
    let mut config = first.config.clone();
    one_dial(ports[1])(&mut config);
    peer.callee("+1", Callee::Busy);
    // Fill the queue through the first daemon's rules before the second starts dialing.
    let mut ids = Vec::new();
    for i in 0..200 {
        let started = first
            .service
            .start(NewVerification {
                phone: format!("+1{}55501{:02}", [415, 650][i / 100], i % 100),
                user_ref: format!("drain-{i}"),
                ..Default::default()
            })
            .await
            .unwrap();
        ids.push(started.view.id);
    }
    let second = crate::common::start_config(config).await;
    for id in &ids {
        wait_for_status(&first, id, Status::Unanswered, Duration::from_secs(60)).await;
    }
    let calls = peer.originated();
    let called: Vec<String> = calls
        .iter()
        .map(|c| {
            c.variables
                .iter()
                .find_map(|v| v.strip_prefix("CALLVERIFY_ID="))
                .unwrap()
                .to_owned()
        })
        .collect();
    let distinct: HashSet<&String> = called.iter().collect();
    assert_eq!(
        called.len(),
        200,
        "each verification originated exactly once"
    );
    assert_eq!(distinct.len(), 200);
    let daemons: HashSet<String> = futures_daemons(&first, &ids).await;
    assert_eq!(daemons.len(), 2, "both daemons dialed: {daemons:?}");
    second.stop().await;
    first.stop().await;
}

/// Which daemons recorded attempts for `ids`.
async fn futures_daemons(d: &Daemon, ids: &[String]) -> HashSet<String> {
    let mut daemons = HashSet::new();
    for id in ids {
        for a in d.store.attempts(id).await.unwrap() {
            daemons.insert(a.daemon);
        }
    }
    daemons
}

/// GET `path` and parse the JSON (no key needed for /healthz).
async fn reqwest_json(addr: std::net::SocketAddr, path: &str) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let body = raw.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap()
}

/// A number the policy no longer allows (made before the policy changed) is not called.
async fn destinations_are_checked_again_at_dial_time(db: Db) {
    let (peer, d) = setup(db).await;
    let row = crate::common::pending_row("vf_abroad", "+442079460000", "abroad");
    d.store.insert_verification(&row).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while outcomes(&d, "vf_abroad").await.is_empty() {
        assert!(Instant::now() < deadline, "the dialer did not look at it");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        outcomes(&d, "vf_abroad").await,
        vec![Some(CallOutcome::DestinationRefused)]
    );
    assert!(peer.originated().is_empty(), "no call placed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        outcomes(&d, "vf_abroad").await.len(),
        1,
        "and not tried again"
    );
    d.stop().await;
}

/// An answered call whose dialplan cannot reach the daemon (FastAGI full, or
/// `CALLVERIFY_AGI_HOST` wrong) ends with a Hangup and no session: the verification is
/// released and called again, then `unanswered`, not left `calling` until it expires.
async fn an_answered_call_that_never_reaches_the_daemon_is_called_again(db: Db) {
    let (peer, d) = setup(db).await;
    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = closed.local_addr().unwrap();
    drop(closed);
    peer.set_agi(nowhere);
    peer.callee(PHONE, Callee::answer(&[]));
    let v = d.new_verification(PHONE, "alice").await;
    wait_for_status(&d, &v.id, Status::Unanswered, Duration::from_secs(15)).await;
    assert_eq!(
        outcomes(&d, &v.id).await,
        vec![Some(CallOutcome::DialFailed); 2]
    );
    assert_eq!(peer.originated().len(), 2);
    d.stop().await;
}

on_both_backends!(
    an_answered_call_that_never_reaches_the_daemon_is_called_again,
    answered_call_verifies,
    busy_and_no_answer_are_retried_then_unanswered,
    refused_login_places_no_call,
    dropped_ami_connection_is_recovered,
    restarted_daemon_loses_nothing_of_the_queue,
    two_daemons_drain_one_queue,
    destinations_are_checked_again_at_dial_time,
);
