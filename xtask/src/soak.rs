//! `cargo xtask soak`: an hour (by default) of steady load on the whole pipeline, to show that
//! nothing grows: the memory of ingress, worker and api, the queue, `processed_events`.
//!
//! 0. Builds ingress, worker and api (`--profile`, release by default; a debug build of this
//!    task re-runs itself in release, as the bench does). Creates the database
//!    `clerk_sync_soak_<pid>` (migrated) and uses the queue prefix of the same name; a guard
//!    stops the processes, drops the database and deletes the queues and exchange on success,
//!    error, panic and Ctrl-C.
//! 1. Starts the worker (`PROCESSED_EVENTS_RETENTION` short: 5 min, 10 s with `--smoke`, so that
//!    pruning runs many times), the ingress and the api (a `read:` service key).
//! 2. Streams `--rate` × `--duration` signed events at `--rate` per second, paced (open loop,
//!    [`crate::bench::paced`]): the bench's events (a `user.created` per user, 5 % of the users
//!    then deleted, then `user.updated`s round after round over the others, versions increasing),
//!    built and signed a round of users at a time, never all in memory; only each user's expected
//!    final state is kept. At the same time a read load (`--reads` per second, paced) asks the
//!    api for `GET /users/by-clerk-id/{id}` with the service key, so the api's memory means
//!    something.
//! 3. Every 10 s: RSS (`VmRSS`) of the three processes, ready messages in the main, retry and
//!    dead-letter queues, `count(*)` of `processed_events` (exact, and cheap at the few hundred
//!    thousand rows the retention allows), the load's running totals.
//! 4. Waits until the worker has settled every accepted event and the main queue is empty, then
//!    checks: every event answered 200, reads answered 200 or 404 only, the worker settled them
//!    all, `users` equals the expected final state, no dead letter, empty queues, no `ERROR`
//!    line in the logs, `processed_events` never above rate × (retention + prune interval) with
//!    20 % and 5 s of margin, the main queue never above 5 s of events.
//! 5. Memory is a target, not a check (as the bench's speed): the mean RSS of the last 10 minutes
//!    of load within 10 % of the mean of minutes 10–20, judged for runs of 30 minutes or more.
//!    Prints a markdown report (a timeline row per minute) and writes JSON; exits non-zero when a
//!    check fails.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use serde::Serialize;
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    bench::{
        events::{self, Event, Expected, Signed},
        load,
        paced::{self, HttpRequest, Pace, Paced, Progress},
        pipeline,
    },
    harness::{
        self, Outputs, Pipeline,
        build::Profile,
        guard::Cleanup,
        host,
        report::{Check, CheckWords, Machine, Stamp, TaskReport, checks_table, mib, table},
        servers::Broker,
        services::{Service, Services, Started},
        site::{self, Site},
    },
};

/// How often the processes, queues and table are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Connections of the event load: room for answers up to 64 ms late at 1,000/s before the
/// schedule slips.
const EVENT_CONNECTIONS: usize = 64;
/// Connections of the read load.
const READ_CONNECTIONS: usize = 8;
/// The main queue may hold this many seconds of events at most.
const QUEUE_BOUND_SECONDS: f64 = 5.0;
/// Memory is judged from runs this long.
const FLATNESS_MIN_RUN: Duration = Duration::from_secs(30 * 60);
/// A round of users is signed at once: it must be sent well within the five minutes the
/// ingress accepts a signature for.
const MAX_ROUND: Duration = Duration::from_secs(120);

/// `cargo xtask soak` options.
#[derive(clap::Args, Debug)]
pub struct SoakArgs {
    /// How long to send events, e.g. `1h`, `10m`, `45s` [default: 1h; 45s with --smoke].
    #[arg(long)]
    duration: Option<String>,
    /// Events per second [default: 1000; 200 with --smoke].
    #[arg(long)]
    rate: Option<f64>,
    /// Users the events are spread over [default: 5000; 500 with --smoke].
    #[arg(long)]
    users: Option<usize>,
    /// Reads per second on the api [default: 100; 20 with --smoke].
    #[arg(long)]
    reads: Option<f64>,
    /// The worker's PROCESSED_EVENTS_RETENTION [default: 5m; 10s with --smoke].
    #[arg(long)]
    retention: Option<String>,
    /// Build profile of ingress, worker and api [default: release; dev with --smoke].
    #[arg(long, value_enum)]
    profile: Option<Profile>,
    /// Where to write the JSON results (relative paths from the workspace root).
    #[arg(long, default_value = "target/soak/results.json")]
    json: PathBuf,
    /// Also write the report as markdown here (relative paths from the workspace root).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// A short run for CI (45 s at 200/s, 500 users, dev profile): fails only on a correctness
    /// check.
    #[arg(long)]
    smoke: bool,
}

/// The options with the defaults applied.
struct Options {
    duration: Duration,
    rate: f64,
    users: usize,
    reads: f64,
    retention: Duration,
    profile: Profile,
    outputs: Outputs,
    smoke: bool,
    /// Events to send: rate × duration.
    events: u64,
}

