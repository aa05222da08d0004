//! Wiring: the store, the verification rules and the FastAGI server, from a [`Config`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use callverify_pbx::ami::Ami;
use callverify_pbx::audiosocket::{Hub, ListenerConfig};
use tokio::net::TcpListener;

use crate::config::{Config, ConfigError};
use crate::doctor::selftest::Selftests;
use crate::domain::api_keys::ApiKeys;
use crate::domain::codes::{server_key, CodeHasher};
use crate::domain::verifications::{migrate, Heartbeat, Migration};
use crate::domain::{Machine, Registered, Verifications, VerifyError};
use crate::flow::{Hearing, Router, SpokenCodes};
use crate::outbound::dialer::{Dialer, DialerConfig};
use crate::outbound::webhooks::{Sender, WebhookConfig};
use crate::store::{Store, StoreError};
use crate::support::staff::Staff;
use crate::support::Support;
use crate::web::api::ApiState;
use crate::web::console::ConsoleState;
use crate::web::HttpLimits;

/// How long a stop waits for the webhook sender's batch before it closes the calls cut off
/// (the unit gives a stop 45 s, the calls' grace 30 s of them).
const WEBHOOKS_STOP_WAIT: Duration = Duration::from_secs(5);

/// Asterisk names the call's UUID at once after connecting.
const AUDIOSOCKET_UUID_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("cannot read or create the secret key file {path}: {source}")]
    Key {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen for {what} on {addr}: {source} (is another callverify running?)")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "another live daemon runs as {name} on this store (process {pid}, seen {seen_secs} s \
         ago): give each daemon its own agi.listen address, or stop the other first"
    )]
    NameInUse {
        name: String,
        pid: i64,
        seen_secs: i64,
    },
    #[error(transparent)]
    Speech(#[from] callverify_speech::SpeechError),
    #[error(
        "no store at {}: only `callverify serve` and `callverify migrate` create one, and this \
         command would have started an empty store apart from the service's. Name the service's \
         configuration (--config FILE or $CALLVERIFY_CONFIG), or run `callverify migrate` to \
         create a store here",
        path.display()
    )]
    NoStore { path: PathBuf },
    #[error(
        "the store is there but its secret key file {} is missing: without it no code in the \
         store can be checked. Restore the file, or set security.secret as the service does",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error(
        "the store's schema is older than this release's (migrations {missing} to apply), and \
         daemons of the release before still run on it: {daemons}. A migration under them \
         would break their calls. Stop them first (`systemctl stop callverify` on their \
         hosts; a daemon unheard for {dead_after} s counts as stopped), then run `callverify \
         migrate` or start this daemon again, and upgrade them before they start again"
    )]
    SchemaInUse {
        missing: String,
        daemons: String,
        dead_after: u64,
    },
}

/// Start the AMI connection and the dialer when `ami.host` is set: the dialer places no more
/// calls once `closing`, and follows those it placed until `stopped`, as the connection
/// stays up.
fn start_dialer(
    config: &Config,
    service: &Arc<Verifications>,
    closing: &tokio::sync::watch::Receiver<bool>,
    stopped: &tokio::sync::watch::Receiver<bool>,
) -> Option<Ami> {
    if config.ami.host.is_empty() {
        tracing::info!("ami.host is not set: no outbound calls (the dialer is idle)");
        return None;
    }
    let ami = Ami::start(config.ami_config(), stopped.clone());
    let dialer = Dialer::new(
        DialerConfig {
            channel: config.dialer.channel.clone(),
            caller_id: config.dialer.caller_id.clone(),
            ring_timeout: Duration::from_secs(config.dialer.ring_timeout_secs),
            max_concurrent: config.dialer.max_concurrent as usize,
            max_per_second: config.dialer.max_per_second,
        },
        service.clone(),
        ami.clone(),
    );
    tokio::spawn(dialer.run(closing.clone(), stopped.clone()));
    Some(ami)
}

