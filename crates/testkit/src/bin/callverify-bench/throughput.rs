//! The throughput, enqueue and memory runs: concurrent emulated Asterisk sessions through the verify flow.
//!
//! 1. Throughput: `--sessions` calls, `--concurrency` at a time, each acknowledging with `#`
//!    and keying the right code, against the daemon on a fresh SQLite store; then the same
//!    number of sessions and round trips against a bare tokio line server that answers from
//!    a fixed script with no store, as the yardstick.
//! 2. Memory: the daemon as a child process (`callverify serve`) with `--waiting` calls all
//!    waiting for input at once; its resident memory is read from /proc.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use callverify::config::Config;
use callverify::daemon;
use callverify::domain::status::Status;
use callverify::domain::{NewVerification, Verifications};
use callverify_testkit::emulator::{Action, Call, Transcript};

#[derive(Args)]
pub struct BenchArgs {
    /// Sessions in the throughput run
    #[arg(long, default_value_t = 20_000)]
    sessions: usize,
    /// Sessions in flight at once in the throughput run
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Sessions held waiting for input at once in the memory run (0 skips it)
    #[arg(long, default_value_t = 10_000)]
    waiting: usize,
    /// `POST /v1/verifications` requests in the API enqueue run (0 skips it)
    #[arg(long, default_value_t = 5_000)]
    api_requests: usize,
    /// Also run the API enqueue run on this Postgres database (its tables are created)
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    #[command(flatten)]
    pub speech: crate::speech::SpeechBenchArgs,
}

/// The commands the bare server sends: as many round trips as the verify flow makes.
const BARE_SCRIPT: &[&str] = &[
    "ANSWER",
    "STREAM FILE callverify/greeting #",
    "GET DATA callverify/enter-code 5000 6",
    "STREAM FILE callverify/verified \"\"",
    "STREAM FILE goodbye \"\"",
    "HANGUP",
];

