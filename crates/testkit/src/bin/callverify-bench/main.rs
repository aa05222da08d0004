//! `callverify-bench`: the daemon measured under load, from outside the product.
//!
//! `cargo run -p callverify-testkit --release --bin callverify-bench -- [--sessions N ...]`
//! runs the throughput, API enqueue and memory runs (`throughput.rs`); with `--speech` (and
//! `--features speech`) the spoken-code recogniser on the Allison corpus (`speech.rs`).

mod speech;
mod throughput;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use callverify::config::{Config, Source};
use callverify::daemon;

/// The allocator the release binary uses (src/main.rs), so that the daemon measured here is
/// the one that ships; the bare server gets it too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "callverify-bench",
    about = "Measure callverify under many concurrent emulated Asterisk sessions",
    after_help = "Exit status: 0 on success, 1 on an error (the run is not valid), 2 on a usage error."
)]
struct Cli {
    /// Configuration file (the speech benchmark reads speech.model from it)
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(flatten)]
    bench: throughput::BenchArgs,

    #[command(subcommand)]
    daemon: Option<Daemon>,
}

#[derive(Subcommand)]
enum Daemon {
    /// The daemon the throughput and memory runs measure, as a child process (`callverify serve`)
    #[command(hide = true)]
    Serve,
    /// The bare line server the throughput runs measure the daemon against
    #[command(hide = true)]
    BareServer,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    callverify::logging::init("warn", callverify::config::LogFormat::Text);
    run(cli).await.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(&Source::locate(cli.config.as_deref()), std::env::vars())
        .context("invalid configuration")?;
    match cli.daemon {
        Some(Daemon::Serve) => {
            daemon::serve(&config, daemon::shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Daemon::BareServer) => {
            throughput::bare_server(config.agi_listen()?).await?;
            Ok(ExitCode::SUCCESS)
        }
        None if cli.bench.speech.speech => speech::run(&config, &cli.bench.speech).await,
        None => throughput::run(cli.bench).await,
    }
}