/// Every few seconds: release stale dialer claims, expire overdue verifications, delete the
/// history past its retention, write support transcripts a stop left unwritten.
async fn janitor(
    service: Arc<Verifications>,
    support: Arc<Support>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = every.tick() => {
                if let Err(e) = service.maintain().await {
                    tracing::error!(error = %e, "queue upkeep failed");
                }
                match service.purge_history().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(verifications = n,
                        "deleted ended verifications past verification.retention_days"),
                    Err(e) => tracing::error!(error = %e, "history upkeep failed"),
                }
                match support.purge(crate::domain::clock::now_ms()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(recordings = n, "deleted support recordings past retention"),
                    Err(e) => tracing::error!(error = %e, "support upkeep failed"),
                }
                match support.transcribe_lost(crate::domain::clock::now_ms()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(requests = n,
                        "writing the transcripts a stopped daemon left unwritten"),
                    Err(e) => tracing::error!(error = %e, "cannot look for lost transcripts"),
                }
            }
            _ = stopped.changed() => return,
        }
    }
}

/// The store and the verification service on it: what `serve` and every CLI command open.
#[derive(Clone)]
pub struct App {
    pub store: Store,
    pub verifications: Arc<Verifications>,
    /// The server's key (`security.secret` or the secret file): codes' hashes, form tokens.
    key: Vec<u8>,
}

/// Open the store (creating it, or applying the migrations it lacks, unless daemons of an
/// older release run on it) and build the verification service on it.
pub async fn open(config: &Config) -> Result<App, DaemonError> {
    let store = Store::connect(&config.database.url, config.database.max_connections).await?;
    let dead_after = Duration::from_secs(config.database.takeover_after_secs);
    match migrate(&store, &machine(), dead_after).await {
        Ok(Migration::Done) => {}
        Ok(Migration::Refused { missing, daemons }) => {
            store.close().await;
            let now = crate::domain::clock::now_ms();
            let list = |items: Vec<String>| items.join(", ");
            return Err(DaemonError::SchemaInUse {
                missing: list(missing.iter().map(i64::to_string).collect()),
                daemons: list(
                    daemons
                        .iter()
                        .map(|d| {
                            format!(
                                "{} (process {}, heard from {} s ago)",
                                d.name,
                                d.pid,
                                (now - d.last_seen).max(0) / 1000
                            )
                        })
                        .collect(),
                ),
                dead_after: config.database.takeover_after_secs,
            });
        }
        Err(e) => {
            store.close().await;
            return Err(e.into());
        }
    }
    on(config, store)
}

/// The service on `store`.
fn on(config: &Config, store: Store) -> Result<App, DaemonError> {
    let path = PathBuf::from(&config.security.secret_file);
    let key = server_key(&config.security.secret, &path)
        .map_err(|source| DaemonError::Key { path, source })?;
    let verifications = Arc::new(Verifications::new(
        store.clone(),
        CodeHasher::new(key.clone()),
        config.phone_policy(),
        config.policy(),
        daemon_name(config, None),
    ));
    Ok(App {
        store,
        verifications,
        key,
    })
}

/// [`open`] for the admin's commands: a store and key that are already there, and a schema
/// that is this release's. Only the service (and `migrate`) create or migrate them, so a
/// command run with another configuration than the service's cannot quietly write into a
/// new, empty store, and one run after an upgrade cannot change the schema under daemons of
/// the release before.
pub async fn open_existing(config: &Config) -> Result<App, DaemonError> {
    if let Some(path) = crate::store::sqlite_path(&config.database.url) {
        if !path.exists() {
            return Err(DaemonError::NoStore {
                path: std::path::absolute(path).unwrap_or_else(|_| path.to_owned()),
            });
        }
    }
    let key = PathBuf::from(&config.security.secret_file);
    if config.security.secret.is_empty() && !key.exists() {
        return Err(DaemonError::NoKey { path: key });
    }
    let store = Store::connect(&config.database.url, config.database.max_connections).await?;
    store.check_schema().await?;
    on(config, store)
}

/// A daemon's name on its call attempts and in the store's list of daemons: the host and the
/// FastAGI address it listens on (`bound`, once bound: port 0 then names the real port). One
/// daemon per host and address can run, so the name survives a restart and two daemons on
/// one host never share it.
fn daemon_name(config: &Config, bound: Option<SocketAddr>) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    match bound {
        Some(addr) => format!("{host}/{addr}"),
        None => format!("{host}/{}", config.agi.listen),
    }
}

/// This machine's boot and this process, as the store's list of daemons records them.
fn machine() -> Machine {
    Machine {
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|b| b.trim().to_owned())
            .unwrap_or_default(),
        pid: i64::from(std::process::id()),
        is_running: |pid| std::path::Path::new(&format!("/proc/{pid}")).exists(),
    }
}

