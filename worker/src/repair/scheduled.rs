//! The scheduled reconcile (`RECONCILE_INTERVAL`): users, then organizations and memberships,
//! every interval, in one worker at a time.

use std::time::Duration;

use clerk_api::ClerkClient;
use sea_orm::ConnectionTrait;
use settings::DatabaseUrl;
use store::Applier;

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
/// time: each run takes a session-level advisory lock on a connection of its own and skips when
/// another worker holds it. A run stopped by shutdown resumes from its checkpoint next time.
pub(crate) async fn reconcile_on_schedule(reconciler: Reconciler, mut stop: Shutdown) {
    let mut tick = tokio::time::interval(reconciler.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            () = stop.recv() => return,
            _ = tick.tick() => {}
        }
        let lock = match store::pool::connect_database(reconciler.database_url.expose(), 1).await {
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
