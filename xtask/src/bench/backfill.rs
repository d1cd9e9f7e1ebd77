//! `cargo xtask bench-backfill`: `worker backfill` of many users against the fake Clerk Backend
//! API, once under Clerk's documented production rate limit and once with no limit.
//!
//! 0. `cargo build --profile <p> -p worker` (with `--profile release`, a debug build of this task
//!    builds itself in release too and re-runs itself from there, as `cargo xtask bench` does).
//! 1. Starts the fake Clerk in this process with `--users` generated users (realistic user
//!    objects; about 20 % with a Google calendar account, 5 % with a Microsoft one, each with a
//!    token: see `testkit::fake_clerk::Population`).
//! 2. For each run: creates a database `clerk_sync_backfill_<pid>_<run>` and migrates it, runs
//!    the `worker backfill` binary (default settings: page size, pacing) against the fake with
//!    `TOKEN_ENCRYPTION_KEY` set (so calendar tokens are fetched, one request per user and
//!    provider), times it, samples its CPU time and peak RSS, counts the requests the fake
//!    received and the `429`s it answered, checks the tables, and drops the database.
//!    Run (a): the fake enforces 1,000 requests per 10 s (`--smoke`: 100 per 1 s, the same rate
//!    in windows small enough for a short run); run (b): no limit.
//! 3. Reports users, requests, 429s, wall time, the least time the limit allows for the requests
//!    the run had admitted (`RateLimit::minimum_time`: `(ceil(n / 1000) - 1) × 10 s`), their
//!    ratio (target ≤ 1.2) and users/s, as markdown on stdout, JSON (`--json`) and optionally
//!    markdown (`--markdown`).
//!
//! The exit status is non-zero when the run could not complete or a correctness check failed (an
//! exit status, a user or calendar connection missing, a failed user, a `429` under pacing), never
//! for a missed speed target.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::ExitStatus,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use base64::Engine as _;
use rand::RngCore as _;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde::Serialize;
use testkit::fake_clerk::{FakeClerk, Population, RateLimit, SECRET_KEY};

use crate::harness::{
    self, Outputs,
    build::{Profile, build_or_reexec},
    guard::{Cleanup, Inherit},
    host,
    report::{Check, CheckWords, Machine, Stamp, TaskReport, checks_table, table},
    servers::{PgServer, migrated_database},
};

/// The target: a rate-limited backfill takes at most this many times the least time the limit
/// allows.
const TARGET_RATIO: f64 = 1.2;
/// The rate limit of a `--smoke` run: Clerk's rate (100 requests/s) in 1 s windows.
const SMOKE_LIMIT: RateLimit = RateLimit {
    requests: 100,
    window: Duration::from_secs(1),
};
/// How often the worker's CPU time and peak RSS are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// `cargo xtask bench-backfill` options.
#[derive(clap::Args, Debug)]
pub struct BackfillBenchArgs {
    /// Users the fake Clerk serves [default: 100000; 2000 with --smoke].
    #[arg(long)]
    users: Option<usize>,
    /// Build profile of the worker [default: release; dev with --smoke].
    #[arg(long, value_enum)]
    profile: Option<Profile>,
    /// Where to write the JSON results (relative paths from the workspace root).
    #[arg(long, default_value = "target/bench/backfill.json")]
    json: PathBuf,
    /// Also write the results as markdown here (relative paths from the workspace root).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// A small run for CI (2,000 users, dev profile, a limit of 100 requests per 1 s): fails
    /// only if it cannot complete or a user is lost or wrong, never on speed.
    #[arg(long)]
    smoke: bool,
}

/// The results.
#[derive(Serialize)]
struct BackfillReport {
    machine: Machine,
    settings: Settings,
    runs: Vec<Run>,
    checks: Vec<Check>,
}

#[derive(Serialize)]
struct Settings {
    users: usize,
    users_with_google: usize,
    users_with_microsoft: usize,
    users_with_both: usize,
    #[serde(flatten)]
    stamp: Stamp,
    /// The arguments of `worker backfill` (its defaults otherwise).
    worker_args: Vec<String>,
    target_ratio: f64,
}

