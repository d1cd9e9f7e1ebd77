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
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use broker::{
    BrokerConfig, DEAD_ROUTING_KEY, Topology, close_channels, close_gracefully,
    connect_with_backoff, headers,
    lapin::{
        Acker, BasicProperties, Channel, Connection,
        message::Delivery,
        options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions},
        types::FieldTable,
    },
    publish_confirmed, trace_context, wait_until_closed,
};
use futures_util::{FutureExt, StreamExt};
use std::{collections::HashMap, panic::AssertUnwindSafe};
use telemetry::traces;
use tokio::{sync::Semaphore, task::JoinSet};
use tracing::{Instrument, field::Empty};

use store::{
    Applier,
    apply::{
        ApplyError, Outcome,
        batch::{BatchItem, batchable, try_apply_batch},
    },
    event::{self, ClerkEvent, ParseError},
    faults,
};

use crate::{metrics::Metrics, shutdown::Shutdown};

pub mod acks;
pub mod progress;
pub mod prune;

use acks::Acks;

/// Tuning of the consumer.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    pub prefetch: u16,
    pub concurrency: usize,
    pub max_attempts: u32,
    /// Events applied in one transaction at most (1: every event on its own).
    pub batch_size: usize,
}

/// A delivery with what the worker reads from it.
struct Received {
    delivery: Delivery,
    svix_id: Option<String>,
    event_type: String,
    event: Result<ClerkEvent, ParseError>,
}

impl Received {
    /// Reads `delivery`; what `applier` does not store (private metadata, unless
    /// `SYNC_PRIVATE_METADATA`) is dropped at once.
    fn new(delivery: Delivery, applier: &Applier) -> Self {
        let props = &delivery.properties;
        let svix_id = headers::svix_id(props);
        let (event_type, event) = event::parse_typed(&delivery.data);
        let event = event.map(|event| applier.keep_only_stored(event));
        // The queue has no broker delivery limit (crashes would count against it): an event
        // that keeps coming back is pointed out instead.
        if delivery.redelivered
            && let Some(count) = headers::get_i64(props.headers().as_ref(), "x-delivery-count")
            && count >= REDELIVERY_WARNING
        {
            tracing::warn!(
                svix_id = svix_id.as_deref().unwrap_or("-"),
                deliveries = count,
                "event delivered again and again; if workers keep crashing, this event may be the cause (see `worker dlq` and docs/operating.md)"
            );
        }
        Self {
            delivery,
            svix_id,
            event_type,
            event,
        }
    }

    fn headers(&self) -> Option<&FieldTable> {
        self.delivery.properties.headers().as_ref()
    }

    fn batchable(&self) -> bool {
        self.event
            .as_ref()
            .is_ok_and(|event| batchable(self.svix_id.as_deref(), event))
    }

    fn item(&self) -> Option<BatchItem<'_>> {
        Some(BatchItem {
            svix_id: self.svix_id.as_deref()?,
            event_type: &self.event_type,
            event: self.event.as_ref().ok()?,
        })
    }
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
    /// Bounds the events applied one by one at once (each may call Clerk's API): see
    /// [`SLOW_PATH_CONCURRENCY`].
    pub slow_path: Semaphore,
}

/// Deliveries of one event (RabbitMQ's `x-delivery-count`) from which each is logged.
const REDELIVERY_WARNING: i64 = 10;

/// Events applied one by one (calendar tokens from Clerk, failed batches) at once, across all
/// batches in flight: keeps Clerk's API from seeing hundreds of calls at a time.
pub const SLOW_PATH_CONCURRENCY: usize = 16;

/// What woke the consume loop while it waited for a permit.
enum Woke {
    Permit(tokio::sync::OwnedSemaphorePermit),
    Finished(Result<(tokio::task::Id, ()), tokio::task::JoinError>),
}

/// How a broker session ended.
enum SessionEnd {
    Stopped,
    Lost,
}

