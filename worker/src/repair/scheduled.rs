//! The scheduled reconcile (`RECONCILE_INTERVAL`): users, then organizations and memberships,
//! every interval, in one worker at a time.

use std::time::Duration;

use clerk_api::ClerkClient;
use store::{
    Applier,
    lease::{Run, Schedule},
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
/// first worker started), in one worker at a time: a lease in the database
/// ([`store::lease::Schedule`]) says who runs it and when the last run started, so it works
/// through a transaction-mode pooler and a worker that dies mid-run frees it within a minute. A
/// run stopped by shutdown is due again at once, and resumes from its checkpoint.
pub(crate) async fn reconcile_on_schedule(reconciler: Reconciler, mut stop: Shutdown) {
    let schedule = Schedule::new(RECONCILE_LEASE, reconciler.interval);
    let db = reconciler.applier.db.clone();
    schedule
        .run_until_stopped(
            &db,
            || reconcile_once(&reconciler),
            |turn| match turn {
                Ok(Run::Busy) => tracing::debug!("another worker is reconciling"),
                Ok(Run::Lost) => tracing::warn!("reconcile stopped: its lease could not be renewed"),
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(error.message = %error, "cannot reach the database to reconcile; next time");
                }
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
