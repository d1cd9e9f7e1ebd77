//! Queue names and their declaration.
//!
//! ```text
//! exchange {prefix} (direct)
//!   "events"        -> {prefix}.events        quorum; the worker consumes it
//!   "retry.<delay>" -> {prefix}.retry.<delay> quorum, x-message-ttl, dead-letters back to "events"
//!   "dead"          -> {prefix}.dead          quorum; the dead-letter queue that ops replay
//! ```
//!
//! Declaring is idempotent: every process declares the whole topology at connect time with the same
//! arguments, so the start order of ingress and worker does not matter.

use std::time::Duration;

use lapin::{
    Channel, Connection, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use crate::{BrokerError, BrokerVersion};

/// Names of the AMQP headers clerk-sync writes. None starts with `x-`: RabbitMQ reserves those,
/// and 3.13+ changed how it treats some of them.
pub mod headers {
    /// The Svix message id (`svix-id`), also the AMQP `message_id`.
    pub const SVIX_ID: &str = "svix-id";
    /// The Svix attempt timestamp, as received.
    pub const SVIX_TIMESTAMP: &str = "svix-timestamp";
    /// The Svix signature header, as received (lets anyone re-verify the stored body).
    pub const SVIX_SIGNATURE: &str = "svix-signature";
    /// Milliseconds since the epoch when the ingress accepted the webhook.
    pub const RECEIVED_AT: &str = "clerk-sync-received-at";
    /// How many times the worker has tried this event and failed.
    pub const ATTEMPTS: &str = "clerk-sync-attempts";
    /// Why the last attempt failed.
    pub const REASON: &str = "clerk-sync-reason";
    /// Milliseconds since the epoch of the first failure.
    pub const FIRST_FAILURE_AT: &str = "clerk-sync-first-failure-at";
    /// Milliseconds since the epoch of the last failure.
    pub const LAST_FAILURE_AT: &str = "clerk-sync-last-failure-at";
    /// The routing key the event was originally published with.
    pub const ORIGINAL_ROUTING_KEY: &str = "clerk-sync-original-routing-key";
    /// The Clerk event type, when the worker could read it.
    pub const EVENT_TYPE: &str = "clerk-sync-event-type";
    /// W3C trace context: the trace and the span that published the message
    /// (`00-<trace id>-<span id>-<flags>`). Retries and replays copy it with the other headers.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace context: vendor-specific trace state, carried beside [`TRACEPARENT`].
    pub const TRACESTATE: &str = "tracestate";

    use lapin::{
        BasicProperties,
        types::{AMQPValue, FieldTable},
    };

    /// The Svix id of a message: its AMQP `message_id` (set by the ingress), else the
    /// [`SVIX_ID`] header. The one place it is read from a message.
    pub fn svix_id(properties: &BasicProperties) -> Option<String> {
        properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .or_else(|| get_str(properties.headers().as_ref(), SVIX_ID))
    }

    /// An integer header, whatever integer type the sender used.
    pub fn get_i64(table: Option<&FieldTable>, name: &str) -> Option<i64> {
        match table?.inner().get(name)? {
            AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
            AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
            AMQPValue::ShortInt(v) => Some(i64::from(*v)),
            AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
            AMQPValue::LongInt(v) => Some(i64::from(*v)),
            AMQPValue::LongUInt(v) => Some(i64::from(*v)),
            AMQPValue::LongLongInt(v) => Some(*v),
            AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
            _ => None,
        }
    }

    /// A string header.
    pub fn get_str(table: Option<&FieldTable>, name: &str) -> Option<String> {
        match table?.inner().get(name)? {
            AMQPValue::LongString(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            AMQPValue::ShortString(v) => Some(v.as_str().to_owned()),
            _ => None,
        }
    }

    /// The trace id (32 lowercase hex digits) of a valid W3C [`TRACEPARENT`] header; `None`
    /// when there is none or it is malformed.
    pub fn trace_id(table: Option<&FieldTable>) -> Option<String> {
        get_str(table, TRACEPARENT)
            .as_deref()
            .and_then(traceparent_trace_id)
            .map(str::to_owned)
    }

    /// The trace id of a `traceparent` value, as W3C Trace Context parses it: a version of two
    /// lowercase hex digits other than `ff`; a trace id of 32 and a parent id of 16, neither all
    /// zeros; flags of 2. Version `00` has exactly these four fields; a later version may
    /// append more after a `-`.
    fn traceparent_trace_id(value: &str) -> Option<&str> {
        let mut fields = value.split('-');
        let version = fields.next()?;
        let trace_id = fields.next()?;
        let parent_id = fields.next()?;
        let flags = fields.next()?;
        let valid = is_hex(version, 2)
            && version != "ff"
            && (version != "00" || fields.next().is_none())
            && is_hex(trace_id, 32)
            && !is_zero(trace_id)
            && is_hex(parent_id, 16)
            && !is_zero(parent_id)
            && is_hex(flags, 2);
        valid.then_some(trace_id)
    }

    /// Whether `s` is `len` lowercase hex digits.
    fn is_hex(s: &str, len: usize) -> bool {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }

    fn is_zero(s: &str) -> bool {
        s.bytes().all(|b| b == b'0')
    }

    /// Sets a string header.
    pub fn set_str(table: &mut FieldTable, name: &str, value: &str) {
        table.insert(name.into(), AMQPValue::LongString(value.into()));
    }

    /// Sets an integer header.
    pub fn set_i64(table: &mut FieldTable, name: &str, value: i64) {
        table.insert(name.into(), AMQPValue::LongLongInt(value));
    }
}

/// The names and arguments of clerk-sync's exchange and queues, derived from one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
    /// Delays of the retry tiers, shortest first.
    retry_delays: Vec<Duration>,
    /// Quorum group size for new queues; `None` leaves RabbitMQ's default (every cluster member).
    replicas: Option<u32>,
}

/// Routing key of the main queue.
pub const EVENTS_ROUTING_KEY: &str = "events";
/// Routing key of the dead-letter queue.
pub const DEAD_ROUTING_KEY: &str = "dead";

impl Topology {
    /// Reads `QUEUE_PREFIX` (default `clerk_sync`), `QUEUE_REPLICAS` (default: the broker's) and
    /// `RETRY_DELAYS` (default `5s,30s,5m`) through `lookup`.
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<Self, BrokerError> {
        let prefix = lookup("QUEUE_PREFIX").unwrap_or_else(|| "clerk_sync".into());
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(BrokerError::setting(
                "QUEUE_PREFIX",
                "use letters, digits, '.', '_' or '-'",
            ));
        }
        let replicas = match lookup("QUEUE_REPLICAS") {
            None => None,
            Some(v) => Some(
                v.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| {
                        BrokerError::setting("QUEUE_REPLICAS", "must be a whole number >= 1")
                    })?,
            ),
        };
        let retry_delays = match lookup("RETRY_DELAYS") {
            None => Self::default_retry_delays(),
            Some(v) => v
                .split(',')
                .map(|d| settings::parse_duration(d).filter(|d| !d.is_zero()))
                .collect::<Option<Vec<_>>>()
                .filter(|d| !d.is_empty())
                .ok_or_else(|| {
                    BrokerError::setting(
                        "RETRY_DELAYS",
                        "must be a comma separated list of durations such as 5s,30s,5m",
                    )
                })?,
        };
        Ok(Self::new(prefix, retry_delays, replicas))
    }

    /// A topology whose every name starts with `prefix`.
    pub fn new(
        prefix: impl Into<String>,
        retry_delays: Vec<Duration>,
        replicas: Option<u32>,
    ) -> Self {
        let mut retry_delays = retry_delays;
        retry_delays.sort();
        retry_delays.dedup();
        Self {
            prefix: prefix.into(),
            retry_delays,
            replicas,
        }
    }

    /// The default delays of the retry tiers: 5 s, 30 s, 5 min.
    pub fn default_retry_delays() -> Vec<Duration> {
        vec![
            Duration::from_secs(5),
            Duration::from_secs(30),
            Duration::from_secs(300),
        ]
    }

    /// Uses 3 replicas when no count was configured and the cluster has 3 or more nodes (one URL
    /// per node in `AMQP_URL`): enough to survive one node, without replicating to every member
    /// of a large cluster.
    pub fn with_default_replicas(mut self, nodes: usize) -> Self {
        if self.replicas.is_none() && nodes >= 3 {
            self.replicas = Some(3);
        }
        self
    }

    /// The quorum group size used for new queues, if set.
    pub fn replicas(&self) -> Option<u32> {
        self.replicas
    }

    /// The prefix every name starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The direct exchange everything is published to.
    pub fn exchange(&self) -> &str {
        &self.prefix
    }

    /// The main queue the worker consumes.
    pub fn main_queue(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// The dead-letter queue.
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// The retry tiers' delays, shortest first.
    pub fn retry_delays(&self) -> &[Duration] {
        &self.retry_delays
    }

    /// Routing key of the retry tier with this delay.
    pub fn retry_routing_key(delay: Duration) -> String {
        format!("retry.{}ms", delay.as_millis())
    }

    /// Queue of the retry tier with this delay.
    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.{}", self.prefix, Self::retry_routing_key(delay))
    }

    /// Every queue of the topology (for tests and teardown).
    pub fn all_queues(&self) -> Vec<String> {
        let mut queues = vec![self.main_queue(), self.dead_queue()];
        queues.extend(self.retry_delays.iter().map(|d| self.retry_queue(*d)));
        queues
    }

    fn quorum_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), long_string("quorum"));
        if let Some(replicas) = self.replicas {
            args.insert(
                "x-quorum-initial-group-size".into(),
                AMQPValue::LongUInt(replicas),
            );
        }
        args
    }

    /// Arguments for a queue whose dead letters go back to `routing_key` without loss.
    fn dead_lettering_to(&self, args: &mut FieldTable, routing_key: &str) {
        args.insert(
            "x-dead-letter-exchange".into(),
            long_string(self.exchange()),
        );
        args.insert("x-dead-letter-routing-key".into(), long_string(routing_key));
        // at-least-once dead-lettering keeps the message in the source queue until the target
        // confirmed it; it requires reject-publish overflow.
        args.insert(
            "x-dead-letter-strategy".into(),
            long_string("at-least-once"),
        );
        args.insert("x-overflow".into(), long_string("reject-publish"));
    }

    /// Declares the exchange, the main queue, the dead-letter queue and the retry tiers, and binds
    /// them, on a channel of its own. Safe to call from every process at every connect.
    /// `version` is the broker's release ([`crate::BrokerConfig::server_version`]): it decides how
    /// the delivery limit is turned off ([`delivery_limit_argument`]).
    pub async fn declare(
        &self,
        connection: &Connection,
        version: Option<BrokerVersion>,
    ) -> Result<(), BrokerError> {
        let channel = connection.create_channel().await?;
        let result = self.declare_on(connection, channel.clone(), version).await;
        if channel.status().connected() {
            let _ = channel.close(200, "topology declared".into()).await;
        }
        result
    }

    async fn declare_on(
        &self,
        connection: &Connection,
        mut channel: Channel,
        version: Option<BrokerVersion>,
    ) -> Result<(), BrokerError> {
        channel
            .exchange_declare(
                self.exchange().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    // Survives a broker restart, like the queues bound to it.
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| BrokerError::declare(self.exchange(), e))?;

        for (queue, routing_key, args) in self.queue_declarations(version) {
            match declare_queue(&channel, &queue, args, false).await {
                Ok(()) => {}
                Err(error) if is_delivery_limit_mismatch(&error) => {
                    // Declared by an older clerk-sync with another delivery limit; arguments
                    // cannot change in place. Keep using it (the failed declare closed the
                    // channel) and say how to upgrade it.
                    channel = connection.create_channel().await?;
                    declare_queue(&channel, &queue, FieldTable::default(), true)
                        .await
                        .map_err(|e| BrokerError::declare(&queue, e))?;
                    tracing::warn!(
                        queue = %queue,
                        "queue has a broker delivery limit from an older clerk-sync (or RabbitMQ 4's default): worker crashes count against it, and it can drop or dead-letter healthy messages; run `worker migrate-queues` (docs/operating.md, upgrading queues)"
                    );
                }
                Err(error) => return Err(BrokerError::declare(&queue, error)),
            }
            self.bind(&channel, &queue, &routing_key).await?;
        }
        if channel.status().connected() {
            let _ = channel.close(200, "topology declared".into()).await;
        }
        Ok(())
    }

    /// Every queue with its routing key and arguments, the dead-letter queue first (the main
    /// queue dead-letters into it).
    pub fn queue_declarations(
        &self,
        version: Option<BrokerVersion>,
    ) -> Vec<(String, String, FieldTable)> {
        let mut out = Vec::new();
        let mut dead_args = self.quorum_arguments();
        // A full dead-letter queue refuses rather than silently drops.
        dead_args.insert("x-overflow".into(), long_string("reject-publish"));
        // Listing dead letters returns them to the queue: no count of returns may drop one.
        set_no_delivery_limit(&mut dead_args, version);
        out.push((self.dead_queue(), DEAD_ROUTING_KEY.to_owned(), dead_args));

        let mut main_args = self.quorum_arguments();
        // No broker delivery limit: RabbitMQ counts the returns of a worker that crashed or lost
        // its connection against it (every prefetched message, healthy or not), so a few
        // crashes would dead-letter healthy events. Events are counted by the worker itself
        // (attempts, panics contained), which dead-letters what keeps failing.
        set_no_delivery_limit(&mut main_args, version);
        self.dead_lettering_to(&mut main_args, DEAD_ROUTING_KEY);
        out.push((self.main_queue(), EVENTS_ROUTING_KEY.to_owned(), main_args));

        for delay in &self.retry_delays {
            let mut args = self.quorum_arguments();
            let ttl = u32::try_from(delay.as_millis()).unwrap_or(u32::MAX);
            args.insert("x-message-ttl".into(), AMQPValue::LongUInt(ttl));
            // Nobody consumes a retry tier (messages leave it by expiry): no delivery limit
            // applies, and none is declared.
            self.dead_lettering_to(&mut args, EVENTS_ROUTING_KEY);
            out.push((
                self.retry_queue(*delay),
                Self::retry_routing_key(*delay),
                args,
            ));
        }
        out
    }

    async fn bind(
        &self,
        channel: &Channel,
        queue: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        channel
            .queue_bind(
                queue.into(),
                self.exchange().into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| BrokerError::declare(queue, e))?;
        Ok(())
    }
}

