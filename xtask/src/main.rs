//! `cargo xtask`: developer tasks.
//!
//! - `cargo xtask dev` creates the database if needed, builds and starts worker (which applies
//!   the migrations), ingress and api with development settings, prints their addresses, and
//!   stops them all on Ctrl-C.
//! - `cargo xtask send-event <type>` signs a realistic sample event with the configured secret and
//!   posts it to the ingress, as Clerk's dashboard does when testing an endpoint.
//! - `cargo xtask bench` loads ingress and worker with signed events and reports their throughput,
//!   latency, lag and memory next to the broker's and the database's ceilings (see `bench`).
//! - `cargo xtask bench-backfill` times `worker backfill` of 100,000 users against the fake Clerk
//!   API under Clerk's production rate limit and without one (see `bench::backfill`).
//! - `cargo xtask soak` runs ingress, worker and api under a steady paced load for an hour (by
//!   default) and checks that memory, queue and `processed_events` stay flat and every event is
//!   applied (see `soak`).

mod bench;
mod harness;
mod soak;

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use sea_orm::{ConnectionTrait, Database};
use testkit::events;

/// The development webhook secret (never use it in production).
const DEV_SECRET: &str = "whsec_ZGV2LW9ubHktd2ViaG9vay1zZWNyZXQtY2xlcmstc3luYw==";
/// The development service key of the api.
const DEV_SERVICE_KEY: &str = "dev-service-key-not-for-production-0001";
/// The development token key (base64 of 32 bytes).
const DEV_TOKEN_KEY: &str = "ZGV2LW9ubHktdG9rZW4ta2V5LWNsZXJrLXN5bmMtMzI=";

#[derive(Parser)]
#[command(name = "cargo xtask", about = "clerk-sync developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run worker, ingress and api locally against Postgres and RabbitMQ at their defaults.
    Dev,
    /// Sign a sample event with CLERK_WEBHOOK_SECRET and post it to the ingress.
    SendEvent {
        /// `user.created`, `user.updated`, `user.deleted` or any other type (sent as is).
        event_type: String,
        /// The webhook URL.
        #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/clerk")]
        url: String,
        /// The Clerk user id of the sample user.
        #[arg(long, default_value = "user_2abcSYNTHuser01")]
        user_id: String,
    },
    /// Benchmark ingress and worker against the broker's and the database's ceilings.
    Bench(bench::BenchArgs),
    /// Time `worker backfill` against the fake Clerk API, rate-limited as Clerk's production
    /// instances are, and without a limit.
    BenchBackfill(bench::backfill::BackfillBenchArgs),
    /// An hour (by default) of paced load on ingress, worker and api: memory, queue depth and
    /// `processed_events` stay bounded, every event is applied.
    Soak(soak::SoakArgs),
    /// Write the settings table in docs/configuration.md from the list in settings/src/catalog.rs.
    SettingsTable,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Dev => dev().await,
        Task::SendEvent {
            event_type,
            url,
            user_id,
        } => send_event(&event_type, &url, &user_id).await,
        Task::Bench(args) => bench::run(args).await,
        Task::BenchBackfill(args) => bench::backfill::run(args).await,
        Task::Soak(args) => soak::run(args).await,
        Task::SettingsTable => settings_table(),
    }
}

/// Rewrites the settings table in docs/configuration.md from `settings::catalog::SETTINGS`.
fn settings_table() -> anyhow::Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let readme = std::fs::read_to_string(&path)?;
    let updated = settings::catalog::with_table(&readme).ok_or_else(|| {
        anyhow::anyhow!(
            "docs/configuration.md has no settings table markers ({} … {})",
            settings::catalog::TABLE_START,
            settings::catalog::TABLE_END
        )
    })?;
    if updated == readme {
        println!("docs/configuration.md's settings table is up to date");
    } else {
        std::fs::write(&path, updated)?;
        println!("docs/configuration.md's settings table rewritten from settings/src/catalog.rs");
    }
    Ok(())
}

/// The body of a sample event of `event_type`.
fn sample(event_type: &str, user_id: &str) -> Vec<u8> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    let state = events::UserState {
        id: user_id.to_owned(),
        email: Some("ada@example.com".into()),
        first_name: Some("Ada".into()),
        last_name: Some("Synth".into()),
        updated_at: now_ms,
    };
    match event_type {
        "user.created" | "user.updated" => events::user_event(event_type, &state),
        "user.deleted" => events::user_deleted(user_id, now_ms),
        other => serde_json::to_vec(&events::envelope(
            other,
            serde_json::json!({"id": "sess_2abcSYNTHsess01", "object": other.split('.').next().unwrap_or("object")}),
            now_ms,
        ))
        .unwrap_or_default(),
    }
}