pub async fn run(args: BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    let dir = tempfile::tempdir().context("creating a scratch directory")?;
    let config = bench_config(dir.path(), args.concurrency.max(args.waiting) + 64);
    println!(
        "callverify-bench: {} sessions, {} at a time; {} waiting (SQLite, {} cores)",
        args.sessions,
        args.concurrency,
        args.waiting,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let daemon_run = throughput_daemon(&config, &args).await?;
    daemon_run.print("daemon (verify flow, SQLite)");
    let bare_run = throughput_bare(&args).await?;
    bare_run.print("bare tokio line server");
    println!(
        "daemon / bare: {:.0}% of the bare server's sessions/s",
        100.0 * daemon_run.per_sec() / bare_run.per_sec()
    );
    if args.api_requests > 0 {
        enqueue_run(&config, &args, "SQLite").await?;
        if let Some(url) = &args.postgres {
            let mut pg = config.clone();
            pg.database.url = url.clone();
            pg.database.max_connections = 16;
            enqueue_run(&pg, &args, "Postgres").await?;
        }
    }
    if args.waiting > 0 {
        memory_run(&config, dir.path(), args.waiting).await?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `POST /v1/verifications` through the HTTP API, `--concurrency` at a time, over
/// keep-alive connections: verifications enqueued per second and request latency.
async fn enqueue_run(config: &Config, args: &BenchArgs, store: &str) -> anyhow::Result<()> {
    let running = InProcess::start(config).await?;
    let url = format!("http://{}/v1/verifications", running.http);
    let (_, key) = callverify::domain::api_keys::ApiKeys::new(running.app.store.clone())
        .create("bench")
        .await?;
    let client = reqwest::Client::new();
    let limit = Arc::new(Semaphore::new(args.concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.api_requests);
    for i in 0..args.api_requests {
        let permit = limit.clone().acquire_owned().await?;
        let (client, url, key) = (client.clone(), url.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let response = client
                .post(&url)
                .bearer_auth(&key)
                .header("Content-Type", "application/json")
                .body(format!(
                    r#"{{"phone":"+14155550101","user_ref":"bench-api-{i}"}}"#
                ))
                .send()
                .await;
            drop(permit);
            let status = response.map(|r| r.status().as_u16()).unwrap_or(0);
            (status, sent.elapsed())
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    for t in tasks {
        let (status, latency) = t.await?;
        if status != 201 {
            bail!("POST /v1/verifications answered {status}: the benchmark is not valid");
        }
        latencies.push(latency);
    }
    let stats = RunStats {
        sessions: latencies.len(),
        elapsed: started.elapsed(),
        turnarounds: latencies,
    };
    let mut line = String::new();
    stats.describe(&mut line, "requests", "request latency");
    println!("API enqueue ({store}): {line}");
    running.stop().await?;
    Ok(())
}

fn bench_config(dir: &Path, max_sessions: usize) -> Config {
    let mut config = Config::default();
    config.database.url = format!("sqlite://{}", dir.join("bench.db").display());
    config.security.secret_file = dir.join("bench.secret").display().to_string();
    config.agi.listen = "127.0.0.1:0".into();
    config.http.listen = "127.0.0.1:0".into();
    config.speech.listen = "127.0.0.1:0".into();
    config.agi.max_sessions = u32::try_from(max_sessions).unwrap_or(u32::MAX);
    config.agi.reply_timeout_secs = 300;
    // Every bench call is for one number: no rate limits here.
    config.verification.max_per_number_per_hour = u32::MAX;
    config.verification.max_per_user_per_hour = u32::MAX;
    config.verification.max_per_api_key_per_hour = u32::MAX;
    config.database.max_connections = 1;
    config
}

/// The daemon running in this process, on its own ports.
struct InProcess {
    app: daemon::App,
    agi: std::net::SocketAddr,
    http: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), daemon::DaemonError>>,
}

impl InProcess {
    async fn start(config: &Config) -> anyhow::Result<Self> {
        let app = daemon::open(config).await?;
        let listeners = daemon::bind(config).await?;
        let (agi, http) = (listeners.agi.local_addr()?, listeners.http.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (config, running) = (config.clone(), app.clone());
        let task = tokio::spawn(async move {
            daemon::run(&config, running, listeners, async {
                let _ = stopped.await;
            })
            .await
        });
        Ok(Self {
            app,
            agi,
            http,
            stop,
            task,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}

struct RunStats {
    sessions: usize,
    elapsed: Duration,
    turnarounds: Vec<Duration>,
}

impl RunStats {
    fn per_sec(&self) -> f64 {
        self.sessions as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&self, name: &str) {
        let mut line = String::new();
        self.describe(&mut line, "sessions", "command turnaround");
        println!("{name}: {line}");
    }

    /// "N units/s (...); what p50 .. p99 ..".
    fn describe(&self, out: &mut String, units: &str, what: &str) {
        let mut t = self.turnarounds.clone();
        t.sort_unstable();
        let pct = |p: f64| t[((t.len() as f64 * p) as usize).min(t.len() - 1)];
        *out = format!(
            "{:.0} {units}/s ({} {units} in {:.2} s, {} round trips); {what} p50 {:?} p99 {:?}",
            self.per_sec(),
            self.sessions,
            self.elapsed.as_secs_f64(),
            t.len(),
            pct(0.50),
            pct(0.99)
        );
    }
}

/// New verifications with their codes.
async fn create(service: &Verifications, n: usize) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let view = service
            .start(NewVerification {
                phone: "+14155550101".into(),
                user_ref: format!("bench-{i}"),
                ..Default::default()
            })
            .await?
            .view;
        out.push((view.id, view.code.unwrap_or_default()));
    }
    Ok(out)
}

/// Run `calls` against `addr`, `concurrency` at a time.
async fn drive(
    addr: std::net::SocketAddr,
    calls: Vec<Call>,
    concurrency: usize,
) -> anyhow::Result<RunStats> {
    let limit = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(calls.len());
    for call in calls {
        let permit = limit.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            let t = call.run(addr).await;
            drop(permit);
            t
        }));
    }
    let mut turnarounds = Vec::new();
    let sessions = tasks.len();
    for t in tasks {
        let transcript: Transcript = t.await??;
        turnarounds.extend(transcript.turnarounds);
    }
    Ok(RunStats {
        sessions,
        elapsed: started.elapsed(),
        turnarounds,
    })
}

async fn throughput_daemon(config: &Config, args: &BenchArgs) -> anyhow::Result<RunStats> {
    let running = InProcess::start(config).await?;
    let (service, addr) = (running.app.verifications.clone(), running.agi);
    let made = Instant::now();
    let codes = create(&service, args.sessions).await?;
    println!(
        "created {} verifications in {:.2} s",
        codes.len(),
        made.elapsed().as_secs_f64()
    );
    let calls = codes
        .iter()
        .map(|(id, code)| Call::verify(id).press("#").press(code))
        .collect();
    let stats = drive(addr, calls, args.concurrency).await?;
    for (id, _) in codes.iter().step_by((codes.len() / 50).max(1)) {
        if service.get(id).await?.status != Status::Verified {
            bail!("verification {id} did not end verified: the benchmark is not valid");
        }
    }
    running.stop().await?;
    Ok(stats)
}

async fn throughput_bare(args: &BenchArgs) -> anyhow::Result<RunStats> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(bare_session(stream));
        }
    });
    let calls = (0..args.sessions)
        .map(|_| Call::verify("vf_bench").press("#").press("123456"))
        .collect();
    let stats = drive(addr, calls, args.concurrency).await;
    server.abort();
    stats
}

