//! The worker: consumes the raw Clerk events the ingress published and applies them to Postgres
//! exactly once in effect (see [`apply`]), with retries and dead-lettering; plus the ops commands
//! (`dlq`) that inspect and replay the dead-letter queue.

pub mod acks;
pub mod apply;
pub mod backfill;
pub mod batch;
pub mod config;
pub mod console;
pub mod consumer;
pub mod dlq;
pub mod event;
pub mod faults;
pub mod metrics;
pub mod orgs;
pub mod progress;
pub mod prune;
pub mod queues;
pub mod reconcile;
pub mod reconcile_orgs;
pub mod shutdown;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use backon::{ExponentialBuilder, Retryable};
use migration::{MIGRATION_LOCK_KEY, Migrator, MigratorTrait};
use prometheus_client::registry::Registry;
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr};
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

pub use apply::Applier;
pub use config::{Config, ConfigError};
use consumer::{Consumer, ConsumerOptions};

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "cannot reach the database at DATABASE_URL: {0}; check that Postgres is up and the database exists"
    )]
    Database(#[source] DbErr),
    #[error("applying migrations failed: {0}")]
    Migrations(#[source] DbErr),
    #[error("cannot listen on {addr} (WORKER_ADDR): {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The pool settings of every clerk-sync process (worker, its CLI, the api): `max_connections`
/// (at least 1), 5 s to connect and to get a connection, no per-statement logs. One
/// connection is kept open; the api, which must start while Postgres is down, opens none ahead.
pub fn pool_options(url: &str, max_connections: u32) -> ConnectOptions {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(max_connections.max(1))
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        // sqlx pings a connection on every checkout by default: a second round trip per read
        // of the api and per batch of the worker. Only connections idle for a while are
        // checked (those a server restart, proxy or firewall may have dropped).
        .test_before_acquire_if_idle_for(Duration::from_secs(30))
        .sqlx_logging(false);
    options
}

/// Connects to Postgres with the configured pool size, retrying for a short while (a database
/// that starts alongside the worker).
pub async fn connect_database(
    url: &str,
    max_connections: u32,
) -> Result<DatabaseConnection, DbErr> {
    connect_with(pool_options(url, max_connections)).await
}

async fn connect_with(options: ConnectOptions) -> Result<DatabaseConnection, DbErr> {
    (|| Database::connect(options.clone()))
        .retry(
            ExponentialBuilder::new()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(2))
                .with_max_times(5),
        )
        .sleep(tokio::time::sleep)
        .notify(|error, delay| {
            tracing::warn!(error.message = %error, ?delay, "database not reachable yet; retrying");
        })
        .await
}

/// Applies pending migrations under a Postgres advisory lock, so that several workers starting at
/// once apply them one after the other.
pub async fn migrate(url: &str) -> Result<(), DbErr> {
    // One connection: the session-level lock and the migrations share it.
    let db = connect_database(url, 1).await?;
    db.execute_unprepared(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
        .await?;
    let result = Migrator::up(&db, None).await;
    let _ = db
        .execute_unprepared(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))
        .await;
    let _ = db.close().await;
    result
}

/// A worker ready to run: migrations applied, ops listener bound.
pub struct Application {
    listener: TcpListener,
    consumer: Arc<Consumer>,
    registry: Arc<Mutex<Registry>>,
    retention: Duration,
    reconciler: Option<Reconciler>,
    console: Option<Arc<console::Console>>,
}

/// The scheduled reconcile (`RECONCILE_INTERVAL`).
struct Reconciler {
    applier: Applier,
    clerk: calendar::clerk::ClerkClient,
    interval: Duration,
    database_url: telemetry::settings::DatabaseUrl,
    metrics: metrics::Metrics,
}

/// Key of the session-level advisory lock one reconciling worker holds ("clerkrec").
const RECONCILE_LOCK_KEY: i64 = 0x636c_6572_6b72_6563;

impl Application {
    /// Connects to Postgres, applies migrations, and binds `WORKER_ADDR`.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        migrate(config.database.url.expose())
            .await
            .map_err(|e| match e {
                DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => StartError::Database(e),
                other => StartError::Migrations(other),
            })?;
        let db = connect_database(
            config.database.url.expose(),
            config.database.max_connections,
        )
        .await
        .map_err(StartError::Database)?;
        let listener =
            TcpListener::bind(config.addr)
                .await
                .map_err(|source| StartError::Listen {
                    addr: config.addr,
                    source,
                })?;
        if config.clerk.is_none() || config.token_cipher.is_none() {
            tracing::warn!(
                "CLERK_SECRET_KEY or TOKEN_ENCRYPTION_KEY is not set: calendar connections are \
                 recorded as not_configured and no tokens are stored"
            );
        }
        let mut registry = Registry::default();
        let metrics = metrics::Metrics::register(&mut registry);
        let registry = Arc::new(Mutex::new(registry));
        let console = config.console_users.map(|users| {
            Arc::new(console::Console::new(
                users,
                db.clone(),
                config.broker.clone(),
                config.topology.clone(),
                registry.clone(),
                metrics.progress.clone(),
            ))
        });
        let reconciler = match (config.reconcile_interval, &config.clerk) {
            (Some(interval), Some(clerk)) => Some(Reconciler {
                applier: Applier {
                    db: db.clone(),
                    clerk: Some(clerk.clone()),
                    cipher: config.token_cipher.clone(),
                    in_process_retries: config.in_process_retries,
                    store_private_metadata: config.sync_private_metadata,
                },
                clerk: clerk.clone(),
                interval,
                database_url: config.database.url.clone(),
                metrics: metrics.clone(),
            }),
            _ => None,
        };
        let consumer = Arc::new(Consumer {
            applier: Applier {
                db,
                clerk: config.clerk,
                cipher: config.token_cipher,
                in_process_retries: config.in_process_retries,
                store_private_metadata: config.sync_private_metadata,
            },
            broker: config.broker,
            topology: config.topology,
            slow_path: tokio::sync::Semaphore::new(consumer::SLOW_PATH_CONCURRENCY),
            options: ConsumerOptions {
                prefetch: config.prefetch,
                concurrency: config.concurrency,
                batch_size: config.batch_size,
                max_attempts: config.max_attempts,
            },
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
        });
        Ok(Self {
            listener,
            consumer,
            registry,
            retention: config.processed_events_retention,
            reconciler,
            console,
        })
    }

    /// The ops listener's port.
    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// Consumes until `shutdown` completes; then stops consuming, finishes and acks in-flight
    /// events, and returns.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) {
        let (trigger, stop) = shutdown::channel();
        let ready = self.consumer.ready.clone();
        let readiness: telemetry::ops::Readiness = Arc::new(move || ready.load(Ordering::SeqCst));
        let registry = self.registry.clone();
        let console = self.console.clone();
        // Health, readiness and metrics (GET); the console under /console when CONSOLE_USERS
        // is set (it reads request bodies, with a size limit), else 404 there like anywhere.
        let handler = move |request: http::Request<hyper::body::Incoming>, _id| {
            let readiness = readiness.clone();
            let registry = registry.clone();
            let console = console.clone();
            async move {
                let path = request.uri().path();
                if path == "/console" || path.starts_with("/console/") {
                    return match console {
                        Some(console) => console.handle(request).await,
                        None => telemetry::ops::text(http::StatusCode::NOT_FOUND, "not found\n"),
                    };
                }
                telemetry::ops::endpoints(
                    request.method(),
                    request.uri().path(),
                    &readiness,
                    &registry,
                )
                .unwrap_or_else(|| telemetry::ops::text(http::StatusCode::NOT_FOUND, "not found\n"))
            }
        };
        let ops_stop = {
            let mut stop = stop.clone();
            async move { stop.recv().await }
        };
        let ops = tokio::spawn(telemetry::ops::serve(
            self.listener,
            handler,
            telemetry::ops::ServerLimits::default(),
            ops_stop,
            Duration::from_secs(2),
        ));
        let sampler = self
            .console
            .clone()
            .map(|console| tokio::spawn(console.sample_rates(stop.clone())));
        let pruner = tokio::spawn(prune_processed_events(
            self.consumer.applier.db.clone(),
            self.retention,
            stop.clone(),
        ));
        let reconciler = self
            .reconciler
            .map(|reconciler| tokio::spawn(reconcile_on_schedule(reconciler, stop.clone())));
        let consumer = tokio::spawn(self.consumer.clone().run(stop));
        shutdown.await;
        trigger.fire();
        let _ = consumer.await;
        let _ = pruner.await;
        if let Some(sampler) = sampler {
            let _ = sampler.await;
        }
        if let Some(reconciler) = reconciler {
            let _ = reconciler.await;
        }
        let _ = ops.await;
        let _ = self.consumer.applier.db.clone().close().await;
        tracing::info!("worker stopped");
    }
}

