//! `stamp`: the one binary. `stamp up` runs a whole one-machine stamp; every other subcommand is
//! the CLI, talking to the REST API through `stamp-client`, except `stamp autoscale simulate` and
//! `inflation`, which run the engine locally. Thin: parsing and printing here,
//! behaviour in the crates.

mod autoscale;
mod cli;
mod output;
mod slots;
mod up;
mod workers;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "stamp",
    version,
    about = "A self-hosted app service: push code, get a URL."
)]
struct Args {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: TopCommand,
}

/// [`Command`] (the API commands and `up`) plus the commands that run without a stamp; kept apart
/// so `cli::run` handles exactly the commands that need the API.
#[derive(Subcommand)]
enum TopCommand {
    #[command(flatten)]
    Api(Command),
    /// Autoscale: simulate a setting on a metric trace, inflation rates. Runs locally, no API.
    #[command(subcommand)]
    Autoscale(autoscale::AutoscaleCmd),
}

#[derive(clap::Args, Clone)]
pub struct Global {
    /// Data directory of the stamp (store, artifacts, logs, admin token).
    #[arg(long, global = true, env = "STAMP_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The API to talk to (default: the one `stamp up` wrote to <data dir>/api-url).
    #[arg(long, global = true, env = "STAMP_API")]
    api_url: Option<String>,
    /// API token (default: <data dir>/admin-token).
    #[arg(long, global = true, env = "STAMP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

impl Global {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."))
                .join(".stamp")
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Start a whole stamp on this machine: controller, front end, worker agent, SQLite store.
    Up(up::UpArgs),
    /// Show what the stamp is and where it listens.
    Status,
    /// App Service plans: a SKU and a number of workers.
    #[command(subcommand)]
    Plan(cli::PlanCmd),
    /// Apps.
    #[command(subcommand)]
    App(cli::AppCmd),
    /// Custom domains of an app.
    #[command(subcommand)]
    Domain(cli::DomainCmd),
    /// TLS certificates of an app, served by SNI on the HTTPS listener.
    #[command(subcommand)]
    Cert(cli::CertCmd),
    /// Access restrictions: priority-ordered allow/deny rules on client addresses.
    #[command(subcommand)]
    Access(cli::AccessCmd),
    /// Deploy a directory, .zip or .tar.gz as the app's next release.
    Deploy(cli::DeployArgs),
    /// List an app's instances, grouped by process type.
    Ps(cli::AppArg),
    /// Set instance counts per process type: `stamp scale APP web=2 worker=1`.
    Scale(workers::ScaleArgs),
    /// Warm worker pools: prepared workers per size that plans scale out onto.
    #[command(subcommand)]
    Pool(workers::PoolCmd),
    /// App settings (environment variables); a change makes a new release.
    #[command(subcommand)]
    Config(cli::ConfigCmd),
    /// List an app's releases.
    Releases(cli::AppArg),
    /// Show an app's log: instance output and platform events.
    Logs(cli::LogsArgs),
    /// Deployment slots: create, swap (with preview), auto swap, traffic routing.
    #[command(subcommand)]
    Slot(slots::SlotCmd),
    /// Re-activate an earlier release (code and settings) as a new release, rolling.
    Rollback(slots::RollbackArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let command = match args.command {
        TopCommand::Autoscale(cmd) => return finish(autoscale::run(&args.global, cmd)),
        TopCommand::Api(command) => command,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Up(up) => up::run(&args.global, up).await,
            other => cli::run(&args.global, other).await,
        }
    });
    finish(result)
}

fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
