//! The worker's Prometheus metrics.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Labels of `clerk_sync_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// The Clerk event type if it is one the worker handles (`user.created`, …), `unparseable`
    /// when the body has none, else `other`: a body's `type` is never a label value (see
    /// [`event_type_label`]).
    pub event_type: &'static str,
    /// `applied`, `skipped_stale`, `skipped_deleted`, `duplicate`, `ignored`, `retried`,
    /// `dead_lettered`.
    pub outcome: &'static str,
}

/// Counters and histograms of the consumer.
#[derive(Clone)]
pub struct Metrics {
    /// Events consumed, by type and outcome.
    pub events: Family<EventLabels, Counter>,
    /// Time to apply one event (transaction included).
    pub apply_seconds: Histogram,
    /// Time from the ingress's accept to the commit.
    pub lag_seconds: Histogram,
    /// Events per committed batch.
    pub batch_size: Histogram,
    /// Batches that could not be applied together and were applied event by event.
    pub batch_fallbacks: Counter,
    /// Drift the scheduled reconcile found and repaired, by kind.
    pub reconcile_drift: Family<DriftLabels, Counter>,
    /// When a scheduled reconcile last completed without failures (seconds since the epoch).
    pub reconcile_last_success: Gauge,
    /// The newest applied event's lag and when it was applied (for the console's overview; not
    /// exported: the lag histogram is).
    pub progress: Progress,
    /// Calendar connections by provider and status, as stored (refreshed every minute).
    pub calendar_connections: Family<ConnectionLabels, Gauge>,
    /// Checks of calendar connections with Clerk (the scheduled health check), by outcome.
    pub calendar_checks: Family<CheckLabels, Counter>,
}

/// Labels of `clerk_sync_calendar_connections`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// `google` or `microsoft`.
    pub provider: &'static str,
    /// `connected`, `needs_reconnect` or `unavailable`.
    pub status: &'static str,
}

/// Labels of `clerk_sync_calendar_checks_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    /// `google` or `microsoft`.
    pub provider: &'static str,
    /// `connected`, `needs_reconnect` or `unavailable`.
    pub outcome: &'static str,
}

/// How far behind this worker is: the lag of the event it applied last, and when.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    last_lag_ms: std::sync::Arc<std::sync::atomic::AtomicI64>,
    last_applied_ms: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl Progress {
    /// Records an event applied at `now_ms`, `lag_ms` after the ingress accepted it.
    pub fn applied(&self, now_ms: i64, lag_ms: i64) {
        use std::sync::atomic::Ordering;
        self.last_lag_ms.store(lag_ms, Ordering::Relaxed);
        self.last_applied_ms.store(now_ms, Ordering::Relaxed);
    }

    /// `(lag, applied at)` in ms of the last applied event; `None` before the first.
    pub fn last(&self) -> Option<(i64, i64)> {
        use std::sync::atomic::Ordering;
        let at = self.last_applied_ms.load(Ordering::Relaxed);
        (at > 0).then(|| (self.last_lag_ms.load(Ordering::Relaxed), at))
    }
}

/// Labels of `clerk_sync_reconcile_drift_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    /// `missing`, `older`, `connections` or `gone` (users); `organization_missing`,
    /// `organization_older`, `organization_gone`, `membership_missing`, `membership_older` or
    /// `membership_gone`.
    pub kind: &'static str,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        telemetry::traces::register_metrics(registry);
        let metrics = Self {
            events: Family::default(),
            apply_seconds: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            lag_seconds: Histogram::new([
                0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                300.0, 1800.0,
            ]),
            batch_size: Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            batch_fallbacks: Counter::default(),
            reconcile_drift: Family::default(),
            reconcile_last_success: Gauge::default(),
            progress: Progress::default(),
            calendar_connections: Family::default(),
            calendar_checks: Family::default(),
        };
        registry.register(
            "clerk_sync_calendar_connections",
            "Calendar connections by provider and status (connected, needs_reconnect, unavailable)",
            metrics.calendar_connections.clone(),
        );
        // Every series from the start (at 0): dashboards and alerts see the family before the
        // first check runs.
        for provider in ["google", "microsoft"] {
            for outcome in ["connected", "needs_reconnect", "unavailable"] {
                let _ = metrics
                    .calendar_checks
                    .get_or_create(&CheckLabels { provider, outcome });
            }
        }
        registry.register(
            "clerk_sync_calendar_checks",
            "Calendar connections checked with Clerk by the health check, by provider and outcome",
            metrics.calendar_checks.clone(),
        );
        registry.register(
            "clerk_sync_reconcile_drift",
            "Drift found and repaired by the scheduled reconcile, by kind",
            metrics.reconcile_drift.clone(),
        );
        registry.register(
            "clerk_sync_reconcile_last_success_timestamp_seconds",
            "When the scheduled reconcile last completed without failures",
            metrics.reconcile_last_success.clone(),
        );
        registry.register(
            "clerk_sync_events",
            "Events consumed, by type and outcome",
            metrics.events.clone(),
        );
        registry.register(
            "clerk_sync_apply_duration_seconds",
            "Time to apply one event to Postgres",
            metrics.apply_seconds.clone(),
        );
        registry.register(
            "clerk_sync_event_lag_seconds",
            "Time from the ingress accepting an event to its commit",
            metrics.lag_seconds.clone(),
        );
        registry.register(
            "clerk_sync_batch_size",
            "Events applied per committed batch",
            metrics.batch_size.clone(),
        );
        registry.register(
            "clerk_sync_batch_fallbacks",
            "Batches that failed as a whole and were applied event by event",
            metrics.batch_fallbacks.clone(),
        );
        metrics
    }

    /// Counts one event.
    pub fn count(&self, event_type: &str, outcome: &'static str) {
        self.events
            .get_or_create(&EventLabels {
                event_type: event_type_label(event_type),
                outcome,
            })
            .inc();
    }
}

/// Event types that are label values of their own; every other type counts as `other`. Only
/// types from this fixed list can become series, so no payload can grow `/metrics`.
pub const LABELLED_EVENT_TYPES: [&str; 13] = [
    "user.created",
    "user.updated",
    "user.deleted",
    "organization.created",
    "organization.updated",
    "organization.deleted",
    "organizationMembership.created",
    "organizationMembership.updated",
    "organizationMembership.deleted",
    // Acknowledged and counted, not stored.
    "organizationInvitation.created",
    "organizationInvitation.accepted",
    "organizationInvitation.revoked",
    "unparseable",
];

/// The `event_type` label of an event type as read from a body.
pub fn event_type_label(event_type: &str) -> &'static str {
    LABELLED_EVENT_TYPES
        .iter()
        .find(|known| **known == event_type)
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_labels_come_from_a_fixed_set() {
        assert_eq!(event_type_label("user.updated"), "user.updated");
        assert_eq!(event_type_label("unparseable"), "unparseable");
        assert_eq!(event_type_label("session.created"), "other");
        assert_eq!(event_type_label("user.updated\"} 1\nevil"), "other");
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        for i in 0..500 {
            metrics.count(&format!("random.{i}"), "ignored");
        }
        metrics.count("user.created", "applied");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("clerk_sync_events_total{"))
            .collect();
        assert_eq!(
            series.len(),
            2,
            "one series for all unknown types: {series:?}"
        );
    }
}