impl Consumer {
    /// Consumes until `shutdown` fires; then stops taking deliveries, finishes and acks the
    /// ones in flight, and returns.
    pub async fn run(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            let stop = {
                let mut shutdown = shutdown.clone();
                async move { shutdown.recv().await }
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
            // The session closed its channels; now the connection.
            close_gracefully(&connection, &[], "clerk-sync worker closing").await;
            match end {
                SessionEnd::Stopped => return,
                SessionEnd::Lost => {
                    tracing::warn!("lost RabbitMQ; reconnecting");
                    tokio::select! {
                        () = shutdown.recv() => return,
                        () = tokio::time::sleep(self.broker.min_backoff) => {}
                    }
                }
            }
        }
    }

    /// Opens the session's channels (QoS, topology, confirms) and starts consuming.
    async fn open(
        &self,
        connection: &Connection,
    ) -> Result<(Channel, Channel, broker::lapin::Consumer), broker::BrokerError> {
        let consume_channel = connection.create_channel().await?;
        consume_channel
            .basic_qos(self.options.prefetch, BasicQosOptions::default())
            .await?;
        self.topology
            .declare(connection, self.broker.server_version().await)
            .await?;
        let publish_channel = connection.create_channel().await?;
        publish_channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let consumer = consume_channel
            .basic_consume(
                self.topology.main_queue().as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((consume_channel, publish_channel, consumer))
    }

    /// One broker session: intake (a permit, then a batch of deliveries), hand-off to a task
    /// that applies and settles them, until shutdown or the connection is lost; then the tasks
    /// in flight finish.
    async fn session(
        self: Arc<Self>,
        connection: &Connection,
        shutdown: &mut Shutdown,
    ) -> Result<SessionEnd, broker::BrokerError> {
        let (consume_channel, publish_channel, mut consumer) = self.open(connection).await?;
        let tag = consumer.tag();
        self.ready.store(true, Ordering::SeqCst);
        tracing::info!(queue = %self.topology.main_queue(), "consuming");

        // Set by a hand-over the broker nacked: on RabbitMQ 3.10 a channel opened during a quorum
        // leader election can keep nacking, so the session is rebuilt with fresh channels.
        let nacked = Arc::new(tokio::sync::Notify::new());
        let permits = Arc::new(Semaphore::new(self.options.concurrency.max(1)));
        let batch_size = self.options.batch_size.max(1);
        let mut tasks = InFlight::default();
        let closed = wait_until_closed(connection);
        tokio::pin!(closed);
        let end = loop {
            if let Some(died) = tasks.reap().await {
                break died;
            }
            let woke = tokio::select! {
                () = shutdown.recv() => break SessionEnd::Stopped,
                () = &mut closed => break SessionEnd::Lost,
                () = nacked.notified() => break SessionEnd::Lost,
                Some(joined) = tasks.set.join_next_with_id(), if !tasks.set.is_empty() => {
                    Woke::Finished(joined)
                }
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(p) => Woke::Permit(p),
                    Err(_) => break SessionEnd::Lost,
                },
            };
            let permit = match woke {
                Woke::Permit(permit) => permit,
                Woke::Finished(joined) => match tasks.settle(joined).await {
                    Some(end) => break end,
                    None => continue,
                },
            };
            // A handler that dies while this waits for a delivery must be noticed here: its
            // unsettled deliveries may hold the whole prefetch, and then none would come.
            let woke = tokio::select! {
                () = shutdown.recv() => break SessionEnd::Stopped,
                Some(joined) = tasks.set.join_next_with_id(), if !tasks.set.is_empty() => {
                    Err(joined)
                }
                next = consumer.next() => Ok(next),
            };
            let first = match woke {
                Ok(next) => next,
                Err(joined) => match tasks.settle(joined).await {
                    Some(end) => break end,
                    None => continue,
                },
            };
            let (deliveries, lost) = next_batch(first, &mut consumer, batch_size);
            if !deliveries.is_empty() {
                let handed = Handed {
                    publish_channel: publish_channel.clone(),
                    nacked: nacked.clone(),
                    permit,
                };
                self.clone().dispatch(&mut tasks, deliveries, handed).await;
            }
            if lost {
                break SessionEnd::Lost;
            }
        };
        self.ready.store(false, Ordering::SeqCst);
        if matches!(end, SessionEnd::Stopped) {
            // Stop deliveries first, then let the in-flight events commit and ack.
            let _ = consume_channel
                .basic_cancel(tag, BasicCancelOptions::default())
                .await;
            tracing::info!(in_flight = tasks.set.len(), "finishing in-flight events");
        }
        tasks.finish().await;
        drop(consumer);
        // Closed here, before the connection: see `broker::close_gracefully`.
        close_channels(
            &[consume_channel, publish_channel],
            "clerk-sync worker closing",
        )
        .await;
        Ok(end)
    }