impl Options {
    fn resolve(args: SoakArgs, workspace: &Path) -> anyhow::Result<Self> {
        let smoke = args.smoke;
        let duration = parse_duration(
            "--duration",
            args.duration
                .as_deref()
                .unwrap_or(if smoke { "45s" } else { "1h" }),
        )?;
        let retention = parse_duration(
            "--retention",
            args.retention
                .as_deref()
                .unwrap_or(if smoke { "10s" } else { "5m" }),
        )?;
        let rate = args.rate.unwrap_or(if smoke { 200.0 } else { 1000.0 });
        let reads = args.reads.unwrap_or(if smoke { 20.0 } else { 100.0 });
        let users = args.users.unwrap_or(if smoke { 500 } else { 5000 });
        if !(rate.is_finite() && rate >= 1.0) {
            bail!("--rate must be at least 1 event per second");
        }
        if !(reads.is_finite() && reads > 0.0) {
            bail!("--reads must be above 0");
        }
        let events = (rate * duration.as_secs_f64()).round() as u64;
        events::validate(usize::try_from(events).unwrap_or(usize::MAX), users)
            .context("--rate × --duration events are too few")?;
        let round = Duration::from_secs_f64(users as f64 / rate);
        if round > MAX_ROUND {
            bail!(
                "--users {users} at --rate {rate} makes rounds of {round:?}: a round is signed at \
                 once and must be sent within {MAX_ROUND:?}; use fewer users or a higher rate"
            );
        }
        Ok(Self {
            duration,
            rate,
            users,
            reads,
            retention,
            profile: Profile::or_default(args.profile, smoke),
            outputs: Outputs::resolve(workspace, args.json, args.markdown),
            smoke,
            events,
        })
    }

    /// The worker's pruning interval for this retention (as `worker::consume::prune::interval`).
    fn prune_interval(&self) -> Duration {
        worker::consume::prune::interval(self.retention)
    }

    /// The most rows `processed_events` may hold: a retention and a pruning interval of events,
    /// 20 % more, and 5 s of events for a pruning round's own time.
    fn processed_bound(&self) -> u64 {
        let window = (self.retention + self.prune_interval()).as_secs_f64() * 1.2 + 5.0;
        (self.rate * window).ceil() as u64
    }

    /// The most ready messages the main queue may hold.
    fn queue_bound(&self) -> u64 {
        (self.rate * QUEUE_BOUND_SECONDS).ceil().max(500.0) as u64
    }
}

fn parse_duration(flag: &str, value: &str) -> anyhow::Result<Duration> {
    match settings::parse_duration(value) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => bail!("{flag} {value:?} is not a duration such as 45s, 10m or 1h"),
    }
}

/// Runs the soak.
pub async fn run(args: SoakArgs) -> anyhow::Result<()> {
    let workspace = harness::workspace_root()?;
    let o = Options::resolve(args, &workspace)?;
    let task = ("soak", "[0/4]");
    harness::pipeline(
        task,
        &workspace,
        o.profile,
        &o.outputs,
        async |p, cleanup| soak(&o, &workspace, p, cleanup).await,
    )
    .await
}

/// The three processes.
struct Processes {
    ingress: Started,
    worker: Started,
    api: Started,
}

/// What the run needs while it loads and samples.
struct Running<'a> {
    o: &'a Options,
    site: Site,
    broker: Broker,
    processes: Processes,
    started: Instant,
    samples: Vec<Sample>,
}

/// What the load and the drain measured.
struct Measured {
    events: Paced,
    reads: Paced,
    drain: Duration,
}

async fn soak(
    o: &Options,
    workspace: &Path,
    p: Pipeline<'_>,
    cleanup: &mut Cleanup,
) -> anyhow::Result<Report> {
    let secret = events::random_secret();
    let service_key = format!("soak-{}", uuid::Uuid::new_v4().simple());
    let processes = start(o, p.services, &p.site, cleanup, (&secret, &service_key)).await?;
    let broker = Broker::connect(&p.servers.amqp_node).await?;
    let prefix = p.site.prefix.clone();
    let mut running = Running {
        o,
        site: p.site,
        broker,
        processes,
        started: Instant::now(),
        samples: Vec::new(),
    };
    let outcome = running.load_and_check(cleanup, &secret, &service_key).await;
    running.broker.close().await;
    let (measured, mut checks) = outcome?;
    let machine = harness::report::machine(&running.site.db).await;
    running.site.close().await;
    // Logs are read once the processes have stopped.
    for name in ["ingress", "worker", "api"] {
        cleanup.stop(name).await?;
    }
    checks.push(log_check(p.services.log_dir())?);
    let settings = Settings::of(o, Stamp::now(workspace, o.profile, o.smoke), prefix);
    let load_end = measured.events.load.wall.as_secs_f64();
    Ok(Report {
        settings,
        machine,
        events: LoadSummary::of(&measured.events),
        reads: LoadSummary::of(&measured.reads),
        drain_s: measured.drain.as_secs_f64(),
        memory: flatness(&running.samples, load_end, o.duration),
        samples: running.samples,
        checks,
    })
}

