//! The consume loop: a supervisor keeps a connection (reconnecting with backoff and redeclaring
//! the topology), consumes the main queue with a bounded number of events in flight, and for each
//! delivery applies the event, then acks only after the commit. Transient failures are retried in
//! process, then handed to a delayed retry queue; events that can never succeed, or that ran out
//! of attempts, go to the dead-letter queue. Both hand-offs are publish-confirmed before the ack.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use broker::{
    BrokerConfig, DEAD_ROUTING_KEY, Topology, connect_with_backoff, headers,
    lapin::{
        BasicProperties, Channel, Connection,
        message::Delivery,
        options::{
            BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
            BasicQosOptions, ConfirmSelectOptions,
        },
        types::FieldTable,
    },
    publish_confirmed, wait_until_closed,
};
use futures_util::StreamExt;
use tokio::{
    sync::{Semaphore, watch},
    task::JoinSet,
};
use tracing::Instrument;

use crate::{
    apply::{Applier, Outcome},
    event,
    metrics::Metrics,
};

/// Tuning of the consumer.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    pub prefetch: u16,
    pub concurrency: usize,
    pub max_attempts: u32,
}

/// Everything a delivery handler needs.
pub struct Consumer {
    /// Applies events to Postgres (with in-process retries).
    pub applier: Applier,
    pub broker: BrokerConfig,
    pub topology: Topology,
    pub options: ConsumerOptions,
    pub metrics: Metrics,
    /// True while consuming (what `/readyz` reports).
    pub ready: Arc<AtomicBool>,
}

/// How a broker session ended.
enum SessionEnd {
    Stopped,
    Lost,
}

