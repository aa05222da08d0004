//! Shared test harness: an in-process daemon on a fresh store, SQLite or a real Postgres.

pub mod browser;
pub mod hooks;
pub mod http;

use std::net::SocketAddr;
use std::sync::Arc;

use callverify::config::Config;
use callverify::daemon;
use callverify::domain::{NewVerification, Verifications, View};
use callverify::store::Store;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const PHONE: &str = "+14155550101";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Environment variable naming the Postgres server the tests create their databases on.
pub const POSTGRES_ENV: &str = "CALLVERIFY_TEST_POSTGRES_URL";

/// A connection of the tests' own to the database at `url` (either kind), behind the store's
/// back: sqlx's Any driver, with its drivers installed first (whichever test comes first).
pub async fn raw_connection(url: &str) -> Result<sqlx::AnyConnection, sqlx::Error> {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    sqlx::AnyConnection::connect(url).await
}

/// Postgres: returns once a session on `watcher`'s database waits for a lock (a test's own
/// database, where only the operation under test can); panics naming `what` after 10 s.
pub async fn until_a_lock_wait(watcher: &mut sqlx::AnyConnection, what: &str) {
    use sqlx::Row;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM pg_stat_activity \
             WHERE wait_event_type = 'Lock' AND datname = current_database()",
        )
        .fetch_one(&mut *watcher)
        .await
        .unwrap()
        .get("n");
        if waiting > 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what} never waited");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A URL for a new, empty database of kind `db` (the SQLite file lives in `dir`).
pub async fn fresh_database(db: Db, dir: &std::path::Path) -> String {
    match db {
        Db::Sqlite => format!("sqlite://{}", dir.join("test.db").display()),
        Db::Postgres => {
            let admin = std::env::var(POSTGRES_ENV).unwrap_or_else(|_| {
                panic!(
                    "{POSTGRES_ENV} is not set: the Postgres store tests need a real server. \
                     Run ./scripts/test, which starts one, or point {POSTGRES_ENV} at a \
                     server where this user may CREATE DATABASE."
                )
            });
            let mut conn = raw_connection(&admin)
                .await
                .expect("connect to the test Postgres server");
            let name = format!("cvtest_{}", callverify::domain::codes::generate(10));
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .expect("create a test database");
            let base = admin.rsplit_once('/').expect("URL with a database").0;
            format!("{base}/{name}")
        }
    }
}

pub struct Daemon {
    pub addr: SocketAddr,
    pub http: SocketAddr,
    pub service: Arc<Verifications>,
    pub store: Store,
    pub config: Config,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    pub dir: Option<tempfile::TempDir>,
}

/// Test settings: short waits, a fresh store, port chosen by the OS.
pub fn test_config(url: String, dir: &std::path::Path) -> Config {
    let mut config = Config::default();
    config.database.url = url;
    config.agi.listen = "127.0.0.1:0".into();
    config.http.listen = "127.0.0.1:0".into();
    config.speech.listen = "127.0.0.1:0".into();
    config.agi.env_timeout_secs = 1;
    config.agi.reply_timeout_secs = 5;
    config.agi.shutdown_grace_secs = 5;
    config.security.secret_file = dir.join("secret").display().to_string();
    // Tests make many verifications per number; the rate-limit tests set their own.
    config.verification.max_per_number_per_hour = 1000;
    config.verification.max_per_user_per_hour = 1000;
    // The tests' webhook receivers listen on loopback.
    config.webhooks.allow_private_callbacks = true;
    config
}

pub async fn start(db: Db) -> Daemon {
    start_with(db, |_| {}).await
}

pub async fn start_with(db: Db, tweak: impl FnOnce(&mut Config)) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(db, dir.path()).await;
    let mut config = test_config(url, dir.path());
    tweak(&mut config);
    let mut d = start_config(config).await;
    d.dir = Some(dir);
    d
}

/// A daemon on `config` as it is (e.g. a second daemon on another's database).
pub async fn start_config(config: Config) -> Daemon {
    // Logs go to the test's captured output (RUST_LOG, default warn): shown when it fails.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
    let app = daemon::open(&config).await.expect("open the store");
    let listeners = daemon::bind(&config).await.expect("bind");
    let addr = listeners.agi.local_addr().unwrap();
    let http = listeners.http.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel();
    let task = {
        let config = config.clone();
        let app = app.clone();
        tokio::spawn(async move {
            daemon::run(&config, app, listeners, async {
                let _ = stopped.await;
            })
            .await
            .expect("daemon run");
        })
    };
    wait_until_serving(http, &task).await;
    Daemon {
        addr,
        http,
        service: app.verifications,
        store: app.store,
        config,
        stop: Some(stop),
        task: Some(task),
        dir: None,
    }
}

