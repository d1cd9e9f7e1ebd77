//! The scale phases: the same events drained into an empty database and into one holding a
//! million users and ten million Svix ids; the same again while the worker prunes those ten
//! million (expired) ids; then the read path on that table, with webhooks arriving meanwhile.
//!
//! They run in a database and under a queue prefix of their own (`<prefix>_scale`), dropped and
//! deleted by the run's guard like the others.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde::Serialize;

use super::{
    Ctx, events,
    events::{Event, Expected},
    paced::{self, Pace, Paced},
    pgbench::{self, PgbenchRun},
    pipeline,
    reads::{self, ReadRun, Reads, ServiceKeyReads, SessionKeys, SessionReads},
    report::{Target, pct},
    seed,
};
use crate::harness::{
    guard::Cleanup,
    host,
    report::{Check, mib, table},
    services::Started,
};

/// Connections of the ingress runs that fill the queues of the drains.
const FILL_CONNECTIONS: usize = 64;
/// Seeded Svix ids are this many days old, at least and at most: expired under the default
/// retention (7 days), not under [`NO_PRUNING`].
const SEEDED_AGE_DAYS: (u32, u32) = (15, 8);
/// A retention under which none of the seeded ids has expired.
const NO_PRUNING: [(&str, &str); 1] = [("PROCESSED_EVENTS_RETENTION", "720h")];
/// How long pruning is watched (from the worker's start), at most: its rate is what counts;
/// ten million ids take longer than the bench should.
const PRUNE_WAIT: Duration = Duration::from_secs(90);
/// Rate of the webhooks sent while the read path is measured.
const LIVE_INGEST_RATE: f64 = 1000.0;
/// Each route is also sent at this share of what it served as fast as answered (open loop):
/// the latency of a busy api that is not saturated, on whatever box the bench runs.
const PACED_READ_SHARE: f64 = 0.5;
/// Connections of that ingest.
const LIVE_INGEST_CONNECTIONS: usize = 16;

/// What the scale phases measured.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    pub users_seeded: u64,
    pub processed_seeded: u64,
    pub seed_users_s: f64,
    pub seed_processed_s: f64,
    pub events: u64,
    pub drain_empty_per_s: f64,
    pub drain_at_size_per_s: f64,
    pub drain_pruning_per_s: f64,
    /// Seeded Svix ids deleted while the pruning drain ran.
    pub pruned_during_drain: u64,
    /// Time pruning took to delete every expired id (from the worker's start).
    pub prune_total_s: Option<f64>,
    /// Seeded ids pruned within [`PRUNE_WAIT`], and the time that took.
    pub pruned_in_window: u64,
    pub prune_window_s: f64,
    /// The longest wait of a session blocked by pruning while it ran (sampled every 10 ms).
    pub longest_lock_wait_ms: f64,
    /// The longest lock wait of any session meanwhile (the worker's batches wait on each
    /// other's row locks too).
    pub longest_lock_wait_any_ms: f64,
    /// The longest lock wait of any session during the drain at size without pruning.
    pub longest_lock_wait_at_size_ms: f64,
    /// Applies (events) slower than 100 ms during the pruning drain, and in the drain at size.
    pub slow_applies_pruning: u64,
    pub slow_applies_at_size: u64,
    pub reads: Option<ReadsReport>,
}

/// The read path's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ReadsReport {
    pub users: u64,
    pub pool_size: u32,
    pub sessions: usize,
    /// Postgres's own ceiling: `pgbench -M prepared` running the api's select.
    pub pgbench: PgbenchRun,
    pub ceiling: ReadRun,
    pub service_key: ReadRun,
    pub me: ReadRun,
    /// The same two routes sent at a fixed rate (open loop), below saturation.
    pub service_key_paced: ReadRun,
    pub me_paced: ReadRun,
    pub api_peak_rss: u64,
    pub live_ingest_rate: f64,
    pub live_ingest_accepted: u64,
    pub live_ingest_errors: u64,
}

/// Sizes of the scale phases.
pub struct ScaleOptions {
    pub users: u64,
    pub processed: u64,
    pub read_connections: usize,
    pub read_duration: Duration,
    pub sessions: usize,
}

impl ScaleOptions {
    pub fn defaults(smoke: bool) -> Self {
        if smoke {
            Self {
                users: 20_000,
                processed: 100_000,
                read_connections: 16,
                read_duration: Duration::from_secs(2),
                sessions: 50,
            }
        } else {
            Self {
                users: 1_000_000,
                processed: 10_000_000,
                read_connections: 64,
                read_duration: Duration::from_secs(15),
                sessions: 2_000,
            }
        }
    }
}