impl Consumer {
    /// Consumes until `shutdown` turns true; then stops taking deliveries, finishes and acks the
    /// ones in flight, and returns.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let stop = {
                let mut rx = shutdown.clone();
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                }
            };
            let Some(connection) = connect_with_backoff(&self.broker, stop).await else {
                return;
            };
            let end = match self.clone().session(&connection, &mut shutdown).await {
                Ok(end) => end,
                Err(error) => {
                    tracing::error!(error.message = %error, "consumer session failed; reconnecting");
                    SessionEnd::Lost
                }
            };
            self.ready.store(false, Ordering::SeqCst);
            if connection.status().connected() {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    connection.close(200, "clerk-sync worker closing".into()),
                )
                .await;
            }
            match end {
                SessionEnd::Stopped => return,
                SessionEnd::Lost => {
                    tracing::warn!("lost RabbitMQ; reconnecting");
                    tokio::select! {
                        _ = shutdown.wait_for(|s| *s) => return,
                        () = tokio::time::sleep(self.broker.min_backoff) => {}
                    }
                }
            }
        }
    }

    async fn session(
        self: Arc<Self>,
        connection: &Connection,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<SessionEnd, broker::BrokerError> {
        let consume_channel = connection.create_channel().await?;
        consume_channel
            .basic_qos(self.options.prefetch, BasicQosOptions::default())
            .await?;
        self.topology.declare(&consume_channel).await?;
        let publish_channel = connection.create_channel().await?;
        publish_channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut consumer = consume_channel
            .basic_consume(
                self.topology.main_queue().as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let tag = consumer.tag();
        self.ready.store(true, Ordering::SeqCst);
        tracing::info!(queue = %self.topology.main_queue(), "consuming");

        // Set by a hand-over the broker nacked: on RabbitMQ 3.10 a channel opened during a quorum
        // leader election can keep nacking, so the session is rebuilt with fresh channels.
        let nacked = Arc::new(tokio::sync::Notify::new());
        let permits = Arc::new(Semaphore::new(self.options.concurrency.max(1)));
        let mut in_flight = JoinSet::new();
        let closed = wait_until_closed(connection);
        tokio::pin!(closed);
        let end = loop {
            while in_flight.try_join_next().is_some() {}
            let permit = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break SessionEnd::Stopped,
                () = &mut closed => break SessionEnd::Lost,
                () = nacked.notified() => break SessionEnd::Lost,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break SessionEnd::Lost,
                },
            };
            let next = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break SessionEnd::Stopped,
                next = consumer.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    let this = self.clone();
                    let publish_channel = publish_channel.clone();
                    let nacked = nacked.clone();
                    in_flight.spawn(async move {
                        if this.handle(delivery, &publish_channel).await == HandOver::Nacked {
                            nacked.notify_one();
                        }
                        drop(permit);
                    });
                }
                Some(Err(error)) => {
                    tracing::warn!(error.message = %error, "consumer stream failed");
                    break SessionEnd::Lost;
                }
                None => break SessionEnd::Lost,
            }
        };
        self.ready.store(false, Ordering::SeqCst);
        if matches!(end, SessionEnd::Stopped) {
            // Stop deliveries first, then let the in-flight events commit and ack.
            let _ = consume_channel
                .basic_cancel(tag, BasicCancelOptions::default())
                .await;
            tracing::info!(in_flight = in_flight.len(), "finishing in-flight events");
        }
        while in_flight.join_next().await.is_some() {}
        Ok(end)
    }

    /// Applies one delivery and settles it (ack, retry queue or dead-letter queue).
    async fn handle(&self, delivery: Delivery, publish_channel: &Channel) -> HandOver {
        let props = &delivery.properties;
        let table = props.headers().as_ref();
        let svix_id = props
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .or_else(|| headers::get_str(table, headers::SVIX_ID));
        let event_type = event::event_type(&delivery.data).unwrap_or_else(|| "unparseable".into());
        let span = tracing::info_span!(
            "event",
            svix_id = svix_id.as_deref().unwrap_or("-"),
            event_type = %event_type,
            attempt = headers::get_i64(table, headers::ATTEMPTS).unwrap_or(0) + 1,
        );
        async {
            let started = Instant::now();
            let result = match event::parse(&delivery.data) {
                Err(error) => Err(Failure::Permanent(error.to_string())),
                Ok(parsed) => self
                    .applier
                    .apply(svix_id.as_deref(), &event_type, &parsed)
                    .await
                    .map_err(|error| {
                        if error.is_transient() {
                            Failure::Transient(error.reason())
                        } else {
                            Failure::Permanent(error.reason())
                        }
                    }),
            };
            match result {
                Ok(outcome) => {
                    self.metrics
                        .apply_seconds
                        .observe(started.elapsed().as_secs_f64());
                    if outcome == Outcome::Applied
                        && let Some(received) = headers::get_i64(table, headers::RECEIVED_AT)
                    {
                        let lag_ms = now_ms().saturating_sub(received).max(0);
                        self.metrics.lag_seconds.observe(lag_ms as f64 / 1000.0);
                    }
                    self.metrics.count(&event_type, outcome.as_str());
                    tracing::info!(outcome = outcome.as_str(), "event settled");
                    ack(&delivery).await;
                    HandOver::Done
                }
                Err(failure) => {
                    self.settle_failure(&delivery, publish_channel, &event_type, failure)
                        .await
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Hands a failed event to a retry queue or the dead-letter queue, then acks the original.
    async fn settle_failure(
        &self,
        delivery: &Delivery,
        publish_channel: &Channel,
        event_type: &str,
        failure: Failure,
    ) -> HandOver {
        let old = delivery.properties.headers().as_ref();
        let attempts = headers::get_i64(old, headers::ATTEMPTS).unwrap_or(0) + 1;
        let now = now_ms();
        let mut table = old.cloned().unwrap_or_default();
        headers::set_i64(&mut table, headers::ATTEMPTS, attempts);
        if headers::get_i64(old, headers::FIRST_FAILURE_AT).is_none() {
            headers::set_i64(&mut table, headers::FIRST_FAILURE_AT, now);
        }
        headers::set_i64(&mut table, headers::LAST_FAILURE_AT, now);
        headers::set_str(&mut table, headers::REASON, failure.reason());
        headers::set_str(&mut table, headers::EVENT_TYPE, event_type);
        if headers::get_str(old, headers::ORIGINAL_ROUTING_KEY).is_none() {
            headers::set_str(
                &mut table,
                headers::ORIGINAL_ROUTING_KEY,
                delivery.routing_key.as_str(),
            );
        }
        let (routing_key, outcome) = match &failure {
            Failure::Transient(_)
                if attempts < i64::from(self.options.max_attempts)
                    && !self.topology.retry_delays().is_empty() =>
            {
                let delays = self.topology.retry_delays();
                let index = usize::try_from(attempts - 1)
                    .unwrap_or(usize::MAX)
                    .min(delays.len() - 1);
                (Topology::retry_routing_key(delays[index]), "retried")
            }
            _ => (DEAD_ROUTING_KEY.to_owned(), "dead_lettered"),
        };
        let properties = copy_properties(&delivery.properties).with_headers(table);
        match publish_confirmed(
            publish_channel,
            self.topology.exchange(),
            &routing_key,
            &delivery.data,
            properties,
        )
        .await
        {
            Ok(()) => {
                self.metrics.count(event_type, outcome);
                if outcome == "dead_lettered" {
                    tracing::error!(attempts, reason = failure.reason(), "event dead-lettered");
                } else {
                    tracing::warn!(attempts, reason = failure.reason(), queue = %routing_key, "event scheduled for retry");
                }
                ack(delivery).await;
                HandOver::Done
            }
            Err(error) => {
                // Not handed over: give it back to the broker so that nothing is lost.
                tracing::error!(error.message = %error, "could not hand the failed event over; requeueing it");
                let _ = delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await;
                if matches!(error, broker::PublishError::Nacked) {
                    HandOver::Nacked
                } else {
                    HandOver::Done
                }
            }
        }
    }
}

/// Whether a delivery was settled, or its hand-over to another queue was nacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HandOver {
    Done,
    Nacked,
}

/// A failed attempt, and whether trying again can help.
enum Failure {
    Transient(String),
    Permanent(String),
}

impl Failure {
    fn reason(&self) -> &str {
        match self {
            Self::Transient(reason) => reason,
            Self::Permanent(reason) => reason,
        }
    }
}

async fn ack(delivery: &Delivery) {
    if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The channel is gone: the broker redelivers, and the duplicate is detected.
        tracing::warn!(error.message = %error, "ack failed; the event will be redelivered");
    }
}

/// The properties worth keeping when an event is moved to another queue.
pub fn copy_properties(original: &BasicProperties) -> BasicProperties {
    let mut properties = BasicProperties::default();
    if let Some(id) = original.message_id() {
        properties = properties.with_message_id(id.clone());
    }
    if let Some(content_type) = original.content_type() {
        properties = properties.with_content_type(content_type.clone());
    }
    if let Some(timestamp) = original.timestamp() {
        properties = properties.with_timestamp(*timestamp);
    }
    properties
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}
