//! `worker`: applies Clerk events to Postgres (`worker run`, the default) and the ops commands
//! that inspect and replay the dead-letter queue.

use std::io::IsTerminal as _;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use worker::{
    Application, Config,
    ops::dlq::{self, Selection},
    repair::{self, ReconcileError, ReconcileOptions},
};

/// mimalloc instead of glibc's malloc, as in the ingress: every delivery allocates its body,
/// headers and parsed event on one thread and frees them on another.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "worker",
    about = "clerk-sync worker: applies Clerk events to Postgres; dead-letter queue tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Consume events and apply them (the default).
    Run,
    /// Inspect, replay or drop dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Apply every existing Clerk user (pages through Clerk's user list; resumable).
    Backfill {
        /// Users per page (at most 500).
        #[arg(long, default_value_t = 100)]
        page_size: u32,
        /// Start from the first user even if an earlier run left a checkpoint.
        #[arg(long)]
        restart: bool,
        /// Apply Clerk's organizations and their memberships instead of the users (run both
        /// for everything; the order does not matter).
        #[arg(long)]
        organizations: bool,
    },
    /// Re-encrypt every stored calendar token under the first key of TOKEN_ENCRYPTION_KEY
    /// (after adding a new key in front of the old one), binding legacy ones to their rows.
    RotateTokenKey,
    /// Compare Clerk's users with the tables and repair the drift (missing, older, gone, calendar
    /// connections) through the same apply path as events; resumable.
    Reconcile {
        /// Report the drift, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON (with the ids of every user in each kind).
        #[arg(long)]
        json: bool,
        /// Most rows that may be deleted, as a count (25) or a share of the table (2%);
        /// default 1 %, at least 10. More: nothing is deleted and the run fails.
        #[arg(long, value_parser = repair::MaxDeletes::parse)]
        max_deletes: Option<repair::MaxDeletes>,
        /// Users per page (at most 500).
        #[arg(long, default_value_t = 500)]
        page_size: u32,
        /// Start from the first page even if an interrupted run left a checkpoint.
        #[arg(long)]
        restart: bool,
        /// Reconcile Clerk's organizations and their memberships instead of the users.
        #[arg(long)]
        organizations: bool,
    },
    /// Rebuild queues declared by an older clerk-sync with a broker delivery limit, keeping
    /// every message. Stop the workers first.
    MigrateQueues,
    /// Ask Clerk once about each calendar connection (least recently checked first), record
    /// what it says (connected, needs_reconnect with a reason, unavailable) and store fresh
    /// tokens; print a summary by provider, status and reason.
    CheckConnections {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Only this Clerk user's connections (`user_…`).
        #[arg(long)]
        user_id: Option<String>,
        /// Calls to Clerk at most (one per connection); default: every connection.
        #[arg(long)]
        budget: Option<u64>,
        /// Calls to Clerk a second at most (default a tenth of Clerk's production limit).
        #[arg(long, default_value_t = repair::health::DEFAULT_CHECKS_PER_SECOND)]
        rate: u32,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters (id, event type, attempts, age, reason). Consumes nothing.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Read only the oldest N dead letters (that match the filter).
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Show one dead letter: its trace id (linked with TRACE_URL_TEMPLATE), headers and body.
    Show {
        /// The message id (the Svix id) from `dlq list`.
        id: String,
    },
    /// Publish dead letters back to the main queue (confirmed), then remove them from the DLQ.
    /// Select with `--all`, `--id …`, or filter flags (every dead letter they match).
    Replay {
        #[command(flatten)]
        selection: SelectionArgs,
        #[command(flatten)]
        filter: FilterArgs,
        /// Show what would be replayed, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete dead letters for good.
    Drop {
        /// Message ids to delete.
        #[arg(long = "id", required = true, num_args = 1..)]
        ids: Vec<String>,
    },
}

/// Which dead letters `list` shows and `replay` acts on (all given must match); shared with
/// the console through `dlq::Filter`.
#[derive(Args)]
struct FilterArgs {
    /// Only this event type (e.g. user.created).
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Only reasons containing this text (case-insensitive).
    #[arg(long)]
    reason: Option<String>,
    /// Only events about this Clerk user id (data.id or data.public_user_data.user_id).
    #[arg(long)]
    clerk_user_id: Option<String>,
    /// Only dead letters at least this old (30s, 5m, 2h).
    #[arg(long, value_parser = parse_age)]
    older_than: Option<i64>,
    /// Only dead letters at most this old.
    #[arg(long, value_parser = parse_age)]
    newer_than: Option<i64>,
    /// Only dead letters whose body contains this text (an email, a provider id, a name).
    #[arg(long)]
    contains: Option<String>,
}

impl FilterArgs {
    fn into_filter(self) -> dlq::Filter {
        dlq::Filter {
            event_type: self.event_type,
            reason: self.reason,
            clerk_user_id: self.clerk_user_id,
            older_than_seconds: self.older_than,
            newer_than_seconds: self.newer_than,
            body_contains: self.contains,
        }
    }
}

/// An age such as `30s`, `5m` or `2h`, in seconds.
fn parse_age(value: &str) -> Result<i64, String> {
    settings::parse_duration(value)
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .ok_or_else(|| format!("{value:?} is not a duration such as 30s, 5m or 2h"))
}

#[derive(Args)]
#[group(required = false, multiple = false)]
struct SelectionArgs {
    /// Every dead letter.
    #[arg(long)]
    all: bool,
    /// Message ids (repeat or list several).
    #[arg(long = "id", num_args = 1..)]
    ids: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::from_env().context("invalid worker configuration")?;
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(config).await,
        Command::Backfill {
            page_size,
            restart,
            organizations,
        } => backfill(config, page_size, restart, organizations).await,
        Command::RotateTokenKey => rotate_token_key(config).await,
        Command::Reconcile {
            dry_run,
            json,
            max_deletes,
            page_size,
            restart,
            organizations,
        } => {
            let options = ReconcileOptions {
                dry_run,
                max_deletes,
                page_size,
                restart,
                ..Default::default()
            };
            reconcile(config, options, json, organizations).await
        }
        Command::MigrateQueues => migrate_queues(config).await,
        Command::CheckConnections {
            json,
            user_id,
            budget,
            rate,
        } => {
            let options = repair::health::CheckOptions {
                budget: budget.unwrap_or(u64::MAX),
                per_second: rate,
                clerk_user_id: user_id,
            };
            check_connections(config, options, json).await
        }
        Command::Dlq(command) => {
            ops_logs(&config, "warn");
            run_dlq(command, config).await
        }
    }
}

