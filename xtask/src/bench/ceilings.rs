//! What the broker and the database can do on this box, measured with the simplest client that
//! does the same work as ours:
//! - broker: one lapin channel in confirm mode publishing persistent, mandatory messages of the
//!   events' average size (with the ingress's properties) to a quorum queue, a fixed number
//!   unconfirmed at any time;
//! - database: the worker's version-guarded upsert into `users`, one row per transaction from
//!   many connections, and many rows per transaction (multi-row through `unnest` arrays).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use broker::{
    headers,
    lapin::{
        BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
        options::{
            BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
        },
        types::{AMQPValue, FieldTable, LongString, ShortString},
    },
};
use futures_util::{StreamExt, stream::FuturesUnordered};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, RuntimeErr, Statement, TransactionTrait,
    Value,
};

use super::load::per_second;

/// Messages unconfirmed at any time in the broker ceiling (as many as the ingress has at 64
/// connections).
pub const BROKER_IN_FLIGHT: usize = 64;
/// Connections of the one-row-per-transaction ceiling (the worker's default concurrency).
pub const DB_SINGLE_CONCURRENCY: usize = 16;
/// Rows per transaction of the batched ceiling.
pub const DB_BATCH_ROWS: usize = 64;
/// Transactions at once in the batched ceiling.
pub const DB_BATCH_CONCURRENCY: usize = 4;

/// One ceiling: how many operations in how long.
#[derive(Debug, Clone, Copy)]
pub struct Ceiling {
    pub count: u64,
    pub wall: Duration,
}

impl Ceiling {
    pub fn per_s(&self) -> f64 {
        per_second(self.count, self.wall)
    }
}

/// Prefetch of the end-to-end ceiling's consumer (the worker's default).
pub const E2E_PREFETCH: u16 = 512;
/// The end-to-end ceiling's consumer acknowledges this many deliveries at once (`multiple`).
pub const E2E_ACK_EVERY: u64 = 64;

async fn connect(amqp_url: &str) -> anyhow::Result<Connection> {
    Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .with_context(|| {
            format!(
                "cannot reach RabbitMQ at {}; is it running? (set AMQP_URL)",
                broker::redact_url(amqp_url)
            )
        })
}

/// Publishes `count` messages of `size` bytes to a fresh quorum queue `queue` with
/// [`BROKER_IN_FLIGHT`] unconfirmed at a time; deletes the queue.
pub async fn broker(
    amqp_url: &str,
    queue: &str,
    count: usize,
    size: usize,
) -> anyhow::Result<Ceiling> {
    broker_run(amqp_url, queue, count, size, false).await
}

/// The broker end to end: the publisher of [`broker`], and at the same time a consumer on a
/// connection of its own (prefetch [`E2E_PREFETCH`], acknowledging [`E2E_ACK_EVERY`]
/// deliveries at once); timed until every message is consumed and acknowledged.
pub async fn broker_end_to_end(
    amqp_url: &str,
    queue: &str,
    count: usize,
    size: usize,
) -> anyhow::Result<Ceiling> {
    broker_run(amqp_url, queue, count, size, true).await
}

/// Consumes `count` messages from `queue`, acknowledging in batches.
async fn consume_all(connection: &Connection, queue: &str, count: u64) -> anyhow::Result<()> {
    use broker::lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
    let channel = connection
        .create_channel()
        .await
        .context("cannot open the consumer's channel")?;
    channel
        .basic_qos(E2E_PREFETCH, BasicQosOptions::default())
        .await
        .context("cannot set the prefetch")?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "bench-e2e".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("cannot consume from {queue}"))?;
    let mut received = 0u64;
    while received < count {
        let delivery = consumer
            .next()
            .await
            .context("the consumer ended early")?
            .context("a delivery failed")?;
        received += 1;
        if received.is_multiple_of(E2E_ACK_EVERY) || received == count {
            delivery
                .ack(BasicAckOptions { multiple: true })
                .await
                .context("cannot acknowledge")?;
        }
    }
    Ok(())
}