    /// The hand-off stage: applies and settles `deliveries` in a task of their own, holding
    /// one of the session's permits until it is done (panic included).
    async fn dispatch(
        self: Arc<Self>,
        tasks: &mut InFlight,
        deliveries: Vec<Delivery>,
        handed: Handed,
    ) {
        tasks
            .spawn(deliveries, move |deliveries, acks| async move {
                let Handed {
                    publish_channel,
                    nacked,
                    permit: _permit,
                } = handed;
                if self.handle_batch(deliveries, &publish_channel, &acks).await == HandOver::Nacked
                {
                    nacked.notify_one();
                }
            })
            .await;
    }

    /// Applies deliveries: those that need nothing from Clerk together in one transaction
    /// (acknowledged after the commit), the others (and all of them if the batch fails) one by
    /// one. Returns `Nacked` if a hand-over to another queue was refused.
    async fn handle_batch(
        &self,
        deliveries: Vec<Delivery>,
        publish_channel: &Channel,
        acks: &Acks,
    ) -> HandOver {
        let received: Vec<Received> = deliveries
            .into_iter()
            .map(|delivery| Received::new(delivery, &self.applier))
            .collect();
        let (mut batched, mut slow): (Vec<&Received>, Vec<&Received>) = received
            .iter()
            .partition(|r| self.options.batch_size > 1 && r.batchable());
        for r in &slow {
            acks.slow(r.delivery.delivery_tag).await;
        }
        if !batched.is_empty() {
            let process = self.process_span(&batched);
            self.apply_batch(&mut batched, acks)
                .instrument(process)
                .await;
        }
        slow.append(&mut batched);
        let handed = futures_util::future::join_all(
            slow.into_iter()
                .map(|r| self.handle(r, publish_channel, acks)),
        )
        .await;
        if handed.contains(&HandOver::Nacked) {
            HandOver::Nacked
        } else {
            HandOver::Done
        }
    }