/// Logs of an ops command: on stderr (its results go to stdout), `default_filter` unless
/// `RUST_LOG` says otherwise.
fn ops_logs(config: &Config, default_filter: &str) {
    telemetry::init_subscriber(
        default_filter,
        config.log_format,
        std::io::stderr,
        std::io::stderr().is_terminal(),
    );
}

/// `worker run`: consume until SIGTERM or Ctrl-C.
async fn run(config: Config) -> anyhow::Result<()> {
    let _traces = telemetry::init_service_subscriber(
        "clerk-sync-worker",
        "info",
        config.log_format,
        std::io::stdout,
        std::io::stdout().is_terminal(),
    )
    .context("invalid tracing configuration")?;
    let app = Application::build(config).await?;
    app.run_until_stopped(telemetry::ops::shutdown_signal())
        .await;
    Ok(())
}

/// What the commands that read Clerk's user list need: the migrated database and Clerk.
async fn clerk_applier(
    config: Config,
    command: &str,
) -> anyhow::Result<(store::Applier, clerk_api::ClerkClient)> {
    let clerk = config.applier.clerk.clone().with_context(|| {
        format!("CLERK_SECRET_KEY is not set: {command} calls Clerk's Backend API")
    })?;
    worker::migrate(&config.database, config.direct_database_url.as_ref())
        .await
        .context("cannot apply migrations on DATABASE_DIRECT_URL or DATABASE_URL")?;
    let db = store::pool::connect_database(config.database.url.expose(), 4, config.database.pooler)
        .await
        .context("cannot reach the database at DATABASE_URL")?;
    let applier = store::Applier::new(db, &config.applier);
    Ok((applier, clerk))
}

