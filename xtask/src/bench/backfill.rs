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
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use base64::Engine as _;
use migration::MigratorTrait as _;
use rand::RngCore as _;
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};
use serde::Serialize;
use testkit::fake_clerk::{FakeClerk, Population, RateLimit, SECRET_KEY};

use super::{
    REEXEC_ENV,
    pipeline::Check,
    procs::{self, Cleanup, PgServer, Profile},
    report,
};

/// The target: a rate-limited backfill takes at most this many times the least time the limit
/// allows.
const TARGET_RATIO: f64 = 1.2;
/// The rate limit of a `--smoke` run: Clerk's rate (100 requests/s) in 1 s windows.
const SMOKE_LIMIT: RateLimit = RateLimit {
    requests: 100,
    window: Duration::from_secs(1),
};
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432";
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
    machine: report::Machine,
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
    profile: &'static str,
    smoke: bool,
    date: String,
    git_commit: String,
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
    let workspace = super::workspace_root()?;
    let smoke = args.smoke;
    let users = args.users.unwrap_or(if smoke { 2000 } else { 100_000 });
    if users == 0 {
        bail!("--users must be at least 1");
    }
    let profile = args.profile.unwrap_or(if smoke {
        Profile::Dev
    } else {
        Profile::Release
    });
    let json = workspace.join(args.json);
    let markdown_path = args.markdown.map(|p| workspace.join(p));

    let reexec = profile == Profile::Release
        && cfg!(debug_assertions)
        && std::env::var_os(REEXEC_ENV).is_none();
    let mut packages = vec!["worker"];
    if reexec {
        packages.push("xtask");
    }
    println!(
        "[0/3] building {} ({} profile)",
        packages.join(", "),
        profile.name()
    );
    let bin = procs::build(&workspace, profile, &packages)?;
    if reexec {
        return super::reexec_release(&bin).await;
    }

    let pg = PgServer::parse(&super::env_or("DATABASE_URL", DEFAULT_DATABASE_URL))?;
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
        clerk.set_rate_limit(limit);
        let mut cleanup = Cleanup::new("amqp://unused");
        let database = format!("clerk_sync_backfill_{}_{}", std::process::id(), i + 1);
        let result = tokio::select! {
            result = one_run(&bin, &pg, &mut cleanup, &database, &clerk, name, limit, users, &log_dir) => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        let (run, db) = match result {
            Ok(done) => done,
            Err(error) => {
                drop(cleanup);
                return Err(error);
            }
        };
        if machine.is_none() {
            machine = Some(report::machine(&db).await);
        }
        let _ = db.close().await;
        // Drops the database.
        drop(cleanup);
        println!(
            "      {:.1} s, {} requests, {} × 429, {}",
            run.wall_s, run.requests, run.rate_limited, run.summary
        );
        runs.push(run);
    }

    let checks = checks(&runs, &population);
    let report = BackfillReport {
        machine: machine.context("no run")?,
        settings: Settings {
            users,
            users_with_google: population.google,
            users_with_microsoft: population.microsoft,
            users_with_both: population.both,
            profile: profile.name(),
            smoke,
            date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            git_commit: report::git_commit(&workspace),
            worker_args: worker_args().iter().map(|a| (*a).to_owned()).collect(),
            target_ratio: TARGET_RATIO,
        },
        runs,
        checks,
    };
    println!("[3/3] report");
    let markdown = markdown(&report);
    println!("\n{markdown}");
    super::write(
        &json,
        &serde_json::to_string_pretty(&serde_json::to_value(&report)?)?,
    )?;
    println!("JSON written to {}", json.display());
    if let Some(path) = &markdown_path {
        super::write(path, &markdown)?;
        println!("markdown written to {}", path.display());
    }
    let failed = report.checks.iter().filter(|c| !c.pass).count();
    if failed > 0 {
        bail!("{failed} correctness check(s) failed; see the Checks table above");
    }
    Ok(())
}

/// The arguments of `worker backfill` (everything else at its defaults).
fn worker_args() -> [&'static str; 1] {
    ["backfill"]
}

