//! The throughput, enqueue and memory runs: concurrent emulated Asterisk sessions through the verify flow.
//!
//! 1. Throughput: `--sessions` calls, `--concurrency` at a time (100 and 1,000), each acknowledging with `#`
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
use callverify_testkit::emulator::{Action, Call};

#[derive(Args)]
pub struct BenchArgs {
    /// Sessions in each throughput run
    #[arg(long, default_value_t = 20_000)]
    sessions: usize,
    /// Sessions in flight at once in the throughput runs, one pair of runs each
    #[arg(long, value_delimiter = ',', default_values_t = [100, 1000])]
    concurrency: Vec<usize>,
    /// Sessions held waiting for input at once in the memory run (0 skips it)
    #[arg(long, default_value_t = 10_000)]
    waiting: usize,
    /// `POST /v1/verifications` requests in the API enqueue run (0 skips it)
    #[arg(long, default_value_t = 5_000)]
    api_requests: usize,
    /// Also run the call flow and the API enqueue run on this Postgres database (its tables
    /// are created)
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// Count each server's instructions per session under valgrind's callgrind, over this
    /// many sessions (0 skips it; needs valgrind)
    #[arg(long, value_name = "SESSIONS", default_value_t = 0)]
    callgrind: usize,
    /// Keep the callgrind dumps in this directory (`daemon.callgrind`, `bare.callgrind`), to
    /// read with callgrind_annotate
    #[arg(long, value_name = "DIR")]
    callgrind_out: Option<std::path::PathBuf>,
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

/// Sessions run before each measurement, outside it: what a server does once (the webhook
/// sender's root certificates, the first preparation of each statement) is not counted.
const WARM_UP: usize = 200;

/// Sessions in flight while callgrind counts (it runs one thread at a time, slowly).
const CALLGRIND_CONCURRENCY: usize = 50;

pub async fn run(args: BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    let dir = tempfile::tempdir().context("creating a scratch directory")?;
    let config = bench_config(dir.path(), "bench");
    println!(
        "callverify-bench: {} sessions a run, {} at a time; {} waiting (SQLite, {} cores, \
         agi.max_sessions {})",
        args.sessions,
        args.concurrency
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(" and "),
        args.waiting,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        config.agi.max_sessions,
    );
    for &concurrency in &args.concurrency {
        let flow = bench_config(dir.path(), &format!("flow-{concurrency}"));
        let daemon_run = throughput(&Server::Daemon(&flow), args.sessions, concurrency).await?;
        daemon_run.print(&format!(
            "daemon (verify flow, SQLite), {concurrency} at a time"
        ));
        let bare_run = throughput(&Server::Bare, args.sessions, concurrency).await?;
        bare_run.print(&format!("bare tokio line server, {concurrency} at a time"));
        daemon_run.compare(&bare_run, &format!("daemon / bare at {concurrency}"));
        if let Some(url) = &args.postgres {
            let pg = on_postgres(&flow, url);
            let pg_run = throughput(&Server::Daemon(&pg), args.sessions, concurrency).await?;
            pg_run.print(&format!(
                "daemon (verify flow, Postgres), {concurrency} at a time"
            ));
            pg_run.compare(
                &bare_run,
                &format!("daemon on Postgres / bare at {concurrency}"),
            );
        }
    }
    if args.callgrind > 0 {
        let flow = bench_config(dir.path(), "callgrind");
        let out = args.callgrind_out.as_deref().unwrap_or(dir.path());
        let daemon = instructions(&Server::Daemon(&flow), out, "daemon", args.callgrind).await?;
        let bare = instructions(&Server::Bare, out, "bare", args.callgrind).await?;
        println!(
            "instructions per session (callgrind, {} sessions, {CALLGRIND_CONCURRENCY} at a \
             time): daemon {daemon:.0}, bare server {bare:.0}: {:.2}x",
            args.callgrind,
            daemon / bare
        );
    }
    if args.api_requests > 0 {
        let concurrency = args.concurrency.first().copied().unwrap_or(100);
        enqueue_run(&config, args.api_requests, concurrency, "SQLite").await?;
        if let Some(url) = &args.postgres {
            enqueue_run(
                &on_postgres(&config, url),
                args.api_requests,
                concurrency,
                "Postgres",
            )
            .await?;
        }
    }
    if args.waiting > 0 {
        memory_run(&bench_config(dir.path(), "memory"), args.waiting).await?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `POST /v1/verifications` through the HTTP API, `--concurrency` at a time, over
/// keep-alive connections, each for another number and user as a web app's are (one API
/// key, whose hourly limit counts them all): verifications enqueued per second and request
/// latency.
async fn enqueue_run(
    config: &Config,
    requests: usize,
    concurrency: usize,
    store: &str,
) -> anyhow::Result<()> {
    let running = InProcess::start(config).await?;
    let url = format!("http://{}/v1/verifications", running.http);
    let (_, key) = callverify::domain::api_keys::ApiKeys::new(running.app.store.clone())
        .create("bench")
        .await?;
    let client = reqwest::Client::new();
    let limit = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(requests);
    for i in 0..requests {
        let permit = limit.clone().acquire_owned().await?;
        let (client, url, key) = (client.clone(), url.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let response = client
                .post(&url)
                .bearer_auth(&key)
                .header("Content-Type", "application/json")
                .body(format!(
                    r#"{{"phone":"+1415555{:04}","user_ref":"bench-api-{i}"}}"#,
                    i % 10_000
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
        ..RunStats::default()
    };
    let mut line = String::new();
    stats.describe(&mut line, "requests", "request latency");
    println!("API enqueue ({store}): {line}");
    running.stop().await?;
    Ok(())
}

/// The daemon's configuration for one run, on its own SQLite file `name.db` in `dir`, with
/// the product's defaults otherwise (`agi.max_sessions` 1,000 among them).
fn bench_config(dir: &Path, name: &str) -> Config {
    let mut config = Config::default();
    config.database.url = format!("sqlite://{}", dir.join(format!("{name}.db")).display());
    config.security.secret_file = dir.join("bench.secret").display().to_string();
    config.agi.listen = "127.0.0.1:0".into();
    config.http.listen = "127.0.0.1:0".into();
    config.speech.listen = "127.0.0.1:0".into();
    // A benchmark creates thousands of verifications in seconds: no rate limits here.
    config.verification.max_per_number_per_hour = u32::MAX;
    config.verification.max_per_user_per_hour = u32::MAX;
    config.verification.max_per_api_key_per_hour = u32::MAX;
    config
}

/// `config` on the Postgres database at `url` (with the product's pool size, as every
/// setting not made here).
fn on_postgres(config: &Config, url: &str) -> Config {
    let mut pg = config.clone();
    pg.database.url = url.to_owned();
    pg
}

/// The daemon running in this process, on its own ports (the API enqueue run).
struct InProcess {
    app: daemon::App,
    http: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), daemon::DaemonError>>,
}

impl InProcess {
    async fn start(config: &Config) -> anyhow::Result<Self> {
        let app = daemon::open(config).await?;
        let listeners = daemon::bind(config).await?;
        let http = listeners.http.local_addr()?;
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

/// What a throughput run measured.
#[derive(Default)]
struct RunStats {
    sessions: usize,
    elapsed: Duration,
    turnarounds: Vec<Duration>,
    /// Sessions that did not run their whole script (refused, reset, cut short).
    errors: usize,
    /// The server process's CPU time (user and system) during the run.
    cpu: Duration,
}

impl RunStats {
    fn per_sec(&self) -> f64 {
        self.sessions as f64 / self.elapsed.as_secs_f64()
    }

    fn cpu_per_session(&self) -> Duration {
        self.cpu / u32::try_from(self.sessions.max(1)).unwrap_or(u32::MAX)
    }

    /// This run against the bare server's: the ratios of sessions/s and of CPU per session.
    fn compare(&self, bare: &RunStats, name: &str) {
        println!(
            "{name}: {:.2}x the sessions/s, {:.2}x the CPU per session",
            self.per_sec() / bare.per_sec(),
            self.cpu_per_session().as_secs_f64() / bare.cpu_per_session().as_secs_f64()
        );
    }

    fn print(&self, name: &str) {
        let mut line = String::new();
        self.describe(&mut line, "sessions", "command turnaround");
        println!(
            "{name}: {line}; {} errors; server CPU {:?} per session",
            self.errors,
            self.cpu_per_session()
        );
    }

    /// "N units/s (...); what p50 .. p99 ..".
    fn describe(&self, out: &mut String, units: &str, what: &str) {
        let mut t = self.turnarounds.clone();
        t.sort_unstable();
        let pct = |p: f64| {
            t.get(((t.len() as f64 * p) as usize).min(t.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
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

/// New verifications with their codes, created 256 at a time, each for another number and
/// user, as a web app's are (checks of one number or user run one after the other: 100
/// calls at once for one number would measure that queue, not the flow).
async fn create(service: &Arc<Verifications>, n: usize) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::with_capacity(n);
    let mut next = 0;
    while next < n {
        let batch: Vec<_> = (next..n.min(next + 256))
            .map(|i| {
                let service = service.clone();
                tokio::spawn(async move {
                    service
                        .start(NewVerification {
                            phone: format!("+1415555{:04}", i % 10_000),
                            user_ref: format!("bench-{i}"),
                            ..Default::default()
                        })
                        .await
                })
            })
            .collect();
        next += batch.len();
        for started in batch {
            let view = started.await??.view;
            out.push((view.id, view.code.unwrap_or_default()));
        }
    }
    Ok(out)
}

/// Run `calls` against `addr`, `concurrency` at a time; a call that does not get through its
/// whole script (the six commands, HANGUP last) is an error.
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
    let mut stats = RunStats {
        sessions: tasks.len(),
        ..RunStats::default()
    };
    for t in tasks {
        match t.await? {
            Ok(transcript) => {
                let whole = transcript.commands.len() == BARE_SCRIPT.len()
                    && transcript.commands.last().is_some_and(|c| c == "HANGUP");
                stats.errors += usize::from(!whole);
                stats.turnarounds.extend(transcript.turnarounds);
            }
            Err(_) => stats.errors += 1,
        }
    }
    stats.elapsed = started.elapsed();
    Ok(stats)
}

/// What a throughput run measures: the daemon on a store, or the bare line server.
enum Server<'a> {
    Daemon(&'a Config),
    Bare,
}

impl Server<'_> {
    /// Its calls, each acknowledging with `#` and keying the right code; for the daemon,
    /// `sessions` new verifications in its store.
    async fn calls(&self, sessions: usize) -> anyhow::Result<(Vec<Call>, Vec<String>)> {
        match self {
            Server::Daemon(config) => {
                let app = daemon::open(config).await?;
                let made = Instant::now();
                let codes = create(&app.verifications, sessions).await?;
                println!(
                    "created {} verifications in {:.2} s",
                    codes.len(),
                    made.elapsed().as_secs_f64()
                );
                app.store.close().await;
                let calls = codes
                    .iter()
                    .map(|(id, code)| Call::verify(id).press("#").press(code))
                    .collect();
                Ok((calls, codes.into_iter().map(|(id, _)| id).collect()))
            }
            Server::Bare => Ok((
                (0..sessions)
                    .map(|_| Call::verify("vf_bench").press("#").press("123456"))
                    .collect(),
                Vec::new(),
            )),
        }
    }

    /// Start it as a child process, under `wrapper` (valgrind) if given.
    async fn start(&self, wrapper: Option<&[String]>) -> anyhow::Result<Process> {
        let mut env = vec![("RUST_LOG".to_owned(), "warn".to_owned())];
        let args: &[&str] = match self {
            Server::Daemon(config) => {
                env.extend(daemon_env(config));
                &["serve"]
            }
            Server::Bare => &["bare-server"],
        };
        Process::start(args, &env, wrapper).await
    }

    /// After a daemon run: every verification (a sample of them) ended verified.
    async fn check(&self, ids: &[String]) -> anyhow::Result<()> {
        let Server::Daemon(config) = self else {
            return Ok(());
        };
        let app = daemon::open(config).await?;
        for id in ids.iter().step_by((ids.len() / 50).max(1)) {
            if app.verifications.get(id).await?.status != Status::Verified {
                bail!("verification {id} did not end verified: the benchmark is not valid");
            }
        }
        app.store.close().await;
        Ok(())
    }
}

/// The environment that makes `callverify serve` use `config`'s store, key and listeners.
fn daemon_env(config: &Config) -> Vec<(String, String)> {
    [
        ("CALLVERIFY_DATABASE_URL", config.database.url.clone()),
        (
            "CALLVERIFY_SECURITY_SECRET_FILE",
            config.security.secret_file.clone(),
        ),
        ("CALLVERIFY_HTTP_LISTEN", "127.0.0.1:0".into()),
        ("CALLVERIFY_SPEECH_LISTEN", "127.0.0.1:0".into()),
        (
            "CALLVERIFY_AGI_MAX_SESSIONS",
            config.agi.max_sessions.to_string(),
        ),
        (
            "CALLVERIFY_AGI_REPLY_TIMEOUT_SECS",
            config.agi.reply_timeout_secs.to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// One throughput run: `sessions` calls, `concurrency` at a time, against `server` in a
/// process of its own, whose CPU time is read from /proc around the run (after a warm-up).
async fn throughput(
    server: &Server<'_>,
    sessions: usize,
    concurrency: usize,
) -> anyhow::Result<RunStats> {
    let (mut calls, ids) = server.calls(WARM_UP + sessions).await?;
    let process = server.start(None).await?;
    let measured = calls.split_off(WARM_UP);
    warm_up(process.addr, calls, concurrency).await?;
    let cpu_before = process.cpu()?;
    let mut stats = drive(process.addr, measured, concurrency).await?;
    stats.cpu = process.cpu()?.saturating_sub(cpu_before);
    process.stop().await?;
    server.check(&ids).await?;
    Ok(stats)
}

/// The warm-up sessions, which must all go through too.
async fn warm_up(
    addr: std::net::SocketAddr,
    calls: Vec<Call>,
    concurrency: usize,
) -> anyhow::Result<()> {
    let stats = drive(addr, calls, concurrency).await?;
    if stats.errors > 0 {
        bail!(
            "{} warm-up sessions failed: the run is not valid",
            stats.errors
        );
    }
    Ok(())
}

/// Instructions per session of `server`, counted by callgrind over `sessions` sessions
/// (its counters zeroed after the warm-up, dumped when they are done, to
/// `dir/NAME.callgrind`).
async fn instructions(
    server: &Server<'_>,
    dir: &Path,
    name: &str,
    sessions: usize,
) -> anyhow::Result<f64> {
    let (mut calls, ids) = server.calls(WARM_UP + sessions).await?;
    let measured = calls.split_off(WARM_UP);
    let out = dir.join(format!("{name}.callgrind.{}", std::process::id()));
    let wrapper = [
        "valgrind".to_owned(),
        "--tool=callgrind".to_owned(),
        "--quiet".to_owned(),
        "--fair-sched=yes".to_owned(),
        format!("--callgrind-out-file={}", out.display()),
    ];
    let process = server.start(Some(&wrapper)).await?;
    warm_up(process.addr, calls, CALLGRIND_CONCURRENCY).await?;
    callgrind_control(&["-z"], process.pid).await?;
    let stats = drive(process.addr, measured, CALLGRIND_CONCURRENCY).await?;
    if stats.errors > 0 {
        bail!(
            "{} sessions failed under callgrind: the count is not valid",
            stats.errors
        );
    }
    callgrind_control(&["-d"], process.pid).await?;
    process.stop().await?;
    server.check(&ids).await?;
    // The dump after the zeroing is `OUT.1`; the one at exit is not wanted.
    let zeroed = dir.join(format!("{name}.callgrind"));
    std::fs::rename(format!("{}.1", out.display()), &zeroed).context("reading callgrind's dump")?;
    let _ = std::fs::remove_file(&out);
    let dump = std::fs::read_to_string(&zeroed).context("reading callgrind's dump")?;
    let total: f64 = dump
        .lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no instruction total in callgrind's dump")?;
    Ok(total / sessions as f64)
}

async fn callgrind_control(args: &[&str], pid: u32) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .status()
        .await
        .context("running callgrind_control (install valgrind)")?;
    if !status.success() {
        bail!("callgrind_control {args:?} failed: {status}");
    }
    Ok(())
}

/// A server this benchmark started as a child process, listening for FastAGI on `addr`.
struct Process {
    child: tokio::process::Child,
    pid: u32,
    addr: std::net::SocketAddr,
}

impl Process {
    /// This benchmark's own hidden `serve` (what `callverify serve` runs) or `bare-server`,
    /// on a free port, once it accepts connections.
    async fn start(
        args: &[&str],
        env: &[(String, String)],
        wrapper: Option<&[String]>,
    ) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let exe = std::env::current_exe()?;
        let mut command = match wrapper {
            Some([program, options @ ..]) => {
                let mut c = tokio::process::Command::new(program);
                c.args(options).arg(&exe);
                c
            }
            _ => tokio::process::Command::new(&exe),
        };
        let mut child = command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("CALLVERIFY_AGI_LISTEN", addr.to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {args:?} for the benchmark"))?;
        let pid = child.id().context("server pid")?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while TcpStream::connect(addr).await.is_err() {
            if let Some(status) = child.try_wait()? {
                bail!("{args:?} exited before listening: {status}");
            }
            if Instant::now() > deadline {
                bail!("{args:?} did not start listening on {addr}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self { child, pid, addr })
    }

    /// Its CPU time so far, user and system, all threads (/proc/PID/stat).
    fn cpu(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .context("reading the server's CPU time from /proc (Linux only)")?;
        // After the command name in parentheses: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| -> anyhow::Result<u64> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .context("unexpected /proc/PID/stat")
        };
        // USER_HZ is 100 on Linux.
        Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
    }

    /// A `kB` field of /proc/PID/status, e.g. `VmRSS:` or `VmHWM:`.
    fn status_kib(&self, field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .context("reading the daemon's memory from /proc (Linux only)")?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} in /proc/{}/status", self.pid))
    }

    /// Stop it (SIGTERM, as systemd does) and wait for it.
    async fn stop(mut self) -> anyhow::Result<()> {
        let _ = tokio::process::Command::new("kill")
            .arg(self.pid.to_string())
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .is_err()
        {
            self.child.start_kill()?;
            self.child.wait().await?;
        }
        Ok(())
    }
}

/// The bare server (`callverify-bench bare-server`): for each connection, read the
/// environment block, then send the fixed script, one reply per command.
pub async fn bare_server(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(bare_session(stream));
    }
}

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

/// `waiting` calls held at the code prompt at once: the daemon's resident memory.
async fn memory_run(config: &Config, waiting: usize) -> anyhow::Result<()> {
    let mut config = config.clone();
    config.agi.max_sessions = u32::try_from(waiting + 64).unwrap_or(u32::MAX);
    config.agi.reply_timeout_secs = 600;
    let server = Server::Daemon(&config);
    let app = daemon::open(&config).await?;
    let codes = create(&app.verifications, waiting).await?;
    let process = server.start(None).await?;
    let idle_kib = process.status_kib("VmRSS:")?;
    let service = app.verifications.clone();
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
        tasks.push(tokio::spawn(call.run(process.addr)));
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
    let rss_kib = process.status_kib("VmRSS:")?;
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
    let peak_kib = process.status_kib("VmHWM:")?;
    let verified = count_status(&service, &codes, Status::Verified).await?;
    println!(
        "memory: all released; {verified} of {waiting} verified; daemon peak RSS {:.1} MiB",
        peak_kib as f64 / 1024.0
    );
    process.stop().await?;
    app.store.close().await;
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