    /// Applies `batched` in one transaction and acknowledges them after the commit; if the
    /// batch fails they stay in `batched`, marked slow, to be applied one by one.
    async fn apply_batch(&self, batched: &mut Vec<&Received>, acks: &Acks) {
        {
            let items: Vec<BatchItem<'_>> = batched.iter().filter_map(|r| r.item()).collect();
            let started = Instant::now();
            // A panic inside is contained: the batch is then applied event by event, where a
            // panicking event is retried and in the end dead-lettered like any failure.
            let applied = AssertUnwindSafe(try_apply_batch(&self.applier.db, &items))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| Err(contained(&*panic)));
            match applied {
                Ok(outcomes) => {
                    let seconds = started.elapsed().as_secs_f64();
                    self.metrics.batch_size.observe(items.len() as f64);
                    let mut applied = 0;
                    for (r, outcome) in batched.iter().zip(outcomes) {
                        faults::reached(faults::Point::Settle, r.svix_id.as_deref());
                        applied += usize::from(outcome == Outcome::Applied);
                        self.settled(r, outcome, seconds);
                        tracing::debug!(
                            svix_id = r.svix_id.as_deref().unwrap_or("-"),
                            event_type = %r.event_type,
                            outcome = outcome.as_str(),
                            "event settled"
                        );
                    }
                    acks.ready_all(
                        batched
                            .iter()
                            .map(|r| (r.delivery.delivery_tag, r.delivery.acker.clone())),
                    )
                    .await;
                    tracing::info!(
                        events = items.len(),
                        applied,
                        apply_ms = (seconds * 1000.0).round(),
                        "batch committed"
                    );
                    batched.clear();
                }
                Err(error) => {
                    self.metrics.batch_fallbacks.inc();
                    tracing::warn!(
                        events = items.len(),
                        error.message = %error,
                        "batch not applied; applying its events one by one"
                    );
                    tracing::Span::current().record("otel.status_code", "ERROR");
                    for r in batched.iter() {
                        acks.slow(r.delivery.delivery_tag).await;
                    }
                }
            }
        }
    }

    /// The consumer span of deliveries processed together (OpenTelemetry messaging
    /// conventions), only when traces are exported. One delivery: a child of the context its
    /// message was published in, and linked to it. Several: linked to each.
    fn process_span(&self, deliveries: &[&Received]) -> tracing::Span {
        if !traces::enabled() {
            return tracing::Span::none();
        }
        let queue = self.topology.main_queue();
        let span = tracing::info_span!(
            "process",
            otel.name = format!("process {queue}"),
            otel.kind = "consumer",
            otel.status_code = Empty,
            messaging.system = "rabbitmq",
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = %queue,
            messaging.message.id = Empty,
            messaging.rabbitmq.destination.routing_key = Empty,
            messaging.batch.message_count = Empty,
            clerk_sync.event_type = Empty,
            clerk_sync.attempt = Empty,
            clerk_sync.outcome = Empty,
        );
        match deliveries {
            [one] => {
                if let Some(id) = &one.svix_id {
                    span.record("messaging.message.id", id.as_str());
                }
                span.record(
                    "messaging.rabbitmq.destination.routing_key",
                    one.delivery.routing_key.as_str(),
                );
                span.record("clerk_sync.event_type", one.event_type.as_str());
                let attempt = headers::get_i64(one.headers(), headers::ATTEMPTS).unwrap_or(0) + 1;
                span.record("clerk_sync.attempt", attempt);
                traces::continue_from(&span, &trace_context::extract(one.headers()), true);
            }
            many => {
                span.record("messaging.batch.message_count", many.len());
                for r in many {
                    traces::link_to(&span, &trace_context::extract(r.headers()));
                }
            }
        }
        span
    }

    /// Records a settled event in the metrics.
    fn settled(&self, r: &Received, outcome: Outcome, seconds: f64) {
        self.metrics.apply_seconds.observe(seconds);
        if outcome == Outcome::Applied
            && let Some(received) = headers::get_i64(r.headers(), headers::RECEIVED_AT)
        {
            let now = now_ms();
            let lag_ms = now.saturating_sub(received).max(0);
            self.metrics.lag_seconds.observe(lag_ms as f64 / 1000.0);
            self.metrics.progress.applied(now, lag_ms);
        }
        self.metrics.count(&r.event_type, outcome.as_str());
    }

    /// Applies one delivery on its own (with in-process retries) and settles it: the apply,
    /// decide and execute stages.
    async fn handle(&self, r: &Received, publish_channel: &Channel, acks: &Acks) -> HandOver {
        let attempts = headers::get_i64(r.headers(), headers::ATTEMPTS).unwrap_or(0) + 1;
        let process = self.process_span(&[r]);
        let span = process.in_scope(|| {
            tracing::info_span!(
                "event",
                svix_id = r.svix_id.as_deref().unwrap_or("-"),
                event_type = %r.event_type,
                attempt = attempts,
            )
        });
        let recorded = process.clone();
        async move {
            // Waiting here holds back no other delivery's ack (this one is marked slow).
            let _permit = self.slow_path.acquire().await;
            let started = Instant::now();
            let result = self.apply_one(r).await;
            let settlement = decide(
                &result,
                attempts,
                self.options.max_attempts,
                self.topology.retry_delays(),
            );
            let seconds = started.elapsed().as_secs_f64();
            if !recorded.is_disabled() {
                recorded.record("clerk_sync.outcome", settlement.as_str());
                if result.is_err() {
                    recorded.record("otel.status_code", "ERROR");
                }
            }
            self.execute(r, settlement, &result, seconds, publish_channel, acks)
                .await
        }
        .instrument(span)
        .instrument(process)
        .await
    }

    /// The apply stage of one delivery: its outcome, or why it failed (a panic included).
    async fn apply_one(&self, r: &Received) -> Result<Outcome, Failure> {
        let parsed = r
            .event
            .as_ref()
            .map_err(|error| Failure::Permanent(error.to_string()))?;
        AssertUnwindSafe(
            self.applier
                .apply(r.svix_id.as_deref(), &r.event_type, parsed),
        )
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| Err(contained(&*panic)))
        .map_err(|error| {
            if error.is_transient() {
                Failure::Transient(error.reason())
            } else {
                Failure::Permanent(error.reason())
            }
        })
    }

    /// The execute stage: acks a settled event, or hands a failed one to its retry queue or
    /// the dead-letter queue and then acks the original. When the hand-over fails the event is
    /// requeued instead, so that nothing is lost.
    async fn execute(
        &self,
        r: &Received,
        settlement: Settlement,
        result: &Result<Outcome, Failure>,
        seconds: f64,
        publish_channel: &Channel,
        acks: &Acks,
    ) -> HandOver {
        let delivery = &r.delivery;
        let (routing_key, failure) = match (settlement, result) {
            (Settlement::Ack(outcome), _) => {
                self.settled(r, outcome, seconds);
                tracing::info!(outcome = outcome.as_str(), "event settled");
                acks.ready(delivery.delivery_tag, delivery.acker.clone())
                    .await;
                return HandOver::Done;
            }
            (Settlement::Retry(delay), Err(failure)) => {
                (Topology::retry_routing_key(delay), failure)
            }
            (Settlement::Dead, Err(failure)) => (DEAD_ROUTING_KEY.to_owned(), failure),
            (Settlement::Retry(_) | Settlement::Dead, Ok(_)) | (Settlement::Requeue, _) => {
                return self.requeue(delivery, acks, "nothing to hand over").await;
            }
        };
        let (table, attempts) = failure_headers(delivery, &r.event_type, failure, now_ms());
        let properties = copy_properties(&delivery.properties).with_headers(table);
        let handed_over = publish_confirmed(
            publish_channel,
            self.topology.exchange(),
            &routing_key,
            &delivery.data,
            properties,
        )
        .await;
        if let Err(error) = handed_over {
            tracing::error!(error.message = %error, "could not hand the failed event over; requeueing it");
            let nacked = matches!(error, broker::PublishError::Nacked);
            let _ = self.requeue(delivery, acks, "hand-over failed").await;
            return if nacked {
                HandOver::Nacked
            } else {
                HandOver::Done
            };
        }
        self.metrics.count(&r.event_type, settlement.as_str());
        if settlement == Settlement::Dead {
            tracing::error!(attempts, reason = failure.reason(), "event dead-lettered");
        } else {
            tracing::warn!(attempts, reason = failure.reason(), queue = %routing_key, "event scheduled for retry");
        }
        acks.ack_one(delivery.delivery_tag, &delivery.acker).await;
        HandOver::Done
    }

    /// Gives a delivery back to the broker ([`Settlement::Requeue`]).
    async fn requeue(&self, delivery: &Delivery, acks: &Acks, why: &str) -> HandOver {
        tracing::debug!(why, "event requeued");
        acks.requeue_one(delivery.delivery_tag, &delivery.acker)
            .await;
        HandOver::Done
    }
}

