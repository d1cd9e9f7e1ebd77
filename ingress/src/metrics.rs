//! The ingress's Prometheus metrics.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

/// Label of `webhooks_received_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `accepted`, or the error code (`bad_signature`, `broker_unavailable`, …).
    pub outcome: &'static str,
}

/// Counters and histograms the handler updates.
pub struct Metrics {
    /// Webhooks received by outcome.
    pub received: Family<Outcome, Counter>,
    /// Time from the start of the publish to the broker's confirm.
    pub publish_seconds: Histogram,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            received: Family::default(),
            publish_seconds: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        };
        registry.register(
            "clerk_sync_webhooks_received",
            "Webhooks received, by outcome",
            metrics.received.clone(),
        );
        registry.register(
            "clerk_sync_publish_duration_seconds",
            "Time to publish a webhook and get the broker's confirm",
            metrics.publish_seconds.clone(),
        );
        metrics
    }
}
