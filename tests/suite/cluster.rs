//! Several daemons on one real Postgres, as processes, each behind its own emulated Asterisk
//! on one shared trunk: a daemon killed with SIGKILL mid-call has its calls taken over by a
//! survivor (also when it comes back, under its name or another), and the trunk's caps hold
//! for all daemons together.

use std::path::Path;
use std::time::{Duration, Instant};

use callverify::domain::status::{CallOutcome, Status};
use callverify::store::Store;
use callverify_testkit::emulator::ami::{AmiPeer, Callee, Keys, TrunkLog};
use serde_json::Value;
use tokio::sync::watch;

use crate::cli::{callverify, free_port, json, migrate, run, serve_in, Served};
use crate::common::hooks::{receiver, Receiver, SECRET};
use crate::common::Db;

const AMI_SECRET: &str = "ami-cluster-secret";
/// Heartbeats every second, declared dead after 3 s unheard; the upkeep that notices runs
/// every 5 s: a dead daemon's calls are taken over within 3 + 5 s and a heartbeat.
const CLUSTER: &str = "heartbeat_secs = 1\ntakeover_after_secs = 3\n";
const TAKEOVER: Duration = Duration::from_secs(9);

/// One daemon's folder (its configuration) and its Asterisk.
struct Node {
    dir: tempfile::TempDir,
    peer: AmiPeer,
    /// Its calls wait at the greeting until this turns true.
    release: watch::Sender<bool>,
}