/// The intake stage: the first delivery, then whatever else has already arrived, up to a batch
/// (under load batches fill up; when idle an event is applied as soon as it comes). Also says
/// whether the consumer stream ended (the session is lost).
fn next_batch(
    first: Option<Result<Delivery, broker::lapin::Error>>,
    consumer: &mut broker::lapin::Consumer,
    batch_size: usize,
) -> (Vec<Delivery>, bool) {
    let mut deliveries = Vec::new();
    let mut next = Some(first);
    loop {
        match next {
            Some(Some(Ok(delivery))) => deliveries.push(delivery),
            Some(Some(Err(error))) => {
                tracing::warn!(error.message = %error, "consumer stream failed");
                return (deliveries, true);
            }
            Some(None) => return (deliveries, true),
            None => return (deliveries, false),
        }
        if deliveries.len() >= batch_size {
            return (deliveries, false);
        }
        next = consumer.next().now_or_never();
    }
}

/// The tasks applying and settling batches of one session, with the deliveries each handles
/// (to give back those it did not settle if it dies) and the session's ack ledger.
#[derive(Default)]
struct InFlight {
    set: JoinSet<()>,
    handled_by: HashMap<tokio::task::Id, Vec<(u64, Acker)>>,
    acks: Arc<Acks>,
}

