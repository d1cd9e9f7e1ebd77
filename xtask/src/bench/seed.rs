//! Generators of a large database, in a few set-based statements (`generate_series`, no row
//! round trips): a million users, ten million Svix ids. They write only the database they are
//! given, which the bench creates and drops.

use std::time::{Duration, Instant};

use anyhow::Context;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

/// Prefix of the seeded users' Clerk ids (the bench's events use `user_2bench…`).
pub const SEEDED_USER_PREFIX: &str = "user_2seed";

/// Rows per statement: bounded, so no statement holds gigabytes of WAL or memory.
const CHUNK: u64 = 250_000;

/// The Clerk id of seeded user `i` (1-based).
pub fn seeded_user(i: u64) -> String {
    format!("{SEEDED_USER_PREFIX}{i:08}")
}

async fn execute(db: &DatabaseConnection, sql: String, what: &str) -> anyhow::Result<()> {
    db.execute_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .with_context(|| format!("cannot {what}"))?;
    Ok(())
}

/// Runs the statement `insert` makes of each chunk `(from, to)` of `1..=count`, then
/// `ANALYZE`s `table`; `what` the rows are, for errors. Returns the time it took.
async fn insert_in_chunks(
    db: &DatabaseConnection,
    count: u64,
    (table, what): (&str, &str),
    insert: impl Fn(u64, u64) -> String,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut from = 1;
    while from <= count {
        let to = (from + CHUNK - 1).min(count);
        execute(db, insert(from, to), &format!("insert the seeded {what}")).await?;
        from = to + 1;
    }
    let analyze = format!("ANALYZE {table}");
    execute(db, analyze, &format!("analyze {table}")).await?;
    Ok(started.elapsed())
}

/// Inserts `count` users like the worker writes them (a fifth with a Google calendar, profile
/// fields, public metadata), then `ANALYZE`s the table. Returns the time it took.
pub async fn users(db: &DatabaseConnection, count: u64) -> anyhow::Result<Duration> {
    insert_in_chunks(db, count, ("users", "users"), |from, to| {
        format!(
            "INSERT INTO users (id, clerk_user_id, email, first_name, last_name, \
               microsoft_calendar_connected, google_calendar_connected, clerk_updated_at, \
               clerk_version_tiebreak, clerk_created_at, username, image_url, \
               public_metadata, banned, locked, last_sign_in_at, created_at, updated_at) \
             SELECT gen_random_uuid(), '{SEEDED_USER_PREFIX}' || lpad(i::text, 8, '0'), \
               'seed' || i || '@example.test', 'Seed', 'User ' || i, i % 20 = 0, i % 5 = 0, \
               1700000000000 + i, '', now() - interval '90 days', NULL, \
               'https://img.clerk.com/seed/' || i, '{{\"plan\": \"pro\"}}'::jsonb, false, \
               false, now() - interval '1 day', now(), now() \
             FROM generate_series({from}::bigint, {to}::bigint) AS i"
        )
    })
    .await
}

/// Inserts `count` processed Svix ids, processed between `oldest_days` and `newest_days` ago,
/// spread evenly, in the time order Svix's KSUID-based ids have; then `ANALYZE`s the table.
pub async fn processed_events(
    db: &DatabaseConnection,
    count: u64,
    (oldest_days, newest_days): (u32, u32),
) -> anyhow::Result<Duration> {
    let newest_s = f64::from(newest_days) * 86_400.0;
    let span_s = f64::from(oldest_days.saturating_sub(newest_days)) * 86_400.0;
    let rows = ("processed_events", "Svix ids");
    insert_in_chunks(db, count, rows, |from, to| {
        format!(
            "INSERT INTO processed_events (svix_id, event_type, processed_at) \
             SELECT 'msg_seed' || lpad(i::text, 10, '0'), 'user.updated', \
               now() - make_interval(secs => {newest_s} + {span_s} * \
                 (1 - i::double precision / {count})) \
             FROM generate_series({from}::bigint, {to}::bigint) AS i"
        )
    })
    .await
}