impl Node {
    fn new(
        rt: &tokio::runtime::Runtime,
        url: &str,
        hook: &str,
        max_calls: u32,
        log: &TrunkLog,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let peer = rt
            .block_on(AmiPeer::start("callverify", AMI_SECRET))
            .unwrap();
        peer.log_calls(log);
        std::fs::write(
            dir.path().join("callverify.toml"),
            format!(
                "[database]\nurl = \"{url}\"\n{CLUSTER}\
                 [security]\nsecret = \"cluster-test-secret-0123456789\"\n\
                 [ami]\nhost = \"127.0.0.1\"\nport = {}\nusername = \"callverify\"\n\
                 secret = \"{AMI_SECRET}\"\nkeepalive_secs = 1\naction_timeout_secs = 2\n\
                 [dialer]\nring_timeout_secs = 1\nretry_delay_secs = 0\nmax_dials = 3\n\
                 max_concurrent = {max_calls}\nmax_per_second = 50\n\
                 [webhooks]\nurl = \"http://{hook}/hook\"\nsecret = \"{SECRET}\"\n\
                 retry_base_ms = 50\nallow_private_callbacks = true\n",
                peer.addr.port()
            ),
        )
        .unwrap();
        let (release, _) = watch::channel(false);
        Self { dir, peer, release }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The callee of `phone` answers, waits for the release, then keys what `keys` holds.
    fn answers(&self, phone: &str, keys: &Keys) {
        self.peer.callee(
            phone,
            Callee::AnswerHolding(keys.clone(), self.release.subscribe()),
        );
    }

    /// `serve`, on a new FastAGI port or on `addr`.
    fn serve(&self, addr: Option<std::net::SocketAddr>, log: &str) -> Served {
        let addr = addr.unwrap_or_else(free_port);
        self.peer.set_agi(addr);
        let served = serve_in(callverify(self.path()), self.path(), addr, log);
        wait("its AMI login", Duration::from_secs(10), || {
            self.peer.logins().iter().filter(|(_, ok)| *ok).count() > 0
        });
        served
    }

    fn let_calls_go_on(&self) {
        self.release.send_replace(true);
    }
}

fn wait(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A verification made with the CLI in `dir` for the `i`th number, whose callee on each
/// node answers (before the verification exists, so that no call can find no callee) and
/// keys `#` and the code: its id.
fn start(dir: &Path, i: usize, nodes: &[&Node]) -> String {
    let phone = format!("+141555502{i:02}");
    let keys: Keys = Keys::default();
    for node in nodes {
        node.answers(&phone, &keys);
    }
    let out = run(callverify(dir).args([
        "verify",
        "start",
        "--phone",
        &phone,
        "--user",
        &format!("cluster-{i}"),
        "--json",
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    *keys.lock().unwrap() = vec!["#".into(), v["code"].as_str().unwrap().into()];
    v["id"].as_str().unwrap().to_owned()
}

fn statuses(rt: &tokio::runtime::Runtime, store: &Store, ids: &[String]) -> Vec<Status> {
    rt.block_on(async {
        let mut out = Vec::new();
        for id in ids {
            out.push(store.verification(id).await.unwrap().unwrap().status);
        }
        out
    })
}

/// The statuses each verification's webhooks said, in order.
fn webhooks(received: &Receiver, id: &str) -> Vec<String> {
    received
        .got
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(_, body)| {
            let v: Value = serde_json::from_slice(body).unwrap();
            (v["verification_id"] == id).then(|| v["status"].as_str().unwrap().to_owned())
        })
        .collect()
}

/// What happens to the killed daemon during the takeover.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Afterwards {
    StaysDead,
    /// Restarted at once under its name (the same host and FastAGI address).
    ComesBack,
    /// Restarted at once under another name (another FastAGI address).
    ComesBackRenamed,
}

/// B holds three calls, A three; B is killed with SIGKILL. Every verification verifies
/// within the takeover time, through A (or the restarted B), none is ever in two calls at
/// once, each of B's calls is closed as interrupted exactly once, and no attempt is counted.
fn a_killed_daemons_calls_are_taken_over(afterwards: Afterwards) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (hook, received) = rt.block_on(receiver(0));
    let base = tempfile::tempdir().unwrap();
    let url = rt.block_on(crate::common::fresh_database(Db::Postgres, base.path()));
    let log = TrunkLog::default();
    // B takes three calls at most on the trunk; A up to ten, so the split is three and three.
    let b = Node::new(&rt, &url, &hook.to_string(), 3, &log);
    let a = Node::new(&rt, &url, &hook.to_string(), 10, &log);
    migrate(b.path());
    let b_addr = free_port();
    let b_served = b.serve(Some(b_addr), "b.log");
    let mut made = Vec::new();
    let mut a_served = None;
    for i in 0..6 {
        if i == 3 {
            wait("B's three calls", Duration::from_secs(10), || {
                log.in_progress() == 3
            });
            a_served = Some(a.serve(None, "a.log"));
        }
        made.push(start(a.path(), i, &[&a, &b]));
    }
    wait("six calls in progress", Duration::from_secs(10), || {
        log.in_progress() == 6
    });
    let ids = |peer: &AmiPeer| -> Vec<String> {
        peer.originated()
            .iter()
            .map(|o| o.channel_id.clone())
            .collect()
    };
    assert_eq!(
        ids(&b.peer).len(),
        3,
        "B: {:?}, A: {:?}",
        ids(&b.peer),
        ids(&a.peer)
    );
    assert_eq!(
        ids(&a.peer).len(),
        3,
        "B: {:?}, A: {:?}",
        ids(&b.peer),
        ids(&a.peer)
    );
    let store = rt.block_on(Store::connect(&url, 2)).unwrap();
    let on_b: Vec<String> = b
        .peer
        .originated()
        .iter()
        .filter_map(|o| {
            o.variables
                .iter()
                .find_map(|v| v.strip_prefix("CALLVERIFY_ID="))
        })
        .map(str::to_owned)
        .collect();
    // Answered: each of B's verifications has an open attempt on B.
    wait("B's attempts open", Duration::from_secs(10), || {
        rt.block_on(async {
            let mut open = 0;
            for id in &on_b {
                open += store
                    .attempts(id)
                    .await
                    .unwrap()
                    .iter()
                    .filter(|a| a.ended_at.is_none())
                    .count();
            }
            open == 3
        })
    });

    b_served.kill();
    let killed = Instant::now();
    b.let_calls_go_on();
    a.let_calls_go_on();
    let b_again = match afterwards {
        Afterwards::StaysDead => None,
        Afterwards::ComesBack => Some(b.serve(Some(b_addr), "b-again.log")),
        Afterwards::ComesBackRenamed => Some(b.serve(None, "b-renamed.log")),
    };
    wait(
        "every verification verified",
        TAKEOVER + Duration::from_secs(10),
        || {
            statuses(&rt, &store, &made)
                .iter()
                .all(|s| *s == Status::Verified)
        },
    );
    let took = killed.elapsed();
    assert!(
        took < TAKEOVER + Duration::from_secs(5),
        "taken over in {took:?}, documented within {TAKEOVER:?} (and the redial)"
    );
    assert_eq!(
        log.most_for_one_verification(),
        1,
        "none in two calls at once"
    );
    rt.block_on(async {
        for id in &made {
            let v = store.verification(id).await.unwrap().unwrap();
            assert_eq!(v.attempts_used, 0, "no try counted: {id}");
            let outcomes: Vec<_> = store
                .attempts(id)
                .await
                .unwrap()
                .iter()
                .map(|a| a.outcome)
                .collect();
            let expected = if on_b.contains(id) {
                vec![Some(CallOutcome::Interrupted), Some(CallOutcome::Verified)]
            } else {
                vec![Some(CallOutcome::Verified)]
            };
            assert_eq!(outcomes, expected, "{id}");
        }
    });
    wait("each verified webhook", Duration::from_secs(10), || {
        made.iter()
            .all(|id| webhooks(&received, id).last().map(String::as_str) == Some("verified"))
    });
    for id in &on_b {
        assert_eq!(
            webhooks(&received, id),
            ["calling", "pending", "calling", "verified"],
            "{id}: taken over, called again, verified"
        );
    }
    for served in a_served.into_iter().chain(b_again) {
        assert!(served.terminate().success());
    }
}

#[test]
fn a_daemon_killed_mid_call_has_its_calls_taken_over() {
    a_killed_daemons_calls_are_taken_over(Afterwards::StaysDead);
}

#[test]
fn a_killed_daemon_restarted_under_its_name_recovers_its_calls_once() {
    a_killed_daemons_calls_are_taken_over(Afterwards::ComesBack);
}

#[test]
fn a_killed_daemon_restarted_under_another_name_changes_nothing() {
    a_killed_daemons_calls_are_taken_over(Afterwards::ComesBackRenamed);
}

/// Two daemons, a trunk of 3 calls: together they never place more than 3 at once.
#[test]
fn two_daemons_keep_a_trunk_cap_of_three_together() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (hook, _received) = rt.block_on(receiver(0));
    let base = tempfile::tempdir().unwrap();
    let url = rt.block_on(crate::common::fresh_database(Db::Postgres, base.path()));
    let log = TrunkLog::default();
    let a = Node::new(&rt, &url, &hook.to_string(), 3, &log);
    let b = Node::new(&rt, &url, &hook.to_string(), 3, &log);
    migrate(a.path());
    let _a = a.serve(None, "a.log");
    let _b = b.serve(None, "b.log");
    let mut made = Vec::new();
    for i in 0..8 {
        made.push(start(a.path(), 20 + i, &[&a, &b]));
    }
    wait("three calls in progress", Duration::from_secs(10), || {
        log.in_progress() == 3
    });
    // Both dialers keep trying: still three, and no fourth Originate.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(log.in_progress(), 3);
    let originated: Vec<String> = a
        .peer
        .originated()
        .iter()
        .chain(b.peer.originated().iter())
        .map(|o| o.channel_id.clone())
        .collect();
    assert_eq!(originated.len(), 3, "{originated:?}");
    a.let_calls_go_on();
    b.let_calls_go_on();
    let store = rt.block_on(Store::connect(&url, 2)).unwrap();
    wait(
        "every verification verified",
        Duration::from_secs(30),
        || {
            statuses(&rt, &store, &made)
                .iter()
                .all(|s| *s == Status::Verified)
        },
    );
    assert_eq!(log.most_at_once(), 3, "the cap, and never more");
    assert!(!a.peer.originated().is_empty() && !b.peer.originated().is_empty());
}

/// A daemon's name (host and FastAGI address) while another live daemon holds it — the same
/// host name on another machine — is refused at start, with what to do; an earlier run's on
/// this machine (its process gone) is taken.
#[test]
fn a_name_another_live_daemon_holds_is_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("callverify.db").display());
    std::fs::write(
        dir.path().join("callverify.toml"),
        format!("[database]\nurl = \"{url}\"\n{CLUSTER}"),
    )
    .unwrap();
    migrate(dir.path());
    let addr = free_port();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let name = format!("{}/{addr}", host.trim());
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let store = rt.block_on(Store::connect(&url, 1)).unwrap();
    let holder = |boot_id: &str, pid: i64| callverify::store::DaemonRow {
        name: name.clone(),
        incarnation: format!("run_{pid}"),
        boot_id: boot_id.into(),
        pid,
        started_at: callverify::domain::clock::now_ms(),
        last_seen: callverify::domain::clock::now_ms(),
        taken_over_by: None,
    };
    rt.block_on(store.register_daemon(&holder("another-machine", 4242), None))
        .unwrap();
    let out = run(callverify(dir.path())
        .arg("serve")
        .env("CALLVERIFY_AGI_LISTEN", addr.to_string())
        .env("CALLVERIFY_HTTP_LISTEN", "127.0.0.1:0")
        .env("CALLVERIFY_SPEECH_LISTEN", "127.0.0.1:0"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("another live daemon runs as {name}")),
        "{stderr}"
    );
    assert!(stderr.contains("own agi.listen address"), "{stderr}");

    // An earlier run on this machine whose process is gone: its name is taken over.
    let gone = i64::from(i32::MAX);
    let replaced = rt
        .block_on(store.register_daemon(&holder(boot.trim(), gone), Some("run_4242")))
        .unwrap();
    assert!(replaced);
    let served = serve_in(callverify(dir.path()), dir.path(), addr, "daemon.log");
    wait(
        "the new run's registration",
        Duration::from_secs(10),
        || {
            let row = rt.block_on(store.daemon(&name)).unwrap().unwrap();
            row.pid == i64::from(served.pid())
        },
    );
    assert!(served.terminate().success());
    assert_eq!(
        rt.block_on(store.daemon(&name)).unwrap(),
        None,
        "a clean stop leaves"
    );
}