/// One `worker backfill`.
#[derive(Serialize)]
struct Run {
    name: &'static str,
    /// The fake's limit: requests per window of `limit_window_s`.
    limit_requests: Option<usize>,
    limit_window_s: Option<f64>,
    /// Requests the fake received, `429`s included.
    requests: usize,
    /// Requests the fake answered `429`.
    rate_limited: usize,
    wall_s: f64,
    /// The least time the limit allows for the admitted requests (`requests - rate_limited`).
    allowed_s: Option<f64>,
    /// `wall_s / allowed_s`.
    ratio: Option<f64>,
    users_per_s: f64,
    requests_per_s: f64,
    /// CPU time (user + system) and peak RSS of the worker, last sampled before it exited.
    worker_cpu_s: f64,
    worker_peak_rss_bytes: u64,
    exit_ok: bool,
    /// The worker's summary line.
    summary: String,
    /// Rows at the end.
    users_in_db: i64,
    connections_in_db: i64,
    connected_in_db: i64,
}

/// Runs the benchmark.
pub async fn run(args: BackfillBenchArgs) -> anyhow::Result<()> {
    let workspace = harness::workspace_root()?;
    let smoke = args.smoke;
    let users = args.users.unwrap_or(if smoke { 2000 } else { 100_000 });
    if users == 0 {
        bail!("--users must be at least 1");
    }
    let profile = Profile::or_default(args.profile, smoke);
    let outputs = Outputs::resolve(&workspace, args.json, args.markdown);
    let Some(bin) = build_or_reexec("[0/3]", &workspace, profile, &["worker"]).await? else {
        return Ok(());
    };
    let pg = PgServer::from_env()?;
    let clerk = FakeClerk::start().await;
    let population = clerk.generate_users(users);
    println!(
        "[1/3] fake Clerk at {} with {} users ({} with Google, {} with Microsoft, {} with both)",
        clerk.url(),
        population.users,
        population.google,
        population.microsoft,
        population.both
    );
    let log_dir = workspace.join("target/bench/backfill-logs");
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;
    let limit = if smoke {
        SMOKE_LIMIT
    } else {
        RateLimit::PRODUCTION
    };
    let bench = Bench {
        bin: &bin,
        pg: &pg,
        clerk: &clerk,
        users,
        log_dir: &log_dir,
    };
    let (runs, machine) = bench.runs(limit).await?;
    let checks = checks(&runs, &population);
    let report = BackfillReport {
        machine,
        settings: Settings {
            users,
            users_with_google: population.google,
            users_with_microsoft: population.microsoft,
            users_with_both: population.both,
            stamp: Stamp::now(&workspace, profile, smoke),
            worker_args: worker_args().iter().map(|a| (*a).to_owned()).collect(),
            target_ratio: TARGET_RATIO,
        },
        runs,
        checks,
    };
    println!("[3/3] report");
    harness::report::publish(&report, &outputs)
}

/// The arguments of `worker backfill` (everything else at its defaults).
fn worker_args() -> [&'static str; 1] {
    ["backfill"]
}

/// What every run shares.
struct Bench<'a> {
    /// Where the worker binary is.
    bin: &'a Path,
    pg: &'a PgServer,
    clerk: &'a FakeClerk,
    users: usize,
    log_dir: &'a Path,
}

/// The worker's CPU time and peak RSS, last sampled before it exited.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    cpu: Duration,
    peak_rss: u64,
}