impl InFlight {
    /// Registers `deliveries` with the ledger and runs `work` on them in a task of its own.
    async fn spawn<F, Fut>(&mut self, deliveries: Vec<Delivery>, work: F)
    where
        F: FnOnce(Vec<Delivery>, Arc<Acks>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.acks
            .register_all(deliveries.iter().map(|d| d.delivery_tag))
            .await;
        let ackers: Vec<(u64, Acker)> = deliveries
            .iter()
            .map(|d| (d.delivery_tag, d.acker.clone()))
            .collect();
        let task = self.set.spawn(work(deliveries, self.acks.clone()));
        self.handled_by.insert(task.id(), ackers);
    }

    /// Collects the tasks that finished. A task that panicked (outside the apply path, which
    /// contains its own panics) gives back the deliveries it did not settle and ends the
    /// session: it is rebuilt rather than left consuming with deliveries never settled.
    async fn reap(&mut self) -> Option<SessionEnd> {
        let mut died = None;
        while let Some(joined) = self.set.try_join_next_with_id() {
            if let Some(end) = self.settle(joined).await {
                died = Some(end);
            }
        }
        died
    }

    /// Forgets a finished task; for one that panicked, gives its unsettled deliveries back and
    /// says the session must end.
    async fn settle(
        &mut self,
        joined: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
    ) -> Option<SessionEnd> {
        match joined {
            Ok((id, ())) => {
                self.handled_by.remove(&id);
                None
            }
            Err(error) => {
                let given_back = match self.handled_by.remove(&error.id()) {
                    Some(deliveries) => self.acks.abandon(&deliveries).await,
                    None => 0,
                };
                tracing::error!(
                    given_back,
                    error.message = %error,
                    "a delivery handler died; its unsettled events went back to the queue, restarting the consumer session"
                );
                Some(SessionEnd::Lost)
            }
        }
    }

    /// Waits for every task; those that died give their unsettled deliveries back.
    async fn finish(&mut self) {
        while let Some(joined) = self.set.join_next_with_id().await {
            let _ = self.settle(joined).await;
        }
    }
}

/// A panic caught while applying, as the failure it is settled as; its message goes to the log.
fn contained(payload: &(dyn std::any::Any + Send)) -> ApplyError {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    tracing::error!(panic = %message, "applying events panicked; the events are retried");
    ApplyError::Panicked(message)
}

/// What a batch's task takes along: the channel to hand failed events over on, the session's
/// signal that a hand-over was nacked, and its permit.
struct Handed {
    publish_channel: Channel,
    nacked: Arc<tokio::sync::Notify>,
    permit: tokio::sync::OwnedSemaphorePermit,
}

/// Whether a delivery was settled, or its hand-over to another queue was nacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HandOver {
    Done,
    Nacked,
}

/// The headers a failed event carries to its next queue (attempts, failure times, reason, type,
/// original routing key), and its attempt count.
fn failure_headers(
    delivery: &Delivery,
    event_type: &str,
    failure: &Failure,
    now: i64,
) -> (FieldTable, i64) {
    let old = delivery.properties.headers().as_ref();
    let attempts = headers::get_i64(old, headers::ATTEMPTS).unwrap_or(0) + 1;
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
    (table, attempts)
}

/// What becomes of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Settled here (applied, or skipped as a duplicate or stale): acknowledged.
    Ack(Outcome),
    /// To the retry tier with this delay.
    Retry(std::time::Duration),
    /// To the dead-letter queue.
    Dead,
    /// Back to the queue it came from. [`decide`] never chooses it: the execute stage falls
    /// back to it when an event cannot be handed over, so that nothing is lost.
    Requeue,
}

impl Settlement {
    /// The outcome label of the event metric.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ack(outcome) => outcome.as_str(),
            Self::Retry(_) => "retried",
            Self::Dead => "dead_lettered",
            Self::Requeue => "requeued",
        }
    }
}

