//! `worker`: applies Clerk events to Postgres (`worker run`, the default) and the ops commands.

use anyhow::Context;
use clap::{Parser, Subcommand};
use worker::{Application, Config};

#[derive(Parser)]
#[command(name = "worker", about = "clerk-sync worker: applies Clerk events to Postgres; ops commands")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Consume events and apply them (the default).
    Run,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::from_env().context("invalid worker configuration")?;
    telemetry::init_subscriber("info", config.log_format, std::io::stdout);
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let app = Application::build(config).await?;
            app.run_until_stopped(telemetry::ops::shutdown_signal()).await;
        }
    }
    Ok(())
}
