//! Faults from outside the daemon, against the real servers: the SQLite disk filling up and
//! turning read-only, the Postgres server crashing and coming back under load, and several
//! daemons on one Postgres counting one number's wrong codes. Each proves that what was
//! acknowledged is kept, that a refusal left nothing half-done, and that nothing was counted
//! twice.
//!
//! The SQLite test mounts a small tmpfs and the Postgres test runs a private server of its
//! own (it is crashed on purpose), so both need root, as `./scripts/test` and CI have: run as
//! another user they fail and say so, they do not skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use callverify::config::Config;
use callverify::domain::status::Status;
use callverify::domain::{NewVerification, VerifyError};
use callverify_testkit::emulator::Call;
use sqlx::Row;

use crate::common::{start_config, test_config, Daemon, PHONE};

/// Run `cmd`, panicking with its output if it fails.
fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn must_be_root(what: &str) {
    let id = Command::new("id").arg("-u").output().expect("id -u");
    assert_eq!(
        String::from_utf8_lossy(&id.stdout).trim(),
        "0",
        "{what} needs root (it mounts or runs a server of its own); ./scripts/test and CI run as root"
    );
}

/// A small tmpfs of its own: a disk that fills up, and can be made read-only.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        must_be_root("the SQLite disk-full test");
        let dir = tempfile::tempdir().unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path()));
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, mode: &str) {
        run(Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(self.path()));
    }

    /// Write zeros until the disk is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 16 * 1024];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        // The last partial blocks too.
        let small = [0u8; 512];
        while f.write(&small).is_ok_and(|n| n > 0) {}
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

async fn start_on(url: String, dir: &Path, tweak: impl FnOnce(&mut Config)) -> Daemon {
    let mut config = test_config(url, dir);
    tweak(&mut config);
    start_config(config).await
}

fn new(user: String) -> NewVerification {
    NewVerification {
        phone: PHONE.into(),
        user_ref: user,
        ..Default::default()
    }
}

/// Whether the call ended as the daemon said: "verified", or sorry for a technical problem.
fn heard(t: &callverify_testkit::emulator::Transcript, prompt: &str) -> bool {
    t.count_prompt(prompt) > 0
}

const VERIFIED: &str = "callverify/verified";
const CODE_INCORRECT: &str = "callverify/code-incorrect";
const TECHNICAL_PROBLEM: &str = "callverify/technical-problem";

/// No rate limit: the disk-full test makes thousands of verifications of one number.
fn unlimited(c: &mut Config) {
    c.verification.max_per_number_per_hour = u32::MAX;
    c.verification.max_per_user_per_hour = u32::MAX;
}

