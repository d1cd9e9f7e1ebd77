//! What ingress, worker and the DLQ commands share about RabbitMQ: the queue topology and its
//! idempotent declaration, connecting to one of several nodes with backoff, and a supervised,
//! self-healing publisher that only reports success on a broker confirm.

mod connect;
mod publisher;
mod topology;
pub mod trace_context;
mod version;

pub use connect::{
    BrokerConfig, BrokerError, QueueDepth, close_channels, close_gracefully, connect_first,
    connect_with_backoff, queue_depth, redact_url, wait_until_closed,
};
pub use publisher::{PublishError, Publisher, PublisherOptions, publish_confirmed};
pub use topology::{
    DEAD_ROUTING_KEY, EVENTS_ROUTING_KEY, Topology, declare_queue, delivery_limit_argument, headers,
};
pub use version::{BrokerVersion, detect as detect_version};

/// Re-exported so that the crates using this one name the same lapin.
pub use lapin;
