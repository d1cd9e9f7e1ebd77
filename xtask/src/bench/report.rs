//! The results: the machine and settings, the ceilings, our figures as ratios of them, the
//! targets (pass or fail, never the exit status) and the correctness checks; as JSON and as a
//! markdown table (also what is printed).

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use serde::{Serialize, Serializer};

use super::{
    ceilings::{BROKER_IN_FLIGHT, Ceiling, DB_BATCH_CONCURRENCY, DB_SINGLE_CONCURRENCY},
    load::LoadResult,
    pipeline::{Drain, Histogram},
};
use crate::harness::report::{
    Check, CheckWords, Machine, Stamp, TaskReport, checks_table, mib, table,
};

/// How the run was set up. The JSON adds the ceilings' fixed settings ([`SettingsJson`]).
#[derive(Serialize)]
pub struct Settings {
    pub events: usize,
    pub users: usize,
    pub deleted_users: usize,
    pub connections: Vec<usize>,
    #[serde(flatten)]
    pub stamp: Stamp,
    /// The build of the bench itself (load generator and ceilings).
    pub load_generator_build: &'static str,
    pub queue_prefix: String,
    pub body_bytes_avg: usize,
    pub live_events: usize,
    pub live_connections: usize,
    pub db_batch_rows: usize,
    /// Worker and ingress settings: name, value, whether the environment set it.
    #[serde(serialize_with = "env_json")]
    pub worker_env: Vec<(String, String, bool)>,
    #[serde(serialize_with = "env_json")]
    pub ingress_env: Vec<(String, String, bool)>,
}

pub struct Ceilings {
    /// The best of the broker runs (the ratios are taken against it).
    pub broker: Ceiling,
    /// Every broker run, msgs/s.
    pub broker_runs: Vec<f64>,
    pub db_single: Ceiling,
    pub db_batched: Ceiling,
}

/// One ingress run.
pub struct IngressRun {
    pub load: LoadResult,
    pub peak_rss: u64,
    /// CPU time the ingress used while the load ran.
    pub cpu: Duration,
    /// CPU time the bench process (the load generator) used meanwhile.
    pub load_generator_cpu: Duration,
    /// 1, 2, …: runs at the first connection count alternate with the broker ceiling's.
    pub round: usize,
    /// The live phase's run (worker running).
    pub live: bool,
}

impl IngressRun {
    /// CPU time per accepted request, in microseconds.
    pub fn cpu_us_per_request(&self, cpu: Duration) -> f64 {
        if self.load.accepted == 0 {
            0.0
        } else {
            cpu.as_secs_f64() * 1e6 / self.load.accepted as f64
        }
    }
}

#[derive(Serialize)]
pub struct WorkerRun {
    #[serde(serialize_with = "drain_json")]
    pub drain: Drain,
    #[serde(rename = "peak_rss_bytes_after_drain")]
    pub peak_rss_after_drain: u64,
    #[serde(rename = "peak_rss_bytes")]
    pub peak_rss: u64,
}

pub struct Live {
    pub ingress: IngressRun,
    pub drain: Drain,
    /// Events applied per second from the first request to the poll that saw the last one
    /// applied (the ingress's stop included, so slightly high).
    pub applied_per_s: f64,
    /// The lag histogram's change during the live phase.
    pub lag: Histogram,
    /// CPU time, from the first request until the worker applied the last event, of every
    /// process on the box: ingress, load generator, worker, RabbitMQ, Postgres.
    pub cpu: LiveCpu,
    /// The broker's end-to-end ceiling runs (publisher with confirms and a consumer acking in
    /// batches, at once), msgs/s; the best is compared.
    pub e2e_runs: Vec<f64>,
}

/// CPU time of each process during the live phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct LiveCpu {
    pub ingress: Duration,
    pub load_generator: Duration,
    pub worker: Duration,
    pub rabbitmq: Duration,
    pub postgres: Duration,
}

impl LiveCpu {
    /// `(process, µs per event)`, and the total last.
    pub fn per_event(&self, events: u64) -> Vec<(&'static str, f64)> {
        let us = |d: Duration| {
            if events == 0 {
                0.0
            } else {
                round(d.as_secs_f64() * 1e6 / events as f64, 1)
            }
        };
        let total =
            self.ingress + self.load_generator + self.worker + self.rabbitmq + self.postgres;
        vec![
            ("ingress", us(self.ingress)),
            ("load generator", us(self.load_generator)),
            ("worker", us(self.worker)),
            ("RabbitMQ", us(self.rabbitmq)),
            ("Postgres", us(self.postgres)),
            ("total", us(total)),
        ]
    }
}

impl Live {
    /// The best end-to-end ceiling run.
    pub fn e2e(&self) -> f64 {
        self.e2e_runs.iter().copied().fold(0.0, f64::max)
    }
}

pub struct Report {
    pub machine: Machine,
    pub settings: Settings,
    pub ceilings: Ceilings,
    pub ingress: Vec<IngressRun>,
    pub worker: WorkerRun,
    pub live: Live,
    /// The tracing cost phase (none with `--no-traces`).
    pub traces: Option<super::traces::TracesReport>,
    /// The scale phases (none with `--no-scale`).
    pub scale: Option<super::scale::ScaleReport>,
    pub checks: Vec<Check>,
}

/// A target of the issue.
#[derive(Serialize)]
pub struct Target {
    #[serde(rename = "target")]
    pub name: &'static str,
    /// For people: `32 %`, `27.2 MiB`, `12.0 ms`.
    pub value: String,
    /// For scripts: a fraction of the ceiling, MiB or ms, as the name says.
    #[serde(serialize_with = "round4_json")]
    pub measured: Option<f64>,
    /// `None`: not measured in this run (e.g. that connection count was not asked for).
    pub pass: Option<bool>,
}

/// The JSON: [`ReportJson`], keys sorted (see `bench::run`).
impl Serialize for Report {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ReportJson::new(self).serialize(serializer)
    }
}