/// Declares a durable `queue` with `args`, or with `passive` only checks that it exists (a miss
/// closes the channel, as does a declaration with other arguments than the queue has).
pub async fn declare_queue(
    channel: &Channel,
    queue: &str,
    args: FieldTable,
    passive: bool,
) -> Result<(), lapin::Error> {
    channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                passive,
                // Quorum queues must be durable; messages survive a broker restart.
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .map(|_| ())
}

/// The broker refused a declaration because the queue exists with another `x-delivery-limit`.
fn is_delivery_limit_mismatch(error: &lapin::Error) -> bool {
    let text = error.to_string();
    text.contains("inequivalent arg") && text.contains("x-delivery-limit")
}

/// The `x-delivery-limit` argument that means "no limit" on this release: none on 3.x (where no
/// argument means no limit, and a negative one would dead-letter at the first return), `-1` on
/// 4.x (where no argument means RabbitMQ's default of 20, and `-1` turns it off). When the
/// release is unknown, the largest limit: never reached, and valid on both.
pub fn delivery_limit_argument(version: Option<BrokerVersion>) -> Option<AMQPValue> {
    match version {
        Some(v) if v.major >= 4 => Some(AMQPValue::LongInt(-1)),
        Some(_) => None,
        None => Some(AMQPValue::LongInt(i32::MAX)),
    }
}