/// One backfill into a fresh database: the run and a connection to the database.
#[allow(clippy::too_many_arguments)]
async fn one_run(
    bin: &Path,
    pg: &PgServer,
    cleanup: &mut Cleanup,
    database: &str,
    clerk: &FakeClerk,
    name: &'static str,
    limit: Option<RateLimit>,
    users: usize,
    log_dir: &Path,
) -> anyhow::Result<(Run, DatabaseConnection)> {
    cleanup.create_database(pg, database).await?;
    let db_url = pg.url(database);
    let mut connect = ConnectOptions::new(&db_url);
    connect.max_connections(2).sqlx_logging(false);
    let db = Database::connect(connect)
        .await
        .context("cannot connect to the bench database")?;
    migration::Migrator::up(&db, None)
        .await
        .context("cannot apply the migrations to the bench database")?;

    let mut key = [0_u8; 32];
    rand::rng().fill_bytes(&mut key);
    let env = [
        ("DATABASE_URL", db_url),
        ("CLERK_API_URL", clerk.url()),
        ("CLERK_SECRET_KEY", SECRET_KEY.to_owned()),
        (
            "TOKEN_ENCRYPTION_KEY",
            base64::engine::general_purpose::STANDARD.encode(key),
        ),
        ("NO_COLOR", "1".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    let program = bin.join("worker");
    if !program.exists() {
        bail!(
            "{} does not exist; did the build put it elsewhere? (CARGO_TARGET_DIR)",
            program.display()
        );
    }
    let log = log_dir.join(format!("{database}.log"));
    let out =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out
        .try_clone()
        .with_context(|| format!("cannot reopen {}", log.display()))?;
    let requests_before = clerk.requests();
    let rate_limited_before = clerk.rate_limited();
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&program)
        .args(worker_args())
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Ctrl-C or an error here: the worker goes too.
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    let pid = child.id().context("the worker exited at once")?.to_string();
    let (mut cpu, mut rss) = (Duration::ZERO, 0);
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("cannot wait for the worker")?,
            () = tokio::time::sleep(SAMPLE_EVERY) => {
                if let Ok(sample) = procs::cpu_time(&pid) {
                    cpu = sample;
                }
                if let Ok(sample) = procs::peak_rss(pid.parse().unwrap_or(0)) {
                    rss = sample;
                }
            }
        }
    };
    let wall = started.elapsed();
    let requests = clerk.requests() - requests_before;
    let rate_limited = clerk.rate_limited() - rate_limited_before;
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let summary = output
        .lines()
        .find(|l| l.starts_with("backfill done:"))
        .unwrap_or("(no summary line; see the log)")
        .to_owned();
    if !status.success() {
        eprintln!(
            "worker backfill exited with {status}; see {}",
            log.display()
        );
    }
    let count = |sql: &'static str| {
        let db = &db;
        async move {
            db.query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
                .await?
                .context("no row")?
                .try_get_by_index::<i64>(0)
                .context("not a count")
        }
    };
    let users_in_db = count("SELECT count(*) FROM users").await?;
    let connections_in_db = count("SELECT count(*) FROM user_calendar_connections").await?;
    let connected_in_db =
        count("SELECT count(*) FROM user_calendar_connections WHERE status = 'connected'").await?;
    let allowed = limit.map(|l| l.minimum_time(requests - rate_limited));
    let wall_s = wall.as_secs_f64();
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
        users_per_s: users as f64 / wall_s,
        requests_per_s: requests as f64 / wall_s,
        worker_cpu_s: cpu.as_secs_f64(),
        worker_peak_rss_bytes: rss,
        exit_ok: status.success(),
        summary,
        users_in_db,
        connections_in_db,
        connected_in_db,
    };
    Ok((run, db))
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

fn markdown(r: &BackfillReport) -> String {
    let s = &r.settings;
    let m = &r.machine;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Backfill of {} users ({} with a Google calendar account, {} with a Microsoft one, {} with \
         both), `worker {}` ({} profile), commit {}, {}.\n",
        s.users,
        s.users_with_google,
        s.users_with_microsoft,
        s.users_with_both,
        s.worker_args.join(" "),
        s.profile,
        s.git_commit,
        s.date
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
    let rows: Vec<Vec<String>> = r
        .runs
        .iter()
        .map(|run| {
            vec![
                run.name.to_owned(),
                match (run.limit_requests, run.limit_window_s) {
                    (Some(n), Some(w)) => format!("{n} / {w} s"),
                    _ => "none".into(),
                },
                s.users.to_string(),
                run.requests.to_string(),
                run.rate_limited.to_string(),
                format!("{:.1} s", run.wall_s),
                run.allowed_s
                    .map_or_else(|| "–".into(), |a| format!("{a:.0} s")),
                run.ratio.map_or_else(
                    || "–".into(),
                    |x| {
                        format!(
                            "{x:.3} ({})",
                            if x <= TARGET_RATIO { "pass" } else { "FAIL" }
                        )
                    },
                ),
                format!("{:.0}", run.users_per_s),
                format!("{:.1}", run.requests_per_s),
                format!("{:.1} s", run.worker_cpu_s),
                format!(
                    "{:.0} MiB",
                    run.worker_peak_rss_bytes as f64 / (1024.0 * 1024.0)
                ),
            ]
        })
        .collect();
    report::table(
        &mut out,
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
    out.push('\n');
    let rows: Vec<Vec<String>> = r
        .checks
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                if c.pass { "pass" } else { "FAIL" }.to_owned(),
                c.detail.clone(),
            ]
        })
        .collect();
    report::table(&mut out, &["Check", "Result", "Detail"], &rows);
    out
}