/// The report as the JSON has it: the figures rounded, with the ratios and targets derived
/// from them. Committed result files are compared across runs: keep the keys.
#[derive(Serialize)]
struct ReportJson<'a> {
    machine: &'a Machine,
    settings: SettingsJson<'a>,
    ceilings: CeilingsJson,
    results: ResultsJson<'a>,
    ratios: RatiosJson,
    targets: Vec<Target>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traces: Option<&'a super::traces::TracesReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scale: Option<&'a super::scale::ScaleReport>,
    checks: &'a [Check],
}

impl<'a> ReportJson<'a> {
    fn new(report: &'a Report) -> Self {
        let broker = report.broker();
        Self {
            machine: &report.machine,
            settings: SettingsJson {
                settings: &report.settings,
                broker_ceiling_in_flight: BROKER_IN_FLIGHT,
                db_single_concurrency: DB_SINGLE_CONCURRENCY,
                db_batch_concurrency: DB_BATCH_CONCURRENCY,
            },
            ceilings: CeilingsJson::new(&report.ceilings),
            results: ResultsJson {
                ingress: report
                    .ingress
                    .iter()
                    .map(|r| IngressJson::new(r, broker))
                    .collect(),
                worker: &report.worker,
                live: LiveJson::new(&report.live, broker),
            },
            ratios: RatiosJson::new(report),
            targets: report.targets(),
            traces: report.traces.as_ref(),
            scale: report.scale.as_ref(),
            checks: &report.checks,
        }
    }
}

/// [`Settings`] and the ceilings' fixed settings, in one object.
#[derive(Serialize)]
struct SettingsJson<'a> {
    #[serde(flatten)]
    settings: &'a Settings,
    broker_ceiling_in_flight: usize,
    db_single_concurrency: usize,
    db_batch_concurrency: usize,
}

#[derive(Serialize)]
struct CeilingsJson {
    broker_msgs_per_s: f64,
    broker_wall_s: f64,
    broker_runs_msgs_per_s: Vec<f64>,
    db_one_row_per_tx_rows_per_s: f64,
    db_one_row_per_tx_wall_s: f64,
    db_batched_rows_per_s: f64,
    db_batched_wall_s: f64,
}

impl CeilingsJson {
    fn new(c: &Ceilings) -> Self {
        Self {
            broker_msgs_per_s: round(c.broker.per_s(), 1),
            broker_wall_s: round(c.broker.wall.as_secs_f64(), 3),
            broker_runs_msgs_per_s: c.broker_runs.iter().map(|r| round(*r, 1)).collect(),
            db_one_row_per_tx_rows_per_s: round(c.db_single.per_s(), 1),
            db_one_row_per_tx_wall_s: round(c.db_single.wall.as_secs_f64(), 3),
            db_batched_rows_per_s: round(c.db_batched.per_s(), 1),
            db_batched_wall_s: round(c.db_batched.wall.as_secs_f64(), 3),
        }
    }
}

#[derive(Serialize)]
struct ResultsJson<'a> {
    ingress: Vec<IngressJson<'a>>,
    worker: &'a WorkerRun,
    live: LiveJson<'a>,
}

/// One ingress run; `accepted_vs_broker_ceiling` needs the broker ceiling.
#[derive(Serialize)]
struct IngressJson<'a> {
    connections: usize,
    round: usize,
    events: usize,
    accepted: u64,
    accepted_per_s: f64,
    wall_s: f64,
    latency_ms: LatencyJson,
    /// Status to count (the keys become strings).
    non_200: &'a BTreeMap<u16, u64>,
    transport_errors: u64,
    connect_failures: u64,
    first_error: &'a Option<String>,
    peak_rss_bytes: u64,
    cpu_us_per_request: f64,
    load_generator_cpu_us_per_request: f64,
    accepted_vs_broker_ceiling: f64,
}

impl<'a> IngressJson<'a> {
    fn new(r: &'a IngressRun, broker: f64) -> Self {
        let l = &r.load;
        Self {
            connections: l.connections,
            round: r.round,
            events: l.events,
            accepted: l.accepted,
            accepted_per_s: round(l.accepted_per_s(), 1),
            wall_s: round(l.wall.as_secs_f64(), 3),
            latency_ms: LatencyJson {
                p50: round(ms(l.latency.p50), 3),
                p99: round(ms(l.latency.p99), 3),
                max: round(ms(l.latency.max), 3),
                mean: round(ms(l.latency.mean), 3),
            },
            non_200: &l.statuses,
            transport_errors: l.transport_errors,
            connect_failures: l.connect_failures,
            first_error: &l.first_error,
            peak_rss_bytes: r.peak_rss,
            cpu_us_per_request: round(r.cpu_us_per_request(r.cpu), 1),
            load_generator_cpu_us_per_request: round(r.cpu_us_per_request(r.load_generator_cpu), 1),
            accepted_vs_broker_ceiling: ratio_json(l.accepted_per_s(), broker),
        }
    }
}

#[derive(Serialize)]
struct LatencyJson {
    p50: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

#[derive(Serialize)]
struct DrainJson {
    events: u64,
    per_s: f64,
    wall_s: f64,
    applied_at_first_poll: u64,
    since_start_s: f64,
}

#[derive(Serialize)]
struct LiveJson<'a> {
    ingress: IngressJson<'a>,
    wait_after_last_request_s: f64,
    applied_per_s: f64,
    lag_seconds: LagJson,
    broker_end_to_end_runs_msgs_per_s: Vec<f64>,
    accepted_vs_broker_end_to_end: f64,
    cpu_us_per_event: BTreeMap<&'static str, f64>,
}