/// Nothing here may call Clerk, and nothing but the soak's load may run in the background.
const UNSET: [&str; 5] = [
    "CLERK_SECRET_KEY",
    "TOKEN_ENCRYPTION_KEY",
    "CLERK_JWT_KEY",
    "RECONCILE_INTERVAL",
    "CONSOLE_USERS",
];

/// Phase 1: the worker (short retention), the ingress (events signed with `secret`) and the
/// api (a `read:` key `service_key`), one after the other, each ready.
async fn start(
    o: &Options,
    services: &Services,
    site: &Site,
    cleanup: &mut Cleanup,
    (secret, service_key): (&str, &str),
) -> anyhow::Result<Processes> {
    println!(
        "[1/4] starting worker (PROCESSED_EVENTS_RETENTION={}s, pruning every {}s), ingress, api",
        o.retention.as_secs_f64(),
        o.prune_interval().as_secs_f64()
    );
    let retention = format!("{}ms", o.retention.as_millis());
    let worker = site.worker().env("PROCESSED_EVENTS_RETENTION", retention);
    let ingress = site.ingress("ingress", &site.prefix, secret);
    let api = (site.api())
        .env("API_SERVICE_KEYS", format!("read:{service_key}"))
        .env("API_LAZY_SYNC", "false");
    let mut start = async |service: Service| {
        let service = service.env("LOG_FORMAT", "plain").unset(&UNSET);
        services.start(cleanup, service).await
    };
    // One after the other, in this order.
    Ok(Processes {
        worker: start(worker).await?,
        ingress: start(ingress).await?,
        api: start(api).await?,
    })
}

/// The two paced loads, running.
struct Loads {
    events: JoinHandle<anyhow::Result<(Paced, EventStream)>>,
    reads: JoinHandle<anyhow::Result<Paced>>,
    /// Dropping it (the end of the load, an error, Ctrl-C) stops them.
    stop: watch::Sender<()>,
    progress: (Arc<Progress>, Arc<Progress>),
}

impl Loads {
    /// Streams `o.events` events (signed with `secret`) to the ingress at `o.rate` and reads
    /// the users from the api at `o.reads` (with `service_key`), both paced.
    fn start(
        o: &Options,
        (ingress, api): (SocketAddr, SocketAddr),
        secret: &str,
        service_key: &str,
    ) -> anyhow::Result<Self> {
        let deleted = events::deleted_count(o.users);
        let plan = events::plan(o.users + deleted, o.users)?;
        let ids: Arc<Vec<String>> =
            Arc::new(plan.users.iter().map(|u| u.clerk_user_id.clone()).collect());
        let stream = EventStream {
            expected: plan.users,
            initial: plan.events.into_iter(),
            secret: secret.to_owned(),
            to_generate: o.events,
            signed: Vec::new().into_iter(),
        };
        println!(
            "[2/4] {} events at {}/s over {} users ({deleted} deleted), {} reads/s, for {:?}; a \
             sample every {SAMPLE_EVERY:?}",
            o.events, o.rate, o.users, o.reads, o.duration
        );
        let (stop, stop_rx) = watch::channel(());
        let stopped = |mut rx: watch::Receiver<()>| async move {
            let _ = rx.changed().await;
        };
        let mut event_pace = Pace::new(o.rate, EVENT_CONNECTIONS);
        event_pace.limit = Some(o.events);
        let read_pace = Pace::new(o.reads, READ_CONNECTIONS);
        let progress = (
            Arc::clone(&event_pace.progress),
            Arc::clone(&read_pace.progress),
        );
        let events = tokio::spawn(paced::run(
            ingress,
            event_pace,
            stream,
            stopped(stop_rx.clone()),
        ));
        let requests = reads(ids, service_key);
        let reads = tokio::spawn(async move {
            Ok(paced::run(api, read_pace, requests, stopped(stop_rx))
                .await?
                .0)
        });
        Ok(Self {
            events,
            reads,
            stop,
            progress,
        })
    }
}

