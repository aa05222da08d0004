//! The `callverify` command line: the daemon and the admin's tools around it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use callverify::config::{Config, LogFormat, Source, FILE_VARIABLE, SYSTEM_FILE};
use callverify::daemon;
use callverify::domain::{Mode, NewVerification, VerifyError, View};

/// mimalloc rather than glibc's malloc: a call's small, short-lived allocations (protocol
/// lines, store rows, futures) cost about 8 % fewer instructions a call (README,
/// Performance). Declared here, not in the library, so that the fuzz targets keep the
/// sanitizer's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "callverify",
    version,
    about = "Phone verification calls for Asterisk: a FastAGI daemon and its tools",
    long_about = "Phone verification calls for Asterisk.\n\n\
        `callverify serve` runs the FastAGI daemon that drives verification calls; \
        `callverify verify start` creates a verification and prints its code.\n\
        Settings come from one configuration file, the service's and every command's, \
        and CALLVERIFY_<SECTION>_<KEY> environment variables; logging from RUST_LOG \
        (default: info)."
)]
struct Cli {
    /// Configuration file [default: $CALLVERIFY_CONFIG, else ./callverify.toml, else
    /// /etc/callverify/callverify.toml, the first that is set or exists]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: FastAGI on agi.listen (default 127.0.0.1:4573)
    Serve,
    /// Apply the database migrations and exit
    Migrate,
    /// Create and inspect verifications
    #[command(subcommand)]
    Verify(VerifyCommand),
    /// Manage the web app's API keys
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage support staff accounts for the console at /console/
    #[command(subcommand)]
    Staff(StaffCommand),
    /// Check the live set-up: store, AMI, and a self-test call through Asterisk to the
    /// running daemon (dialplan, trunk, prompts, AudioSocket); exit 1 on any problem
    Doctor(DoctorArgs),
    /// List the prompts the calls play, with their words per language
    Prompts(PromptsArgs),
    /// QA softphone: call an extension or answer a call, press keys, record, report
    #[command(subcommand)]
    Probe(Box<callverify_probe::ProbeCommand>),
}

#[derive(Subcommand)]
enum VerifyCommand {
    /// Create a verification; prints its id and the code to show the user (none in read_code
    /// mode: the call reads it)
    Start(StartArgs),
    /// Show a verification's status
    Status(IdArgs),
    /// Cancel a verification that has not ended
    Cancel(IdArgs),
}

#[derive(Args)]
struct StartArgs {
    /// Number to verify, in international form, e.g. +14155550101
    #[arg(long)]
    phone: String,
    /// The web app's reference for the user
    #[arg(long = "user", value_name = "REF")]
    user_ref: String,
    /// Language of the call's prompts, e.g. en or es
    #[arg(long)]
    locale: Option<String>,
    /// Digits in the code (4-10) [default: verification.code_length]
    #[arg(long)]
    code_length: Option<u32>,
    /// enter_code: the user keys or says the code shown to them; read_code: the call reads
    /// the code and the web app checks what the user types in
    #[arg(long, value_name = "MODE", default_value = "enter_code", value_parser = mode_parser())]
    mode: Mode,
    /// Print JSON, as the HTTP API does
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key; prints it once (the store keeps only its hash)
    Create {
        /// What the key is for, e.g. "web app production"
        #[arg(long)]
        name: String,
    },
    /// List keys (without their secrets)
    List,
    /// Revoke a key by its id (key_...)
    Revoke { id: String },
}

#[derive(Subcommand)]
enum StaffCommand {
    /// Add a staff member; asks for the password (12+ characters) at a terminal, without
    /// echo, or reads it from the first line of stdin
    #[command(after_help = "Example: printf '%s\\n' \"$PASSWORD\" | callverify staff add alice")]
    Add {
        /// Sign-in name: letters, digits, '-', '_' or '.'
        username: String,
        #[command(flatten)]
        account: AccountArgs,
    },
    /// Change a staff member's role or time zone
    Set {
        username: String,
        #[command(flatten)]
        account: AccountArgs,
    },
    /// List staff accounts
    List,
    /// Disable an account and end its console sessions
    Disable { username: String },
    /// Make a disabled account active again
    Enable { username: String },
    /// Give an account a new password and end its console sessions; asks for it at a
    /// terminal, without echo, or reads it from the first line of stdin
    #[command(
        after_help = "Example: printf '%s\\n' \"$PASSWORD\" | callverify staff passwd alice"
    )]
    Passwd { username: String },
}

