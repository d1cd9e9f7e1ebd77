//! `migration`: applies or reverts clerk-sync's schema.
//!
//! ```text
//! cargo run -p migration -- up            # apply every pending migration
//! cargo run -p migration -- down [-n N]   # revert the last N (default 1)
//! cargo run -p migration -- status        # list applied and pending migrations
//! cargo run -p migration -- fresh         # drop everything, then apply all (destructive)
//! ```
//! `DATABASE_DIRECT_URL`, when set, else `DATABASE_URL` (default
//! `postgres://postgres@localhost:5432/clerk_sync`) names the database; `DATABASE_POOLER` says
//! what sits in front of `DATABASE_URL`. Every command runs in one transaction under the
//! migration lock the worker takes, so it is safe while workers start, and through a
//! transaction-mode pooler. A small CLI of our own rather than sea-orm-cli's, which would pull
//! its code generator into every build of the workspace.

use anyhow::Context;
use clap::{Parser, Subcommand};
use migration::{
    Migrator, MigratorTrait, lock_migrations,
    sea_orm::{ConnectOptions, ConnectionTrait, Database, TransactionTrait},
};
use settings::Pooler;

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
    let lookup = |name: &str| std::env::var(name).ok();
    let database = settings::database(&lookup)?;
    let (url, pooler) = match settings::direct_database_url(&lookup)? {
        Some(direct) => (direct, Pooler::None),
        None => (database.url, database.pooler),
    };
    let mut options = ConnectOptions::new(url.expose().to_owned());
    options.max_connections(1).sqlx_logging(false);
    if pooler.is_pooled() {
        // As store::pool does behind a pooler: no startup parameter PgBouncer may refuse, and no
        // prepared statement kept past the transaction.
        options.map_sqlx_postgres_opts(|o| o.extra_float_digits(None).statement_cache_capacity(0));
    }
    let db = Database::connect(options).await.with_context(|| {
        format!("cannot connect to {url}; is Postgres up and does the database exist?")
    })?;
    let txn = db.begin().await.context("cannot start a transaction")?;
    if pooler == Pooler::Transaction {
        // A transaction-mode pooler may hand over a server connection on which another client
        // left prepared statements named like ours.
        txn.execute_unprepared("DEALLOCATE ALL").await?;
    }
    lock_migrations(&txn).await?;
    match cli.command.unwrap_or(Command::Up) {
        Command::Up => Migrator::up(&txn, None).await,
        Command::Down { num } => Migrator::down(&txn, Some(num)).await,
        Command::Status => Migrator::status(&txn).await,
        Command::Fresh => Migrator::fresh(&txn).await,
    }
    .context("migration failed")?;
    txn.commit().await.context("migration failed")?;
    println!("done");
    Ok(())
}