/// The SQLite disk fills up: writes are refused with the database's own reason, a refused
/// creation leaves no row, a call hears the truth of what was stored, and once there is
/// room the same daemon goes on without a restart. On a read-only disk the daemon refuses
/// to start, saying why. After a restart every acknowledged verification is there.
#[tokio::test]
async fn sqlite_disk_full_or_read_only_loses_nothing_and_recovers() {
    let disk = Tmpfs::mount("3m");
    let keys = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", disk.path().join("test.db").display());
    let d = start_on(url.clone(), keys.path(), unlimited).await;
    let waiting = d.new_verification(PHONE, "waiting").await;
    let filler = disk.fill();

    // Creations until the store refuses one (each is a row and an index entry or two: a
    // few thousand fill any room the tmpfs had left).
    let mut acknowledged = Vec::new();
    let refusal = loop {
        match d
            .service
            .start(new(format!("u{}", acknowledged.len())))
            .await
        {
            Ok(s) => acknowledged.push(s.view.id),
            Err(e) => break e,
        }
        assert!(acknowledged.len() < 20_000, "the disk never filled");
    };
    assert!(
        matches!(refusal, VerifyError::Store(_))
            && refusal.to_string().contains("database or disk is full"),
        "a clear refusal: {refusal}"
    );
    // A wrong code while full: the caller hears either that it was counted, or sorry; the
    // store holds exactly what was said.
    let code = waiting.code.clone().unwrap();
    let t = Call::verify(&waiting.id)
        .press("#")
        .press(&crate::verify_flow::wrong(&code))
        .hang_up()
        .run(d.addr)
        .await
        .unwrap();
    let counted = heard(&t, CODE_INCORRECT);
    assert!(counted || heard(&t, TECHNICAL_PROBLEM), "{:?}", t.prompts());

    // Room again: the same daemon writes again.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let after_full = loop {
        match d.service.start(new("after-full".into())).await {
            Ok(s) => break s.view,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no write after freeing room: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    acknowledged.push(after_full.id.clone());

    // And a call verifies.
    let t = Call::verify(&after_full.id)
        .press("#")
        .press(after_full.code.as_deref().unwrap())
        .run(d.addr)
        .await
        .unwrap();
    assert!(heard(&t, VERIFIED), "{:?}", t.prompts());
    let agi = d.addr;
    let store = d.store.clone();
    d.stop().await;
    store.close().await;

    // A read-only disk: the daemon refuses to start, saying why, and changes nothing.
    disk.remount("ro");
    let refusal = callverify::daemon::open(&test_config(url.clone(), keys.path()))
        .await
        .err()
        .expect("no daemon on a read-only store");
    assert!(
        refusal.to_string().contains("Read-only file system"),
        "a clear refusal: {refusal}"
    );
    disk.remount("rw");

    // After a restart under its name (its FastAGI address): every acknowledged
    // verification, and nothing else.
    let d = start_on(url.clone(), keys.path(), |c| {
        unlimited(c);
        c.agi.listen = agi.to_string();
    })
    .await;
    for id in &acknowledged {
        assert!(
            d.store.verification(id).await.unwrap().is_some(),
            "{id} lost"
        );
    }
    let mut conn = crate::common::raw_connection(&url).await.unwrap();
    let rows: i64 = sqlx::query("SELECT COUNT(*) AS n FROM verifications")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get("n");
    assert_eq!(
        rows,
        acknowledged.len() as i64 + 1,
        "refused creations left no row"
    );
    drop(conn);
    // The call during the full disk: counted if and only if the caller was told so. Its
    // attempt, cut short by the store (whichever of its writes the full disk refused), was
    // closed as interrupted by the restart.
    let view = d.status(&waiting.id).await;
    assert_eq!(view.status, Status::Pending);
    assert_eq!(
        view.attempts_remaining,
        if counted { 2 } else { 3 },
        "{:?}",
        t.prompts()
    );
    assert_eq!(d.status(&after_full.id).await.status, Status::Verified);
    d.stop().await;
}

/// A private Postgres server, to crash and start again.
struct Postgres {
    root: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl Postgres {
    fn start() -> Self {
        must_be_root("the Postgres restart test");
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("a PostgreSQL server in /usr/lib/postgresql (./scripts/test installs it)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("initdb").exists())
            .max()
            .expect("initdb under /usr/lib/postgresql/*/bin");
        let root = tempfile::tempdir().unwrap();
        run(Command::new("chown").arg("postgres").arg(root.path()));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Self { root, bin, port };
        run(pg
            .as_postgres("initdb")
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(pg.data()));
        pg.up();
        pg
    }

    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn as_postgres(&self, tool: &str) -> Command {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(self.bin.join(tool));
        cmd
    }

    fn up(&self) {
        run(self
            .as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.root.path().join("log"))
            .args(["-w", "-o"])
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1",
                self.port,
                self.root.path().display()
            ))
            .arg("start"));
    }

    /// Stop as a crash would: no shutdown checkpoint, every client cut off.
    fn crash(&self) {
        run(self.as_postgres("pg_ctl").arg("-D").arg(self.data()).args([
            "-m",
            "immediate",
            "stop",
        ]));
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// What one verification went through under load.
struct Tried {
    id: String,
    verified_said: bool,
}

/// Callers create verifications and key their codes while the Postgres server crashes and
/// comes back: every acknowledged creation is kept, every call told "verified" is verified,
/// no right code is ever counted as wrong, and the daemon serves again without a restart.
#[tokio::test]
async fn postgres_crashing_under_load_loses_nothing() {
    let pg = Postgres::start();
    let keys = tempfile::tempdir().unwrap();
    let d = Arc::new(
        start_on(pg.url(), keys.path(), |c| {
            c.database.max_connections = 4;
        })
        .await,
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..4)
        .map(|caller| {
            let (d, stop) = (d.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tried = Vec::new();
                let mut refused = 0usize;
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let started = match d.service.start(new(format!("c{caller}-{n}"))).await {
                        Ok(s) => s.view,
                        Err(e) => {
                            assert!(matches!(e, VerifyError::Store(_)), "{e}");
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let t = Call::verify(&started.id)
                        .press("#")
                        .press(started.code.as_deref().unwrap())
                        .run(d.addr)
                        .await
                        .unwrap();
                    tried.push(Tried {
                        id: started.id,
                        verified_said: heard(&t, VERIFIED),
                    });
                }
                (tried, refused)
            })
        })
        .collect();
    let verified_count = |d: Arc<Daemon>| async move {
        let mut conn = crate::common::raw_connection(&d.config.database.url)
            .await
            .ok()?;
        let n: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM verifications WHERE status = 'verified'")
                .fetch_one(&mut conn)
                .await
                .ok()?
                .get("n");
        Some(n)
    };
    let wait_for_verified = |at_least: i64| {
        let d = d.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if verified_count(d.clone()).await.unwrap_or(0) >= at_least {
                    return;
                }
                assert!(Instant::now() < deadline, "fewer than {at_least} verified");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_for_verified(20).await;
    pg.crash();
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg.up();
    let before = verified_count(d.clone()).await.unwrap();
    // The daemon serves again: twenty more verified after the crash.
    wait_for_verified(before + 20).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut tried = Vec::new();
    let mut refused = 0;
    for caller in callers {
        let (t, r) = caller.await.unwrap();
        tried.extend(t);
        refused += r;
    }
    let d = Arc::into_inner(d).expect("callers are done");
    for t in &tried {
        let v = d
            .store
            .verification(&t.id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{} was acknowledged and is lost", t.id));
        if t.verified_said {
            assert_eq!(v.status, Status::Verified, "{} was told verified", t.id);
        }
        // The right code was keyed every time: no try may be gone.
        assert_eq!(
            v.attempts_used, 0,
            "{}: a right code counted as wrong",
            t.id
        );
        assert_ne!(v.status, Status::Failed, "{}", t.id);
    }
    eprintln!(
        "{} verifications tried, {} creations refused while the server was down",
        tried.len(),
        refused
    );
    d.stop().await;
}

/// Two daemons on one Postgres take calls for one number's verifications at once, each
/// caller keying wrong codes: exactly three are counted in all, and every verification of
/// the number ends `failed`.
#[tokio::test]
async fn two_daemons_count_three_tries_for_a_number() {
    let first = crate::common::start(crate::common::Db::Postgres).await;
    let second = start_config(first.config.clone()).await;
    let mut ids = Vec::new();
    for user in 0..6 {
        let v = first.new_verification(PHONE, &format!("u{user}")).await;
        ids.push((v.id, v.code.unwrap()));
    }
    let calls: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, (id, code))| {
            let addr = if i % 2 == 0 { first.addr } else { second.addr };
            let bad = crate::verify_flow::wrong(code);
            Call::verify(id)
                .press("#")
                .press(&bad)
                .press(&bad)
                .press(&bad)
                .run(addr)
        })
        .collect();
    for t in futures::future::join_all(calls).await {
        t.unwrap();
    }
    let mut counted = 0;
    for (id, _) in &ids {
        let v = first.store.verification(id).await.unwrap().unwrap();
        assert_eq!(v.status, Status::Failed, "{id}");
        counted += v.attempts_used;
    }
    assert_eq!(counted, 3, "wrong codes counted over both daemons");
    second.stop().await;
    first.stop().await;
}