/// A package upgrade on one host of several on one Postgres: the new release's `migrate` and
/// `serve` refuse to migrate the store while a daemon of the release before runs on it
/// (another host's, heartbeating), say which and what to do, and change nothing; once it is
/// unheard for `takeover_after_secs` (stopped) they migrate. And daemons of one release
/// started at once on a new store all start: the one that migrates first is no older
/// daemon to the others.
#[test]
fn an_upgrade_migrates_the_store_only_once_older_daemons_stopped() {
    use sqlx::{Connection, Row};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = rt.block_on(crate::common::fresh_database(Db::Postgres, dir.path()));
    std::fs::write(
        dir.path().join("callverify.toml"),
        format!("[database]\nurl = \"{url}\"\n{CLUSTER}"),
    )
    .unwrap();
    // The store as the release before left it: every migration but the latest.
    let mut before = sqlx::migrate!("sql/postgres");
    let latest = before.iter().map(|m| m.version).max().unwrap();
    before.migrations = before
        .iter()
        .filter(|m| m.version < latest)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    let mut pg = rt.block_on(sqlx::PgConnection::connect(&url)).unwrap();
    rt.block_on(before.run_direct(&mut pg)).unwrap();
    let applied = |pg: &mut sqlx::PgConnection| -> i64 {
        rt.block_on(sqlx::query("SELECT MAX(version) AS v FROM _sqlx_migrations").fetch_one(pg))
            .unwrap()
            .get("v")
    };
    // A daemon of that release on another host, heartbeating.
    let now = callverify::domain::clock::now_ms();
    rt.block_on(
        sqlx::query(
            "INSERT INTO daemons (name, incarnation, boot_id, pid, started_at, last_seen) \
             VALUES ('pbx-b/10.0.0.2:4573', 'run_b', 'another-machine', 4242, $1, $1)",
        )
        .bind(now)
        .execute(&mut pg),
    )
    .unwrap();

    for command in ["migrate", "serve"] {
        // Heard from just now (the daemon's takeover time here is 3 s).
        rt.block_on(
            sqlx::query("UPDATE daemons SET last_seen = $1")
                .bind(callverify::domain::clock::now_ms())
                .execute(&mut pg),
        )
        .unwrap();
        let out = run(callverify(dir.path())
            .arg(command)
            .env("CALLVERIFY_AGI_LISTEN", free_port().to_string())
            .env("CALLVERIFY_HTTP_LISTEN", "127.0.0.1:0")
            .env("CALLVERIFY_SPEECH_LISTEN", "127.0.0.1:0"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{command}: {stderr}");
        assert!(
            stderr.contains(&format!("migrations {latest} to apply"))
                && stderr.contains("daemons of the release before still run on it: pbx-b/10.0.0.2:4573 (process 4242")
                && stderr.contains("Stop them first"),
            "{command}: {stderr}"
        );
        assert_eq!(
            applied(&mut pg),
            before.iter().map(|m| m.version).max().unwrap(),
            "{command} migrated"
        );
    }

    // Stopped: unheard for longer than takeover_after_secs (3 s).
    rt.block_on(
        sqlx::query("UPDATE daemons SET last_seen = $1")
            .bind(now - 10_000)
            .execute(&mut pg),
    )
    .unwrap();
    migrate(dir.path());
    assert_eq!(applied(&mut pg), latest);

    // Three daemons of this release started at once on a new store: all run.
    let url = rt.block_on(crate::common::fresh_database(Db::Postgres, dir.path()));
    std::fs::write(
        dir.path().join("callverify.toml"),
        format!("[database]\nurl = \"{url}\"\n{CLUSTER}"),
    )
    .unwrap();
    let served: Vec<Served> = (0..3)
        .map(|i| {
            serve_in(
                callverify(dir.path()),
                dir.path(),
                free_port(),
                &format!("serve-{i}.log"),
            )
        })
        .collect();
    let store = rt.block_on(Store::connect(&url, 1)).unwrap();
    wait("three registered daemons", Duration::from_secs(20), || {
        rt.block_on(store.daemons()).unwrap().len() == 3
    });

    // A newer release migrates the store under them (they were paused through its upgrade,
    // or started as it migrated): each stops at its next heartbeat (1 s here), leaves the
    // list, and exits with an error that says to upgrade it.
    let mut pg = rt.block_on(sqlx::PgConnection::connect(&url)).unwrap();
    rt.block_on(
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, \
             execution_time) VALUES (99991231000000, 'from a newer release', true, '\\x00', 0)",
        )
        .execute(&mut pg),
    )
    .unwrap();
    for (i, s) in served.into_iter().enumerate() {
        let status = s.exits_within(Duration::from_secs(20));
        let log = std::fs::read_to_string(dir.path().join(format!("serve-{i}.log"))).unwrap();
        assert_eq!(status.code(), Some(1), "{log}");
        assert!(
            log.contains("a newer callverify migrated the store")
                && log.contains("migrated by a newer callverify"),
            "{log}"
        );
    }
    assert_eq!(rt.block_on(store.daemons()).unwrap(), Vec::new());
}