impl Bench<'_> {
    /// The run under `limit`, then the run without one, each in a database of its own
    /// (dropped after it): the runs, and the machine.
    async fn runs(&self, limit: RateLimit) -> anyhow::Result<(Vec<Run>, Machine)> {
        let mut runs = Vec::new();
        let mut machine = None;
        for (i, (name, limit)) in [("production limit", Some(limit)), ("no limit", None)]
            .into_iter()
            .enumerate()
        {
            println!(
                "[2/3] run {} of 2: worker backfill, {name}{}",
                i + 1,
                limit.map_or(String::new(), |l| format!(
                    " ({} requests per {:?})",
                    l.requests, l.window
                ))
            );
            self.clerk.set_rate_limit(limit);
            let database = format!("clerk_sync_backfill_{}_{}", std::process::id(), i + 1);
            let first = machine.is_none();
            let (run, run_machine) = Cleanup::without_broker()
                .around(async |cleanup| {
                    let (run, db) = self.one_run(cleanup, &database, name, limit).await?;
                    let run_machine = if first {
                        Some(harness::report::machine(&db).await)
                    } else {
                        None
                    };
                    let _ = db.close().await;
                    Ok((run, run_machine))
                })
                .await?;
            machine = machine.or(run_machine);
            println!(
                "      {:.1} s, {} requests, {} × 429, {}",
                run.wall_s, run.requests, run.rate_limited, run.summary
            );
            runs.push(run);
        }
        Ok((runs, machine.context("no run")?))
    }

    /// One backfill into a fresh database `database`: the run and a connection to the
    /// database.
    async fn one_run(
        &self,
        cleanup: &mut Cleanup,
        database: &str,
        name: &'static str,
        limit: Option<RateLimit>,
    ) -> anyhow::Result<(Run, DatabaseConnection)> {
        let (db, db_url) = migrated_database(cleanup, self.pg, database, 2).await?;
        let log = self.log_dir.join(format!("{database}.log"));
        let requests_before = self.clerk.requests();
        let rate_limited_before = self.clerk.rate_limited();
        let started = Instant::now();
        let (status, usage) = self.backfill(cleanup, &db_url, &log).await?;
        let wall_s = started.elapsed().as_secs_f64();
        let requests = self.clerk.requests() - requests_before;
        let rate_limited = self.clerk.rate_limited() - rate_limited_before;
        let summary = summary(&log);
        if !status.success() {
            eprintln!(
                "worker backfill exited with {status}; see {}",
                log.display()
            );
        }
        let [users_in_db, connections_in_db, connected_in_db] = counts(&db).await?;
        let allowed = limit.map(|l| l.minimum_time(requests - rate_limited));
        let run = Run {
            name,
            limit_requests: limit.map(|l| l.requests),
            limit_window_s: limit.map(|l| l.window.as_secs_f64()),
            requests,
            rate_limited,
            wall_s,
            allowed_s: allowed.map(|a| a.as_secs_f64()),
            ratio: allowed
                .filter(|a| !a.is_zero())
                .map(|a| wall_s / a.as_secs_f64()),
            users_per_s: self.users as f64 / wall_s,
            requests_per_s: requests as f64 / wall_s,
            worker_cpu_s: usage.cpu.as_secs_f64(),
            worker_peak_rss_bytes: usage.peak_rss,
            exit_ok: status.success(),
            summary,
            users_in_db,
            connections_in_db,
            connected_in_db,
        };
        Ok((run, db))
    }

    /// Runs `worker backfill` into `db_url` against the fake (with `TOKEN_ENCRYPTION_KEY` set,
    /// so that calendar tokens are fetched) and nothing else from this environment, its
    /// output to `log`, until it exits: its status and usage.
    async fn backfill(
        &self,
        cleanup: &mut Cleanup,
        db_url: &str,
        log: &Path,
    ) -> anyhow::Result<(ExitStatus, Usage)> {
        let mut key = [0_u8; 32];
        rand::rng().fill_bytes(&mut key);
        let env = [
            ("DATABASE_URL", db_url.to_owned()),
            ("CLERK_API_URL", self.clerk.url()),
            ("CLERK_SECRET_KEY", SECRET_KEY.to_owned()),
            (
                "TOKEN_ENCRYPTION_KEY",
                base64::engine::general_purpose::STANDARD.encode(key),
            ),
            ("NO_COLOR", "1".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v));
        let program = self.bin.join("worker");
        cleanup.spawn(
            "worker",
            &program,
            &worker_args(),
            &env,
            Inherit::Nothing,
            log,
        )?;
        let mut usage = Usage::default();
        let status = cleanup
            .wait_exit("worker", SAMPLE_EVERY, |pid| {
                if let Ok(sample) = host::cpu_time(&pid.to_string()) {
                    usage.cpu = sample;
                }
                if let Ok(sample) = host::peak_rss(pid) {
                    usage.peak_rss = sample;
                }
            })
            .await?;
        Ok((status, usage))
    }
}

/// The worker's summary line in `log`.
fn summary(log: &Path) -> String {
    let output = std::fs::read_to_string(log).unwrap_or_default();
    output
        .lines()
        .find(|l| l.starts_with("backfill done:"))
        .unwrap_or("(no summary line; see the log)")
        .to_owned()
}

/// Rows at the end: users, calendar connections, connected ones.
async fn counts(db: &DatabaseConnection) -> anyhow::Result<[i64; 3]> {
    let mut counts = [0; 3];
    for (count, sql) in counts.iter_mut().zip([
        "SELECT count(*) FROM users",
        "SELECT count(*) FROM user_calendar_connections",
        "SELECT count(*) FROM user_calendar_connections WHERE status = 'connected'",
    ]) {
        *count = db
            .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
            .await?
            .context("no row")?
            .try_get_by_index::<i64>(0)
            .context("not a count")?;
    }
    Ok(counts)
}