/// A progress bar on stderr when it is a terminal.
fn progress(done: u64, total: Option<u64>) {
    if let (true, Some(total)) = (std::io::stderr().is_terminal(), total) {
        worker::consume::progress::progress_bar(
            usize::try_from(done.min(total)).unwrap_or(0),
            usize::try_from(total).unwrap_or(0),
        );
    }
}

/// `worker backfill`.
async fn backfill(
    config: Config,
    page_size: u32,
    restart: bool,
    organizations: bool,
) -> anyhow::Result<()> {
    ops_logs(&config, "warn");
    let (applier, clerk) = clerk_applier(config, "the backfill").await?;
    let options = repair::backfill::BackfillOptions {
        page_size: page_size.clamp(1, 500),
        restart,
        ..Default::default()
    };
    if organizations {
        let summary =
            repair::backfill::run_organizations(&applier, &clerk, &options, progress).await?;
        for (what, tally) in [
            ("organizations", &summary.organizations),
            ("memberships", &summary.memberships),
        ] {
            println!(
                "backfill done: {} {what} seen, {} applied, {} already newer, {} deleted, {} failed",
                tally.seen,
                tally.applied,
                tally.unchanged,
                tally.deleted,
                tally.failed.len()
            );
            for (id, reason) in &tally.failed {
                println!("  failed {id}: {reason}");
            }
        }
        return Ok(());
    }
    let summary = repair::backfill::run(&applier, &clerk, &options, progress).await?;
    println!(
        "backfill done: {} users seen (from offset {}), {} applied, {} already newer, {} deleted, {} failed",
        summary.seen,
        summary.resumed_from,
        summary.applied,
        summary.unchanged,
        summary.deleted,
        summary.failed.len()
    );
    for (id, reason) in &summary.failed {
        println!("  failed {id}: {reason}");
    }
    Ok(())
}

/// `worker check-connections`.
async fn check_connections(
    config: Config,
    options: repair::health::CheckOptions,
    json: bool,
) -> anyhow::Result<()> {
    ops_logs(&config, "warn");
    let cipher = config.applier.cipher.clone().context(
        "TOKEN_ENCRYPTION_KEY is not set: the check stores the fresh tokens it receives, sealed",
    )?;
    let (applier, clerk) = clerk_applier(config, "check-connections").await?;
    let report = repair::health::run(&applier.db, &cipher, &clerk, &options, None)
        .await
        .context("the check could not read or write the database at DATABASE_URL; run it again")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", repair::health::summary(&report));
    }
    Ok(())
}

/// `worker rotate-token-key`.
async fn rotate_token_key(config: Config) -> anyhow::Result<()> {
    ops_logs(&config, "warn");
    let cipher =
        config.applier.cipher.as_ref().context(
            "TOKEN_ENCRYPTION_KEY is not set: put the new key first, the old ones after it",
        )?;
    let db = store::pool::connect_database(config.database.url.expose(), 2, config.database.pooler)
        .await
        .context("cannot reach the database at DATABASE_URL")?;
    let done =
        store::connections::reencrypt_all(&db, cipher, worker::consume::progress::progress_bar)
            .await
            .context("re-encryption stopped; run the command again to finish")?;
    println!(
        "re-encrypted {done} connection(s) under key {}",
        cipher.primary_key_id()
    );
    Ok(())
}

/// `worker reconcile [--organizations]`.
async fn reconcile(
    config: Config,
    options: ReconcileOptions,
    json: bool,
    organizations: bool,
) -> anyhow::Result<()> {
    ops_logs(&config, "warn");
    let (applier, clerk) = clerk_applier(config, "reconcile").await?;
    if organizations {
        let result = repair::organizations::run(&applier, &clerk, &options).await;
        let failed = |r: &repair::OrgReport| r.failed.len();
        let what = (
            "organization(s) or membership(s)",
            "worker reconcile --organizations",
        );
        print_reconcile(result, json, repair::organizations_summary, failed, what)
    } else {
        let result = repair::users::run(&applier, &clerk, &options, progress).await;
        let failed = |r: &repair::Report| r.failed.len();
        print_reconcile(
            result,
            json,
            repair::summary,
            failed,
            ("user(s)", "worker reconcile"),
        )
    }
}

