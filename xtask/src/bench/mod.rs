//! `cargo xtask bench`: a load generator for the whole pipeline, and the ceilings it is judged
//! against, measured in the same run on the same machine.
//!
//! Phases:
//! 0. `cargo build --profile <p> -p ingress -p worker`. With `--profile release` a debug build of
//!    this task first builds itself in release too and re-runs itself from there, because the
//!    load generator and the ceilings run in this process and must not be the bottleneck.
//!    Creates the database `clerk_sync_bench_<pid>` (migrated) and uses the queue prefix
//!    `clerk_sync_bench_<pid>`.
//! 1. Builds N distinct realistic events (`user.created`, then `user.updated`s, 5 % of users end
//!    with `user.deleted`) over U users, and the final state they must lead to. A random
//!    `whsec_` secret signs them right before each phase that sends them.
//! 2. Broker ceiling: a minimal lapin publisher with confirms to a quorum queue, messages of the
//!    events' average size, 64 unconfirmed at a time.
//! 3. Database ceilings: the worker's version-guarded upsert, one row per transaction (16
//!    connections) and 64 rows per transaction (`unnest` arrays); then the tables are emptied.
//! 4. Ingress: for each `--connections` C, starts the ingress, sends all N events over C
//!    keep-alive HTTP/1.1 connections, records accepted/s, latencies, errors and the peak RSS.
//!    The first C publishes to the prefix the worker will drain; the others to prefixes of their
//!    own (`<prefix>_c<C>`), so that the drain sees exactly N events.
//! 5. Worker drain: starts the worker on the filled queue, times it through `processed_events`,
//!    then checks that the queues are empty and `users` equals the expected state.
//! 6. Live lag: with the worker still running, an ingress again and min(N, 5000) newer updates at
//!    64 connections; the change of the worker's `clerk_sync_event_lag_seconds` histogram gives
//!    the accept-to-commit lag (bucket upper bounds); the state is checked again.
//! 7. Report: a markdown table on stdout, JSON (`--json`) and optionally markdown (`--markdown`).
//!
//! `--reads-only` runs the read path alone instead (see [`read_phase`]).
//!
//! A guard stops the processes, drops the database and deletes every queue and exchange the run
//! declared, on success, error, panic and Ctrl-C. The exit status is non-zero when the run could
//! not complete or a correctness check failed (a request not answered 200, an event not applied,
//! a wrong final state, a dead letter), never for a missed speed target.

pub mod backfill;
mod ceilings;
pub(crate) mod events;
pub(crate) mod load;
pub mod paced;
mod pgbench;
pub(crate) mod pipeline;
mod read_phase;
pub(crate) mod reads;
pub(crate) mod report;
mod scale;
mod seed;
pub(crate) mod traces;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};

use self::{
    events::Event,
    report::{Ceilings, IngressRun, Live, Report, Settings, WorkerRun},
};
use crate::harness::{
    self, Outputs, Pipeline,
    build::Profile,
    guard::Cleanup,
    host,
    report::{Check, Stamp},
    servers::{Broker, Servers},
    services::{Services, Started},
    site::{self, Site},
};

/// Runs of the broker ceiling; the best counts.
const BROKER_CEILING_RUNS: usize = 3;

/// Connections of the live-lag phase.
const LIVE_CONNECTIONS: usize = 64;
/// At most this many events in the live-lag phase.
const LIVE_MAX_EVENTS: usize = 50_000;
/// Runs of the broker's end-to-end ceiling (before the live phase).
const E2E_RUNS: usize = 2;
/// The worker's accept-to-commit histogram.
const LAG_HISTOGRAM: &str = "clerk_sync_event_lag_seconds";