#[derive(Args)]
struct AccountArgs {
    /// Also let them read the audit log and export decisions in the console
    #[arg(long)]
    admin: bool,
    /// Show their times in this IANA zone, e.g. America/New_York [default: support.timezone]
    #[arg(long, value_name = "ZONE")]
    time_zone: Option<String>,
}

impl AccountArgs {
    fn role(&self) -> callverify::domain::status::StaffRole {
        use callverify::domain::status::StaffRole;
        if self.admin {
            StaffRole::Admin
        } else {
            StaffRole::Agent
        }
    }
}

#[derive(Args)]
struct DoctorArgs {
    /// Print one JSON object: {"ok", "configuration", "checks": [{"check", "status",
    /// "detail", "fix"}]}
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct PromptsArgs {
    /// Print tab-separated lines: language, file, core|callverify, text (for scripts)
    #[arg(long)]
    tsv: bool,
}

#[derive(Args)]
struct IdArgs {
    /// The verification id (vf_...)
    id: String,
    /// Print JSON, as the HTTP API does
    #[arg(long)]
    json: bool,
}

/// `println!`, except that a closed stdout (`callverify keys list | head -1`) ends the command
/// quietly, as other Unix tools do, instead of a panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("error: cannot write the output: {e}");
            std::process::exit(1);
        }
    }};
}

fn main() -> ExitCode {
    let cli = parse();
    // The probe is a softphone, not the daemon: it reads no callverify.toml and none of the
    // daemon's CALLVERIFY_* settings, so a broken one must not turn its exit 2 (usage) or 0/1
    // (the call's verdict) into a configuration error, nor warn about its own
    // CALLVERIFY_PROBE_* variables.
    if let Command::Probe(command) = cli.command {
        callverify::logging::init("warn", LogFormat::Text);
        return on_runtime(callverify_probe::run(*command)).unwrap_or_else(|e| fail(&e));
    }
    let source = Source::locate(cli.config.as_deref());
    let config = match Config::load(&source, std::env::vars()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            eprintln!("  configuration: {source}");
            return ExitCode::FAILURE;
        }
    };
    let quiet = !matches!(cli.command, Command::Serve);
    callverify::logging::init(if quiet { "warn" } else { "info" }, config.log.format);
    for ignored in &config.ignored {
        tracing::warn!("{ignored}");
    }
    let used = format!(
        "  configuration: {source}\n  store: {}",
        callverify::store::redact_url(&config.database.url)
    );
    let result = callverify::store::owner::act_as_owner(&config.database.url)
        .map_err(anyhow::Error::from)
        .and_then(|()| on_runtime(run(cli.command, &config, &source)));
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        eprintln!("{used}");
        // Its own status, so that the package's configuration step can tell it from a store
        // it could not reach (which the service retries by itself).
        match e.downcast_ref::<callverify::daemon::DaemonError>() {
            Some(callverify::daemon::DaemonError::SchemaInUse { .. }) => ExitCode::from(3),
            _ => ExitCode::FAILURE,
        }
    })
}

/// The command line. Only when help is shown does it say which configuration and store a
/// command uses here: other runs read the configuration once, in `main`.
fn parse() -> Cli {
    use clap::error::ErrorKind;
    use clap::{CommandFactory, FromArgMatches};
    let matches = match Cli::command().try_get_matches() {
        Ok(matches) => matches,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            // Parsed again with the footer, which shows the help and exits as clap does.
            with_footer(Cli::command(), &here()).get_matches()
        }
        Err(e) => e.exit(),
    };
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Help's footer: the configuration and store found from this folder, and the order looked in.
fn here() -> String {
    let source = Source::locate(None);
    let store = match Config::load(&source, std::env::vars()) {
        Ok(config) => callverify::store::redact_url(&config.database.url),
        Err(e) => format!("none: the configuration does not load ({e})"),
    };
    format!(
        "Configuration here (unless --config names another): {source}\n\
         Store: {store}\n\
         The service and every command look in the same order: --config FILE, \
         ${FILE_VARIABLE}, ./callverify.toml, {SYSTEM_FILE}.\n\n\
         Exit status: 0 on success, 1 on an error, 2 on a usage error, 3 when `serve` or \
         `migrate` will not migrate a store daemons of an older release still run on."
    )
}