impl<'a> LiveJson<'a> {
    fn new(live: &'a Live, broker: f64) -> Self {
        let lag = &live.lag;
        Self {
            ingress: IngressJson::new(&live.ingress, broker),
            wait_after_last_request_s: round(live.drain.since_start.as_secs_f64(), 3),
            applied_per_s: live.applied_per_s,
            lag_seconds: LagJson {
                note: LAG_NOTE,
                observations: lag.count,
                p50_le: lag.quantile_bound(0.5).filter(|x| x.is_finite()),
                p99_le: lag.quantile_bound(0.99).filter(|x| x.is_finite()),
                mean: lag.mean().map(|x| round(x, 4)),
            },
            broker_end_to_end_runs_msgs_per_s: live.e2e_runs.iter().map(|r| round(*r, 1)).collect(),
            accepted_vs_broker_end_to_end: ratio_json(
                live.ingress.load.accepted_per_s(),
                live.e2e(),
            ),
            cpu_us_per_event: live
                .cpu
                .per_event(live.ingress.load.accepted)
                .into_iter()
                .collect(),
        }
    }
}

#[derive(Serialize)]
struct LagJson {
    note: &'static str,
    observations: u64,
    p50_le: Option<f64>,
    p99_le: Option<f64>,
    mean: Option<f64>,
}

#[derive(Serialize)]
struct RatiosJson {
    /// By connection count.
    ingress_vs_broker: BTreeMap<String, IngressRatiosJson>,
    worker_drain_vs_broker: f64,
    worker_drain_vs_db_one_row_per_tx: f64,
    worker_drain_vs_db_batched: f64,
}

impl RatiosJson {
    fn new(report: &Report) -> Self {
        let broker = report.broker();
        let c = &report.ceilings;
        let drain = report.worker.drain.per_s();
        Self {
            ingress_vs_broker: report
                .settings
                .connections
                .iter()
                .filter_map(|&connections| {
                    let best = report.run_at(connections)?;
                    let ratios = IngressRatiosJson {
                        best: ratio_json(best.load.accepted_per_s(), broker),
                        median_against_median: report
                            .median_ratio_at(connections)
                            .map(|x| round(x, 4)),
                    };
                    Some((connections.to_string(), ratios))
                })
                .collect(),
            worker_drain_vs_broker: ratio_json(drain, broker),
            worker_drain_vs_db_one_row_per_tx: ratio_json(drain, c.db_single.per_s()),
            worker_drain_vs_db_batched: ratio_json(drain, c.db_batched.per_s()),
        }
    }
}

#[derive(Serialize)]
struct IngressRatiosJson {
    best: f64,
    median_against_median: Option<f64>,
}

/// `x / of` to 4 places; 0 without a ceiling.
fn ratio_json(x: f64, of: f64) -> f64 {
    if of > 0.0 { round(x / of, 4) } else { 0.0 }
}

/// Name to `{"value", "from_env"}`.
fn env_json<S: Serializer>(
    vars: &[(String, String, bool)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Var<'a> {
        value: &'a str,
        from_env: bool,
    }
    serializer.collect_map(vars.iter().map(|(name, value, set)| {
        (
            name,
            Var {
                value,
                from_env: *set,
            },
        )
    }))
}

fn drain_json<S: Serializer>(d: &Drain, serializer: S) -> Result<S::Ok, S::Error> {
    DrainJson {
        events: d.events,
        per_s: round(d.per_s(), 1),
        wall_s: round(d.wall.as_secs_f64(), 3),
        applied_at_first_poll: d.applied_at_first_poll,
        since_start_s: round(d.since_start.as_secs_f64(), 3),
    }
    .serialize(serializer)
}

fn round4_json<S: Serializer>(x: &Option<f64>, serializer: S) -> Result<S::Ok, S::Error> {
    x.map(|x| round(x, 4)).serialize(serializer)
}

const MIB: f64 = 1024.0 * 1024.0;

const LAG_NOTE: &str = "p50/p99 are upper bounds of clerk_sync_event_lag_seconds buckets \
    (its change during the live phase); null when past the largest bucket or without observations";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn round(x: f64, places: i32) -> f64 {
    let factor = 10_f64.powi(places);
    (x * factor).round() / factor
}

fn rate(x: f64, unit: &str) -> String {
    if x >= 100.0 {
        format!("{x:.0} {unit}/s")
    } else {
        format!("{x:.1} {unit}/s")
    }
}

pub(super) fn pct(x: f64) -> String {
    format!("{:.0} %", x * 100.0)
}

fn bound(le: Option<f64>) -> String {
    match le {
        None => "no observations".into(),
        Some(le) if le.is_infinite() => "> largest bucket".into(),
        Some(le) => format!("≤ {le} s"),
    }
}

pub(super) fn pass(p: Option<bool>) -> &'static str {
    match p {
        Some(true) => "PASS",
        Some(false) => "FAIL",
        None => "not measured",
    }
}

/// The median of `values` (the mean of the middle two for an even count); 0 for none.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

impl Report {
    /// The ingress runs (not the live phase's) at `connections`.
    fn runs_at(&self, connections: usize) -> impl Iterator<Item = &IngressRun> {
        self.ingress
            .iter()
            .filter(move |r| r.load.connections == connections && !r.live)
    }

    /// The fastest run at `connections`.
    fn run_at(&self, connections: usize) -> Option<&IngressRun> {
        self.runs_at(connections)
            .max_by(|a, b| a.load.accepted_per_s().total_cmp(&b.load.accepted_per_s()))
    }

    /// Median ingress rate at `connections` over the median broker run.
    fn median_ratio_at(&self, connections: usize) -> Option<f64> {
        let ours = median(
            self.runs_at(connections)
                .map(|r| r.load.accepted_per_s())
                .collect(),
        );
        let broker = median(self.ceilings.broker_runs.clone());
        (ours > 0.0 && broker > 0.0).then(|| ours / broker)
    }

    fn broker(&self) -> f64 {
        self.ceilings.broker.per_s()
    }

