//! The command line (CONTRACT §2).

use crate::config::{ConfigArgs, DbArgs};
use clap::{Args, Parser, Subcommand};

/// Takes remittance files from an SMB share into the finance back office:
/// every file goes through once or is explained.
///
/// Every option can also be given as the environment variable shown; secrets
/// (DATABASE_URL, API_TOKEN, SMB_PASSWORD) may be read from the file named by
/// <VAR>_FILE instead.
#[derive(Debug, Parser)]
#[command(name = "coordinator", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `coordinator run`: the configuration and the run's options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Decide everything a run would and do none of it: no claim, download,
    /// downstream call or move; only the run's own row is written, and no
    /// other run is waited for or blocked. Exit 0 when it completed
    #[arg(long)]
    pub dry_run: bool,
    /// The configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// The programs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply migrations, then serve the HTTP API until SIGTERM/SIGINT.
    Serve(Box<ConfigArgs>),
    /// Perform one run now and print its summary (exit 0 when it completed,
    /// 1 when it failed, 3 when another run was in progress).
    Run(Box<RunArgs>),
    /// Apply database migrations and exit.
    Migrate(DbArgs),
}