fn with_footer(command: clap::Command, footer: &str) -> clap::Command {
    if command.get_name() == "probe" {
        return command;
    }
    command
        .after_help(footer.to_owned())
        .mut_subcommands(|sub| with_footer(sub, footer))
}

fn on_runtime(
    work: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")?
        .block_on(work)
}

fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}

async fn keys(config: &Config, command: KeysCommand) -> anyhow::Result<ExitCode> {
    let app = daemon::open_existing(config).await?;
    let keys = callverify::domain::api_keys::ApiKeys::new(app.store.clone());
    let code = match command {
        KeysCommand::Create { name } => {
            let (row, secret) = keys.create(&name).await?;
            eprintln!(
                "created API key {} ({}); it is shown only now:",
                row.id, row.name
            );
            out!("{secret}");
            ExitCode::SUCCESS
        }
        KeysCommand::List => {
            for k in keys.list().await? {
                let state = match k.revoked_at {
                    Some(at) => format!("revoked {}", callverify::domain::clock::rfc3339(at)),
                    None => "active".into(),
                };
                out!(
                    "{}  {}  created {}  {}",
                    k.id,
                    state,
                    callverify::domain::clock::rfc3339(k.created_at),
                    k.name
                );
            }
            ExitCode::SUCCESS
        }
        KeysCommand::Revoke { id } => {
            if keys.revoke(&id).await? {
                out!("revoked {id}");
                ExitCode::SUCCESS
            } else {
                eprintln!("error: no active key {id:?} (see `callverify keys list`)");
                ExitCode::FAILURE
            }
        }
    };
    app.store.close().await;
    Ok(code)
}

async fn staff(config: &Config, command: StaffCommand) -> anyhow::Result<ExitCode> {
    use callverify::support::staff::Staff;
    let app = daemon::open_existing(config).await?;
    let session = std::time::Duration::from_secs(config.support.session_hours * 3600);
    let staff = Staff::new(app.store.clone(), session);
    match command {
        StaffCommand::Add { username, account } => {
            if let Some(zone) = &account.time_zone {
                callverify::support::staff::check_zone(zone)?;
            }
            let password = read_password(&username)?;
            let added = staff.add(&username, &password).await?;
            staff
                .set(&username, account.role(), account.time_zone.as_deref())
                .await?;
            out!(
                "added staff member {} ({}, {})",
                added.username,
                added.id,
                account.role()
            );
        }
        StaffCommand::Set { username, account } => {
            staff
                .set(&username, account.role(), account.time_zone.as_deref())
                .await?;
            out!("{username}: {}", account.role());
        }
        StaffCommand::List => {
            for s in staff.list().await? {
                let state = match s.disabled_at {
                    Some(at) => format!("disabled {}", callverify::domain::clock::rfc3339(at)),
                    None => "active".into(),
                };
                let zone = s.time_zone.as_deref().unwrap_or("support.timezone");
                out!("{}  {}  {}  {zone}  {state}", s.username, s.id, s.role);
            }
        }
        StaffCommand::Disable { username } => {
            staff.disable(&username).await?;
            out!("disabled {username}");
        }
        StaffCommand::Enable { username } => {
            staff.enable(&username).await?;
            out!("enabled {username}");
        }
        StaffCommand::Passwd { username } => {
            let password = read_password(&username)?;
            staff.set_password(&username, &password).await?;
            out!("new password set for {username}; their console sessions ended");
        }
    }
    app.store.close().await;
    Ok(ExitCode::SUCCESS)
}

/// A new password: asked for twice, without echo, at a terminal; else stdin's first line.
fn read_password(username: &str) -> anyhow::Result<String> {
    use std::io::IsTerminal as _;
    if !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    let first = read_hidden(&format!(
        "Password for {username} (12 or more characters): "
    ))?;
    let again = read_hidden("The same password again: ")?;
    anyhow::ensure!(
        first == again,
        "the two passwords differ; nothing was changed"
    );
    Ok(first)
}