/// Wait until the daemon answers HTTP: `daemon::run` serves the API only once its setup is
/// done (recovery, the outbox switch for `webhooks.url`, ...), so a test that goes on to
/// the domain directly does not race that setup. Returns early if the daemon task ended
/// (its panic is reported when the test joins it).
async fn wait_until_serving(http: SocketAddr, task: &JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !task.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not answer /healthz within 60 s"
        );
        let answered = async {
            let mut s = tokio::net::TcpStream::connect(http).await.ok()?;
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .await
                .ok()?;
            let mut head = [0u8; 12];
            s.read_exact(&mut head).await.ok()?;
            head.starts_with(b"HTTP/1.1 ").then_some(())
        };
        match tokio::time::timeout(std::time::Duration::from_secs(2), answered).await {
            Ok(Some(())) => return,
            _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
}

impl Daemon {
    pub async fn new_verification(&self, phone: &str, user: &str) -> View {
        self.service
            .start(NewVerification {
                phone: phone.into(),
                user_ref: user.into(),
                ..Default::default()
            })
            .await
            .expect("start a verification")
            .view
    }

    /// A new verification for `phone`, called and verified by keypad: the daemon works.
    pub async fn verify_by_keypad(&self, phone: &str, user: &str) -> View {
        let v = self.new_verification(phone, user).await;
        let t = callverify_testkit::emulator::Call::verify(&v.id)
            .press("#")
            .press(v.code.as_deref().unwrap())
            .run(self.addr)
            .await
            .unwrap();
        assert!(t.closed_by_daemon);
        let view = self.status(&v.id).await;
        assert_eq!(view.status, callverify::domain::Status::Verified);
        view
    }

    /// Call verification `id` and key three wrong codes: it fails, the number is locked out.
    pub async fn fail_by_keypad(&self, id: &str) {
        callverify_testkit::emulator::Call::verify(id)
            .press("#")
            .press("000000#")
            .press("111111#")
            .press("222222#")
            .run(self.addr)
            .await
            .unwrap();
        assert_eq!(
            self.status(id).await.status,
            callverify::domain::Status::Failed
        );
    }

    pub async fn status(&self, id: &str) -> View {
        self.service.get(id).await.expect("status")
    }

    /// Signal shutdown and wait for the daemon to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("daemon task");
        }
    }

    /// Stop, keeping what another run on the same store needs: its configuration, and the
    /// folder that holds the SQLite file and the secret.
    pub async fn halt(mut self) -> (Config, Option<tempfile::TempDir>) {
        self.signal_stop();
        self.join().await;
        (self.config.clone(), self.dir.take())
    }

    /// The daemon's metrics as `/metrics` shows them (without the store's gauges).
    pub fn metrics(&self) -> String {
        self.service
            .metrics()
            .render(&callverify::domain::metrics::Snapshot {
                ami_state: None,
                queue_due: 0,
                webhooks_undelivered: 0,
            })
    }

    /// Returns once `n` FastAGI calls are being handled (the daemon's own gauge).
    pub async fn until_calls_in_progress(&self, n: usize) {
        let gauge = format!("callverify_calls_in_progress {n}\n");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let text = self.metrics();
            if text.contains(&gauge) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never {n} calls: {text}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn join(&mut self) {
        if let Some(task) = self.task.take() {
            task.await.expect("daemon task");
        }
    }
}

/// Run each named `async fn(Db)` scenario as two tests, on SQLite and on Postgres.
#[macro_export]
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(super::Db::Sqlite).await
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(super::Db::Postgres).await
            })*
        }
    };
}

/// A pending verification as stored, due its first call now, for tests of the store.
pub fn pending_row(id: &str, phone: &str, user: &str) -> callverify::domain::Verification {
    let now = callverify::domain::clock::now_ms();
    callverify::domain::Verification {
        id: id.into(),
        phone: phone.into(),
        user_ref: user.into(),
        code_hash: "00".repeat(32),
        code_length: 6,
        status: callverify::domain::Status::Pending,
        attempts_used: 0,
        max_attempts: 3,
        locale: "en".into(),
        is_test: false,
        created_at: now,
        updated_at: now,
        expires_at: now + 600_000,
        verified_at: None,
        api_key_id: None,
        callback_url: None,
        mode: callverify::domain::Mode::EnterCode,
        sealed_code: None,
        code_delivered_at: None,
    }
}

/// A support request left by `PHONE` at `created_at`, matched to `verification_id` (none:
/// unmatched), open, with a short recording.
pub fn manual_request(
    id: &str,
    verification_id: Option<&str>,
    created_at: i64,
) -> callverify::support::request::NewManualRequest {
    use callverify::domain::status::CallerMatch;
    callverify::support::request::NewManualRequest {
        id: id.into(),
        created_at,
        caller: Some(PHONE.into()),
        caller_match: match verification_id {
            Some(_) => CallerMatch::Matched,
            None => CallerMatch::Unmatched,
        },
        verification_id: verification_id.map(Into::into),
        ended_by: "key",
        duration_ms: 1000,
        recording: callverify_audio::wav::encode(&[0; 8], 8000),
        transcript: None,
        language: "en".into(),
    }
}

/// The ids of every support request in the store (up to 100), sorted.
pub async fn manual_request_ids(d: &Daemon) -> Vec<String> {
    let mut ids: Vec<String> = d
        .store
        .manual_requests(callverify::support::request::RequestFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .requests
        .into_iter()
        .map(|r| r.id)
        .collect();
    ids.sort();
    ids
}