impl Running<'_> {
    /// Phases 2–4: the load with sampling, the drain, the checks.
    async fn load_and_check(
        &mut self,
        cleanup: &mut Cleanup,
        secret: &str,
        service_key: &str,
    ) -> anyhow::Result<(Measured, Vec<Check>)> {
        let worker = self.processes.worker.addr;
        let settled_before = pipeline::settled(worker)
            .await
            .context("the worker's /metrics does not answer")?;
        let addrs = (self.processes.ingress.addr, self.processes.api.addr);
        let loads = Loads::start(self.o, addrs, secret, service_key)?;
        self.started = Instant::now();
        let progress = loads.progress.clone();
        let progress = (&*progress.0, &*progress.1);
        let (events, stream, reads) = self.load(cleanup, loads, progress).await?;
        let accepted = events.load.accepted;
        let drain = self
            .drain(cleanup, (accepted, settled_before), progress)
            .await?;
        println!("[4/4] checks");
        let settled = pipeline::settled(worker)
            .await
            .unwrap_or(settled_before)
            .saturating_sub(settled_before);
        let mut checks = vec![
            self.answered_check(&events),
            read_check(&reads),
            Check::new(
                "the worker settled every accepted event",
                settled >= accepted,
                format!("{settled} settled (applied, skipped or duplicate) of {accepted}"),
            ),
        ];
        checks.extend(site::check_queues(&self.broker, &self.site.main, "at the end").await?);
        checks.push(pipeline::check_users(&self.site.db, &stream.expected, "at the end").await?);
        checks.extend(self.bound_checks());
        let measured = Measured {
            events,
            reads,
            drain,
        };
        Ok((measured, checks))
    }

    /// Phase 2: the loads, sampled every [`SAMPLE_EVERY`] until the events are sent; then
    /// the reads stop. The event load's figures and stream, the read load's figures.
    async fn load(
        &mut self,
        cleanup: &mut Cleanup,
        loads: Loads,
        progress: (&Progress, &Progress),
    ) -> anyhow::Result<(Paced, EventStream, Paced)> {
        let mut event_load = loads.events;
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (events, stream) = loop {
            tokio::select! {
                done = &mut event_load => break done.context("the event load panicked")??,
                _ = tick.tick() => self.sample(cleanup, progress, Phase::Load).await?,
            }
        };
        drop(loads.stop);
        let reads = loads.reads.await.context("the read load panicked")??;
        // The load's last sample, unless a tick just took it.
        if self
            .samples
            .last()
            .is_none_or(|s| self.started.elapsed().as_secs_f64() - s.t_s >= 1.0)
        {
            self.sample(cleanup, progress, Phase::Load).await?;
        }
        println!(
            "      sent {} events in {:.0} s ({:.0}/s), {} accepted, {} errors; at most {:.0} ms \
             behind the schedule",
            events.load.events,
            events.load.wall.as_secs_f64(),
            paced_rate(&events),
            events.load.accepted,
            events.load.errors(),
            events.max_behind.as_secs_f64() * 1000.0
        );
        Ok((events, stream, reads))
    }

    /// Phase 3: waits until the worker has settled the `accepted` events (its settled count
    /// was `settled_before` before the load) and the main queue is empty, sampling meanwhile.
    async fn drain(
        &mut self,
        cleanup: &mut Cleanup,
        (accepted, settled_before): (u64, u64),
        progress: (&Progress, &Progress),
    ) -> anyhow::Result<Duration> {
        println!("[3/4] waiting for the worker to settle every accepted event");
        let drain_started = Instant::now();
        let timeout = Duration::from_secs(120 + accepted / 200);
        let mut last_sample = Instant::now();
        loop {
            let settled = pipeline::settled(self.processes.worker.addr)
                .await
                .unwrap_or(settled_before)
                .saturating_sub(settled_before);
            let ready = self.broker.ready(&self.site.main.main_queue()).await?;
            if settled >= accepted && ready == 0 {
                break;
            }
            if drain_started.elapsed() > timeout {
                bail!(
                    "the worker settled {settled} of {accepted} events within {timeout:?} \
                     ({ready} still queued); see target/soak/worker.log"
                );
            }
            cleanup.check_running("worker")?;
            if last_sample.elapsed() >= SAMPLE_EVERY {
                last_sample = Instant::now();
                self.sample(cleanup, progress, Phase::Drain).await?;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let drain = drain_started.elapsed();
        // Acks follow commits; give the last ones a moment before looking at the queues.
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.sample(cleanup, progress, Phase::Drain).await?;
        Ok(drain)
    }

    fn answered_check(&self, events: &Paced) -> Check {
        let o = self.o;
        Check::new(
            "every event answered 200",
            events.load.all_accepted() && events.load.events as u64 == o.events,
            format!(
                "{} of {} sent, {} accepted, {} errors{}",
                events.load.events,
                o.events,
                events.load.accepted,
                events.load.errors(),
                first_error(events)
            ),
        )
    }

    /// Nothing dead-lettered, `processed_events` and the main queue within their bounds, in
    /// every sample.
    fn bound_checks(&self) -> [Check; 3] {
        let o = self.o;
        let max = |get: fn(&Sample) -> u64| self.samples.iter().map(get).max().unwrap_or(0);
        let max_dead = max(|s| s.dead_queue);
        let max_processed = max(|s| s.processed_events);
        let max_queue = max(|s| s.main_queue);
        [
            Check::new(
                "nothing dead-lettered (every sample)",
                max_dead == 0,
                format!(
                    "at most {max_dead} messages in {}",
                    self.site.main.dead_queue()
                ),
            ),
            Check::new(
                "processed_events bounded by the retention",
                max_processed <= o.processed_bound(),
                format!(
                    "at most {max_processed} rows; bound {} = {}/s × ((retention {:.0} s + \
                     pruning interval {:.0} s) × 1.2 + 5 s)",
                    o.processed_bound(),
                    o.rate,
                    o.retention.as_secs_f64(),
                    o.prune_interval().as_secs_f64()
                ),
            ),
            Check::new(
                "main queue depth bounded",
                max_queue <= o.queue_bound(),
                format!(
                    "at most {max_queue} ready messages; bound {} ({QUEUE_BOUND_SECONDS} s of \
                     events, at least 500)",
                    o.queue_bound()
                ),
            ),
        ]
    }
}

/// The event stream: the plan's creations and deletions first, then rounds of `user.updated`
/// over the live users, each round built and signed when the previous one is sent. `expected`
/// always holds the state every event generated so far leads to; exactly `to_generate` more
/// events are generated.
struct EventStream {
    expected: Vec<Expected>,
    initial: std::vec::IntoIter<Event>,
    secret: String,
    to_generate: u64,
    signed: std::vec::IntoIter<Signed>,
}

impl EventStream {
    fn refill(&mut self) -> anyhow::Result<()> {
        let live = self.expected.iter().filter(|u| u.state.is_some()).count();
        let n = usize::try_from(self.to_generate)
            .unwrap_or(usize::MAX)
            .min(live.max(1));
        let mut batch: Vec<Event> = self.initial.by_ref().take(n).collect();
        if batch.len() < n {
            batch.extend(events::newer_updates(&mut self.expected, n - batch.len())?);
        }
        self.to_generate -= batch.len() as u64;
        self.signed = events::sign(&batch, &self.secret)?.into_iter();
        Ok(())
    }
}

impl Iterator for EventStream {
    type Item = anyhow::Result<HttpRequest>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.signed.len() == 0 {
            if self.to_generate == 0 {
                return None;
            }
            if let Err(error) = self.refill() {
                self.to_generate = 0;
                return Some(Err(error));
            }
        }
        self.signed.next().map(|event| paced::webhook(&event))
    }
}