async fn execute(db: &DatabaseConnection, sql: &str) -> anyhow::Result<()> {
    db.execute_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .with_context(|| format!("cannot run {sql}"))?;
    Ok(())
}

/// Forgets what the bench's events did (users, tombstones, their Svix ids), so the same events
/// can be drained again as new.
async fn forget_events(db: &DatabaseConnection) -> anyhow::Result<()> {
    execute(
        db,
        "DELETE FROM users WHERE clerk_user_id LIKE 'user_2bench%'",
    )
    .await?;
    execute(db, "DELETE FROM deleted_users").await?;
    execute(db, "DELETE FROM processed_events WHERE svix_id < 'msg_s'").await?;
    execute(db, "VACUUM ANALYZE users, deleted_users").await
}

/// Seeded Svix ids left (an index range scan: they sort after the bench's own).
async fn seeded_left(db: &DatabaseConnection) -> anyhow::Result<u64> {
    pipeline::count(
        db,
        "SELECT count(*) AS n FROM processed_events WHERE svix_id >= 'msg_s'",
        "the seeded Svix ids",
    )
    .await
}

/// What one drain measured: events/s and the applies over 100 ms.
struct Drained {
    per_s: f64,
    slow: u64,
}

/// Fills the queue of the site with `events` through an ingress, then times a worker (with
/// `env`) draining it and checks the state; the worker keeps running.
async fn fill_and_drain(
    ctx: &Ctx<'_>,
    cleanup: &mut Cleanup,
    (events, expected): (&[Event], &[Expected]),
    env: &[(&str, &str)],
    label: &str,
    checks: &mut Vec<Check>,
) -> anyhow::Result<(Drained, super::Worker)> {
    // Every drain starts right after a checkpoint: the seeding's write-ahead log would
    // otherwise be flushed (and full pages written again) during the one after it.
    execute(&ctx.site.db, "CHECKPOINT").await?;
    let fill = ctx
        .ingress_run(
            cleanup,
            "ingress-scale",
            &ctx.site.prefix,
            events,
            FILL_CONNECTIONS,
            1,
        )
        .await?;
    checks.push(super::answered_check(&fill));
    let (worker, drained) =
        super::worker_drain(ctx, cleanup, expected, fill.load.accepted, env).await?;
    let apply = pipeline::Histogram::parse(
        &pipeline::scrape(worker.addr()).await?,
        "clerk_sync_apply_seconds",
    );
    let slow = apply.count_over(0.1);
    println!(
        "      {label}: {:.0} events/s, {slow} applies over 100 ms",
        drained.drain.per_s()
    );
    checks.extend(drained.checks.into_iter().map(|mut c| {
        c.name = format!("{} [{label}]", c.name);
        c
    }));
    let per_s = drained.drain.per_s();
    Ok((Drained { per_s, slow }, worker))
}

/// The longest lock waits seen.
#[derive(Debug, Clone, Copy, Default)]
struct LockWaits {
    /// Of any session on the database.
    any: Duration,
    /// Of sessions blocked by the pruning `DELETE`.
    behind_pruning: Duration,
}

/// The lock waits (`pg_locks.waitstart`) of the database, sampled every 10 ms until
/// [`LockWatch::finish`]: the longest of any session, and the longest of those the pruning
/// `DELETE` blocks.
struct LockWatch {
    stop: Arc<AtomicBool>,
    watcher: tokio::task::JoinHandle<LockWaits>,
}

/// The longest lock wait of any session on the database, and of those the pruning `DELETE`
/// blocks, in microseconds.
const LOCK_WAITS: &str = "SELECT \
       coalesce(max(w.us), 0)::bigint AS any_us, \
       coalesce(max(w.us) FILTER (WHERE EXISTS ( \
         SELECT 1 FROM pg_stat_activity b \
         WHERE b.pid = ANY(pg_blocking_pids(w.pid)) \
           AND b.query LIKE 'DELETE FROM processed_events%')), 0)::bigint \
         AS pruning_us \
     FROM (SELECT l.pid, extract(epoch FROM now() - l.waitstart) * 1e6 AS us \
           FROM pg_locks l \
           WHERE NOT l.granted AND l.waitstart IS NOT NULL \
             AND l.database = (SELECT oid FROM pg_database \
                               WHERE datname = current_database())) AS w";