/// `cargo xtask bench` options.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Distinct events to send [default: 50000; 2000 with --smoke].
    #[arg(long)]
    events: Option<usize>,
    /// Users the events are spread over [default: 5000; 200 with --smoke].
    #[arg(long)]
    users: Option<usize>,
    /// Connection counts to run the ingress phase with, comma separated [default: 64,200; 16
    /// with --smoke].
    #[arg(long, value_delimiter = ',')]
    connections: Option<Vec<usize>>,
    /// Build profile of ingress and worker [default: release; dev with --smoke].
    #[arg(long, value_enum)]
    profile: Option<Profile>,
    /// Where to write the JSON results (relative paths from the workspace root).
    #[arg(long, default_value = "target/bench/results.json")]
    json: PathBuf,
    /// Also write the results as markdown here (relative paths from the workspace root).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// A small run for CI (N 2000, U 200, 16 connections, dev profile): fails only if it cannot
    /// complete or an event is lost or wrong, never on speed.
    #[arg(long)]
    smoke: bool,
    /// Skip the scale phases (drains at size, pruning, the read path).
    #[arg(long)]
    no_scale: bool,
    /// Skip the tracing cost phase (ingress and worker with tracing off and on).
    #[arg(long)]
    no_traces: bool,
    /// Users seeded for the scale phases [default: 1000000; 20000 with --smoke].
    #[arg(long)]
    scale_users: Option<u64>,
    /// Svix ids seeded for the scale phases [default: 10000000; 100000 with --smoke].
    #[arg(long)]
    scale_svix_ids: Option<u64>,
    /// Seconds each read-path run lasts, at most 50 (session tokens live a minute) [default: 15;
    /// 2 with --smoke].
    #[arg(long)]
    read_seconds: Option<u64>,
    /// Only the read path, on its own: seeds --scale-users users [default: 200000] and measures
    /// Postgres's ceiling (pgbench), the sqlx ceiling and both routes of the api, with no worker
    /// and no webhooks meanwhile. Builds in release unless --profile says otherwise.
    #[arg(long, conflicts_with_all = ["smoke", "no_scale", "events", "users", "connections"])]
    reads_only: bool,
}

/// The options with the defaults applied.
struct Options {
    events: usize,
    users: usize,
    connections: Vec<usize>,
    profile: Profile,
    outputs: Outputs,
    smoke: bool,
    traces: bool,
    scale: Option<scale::ScaleOptions>,
    reads_only: bool,
}

impl Options {
    fn resolve(args: BenchArgs, workspace: &Path) -> anyhow::Result<Self> {
        let smoke = args.smoke;
        let mut connections = args
            .connections
            .unwrap_or_else(|| if smoke { vec![16] } else { vec![64, 200] });
        let mut seen = std::collections::HashSet::new();
        connections.retain(|c| seen.insert(*c));
        if connections.is_empty() || connections.contains(&0) {
            bail!("--connections needs one or more counts above 0, e.g. --connections 64,200");
        }
        let events = args.events.unwrap_or(if smoke { 2000 } else { 50000 });
        let users = args.users.unwrap_or(if smoke { 200 } else { 5000 });
        if events == 0 {
            bail!("--events must be at least 1");
        }
        let scale = (!args.no_scale).then(|| {
            let mut so = scale::ScaleOptions::defaults(smoke);
            let default_users = if args.reads_only {
                read_phase::DEFAULT_USERS
            } else {
                so.users
            };
            so.users = args.scale_users.unwrap_or(default_users);
            so.processed = args.scale_svix_ids.unwrap_or(so.processed);
            if let Some(s) = args.read_seconds {
                so.read_duration = Duration::from_secs(s);
            }
            so
        });
        if scale
            .as_ref()
            .is_some_and(|so| so.users == 0 || so.read_duration.is_zero())
        {
            bail!("--scale-users and --read-seconds must be at least 1");
        }
        if scale
            .as_ref()
            .is_some_and(|so| so.read_duration > Duration::from_secs(50))
        {
            bail!(
                "--read-seconds must be at most 50: the /me runs' session tokens live 60 seconds"
            );
        }
        Ok(Self {
            scale,
            events,
            users,
            connections,
            profile: Profile::or_default(args.profile, smoke),
            outputs: Outputs::resolve(workspace, args.json, args.markdown),
            smoke,
            traces: !args.no_traces,
            reads_only: args.reads_only,
        })
    }
}

/// Runs the benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let workspace = harness::workspace_root()?;
    let options = Options::resolve(args, &workspace)?;
    if options.reads_only {
        let so = options
            .scale
            .as_ref()
            .context("--reads-only needs the scale phases")?;
        return read_phase::run(&workspace, options.profile, so, &options.outputs).await;
    }
    // Checked before building: a bad combination should not cost a build.
    events::validate(options.events, options.users)?;
    let task = ("bench", "[0/7]");
    harness::pipeline(
        task,
        &workspace,
        options.profile,
        &options.outputs,
        async |p, cleanup| phases(&options, &workspace, p, cleanup).await,
    )
    .await
}