/// Register in the store under this daemon's name, and heartbeat until it `left` (its calls
/// done or closed: until then another daemon must not take them over); `outdated` is set to
/// the migrations unknown to this release when a newer one migrated the store meanwhile,
/// and the daemon is to stop. The heartbeat's task is returned, to be awaited once `left`
/// is sent: no heartbeat may write (and register the daemon again) after it left the list.
async fn register(
    config: &Config,
    service: &Arc<Verifications>,
    agi: &TcpListener,
    left: &tokio::sync::watch::Receiver<bool>,
    outdated: tokio::sync::watch::Sender<Option<Vec<i64>>>,
) -> Result<tokio::task::JoinHandle<()>, DaemonError> {
    let name = daemon_name(config, agi.local_addr().ok());
    let machine = machine();
    match service.register(name.clone(), &machine).await? {
        Registered::Fresh => {}
        Registered::Replaced { last_seen } => tracing::info!(
            daemon = %name,
            unheard_ms = crate::domain::clock::now_ms() - last_seen,
            "took over this daemon name from an earlier run"
        ),
        Registered::InUse { pid, last_seen, .. } => {
            return Err(DaemonError::NameInUse {
                name,
                pid,
                seen_secs: (crate::domain::clock::now_ms() - last_seen) / 1000,
            })
        }
    }
    let service = service.clone();
    let mut left = left.clone();
    let every = Duration::from_secs(config.database.heartbeat_secs.max(1));
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                biased;
                _ = left.changed() => return,
                _ = tick.tick() => match service.heartbeat(&machine).await {
                    Ok(Heartbeat::Beat) => {}
                    Ok(Heartbeat::Outdated { unknown }) => {
                        if outdated.borrow().is_none() {
                            tracing::error!(?unknown,
                                "a newer callverify migrated the store: this daemon stops (its \
                                 statements are written for the schema before); upgrade it");
                            outdated.send_replace(Some(unknown));
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "heartbeat to the store failed"),
                },
            }
        }
    }))
}

/// The daemon's listening sockets, bound before it runs (so that a caller can learn the
/// ports when it asked for port 0).
pub struct Listeners {
    pub agi: TcpListener,
    pub http: TcpListener,
    /// AudioSocket: the caller's audio for spoken codes and support-line messages.
    pub audio: TcpListener,
}

pub async fn bind(config: &Config) -> Result<Listeners, DaemonError> {
    // Refuse at startup, not at the first spoken code, a model this build cannot run.
    #[cfg(not(feature = "speech"))]
    if config.recogniser_settings().is_some() {
        return Err(callverify_speech::SpeechError::NotBuilt.into());
    }
    let bind = |addr: SocketAddr, what: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Bind { what, addr, source })
    };
    Ok(Listeners {
        agi: bind(config.agi_listen()?, "FastAGI (agi.listen)").await?,
        http: bind(config.http_listen()?, "the HTTP API (http.listen)").await?,
        audio: bind(config.speech_listen()?, "AudioSocket (speech.listen)").await?,
    })
}

/// The recogniser, loaded once (a second or two, off the async threads), when a model is
/// configured; `None`: the flows ask for keys only.
async fn spoken_codes(config: &Config) -> Result<Option<Arc<SpokenCodes>>, DaemonError> {
    let Some(settings) = config.recogniser_settings() else {
        return Ok(None);
    };
    #[cfg(feature = "speech")]
    {
        let model = settings.model.clone();
        let recogniser = load_recogniser(settings).await?;
        tracing::info!(model = %model.display(), "spoken codes on: the recogniser is loaded");
        Ok(Some(Arc::new(SpokenCodes {
            recogniser,
            endpoint: config.endpoint_settings(),
        })))
    }
    #[cfg(not(feature = "speech"))]
    {
        let _ = settings;
        Err(callverify_speech::SpeechError::NotBuilt.into())
    }
}

/// Loads the recogniser (its model checked against its SHA256SUMS) off the async threads:
/// `serve` at startup, `doctor` to check the model.
#[cfg(feature = "speech")]
pub(crate) async fn load_recogniser(
    settings: callverify_speech::RecogniserSettings,
) -> Result<callverify_speech::Recogniser, callverify_speech::SpeechError> {
    let model = settings.model.clone();
    tokio::task::spawn_blocking(move || callverify_speech::Recogniser::load(&settings))
        .await
        .map_err(|e| callverify_speech::SpeechError::Model {
            path: model,
            message: format!("loading stopped: {e}"),
        })?
}