/// Prints a reconcile's report (JSON, or the summary), also when the deletion guard stopped it;
/// fails when it did not complete or left objects unrepaired (`what`: their kind and the
/// command to run again).
fn print_reconcile<R: serde::Serialize>(
    result: Result<R, ReconcileError>,
    json: bool,
    summary: fn(&R) -> String,
    failed: impl Fn(&R) -> usize,
    (what, command): (&str, &str),
) -> anyhow::Result<()> {
    let report = match result {
        Ok(report) => report,
        Err(error) => {
            if json {
                match &error {
                    ReconcileError::TooManyDeletes { report, .. } => {
                        println!("{}", serde_json::to_string_pretty(report)?);
                    }
                    ReconcileError::TooManyOrganizationDeletes { report, .. } => {
                        println!("{}", serde_json::to_string_pretty(report)?);
                    }
                    _ => {}
                }
            }
            return Err(error).context("reconcile did not complete");
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", summary(&report));
    }
    let failed = failed(&report);
    if failed > 0 {
        anyhow::bail!(
            "{failed} {what} could not be repaired (listed in the report); fix the cause and run `{command}` again"
        );
    }
    Ok(())
}

/// `worker migrate-queues`.
async fn migrate_queues(config: Config) -> anyhow::Result<()> {
    // The probes of queues that may not exist fail by design; lapin would log each as an error.
    // Failures that matter come back as this command's error.
    ops_logs(&config, "warn,lapin=off");
    let report = worker::ops::queues::migrate(&config.broker, &config.topology)
        .await
        .context("queue migration stopped; run the command again to finish")?;
    for queue in report {
        if queue.rebuilt {
            println!(
                "{}: rebuilt, {} message(s) carried over",
                queue.queue, queue.moved
            );
        } else {
            println!("{}: already current", queue.queue);
        }
    }
    Ok(())
}

async fn run_dlq(command: DlqCommand, config: Config) -> anyhow::Result<()> {
    let broker = &config.broker;
    let topology = config.topology.clone();
    match command {
        DlqCommand::List {
            json,
            limit,
            filter,
        } => {
            let letters = dlq::list(broker, topology, limit, &filter.into_filter()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else {
                print!("{}", dlq::format_table(&letters));
            }
        }
        DlqCommand::Show { id } => {
            let letter = dlq::show(broker, topology, &id).await?;
            print!(
                "{}",
                dlq::format_letter(&letter, config.trace_url_template.as_ref())
            );
        }
        DlqCommand::Replay {
            selection,
            filter,
            dry_run,
        } => {
            let filter = filter.into_filter();
            let selection = match (selection.all, selection.ids.is_empty(), filter.is_empty()) {
                (true, true, true) => Selection::All,
                (false, false, true) => Selection::Ids(selection.ids),
                (false, true, false) => Selection::Matching(filter),
                (false, true, true) => anyhow::bail!(
                    "say which dead letters to replay: --all, --id <id>…, or filter flags (--type, --reason, --clerk-user-id, --older-than, --newer-than)"
                ),
                _ => anyhow::bail!(
                    "--all, --id and the filter flags cannot be combined: use one of them"
                ),
            };
            let action = if dry_run {
                dlq::Action::Preview
            } else {
                dlq::Action::Replay
            };
            let summary = dlq::act(
                broker,
                topology,
                &selection,
                action,
                worker::consume::progress::progress_bar,
            )
            .await?;
            if dry_run {
                println!("would replay {} dead letter(s):", summary.selected.len());
                for id in &summary.selected {
                    println!("  {id}");
                }
            } else {
                println!("replayed {} dead letter(s) to the main queue", summary.done);
            }
        }
        DlqCommand::Drop { ids } => {
            let summary = dlq::act(
                broker,
                topology,
                &Selection::Ids(ids),
                dlq::Action::Drop,
                worker::consume::progress::progress_bar,
            )
            .await?;
            println!("dropped {} dead letter(s)", summary.done);
        }
    }
    Ok(())
}