async fn send_event(event_type: &str, url: &str, user_id: &str) -> anyhow::Result<()> {
    let secrets = env_or("CLERK_WEBHOOK_SECRET", DEV_SECRET);
    let secret = secrets
        .split_whitespace()
        .next()
        .context("CLERK_WEBHOOK_SECRET is empty")?;
    let webhook = svix::webhooks::Webhook::new(secret)
        .map_err(|_| anyhow::anyhow!("CLERK_WEBHOOK_SECRET is not a valid whsec_ secret"))?;
    let body = sample(event_type, user_id);
    let msg_id = format!("msg_{}", uuid::Uuid::new_v4().simple());
    let timestamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    let signature = webhook
        .sign(&msg_id, timestamp, &body)
        .map_err(|e| anyhow::anyhow!("signing failed: {e}"))?;
    let response = reqwest::Client::new()
        .post(url)
        .header("svix-id", &msg_id)
        .header("svix-timestamp", timestamp.to_string())
        .header("svix-signature", signature)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}; is the ingress running?"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    println!("{event_type} {msg_id} -> {status} {text}");
    if !status.is_success() {
        bail!("the ingress answered {status}");
    }
    Ok(())
}

/// Stops every child on drop (Ctrl-C included).
struct Children(Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (name, child) in &mut self.0 {
            // SIGTERM first: each process finishes its in-flight work.
            testkit::process::stop(child, Duration::from_secs(10));
            println!("stopped {name}");
        }
    }
}

async fn dev() -> anyhow::Result<()> {
    let database_url = env_or(
        "DATABASE_URL",
        "postgres://postgres@localhost:5432/clerk_sync",
    );
    create_database(&database_url).await?;
    let status = Command::new(env_or("CARGO", "cargo"))
        .args(["build", "-p", "worker", "-p", "ingress", "-p", "api"])
        .status()
        .context("cannot run cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let target = env_or("CARGO_TARGET_DIR", "target");
    let settings = [
        ("DATABASE_URL", database_url.clone()),
        (
            "CLERK_WEBHOOK_SECRET",
            env_or("CLERK_WEBHOOK_SECRET", DEV_SECRET),
        ),
        (
            "API_SERVICE_KEYS",
            env_or("API_SERVICE_KEYS", DEV_SERVICE_KEY),
        ),
        (
            "TOKEN_ENCRYPTION_KEY",
            env_or("TOKEN_ENCRYPTION_KEY", DEV_TOKEN_KEY),
        ),
    ];
    let mut children = Children(Vec::new());
    for (name, args) in [
        ("worker", vec!["run"]),
        ("ingress", vec![]),
        ("api", vec![]),
    ] {
        let child = Command::new(format!("{target}/debug/{name}"))
            .args(args)
            .envs(settings.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        children.0.push((name.to_owned(), child));
        if name == "worker" {
            // The worker applies migrations; give it a head start.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    print_addresses();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            () = tokio::time::sleep(Duration::from_millis(500)) => {
                for (name, child) in &mut children.0 {
                    if let Ok(Some(status)) = child.try_wait() {
                        bail!("{name} exited ({status}); see its log above");
                    }
                }
            }
        }
    }
    println!("stopping…");
    drop(children);
    Ok(())
}

/// Where the services of `cargo xtask dev` answer.
fn print_addresses() {
    println!();
    println!("clerk-sync is running (Ctrl-C stops everything):");
    println!(
        "  ingress  http://{}/webhooks/clerk",
        env_or("INGRESS_ADDR", "127.0.0.1:8080")
    );
    println!(
        "  api      http://{}  (service key: {})",
        env_or("API_ADDR", "127.0.0.1:8081"),
        DEV_SERVICE_KEY
    );
    println!(
        "  worker   http://{}/metrics",
        env_or("WORKER_ADDR", "127.0.0.1:8082")
    );
    println!("  try:     cargo xtask send-event user.created");
    println!();
}

/// Creates the database named in `url` if it does not exist.
async fn create_database(url: &str) -> anyhow::Result<()> {
    let (server, name) = url
        .rsplit_once('/')
        .context("DATABASE_URL has no database name")?;
    let name = name.split('?').next().unwrap_or(name);
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        bail!("database name {name:?} must be letters, digits and underscores");
    }
    let admin = Database::connect(format!("{server}/postgres"))
        .await
        .context("cannot connect to Postgres (DATABASE_URL); is it running?")?;
    let exists = admin
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"),
        ))
        .await?
        .is_some();
    if !exists {
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await?;
        println!("created database {name}");
    }
    Ok(())
}