/// `callverify serve`: bind the listeners (a refusal leaves no store behind), open the
/// store, run until `shutdown` completes and calls in progress are done, close the store.
pub async fn serve(config: &Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let listeners = bind(config).await?;
    let app = open(config).await?;
    let result = run(config, app.clone(), listeners, shutdown).await;
    app.store.close().await;
    result
}

/// Completes on SIGTERM or Ctrl-C (SIGINT). The handlers are installed at once, not when
/// the daemon first waits on them (as `tokio::signal::ctrl_c` would), so that a signal while
/// it starts up (a migration, a model loading) is a clean stop once it has started, not the
/// default action's kill.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown requested");
    }
}

/// Run the daemon until `shutdown` completes and calls in progress are done.
pub async fn run(
    config: &Config,
    app: App,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let App {
        store,
        verifications: service,
        key,
    } = app;
    // A stop in two steps, each a signal every part it concerns sees. `closing`, on the
    // shutdown signal: the FastAGI listener closes (Asterisk is refused at once and its
    // dialplan apologises) and the dialer places no more calls. `stopped`, once the calls
    // already accepted are done or the grace ran out: what those calls need until their end
    // stops (AudioSocket for spoken codes and messages, the HTTP API for the web app's
    // checks, webhooks, AMI, the upkeep).
    let (close, closing) = tokio::sync::watch::channel(false);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // Last, the heartbeat, which keeps this daemon's calls from being taken over: once those
    // cut off at the end of the grace are closed too.
    let (leave, left) = tokio::sync::watch::channel(false);
    let (outdated_tx, mut outdated) = tokio::sync::watch::channel(None);
    let heartbeat = register(config, &service, &listeners.agi, &left, outdated_tx).await?;
    let recovered = service.recover_interrupted().await?;
    if recovered.attempts > 0 || recovered.verifications > 0 || recovered.events > 0 {
        tracing::warn!(
            attempts = recovered.attempts,
            verifications = recovered.verifications,
            webhooks = recovered.events,
            "closed call attempts left open by an earlier run as interrupted, and sending \
             again the webhooks it was sending"
        );
    }
    let advertise = match config.speech.advertise.as_str() {
        // The bound address, so that port 0 (tests) resolves to the real port.
        "" => listeners
            .audio
            .local_addr()
            .map_or_else(|_| config.speech.listen.clone(), |a| a.to_string()),
        configured => configured.to_owned(),
    };
    let hub = Hub::new(&advertise);
    let speech = spoken_codes(config).await?;
    let support = Arc::new(Support::new(
        store.clone(),
        config.phone_policy(),
        config.support_settings()?,
        speech.as_ref().map(|s| s.recogniser.clone()),
    ));
    let hearing = Hearing {
        audio: hub.clone(),
        speech,
    };
    let router = Arc::new(Router::new(
        service.clone(),
        config.flow_settings(),
        support.clone(),
        hearing,
        Selftests::new(store.clone()),
    ));
    let ami = start_dialer(config, &service, &closing, &stopped);
    let api = Arc::new(ApiState::new(
        service.clone(),
        support.clone(),
        ApiKeys::new(store.clone()),
        usize::try_from(config.http.max_body_bytes).unwrap_or(usize::MAX),
        ami.map(|a| a.state()),
    ));
    let console = Arc::new(ConsoleState {
        support: support.clone(),
        staff: Staff::new(
            store.clone(),
            Duration::from_secs(config.support.session_hours * 3600),
        ),
        secure_cookies: config.support.secure_cookies,
        form_key: key,
    });
    if !config.support.secure_cookies
        && !listeners
            .http
            .local_addr()
            .is_ok_and(|a| a.ip().is_loopback())
    {
        tracing::warn!(
            "the support console is served beyond loopback without support.secure_cookies: \
             put a TLS proxy in front and turn it on"
        );
    }
    let local = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(
        agi = %local(&listeners.agi),
        http = %local(&listeners.http),
        audiosocket = %local(&listeners.audio),
        database = ?store.backend(),
        "callverify serving"
    );
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    store
        .set_default_webhook(!config.webhooks.url.is_empty())
        .await?;
    let webhooks = match Sender::new(
        WebhookConfig {
            url: config.webhooks.url.clone(),
            secret: config.webhooks.secret.clone(),
            timeout: Duration::from_secs(config.webhooks.timeout_secs.max(1)),
            retry_base: Duration::from_millis(config.webhooks.retry_base_ms.max(10)),
            allow_private_callbacks: config.webhooks.allow_private_callbacks,
        },
        store.clone(),
        service.daemon().to_owned(),
    ) {
        Ok(sender) => Some(tokio::spawn(sender.run(stopped.clone()))),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the webhook sender");
            None
        }
    };
    tokio::spawn(janitor(service.clone(), support.clone(), stopped.clone()));
    let http = tokio::spawn(crate::web::serve(
        listeners.http,
        api,
        console,
        HttpLimits {
            allow: config.http_allow()?,
            max_connections: usize::try_from(config.http.max_connections).unwrap_or(usize::MAX),
            timeout: Duration::from_secs(config.http.timeout_secs.max(1)),
        },
        wait(stopped.clone()),
    ));
    let agi_server = config.agi_server()?;
    tokio::spawn(callverify_pbx::audiosocket::serve(
        listeners.audio,
        ListenerConfig {
            allow: agi_server.allow.clone(),
            max_connections: agi_server.max_sessions,
            uuid_timeout: AUDIOSOCKET_UUID_TIMEOUT,
        },
        hub,
        wait(stopped.clone()),
    ));
    let agi = callverify_pbx::agi::serve(listeners.agi, agi_server, router, wait(closing));
    let signal = async {
        tokio::select! {
            () = shutdown => {}
            // (Not when the heartbeat task is gone: that is no reason to stop.)
            Ok(_) = outdated.wait_for(Option::is_some) => {}
        }
        let _ = close.send(true);
    };
    let (cut_off, ()) = tokio::join!(agi, signal);
    let _ = stop.send(true);
    let closed = cut_off == 0 || close_cut_off_calls(&service, webhooks, cut_off).await;
    if let Err(e) = http.await {
        tracing::error!(error = %e, "the HTTP API task failed");
    }
    // Heard until the end (the HTTP server's own close can last `http.timeout_secs`), and no
    // heartbeat under way when the daemon leaves the list, which would put it back on.
    let _ = leave.send(true);
    if let Err(e) = heartbeat.await {
        tracing::error!(error = %e, "the heartbeat task failed");
    }
    // The calls are done or closed: nothing of this daemon's is left to take over. (Calls
    // that could not be closed keep it on the list, unheard from now on: another daemon on
    // the store takes them over, or this one's next start recovers them.)
    if closed {
        if let Err(e) = service.deregister().await {
            tracing::error!(error = %e, "cannot leave the store's list of daemons");
        }
    }
    tracing::info!("callverify stopped");
    let outdated = outdated.borrow().clone();
    match outdated {
        Some(unknown) => Err(StoreError::SchemaAhead { unknown }.into()),
        None => Ok(()),
    }
}