    /// The targets.
    pub fn targets(&self) -> Vec<Target> {
        let broker = self.broker();
        let at64 = self.run_at(64);
        let ratio = |x: f64| if broker > 0.0 { x / broker } else { 0.0 };
        let drain = self.worker.drain.per_s();
        let ingress_ratio = at64.map(|r| ratio(r.load.accepted_per_s()));
        let rounds = self.runs_at(64).count();
        let ingress_value = ingress_ratio.map_or("-".into(), |x| {
            if rounds > 1 {
                format!(
                    "{} (best of {rounds} against the best of {} broker runs; medians {})",
                    pct(x),
                    self.ceilings.broker_runs.len(),
                    self.median_ratio_at(64).map_or("-".into(), pct)
                )
            } else {
                pct(x)
            }
        });
        // Memory and latency: the worst run counts.
        let ingress_rss = self
            .runs_at(200)
            .map(|r| r.peak_rss as f64 / MIB)
            .reduce(f64::max);
        let worker_rss = self.worker.peak_rss as f64 / MIB;
        let p99 = self
            .runs_at(64)
            .map(|r| ms(r.load.latency.p99))
            .reduce(f64::max);
        let mut targets = vec![
            Target {
                name: "ingress accepted/s ≥ 80 % of the broker ceiling at 64 connections",
                value: ingress_value,
                measured: ingress_ratio,
                pass: ingress_ratio.map(|x| x >= 0.8),
            },
            Target {
                name: "worker drain ≥ 60 % of the broker ceiling",
                value: pct(ratio(drain)),
                measured: Some(ratio(drain)),
                pass: Some(ratio(drain) >= 0.6),
            },
            Target {
                name: "ingress peak RSS < 50 MiB at 200 connections",
                value: ingress_rss.map_or("-".into(), |x| format!("{x:.1} MiB")),
                measured: ingress_rss,
                pass: ingress_rss.map(|x| x < 50.0),
            },
            Target {
                name: "worker peak RSS < 100 MiB",
                value: format!("{worker_rss:.1} MiB"),
                measured: Some(worker_rss),
                pass: Some(worker_rss < 100.0),
            },
            Target {
                name: "p99 accept latency < 25 ms at 64 connections",
                value: p99.map_or("-".into(), |x| format!("{x:.1} ms")),
                measured: p99,
                pass: p99.map(|x| x < 25.0),
            },
        ];
        let e2e = self.live.e2e();
        if e2e > 0.0 {
            let live = self.live.ingress.load.accepted_per_s() / e2e;
            targets.push(Target {
                name: "live accepted/s (ingress and worker together) ≥ 70 % of the broker's end-to-end ceiling",
                value: pct(live),
                measured: Some(live),
                pass: Some(live >= 0.7),
            });
        }
        if let Some(scale) = &self.scale {
            targets.extend(scale.targets());
        }
        targets
    }

    /// The title, the machine and the settings.
    fn markdown_run(&self, out: &mut String) {
        let m = &self.machine;
        let s = &self.settings;
        s.stamp.title(out, "benchmark");
        let _ = writeln!(
            out,
            "Machine: {} CPUs ({}), {} RAM, Linux {}, PostgreSQL {}, RabbitMQ {}.\n",
            m.nproc,
            m.cpu_model,
            m.mem_total_bytes.map_or("?".into(), |b| format!(
                "{:.1} GiB",
                b as f64 / MIB / 1024.0
            )),
            m.kernel,
            m.postgres,
            m.rabbitmq
        );
        let _ = writeln!(
            out,
            "Settings: {} events over {} users ({} end deleted), average body {} B; connections {}; \
             worker {}; ingress {}; bench (load generator and ceilings) built {}; everything on \
             this one machine.\n",
            s.events,
            s.users,
            s.deleted_users,
            s.body_bytes_avg,
            s.connections
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            env_markdown(&s.worker_env),
            env_markdown(&s.ingress_env),
            s.load_generator_build,
        );
    }