/// One line from the terminal on stdin, with `prompt` on stderr and echo off while typing.
fn read_hidden(prompt: &str) -> anyhow::Result<String> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).context("cannot read the terminal's settings")?;
    let mut hidden = saved.clone();
    hidden.local_modes.remove(LocalModes::ECHO);
    // The newline the user types still shows, so the next prompt starts on a line of its own.
    hidden.local_modes.insert(LocalModes::ECHONL);
    tcsetattr(&stdin, OptionalActions::Now, &hidden).context("cannot turn off echo")?;
    // Only now: nothing typed after the prompt shows.
    eprint!("{prompt}");
    let mut line = String::new();
    let read = stdin.read_line(&mut line);
    let _ = tcsetattr(&stdin, OptionalActions::Now, &saved);
    read.context("cannot read the password from the terminal")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// The prompt catalogue, for people (a table) or for the prompt-generation script (TSV).
fn print_prompts(tsv: bool) {
    use callverify::flow::prompts::{Prompt, LANGUAGES};
    for language in LANGUAGES {
        for prompt in Prompt::ALL {
            let kind = if prompt.is_core_sound() {
                "core"
            } else {
                "callverify"
            };
            if tsv {
                out!(
                    "{language}\t{}\t{kind}\t{}",
                    prompt.file(),
                    prompt.text(language)
                );
            } else {
                out!("{language}  {:34} {}", prompt.file(), prompt.text(language));
            }
        }
    }
}

async fn run(command: Command, config: &Config, source: &Source) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve => {
            daemon::serve(config, daemon::shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            daemon::open(config).await?.store.close().await;
            out!(
                "migrations applied to {}",
                callverify::store::redact_url(&config.database.url)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify(command) => verify(config, command).await,
        Command::Keys(command) => keys(config, command).await,
        Command::Staff(command) => staff(config, command).await,
        Command::Probe(_) => unreachable!("the probe is dispatched before the configuration"),
        Command::Doctor(args) => {
            let findings = callverify::doctor::examine(config, source).await;
            if args.json {
                out!(
                    "{}",
                    serde_json::to_string(&findings).expect("findings serialize")
                );
            } else {
                out!("{}", findings.to_text().trim_end());
            }
            Ok(if findings.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Prompts(args) => {
            print_prompts(args.tsv);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn verify(config: &Config, command: VerifyCommand) -> anyhow::Result<ExitCode> {
    let app = daemon::open_existing(config).await?;
    let (result, json) = match command {
        VerifyCommand::Start(a) => (
            app.verifications
                .start(NewVerification {
                    phone: a.phone,
                    user_ref: a.user_ref,
                    locale: a.locale,
                    code_length: a.code_length,
                    mode: Some(a.mode),
                    ..Default::default()
                })
                .await
                .map(|started| started.view),
            a.json,
        ),
        VerifyCommand::Status(a) => (app.verifications.get(&a.id).await, a.json),
        VerifyCommand::Cancel(a) => (app.verifications.cancel(&a.id).await, a.json),
    };
    app.store.close().await;
    match result {
        Ok(view) => {
            print_view(&view, json);
            Ok(ExitCode::SUCCESS)
        }
        Err(VerifyError::Store(e)) => Err(e.into()),
        Err(e) => {
            print_error(&e, json);
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The verification modes, by their API names.
fn mode_parser() -> impl clap::builder::TypedValueParser<Value = Mode> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(Mode::ALL.iter().map(|m| m.as_str()))
        .map(|name| name.parse().expect("a possible value is a mode"))
}

fn print_view(view: &View, json: bool) {
    if json {
        out!("{}", serde_json::to_string(view).expect("views serialize"));
        return;
    }
    out!("id:                 {}", view.id);
    if let Some(code) = &view.code {
        out!("code:               {code}");
    }
    out!("status:             {}", view.status);
    out!("mode:               {}", view.mode);
    out!("phone:              {}", view.phone);
    out!("user:               {}", view.user_ref);
    out!("attempts remaining: {}", view.attempts_remaining);
    out!("expires at:         {}", view.expires_at);
    if let Some(at) = &view.verified_at {
        out!("verified at:        {at}");
    }
}

/// The API's error shape on stdout with --json; one line on stderr either way.
fn print_error(e: &VerifyError, json: bool) {
    if json {
        let mut error = serde_json::json!({ "code": e.code(), "message": e.to_string() });
        if let VerifyError::LockedOut { retry_at } = e {
            error["retry_at"] = callverify::domain::clock::rfc3339(*retry_at).into();
        }
        out!("{}", serde_json::json!({ "error": error }));
    }
    eprintln!("error: {} ({e})", e.code());
}
