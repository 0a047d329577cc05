//! The `coordinator` binary: parse, configure, hand over to the library.

use coordinator::cli::{AuditCommand, Cli, Command};
use coordinator::config::{Config, ConfigError};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::from_env_and_args() {
        Ok(cli) => cli,
        // A bad value is one line naming its variable, as every other
        // configuration error; help, version and flag mistakes are clap's.
        Err(e) => match ConfigError::try_from(e) {
            Ok(bad) => {
                eprintln!("coordinator: {bad}");
                return ExitCode::from(2);
            }
            Err(e) => e.exit(),
        },
    };
    coordinator::telemetry::init();
    let result = match cli.command {
        Command::Migrate(db) => match db.database_url() {
            Ok(url) => coordinator::app::migrate(url.expose()).await.map(|_| 0),
            Err(e) => Err(e.into()),
        },
        Command::Serve(args) => match Config::from_args(*args) {
            Ok(cfg) => coordinator::app::serve(cfg).await.map(|_| 0),
            Err(e) => Err(e.into()),
        },
        Command::Run(args) => match Config::from_args(args.config) {
            Ok(cfg) => coordinator::app::run_once(cfg, args.dry_run).await,
            Err(e) => Err(e.into()),
        },
        Command::Audit(AuditCommand::Verify(args)) => coordinator::app::audit_verify(args).await,
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("coordinator: {e:#}");
            ExitCode::from(2)
        }
    }
}