/// What becomes of the `attempts`-th try of an event: acked when it settled; a transient
/// failure to the retry tier of that attempt (the last tier repeats) while attempts are left
/// and tiers exist; anything else to the dead-letter queue.
pub fn decide(
    result: &Result<Outcome, Failure>,
    attempts: i64,
    max_attempts: u32,
    delays: &[std::time::Duration],
) -> Settlement {
    match (result, delays.last()) {
        (Ok(outcome), _) => Settlement::Ack(*outcome),
        (Err(Failure::Transient(_)), Some(last)) if attempts < i64::from(max_attempts) => {
            let tier = usize::try_from(attempts - 1).unwrap_or(0);
            Settlement::Retry(delays.get(tier).copied().unwrap_or(*last))
        }
        (Err(_), _) => Settlement::Dead,
    }
}

/// A failed attempt, and whether trying again can help.
pub enum Failure {
    Transient(String),
    Permanent(String),
}

impl Failure {
    /// Why it failed.
    pub fn reason(&self) -> &str {
        match self {
            Self::Transient(reason) => reason,
            Self::Permanent(reason) => reason,
        }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn failure_headers_count_attempts_and_keep_the_first_failure_and_routing_key() {
        let first = Delivery::mock(1, "cs".into(), "events".into(), false, b"{}".to_vec());
        let failure = Failure::Transient("database down".into());
        let (table, attempts) = failure_headers(&first, "user.updated", &failure, 1_000);
        assert_eq!(attempts, 1);
        let t = Some(&table);
        assert_eq!(headers::get_i64(t, headers::FIRST_FAILURE_AT), Some(1_000));
        assert_eq!(
            headers::get_str(t, headers::REASON).as_deref(),
            Some("database down")
        );
        assert_eq!(
            headers::get_str(t, headers::ORIGINAL_ROUTING_KEY).as_deref(),
            Some("events")
        );
        // Back from a retry tier: the count grows, the first failure and routing key stay.
        let mut again =
            Delivery::mock(2, "cs".into(), "retry.5000ms".into(), false, b"{}".to_vec());
        again.properties = BasicProperties::default().with_headers(table);
        let (table, attempts) = failure_headers(&again, "user.updated", &failure, 2_000);
        let t = Some(&table);
        assert_eq!(attempts, 2);
        assert_eq!(headers::get_i64(t, headers::FIRST_FAILURE_AT), Some(1_000));
        assert_eq!(headers::get_i64(t, headers::LAST_FAILURE_AT), Some(2_000));
        assert_eq!(
            headers::get_str(t, headers::ORIGINAL_ROUTING_KEY).as_deref(),
            Some("events")
        );
    }

    #[test]
    fn transient_failures_climb_the_retry_tiers_then_go_to_the_dead_letter_queue() {
        let tiers = [Duration::from_secs(5), Duration::from_secs(30)];
        let transient = Err(Failure::Transient("database down".into()));
        assert_eq!(
            decide(&transient, 1, 4, &tiers),
            Settlement::Retry(tiers[0])
        );
        assert_eq!(
            decide(&transient, 2, 4, &tiers),
            Settlement::Retry(tiers[1])
        );
        assert_eq!(
            decide(&transient, 3, 4, &tiers),
            Settlement::Retry(tiers[1]),
            "the last tier repeats"
        );
        assert_eq!(
            decide(&transient, 4, 4, &tiers),
            Settlement::Dead,
            "out of attempts"
        );
        assert_eq!(
            decide(&transient, 1, 4, &[]),
            Settlement::Dead,
            "no retry tiers"
        );
        let permanent = Err(Failure::Permanent("not a Clerk event".into()));
        assert_eq!(decide(&permanent, 1, 4, &tiers), Settlement::Dead);
        assert_eq!(
            decide(&Ok(Outcome::Applied), 7, 4, &tiers),
            Settlement::Ack(Outcome::Applied),
            "a settled event is acked, whatever its attempts"
        );
        assert_eq!(Settlement::Dead.as_str(), "dead_lettered");
        assert_eq!(Settlement::Retry(tiers[0]).as_str(), "retried");
    }
}
