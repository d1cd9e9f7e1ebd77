//! What runs on a schedule, one worker at a time: the reconcile (`RECONCILE_INTERVAL`: users,
//! then organizations and memberships) and the calendar health check
//! (`CALENDAR_HEALTH_INTERVAL`).

use std::time::Duration;

use clerk_api::ClerkClient;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use settings::DatabaseUrl;
use store::{Applier, crypto::TokenCipher};

use super::ReconcileOptions;
use crate::{
    metrics::{DriftLabels, Metrics},
    shutdown::Shutdown,
};

/// The scheduled reconcile (`RECONCILE_INTERVAL`).
pub(crate) struct Reconciler {
    pub(crate) applier: Applier,
    pub(crate) clerk: ClerkClient,
    pub(crate) interval: Duration,
    pub(crate) database_url: DatabaseUrl,
    pub(crate) metrics: Metrics,
}

/// Key of the session-level advisory lock one reconciling worker holds ("clerkrec").
const RECONCILE_LOCK_KEY: i64 = 0x636c_6572_6b72_6563;

/// Reconciles every `interval` (the first time one interval after start), in one worker at a
/// time. A run stopped by shutdown resumes from its checkpoint next time.
pub(crate) async fn reconcile_on_schedule(reconciler: Reconciler, stop: Shutdown) {
    let schedule = Schedule {
        what: "reconcile",
        interval: reconciler.interval,
        database_url: &reconciler.database_url,
        lock_key: RECONCILE_LOCK_KEY,
    };
    schedule.run(stop, || reconcile_once(&reconciler)).await;
}

/// The calendar connection health check on its schedule (`CALENDAR_HEALTH_INTERVAL`).
pub(crate) struct HealthChecker {
    pub(crate) db: DatabaseConnection,
    pub(crate) cipher: TokenCipher,
    pub(crate) clerk: ClerkClient,
    pub(crate) interval: Duration,
    pub(crate) budget: u64,
    pub(crate) database_url: DatabaseUrl,
    pub(crate) metrics: Metrics,
}

/// Key of the session-level advisory lock one checking worker holds ("clerkchk").
const HEALTH_LOCK_KEY: i64 = 0x636c_6572_6b63_686b;

/// Checks calendar connections every `interval` (the first time one interval after start), in
/// one worker at a time, never more than the budget of calls to Clerk a run.
pub(crate) async fn check_connections_on_schedule(checker: HealthChecker, stop: Shutdown) {
    let schedule = Schedule {
        what: "calendar health check",
        interval: checker.interval,
        database_url: &checker.database_url,
        lock_key: HEALTH_LOCK_KEY,
    };
    schedule.run(stop, || check_once(&checker)).await;
}

async fn check_once(checker: &HealthChecker) {
    let options = super::health::CheckOptions {
        budget: checker.budget,
        per_second: super::health::rate_for(checker.budget, checker.interval),
        clerk_user_id: None,
    };
    let run = super::health::run(
        &checker.db,
        &checker.cipher,
        &checker.clerk,
        &options,
        Some(&checker.metrics),
    );
    match run.await {
        Ok(report) => tracing::info!(checked = report.checked, "calendar health check done"),
        Err(error) => tracing::error!(error.message = %error, "calendar health check failed"),
    }
}

/// A job run every interval by one worker at a time.
struct Schedule<'a> {
    what: &'static str,
    interval: Duration,
    database_url: &'a DatabaseUrl,
    lock_key: i64,
}

impl Schedule<'_> {
    /// Runs `job` every interval (the first time one interval after start) until `stop`: each
    /// run takes a session-level advisory lock on a connection of its own and is skipped when
    /// another worker holds it.
    async fn run<F, Fut>(&self, mut stop: Shutdown, mut job: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                () = stop.recv() => return,
                _ = tick.tick() => {}
            }
            let lock = match store::pool::connect_database(self.database_url.expose(), 1).await {
                Ok(lock) => lock,
                Err(error) => {
                    tracing::warn!(what = self.what, error.message = %error, "cannot reach the database for a scheduled run; next time");
                    continue;
                }
            };
            if try_lock(&lock, self.lock_key).await {
                tokio::select! {
                    () = stop.recv() => {}
                    () = job() => {}
                }
                let _ = lock
                    .execute_unprepared(&format!("SELECT pg_advisory_unlock({})", self.lock_key))
                    .await;
            } else {
                tracing::debug!(what = self.what, "another worker is running it");
            }
            let _ = lock.close().await;
        }
    }
}

async fn try_lock(lock: &DatabaseConnection, key: i64) -> bool {
    lock.query_one_raw(sea_orm::Statement::from_string(
        sea_orm::DbBackend::Postgres,
        format!("SELECT pg_try_advisory_lock({key}) AS got"),
    ))
    .await
    .ok()
    .flatten()
    .and_then(|row| row.try_get::<bool>("", "got").ok())
    .unwrap_or(false)
}

async fn reconcile_once(reconciler: &Reconciler) {
    tracing::info!("reconcile started");
    let options = ReconcileOptions::default();
    match super::users::run(&reconciler.applier, &reconciler.clerk, &options, |_, _| {}).await {
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
                    .get_or_create(&DriftLabels { kind })
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
    let options = ReconcileOptions::default();
    match super::organizations::run(&reconciler.applier, &reconciler.clerk, &options).await {
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
                    .get_or_create(&DriftLabels { kind })
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