/// What the phases share.
struct Ctx<'a> {
    services: &'a Services,
    servers: &'a Servers,
    secret: String,
    /// The database and the queue prefix the worker drains.
    site: Site,
}

impl Ctx<'_> {
    /// The node the bench's own AMQP connections use (the first of `AMQP_URL`).
    fn amqp_node(&self) -> &str {
        &self.servers.amqp_node
    }

    /// Starts an ingress named `name` publishing to `prefix`, ready.
    async fn start_ingress(
        &self,
        cleanup: &mut Cleanup,
        name: &str,
        prefix: &str,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Started> {
        let ingress = self
            .site
            .ingress(name, prefix, &self.secret)
            .envs(extra_env);
        self.services.start(cleanup, ingress).await
    }

    /// Starts an ingress on `prefix`, sends `events` (signed now) over `connections`
    /// connections, stops it.
    async fn ingress_run(
        &self,
        cleanup: &mut Cleanup,
        name: &str,
        prefix: &str,
        events: &[Event],
        connections: usize,
        round: usize,
    ) -> anyhow::Result<IngressRun> {
        self.ingress_run_with(cleanup, name, prefix, events, connections, round, &[])
            .await
    }

    /// [`Self::ingress_run`] with more settings for the ingress.
    #[allow(clippy::too_many_arguments)]
    async fn ingress_run_with(
        &self,
        cleanup: &mut Cleanup,
        name: &str,
        prefix: &str,
        events: &[Event],
        connections: usize,
        round: usize,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<IngressRun> {
        let ingress = self.start_ingress(cleanup, name, prefix, extra_env).await?;
        let pid = ingress.pid.to_string();
        let signed = Arc::new(events::sign(events, &self.secret)?);
        let ingress_cpu_before = host::cpu_time(&pid)?;
        let own_cpu_before = host::cpu_time("self")?;
        let load = load::run(ingress.addr, signed, connections).await?;
        let own_cpu = host::cpu_time("self")?.saturating_sub(own_cpu_before);
        let cpu = host::cpu_time(&pid)?.saturating_sub(ingress_cpu_before);
        let peak_rss = host::peak_rss(ingress.pid)?;
        cleanup.stop(name).await?;
        Ok(IngressRun {
            load,
            peak_rss,
            cpu,
            load_generator_cpu: own_cpu,
            round,
            live: false,
        })
    }

    /// Once the worker has applied what was sent: gives the last acks a moment (they follow
    /// commits), then checks that the site's queues are empty (counted through `broker`) and
    /// `users` equals `expected`.
    async fn check_settled(
        &self,
        broker: &Broker,
        expected: &[events::Expected],
        when: &str,
    ) -> anyhow::Result<Vec<Check>> {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut checks = site::check_queues(broker, &self.site.main, when).await?;
        checks.push(pipeline::check_users(&self.site.db, expected, when).await?);
        Ok(checks)
    }
}

fn drain_timeout(events: u64) -> Duration {
    Duration::from_secs(120 + events / 200)
}

async fn phases(
    o: &Options,
    workspace: &Path,
    p: Pipeline<'_>,
    cleanup: &mut Cleanup,
) -> anyhow::Result<Report> {
    println!(
        "[1/7] generating {} events over {} users",
        o.events, o.users
    );
    let plan = events::plan(o.events, o.users)?;
    let mut expected = plan.users;
    // The scale phases drain the same events again, from the start.
    let initial = expected.clone();
    let body_size = events::average_size(&plan.events);
    let ctx = Ctx {
        services: p.services,
        servers: p.servers,
        secret: events::random_secret(),
        site: p.site,
    };
    let mut checks = Vec::new();
    let (ceilings, ingress, batch_rows) =
        ceilings_and_ingress(&ctx, cleanup, o, &plan.events, body_size, &mut checks).await?;
    let queued = ingress.first().map_or(0, |r| r.load.accepted);
    let live_count = o.events.min(LIVE_MAX_EVENTS);
    let (worker, live) = drain_and_live(
        &ctx,
        cleanup,
        &mut expected,
        (queued, live_count),
        body_size,
    )
    .await?;
    checks.extend(worker.1);
    checks.extend(live.1);
    let traces = if o.traces {
        let (report, traces_checks) =
            traces::run(&ctx, cleanup, &mut expected, live_count, o.connections[0]).await?;
        checks.extend(traces_checks);
        Some(report)
    } else {
        None
    };
    let scale = match &o.scale {
        Some(so) => {
            Some(scale_phases(&ctx, cleanup, so, &plan.events, initial, &mut checks).await?)
        }
        None => None,
    };

    println!("[7/7] report");
    let machine = harness::report::machine(&ctx.site.db).await;
    let prefix = ctx.site.prefix.clone();
    ctx.site.close().await;
    Ok(Report {
        machine,
        settings: settings(o, workspace, prefix, body_size, live_count, batch_rows),
        ceilings,
        ingress,
        worker: worker.0,
        live: live.0,
        traces,
        scale,
        checks,
    })
}

/// Phases 2 to 4: the broker's and the database's ceilings, and the ingress at each connection
/// count (checked); the ceilings, the ingress runs and the rows per batched transaction.
async fn ceilings_and_ingress(
    ctx: &Ctx<'_>,
    cleanup: &mut Cleanup,
    o: &Options,
    events: &[Event],
    body_size: usize,
    checks: &mut Vec<Check>,
) -> anyhow::Result<(Ceilings, Vec<IngressRun>, usize)> {
    let rounds = alternating_rounds(ctx, cleanup, o, events, body_size).await?;
    checks.extend(rounds.ingress.iter().map(answered_check));
    println!(
        "[3/7] database ceilings: {} upserts over {} users",
        o.events, o.users
    );
    let (db_single, db_batched, batch_rows) = database_ceilings(&ctx.site.db, o).await?;
    let more = other_connection_counts(ctx, cleanup, o, events).await?;
    checks.extend(more.iter().map(answered_check));
    let mut ingress = rounds.ingress;
    ingress.extend(more);
    let ceilings = Ceilings {
        broker: rounds.broker,
        broker_runs: rounds.broker_runs,
        db_single,
        db_batched,
    };
    Ok((ceilings, ingress, batch_rows))
}

/// Phases 5 and 6: the worker drains the `queued` events, then the live phase sends
/// `live_count` more with the worker running (after the broker's end-to-end ceiling); the
/// worker's figures and the live phase's, each with their checks.
async fn drain_and_live(
    ctx: &Ctx<'_>,
    cleanup: &mut Cleanup,
    expected: &mut [events::Expected],
    (queued, live_count): (u64, usize),
    body_size: usize,
) -> anyhow::Result<((WorkerRun, Vec<Check>), (Live, Vec<Check>))> {
    println!("[5/7] worker drain: {queued} queued events");
    let (worker, drained) = worker_drain(ctx, cleanup, expected, queued, &[]).await?;
    let e2e_runs = end_to_end_ceiling(ctx, cleanup, live_count, body_size).await?;
    let (mut live, live_checks) = live_phase(ctx, cleanup, &worker, expected, live_count).await?;
    live.e2e_runs = e2e_runs;
    let worker_run = WorkerRun {
        drain: drained.drain,
        peak_rss_after_drain: drained.peak_rss_after_drain,
        peak_rss: worker.stop(cleanup).await?,
    };
    Ok(((worker_run, drained.checks), (live, live_checks)))
}

/// Phases 8 and 9, in a database and under a queue prefix of their own.
async fn scale_phases(
    ctx: &Ctx<'_>,
    cleanup: &mut Cleanup,
    so: &scale::ScaleOptions,
    events: &[Event],
    mut expected: Vec<events::Expected>,
    checks: &mut Vec<Check>,
) -> anyhow::Result<scale::ScaleReport> {
    let prefix = format!("{}_scale", ctx.site.prefix);
    let sctx = Ctx {
        services: ctx.services,
        servers: ctx.servers,
        secret: ctx.secret.clone(),
        site: Site::create(cleanup, ctx.servers, prefix).await?,
    };
    let result = scale::run(&sctx, cleanup, so, events, &mut expected).await;
    sctx.site.close().await;
    let (report, scale_checks) = result?;
    checks.extend(scale_checks);
    Ok(report)
}

/// Phase 2's runs.
struct Rounds {
    /// The fastest broker run.
    broker: ceilings::Ceiling,
    /// Every broker run, msgs/s.
    broker_runs: Vec<f64>,
    /// The ingress's runs at the first connection count, round 1 first.
    ingress: Vec<IngressRun>,
}

/// Phase 2: runs of the broker ceiling and of the ingress at the first connection count,
/// alternating, [`BROKER_CEILING_RUNS`] rounds. The first round's ingress fills the queue the
/// worker drains.
async fn alternating_rounds(
    ctx: &Ctx<'_>,
    cleanup: &mut Cleanup,
    o: &Options,
    events: &[Event],
    body_size: usize,
) -> anyhow::Result<Rounds> {
    let first_connections = o.connections[0];
    println!(
        "[2/7] broker ceiling ({} messages of {body_size} B, {} in flight) and ingress ({} events \
         over {first_connections} connections), alternating, {BROKER_CEILING_RUNS} rounds",
        o.events,
        ceilings::BROKER_IN_FLIGHT,
        o.events,
    );
    let ceiling_queue = format!("{}.ceiling", ctx.site.prefix);
    cleanup.track_queue(&ceiling_queue);
    // Both rates vary from run to run on a shared box, and drift over minutes: runs of the two
    // alternate, and the best of each is compared (the report gives every run).
    let mut broker_runs = Vec::new();
    let mut broker_ceiling: Option<ceilings::Ceiling> = None;
    let mut ingress_runs = Vec::new();
    for round in 1..=BROKER_CEILING_RUNS {
        let (node, queue, count) = (ctx.amqp_node().to_owned(), ceiling_queue.clone(), o.events);
        // On a thread of its own, as the load generator is.
        let run = load::on_own_thread(move || async move {
            ceilings::broker(&node, &queue, count, body_size).await
        })
        .await?;
        println!("      round {round}: broker {:.0} msgs/s", run.per_s());
        broker_runs.push(run.per_s());
        if broker_ceiling.is_none_or(|best| run.per_s() > best.per_s()) {
            broker_ceiling = Some(run);
        }
        // The first round fills the queue the worker drains; the others publish to a prefix of
        // their own, deleted right after.
        let run_prefix = if round == 1 {
            ctx.site.prefix.clone()
        } else {
            format!("{}_r{round}", ctx.site.prefix)
        };
        let run =
            ingress_phase(ctx, cleanup, &run_prefix, events, first_connections, round).await?;
        if round > 1 {
            cleanup
                .delete_topology_now(&site::topology(&run_prefix)?)
                .await;
        }
        ingress_runs.push(run);
    }
    Ok(Rounds {
        broker: broker_ceiling.context("no broker ceiling run")?,
        broker_runs,
        ingress: ingress_runs,
    })
}

/// Phase 4: an ingress run at each further connection count, on a prefix of its own deleted
/// right after.
async fn other_connection_counts(
    ctx: &Ctx<'_>,
    cleanup: &mut Cleanup,
    o: &Options,
    events: &[Event],
) -> anyhow::Result<Vec<IngressRun>> {
    let mut runs = Vec::new();
    for &connections in &o.connections[1..] {
        let run_prefix = format!("{}_c{connections}", ctx.site.prefix);
        println!(
            "[4/7] ingress: {} events over {connections} connections",
            o.events
        );
        let run = ingress_phase(ctx, cleanup, &run_prefix, events, connections, 1).await?;
        cleanup
            .delete_topology_now(&site::topology(&run_prefix)?)
            .await;
        runs.push(run);
    }
    Ok(runs)
}

/// The worker started for the drain; it keeps running through the live phase.
struct Worker {
    /// The connection that counts the messages in its queues.
    broker: Broker,
    process: Started,
}

impl Worker {
    /// Starts a worker (with `extra_env`) on a free port, with a broker connection to watch
    /// its queues; does not wait for it.
    async fn spawn(
        ctx: &Ctx<'_>,
        cleanup: &mut Cleanup,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let broker = Broker::connect(ctx.amqp_node()).await?;
        // The events have no calendar accounts; never call Clerk from a benchmark.
        let worker = (ctx.site.worker())
            .envs(extra_env)
            .unset(&["CLERK_SECRET_KEY", "TOKEN_ENCRYPTION_KEY"]);
        let process = ctx.services.spawn(cleanup, worker)?;
        Ok(Self { broker, process })
    }

    /// Starts a worker (with `extra_env`) and waits until it consumes.
    async fn start(
        ctx: &Ctx<'_>,
        cleanup: &mut Cleanup,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let worker = Self::spawn(ctx, cleanup, extra_env).await?;
        worker.process.wait_ready(cleanup).await?;
        Ok(worker)
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.process.addr
    }

    /// What it has applied so far: the rows of `processed_events` and its settled count.
    async fn applied(&self, ctx: &Ctx<'_>) -> anyhow::Result<(u64, u64)> {
        let processed = pipeline::processed(&ctx.site.db).await?;
        let settled = pipeline::settled(self.addr())
            .await
            .context("the worker's /metrics does not answer")?;
        Ok((processed, settled))
    }

    /// Waits until it has applied `events` more events than `before` (see [`Self::applied`]).
    async fn wait_applied(
        &self,
        ctx: &Ctx<'_>,
        cleanup: &mut Cleanup,
        before: (u64, u64),
        events: u64,
    ) -> anyhow::Result<pipeline::Drain> {
        let (db, main, timeout) = (&ctx.site.db, &ctx.site.main, drain_timeout(events));
        pipeline::wait_applied(
            db,
            cleanup,
            &self.broker,
            main,
            self.addr(),
            before,
            events,
            timeout,
        )
        .await
    }

    /// Its peak RSS, then stops it and closes the broker connection.
    async fn stop(self, cleanup: &mut Cleanup) -> anyhow::Result<u64> {
        let peak_rss = host::peak_rss(self.process.pid)?;
        cleanup.stop(&self.process.name).await?;
        self.broker.close().await;
        Ok(peak_rss)
    }
}

/// Phase 5's figures and checks.
struct Drained {
    drain: pipeline::Drain,
    peak_rss_after_drain: u64,
    checks: Vec<Check>,
}

/// Phase 5: starts the worker on the queue the first round filled, times it until it has
/// applied the `queued` events, then checks the queues and the users.
async fn worker_drain(
    ctx: &Ctx<'_>,
    cleanup: &mut Cleanup,
    expected: &[events::Expected],
    queued: u64,
    extra_env: &[(&str, &str)],
) -> anyhow::Result<(Worker, Drained)> {
    let worker = Worker::spawn(ctx, cleanup, extra_env).await?;
    let drain = worker.wait_applied(ctx, cleanup, (0, 0), queued).await?;
    println!("      {:.0} events/s", drain.per_s());
    let checks = ctx
        .check_settled(&worker.broker, expected, "after the drain")
        .await?;
    let peak_rss_after_drain = host::peak_rss(worker.process.pid)?;
    Ok((
        worker,
        Drained {
            drain,
            peak_rss_after_drain,
            checks,
        },
    ))
}

/// The broker's end-to-end ceiling, [`E2E_RUNS`] times: `count` messages of `size` bytes
/// published with confirms and consumed at once (on a thread of its own).
async fn end_to_end_ceiling(
    ctx: &Ctx<'_>,
    cleanup: &mut Cleanup,
    count: usize,
    size: usize,
) -> anyhow::Result<Vec<f64>> {
    let queue = format!("{}.e2e", ctx.site.prefix);
    cleanup.track_queue(&queue);
    let mut runs = Vec::new();
    for round in 1..=E2E_RUNS {
        let (node, queue) = (ctx.amqp_node().to_owned(), queue.clone());
        let run = load::on_own_thread(move || async move {
            ceilings::broker_end_to_end(&node, &queue, count, size).await
        })
        .await?;
        println!(
            "      broker end to end, round {round}: {:.0} msgs/s",
            run.per_s()
        );
        runs.push(run.per_s());
    }
    Ok(runs)
}

/// Phase 6: with the worker running, an ingress again and `count` newer updates of `expected`
/// at [`LIVE_CONNECTIONS`]; the lag is the change of the worker's histogram. Checks the
/// queues and the users again.
async fn live_phase(
    ctx: &Ctx<'_>,
    cleanup: &mut Cleanup,
    worker: &Worker,
    expected: &mut [events::Expected],
    count: usize,
) -> anyhow::Result<(Live, Vec<Check>)> {
    println!(
        "[6/7] live lag: {count} newer updates at {LIVE_CONNECTIONS} connections, worker running"
    );
    worker.process.wait_ready(cleanup).await?;
    let before = pipeline::Histogram::parse(&pipeline::scrape(worker.addr()).await?, LAG_HISTOGRAM);
    let live_events = events::newer_updates(expected, count)?;
    let applied_before = worker.applied(ctx).await?;
    let servers_before = host::ServerCpu::now();
    let worker_before = host::cpu_time(&worker.process.pid.to_string())?;
    let mut ingress = ctx
        .ingress_run(
            cleanup,
            "ingress-live",
            &ctx.site.prefix,
            &live_events,
            LIVE_CONNECTIONS,
            1,
        )
        .await?;
    ingress.live = true;
    let mut checks = vec![answered_check(&ingress)];
    let drain = (worker)
        .wait_applied(ctx, cleanup, applied_before, ingress.load.accepted)
        .await?;
    let servers = host::ServerCpu::now().since(servers_before);
    let cpu = report::LiveCpu {
        ingress: ingress.cpu,
        load_generator: ingress.load_generator_cpu,
        worker: host::cpu_time(&worker.process.pid.to_string())?.saturating_sub(worker_before),
        rabbitmq: servers.rabbitmq,
        postgres: servers.postgres,
    };
    let applied_per_s =
        load::per_second(ingress.load.accepted, ingress.load.wall + drain.since_start);
    // The histogram is observed right after each commit.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lag = pipeline::Histogram::parse(&pipeline::scrape(worker.addr()).await?, LAG_HISTOGRAM)
        .since(&before);
    let show = |le: Option<f64>| le.map_or("-".into(), |le| format!("≤ {le} s"));
    println!(
        "      {:.0} accepted/s, worker {:.0} events/s; lag p50 {}, p99 {} (bucket bounds)",
        ingress.load.accepted_per_s(),
        applied_per_s,
        show(lag.quantile_bound(0.5)),
        show(lag.quantile_bound(0.99))
    );
    checks.extend(
        ctx.check_settled(&worker.broker, expected, "after the live phase")
            .await?,
    );
    Ok((
        Live {
            ingress,
            drain,
            applied_per_s,
            lag,
            cpu,
            e2e_runs: Vec::new(),
        },
        checks,
    ))
}

/// The run's settings, as the report records them.
fn settings(
    o: &Options,
    workspace: &Path,
    prefix: String,
    body_size: usize,
    live_count: usize,
    batch_rows: usize,
) -> Settings {
    Settings {
        events: o.events,
        users: o.users,
        deleted_users: events::deleted_count(o.users),
        connections: o.connections.clone(),
        stamp: Stamp::now(workspace, o.profile, o.smoke),
        load_generator_build: if cfg!(debug_assertions) {
            "dev"
        } else {
            "release"
        },
        queue_prefix: prefix,
        body_bytes_avg: body_size,
        live_events: live_count,
        live_connections: LIVE_CONNECTIONS,
        db_batch_rows: batch_rows,
        worker_env: report::recorded_env(
            &[
                ("WORKER_PREFETCH", "512"),
                ("WORKER_CONCURRENCY", "3"),
                ("WORKER_BATCH_SIZE", "128"),
                ("DATABASE_MAX_CONNECTIONS", "10"),
                ("MAX_ATTEMPTS", "10"),
                ("IN_PROCESS_RETRIES", "3"),
                ("RETRY_DELAYS", "5s,30s,5m"),
                ("RUST_LOG", "info"),
            ],
            "WORKER_",
            "WORKER_ADDR",
        ),
        ingress_env: report::recorded_env(
            &[
                ("PUBLISH_CHANNELS", "2"),
                ("PUBLISH_TIMEOUT", "5s"),
                ("INGRESS_MAX_CONNECTIONS", "1024"),
                ("RUST_LOG", "info"),
            ],
            "INGRESS_",
            "INGRESS_ADDR",
        ),
    }
}

/// The database's ceilings: the worker's upsert one row per transaction, then many.
async fn database_ceilings(
    db: &sea_orm::DatabaseConnection,
    o: &Options,
) -> anyhow::Result<(ceilings::Ceiling, ceilings::Ceiling, usize)> {
    let db_single = ceilings::db_single(db, o.events, o.users).await?;
    ceilings::truncate(db).await?;
    println!(
        "      1 row per transaction: {:.0} rows/s",
        db_single.per_s()
    );
    let (db_batched, batch_rows) = ceilings::db_batched(db, o.events, o.users).await?;
    ceilings::truncate(db).await?;
    println!(
        "      {batch_rows} rows per transaction: {:.0} rows/s",
        db_batched.per_s()
    );
    Ok((db_single, db_batched, batch_rows))
}

/// One ingress run on `prefix` (tracked for clean-up), printed.
async fn ingress_phase(
    ctx: &Ctx<'_>,
    cleanup: &mut Cleanup,
    prefix: &str,
    events: &[Event],
    connections: usize,
    round: usize,
) -> anyhow::Result<IngressRun> {
    cleanup.track_topology(&site::topology(prefix)?);
    let name = format!("ingress-c{connections}-r{round}");
    let run = ctx
        .ingress_run(cleanup, &name, prefix, events, connections, round)
        .await?;
    println!(
        "      round {round}: ingress {:.0} accepted/s at {connections} connections, p50 {:.1} ms, \
         p99 {:.1} ms, {} errors; CPU per request {:.0} µs (ingress), {:.0} µs (load generator)",
        run.load.accepted_per_s(),
        run.load.latency.p50.as_secs_f64() * 1000.0,
        run.load.latency.p99.as_secs_f64() * 1000.0,
        run.load.errors(),
        run.cpu_us_per_request(run.cpu),
        run.cpu_us_per_request(run.load_generator_cpu),
    );
    Ok(run)
}

fn answered_check(run: &IngressRun) -> Check {
    let l = &run.load;
    let what = if run.live {
        "live phase".to_owned()
    } else {
        format!("round {}", run.round)
    };
    Check::new(
        format!(
            "every request answered 200 ({} connections, {what})",
            l.connections
        ),
        l.all_accepted(),
        format!(
            "{} of {} accepted, {} errors",
            l.accepted,
            l.events,
            l.errors()
        ),
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn resolve(args: &[&str]) -> anyhow::Result<Options> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))?;
        Options::resolve(cli.bench, Path::new("."))
    }

    #[test]
    fn read_runs_last_at_least_a_second_and_at_most_the_tokens_lifetime_less_ten_seconds() {
        let options = resolve(&["--read-seconds", "50"]).expect("50 s is allowed");
        let scale = options.scale.expect("scale phases by default");
        assert_eq!(scale.read_duration, Duration::from_secs(50));
        let Err(too_long) = resolve(&["--read-seconds", "51"]) else {
            panic!("51 s is refused");
        };
        assert!(
            format!("{too_long:#}").contains("--read-seconds must be at most 50"),
            "{too_long:#}"
        );
        assert!(resolve(&["--read-seconds", "0"]).is_err());
        // Without the scale phases the bound does not apply.
        assert!(resolve(&["--no-scale", "--read-seconds", "51"]).is_ok());
    }

    #[test]
    fn reads_only_seeds_two_hundred_thousand_users_unless_told_and_is_no_smoke_run() {
        let options = resolve(&["--reads-only"]).expect("a read-phase run");
        assert!(options.reads_only);
        let scale = options.scale.expect("the read path's sizes");
        assert_eq!(scale.users, 200_000);
        assert_eq!(scale.read_connections, 64);
        let options = resolve(&["--reads-only", "--scale-users", "5000"]).expect("sized");
        assert_eq!(options.scale.map(|s| s.users), Some(5000));
        assert!(resolve(&["--reads-only", "--smoke"]).is_err());
        assert!(resolve(&["--reads-only", "--no-scale"]).is_err());
    }
}