/// Endless reads of the users, one after the other.
fn reads(
    ids: Arc<Vec<String>>,
    service_key: &str,
) -> impl Iterator<Item = anyhow::Result<HttpRequest>> + Send + 'static {
    let authorization = format!("Bearer {service_key}");
    (0..usize::MAX).map(move |k| {
        let id = &ids[k % ids.len()];
        Request::get(format!("/users/by-clerk-id/{id}"))
            .header("authorization", authorization.as_str())
            .body(Full::new(Bytes::new()))
            .context("cannot build a read request")
    })
}

fn paced_rate(run: &Paced) -> f64 {
    load::per_second(run.load.events as u64, run.load.wall)
}

fn first_error(run: &Paced) -> String {
    run.load
        .first_error
        .as_ref()
        .map(|e| format!(" (first: {e})"))
        .unwrap_or_default()
}

/// Reads may find a user not created yet or deleted (404); anything else is an error.
fn read_check(run: &Paced) -> Check {
    let l = &run.load;
    let others: u64 = l
        .statuses
        .iter()
        .filter(|(status, _)| **status != 404)
        .map(|(_, n)| n)
        .sum();
    let not_found = l.statuses.get(&404).copied().unwrap_or(0);
    Check::new(
        "every read answered 200 or 404",
        others == 0 && l.transport_errors == 0 && l.events > 0,
        format!(
            "{} reads: {} found, {not_found} not found, {others} other statuses {:?}, {} \
             transport errors{}",
            l.events,
            l.accepted,
            l.statuses,
            l.transport_errors,
            first_error(run)
        ),
    )
}

/// No process logged an `ERROR` line.
fn log_check(log_dir: &Path) -> anyhow::Result<Check> {
    let mut found = Vec::new();
    for name in ["ingress", "worker", "api"] {
        let path = log_dir.join(format!("{name}.log"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let errors: Vec<&str> = text.lines().filter(|l| l.contains(" ERROR ")).collect();
        if let Some(first) = errors.first() {
            found.push(format!("{name}: {} (first: {first})", errors.len()));
        }
    }
    Ok(Check::new(
        "no ERROR line in the logs of ingress, worker, api",
        found.is_empty(),
        if found.is_empty() {
            "none (target/soak/*.log)".to_owned()
        } else {
            found.join("; ")
        },
    ))
}

/// When a sample was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Phase {
    Load,
    Drain,
}

/// One sample.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    /// Seconds since the load started.
    t_s: f64,
    phase: Phase,
    rss_ingress: u64,
    rss_worker: u64,
    rss_api: u64,
    main_queue: u64,
    /// Ready messages in every retry queue.
    retry_queues: u64,
    dead_queue: u64,
    processed_events: u64,
    events_sent: u64,
    events_accepted: u64,
    events_failed: u64,
    reads_sent: u64,
    reads_failed: u64,
}

