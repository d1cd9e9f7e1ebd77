//! What runs on a schedule, one worker at a time: the reconcile (`RECONCILE_INTERVAL`: users,
//! then organizations and memberships) and the calendar health check
//! (`CALENDAR_HEALTH_INTERVAL`).

use std::{future::Future, time::Duration};

use clerk_api::ClerkClient;
use store::{
    Applier,
    crypto::TokenCipher,
    lease::{Run, Schedule},
    pool::Pool,
};

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
    pub(crate) metrics: Metrics,
}

/// The name of the reconcile's lease (a row of `leases`).
pub const RECONCILE_LEASE: &str = "reconcile";

/// Reconciles once per `interval` across all workers (the first time one interval after the
/// first worker started), in one worker at a time. A run stopped by shutdown is due again at
/// once, and resumes from its checkpoint.
pub(crate) async fn reconcile_on_schedule(reconciler: Reconciler, stop: Shutdown) {
    let db = reconciler.applier.db.clone();
    let schedule = Schedule::new(RECONCILE_LEASE, reconciler.interval);
    run_on_schedule(
        &schedule,
        "reconcile",
        &db,
        || reconcile_once(&reconciler),
        stop,
    )
    .await;
}

/// The calendar connection health check on its schedule (`CALENDAR_HEALTH_INTERVAL`).
pub(crate) struct HealthChecker {
    pub(crate) db: Pool,
    pub(crate) cipher: TokenCipher,
    pub(crate) clerk: ClerkClient,
    pub(crate) interval: Duration,
    pub(crate) budget: u64,
    pub(crate) metrics: Metrics,
}

/// The name of the health check's lease (a row of `leases`).
pub const HEALTH_LEASE: &str = "calendar_health";

/// Checks calendar connections once per `interval` across all workers (the first time one
/// interval after the first worker started), in one worker at a time, never more than the
/// budget of calls to Clerk a run.
pub(crate) async fn check_connections_on_schedule(checker: HealthChecker, stop: Shutdown) {
    let schedule = Schedule::new(HEALTH_LEASE, checker.interval);
    run_on_schedule(
        &schedule,
        "calendar health check",
        &checker.db,
        || check_once(&checker),
        stop,
    )
    .await;
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

/// Runs `job` on `schedule` until `stop`: a lease in the database ([`store::lease::Schedule`])
/// says which worker runs it and when the last run started, so it runs once per interval
/// however many workers there are, works through a transaction-mode pooler (unlike a
/// session-level advisory lock, which such a pooler can leave held), and a worker that dies
/// mid-run frees it within a minute.
async fn run_on_schedule<F, Fut>(
    schedule: &Schedule,
    what: &'static str,
    db: &Pool,
    job: F,
    mut stop: Shutdown,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    schedule
        .run_until_stopped(
            db,
            job,
            |turn| match turn {
                Ok(Run::Busy) => tracing::debug!(what, "another worker is running it"),
                Ok(Run::Lost) => tracing::warn!(what, "stopped: its lease could not be renewed"),
                Ok(_) => {}
                Err(error) => tracing::warn!(
                    what,
                    error.message = %error,
                    "cannot reach the database for a scheduled run; next time"
                ),
            },
            async move { stop.recv().await },
        )
        .await;
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
