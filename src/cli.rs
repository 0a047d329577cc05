//! The command line (CONTRACT §2).

use crate::config::{BaseArgs, ConfigArgs, DbArgs};
use clap::{Arg, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

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

impl Cli {
    /// Parses the command line and the environment, as `Cli::try_parse`
    /// does, except that a variable set to blanks counts as unset, so that
    /// its default applies (a deployment template often writes `VAR=` for
    /// "not set"; this is how the variables were always read).
    pub fn from_env_and_args() -> Result<Self, clap::Error> {
        let mut cmd = Self::command().mut_subcommands(blanks_are_unset);
        let mut matches = cmd.try_get_matches_from_mut(std::env::args_os())?;
        Self::from_arg_matches_mut(&mut matches).map_err(|e| e.format(&mut cmd))
    }
}

/// `cmd` and its subcommands with [`blank_env_is_unset`] on every argument.
fn blanks_are_unset(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(blank_env_is_unset)
        .mut_subcommands(blanks_are_unset)
}

/// `arg` without its variable when that variable is set to blanks only.
fn blank_env_is_unset(arg: Arg) -> Arg {
    let blank = arg
        .get_env()
        .and_then(std::env::var_os)
        .is_some_and(|v| v.to_str().is_some_and(|s| s.trim().is_empty()));
    if blank {
        arg.env(None::<&'static str>)
    } else {
        arg
    }
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
    /// Named tokens (CONTRACT §11): create, list, revoke. Need DATABASE_URL,
    /// and AUDIT_KEY to create or revoke: each creation and revocation is in
    /// the audit trail, with the actor `cli:<login name>`.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The audit trail (CONTRACT §11).
    #[command(subcommand)]
    Audit(AuditCommand),
}

/// `coordinator token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Creates a token and prints its secret once, on standard output (only
    /// its hash is stored: a lost secret is revoked and replaced).
    Create {
        /// Its name: the actor of what it does (1 to 64 of A-Z a-z 0-9 . _ @ -).
        #[arg(long)]
        name: String,
        /// What it may do.
        #[arg(long, value_enum)]
        role: crate::auth::Role,
        /// Days until it expires (1 to 3650); without it, never.
        #[arg(long)]
        expires_in_days: Option<u32>,
        /// The database and the audit key.
        #[command(flatten)]
        admin: BaseArgs,
    },
    /// Lists every token: name, role, created, expires, last used, revoked (never a secret).
    List {
        /// The database.
        #[command(flatten)]
        db: DbArgs,
    },
    /// Revokes a token: every instance refuses it within 5 seconds.
    Revoke {
        /// The token's name.
        name: String,
        /// The database and the audit key.
        #[command(flatten)]
        admin: BaseArgs,
    },
}

/// `coordinator audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the audit chain, reading only: exit 0 printing the number of rows
    /// checked, 1 naming the first row that was changed, inserted behind the
    /// coordinator's back, or whose successor was deleted, 2 on a
    /// configuration or database error.
    Verify(BaseArgs),
    /// Writes the audit trail from --since until --until (dates or RFC 3339
    /// times; a date is midnight UTC) as JSON lines on standard output, oldest first.
    Export {
        /// First time included (e.g. 2026-12-01 or 2026-12-01T08:00:00Z).
        #[arg(long, value_parser = crate::commands::parse_time)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// First time excluded.
        #[arg(long, value_parser = crate::commands::parse_time)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        /// The database.
        #[command(flatten)]
        db: DbArgs,
    },
}
