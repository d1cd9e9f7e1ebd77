//! Phase 7: what tracing costs. The ingress and the worker with tracing off, on with every trace
//! kept (`OTEL_TRACES_SAMPLER=always_on`) and on with one in ten (`traceidratio` 0.1), exported
//! to an OTLP receiver in this process that decodes every export and counts its spans; the
//! order is mirrored (off, all, tenth, tenth, all, off) so that drift over the minutes of the
//! run falls on each alike. Each run sends newer updates of the users
//! through a fresh ingress and drains them with a fresh worker, so every event is a real upsert.

use std::time::Duration;

use serde::Serialize;
use testkit::otlp::OtlpReceiver;

use super::{Ctx, Worker, events, pipeline, report::round};
use crate::harness::{guard::Cleanup, host, report::Check};

/// How a run traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tracing {
    Off,
    /// Every trace kept (`always_on`).
    All,
    /// A tenth of the traces kept (`traceidratio` 0.1): what a busy deployment would run.
    Tenth,
}

impl Tracing {
    fn label(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::All => "on, every trace",
            Self::Tenth => "on, 1 trace in 10",
        }
    }
}

/// One run: the ingress at the bench's first connection count, then a worker's drain.
#[derive(Debug, Clone, Serialize)]
pub struct TraceRun {
    pub tracing: Tracing,
    pub round: usize,
    pub events: u64,
    pub ingress_accepted_per_s: f64,
    pub ingress_cpu_us_per_event: f64,
    pub worker_events_per_s: f64,
    pub worker_cpu_us_per_event: f64,
}

/// The phase's figures.
#[derive(Debug, Clone, Serialize)]
pub struct TracesReport {
    pub connections: usize,
    pub runs: Vec<TraceRun>,
    /// Spans the receiver decoded, per service.
    pub spans_received: std::collections::BTreeMap<String, u64>,
}

/// The mean of `f` over the runs traced as `how`.
fn mean(runs: &[TraceRun], how: Tracing, f: impl Fn(&TraceRun) -> f64) -> f64 {
    let picked: Vec<f64> = runs.iter().filter(|r| r.tracing == how).map(f).collect();
    if picked.is_empty() {
        0.0
    } else {
        picked.iter().sum::<f64>() / picked.len() as f64
    }
}

impl TracesReport {
    /// Throughput lost when traced as `how`, as a fraction of the throughput with tracing off
    /// (means over the rounds): `(ingress, worker)`.
    pub fn costs(&self, how: Tracing) -> (f64, f64) {
        let cost = |f: &dyn Fn(&TraceRun) -> f64| {
            let off = mean(&self.runs, Tracing::Off, f);
            if off > 0.0 {
                1.0 - mean(&self.runs, how, f) / off
            } else {
                0.0
            }
        };
        (
            cost(&|r| r.ingress_accepted_per_s),
            cost(&|r| r.worker_events_per_s),
        )
    }

    /// The section of the markdown report.
    pub fn markdown(&self, out: &mut String) {
        out.push_str(&format!(
            "\n### Tracing cost (ingress at {} connections, then a worker's drain; off and on alternating)\n\n",
            self.connections
        ));
        out.push_str("| run | tracing | events | ingress accepted/s | ingress CPU µs/event | worker events/s | worker CPU µs/event |\n");
        out.push_str("|---|---|---|---|---|---|---|\n");
        for r in &self.runs {
            out.push_str(&format!(
                "| {} | {} | {} | {:.0} | {:.1} | {:.0} | {:.1} |\n",
                r.round,
                r.tracing.label(),
                r.events,
                r.ingress_accepted_per_s,
                r.ingress_cpu_us_per_event,
                r.worker_events_per_s,
                r.worker_cpu_us_per_event
            ));
        }
        let (ingress, worker) = self.costs(Tracing::All);
        let (ingress_tenth, worker_tenth) = self.costs(Tracing::Tenth);
        let received: Vec<String> = self
            .spans_received
            .iter()
            .map(|(service, n)| format!("{service} {n}"))
            .collect();
        out.push_str(&format!(
            "\nThroughput lost with every trace kept (means): ingress {:.1} %, worker {:.1} % (target ≤ 15 %); with 1 trace in 10: ingress {:.1} %, worker {:.1} %. Spans received: {}.\n",
            ingress * 100.0,
            worker * 100.0,
            ingress_tenth * 100.0,
            worker_tenth * 100.0,
            if received.is_empty() { "none".into() } else { received.join(", ") }
        ));
    }
}

