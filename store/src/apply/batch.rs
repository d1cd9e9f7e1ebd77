//! Applying many events in one transaction: the same rules as [`crate::apply`], set-based.
//!
//! One commit (one fsync) per batch instead of per event is what lets the worker keep up with the
//! broker. The result is the one that applying the events one by one in some order would give,
//! so every invariant of the single path holds:
//!
//! 1. Advisory locks on every Clerk user of the batch, taken in one statement in a fixed order
//!    (so that two batches never wait on each other in a cycle), held to the commit.
//! 2. Svix ids recorded in `processed_events`; ids already there (or twice in the batch) are
//!    duplicates and change nothing.
//! 3. Deletes first: tombstones, then the rows (connections go with them). An upsert of a user
//!    with a tombstone changes nothing, whatever the order in the batch.
//! 4. Per user only the newest upsert of the batch (by version, then tiebreak) can apply (the
//!    others are stale next to it), and only if it is newer than the stored row.
//! 5. Email addresses held by older rows are released, then the rows are upserted with the same
//!    version guard as the single path.
//!
//! Anything the set-based statements cannot decide alone (two users of the batch trading an
//! address, a row changed underneath) fails the statement; the whole batch then rolls back and
//! the caller applies its events one by one through the single path, which settles such cases.
//! Events that need Clerk's API (calendar accounts) or carry no Svix id never come here.

use crate::pool::Pool;
use std::collections::{BTreeSet, HashMap, HashSet};
use tracing::Instrument as _;

use sea_orm::{ConnectionTrait, DatabaseTransaction, TransactionTrait, Value};

use crate::{
    apply::{ApplyError, Outcome, finish, newer_user_state, stmt, tombstone_key, upsert_error},
    event::{ClerkEvent, UserSnapshot, version_tiebreak},
    faults,
};

/// One event of a batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchItem<'a> {
    /// The Svix message id (duplicate detection).
    pub svix_id: &'a str,
    /// The event type, as recorded in `processed_events`.
    pub event_type: &'a str,
    pub event: &'a ClerkEvent,
}

/// Whether `event` (delivered with `svix_id`) can be applied in a batch: it must carry a Svix id
/// and need nothing from Clerk's API (an upsert listing calendar accounts needs tokens).
pub fn batchable(svix_id: Option<&str>, event: &ClerkEvent) -> bool {
    svix_id.is_some()
        && match event {
            ClerkEvent::UserUpserted(user) => {
                crate::accounts::calendar_accounts(&user.external_accounts).is_empty()
            }
            ClerkEvent::UserDeleted { .. } | ClerkEvent::Ignored { .. } => true,
            // Rare next to user events: applied one by one, under their organization's lock.
            ClerkEvent::Organization(_) => false,
        }
}