/// Read the environment block, then send the fixed script, one reply per command.
async fn bare_session(stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        if read.read_line(&mut line).await? == 0 || line == "\n" {
            break;
        }
    }
    for command in BARE_SCRIPT {
        write.write_all(command.as_bytes()).await?;
        write.write_all(b"\n").await?;
        loop {
            line.clear();
            if read.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            if line != "HANGUP\n" {
                break;
            }
        }
    }
    Ok(())
}

async fn memory_run(config: &Config, dir: &Path, waiting: usize) -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    // This benchmark's own hidden `serve`: the daemon as `callverify serve` runs it.
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("serve")
        .current_dir(dir)
        .env("CALLVERIFY_DATABASE_URL", &config.database.url)
        .env(
            "CALLVERIFY_SECURITY_SECRET_FILE",
            &config.security.secret_file,
        )
        .env("CALLVERIFY_AGI_LISTEN", addr.to_string())
        .env("CALLVERIFY_HTTP_LISTEN", "127.0.0.1:0")
        .env("CALLVERIFY_SPEECH_LISTEN", "127.0.0.1:0")
        .env(
            "CALLVERIFY_AGI_MAX_SESSIONS",
            config.agi.max_sessions.to_string(),
        )
        .env("CALLVERIFY_AGI_REPLY_TIMEOUT_SECS", "600")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting `callverify serve` for the memory run")?;
    let pid = child.id().context("daemon pid")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("the daemon did not start listening on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let idle_kib = proc_status_kib(pid, "VmRSS:")?;
    let service = daemon::open(config).await?.verifications;
    let codes = create(&service, waiting).await?;
    let (go, hold) = watch::channel(false);
    let calls: Vec<Call> = codes
        .iter()
        .map(|(id, code)| {
            Call::verify(id)
                .press("#")
                .then(Action::Hold(hold.clone()))
                .press(code)
        })
        .collect();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(calls.len());
    for call in calls {
        tasks.push(tokio::spawn(call.run(addr)));
    }
    // All waiting: every call has a call attempt open.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let calling = count_status(&service, &codes, Status::Calling).await?;
        if calling == waiting {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {calling} of {waiting} sessions reached the code prompt");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the last ones get from the code prompt's start to waiting on it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_kib = proc_status_kib(pid, "VmRSS:")?;
    println!(
        "memory: {waiting} sessions waiting for input after {:.1} s: daemon RSS {:.1} MiB \
         (idle {:.1} MiB, {:.1} KiB per session)",
        started.elapsed().as_secs_f64(),
        rss_kib as f64 / 1024.0,
        idle_kib as f64 / 1024.0,
        (rss_kib - idle_kib) as f64 / waiting as f64
    );
    go.send(true)?;
    for t in tasks {
        t.await??;
    }
    let peak_kib = proc_status_kib(pid, "VmHWM:")?;
    let verified = count_status(&service, &codes, Status::Verified).await?;
    println!(
        "memory: all released; {verified} of {waiting} verified; daemon peak RSS {:.1} MiB",
        peak_kib as f64 / 1024.0
    );
    child.start_kill()?;
    child.wait().await?;
    Ok(())
}

async fn count_status(
    service: &Verifications,
    codes: &[(String, String)],
    status: Status,
) -> anyhow::Result<usize> {
    let mut n = 0;
    for (id, _) in codes {
        n += usize::from(service.get(id).await?.status == status);
    }
    Ok(n)
}

/// A `kB` field of /proc/PID/status, e.g. `VmRSS:` or `VmHWM:`.
fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("reading the daemon's memory from /proc (Linux only)")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}
