//! The worker: consumes the raw Clerk events the ingress published and applies them to Postgres
//! exactly once in effect through the sync core (`store`), with retries and dead-lettering
//! ([`consume`]); the ops tools beside it ([`ops`]: the dead-letter queue, queue migrations, the
//! console); and the repairs that ask Clerk ([`repair`]: backfill, reconcile, scheduled or not).

pub mod config;
pub mod consume;
pub mod metrics;
pub mod ops;
pub mod repair;
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

use prometheus_client::registry::Registry;
use sea_orm::{DbErr, TransactionTrait};
use settings::{DatabaseSettings, DatabaseUrl};
use store::{
    Applier,
    pool::{Pooler, connect_database},
};
use tokio::net::TcpListener;

use crate::{
    consume::{Consumer, ConsumerOptions, prune::prune_processed_events},
    ops::console,
    repair::scheduled::{
        HealthChecker, Reconciler, check_connections_on_schedule, reconcile_on_schedule,
    },
};

pub use config::{Config, ConfigError};

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

/// Applies pending migrations, all in one transaction under a transaction-scoped advisory lock
/// ([`migration::up_in_transaction`]), so that several workers starting at once apply them one
/// after the other. On `direct_url` (`DATABASE_DIRECT_URL`) when set, else on the database's
/// own URL through whatever pooler `database` names: nothing of it outlives the transaction.
pub async fn migrate(
    database: &DatabaseSettings,
    direct_url: Option<&DatabaseUrl>,
) -> Result<(), DbErr> {
    let db = match direct_url {
        Some(url) => connect_database(url.expose(), 1, Pooler::None).await?,
        None => connect_database(database.url.expose(), 1, database.pooler).await?,
    };
    let result = async {
        let txn = db.begin().await?;
        migration::up_in_transaction(&txn).await?;
        txn.commit().await
    }
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
    checker: Option<HealthChecker>,
    console: Option<Arc<console::Console>>,
}

impl Application {
    /// Connects to Postgres, applies migrations, and binds `WORKER_ADDR`.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        migrate(&config.database, config.direct_database_url.as_ref())
            .await
            .map_err(|e| match e {
                DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => StartError::Database(e),
                other => StartError::Migrations(other),
            })?;
        let db = connect_database(
            config.database.url.expose(),
            config.database.max_connections,
            config.database.pooler,
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
        if config.applier.clerk.is_none() || config.applier.cipher.is_none() {
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
                config.trace_url_template.clone(),
            ))
        });
        let reconciler = match (config.reconcile_interval, &config.applier.clerk) {
            (Some(interval), Some(clerk)) => Some(Reconciler {
                applier: Applier::new(db.clone(), &config.applier),
                clerk: clerk.clone(),
                interval,
                metrics: metrics.clone(),
            }),
            _ => None,
        };
        let checker = match (
            config.calendar_health,
            &config.applier.clerk,
            &config.applier.cipher,
        ) {
            (Some(schedule), Some(clerk), Some(cipher)) => Some(HealthChecker {
                db: db.clone(),
                cipher: cipher.clone(),
                clerk: clerk.clone(),
                interval: schedule.interval,
                budget: schedule.budget,
                metrics: metrics.clone(),
            }),
            _ => None,
        };
        let consumer = Arc::new(Consumer {
            applier: Applier::new(db, &config.applier),
            broker: config.broker,
            topology: config.topology,
            slow_path: tokio::sync::Semaphore::new(consume::SLOW_PATH_CONCURRENCY),
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
            checker,
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
        let checker = self
            .checker
            .map(|checker| tokio::spawn(check_connections_on_schedule(checker, stop.clone())));
        let counter = tokio::spawn(repair::health::count_every_minute(
            self.consumer.applier.db.clone(),
            self.consumer.metrics.clone(),
            stop.clone(),
        ));
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
        if let Some(checker) = checker {
            let _ = checker.await;
        }
        let _ = counter.await;
        let _ = ops.await;
        let _ = self.consumer.applier.db.clone().close().await;
        tracing::info!("worker stopped");
    }
}