impl Running<'_> {
    async fn sample(
        &mut self,
        cleanup: &mut Cleanup,
        (events, reads): (&Progress, &Progress),
        phase: Phase,
    ) -> anyhow::Result<()> {
        for name in ["ingress", "worker", "api"] {
            cleanup.check_running(name)?;
        }
        let mut retry_queues = 0;
        for delay in self.site.main.retry_delays() {
            retry_queues += self
                .broker
                .ready(&self.site.main.retry_queue(*delay))
                .await?;
        }
        let sample = Sample {
            t_s: self.started.elapsed().as_secs_f64(),
            phase,
            rss_ingress: rss(&self.processes.ingress)?,
            rss_worker: rss(&self.processes.worker)?,
            rss_api: rss(&self.processes.api)?,
            main_queue: self.broker.ready(&self.site.main.main_queue()).await?,
            retry_queues,
            dead_queue: self.broker.ready(&self.site.main.dead_queue()).await?,
            processed_events: pipeline::processed(&self.site.db).await?,
            events_sent: events.sent(),
            events_accepted: events.accepted(),
            events_failed: events.rejected() + events.errors(),
            reads_sent: reads.sent(),
            reads_failed: reads.errors(),
        };
        println!(
            "      {:>5.0} s  RSS ingress {}, worker {}, api {}  queue {} (retry {}, dead {})  \
             processed_events {}  events {} accepted, {} failed",
            sample.t_s,
            mib(sample.rss_ingress),
            mib(sample.rss_worker),
            mib(sample.rss_api),
            sample.main_queue,
            sample.retry_queues,
            sample.dead_queue,
            sample.processed_events,
            sample.events_accepted,
            sample.events_failed,
        );
        self.samples.push(sample);
        Ok(())
    }
}

/// Resident set size of `process` in bytes (`VmRSS` of `/proc/<pid>/status`).
fn rss(process: &Started) -> anyhow::Result<u64> {
    host::status_bytes(process.pid, "VmRSS")
}

/// One process's memory: the mean RSS of minutes 10–20 of the load against that of its last
/// 10 minutes.
#[derive(Debug, Clone, Serialize)]
struct Flatness {
    process: &'static str,
    first_bytes: u64,
    last_bytes: u64,
    max_bytes: u64,
    /// Mean RSS of minutes 10–20 (`None`: run too short).
    early_mean_bytes: Option<f64>,
    /// Mean RSS of the last 10 minutes of load.
    late_mean_bytes: Option<f64>,
    /// `late / early - 1`.
    change: Option<f64>,
    /// `None`: not judged (run shorter than 30 minutes).
    flat: Option<bool>,
}

/// Reads one process's RSS from a sample.
type Rss = fn(&Sample) -> u64;