/// Runs the phase: 4 rounds of off/on in mirrored order (ABCCBA twice), `count` events each,
/// checked at the end.
pub(super) async fn run(
    ctx: &Ctx<'_>,
    cleanup: &mut Cleanup,
    expected: &mut [events::Expected],
    count: usize,
    connections: usize,
) -> anyhow::Result<(TracesReport, Vec<Check>)> {
    println!(
        "[6/7] tracing cost: {count} events at {connections} connections, then drained; off and on, alternating"
    );
    let receiver = OtlpReceiver::start_counting().await;
    let endpoint = receiver.endpoint();
    let all: [(&str, &str); 2] = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_TRACES_SAMPLER", "always_on"),
    ];
    let tenth: [(&str, &str); 3] = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_TRACES_SAMPLER", "traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
    ];
    let mut runs = Vec::new();
    // Twice in mirrored order: each setting runs 4 times, early and late alike.
    let mirrored = [
        Tracing::Off,
        Tracing::All,
        Tracing::Tenth,
        Tracing::Tenth,
        Tracing::All,
        Tracing::Off,
    ];
    for (i, tracing) in mirrored.into_iter().chain(mirrored).enumerate() {
        let env: &[(&str, &str)] = match tracing {
            Tracing::Off => &[],
            Tracing::All => &all,
            Tracing::Tenth => &tenth,
        };
        let live_events = events::newer_updates(expected, count)?;
        let name = format!("ingress-traces-{}", i + 1);
        let ingress = ctx
            .ingress_run_with(
                cleanup,
                &name,
                &ctx.site.prefix,
                &live_events,
                connections,
                i / 3 + 1,
                env,
            )
            .await?;
        let accepted = ingress.load.accepted;
        let before = pipeline::processed(&ctx.site.db).await?;
        let worker = Worker::spawn(ctx, cleanup, env).await?;
        let pid = worker.process.pid.to_string();
        let drain = worker
            .wait_applied(ctx, cleanup, (before, 0), accepted)
            .await?;
        let worker_cpu = host::cpu_time(&pid)?;
        worker.stop(cleanup).await?;
        let per_event = |cpu: Duration| {
            if accepted == 0 {
                0.0
            } else {
                round(cpu.as_secs_f64() * 1e6 / accepted as f64, 1)
            }
        };
        let run = TraceRun {
            tracing,
            round: i / 3 + 1,
            events: accepted,
            ingress_accepted_per_s: round(ingress.load.accepted_per_s(), 1),
            ingress_cpu_us_per_event: per_event(ingress.cpu),
            worker_events_per_s: round(drain.per_s(), 1),
            worker_cpu_us_per_event: per_event(worker_cpu),
        };
        println!(
            "      tracing {}: ingress {:.0} accepted/s ({:.1} µs CPU each), worker {:.0} events/s ({:.1} µs CPU each)",
            tracing.label(),
            run.ingress_accepted_per_s,
            run.ingress_cpu_us_per_event,
            run.worker_events_per_s,
            run.worker_cpu_us_per_event
        );
        runs.push(run);
    }
    // The last exports leave within the exporters' schedule delay (5 s) or at their shutdown.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spans_received = receiver.counts();
    let broker = crate::harness::servers::Broker::connect(ctx.amqp_node()).await?;
    let mut checks = ctx
        .check_settled(&broker, expected, "after the tracing runs")
        .await?;
    broker.close().await;
    let traced: u64 = runs
        .iter()
        .filter(|r| r.tracing == Tracing::All)
        .map(|r| r.events)
        .sum();
    let ingress_spans = spans_received
        .get("clerk-sync-ingress")
        .copied()
        .unwrap_or(0);
    checks.push(Check::new(
        "every webhook traced in full exported its server span",
        ingress_spans >= traced,
        format!("{ingress_spans} ingress spans received for {traced} traced webhooks"),
    ));
    Ok((
        TracesReport {
            connections,
            runs,
            spans_received,
        },
        checks,
    ))
}