/// Reconciles every `interval` (the first time one interval after start), in one worker at a
/// time: each run takes a session-level advisory lock on a connection of its own and skips when
/// another worker holds it. A run stopped by shutdown resumes from its checkpoint next time.
async fn reconcile_on_schedule(reconciler: Reconciler, mut stop: Shutdown) {
    let mut tick = tokio::time::interval(reconciler.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            () = stop.recv() => return,
            _ = tick.tick() => {}
        }
        let lock = match connect_database(reconciler.database_url.expose(), 1).await {
            Ok(lock) => lock,
            Err(error) => {
                tracing::warn!(error.message = %error, "cannot reach the database to reconcile; next time");
                continue;
            }
        };
        let got = lock
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                format!("SELECT pg_try_advisory_lock({RECONCILE_LOCK_KEY}) AS got"),
            ))
            .await
            .ok()
            .flatten()
            .and_then(|row| row.try_get::<bool>("", "got").ok())
            .unwrap_or(false);
        if got {
            tokio::select! {
                () = stop.recv() => {}
                () = reconcile_once(&reconciler) => {}
            }
            let _ = lock
                .execute_unprepared(&format!("SELECT pg_advisory_unlock({RECONCILE_LOCK_KEY})"))
                .await;
        } else {
            tracing::debug!("another worker is reconciling");
        }
        let _ = lock.close().await;
    }
}