/// After the grace: close the attempts of the `cut_off` calls it ended as interrupted, as a
/// start after a crash does, so that their verifications are queued again at once rather than
/// waiting for a takeover that never comes once this daemon has left the list (and holding
/// their trunk places until they expire). The webhook sender (stopped) first ends its batch,
/// or is ended after a few seconds: its claims are released too. False when the store could
/// not do it.
async fn close_cut_off_calls(
    service: &Verifications,
    webhooks: Option<tokio::task::JoinHandle<()>>,
    cut_off: usize,
) -> bool {
    if let Some(mut webhooks) = webhooks {
        // Its batch may wait on slow receivers: past a few seconds it is ended where it is
        // (what it was sending is made due again, and sent at least once).
        if tokio::time::timeout(WEBHOOKS_STOP_WAIT, &mut webhooks)
            .await
            .is_err()
        {
            webhooks.abort();
        }
    }
    match service.recover_interrupted().await {
        Ok(recovered) => {
            tracing::warn!(
                calls = cut_off,
                attempts = recovered.attempts,
                verifications = recovered.verifications,
                webhooks = recovered.events,
                "closed the call attempts cut off at the end of the grace as interrupted"
            );
            true
        }
        Err(e) => {
            tracing::error!(error = %e, calls = cut_off,
                "cannot close the calls cut off at the end of the grace: left to a takeover \
                 by another daemon, or to the next start");
            false
        }
    }
}