fn checks(runs: &[Run], population: &Population) -> Vec<Check> {
    let mut checks = Vec::new();
    for run in runs {
        let n = run.name;
        checks.push(Check::new(
            format!("{n}: worker backfill exited 0"),
            run.exit_ok,
            run.summary.clone(),
        ));
        checks.push(Check::new(
            format!("{n}: every user applied, none failed"),
            run.summary.contains(&format!(
                "{} users seen (from offset 0), {} applied",
                population.users, population.users
            )) && run.summary.ends_with(" 0 failed"),
            run.summary.clone(),
        ));
        checks.push(Check::new(
            format!("{n}: every user in Postgres"),
            run.users_in_db == population.users as i64,
            format!("{} of {}", run.users_in_db, population.users),
        ));
        checks.push(Check::new(
            format!("{n}: every calendar connection in Postgres, connected"),
            run.connections_in_db == population.connections() as i64
                && run.connected_in_db == population.connections() as i64,
            format!(
                "{} rows, {} connected, of {} accounts",
                run.connections_in_db,
                run.connected_in_db,
                population.connections()
            ),
        ));
        if run.limit_requests.is_some() {
            checks.push(Check::new(
                format!("{n}: no 429 (the backfill paces itself under the limit)"),
                run.rate_limited == 0,
                format!("{} × 429", run.rate_limited),
            ));
        }
    }
    checks
}

impl TaskReport for BackfillReport {
    fn markdown(&self) -> String {
        let mut out = String::new();
        self.markdown_header(&mut out);
        self.markdown_runs(&mut out);
        out.push('\n');
        checks_table(&mut out, &self.checks, &CHECK_WORDS);
        out
    }

    fn checks(&self) -> &[Check] {
        &self.checks
    }
}

/// The backfill bench's checks table.
const CHECK_WORDS: CheckWords = CheckWords {
    columns: ["Check", "Result", "Detail"],
    pass: "pass",
    fail: "FAIL",
};

impl BackfillReport {
    /// What was backfilled, how, and where.
    fn markdown_header(&self, out: &mut String) {
        let s = &self.settings;
        let m = &self.machine;
        let _ = writeln!(
            out,
            "Backfill of {} users ({} with a Google calendar account, {} with a Microsoft one, {} \
             with both), `worker {}` ({} profile), commit {}, {}.\n",
            s.users,
            s.users_with_google,
            s.users_with_microsoft,
            s.users_with_both,
            s.worker_args.join(" "),
            s.stamp.profile,
            s.stamp.git_commit,
            s.stamp.date
        );
        let _ = writeln!(
            out,
            "Machine: {} CPUs ({}), {:.1} GiB RAM, Linux {}, PostgreSQL {}.\n",
            m.nproc,
            m.cpu_model,
            m.mem_total_bytes.unwrap_or(0) as f64 / (1024.0 * 1024.0 * 1024.0),
            m.kernel,
            m.postgres
        );
    }

    /// A row per run.
    fn markdown_runs(&self, out: &mut String) {
        let users = self.settings.users;
        let rows: Vec<Vec<String>> = self.runs.iter().map(|run| run.row(users)).collect();
        table(
            out,
            &[
                "Run",
                "Limit",
                "Users",
                "Requests",
                "429s",
                "Wall",
                "Limit allows",
                "Ratio (≤ 1.2)",
                "Users/s",
                "Requests/s",
                "Worker CPU",
                "Worker peak RSS",
            ],
            &rows,
        );
    }
}

impl Run {
    /// Its row of the runs table.
    fn row(&self, users: usize) -> Vec<String> {
        let ratio = |x: f64| {
            let verdict = if x <= TARGET_RATIO { "pass" } else { "FAIL" };
            format!("{x:.3} ({verdict})")
        };
        vec![
            self.name.to_owned(),
            match (self.limit_requests, self.limit_window_s) {
                (Some(n), Some(w)) => format!("{n} / {w} s"),
                _ => "none".into(),
            },
            users.to_string(),
            self.requests.to_string(),
            self.rate_limited.to_string(),
            format!("{:.1} s", self.wall_s),
            self.allowed_s
                .map_or_else(|| "–".into(), |a| format!("{a:.0} s")),
            self.ratio.map_or_else(|| "–".into(), ratio),
            format!("{:.0}", self.users_per_s),
            format!("{:.1}", self.requests_per_s),
            format!("{:.1} s", self.worker_cpu_s),
            format!(
                "{:.0} MiB",
                self.worker_peak_rss_bytes as f64 / (1024.0 * 1024.0)
            ),
        ]
    }
}