fn set_no_delivery_limit(args: &mut FieldTable, version: Option<BrokerVersion>) {
    if let Some(limit) = delivery_limit_argument(version) {
        args.insert("x-delivery-limit".into(), limit);
    }
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_prefix() {
        let t = Topology::new(
            "cs",
            vec![Duration::from_secs(30), Duration::from_secs(5)],
            None,
        );
        assert_eq!(t.exchange(), "cs");
        assert_eq!(t.main_queue(), "cs.events");
        assert_eq!(t.dead_queue(), "cs.dead");
        assert_eq!(
            t.all_queues(),
            vec![
                "cs.events",
                "cs.dead",
                "cs.retry.5000ms",
                "cs.retry.30000ms"
            ]
        );
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn the_delivery_limit_is_off_on_every_release() {
        let v = |major, minor| Some(BrokerVersion { major, minor });
        assert_eq!(delivery_limit_argument(v(3, 10)), None);
        assert_eq!(delivery_limit_argument(v(3, 13)), None);
        assert_eq!(
            delivery_limit_argument(v(4, 0)),
            Some(AMQPValue::LongInt(-1))
        );
        assert_eq!(
            delivery_limit_argument(v(4, 3)),
            Some(AMQPValue::LongInt(-1))
        );
        assert_eq!(
            delivery_limit_argument(None),
            Some(AMQPValue::LongInt(i32::MAX))
        );
        let t = Topology::from_lookup(&|_: &str| None).expect("defaults");
        for (queue, _, args) in t.queue_declarations(v(4, 0)).into_iter().take(2) {
            assert_eq!(
                args.inner().get("x-delivery-limit"),
                Some(&AMQPValue::LongInt(-1)),
                "{queue}"
            );
        }
        for (queue, _, args) in t.queue_declarations(v(3, 10)) {
            assert!(args.inner().get("x-delivery-limit").is_none(), "{queue}");
        }
    }

    #[test]
    fn three_or_more_nodes_default_to_three_replicas_unless_configured() {
        let single = Topology::from_lookup(&|_: &str| None).expect("defaults");
        assert_eq!(single.clone().with_default_replicas(1).replicas(), None);
        assert_eq!(single.with_default_replicas(5).replicas(), Some(3));
        let two =
            Topology::from_lookup(&|name: &str| (name == "QUEUE_REPLICAS").then(|| "2".into()))
                .expect("valid");
        assert_eq!(two.with_default_replicas(3).replicas(), Some(2));
    }

    #[test]
    fn topology_settings_are_validated() {
        let lookup = |name: &str| match name {
            "RETRY_DELAYS" => Some("1s,zz".to_string()),
            _ => None,
        };
        let err = Topology::from_lookup(&lookup).expect_err("bad delays");
        assert!(err.to_string().contains("RETRY_DELAYS"), "{err}");
        let t = Topology::from_lookup(&|_: &str| None).expect("defaults");
        assert_eq!(t.prefix(), "clerk_sync");
        assert_eq!(t.retry_delays().len(), 3);
    }

    fn with_traceparent(value: AMQPValue) -> FieldTable {
        let mut table = FieldTable::default();
        table.insert(headers::TRACEPARENT.into(), value);
        table
    }

    fn trace_id_of(traceparent: &str) -> Option<String> {
        headers::trace_id(Some(&with_traceparent(AMQPValue::LongString(
            traceparent.into(),
        ))))
    }

    #[test]
    fn a_valid_traceparent_gives_its_trace_id() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            trace_id_of(&format!("00-{trace}-00f067aa0ba902b7-01")).as_deref(),
            Some(trace)
        );
        assert_eq!(
            trace_id_of(&format!("00-{trace}-00f067aa0ba902b7-00")).as_deref(),
            Some(trace),
            "an unsampled trace still has its id"
        );
        assert_eq!(
            trace_id_of(&format!(
                "cc-{trace}-00f067aa0ba902b7-01-what-the-future-holds"
            ))
            .as_deref(),
            Some(trace),
            "a later version may append fields"
        );
        let short = with_traceparent(AMQPValue::ShortString(
            format!("00-{trace}-00f067aa0ba902b7-01").into(),
        ));
        assert_eq!(headers::trace_id(Some(&short)).as_deref(), Some(trace));
    }

    #[test]
    fn a_missing_or_malformed_traceparent_gives_no_trace_id() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        for bad in [
            String::new(),
            "garbage".to_owned(),
            format!("00-{trace}-00f067aa0ba902b7"),
            format!("00-{trace}-00f067aa0ba902b7-01-extra"),
            format!("ff-{trace}-00f067aa0ba902b7-01"),
            format!("0-{trace}-00f067aa0ba902b7-01"),
            format!("zz-{trace}-00f067aa0ba902b7-01"),
            format!("00-{}-00f067aa0ba902b7-01", trace.to_uppercase()),
            format!("00-{}-00f067aa0ba902b7-01", &trace[..31]),
            format!("00-{trace}0-00f067aa0ba902b7-01"),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_owned(),
            format!("00-{trace}-0000000000000000-01"),
            format!("00-{trace}-00f067aa0ba902b-01"),
            format!("00-{trace}-00f067aa0ba902b7-1"),
            format!("00-{trace}-00f067aa0ba902b7-0g"),
            format!(" 00-{trace}-00f067aa0ba902b7-01"),
        ] {
            assert_eq!(trace_id_of(&bad), None, "{bad:?}");
        }
        assert_eq!(headers::trace_id(None), None);
        assert_eq!(headers::trace_id(Some(&FieldTable::default())), None);
        let number = with_traceparent(AMQPValue::LongLongInt(1));
        assert_eq!(headers::trace_id(Some(&number)), None);
    }
}