async fn broker_run(
    amqp_url: &str,
    queue: &str,
    count: usize,
    size: usize,
    consume: bool,
) -> anyhow::Result<Ceiling> {
    let connection = connect(amqp_url).await?;
    let channel = quorum_queue_with_confirms(&connection, queue).await?;
    let consumer_connection = if consume {
        Some(connect(amqp_url).await?)
    } else {
        None
    };
    let consumer = consumer_connection
        .as_ref()
        .map(|c| consume_all(c, queue, count as u64));
    let started = Instant::now();
    let publish = publish_all(&channel, queue, count, size);
    let refused = match consumer {
        Some(consumer) => tokio::try_join!(publish, consumer)?.0,
        None => publish.await?,
    };
    let wall = started.elapsed();
    if let Some(c) = &consumer_connection {
        let _ = c.close(200, "bench done".into()).await;
    }
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .with_context(|| format!("cannot delete the queue {queue}"))?;
    let _ = connection.close(200, "bench done".into()).await;
    if let Some((refused, first_refusal)) = refused {
        bail!(
            "RabbitMQ refused {refused} of {count} publishes to {queue} ({first_refusal}); the \
             broker ceiling cannot be measured"
        );
    }
    Ok(Ceiling {
        count: count as u64,
        wall,
    })
}

/// A channel of `connection` in confirm mode, and the quorum queue `queue` declared on it.
async fn quorum_queue_with_confirms(
    connection: &Connection,
    queue: &str,
) -> anyhow::Result<Channel> {
    let channel = connection
        .create_channel()
        .await
        .context("cannot open an AMQP channel")?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("cannot turn on publisher confirms")?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .with_context(|| format!("cannot declare the quorum queue {queue}"))?;
    Ok(channel)
}

/// Publishes `count` messages of `size` bytes to `queue` with [`BROKER_IN_FLIGHT`]
/// unconfirmed at a time, and waits for every confirmation: how many were refused and the
/// first refusal, if any was.
async fn publish_all(
    channel: &Channel,
    queue: &str,
    count: usize,
    size: usize,
) -> anyhow::Result<Option<(u64, String)>> {
    let payload = vec![b'x'; size];
    let mut pending = FuturesUnordered::new();
    let mut refused = 0_u64;
    let mut first_refusal = None;
    for i in 0..count {
        if pending.len() >= BROKER_IN_FLIGHT
            && let Some(confirmation) = pending.next().await
        {
            count_confirmation(confirmation, &mut refused, &mut first_refusal);
        }
        let svix_id = format!("msg_{:032x}", i);
        let confirm = channel
            .basic_publish(
                ShortString::from(""),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &payload,
                ingress_like_properties(&svix_id),
            )
            .await
            .context("publishing to RabbitMQ failed")?;
        pending.push(confirm);
    }
    while let Some(confirmation) = pending.next().await {
        count_confirmation(confirmation, &mut refused, &mut first_refusal);
    }
    Ok((refused > 0).then(|| (refused, first_refusal.unwrap_or_default())))
}

fn count_confirmation(
    confirmation: Result<Confirmation, broker::lapin::Error>,
    refused: &mut u64,
    first: &mut Option<String>,
) {
    let problem = match confirmation {
        Ok(Confirmation::Ack(None)) => return,
        Ok(Confirmation::Ack(Some(_))) => "returned as unroutable".to_owned(),
        Ok(Confirmation::Nack(_)) => "nacked".to_owned(),
        Ok(Confirmation::NotRequested) => "confirms are off".to_owned(),
        Err(error) => error.to_string(),
    };
    *refused += 1;
    first.get_or_insert(problem);
}

/// The properties the ingress sets: persistent, message id, content type, timestamp, the Svix
/// headers and the accept time.
fn ingress_like_properties(svix_id: &str) -> BasicProperties {
    let mut table = FieldTable::default();
    let now_ms = super::events::now_ms().unwrap_or_default();
    for (name, value) in [
        (headers::SVIX_ID, svix_id.to_owned()),
        (headers::SVIX_TIMESTAMP, (now_ms / 1000).to_string()),
        (headers::SVIX_SIGNATURE, format!("v1,{}", "A".repeat(44))),
    ] {
        table.insert(
            ShortString::from(name),
            AMQPValue::LongString(LongString::from(value)),
        );
    }
    table.insert(
        ShortString::from(headers::RECEIVED_AT),
        AMQPValue::LongLongInt(now_ms),
    );
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(svix_id))
        .with_content_type(ShortString::from("application/json"))
        .with_timestamp(u64::try_from(now_ms / 1000).unwrap_or_default())
        .with_headers(table)
}

