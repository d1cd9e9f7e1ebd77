//! `migration`: applies or reverts clerk-sync's schema.
//!
//! ```text
//! cargo run -p migration -- up            # apply every pending migration
//! cargo run -p migration -- down [-n N]   # revert the last N (default 1)
//! cargo run -p migration -- status        # list applied and pending migrations
//! cargo run -p migration -- fresh         # drop everything, then apply all (destructive)
//! ```
//! `DATABASE_URL` (default `postgres://postgres@localhost:5432/clerk_sync`) names the database.
//! A small CLI of our own rather than sea-orm-cli's, which would pull its code generator into
//! every build of the workspace.

use anyhow::Context;
use clap::{Parser, Subcommand};
use migration::{Migrator, MigratorTrait, sea_orm::Database};

#[derive(Parser)]
#[command(
    name = "migration",
    about = "Apply or revert clerk-sync's database migrations"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Apply every pending migration (the default).
    Up,
    /// Revert the most recent migrations.
    Down {
        /// How many to revert.
        #[arg(short = 'n', long, default_value_t = 1)]
        num: u32,
    },
    /// Show applied and pending migrations.
    Status,
    /// Drop all tables, then apply every migration. Destroys data.
    Fresh,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@localhost:5432/clerk_sync".into());
    let db = Database::connect(&url)
        .await
        .context("cannot connect to DATABASE_URL; is Postgres up and does the database exist?")?;
    match cli.command.unwrap_or(Command::Up) {
        Command::Up => Migrator::up(&db, None).await,
        Command::Down { num } => Migrator::down(&db, Some(num)).await,
        Command::Status => Migrator::status(&db).await,
        Command::Fresh => Migrator::fresh(&db).await,
    }
    .context("migration failed")?;
    println!("done");
    Ok(())
}