    fn markdown_ceilings(&self, out: &mut String) {
        let s = &self.settings;
        let c = &self.ceilings;
        let _ = writeln!(out, "### Ceilings\n");
        let rows = vec![
            vec![
                "broker".to_owned(),
                format!(
                    "lapin, confirms, quorum queue, {} B persistent mandatory messages, {} in flight; best of {} runs ({}), alternating with the ingress's runs at the first connection count",
                    s.body_bytes_avg,
                    BROKER_IN_FLIGHT,
                    c.broker_runs.len(),
                    c.broker_runs
                        .iter()
                        .map(|r| format!("{r:.0}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                rate(self.broker(), "msgs"),
            ],
            vec![
                "database, 1 row per transaction".to_owned(),
                format!(
                    "the worker's version-guarded upsert, BEGIN/COMMIT per row, {DB_SINGLE_CONCURRENCY} connections"
                ),
                rate(c.db_single.per_s(), "rows"),
            ],
            vec![
                format!("database, {} rows per transaction", s.db_batch_rows),
                format!(
                    "the same upsert over unnest arrays, {DB_BATCH_CONCURRENCY} transactions at once"
                ),
                rate(c.db_batched.per_s(), "rows"),
            ],
        ];
        table(out, &["ceiling", "how", "result"], &rows);
    }

    /// Ours against the ceilings: the ingress runs, the worker's drain, the live phase.
    fn markdown_results(&self, out: &mut String) {
        let _ = writeln!(out, "\n### Results\n");
        let mut rows: Vec<Vec<String>> = self
            .ingress
            .iter()
            .filter(|r| !r.live)
            .flat_map(|r| self.ingress_rows(r))
            .collect();
        rows.extend(self.worker_rows());
        rows.extend(self.live_rows());
        table(out, &["measure", "ours", "ceiling", "ratio"], &rows);
        let _ = writeln!(
            out,
            "\nThe live phase sends as fast as the ingress accepts while the worker applies: when the \
             ingress is faster, the lag includes the time events wait in the queue. Worker drain \
             counts events applied from the first poll of the worker's metrics that saw one to \
             the poll that saw them all (every 25 ms), confirmed by `processed_events`. At the \
             first connection count, runs of the ingress and of the broker ceiling alternate, \
             and the best of each are compared (the medians too)."
        );
    }

    /// Rate, latency, errors, memory and CPU of one ingress run.
    fn ingress_rows(&self, r: &IngressRun) -> Vec<Vec<String>> {
        let l = &r.load;
        let at = if self.runs_at(l.connections).count() > 1 {
            format!("{} connections, round {}", l.connections, r.round)
        } else {
            format!("{} connections", l.connections)
        };
        vec![
            vec![
                format!("ingress accepted/s, {at}"),
                rate(l.accepted_per_s(), "accepted"),
                "broker".into(),
                pct_of(l.accepted_per_s(), self.broker()),
            ],
            measure(
                format!("ingress latency p50 / p99 / max, {at}"),
                format!(
                    "{:.1} / {:.1} / {:.1} ms",
                    ms(l.latency.p50),
                    ms(l.latency.p99),
                    ms(l.latency.max)
                ),
            ),
            measure(format!("ingress errors, {at}"), errors(l)),
            measure(format!("ingress peak RSS, {at}"), mib(r.peak_rss)),
            measure(
                format!("CPU per request: ingress / load generator, {at}"),
                format!(
                    "{:.0} / {:.0} µs",
                    r.cpu_us_per_request(r.cpu),
                    r.cpu_us_per_request(r.load_generator_cpu)
                ),
            ),
        ]
    }

    /// The drain against each ceiling, and the worker's memory.
    fn worker_rows(&self) -> Vec<Vec<String>> {
        let c = &self.ceilings;
        let drain = self.worker.drain.per_s();
        vec![
            vec![
                format!("worker drain, {} queued events", self.worker.drain.events),
                rate(drain, "events"),
                "broker".into(),
                pct_of(drain, self.broker()),
            ],
            vec![
                String::new(),
                String::new(),
                "database, 1 row/tx".into(),
                pct_of(drain, c.db_single.per_s()),
            ],
            vec![
                String::new(),
                String::new(),
                format!("database, {} rows/tx", self.settings.db_batch_rows),
                pct_of(drain, c.db_batched.per_s()),
            ],
            measure("worker peak RSS".into(), mib(self.worker.peak_rss)),
        ]
    }

    /// The live phase: the ingress's rate and errors, the worker's rate, the lag.
    fn live_rows(&self) -> Vec<Vec<String>> {
        let live = &self.live.ingress.load;
        let lag = &self.live.lag;
        vec![
            vec![
                format!(
                    "live: ingress accepted/s, {} events at {} connections, worker running",
                    live.events, live.connections
                ),
                rate(live.accepted_per_s(), "accepted"),
                "broker".into(),
                pct_of(live.accepted_per_s(), self.broker()),
            ],
            vec![
                format!(
                    "live: ingress accepted/s against the broker end to end (publisher and consumer at once; best of {})",
                    self.live.e2e_runs.len()
                ),
                rate(live.accepted_per_s(), "accepted"),
                rate(self.live.e2e(), "msgs"),
                pct_of(live.accepted_per_s(), self.live.e2e()),
            ],
            measure(
                "live: CPU per event, µs (first request to last commit)".into(),
                self.live
                    .cpu
                    .per_event(live.accepted)
                    .iter()
                    .map(|(name, us)| format!("{name} {us:.0}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            measure("live: errors".into(), errors(live)),
            measure(
                "live: worker applied/s (first request to last commit)".into(),
                rate(self.live.applied_per_s, "events"),
            ),
            measure(
                "live: lag accept → commit, p50 / p99 (histogram bucket upper bounds)".into(),
                format!(
                    "{} / {} (mean {}, {} events)",
                    bound(lag.quantile_bound(0.5)),
                    bound(lag.quantile_bound(0.99)),
                    lag.mean().map_or("-".into(), |x| format!("{x:.3} s")),
                    lag.count
                ),
            ),
        ]
    }

    fn markdown_targets(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\n### Targets{}\n",
            if self.settings.stamp.smoke {
                " (informational: a smoke run judges no speed)"
            } else {
                ""
            }
        );
        let rows: Vec<Vec<String>> = self
            .targets()
            .iter()
            .map(|t| vec![t.name.to_owned(), t.value.clone(), pass(t.pass).to_owned()])
            .collect();
        table(out, &["target", "value", "result"], &rows);
    }

    fn markdown_checks(&self, out: &mut String) {
        let _ = writeln!(out, "\n### Checks\n");
        checks_table(out, &self.checks, &CHECK_WORDS);
    }
}

/// The bench's checks table.
pub(super) const CHECK_WORDS: CheckWords = CheckWords {
    columns: ["check", "result", "detail"],
    pass: "ok",
    fail: "FAILED",
};

impl TaskReport for Report {
    /// The report as markdown: the run, then a table per section.
    fn markdown(&self) -> String {
        let mut out = String::new();
        self.markdown_run(&mut out);
        self.markdown_ceilings(&mut out);
        self.markdown_results(&mut out);
        if let Some(traces) = &self.traces {
            traces.markdown(&mut out);
        }
        if let Some(scale) = &self.scale {
            scale.markdown(&mut out);
        }
        self.markdown_targets(&mut out);
        self.markdown_checks(&mut out);
        out
    }

    fn checks(&self) -> &[Check] {
        &self.checks
    }
}

/// A row of the results table with no ceiling to compare with.
fn measure(name: String, ours: String) -> Vec<String> {
    vec![name, ours, String::new(), String::new()]
}

/// `x` as a percentage of `of`; `-` without a ceiling.
fn pct_of(x: f64, of: f64) -> String {
    if of > 0.0 { pct(x / of) } else { "-".into() }
}

/// `NAME=value`, with `(default)` where the environment did not set it.
fn env_markdown(vars: &[(String, String, bool)]) -> String {
    vars.iter()
        .map(|(k, v, set)| {
            if *set {
                format!("{k}={v}")
            } else {
                format!("{k}={v} (default)")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn errors(l: &LoadResult) -> String {
    let mut parts: Vec<String> = l
        .statuses
        .iter()
        .map(|(status, n)| format!("{n} × {status}"))
        .collect();
    if l.transport_errors > 0 {
        parts.push(format!(
            "{} transport errors ({})",
            l.transport_errors,
            l.first_error.as_deref().unwrap_or("?")
        ));
    }
    if parts.is_empty() {
        "0".into()
    } else {
        parts.join(", ")
    }
}

/// `defaults` with the environment's values, plus every other `prefix*` variable set (but
/// `skip`, which the bench sets itself): name, value, whether the environment set it.
pub fn recorded_env(
    defaults: &[(&str, &str)],
    prefix: &str,
    skip: &str,
) -> Vec<(String, String, bool)> {
    let mut out: Vec<(String, String, bool)> = defaults
        .iter()
        .map(|(name, default)| match std::env::var(name) {
            Ok(value) => ((*name).to_owned(), value, true),
            Err(_) => ((*name).to_owned(), (*default).to_owned(), false),
        })
        .collect();
    let mut extra: Vec<(String, String, bool)> = std::env::vars()
        .filter(|(name, _)| {
            name.starts_with(prefix) && name != skip && !out.iter().any(|(n, _, _)| n == name)
        })
        .map(|(name, value)| (name, value, true))
        .collect();
    extra.sort();
    out.extend(extra);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn load(connections: usize, accepted: u64, wall: f64, p99_ms: f64) -> LoadResult {
        LoadResult {
            connections,
            events: 2000,
            accepted,
            statuses: BTreeMap::new(),
            transport_errors: 0,
            connect_failures: 0,
            first_error: None,
            wall: secs(wall),
            latency: crate::bench::load::Latency {
                p50: secs(0.004_123_456),
                p99: secs(p99_ms / 1000.0),
                max: secs(0.045_678_9),
                mean: secs(0.005_555_5),
            },
        }
    }

    fn run(load: LoadResult, round: usize, live: bool) -> IngressRun {
        IngressRun {
            load,
            peak_rss: 23_456_789,
            cpu: secs(0.912_345),
            load_generator_cpu: secs(0.271_828),
            round,
            live,
        }
    }

    /// Every optional section present: three rounds at 64, one run at 200 with errors, a
    /// connection count without a run, settings from the environment and defaults, a lag
    /// histogram with observations.
    fn full() -> Report {
        let mut at200 = load(200, 1990, 1.234_567, 31.25);
        at200.statuses = BTreeMap::from([(503, 7), (429, 2)]);
        at200.transport_errors = 1;
        at200.connect_failures = 1;
        at200.first_error = Some("connection reset".into());
        Report {
            machine: Machine {
                nproc: 2,
                mem_total_bytes: Some(8_123_456_789),
                cpu_model: "Some CPU @ 2.0GHz".into(),
                kernel: "6.1.0".into(),
                postgres: "16.4".into(),
                rabbitmq: "4.0.5 (server)".into(),
            },
            traces: Some(crate::bench::traces::TracesReport {
                connections: 64,
                runs: vec![crate::bench::traces::TraceRun {
                    tracing: crate::bench::traces::Tracing::All,
                    round: 1,
                    events: 2000,
                    ingress_accepted_per_s: 4000.0,
                    ingress_cpu_us_per_event: 90.5,
                    worker_events_per_s: 3000.0,
                    worker_cpu_us_per_event: 120.25,
                }],
                spans_received: BTreeMap::from([("clerk-sync-ingress".into(), 4000)]),
            }),
            settings: settings(),
            ceilings: Ceilings {
                broker: Ceiling {
                    count: 2000,
                    wall: secs(0.123_456_7),
                },
                broker_runs: vec![12_345.678, 16_200.049, 9_876.543_21],
                db_single: Ceiling {
                    count: 2000,
                    wall: secs(4.567_891),
                },
                db_batched: Ceiling {
                    count: 2000,
                    wall: secs(0.333_333_3),
                },
            },
            ingress: vec![
                run(load(64, 2000, 1.301_234, 19.876_54), 1, false),
                run(load(64, 2000, 1.111_111, 24.999), 2, false),
                run(load(64, 2000, 1.777_777, 27.123), 3, false),
                run(at200, 1, false),
            ],
            worker: WorkerRun {
                drain: Drain {
                    events: 2000,
                    wall: secs(1.381_234),
                    applied_at_first_poll: 17,
                    since_start: secs(1.512_345_6),
                },
                peak_rss_after_drain: 45_456_789,
                peak_rss: 47_111_222,
            },
            live: live(),
            scale: None,
            checks: vec![
                Check::new("every request answered 200", true, "2000 of 2000 accepted"),
                Check::new("users table equals", false, "3 differ"),
            ],
        }
    }

    fn settings() -> Settings {
        Settings {
            events: 2000,
            users: 200,
            deleted_users: 10,
            connections: vec![64, 200, 16],
            stamp: Stamp {
                profile: "dev",
                smoke: true,
                date: "2026-11-30T10:00:00Z".into(),
                git_commit: "abc1234-dirty".into(),
            },
            load_generator_build: "dev",
            queue_prefix: "clerk_sync_bench_42".into(),
            body_bytes_avg: 1234,
            live_events: 2000,
            live_connections: 64,
            db_batch_rows: 64,
            worker_env: vec![
                ("WORKER_PREFETCH".into(), "512".into(), false),
                ("WORKER_EXTRA".into(), "x".into(), true),
            ],
            ingress_env: vec![("PUBLISH_CHANNELS".into(), "4".into(), true)],
        }
    }

    fn live() -> Live {
        Live {
            ingress: run(load(64, 2000, 1.762_222, 22.5), 1, true),
            drain: Drain {
                events: 2000,
                wall: secs(2.012_345),
                applied_at_first_poll: 300,
                since_start: secs(0.456_789_1),
            },
            applied_per_s: 923.456_789_123,
            lag: Histogram {
                buckets: vec![(0.1, 400), (0.5, 1500), (1.0, 1948), (f64::INFINITY, 1948)],
                sum: 736.123_456,
                count: 1948,
            },
            cpu: LiveCpu {
                ingress: secs(0.05),
                load_generator: secs(0.024),
                worker: secs(0.08),
                rabbitmq: secs(0.11),
                postgres: secs(0.2),
            },
            e2e_runs: vec![9_000.0, 11_000.5],
        }
    }

    /// Every optional section absent or empty: no memory figure, no settings recorded, no
    /// ingress run, no broker run, zero-length walls, no lag observation, no check.
    fn empty() -> Report {
        let mut report = full();
        report.machine.mem_total_bytes = None;
        report.settings.worker_env.clear();
        report.settings.ingress_env.clear();
        report.settings.connections = vec![16];
        report.ceilings.broker = Ceiling {
            count: 0,
            wall: Duration::ZERO,
        };
        report.ceilings.broker_runs.clear();
        report.ceilings.db_single.wall = Duration::ZERO;
        report.ceilings.db_batched.wall = Duration::ZERO;
        report.ingress.clear();
        report.worker.drain.wall = Duration::ZERO;
        report.live.ingress = run(load(64, 0, 0.0, 0.0), 1, true);
        report.live.lag = Histogram::default();
        report.checks.clear();
        report
    }

    /// One run per connection count, the lag past the largest bucket.
    fn single_rounds() -> Report {
        let mut report = full();
        report.ingress.retain(|r| r.round == 1);
        report.ceilings.broker_runs.truncate(1);
        report.live.lag = Histogram {
            buckets: vec![(0.1, 1), (0.5, 60), (f64::INFINITY, 100)],
            sum: 250.0,
            count: 100,
        };
        report
    }

    /// What is missing or cannot be divided is `null` or 0, never left out.
    #[test]
    fn absent_figures_are_null_or_zero() {
        let json = serde_json::to_value(empty()).unwrap();
        assert_eq!(json["machine"]["mem_total_bytes"], Value::Null);
        assert_eq!(json["settings"]["worker_env"], json!({}));
        assert_eq!(json["ceilings"]["broker_runs_msgs_per_s"], json!([]));
        assert_eq!(json["results"]["ingress"], json!([]));
        let live = &json["results"]["live"];
        assert_eq!(live["ingress"]["cpu_us_per_request"], json!(0.0));
        assert_eq!(live["ingress"]["accepted_vs_broker_ceiling"], json!(0.0));
        assert_eq!(live["ingress"]["first_error"], Value::Null);
        assert_eq!(live["ingress"]["non_200"], json!({}));
        assert_eq!(
            live["lag_seconds"],
            json!({"note": LAG_NOTE, "observations": 0, "p50_le": null, "p99_le": null, "mean": null})
        );
        assert_eq!(
            json["ratios"],
            json!({
                "ingress_vs_broker": {},
                "worker_drain_vs_broker": 0.0,
                "worker_drain_vs_db_one_row_per_tx": 0.0,
                "worker_drain_vs_db_batched": 0.0,
            })
        );
        assert_eq!(json["targets"][0]["measured"], Value::Null);
        assert_eq!(json["targets"][0]["pass"], Value::Null);
        assert_eq!(json["checks"], json!([]));

        let json = serde_json::to_value(single_rounds()).unwrap();
        let lag = &json["results"]["live"]["lag_seconds"];
        assert_eq!(
            (&lag["p50_le"], &lag["p99_le"]),
            (&json!(0.5), &Value::Null)
        );
        assert_eq!(lag["mean"], json!(2.5));
        // The median of one run against the median of one broker run.
        assert_eq!(
            json["ratios"]["ingress_vs_broker"]["64"]["median_against_median"],
            json!(round(2000.0 / 1.301_234 / 12_345.678, 4))
        );
    }

    /// Rates to 1 place, seconds to 3, milliseconds to 3, ratios to 4.
    #[test]
    fn figures_are_rounded() {
        let json = serde_json::to_value(full()).unwrap();
        let first = &json["results"]["ingress"][0];
        assert_eq!(first["accepted_per_s"], json!(1537.0));
        assert_eq!(first["wall_s"], json!(1.301));
        assert_eq!(first["latency_ms"]["p99"], json!(19.877));
        assert_eq!(first["accepted_vs_broker_ceiling"], json!(0.0949));
        assert_eq!(
            json["results"]["ingress"][3]["non_200"],
            json!({"429": 2, "503": 7})
        );
        assert_eq!(
            json["results"]["live"]["applied_per_s"],
            json!(923.456_789_123)
        );
        assert_eq!(json["targets"][2]["measured"], json!(22.3701));
    }

    /// `value` with every leaf replaced by its type and every array by its first element's
    /// shape (all elements must share it).
    fn shape(value: &Value) -> Value {
        match value {
            Value::Null => json!("null"),
            Value::Bool(_) => json!("bool"),
            Value::Number(_) => json!("number"),
            Value::String(_) => json!("string"),
            Value::Array(items) => {
                let shapes: Vec<Value> = items.iter().map(shape).collect();
                assert!(shapes.windows(2).all(|w| w[0] == w[1]), "{value}");
                Value::Array(shapes.into_iter().take(1).collect())
            }
            Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), shape(v))).collect(),
        }
    }

    /// The shape of the JSON's settings.
    fn settings_shape() -> Value {
        let env = json!({"value": "string", "from_env": "bool"});
        json!({
            "events": "number",
            "users": "number",
            "deleted_users": "number",
            "connections": ["number"],
            "profile": "string",
            "smoke": "bool",
            "load_generator_build": "string",
            "date": "string",
            "git_commit": "string",
            "queue_prefix": "string",
            "body_bytes_avg": "number",
            "live_events": "number",
            "live_connections": "number",
            "broker_ceiling_in_flight": "number",
            "db_single_concurrency": "number",
            "db_batch_rows": "number",
            "db_batch_concurrency": "number",
            "worker_env": {"WORKER_PREFETCH": env},
            "ingress_env": {"PUBLISH_CHANNELS": env},
        })
    }

    /// The shape of the JSON's results.
    fn results_shape() -> Value {
        let connection = json!({
            "connections": "number",
            "round": "number",
            "events": "number",
            "accepted": "number",
            "accepted_per_s": "number",
            "wall_s": "number",
            "latency_ms": {"p50": "number", "p99": "number", "max": "number", "mean": "number"},
            "non_200": {"429": "number", "503": "number"},
            "transport_errors": "number",
            "connect_failures": "number",
            "first_error": "string",
            "peak_rss_bytes": "number",
            "cpu_us_per_request": "number",
            "load_generator_cpu_us_per_request": "number",
            "accepted_vs_broker_ceiling": "number",
        });
        json!({
            "ingress": [connection],
            "worker": {
                "drain": {
                    "events": "number",
                    "per_s": "number",
                    "wall_s": "number",
                    "applied_at_first_poll": "number",
                    "since_start_s": "number",
                },
                "peak_rss_bytes_after_drain": "number",
                "peak_rss_bytes": "number",
            },
            "live": {
                "ingress": connection,
                "wait_after_last_request_s": "number",
                "applied_per_s": "number",
                "lag_seconds": {
                    "note": "string",
                    "observations": "number",
                    "p50_le": "number",
                    "p99_le": "number",
                    "mean": "number",
                },
                "broker_end_to_end_runs_msgs_per_s": ["number"],
                "accepted_vs_broker_end_to_end": "number",
                "cpu_us_per_event": {
                    "ingress": "number",
                    "load generator": "number",
                    "worker": "number",
                    "RabbitMQ": "number",
                    "Postgres": "number",
                    "total": "number",
                },
            },
        })
    }

    /// The keys of every section, pinned: the committed result files are compared across
    /// runs, so a renamed or dropped key must be a deliberate change of this test too.
    #[test]
    fn json_keys_are_pinned() {
        let expected = json!({
            "machine": {
                "nproc": "number",
                "mem_total_bytes": "number",
                "cpu_model": "string",
                "kernel": "string",
                "postgres_version": "string",
                "rabbitmq_version": "string",
            },
            "settings": settings_shape(),
            "ceilings": {
                "broker_msgs_per_s": "number",
                "broker_wall_s": "number",
                "broker_runs_msgs_per_s": ["number"],
                "db_one_row_per_tx_rows_per_s": "number",
                "db_one_row_per_tx_wall_s": "number",
                "db_batched_rows_per_s": "number",
                "db_batched_wall_s": "number",
            },
            "results": results_shape(),
            "ratios": {
                "ingress_vs_broker": {"64": {"best": "number", "median_against_median": "number"}},
                "worker_drain_vs_broker": "number",
                "worker_drain_vs_db_one_row_per_tx": "number",
                "worker_drain_vs_db_batched": "number",
            },
            "targets": [{"target": "string", "value": "string", "measured": "number", "pass": "bool"}],
            "traces": {
                "connections": "number",
                "runs": [{
                    "tracing": "string",
                    "round": "number",
                    "events": "number",
                    "ingress_accepted_per_s": "number",
                    "ingress_cpu_us_per_event": "number",
                    "worker_events_per_s": "number",
                    "worker_cpu_us_per_event": "number",
                }],
                "spans_received": {"clerk-sync-ingress": "number"},
            },
            "checks": [{"check": "string", "pass": "bool", "detail": "string"}],
        });
        let mut report = full();
        // Every optional value present; one connection count in the ratios, one setting and one
        // check, so that every map and array has one shape.
        report.settings.connections = vec![64];
        report.settings.worker_env.truncate(1);
        let mut errors = load(64, 1990, 1.2, 31.25);
        errors.statuses = BTreeMap::from([(503, 7), (429, 2)]);
        errors.first_error = Some("connection reset".into());
        let mut at200 = errors.clone();
        at200.connections = 200;
        // At 64 and 200 connections: every target measured.
        report.ingress = vec![run(errors.clone(), 1, false), run(at200, 1, false)];
        report.live.ingress = run(errors, 1, true);
        report.checks.truncate(1);
        assert_eq!(shape(&serde_json::to_value(&report).unwrap()), expected);
    }

    /// The sections and their tables' columns, in order.
    #[test]
    fn markdown_has_every_section_in_order() {
        let markdown = full().markdown();
        let mut rest = markdown.as_str();
        for part in [
            "## clerk-sync benchmark: 2026-11-30T10:00:00Z (dev profile, commit abc1234-dirty), smoke run",
            "Machine: 2 CPUs (Some CPU @ 2.0GHz), 7.6 GiB RAM",
            "Settings: 2000 events over 200 users (10 end deleted)",
            "worker WORKER_PREFETCH=512 (default), WORKER_EXTRA=x; ingress PUBLISH_CHANNELS=4;",
            "### Ceilings",
            "| ceiling ",
            "### Results",
            "| measure ",
            "| ingress accepted/s, 64 connections, round 1 ",
            "| ingress accepted/s, 200 connections ",
            "| worker drain, 2000 queued events ",
            "| live: lag accept → commit, p50 / p99 (histogram bucket upper bounds) ",
            "The live phase sends",
            "### Tracing cost (ingress at 64 connections",
            "| 1 | on, every trace | 2000 | 4000 | 90.5 | 3000 | 120.2 |",
            "### Targets (informational: a smoke run judges no speed)",
            "| target ",
            "### Checks",
            "| check ",
            "| users table equals ",
        ] {
            let at = rest
                .find(part)
                .unwrap_or_else(|| panic!("{part:?} missing or out of order"));
            rest = &rest[at + part.len()..];
        }
    }
}