/// The worker's own upsert, one row.
const UPSERT_ONE: &str = store::apply::UPSERT_USER;

/// The same upsert for many rows, bound as arrays, with the worker's version guard (the
/// ceilings' rows carry no tiebreak: the empty one).
const UPSERT_MANY: &str = "INSERT INTO users (id, clerk_user_id, email, first_name, last_name, \
         clerk_updated_at, clerk_created_at) \
     SELECT id, clerk_user_id, email, first_name, last_name, clerk_updated_at, \
         to_timestamp(clerk_created_ms / 1000.0) \
     FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], \
         $7::bigint[]) \
         AS t(id, clerk_user_id, email, first_name, last_name, clerk_updated_at, clerk_created_ms) \
     ON CONFLICT (clerk_user_id) DO UPDATE SET \
         email = EXCLUDED.email, first_name = EXCLUDED.first_name, \
         last_name = EXCLUDED.last_name, clerk_updated_at = EXCLUDED.clerk_updated_at, \
         clerk_version_tiebreak = EXCLUDED.clerk_version_tiebreak, \
         clerk_created_at = COALESCE(EXCLUDED.clerk_created_at, users.clerk_created_at), \
         updated_at = now() \
     WHERE (users.clerk_updated_at, users.clerk_version_tiebreak) \
         < (EXCLUDED.clerk_updated_at, EXCLUDED.clerk_version_tiebreak)";

/// Clerk's `created_at` of every ceiling user (ms).
const CREATED_MS: i64 = 1_735_689_600_000;

/// Row `k` of the ceilings: user `k % users` at version `k / users + 1`.
struct Row {
    clerk_user_id: String,
    email: String,
    first_name: String,
    last_name: String,
    updated_at: i64,
}

fn row(k: usize, users: usize, base: i64) -> Row {
    let user = k % users;
    let version = k / users + 1;
    Row {
        clerk_user_id: format!("user_2ceiling{user:07}"),
        email: format!("c{user}+{version}@ceiling.example"),
        first_name: format!("Ceiling{user}"),
        last_name: format!("Version{version}"),
        updated_at: base + i64::try_from(version).unwrap_or(i64::MAX) * 1000,
    }
}

/// `rows` upserts over `users` users, one per transaction, [`DB_SINGLE_CONCURRENCY`] at once.
pub async fn db_single(
    db: &DatabaseConnection,
    rows: usize,
    users: usize,
) -> anyhow::Result<Ceiling> {
    let base = super::events::now_ms()?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..DB_SINGLE_CONCURRENCY)
        .map(|_| {
            let db = db.clone();
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= rows {
                        return Ok::<_, DbErr>(());
                    }
                    let row = row(k, users, base);
                    let user = store::event::UserSnapshot {
                        clerk_user_id: row.clerk_user_id,
                        email: Some(row.email),
                        first_name: Some(row.first_name),
                        last_name: Some(row.last_name),
                        created_at: Some(CREATED_MS),
                        updated_at: row.updated_at,
                        event_timestamp: None,
                        external_accounts: Vec::new(),
                        username: None,
                        image_url: None,
                        external_id: None,
                        primary_phone_number: None,
                        public_metadata: serde_json::json!({}),
                        private_metadata: None,
                        unsafe_metadata: None,
                        banned: false,
                        locked: false,
                        last_sign_in_at: None,
                    };
                    let values = store::apply::upsert_user_values(&user, "");
                    upsert_in_transaction(&db, UPSERT_ONE, values).await?;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await
            .context("a database ceiling task panicked")?
            .context("the one-row-per-transaction upsert failed")?;
    }
    Ok(Ceiling {
        count: rows as u64,
        wall: started.elapsed(),
    })
}