fn flatness(samples: &[Sample], load_end_s: f64, duration: Duration) -> Vec<Flatness> {
    let load: Vec<&Sample> = samples.iter().filter(|s| s.phase == Phase::Load).collect();
    let judged = duration >= FLATNESS_MIN_RUN;
    let field: [(&'static str, Rss); 3] = [
        ("ingress", |s| s.rss_ingress),
        ("worker", |s| s.rss_worker),
        ("api", |s| s.rss_api),
    ];
    field
        .iter()
        .map(|(process, get)| {
            let mean = |from: f64, to: f64| {
                let values: Vec<f64> = load
                    .iter()
                    .filter(|s| s.t_s >= from && s.t_s <= to)
                    .map(|s| get(s) as f64)
                    .collect();
                (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
            };
            let (early, late) = if judged {
                (mean(600.0, 1200.0), mean(load_end_s - 600.0, load_end_s))
            } else {
                (None, None)
            };
            let change = early.zip(late).map(|(e, l)| l / e - 1.0);
            Flatness {
                process,
                first_bytes: load.first().map_or(0, |s| get(s)),
                last_bytes: load.last().map_or(0, |s| get(s)),
                max_bytes: load.iter().map(|s| get(s)).max().unwrap_or(0),
                early_mean_bytes: early,
                late_mean_bytes: late,
                change,
                flat: change.map(|c| c.abs() <= 0.10),
            }
        })
        .collect()
}

/// A paced load's figures, for the report.
#[derive(Debug, Clone, Serialize)]
struct LoadSummary {
    rate: f64,
    sent: usize,
    accepted: u64,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    first_error: Option<String>,
    wall_s: f64,
    sent_per_s: f64,
    max_behind_ms: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    latency_max_ms: f64,
}

impl LoadSummary {
    fn of(run: &Paced) -> Self {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let l = &run.load;
        Self {
            rate: run.rate,
            sent: l.events,
            accepted: l.accepted,
            statuses: l.statuses.clone(),
            transport_errors: l.transport_errors,
            first_error: l.first_error.clone(),
            wall_s: l.wall.as_secs_f64(),
            sent_per_s: paced_rate(run),
            max_behind_ms: ms(run.max_behind),
            latency_p50_ms: ms(l.latency.p50),
            latency_p99_ms: ms(l.latency.p99),
            latency_max_ms: ms(l.latency.max),
        }
    }
}

#[derive(Debug, Serialize)]
struct Settings {
    duration_s: f64,
    rate: f64,
    events: u64,
    users: usize,
    deleted_users: usize,
    reads_per_s: f64,
    retention_s: f64,
    prune_interval_s: f64,
    processed_bound: u64,
    queue_bound: u64,
    event_connections: usize,
    read_connections: usize,
    #[serde(flatten)]
    stamp: Stamp,
    queue_prefix: String,
}

impl Settings {
    fn of(o: &Options, stamp: Stamp, queue_prefix: String) -> Self {
        Self {
            duration_s: o.duration.as_secs_f64(),
            rate: o.rate,
            events: o.events,
            users: o.users,
            deleted_users: events::deleted_count(o.users),
            reads_per_s: o.reads,
            retention_s: o.retention.as_secs_f64(),
            prune_interval_s: o.prune_interval().as_secs_f64(),
            processed_bound: o.processed_bound(),
            queue_bound: o.queue_bound(),
            event_connections: EVENT_CONNECTIONS,
            read_connections: READ_CONNECTIONS,
            stamp,
            queue_prefix,
        }
    }
}

#[derive(Serialize)]
struct Report {
    settings: Settings,
    machine: Machine,
    events: LoadSummary,
    reads: LoadSummary,
    drain_s: f64,
    memory: Vec<Flatness>,
    samples: Vec<Sample>,
    checks: Vec<Check>,
}

impl TaskReport for Report {
    fn markdown(&self) -> String {
        let mut out = String::new();
        self.settings.stamp.title(&mut out, "soak");
        self.markdown_setup(&mut out);
        self.markdown_load(&mut out);
        self.markdown_timeline(&mut out);
        self.markdown_memory(&mut out);
        let _ = writeln!(out, "### Checks\n");
        checks_table(&mut out, &self.checks, &CHECK_WORDS);
        out
    }

    fn checks(&self) -> &[Check] {
        &self.checks
    }
}

/// The soak's checks table.
const CHECK_WORDS: CheckWords = CheckWords {
    columns: ["check", "result", "detail"],
    pass: "pass",
    fail: "FAIL",
};

impl LoadSummary {
    /// Its row of the load table.
    fn row(&self, name: &str) -> Vec<String> {
        vec![
            name.to_owned(),
            format!("{:.0}/s", self.rate),
            format!("{:.1}/s", self.sent_per_s),
            self.sent.to_string(),
            self.accepted.to_string(),
            format!("{:?}", self.statuses),
            self.transport_errors.to_string(),
            format!("{:.1} ms", self.latency_p50_ms),
            format!("{:.1} ms", self.latency_p99_ms),
            format!("{:.1} ms", self.latency_max_ms),
            format!("{:.0} ms", self.max_behind_ms),
        ]
    }
}

impl Report {
    /// The load, the service settings and the machine, in a sentence.
    fn markdown_setup(&self, out: &mut String) {
        let s = &self.settings;
        let m = &self.machine;
        let _ = writeln!(
            out,
            "{} events at {}/s for {:.0} s over {} users ({} deleted), {} connections; {} reads/s \
             (GET /users/by-clerk-id/…) over {} connections; PROCESSED_EVENTS_RETENTION {:.0} s, \
             pruning every {:.0} s. {} CPUs, {}, Postgres {}, RabbitMQ {}.\n",
            s.events,
            s.rate,
            s.duration_s,
            s.users,
            s.deleted_users,
            s.event_connections,
            s.reads_per_s,
            s.read_connections,
            s.retention_s,
            s.prune_interval_s,
            m.nproc,
            m.cpu_model,
            m.postgres,
            m.rabbitmq
        );
    }

    /// The two loads' figures, and the drain.
    fn markdown_load(&self, out: &mut String) {
        let _ = writeln!(out, "### Load\n");
        let rows = vec![self.events.row("events"), self.reads.row("reads")];
        table(
            out,
            &[
                "load",
                "target",
                "sent",
                "requests",
                "200",
                "other statuses",
                "transport errors",
                "p50",
                "p99",
                "max",
                "max behind schedule",
            ],
            &rows,
        );
        let _ = writeln!(
            out,
            "\nThe worker settled the last event {:.1} s after the load ended.\n",
            self.drain_s
        );
    }

    /// A row per minute (per sample for runs under 5 minutes): the last sample of the minute,
    /// and the rates since the previous row.
    fn markdown_timeline(&self, out: &mut String) {
        let per_minute = self.settings.duration_s >= 300.0;
        let _ = writeln!(
            out,
            "### Timeline ({})\n",
            if per_minute {
                "last sample of each minute"
            } else {
                "every sample"
            }
        );
        let mut rows = Vec::new();
        let mut previous: Option<&Sample> = None;
        for (i, sample) in self.samples.iter().enumerate() {
            let next = self.samples.get(i + 1);
            let last_of_row = !per_minute
                || next.is_none_or(|n| (n.t_s / 60.0).floor() != (sample.t_s / 60.0).floor());
            if !last_of_row {
                continue;
            }
            rows.push(sample.row(previous, per_minute));
            previous = Some(sample);
        }
        table(
            out,
            &[
                "t",
                "phase",
                "RSS ingress",
                "RSS worker",
                "RSS api",
                "queue",
                "retry",
                "dead",
                "processed_events",
                "accepted/s",
                "reads/s",
                "failed (total)",
            ],
            &rows,
        );
        out.push('\n');
    }

    fn markdown_memory(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "### Memory (target: mean RSS of the last 10 minutes within 10 % of minutes 10–20)\n"
        );
        let show = |b: Option<f64>| b.map_or("-".to_owned(), |b| mib(b as u64));
        let rows: Vec<Vec<String>> = self
            .memory
            .iter()
            .map(|f| {
                vec![
                    f.process.to_owned(),
                    mib(f.first_bytes),
                    mib(f.max_bytes),
                    mib(f.last_bytes),
                    show(f.early_mean_bytes),
                    show(f.late_mean_bytes),
                    f.change
                        .map_or("-".to_owned(), |c| format!("{:+.1} %", c * 100.0)),
                    match f.flat {
                        None => "not judged (run shorter than 30 min)".to_owned(),
                        Some(true) => "met".to_owned(),
                        Some(false) => "MISSED".to_owned(),
                    },
                ]
            })
            .collect();
        table(
            out,
            &[
                "process",
                "first",
                "max",
                "last",
                "mean 10–20 min",
                "mean last 10 min",
                "change",
                "target",
            ],
            &rows,
        );
        out.push('\n');
    }
}

impl Sample {
    /// Its row of the timeline: the rates are since `previous` (the previous row's sample).
    fn row(&self, previous: Option<&Sample>, per_minute: bool) -> Vec<String> {
        let (dt, accepted, reads) = match previous {
            Some(p) => (
                self.t_s - p.t_s,
                self.events_accepted - p.events_accepted,
                self.reads_sent - p.reads_sent,
            ),
            // The first row has no interval to measure.
            None => (0.0, 0, 0),
        };
        let per_s = |n: u64| {
            if dt > 0.0 {
                format!("{:.0}", n as f64 / dt)
            } else {
                "-".to_owned()
            }
        };
        vec![
            if per_minute {
                format!("{:.0} min", (self.t_s / 60.0).floor())
            } else {
                format!("{:.0} s", self.t_s)
            },
            match self.phase {
                Phase::Load => "load",
                Phase::Drain => "drain",
            }
            .to_owned(),
            mib(self.rss_ingress),
            mib(self.rss_worker),
            mib(self.rss_api),
            self.main_queue.to_string(),
            self.retry_queues.to_string(),
            self.dead_queue.to_string(),
            self.processed_events.to_string(),
            per_s(accepted),
            per_s(reads),
            self.events_failed.to_string(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_s: f64, rss: u64) -> Sample {
        Sample {
            t_s,
            phase: Phase::Load,
            rss_ingress: rss,
            rss_worker: rss,
            rss_api: rss,
            main_queue: 0,
            retry_queues: 0,
            dead_queue: 0,
            processed_events: 0,
            events_sent: 0,
            events_accepted: 0,
            events_failed: 0,
            reads_sent: 0,
            reads_failed: 0,
        }
    }

    #[test]
    fn memory_is_judged_from_30_minutes_on() {
        let hour = Duration::from_secs(3600);
        // 100 MiB from minute 10 to 20, 105 MiB at the end: flat; 120 MiB: not.
        let flat: Vec<Sample> = (0..=360)
            .map(|i| sample(f64::from(i) * 10.0, if i > 300 { 105 } else { 100 }))
            .collect();
        let judged = flatness(&flat, 3600.0, hour);
        assert_eq!(judged[0].flat, Some(true));
        let growing: Vec<Sample> = (0..=360)
            .map(|i| sample(f64::from(i) * 10.0, if i > 300 { 120 } else { 100 }))
            .collect();
        assert_eq!(flatness(&growing, 3600.0, hour)[1].flat, Some(false));
        let short = flatness(&flat[..20], 190.0, Duration::from_secs(190));
        assert_eq!(short[2].flat, None);
        assert_eq!(short[2].max_bytes, 100);
    }

    #[test]
    fn bounds_follow_rate_and_retention() {
        let args = SoakArgs {
            duration: Some("1h".into()),
            rate: Some(1000.0),
            users: None,
            reads: None,
            retention: Some("5m".into()),
            profile: None,
            json: "x.json".into(),
            markdown: None,
            smoke: false,
        };
        let o = Options::resolve(args, Path::new("/tmp")).expect("options");
        assert_eq!(o.events, 3_600_000);
        assert_eq!(o.prune_interval(), Duration::from_secs(150));
        // 1000/s × (450 s × 1.2 + 5 s).
        assert_eq!(o.processed_bound(), 545_000);
        assert_eq!(o.queue_bound(), 5000);
        assert!(parse_duration("--duration", "0s").is_err());
        assert!(parse_duration("--duration", "soon").is_err());
    }

    #[test]
    fn the_stream_generates_exactly_its_count_and_the_state_it_leads_to() {
        let plan = events::plan(21, 20).expect("plan");
        let mut stream = EventStream {
            expected: plan.users,
            initial: plan.events.into_iter(),
            secret: events::random_secret(),
            to_generate: 100,
            signed: Vec::new().into_iter(),
        };
        let mut sent = 0;
        for request in stream.by_ref() {
            request.expect("request");
            sent += 1;
        }
        assert_eq!(sent, 100);
        let live = stream.expected.iter().filter(|u| u.state.is_some()).count();
        assert_eq!(live, 19);
    }
}