async fn reconcile_once(reconciler: &Reconciler) {
    tracing::info!("reconcile started");
    let options = reconcile::ReconcileOptions::default();
    match reconcile::run(&reconciler.applier, &reconciler.clerk, &options, |_, _| {}).await {
        Ok(report) => {
            let metrics = &reconciler.metrics;
            for (kind, drift) in [
                ("missing", &report.missing),
                ("older", &report.older),
                ("connections", &report.connections),
                ("gone", &report.gone),
            ] {
                metrics
                    .reconcile_drift
                    .get_or_create(&metrics::DriftLabels { kind })
                    .inc_by(drift.count);
            }
            if report.failed.is_empty() {
                metrics
                    .reconcile_last_success
                    .set(chrono::Utc::now().timestamp());
                tracing::info!(
                    scanned = report.scanned,
                    repaired = report.drift(),
                    "reconcile done"
                );
            } else {
                tracing::warn!(
                    scanned = report.scanned,
                    repaired = report.drift(),
                    failed = report.failed.len(),
                    "reconcile done, but some users could not be repaired (`worker reconcile --dry-run` lists them)"
                );
            }
        }
        Err(error) => {
            tracing::error!(error.message = %error, "reconcile failed");
        }
    }
    reconcile_organizations_once(reconciler).await;
}

/// The scheduled reconcile of organizations and memberships, after the users'.
async fn reconcile_organizations_once(reconciler: &Reconciler) {
    let options = reconcile::ReconcileOptions::default();
    match reconcile_orgs::run(&reconciler.applier, &reconciler.clerk, &options).await {
        Ok(report) => {
            let metrics = &reconciler.metrics;
            for (kind, drift) in [
                ("organization_missing", &report.organizations.missing),
                ("organization_older", &report.organizations.older),
                ("organization_gone", &report.organizations.gone),
                ("membership_missing", &report.memberships.missing),
                ("membership_older", &report.memberships.older),
                ("membership_gone", &report.memberships.gone),
            ] {
                metrics
                    .reconcile_drift
                    .get_or_create(&metrics::DriftLabels { kind })
                    .inc_by(drift.count);
            }
            tracing::info!(
                organizations = report.scanned_organizations,
                memberships = report.scanned_memberships,
                repaired = report.drift(),
                failed = report.failed.len(),
                "reconcile of organizations done"
            );
        }
        Err(error) => {
            tracing::error!(error.message = %error, "reconcile of organizations failed");
        }
    }
}

/// Deletes Svix ids older than `retention`, every [`prune::interval`].
async fn prune_processed_events(db: DatabaseConnection, retention: Duration, mut stop: Shutdown) {
    let mut tick = tokio::time::interval(prune::interval(retention));
    loop {
        tokio::select! {
            () = stop.recv() => return,
            _ = tick.tick() => {}
        }
        let pruning = prune::prune_expired(&db, retention, prune::PruneOptions::default());
        tokio::select! {
            () = stop.recv() => return,
            result = pruning => match result {
                Ok(report) => tracing::debug!(rows = report.deleted, batches = report.batches, skipped = report.skipped, "pruned processed_events"),
                Err(error) => tracing::warn!(error.message = %error, "pruning processed_events failed"),
            },
        }
    }
}