/// `rows` upserts over `users` users, [`DB_BATCH_ROWS`] per transaction (fewer when there are
/// fewer users: one statement cannot update a row twice), [`DB_BATCH_CONCURRENCY`] transactions
/// at once. Returns the ceiling and the batch size used.
pub async fn db_batched(
    db: &DatabaseConnection,
    rows: usize,
    users: usize,
) -> anyhow::Result<(Ceiling, usize)> {
    let base = super::events::now_ms()?;
    let batch = DB_BATCH_ROWS.min(users).max(1);
    let batches = rows.div_ceil(batch);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..DB_BATCH_CONCURRENCY)
        .map(|_| {
            let db = db.clone();
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                loop {
                    let b = next.fetch_add(1, Ordering::Relaxed);
                    if b >= batches {
                        return Ok::<_, DbErr>(());
                    }
                    let mut chunk: Vec<Row> = (b * batch..((b + 1) * batch).min(rows))
                        .map(|k| row(k, users, base))
                        .collect();
                    // One lock order for every transaction: no deadlocks between batches.
                    chunk.sort_by(|a, b| a.clerk_user_id.cmp(&b.clerk_user_id));
                    let values: Vec<Value> = vec![
                        chunk
                            .iter()
                            .map(|_| uuid::Uuid::new_v4())
                            .collect::<Vec<_>>()
                            .into(),
                        chunk
                            .iter()
                            .map(|r| r.clerk_user_id.clone())
                            .collect::<Vec<_>>()
                            .into(),
                        chunk
                            .iter()
                            .map(|r| r.email.clone())
                            .collect::<Vec<_>>()
                            .into(),
                        chunk
                            .iter()
                            .map(|r| r.first_name.clone())
                            .collect::<Vec<_>>()
                            .into(),
                        chunk
                            .iter()
                            .map(|r| r.last_name.clone())
                            .collect::<Vec<_>>()
                            .into(),
                        chunk
                            .iter()
                            .map(|r| r.updated_at)
                            .collect::<Vec<_>>()
                            .into(),
                        chunk.iter().map(|_| CREATED_MS).collect::<Vec<_>>().into(),
                    ];
                    upsert_in_transaction(&db, UPSERT_MANY, values).await?;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await
            .context("a database ceiling task panicked")?
            .context("the batched upsert failed")?;
    }
    Ok((
        Ceiling {
            count: rows as u64,
            wall: started.elapsed(),
        },
        batch,
    ))
}

/// Runs `attempt` again (up to 5 times) when it fails with a deadlock or serialization failure,
/// which concurrent upserts of the same users can meet.
async fn with_retry<F, Fut>(mut attempt: F) -> Result<(), DbErr>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), DbErr>>,
{
    let mut tries = 0;
    loop {
        match attempt().await {
            Ok(()) => return Ok(()),
            Err(error) if tries < 5 && is_conflict(&error) => tries += 1,
            Err(error) => return Err(error),
        }
    }
}

fn is_conflict(error: &DbErr) -> bool {
    let (DbErr::Exec(RuntimeErr::SqlxError(error)) | DbErr::Query(RuntimeErr::SqlxError(error))) =
        error
    else {
        return false;
    };
    // 40P01 deadlock detected, 40001 serialization failure.
    error
        .as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == "40P01" || code == "40001")
}

/// Empties every table the worker writes, so that the pipeline starts from a clean database.
pub async fn truncate(db: &DatabaseConnection) -> anyhow::Result<()> {
    db.execute_unprepared("TRUNCATE users, processed_events, deleted_users CASCADE")
        .await
        .context("cannot empty the bench tables")?;
    Ok(())
}

/// Runs one upsert statement in its own transaction (retried like every ceiling statement).
async fn upsert_in_transaction(
    db: &DatabaseConnection,
    sql: &str,
    values: Vec<Value>,
) -> Result<(), DbErr> {
    with_retry(|| {
        let values = values.clone();
        async move {
            let txn = db.begin().await?;
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql,
                values,
            ))
            .await?;
            txn.commit().await
        }
    })
    .await
}