impl LockWatch {
    fn start(db: DatabaseConnection) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let watcher = tokio::spawn(async move {
            let (mut any_us, mut pruning_us) = (0i64, 0i64);
            while !stopped.load(Ordering::Relaxed) {
                let row = db
                    .query_one_raw(Statement::from_string(DbBackend::Postgres, LOCK_WAITS))
                    .await;
                if let Ok(Some(row)) = row {
                    any_us = any_us.max(row.try_get::<i64>("", "any_us").unwrap_or(0));
                    pruning_us = pruning_us.max(row.try_get::<i64>("", "pruning_us").unwrap_or(0));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
            LockWaits {
                any: us(any_us),
                behind_pruning: us(pruning_us),
            }
        });
        Self { stop, watcher }
    }

    async fn finish(self) -> anyhow::Result<LockWaits> {
        self.stop.store(true, Ordering::Relaxed);
        self.watcher.await.context("the lock watcher panicked")
    }
}

/// The drain into the seeded database, with no id expired: its figures and lock waits.
async fn drain_at_size(
    ctx: &Ctx<'_>,
    cleanup: &mut Cleanup,
    events: (&[Event], &[Expected]),
    checks: &mut Vec<Check>,
) -> anyhow::Result<(Drained, LockWaits)> {
    forget_events(&ctx.site.db).await?;
    let watch = LockWatch::start(ctx.site.db.clone());
    let (drained, worker) =
        fill_and_drain(ctx, cleanup, events, &NO_PRUNING, "at size", checks).await?;
    let waits = watch.finish().await?;
    worker.stop(cleanup).await?;
    Ok((drained, waits))
}

/// The drain into the seeded database while the worker prunes every seeded id, then pruning
/// watched for at most [`PRUNE_WAIT`] from the worker's start.
struct Pruning {
    drained: Drained,
    /// Seeded ids before, after the drain, at the end.
    before: u64,
    after_drain: u64,
    left: u64,
    /// Until every id was pruned (`None`: not within the window), and the window.
    total: Option<Duration>,
    window: Duration,
    waits: LockWaits,
}

/// Drains while the worker prunes (the default retention, 7 days: every seeded id has
/// expired; pruning starts with the worker), then watches pruning; the worker keeps running.
async fn drain_pruning(
    ctx: &Ctx<'_>,
    cleanup: &mut Cleanup,
    events: (&[Event], &[Expected]),
    checks: &mut Vec<Check>,
) -> anyhow::Result<(Pruning, super::Worker)> {
    forget_events(&ctx.site.db).await?;
    let before = seeded_left(&ctx.site.db).await?;
    let watch = LockWatch::start(ctx.site.db.clone());
    let started = Instant::now();
    let (drained, worker) =
        fill_and_drain(ctx, cleanup, events, &[], "at size, pruning", checks).await?;
    let after_drain = seeded_left(&ctx.site.db).await?;
    let mut total = None;
    let mut left = after_drain;
    while started.elapsed() < PRUNE_WAIT {
        left = seeded_left(&ctx.site.db).await?;
        if left == 0 {
            total = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let window = started.elapsed();
    let waits = watch.finish().await?;
    let pruning = Pruning {
        drained,
        before,
        after_drain,
        left,
        total,
        window,
        waits,
    };
    Ok((pruning, worker))
}

impl Pruning {
    fn print(&self, at_size: &LockWaits) {
        println!(
            "      pruned {} of {} during the drain, {} in {:.0} s ({}); longest lock wait \
             behind pruning {:.1} ms (of any session {:.1} ms; {:.1} ms at size without pruning)",
            self.before - self.after_drain,
            self.before,
            self.before - self.left,
            self.window.as_secs_f64(),
            if self.total.is_some() {
                "all"
            } else {
                "not all: the rest goes on in the background"
            },
            ms(self.waits.behind_pruning),
            ms(self.waits.any),
            ms(at_size.any),
        );
    }

    fn check(&self) -> Check {
        Check::new(
            "pruning deletes the expired Svix ids",
            self.left < self.before,
            format!(
                "{} expired, {} pruned in {:.0} s",
                self.before,
                self.before - self.left,
                self.window.as_secs_f64()
            ),
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Seeds the users and the (expired) Svix ids: the time each took.
async fn seed(ctx: &Ctx<'_>, so: &ScaleOptions) -> anyhow::Result<(Duration, Duration)> {
    println!(
        "      seeding {} users and {} Svix ids ({}–{} days old)",
        so.users, so.processed, SEEDED_AGE_DAYS.1, SEEDED_AGE_DAYS.0
    );
    let db = &ctx.site.db;
    let users = seed::users(db, so.users).await?;
    let processed = seed::processed_events(db, so.processed, SEEDED_AGE_DAYS).await?;
    execute(db, "VACUUM ANALYZE users, processed_events").await?;
    println!(
        "      seeded in {:.0} s and {:.0} s",
        users.as_secs_f64(),
        processed.as_secs_f64()
    );
    Ok((users, processed))
}

/// Runs the scale phases in the site's database (migrated, empty) under its prefix.
pub async fn run(
    ctx: &Ctx<'_>,
    cleanup: &mut Cleanup,
    so: &ScaleOptions,
    events: &[Event],
    expected: &mut [Expected],
) -> anyhow::Result<(ScaleReport, Vec<Check>)> {
    let mut checks = Vec::new();
    println!("[8] write path at size: {} events", events.len());
    println!("      drain into an empty database");
    let (empty, worker) =
        fill_and_drain(ctx, cleanup, (events, expected), &[], "empty", &mut checks).await?;
    worker.stop(cleanup).await?;
    let seeded = seed(ctx, so).await?;
    let (at_size, waits_at_size) =
        drain_at_size(ctx, cleanup, (events, expected), &mut checks).await?;
    let (pruning, worker) = drain_pruning(ctx, cleanup, (events, expected), &mut checks).await?;
    pruning.print(&waits_at_size);
    checks.push(pruning.check());

    // The read path is measured beside a worker applying the live webhooks, not beside the
    // one-off pruning of a ten-million-id backlog: a worker that prunes nothing takes over.
    worker.stop(cleanup).await?;
    let worker = super::Worker::start(ctx, cleanup, &NO_PRUNING).await?;
    let (reads, read_checks) = read_path(ctx, cleanup, so, Some((&worker, expected))).await?;
    checks.extend(read_checks);
    worker.stop(cleanup).await?;
    let report = ScaleReport {
        users_seeded: so.users,
        processed_seeded: so.processed,
        seed_users_s: seeded.0.as_secs_f64(),
        seed_processed_s: seeded.1.as_secs_f64(),
        events: events.len() as u64,
        drain_empty_per_s: empty.per_s,
        drain_at_size_per_s: at_size.per_s,
        drain_pruning_per_s: pruning.drained.per_s,
        pruned_during_drain: pruning.before - pruning.after_drain,
        prune_total_s: pruning.total.map(|d| d.as_secs_f64()),
        pruned_in_window: pruning.before - pruning.left,
        prune_window_s: pruning.window.as_secs_f64(),
        longest_lock_wait_ms: ms(pruning.waits.behind_pruning),
        longest_lock_wait_any_ms: ms(pruning.waits.any),
        longest_lock_wait_at_size_ms: ms(waits_at_size.any),
        slow_applies_pruning: pruning.drained.slow,
        slow_applies_at_size: at_size.slow,
        reads: Some(reads),
    };
    Ok((report, checks))
}

/// Blocks the bench's database has read from outside Postgres's shared buffers so far.
async fn blocks_read(db: &DatabaseConnection) -> anyhow::Result<u64> {
    pipeline::count(
        db,
        "SELECT blks_read AS n FROM pg_stat_database WHERE datname = current_database()",
        "the blocks read (pg_stat_database)",
    )
    .await
}

/// Runs one read load, adds what Postgres spent meanwhile (the CPU of its processes and the
/// blocks read from outside its buffers, per request; the live ingest's share included;
/// backends report their block counts within a second or so) and prints its summary.
async fn read_run(
    db: &DatabaseConnection,
    load: impl Future<Output = anyhow::Result<ReadRun>>,
) -> anyhow::Result<ReadRun> {
    let cpu_before = host::ServerCpu::now();
    let blocks_before = blocks_read(db).await?;
    let mut run = load.await?;
    let cpu = host::ServerCpu::now().since(cpu_before).postgres;
    let blocks = blocks_read(db).await?.saturating_sub(blocks_before);
    let requests = run.requests.max(1) as f64;
    run.postgres_cpu_us_per_request = Some((cpu.as_secs_f64() * 1e7 / requests).round() / 10.0);
    run.blocks_read_per_request = Some((blocks as f64 * 100.0 / requests).round() / 100.0);
    run.load_average_1m = host::load_average();
    println!("      {}: {}", run.what, run.summary());
    Ok(run)
}

/// One route of the api: as fast as answered, then open loop at [`PACED_READ_SHARE`] of that
/// rate, each through [`read_run`]. `reads` gives each run its requests.
async fn read_route<R: Reads>(
    db: &DatabaseConnection,
    api: &Started,
    so: &ScaleOptions,
    what: &str,
    reads: impl Fn() -> anyhow::Result<Arc<R>>,
) -> anyhow::Result<(ReadRun, ReadRun)> {
    let (addr, pid) = (api.addr, api.pid);
    let (connections, duration) = (so.read_connections, so.read_duration);
    let saturated = read_run(
        db,
        reads::against_api(what, addr, pid, reads()?, connections, duration),
    )
    .await?;
    let paced = read_run(
        db,
        reads::paced_against_api(
            &format!("{what}, at half that rate"),
            addr,
            pid,
            reads()?,
            connections,
            (saturated.per_s * PACED_READ_SHARE).max(1.0),
            duration,
        ),
    )
    .await?;
    Ok((saturated, paced))
}

/// The runs of the read path: the database's ceiling, then each route as fast as answered
/// and paced.
struct ReadRuns {
    pgbench: PgbenchRun,
    ceiling: ReadRun,
    service_key: ReadRun,
    service_key_paced: ReadRun,
    me: ReadRun,
    me_paced: ReadRun,
}

impl ReadRuns {
    async fn measure(
        ctx: &Ctx<'_>,
        so: &ScaleOptions,
        (api, pool_size): (&Started, u32),
        keys: &SessionKeys,
    ) -> anyhow::Result<Self> {
        let db = &ctx.site.db;
        let (users, connections) = (so.users, so.read_connections);
        let pgbench = pgbench::ceiling(
            &ctx.site.db_url,
            reads::SELECT_USER,
            users,
            connections,
            so.read_duration,
            ctx.services.log_dir(),
        )
        .await?;
        println!(
            "      Postgres's ceiling (pgbench -M prepared): {}",
            pgbench.summary()
        );
        let ceiling = reads::ceiling(
            &ctx.site.db_url,
            pool_size,
            users,
            connections,
            so.read_duration,
        );
        let ceiling = read_run(db, ceiling).await?;
        let service = Arc::new(ServiceKeyReads {
            users,
            authorization: hyper::header::HeaderValue::from_str(&format!(
                "Bearer {}",
                reads::SERVICE_KEY
            ))
            .context("bad service key header")?,
        });
        let what = "GET /users/by-clerk-id/{id}, service key";
        let (service_key, service_key_paced) =
            read_route(db, api, so, what, || Ok(service.clone())).await?;
        // Each run signs fresh tokens (they live a minute), which the api verifies once each.
        let (me, me_paced) = read_route(db, api, so, "GET /me, session JWTs", || {
            Ok(Arc::new(SessionReads::sign(keys, so.sessions, users)?))
        })
        .await?;
        Ok(Self {
            pgbench,
            ceiling,
            service_key,
            service_key_paced,
            me,
            me_paced,
        })
    }

    fn check(&self) -> Check {
        let all = [
            &self.ceiling,
            &self.service_key,
            &self.service_key_paced,
            &self.me,
            &self.me_paced,
        ];
        Check::new(
            "every read answered 200",
            all.iter()
                .all(|run| run.errors == 0 && run.ok == run.requests),
            format!(
                "errors: ceiling {}, service key {} (paced {}), /me {} (paced {})",
                self.ceiling.errors,
                self.service_key.errors,
                self.service_key_paced.errors,
                self.me.errors,
                self.me_paced.errors
            ),
        )
    }
}

/// The api of the read path, ready: verifies session tokens of `keys`, reads with the bench's
/// service key; and the size of its pool.
async fn start_api(
    ctx: &Ctx<'_>,
    cleanup: &mut Cleanup,
    keys: &SessionKeys,
) -> anyhow::Result<(Started, u32)> {
    let pool_size: u32 = std::env::var("DATABASE_MAX_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let api = (ctx.site.api())
        .env("API_SERVICE_KEYS", reads::SERVICE_KEY)
        .env("CLERK_JWT_KEY", keys.public_pem.clone())
        .env("CLERK_ISSUER", reads::ISSUER)
        .unset(&["CLERK_SECRET_KEY", "TOKEN_ENCRYPTION_KEY", "API_LAZY_SYNC"]);
    Ok((ctx.services.start(cleanup, api).await?, pool_size))
}

/// Webhooks while the reads run: enough newer updates of `expected` for the five runs, sent
/// at [`LIVE_INGEST_RATE`] through an ingress of their own; then the ingest ends.
struct Ingest {
    load: tokio::task::JoinHandle<anyhow::Result<Paced>>,
    /// `processed_events` and the worker's settled events before it.
    before: (u64, u64),
}

impl Ingest {
    async fn start(
        ctx: &Ctx<'_>,
        cleanup: &mut Cleanup,
        so: &ScaleOptions,
        worker: &super::Worker,
        expected: &mut [Expected],
    ) -> anyhow::Result<Self> {
        let runs = 5u32;
        let count =
            (LIVE_INGEST_RATE * (so.read_duration * runs).as_secs_f64()).ceil() as usize + 1000;
        let live_events = events::newer_updates(expected, count)?;
        let signed = Arc::new(events::sign(&live_events, &ctx.secret)?);
        let ingress = ctx
            .start_ingress(cleanup, "ingress-reads", &ctx.site.prefix, &[])
            .await?;
        let before = worker.applied(ctx).await?;
        let mut pace = Pace::new(LIVE_INGEST_RATE, LIVE_INGEST_CONNECTIONS);
        pace.limit = Some(signed.len() as u64);
        let requests = paced::webhook_requests(signed);
        let load = tokio::spawn(async move {
            let stop = std::future::pending::<()>();
            Ok(paced::run(ingress.addr, pace, requests, stop).await?.0)
        });
        Ok(Self { load, before })
    }

    /// Waits for the ingest's end, stops its ingress, waits until the worker has applied
    /// what it sent: the ingest's figures and check.
    async fn finish(
        self,
        ctx: &Ctx<'_>,
        cleanup: &mut Cleanup,
        worker: &super::Worker,
    ) -> anyhow::Result<(Paced, Check)> {
        let ingest = self.load.await.context("the ingest panicked")??;
        cleanup.stop("ingress-reads").await?;
        let check = Check::new(
            "every webhook answered 200 (ingest during the reads)",
            ingest.load.all_accepted(),
            format!(
                "{} of {} accepted at {LIVE_INGEST_RATE}/s",
                ingest.load.accepted, ingest.load.events
            ),
        );
        (worker)
            .wait_applied(ctx, cleanup, self.before, ingest.load.accepted)
            .await?;
        Ok((ingest, check))
    }
}

/// The read path against the seeded table; with `live` (the worker running, and the users its
/// webhooks update), webhooks arrive meanwhile at [`LIVE_INGEST_RATE`].
async fn read_path(
    ctx: &Ctx<'_>,
    cleanup: &mut Cleanup,
    so: &ScaleOptions,
    mut live: Option<(&super::Worker, &mut [Expected])>,
) -> anyhow::Result<(ReadsReport, Vec<Check>)> {
    let meanwhile = if live.is_some() {
        format!("{LIVE_INGEST_RATE} webhooks/s meanwhile")
    } else {
        "nothing else meanwhile".to_owned()
    };
    println!(
        "[9] read path: {} users, {} connections, {:?} per run, {meanwhile}",
        so.users, so.read_connections, so.read_duration
    );
    let keys = SessionKeys::generate()?;
    let (api, pool_size) = start_api(ctx, cleanup, &keys).await?;
    let ingest = match &mut live {
        Some((worker, expected)) => Some(Ingest::start(ctx, cleanup, so, worker, expected).await?),
        None => None,
    };
    // The service key reads and the session reads, each after the ceilings; the tokens are
    // signed right before their run (they live a minute).
    let runs = ReadRuns::measure(ctx, so, (&api, pool_size), &keys).await?;
    let api_peak_rss = host::peak_rss(api.pid)?;
    cleanup.stop(&api.name).await?;
    let mut checks = vec![runs.check()];
    let (mut accepted, mut errors) = (0, 0);
    if let (Some(ingest), Some((worker, expected))) = (ingest, live) {
        let (ingest, ingest_check) = ingest.finish(ctx, cleanup, worker).await?;
        (accepted, errors) = (ingest.load.accepted, ingest.load.errors());
        checks.push(ingest_check);
        checks.extend(
            ctx.check_settled(&worker.broker, expected, "after the reads")
                .await?,
        );
    }
    let report = ReadsReport {
        users: so.users,
        pool_size,
        sessions: so.sessions,
        pgbench: runs.pgbench,
        ceiling: runs.ceiling,
        service_key: runs.service_key,
        me: runs.me,
        service_key_paced: runs.service_key_paced,
        me_paced: runs.me_paced,
        api_peak_rss,
        live_ingest_rate: if accepted > 0 { LIVE_INGEST_RATE } else { 0.0 },
        live_ingest_accepted: accepted,
        live_ingest_errors: errors,
    };
    Ok((report, checks))
}

/// `--reads-only`: seeds `so.users` users into the site's (empty) database and measures the
/// read path on them with nothing else running: the seeding's time, the figures and checks.
pub async fn reads_only(
    ctx: &Ctx<'_>,
    cleanup: &mut Cleanup,
    so: &ScaleOptions,
) -> anyhow::Result<(Duration, ReadsReport, Vec<Check>)> {
    println!("[1/3] seeding {} users", so.users);
    let db = &ctx.site.db;
    let seeded = seed::users(db, so.users).await?;
    execute(db, "VACUUM ANALYZE users").await?;
    execute(db, "CHECKPOINT").await?;
    println!("      seeded in {:.0} s", seeded.as_secs_f64());
    let (reads, checks) = read_path(ctx, cleanup, so, None).await?;
    Ok((seeded, reads, checks))
}

impl ScaleReport {
    /// The issue's targets for size, pruning and the read path.
    pub fn targets(&self) -> Vec<Target> {
        let ratio = |x: f64, of: f64| if of > 0.0 { x / of } else { 0.0 };
        let at_size = ratio(self.drain_at_size_per_s, self.drain_empty_per_s);
        let pruning_cost = 1.0 - ratio(self.drain_pruning_per_s, self.drain_at_size_per_s);
        let mut targets = vec![
            Target {
                name: "drain at size (1 M users, 10 M Svix ids) ≥ 80 % of the drain into an empty database",
                value: pct(at_size),
                measured: Some(at_size),
                pass: Some(at_size >= 0.8),
            },
            Target {
                name: "pruning 10 M expired ids costs ≤ 10 % of the drain",
                value: format!("{} slower", pct(pruning_cost)),
                measured: Some(pruning_cost),
                pass: Some(pruning_cost <= 0.1),
            },
            Target {
                name: "no apply waits on pruning more than 100 ms (longest lock wait behind it)",
                value: format!("{:.1} ms", self.longest_lock_wait_ms),
                measured: Some(self.longest_lock_wait_ms),
                pass: Some(self.longest_lock_wait_ms <= 100.0),
            },
        ];
        if let Some(r) = &self.reads {
            targets.extend(r.targets());
        }
        targets
    }

    /// The section of the markdown report.
    pub fn markdown(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "\n### At size\n\n{} users and {} Svix ids seeded in {:.0} s and {:.0} s \
             (`generate_series`); the same {} events drained three times.\n",
            self.users_seeded,
            self.processed_seeded,
            self.seed_users_s,
            self.seed_processed_s,
            self.events
        );
        let mut rows = self.write_rows();
        if let Some(r) = &self.reads {
            rows.extend(r.rows());
        }
        table(out, &["measure", "value", "detail"], &rows);
    }

    /// The drains and pruning.
    fn write_rows(&self) -> Vec<Vec<String>> {
        vec![
            vec![
                "worker drain, empty database".into(),
                rate(self.drain_empty_per_s),
                String::new(),
            ],
            vec![
                "worker drain at size (no pruning)".into(),
                rate(self.drain_at_size_per_s),
                format!(
                    "{} of empty; {} applies over 100 ms",
                    pct(self.drain_at_size_per_s / self.drain_empty_per_s.max(1.0)),
                    self.slow_applies_at_size
                ),
            ],
            vec![
                "worker drain at size, pruning the expired ids".into(),
                rate(self.drain_pruning_per_s),
                format!(
                    "{} of at size; {} pruned meanwhile; {} applies over 100 ms; longest lock wait behind pruning {:.1} ms (any: {:.1} ms; at size without pruning: {:.1} ms)",
                    pct(self.drain_pruning_per_s / self.drain_at_size_per_s.max(1.0)),
                    self.pruned_during_drain,
                    self.slow_applies_pruning,
                    self.longest_lock_wait_ms,
                    self.longest_lock_wait_any_ms,
                    self.longest_lock_wait_at_size_ms
                ),
            ],
            vec![
                "pruning, from the worker's start".into(),
                format!(
                    "{:.0} ids/s",
                    self.pruned_in_window as f64 / self.prune_window_s.max(0.001)
                ),
                format!(
                    "{} of {} expired ids in {:.0} s{}",
                    self.pruned_in_window,
                    self.processed_seeded,
                    self.prune_window_s,
                    self.prune_total_s
                        .map_or(String::new(), |s| format!(" (all, in {s:.0} s)"))
                ),
            ],
        ]
    }
}

/// A rate of the section: `1234/s`.
fn rate(x: f64) -> String {
    format!("{x:.0}/s")
}

impl ReadsReport {
    /// The read path's targets (issue #32): against Postgres's own ceiling, the api's CPU per
    /// read, the latency below saturation and the api's memory.
    pub fn targets(&self) -> Vec<Target> {
        let ratio = |x: f64, of: f64| if of > 0.0 { x / of } else { 0.0 };
        let service = ratio(self.service_key.per_s, self.pgbench.per_s);
        let me = ratio(self.me.per_s, self.service_key.per_s);
        let cpu = [&self.service_key, &self.me]
            .iter()
            .filter_map(|run| run.api_cpu_us_per_request)
            .reduce(f64::max);
        let p99 = self.service_key_paced.p99_ms.max(self.me_paced.p99_ms);
        let rss = self.api_peak_rss as f64 / (1024.0 * 1024.0);
        vec![
            Target {
                name: "service-key reads ≥ 60 % of Postgres's own ceiling (pgbench -M prepared, as many clients as connections)",
                value: pct(service),
                measured: Some(service),
                pass: Some(service >= 0.6),
            },
            Target {
                name: "/me (remembered tokens) ≥ 90 % of the service-key reads",
                value: pct(me),
                measured: Some(me),
                pass: Some(me >= 0.9),
            },
            Target {
                name: "api CPU per read ≤ 70 µs (/proc; the dearer of the two routes, as fast as answered)",
                value: cpu.map_or("-".into(), |c| format!("{c:.0} µs")),
                measured: cpu,
                pass: cpu.map(|c| c <= 70.0),
            },
            Target {
                name: "read p99 at half rate ≤ 10 ms (both routes)",
                value: format!("{p99:.1} ms"),
                measured: Some(p99),
                pass: Some(p99 <= 10.0),
            },
            Target {
                name: "api peak RSS ≤ 64 MiB",
                value: mib(self.api_peak_rss),
                measured: Some(rss),
                pass: Some(rss <= 64.0),
            },
        ]
    }

    /// A row per read run, and the api's memory.
    pub fn rows(&self) -> Vec<Vec<String>> {
        let p = &self.pgbench;
        let pgbench = vec![
            format!(
                "Postgres's ceiling: the api's select, pgbench -M prepared ({} clients, {} threads)",
                p.clients, p.threads
            ),
            rate(p.per_s),
            format!(
                "latency average {:.2} ms; Postgres CPU {:.0} µs/select{}",
                p.latency_avg_ms,
                p.postgres_cpu_us_per_request,
                load_average(p.load_average_1m)
            ),
        ];
        let runs = [
            &self.ceiling,
            &self.service_key,
            &self.service_key_paced,
            &self.me,
            &self.me_paced,
        ];
        let mut rows = vec![pgbench];
        rows.extend(runs.iter().map(|run| run.row()));
        rows.push(vec![
            "api peak RSS".into(),
            mib(self.api_peak_rss),
            format!(
                "{} users; pool of {}; {} sessions; webhooks meanwhile: {} accepted at {:.0}/s, {} errors",
                self.users, self.pool_size, self.sessions, self.live_ingest_accepted, self.live_ingest_rate, self.live_ingest_errors
            ),
        ]);
        rows
    }
}

impl ReadRun {
    /// Its row of the section.
    fn row(&self) -> Vec<String> {
        vec![
            format!(
                "{} ({} connections){}",
                self.what,
                self.connections,
                self.pacing()
            ),
            rate(self.per_s),
            format!(
                "p50 {:.2} / p99 {:.2} / max {:.1} ms; {} errors; CPU/request: api {}, client {:.0} µs{}",
                self.p50_ms,
                self.p99_ms,
                self.max_ms,
                self.errors,
                self.api_cpu_us_per_request
                    .map_or("-".into(), |c| format!("{c:.0} µs")),
                self.client_cpu_us_per_request,
                self.database_cost() + &load_average(self.load_average_1m)
            ),
        ]
    }
}

/// "; load average L" when known, else nothing.
fn load_average(load: Option<f64>) -> String {
    load.map_or(String::new(), |l| format!("; load average {l:.2}"))
}