/// Applies `items` in one transaction and returns each one's outcome, in order. On any error
/// nothing is committed.
pub async fn try_apply_batch(
    db: &Pool,
    items: &[BatchItem<'_>],
) -> Result<Vec<Outcome>, ApplyError> {
    for item in items {
        faults::reached(faults::Point::Apply, Some(item.svix_id));
    }
    if items
        .iter()
        .any(|item| matches!(item.event, ClerkEvent::Organization(_)))
    {
        // [`batchable`] keeps them out; were one here, the consumer's fall-back applies the
        // batch one by one rather than counting it as ignored.
        return Err(ApplyError::Db(sea_orm::DbErr::Custom(
            "organization events are applied one by one, not in a batch".into(),
        )));
    }
    let mut outcomes = vec![Outcome::Ignored; items.len()];
    if items
        .iter()
        .all(|item| item.event.clerk_user_id().is_none())
    {
        return Ok(outcomes);
    }
    let span = telemetry::traces::db_span("apply batch", "transaction", None);
    let committed = async {
        let txn = db.begin().await?;
        let applied = apply_in(&txn, items, &mut outcomes).await;
        finish(txn, applied).await
    }
    .instrument(span.clone())
    .await;
    telemetry::traces::record_result(&span, &committed);
    committed?;
    Ok(outcomes)
}

async fn apply_in(
    txn: &DatabaseTransaction,
    items: &[BatchItem<'_>],
    outcomes: &mut [Outcome],
) -> Result<(), ApplyError> {
    lock_users(txn, items).await?;
    let live = record_svix_ids(txn, items, outcomes).await?;
    delete_users(txn, items, &live).await?;
    let mut upserts: Vec<(usize, &UserSnapshot)> = Vec::new();
    for &i in &live {
        match items[i].event {
            ClerkEvent::UserDeleted { .. } => outcomes[i] = Outcome::Applied,
            ClerkEvent::UserUpserted(user) => upserts.push((i, user)),
            // Never here: `try_apply_batch` refuses batches holding them.
            ClerkEvent::Organization(_) | ClerkEvent::Ignored { .. } => {}
        }
    }
    if upserts.is_empty() {
        return Ok(());
    }
    let winners = newest_upserts(txn, items, &upserts, outcomes).await?;
    for chunk in chunks(&winners) {
        upsert_chunk(txn, chunk, outcomes).await?;
    }
    Ok(())
}

/// Step 1: locks every user of the batch, in the order of their keys.
async fn lock_users(txn: &DatabaseTransaction, items: &[BatchItem<'_>]) -> Result<(), ApplyError> {
    let users: BTreeSet<&str> = items
        .iter()
        .filter_map(|item| item.event.clerk_user_id())
        .collect();
    txn.execute_raw(stmt(
        "SELECT count(pg_advisory_xact_lock(k)) FROM \
           (SELECT DISTINCT hashtextextended(id, 0) AS k FROM unnest($1::text[]) AS t(id) \
            ORDER BY k) AS keys",
        vec![strings(users.iter().copied())],
    ))
    .await?;
    Ok(())
}

/// Step 2: records the Svix ids; returns the items that are not duplicates (the first of several
/// deliveries of one id in the batch claims it), marking the others.
async fn record_svix_ids(
    txn: &DatabaseTransaction,
    items: &[BatchItem<'_>],
    outcomes: &mut [Outcome],
) -> Result<Vec<usize>, ApplyError> {
    let about_users: Vec<usize> = (0..items.len())
        .filter(|&i| items[i].event.clerk_user_id().is_some())
        .collect();
    let rows = txn
        .query_all_raw(stmt(
            "INSERT INTO processed_events (svix_id, event_type) \
             SELECT * FROM unnest($1::text[], $2::text[]) \
             ON CONFLICT (svix_id) DO NOTHING RETURNING svix_id",
            vec![
                strings(about_users.iter().map(|&i| items[i].svix_id)),
                strings(about_users.iter().map(|&i| items[i].event_type)),
            ],
        ))
        .await?;
    let mut fresh: HashSet<String> = rows
        .iter()
        .map(|row| row.try_get::<String>("", "svix_id"))
        .collect::<Result<_, _>>()?;
    let mut live = Vec::new();
    for &i in &about_users {
        if fresh.remove(items[i].svix_id) {
            live.push(i);
        } else {
            outcomes[i] = Outcome::Duplicate;
        }
    }
    Ok(live)
}

/// Step 3, deletes: tombstones, then the rows (their connections go with them).
async fn delete_users(
    txn: &DatabaseTransaction,
    items: &[BatchItem<'_>],
    live: &[usize],
) -> Result<(), ApplyError> {
    let deleted: Vec<&str> = live
        .iter()
        .filter_map(|&i| match items[i].event {
            ClerkEvent::UserDeleted { clerk_user_id } => Some(clerk_user_id.as_str()),
            _ => None,
        })
        .collect();
    if deleted.is_empty() {
        return Ok(());
    }
    txn.execute_raw(stmt(
        "INSERT INTO deleted_users (clerk_user_id_sha256) SELECT unnest($1::text[]) \
         ON CONFLICT DO NOTHING",
        vec![strings(deleted.iter().map(|id| tombstone_key(id)))],
    ))
    .await?;
    txn.execute_raw(stmt(
        "DELETE FROM users USING (SELECT x.id FROM unnest($1::text[]) AS t(id), \
           LATERAL (SELECT u.id FROM users u WHERE u.clerk_user_id = t.id LIMIT 1) AS x) AS s \
         WHERE users.id = s.id",
        vec![strings(deleted.iter().copied())],
    ))
    .await?;
    // Memberships waiting for a user whose row never came (the `users` trigger takes the others).
    txn.execute_raw(stmt(
        "DELETE FROM organization_memberships WHERE clerk_user_id = ANY($1)",
        vec![strings(deleted.iter().copied())],
    ))
    .await?;
    Ok(())
}

/// Step 4, the upserts that can apply: not deleted, the newest of the batch per user (by version,
/// then tiebreak), newer than the stored row. The others are marked stale or deleted.
async fn newest_upserts<'a>(
    txn: &DatabaseTransaction,
    items: &[BatchItem<'_>],
    upserts: &[(usize, &'a UserSnapshot)],
    outcomes: &mut [Outcome],
) -> Result<Vec<Winner<'a>>, ApplyError> {
    let upsert_users: BTreeSet<&str> = upserts
        .iter()
        .map(|(_, user)| user.clerk_user_id.as_str())
        .collect();
    // Tombstones and stored versions in one round trip. Every lookup here is written as a
    // LATERAL with LIMIT 1 so that it stays an index lookup per user: a join of a small array
    // with a small (or bloated) table is otherwise planned as a hash join over a full scan.
    let mut tombstones: HashSet<String> = HashSet::new();
    let mut stored: HashMap<String, (i64, String)> = HashMap::new();
    let rows = txn
        .query_all_raw(stmt(
            "SELECT x.key, NULL::bigint AS version, NULL::text AS tiebreak \
             FROM unnest($1::text[]) AS t(key), \
               LATERAL (SELECT d.clerk_user_id_sha256 AS key FROM deleted_users d \
                        WHERE d.clerk_user_id_sha256 = t.key LIMIT 1) AS x \
             UNION ALL \
             SELECT t.id, x.version, x.tiebreak FROM unnest($2::text[]) AS t(id), \
               LATERAL (SELECT u.clerk_updated_at AS version, \
                               u.clerk_version_tiebreak AS tiebreak FROM users u \
                        WHERE u.clerk_user_id = t.id LIMIT 1) AS x",
            vec![
                strings(upsert_users.iter().map(|id| tombstone_key(id))),
                strings(upsert_users.iter().copied()),
            ],
        ))
        .await?;
    for row in rows {
        let key: String = row.try_get("", "key")?;
        match row.try_get::<Option<i64>>("", "version")? {
            None => {
                tombstones.insert(key);
            }
            Some(version) => {
                let tiebreak: String = row.try_get("", "tiebreak")?;
                stored.insert(key, (version, tiebreak));
            }
        }
    }
    // The newest upsert per user by (version, tiebreak), as applying them one by one would
    // leave it.
    let mut newest: HashMap<&str, Winner<'_>> = HashMap::new();
    for &(i, user) in upserts {
        if tombstones.contains(&tombstone_key(&user.clerk_user_id)) {
            outcomes[i] = Outcome::SkippedDeleted;
            continue;
        }
        outcomes[i] = Outcome::SkippedStale;
        let tiebreak = version_tiebreak(user.event_timestamp, Some(items[i].svix_id));
        if stored
            .get(&user.clerk_user_id)
            .is_some_and(|(version, stored_tiebreak)| {
                (*version, stored_tiebreak.as_str()) >= (user.updated_at, tiebreak.as_str())
            })
        {
            continue;
        }
        let candidate = Winner {
            index: i,
            user,
            tiebreak,
        };
        match newest.get_mut(user.clerk_user_id.as_str()) {
            Some(best) if best.key() >= candidate.key() => {}
            Some(best) => *best = candidate,
            None => {
                newest.insert(user.clerk_user_id.as_str(), candidate);
            }
        }
    }
    Ok(newest.into_values().collect())
}

/// The upsert of a batch that applies for its user: the newest by (version, tiebreak).
struct Winner<'a> {
    /// Its position in the batch.
    index: usize,
    user: &'a UserSnapshot,
    tiebreak: String,
}

impl Winner<'_> {
    fn key(&self) -> (i64, &str) {
        (self.user.updated_at, self.tiebreak.as_str())
    }
}

/// Largest JSON parameter sent in one statement. A bigger message leaves the socket in two
/// writes, and without TCP_NODELAY (sqlx does not set it) the second waits for the server's
/// delayed ACK: about 40 ms per statement on loopback.
const MAX_PARAMETER_BYTES: usize = 8 * 1024;

/// The winners as rows for `jsonb_to_recordset`, in chunks of at most [`MAX_PARAMETER_BYTES`].
fn chunks<'a, 'w>(winners: &'w [Winner<'a>]) -> Vec<Vec<&'w Winner<'a>>> {
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for winner in winners {
        let user = winner.user;
        let size = 200
            + winner.tiebreak.len()
            + user.clerk_user_id.len()
            + user.email.as_ref().map_or(0, String::len)
            + user.first_name.as_ref().map_or(0, String::len)
            + user.last_name.as_ref().map_or(0, String::len)
            + [
                &user.username,
                &user.image_url,
                &user.external_id,
                &user.primary_phone_number,
            ]
            .into_iter()
            .map(|field| field.as_ref().map_or(0, String::len))
            .sum::<usize>()
            + json_len(&user.public_metadata)
            + user.private_metadata.as_ref().map_or(0, json_len)
            + user.unsafe_metadata.as_ref().map_or(0, json_len);
        if !current.is_empty() && bytes + size > MAX_PARAMETER_BYTES {
            chunks.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(winner);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// The size of `value` as JSON text.
fn json_len(value: &serde_json::Value) -> usize {
    serde_json::to_vec(value).map_or(0, |text| text.len())
}

/// Releases the addresses the chunk's users take from older rows, then upserts them (one by one
/// in effect, chunk after chunk). These upserts list no calendar account: the users' connections
/// go.
async fn upsert_chunk(
    txn: &DatabaseTransaction,
    winners: Vec<&Winner<'_>>,
    outcomes: &mut [Outcome],
) -> Result<(), ApplyError> {
    free_emails(txn, &winners).await?;
    let rows = json_rows(&winners);
    let result = txn
        .query_all_raw(stmt(UPSERT_USERS, vec![rows.into()]))
        .await;
    let written = result.map_err(upsert_error)?;
    let mut applied_users = HashSet::with_capacity(written.len());
    for row in &written {
        applied_users.insert(row.try_get::<String>("", "clerk_user_id")?);
    }
    for winner in winners {
        if applied_users.contains(&winner.user.clerk_user_id) {
            outcomes[winner.index] = Outcome::Applied;
        }
    }
    Ok(())
}

/// The batch's version-guarded upsert of users, from `jsonb_to_recordset` rows
/// ([`json_rows`]): a user's calendar flags are reset (their connections are deleted: a user
/// with calendar accounts is never batched). Returns the Clerk ids of the rows written.
const UPSERT_USERS: &str = concat!(
    "WITH written AS ( \
           INSERT INTO users (id, clerk_user_id, email, first_name, last_name, \
               clerk_updated_at, clerk_version_tiebreak, clerk_created_at, username, image_url, \
               external_id, primary_phone_number, public_metadata, private_metadata, \
               unsafe_metadata, banned, locked, last_sign_in_at) \
           SELECT gen_random_uuid(), c.clerk_user_id, c.email, c.first_name, c.last_name, \
               c.version, c.tiebreak, \
               CASE WHEN c.created_ms IS NULL THEN NULL \
                    ELSE 'epoch'::timestamptz + c.created_ms * interval '1 millisecond' END, \
               c.username, c.image_url, c.external_id, c.primary_phone_number, \
               coalesce(c.public_metadata, '{}'::jsonb), \
               c.private_metadata, c.unsafe_metadata, \
               coalesce(c.banned, false), coalesce(c.locked, false), \
               CASE WHEN c.last_sign_in_ms IS NULL THEN NULL \
                    ELSE 'epoch'::timestamptz + c.last_sign_in_ms * interval '1 millisecond' END \
           FROM jsonb_to_recordset($1::jsonb) AS c(clerk_user_id text, email text, \
               first_name text, last_name text, version bigint, tiebreak text, \
               created_ms bigint, username text, image_url text, external_id text, \
               primary_phone_number text, public_metadata jsonb, private_metadata jsonb, \
               unsafe_metadata jsonb, banned boolean, locked boolean, last_sign_in_ms bigint) \
           ON CONFLICT (clerk_user_id) DO UPDATE SET \
               google_calendar_connected = false, microsoft_calendar_connected = false, \
               google_calendar_status = 'not_connected', microsoft_calendar_status = 'not_connected', ",
    newer_user_state!(),
    " \
           RETURNING id, clerk_user_id), \
         disconnected AS ( \
           DELETE FROM user_calendar_connections \
           WHERE user_id IN (SELECT id FROM written)) \
         SELECT clerk_user_id FROM written"
);

/// The winners as rows for [`UPSERT_USERS`].
fn json_rows(winners: &[&Winner<'_>]) -> serde_json::Value {
    serde_json::Value::Array(
        winners
            .iter()
            .map(|winner| {
                let user = winner.user;
                serde_json::json!({
                    "clerk_user_id": user.clerk_user_id,
                    "email": user.email,
                    "first_name": user.first_name,
                    "last_name": user.last_name,
                    "version": user.updated_at,
                    "tiebreak": winner.tiebreak,
                    "created_ms": user.created_at,
                    "username": user.username,
                    "image_url": user.image_url,
                    "external_id": user.external_id,
                    "primary_phone_number": user.primary_phone_number,
                    "public_metadata": user.public_metadata,
                    "private_metadata": user.private_metadata,
                    "unsafe_metadata": user.unsafe_metadata,
                    "banned": user.banned,
                    "locked": user.locked,
                    "last_sign_in_ms": user.last_sign_in_at,
                })
            })
            .collect(),
    )
}

/// Frees the addresses the winners take from users whose stored version is older (they gave
/// them up before these versions; their own newer events set their new addresses).
async fn free_emails(txn: &DatabaseTransaction, winners: &[&Winner<'_>]) -> Result<(), ApplyError> {
    let with_email: Vec<(&str, &str, i64)> = winners
        .iter()
        .filter_map(|winner| {
            let user = winner.user;
            let email = user.email.as_deref()?;
            Some((email, user.clerk_user_id.as_str(), user.updated_at))
        })
        .collect();
    // The holder's row belongs to a user outside this batch's locks: it may change while this
    // statement waits for it. The lookup locks it (FOR UPDATE re-checks the lookup's conditions
    // against the row's newest version), so the update works on a row that still matches; an
    // update joined to a plain lookup would re-check only its own conditions.
    if !with_email.is_empty() {
        txn.execute_raw(stmt(
            "WITH held AS ( \
               SELECT x.id FROM \
                 unnest($1::text[], $2::text[], $3::bigint[]) AS c(email, clerk_user_id, version), \
                 LATERAL (SELECT u.id FROM users u WHERE u.email = c.email \
                            AND u.clerk_user_id <> c.clerk_user_id \
                            AND u.clerk_updated_at < c.version LIMIT 1 FOR UPDATE) AS x) \
             UPDATE users SET email = NULL, updated_at = now() FROM held WHERE users.id = held.id",
            vec![
                strings(with_email.iter().map(|(email, _, _)| *email)),
                strings(with_email.iter().map(|(_, id, _)| *id)),
                with_email
                    .iter()
                    .map(|(_, _, version)| *version)
                    .collect::<Vec<i64>>()
                    .into(),
            ],
        ))
        .await?;
    }
    Ok(())
}

/// A text array parameter (shared with the worker's reconcile, `worker::repair`).
pub fn strings<'a>(
    values: impl IntoIterator<Item = impl Into<std::borrow::Cow<'a, str>>>,
) -> Value {
    values
        .into_iter()
        .map(|v| v.into().into_owned())
        .collect::<Vec<String>>()
        .into()
}
