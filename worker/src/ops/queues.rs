//! `worker migrate-queues`: brings queues declared by an older clerk-sync to today's arguments.
//!
//! A queue's arguments cannot change in place, and clerk-sync's first releases declared the main
//! queue with a broker delivery limit of 50 (RabbitMQ counts a crashed worker's returns against
//! it, so crashes could dead-letter healthy events); on RabbitMQ 4 a dead-letter queue declared
//! without the argument gets the broker's default limit of 20 (and listings count against it).
//! Each such queue is rebuilt without losing a message:
//!
//! 1. a temporary queue `<queue>.migrating` with today's arguments takes over the routing key;
//! 2. the old queue's messages move to it (each publish confirmed before the original is acked);
//! 3. the old queue is deleted (only if empty) and declared again with today's arguments;
//! 4. the temporary queue's messages move back, and it is deleted.
//!
//! Stop the workers first (their unacknowledged deliveries would go with the deleted queue);
//! the ingress may keep running: what it publishes meanwhile lands in one queue or the other.
//! A message published during step 1 can be moved twice; the worker detects the duplicate. The
//! command can be run again after an interruption.

use broker::{
    BrokerConfig, Topology,
    lapin::{
        BasicProperties, Channel, Connection,
        options::{
            BasicAckOptions, BasicGetOptions, ConfirmSelectOptions, QueueBindOptions,
            QueueDeleteOptions,
        },
        types::FieldTable,
    },
    publish_confirmed,
};
use serde::Serialize;

use crate::ops::dlq::{DlqError, connect_first};

/// What happened to one queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueMigration {
    pub queue: String,
    /// False when the queue already had today's arguments.
    pub rebuilt: bool,
    /// Messages carried over.
    pub moved: usize,
}

/// Rebuilds every queue of `topology` whose delivery limit differs from today's declaration.
pub async fn migrate(
    broker: &BrokerConfig,
    topology: &Topology,
) -> Result<Vec<QueueMigration>, DlqError> {
    let connection = connect_first(broker, "migrate-queues").await?;
    let result = migrate_on(&connection, broker, topology).await;
    let _ = connection.close(200, "migration done".into()).await;
    result
}

async fn migrate_on(
    connection: &Connection,
    broker: &BrokerConfig,
    topology: &Topology,
) -> Result<Vec<QueueMigration>, DlqError> {
    let version = broker.server_version().await;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut out = Vec::new();
    for (queue, routing_key, args) in topology.queue_declarations(version) {
        // A temporary queue left by an interrupted run is finished first.
        let temporary = format!("{queue}.migrating");
        let leftover = exists(connection, &temporary).await?;
        let current = leftover || !declares_cleanly(connection, &queue, &args).await?;
        if !current {
            bind(&channel, &queue, topology.exchange(), &routing_key).await?;
            out.push(QueueMigration {
                queue,
                rebuilt: false,
                moved: 0,
            });
            continue;
        }
        tracing::warn!(queue = %queue, "rebuilding the queue with today's arguments");
        let exchange = topology.exchange();
        // 1. The temporary queue takes over the routing key.
        broker::declare_queue(&channel, &temporary, args.clone(), false).await?;
        bind(&channel, &temporary, exchange, &routing_key).await?;
        let mut moved = 0;
        if exists(connection, &queue).await? {
            channel
                .queue_unbind(
                    queue.as_str().into(),
                    exchange.into(),
                    routing_key.as_str().into(),
                    FieldTable::default(),
                )
                .await?;
            // 2. and 3.
            drain_and_delete(&channel, &queue, &temporary).await?;
        }
        broker::declare_queue(&channel, &queue, args.clone(), false).await?;
        bind(&channel, &queue, exchange, &routing_key).await?;
        // 4.
        channel
            .queue_unbind(
                temporary.as_str().into(),
                exchange.into(),
                routing_key.as_str().into(),
                FieldTable::default(),
            )
            .await?;
        moved += drain_and_delete(&channel, &temporary, &queue).await?;
        out.push(QueueMigration {
            queue,
            rebuilt: true,
            moved,
        });
    }
    let _ = channel.close(200, "migration done".into()).await;
    Ok(out)
}

/// Moves every message of `from` to `to`, then deletes `from` once it is seen empty with no
/// consumer (quorum queues do not support `if-empty` deletes). Returns how many moved.
async fn drain_and_delete(channel: &Channel, from: &str, to: &str) -> Result<usize, DlqError> {
    let mut moved = 0;
    loop {
        moved += move_all(channel, from, to).await?;
        let Some(queue) = broker::queue_depth(channel, from).await? else {
            break;
        };
        if queue.consumers > 0 {
            return Err(DlqError::QueueInUse(from.to_owned()));
        }
        if queue.messages == 0 {
            break;
        }
    }
    channel
        .queue_delete(from.into(), QueueDeleteOptions::default())
        .await?;
    Ok(moved)
}

/// Whether `queue` exists (a passive declare, on a channel of its own: a miss closes it).
async fn exists(connection: &Connection, queue: &str) -> Result<bool, DlqError> {
    let probe = connection.create_channel().await?;
    let found = broker::queue_depth(&probe, queue).await?.is_some();
    if probe.status().connected() {
        let _ = probe.close(200, "probe".into()).await;
    }
    Ok(found)
}

/// Whether declaring `queue` with `args` succeeds (it is missing, or has these arguments).
async fn declares_cleanly(
    connection: &Connection,
    queue: &str,
    args: &FieldTable,
) -> Result<bool, DlqError> {
    let probe = connection.create_channel().await?;
    let clean = broker::declare_queue(&probe, queue, args.clone(), false)
        .await
        .is_ok();
    if probe.status().connected() {
        let _ = probe.close(200, "probe".into()).await;
    }
    Ok(clean)
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str) -> Result<(), DlqError> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Moves every message of `from` to `to` (through the default exchange), each confirmed before
/// the original is acked. Returns how many moved.
async fn move_all(channel: &Channel, from: &str, to: &str) -> Result<usize, DlqError> {
    let mut moved = 0;
    while let Some(message) = channel
        .basic_get(from.into(), BasicGetOptions { no_ack: false })
        .await?
    {
        let delivery = message.delivery;
        let properties: BasicProperties = delivery.properties.clone();
        publish_confirmed(channel, "", to, &delivery.data, properties)
            .await
            .map_err(|source| DlqError::Move {
                from: from.to_owned(),
                to: to.to_owned(),
                source,
            })?;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        moved += 1;
    }
    Ok(moved)
}
