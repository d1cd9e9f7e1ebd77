//! Applying one Clerk event to Postgres, in one transaction, so that the database converges to
//! Clerk's newest state whatever the delivery: duplicates, any order, several workers at once.
//!
//! Per event:
//! 1. `pg_advisory_xact_lock` on the Clerk user id: events for one user apply one at a time,
//!    across every worker; events for different users run in parallel.
//! 2. Record the Svix id in `processed_events`; if it is already there the event is a duplicate
//!    and nothing else happens.
//! 3. A tombstone in `deleted_users` makes every later event for that user a no-op (Clerk never
//!    reuses a user id; a delete wins over everything).
//! 4. Upserts keep the newest Clerk `updated_at`: an older version changes nothing, and of two
//!    states with the same version the one with the later event timestamp (then the greater
//!    Svix id) wins, whatever the arrival order ([`version_tiebreak`]).

use crate::pool::Pool;
use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr, TransactionTrait, Value};
use tracing::Instrument as _;
use uuid::Uuid;

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use clerk_api::{ClerkClient, ClerkError};

use crate::{
    accounts::calendar_accounts,
    connections::{
        Fetched, SyncScope, disconnects_of_clerk_user, fetch_tokens, not_disconnected,
        sync_connections,
    },
    crypto::TokenCipher,
};

use crate::event::{ClerkEvent, UserSnapshot, version_tiebreak};

pub mod batch;
pub mod organizations;
pub mod txn;

pub use txn::{ApplyError, Outcome, tombstone_key};
use txn::{finish, record_svix_id, stmt, upsert_error};

/// Applies events: fetches calendar tokens from Clerk when an upsert may apply, then runs the
/// transaction; transient failures are retried in process with exponential backoff and jitter.
/// Shared by the consumer and the backfill. `Debug` shows no secret (see [`ClerkClient`] and
/// [`TokenCipher`]).
#[derive(Debug)]
pub struct Applier {
    pub db: Pool,
    /// Clerk's Backend API (none: calendar connections are recorded as not configured).
    pub clerk: Option<ClerkClient>,
    /// Encrypts calendar tokens at rest.
    pub cipher: Option<TokenCipher>,
    /// Quick retries before giving up on this attempt.
    pub in_process_retries: usize,
    /// `SYNC_PRIVATE_METADATA`: store users' private and unsafe metadata. When false they are
    /// dropped from every event before it is applied, so they never reach the database.
    pub store_private_metadata: bool,
}

/// How every [`Applier`] of a process calls Clerk and stores what it gets; [`Applier::new`] is
/// the one place an applier is made from it.
#[derive(Debug, Clone)]
pub struct ApplierSettings {
    /// Clerk's Backend API (none: calendar connections are recorded as not configured).
    pub clerk: Option<ClerkClient>,
    /// Encrypts calendar tokens at rest.
    pub cipher: Option<TokenCipher>,
    /// Quick retries before giving up on an attempt (`IN_PROCESS_RETRIES`).
    pub in_process_retries: usize,
    /// `SYNC_PRIVATE_METADATA`.
    pub store_private_metadata: bool,
}

impl Applier {
    /// An applier writing to `db` as `settings` say.
    pub fn new(db: Pool, settings: &ApplierSettings) -> Self {
        let settings = settings.clone();
        Self {
            db,
            clerk: settings.clerk,
            cipher: settings.cipher,
            in_process_retries: settings.in_process_retries,
            store_private_metadata: settings.store_private_metadata,
        }
    }
}

/// The longest `Retry-After` of Clerk's waited out in process; a longer one ends the in-process
/// retries (the queue's retry tiers, or the caller, take it from there).
pub const MAX_IN_PROCESS_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The in-process retry's next delay: the backoff's, but never sooner than Clerk's
/// `Retry-After` on a 429, and no retry at all when Clerk asks for a longer wait than
/// [`MAX_IN_PROCESS_RETRY_AFTER`].
fn honour_retry_after(error: &ApplyError, delay: Option<Duration>) -> Option<Duration> {
    match error {
        ApplyError::Clerk(ClerkError::RateLimited {
            retry_after: Some(after),
        }) if *after > MAX_IN_PROCESS_RETRY_AFTER => None,
        ApplyError::Clerk(ClerkError::RateLimited {
            retry_after: Some(after),
        }) => delay.map(|delay| delay.max(*after)),
        _ => delay,
    }
}

impl Applier {
    /// `event` without what this applier does not store: users' private and unsafe metadata
    /// unless `SYNC_PRIVATE_METADATA`. The one place that rule is applied; [`Self::apply`] and
    /// the consumer (before batching) both go through it.
    pub fn keep_only_stored(&self, event: ClerkEvent) -> ClerkEvent {
        if self.store_private_metadata {
            event
        } else {
            event.without_private_metadata()
        }
    }

    /// Applies `event`, retrying transient failures in process.
    pub async fn apply(
        &self,
        svix_id: Option<&str>,
        event_type: &str,
        event: &ClerkEvent,
    ) -> Result<Outcome, ApplyError> {
        let backoff = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(1))
            .with_jitter()
            .with_max_times(self.in_process_retries);
        let stripped;
        let event = if !self.store_private_metadata && event.has_private_metadata() {
            stripped = self.keep_only_stored(event.clone());
            &stripped
        } else {
            event
        };
        (|| self.try_apply(svix_id, event_type, event))
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(ApplyError::is_transient)
            .adjust(honour_retry_after)
            .notify(|error, delay| {
                tracing::warn!(error.message = %error, ?delay, "transient failure; retrying in process");
            })
            .await
    }

    /// Makes the stored calendar connections of `user` equal its external accounts (tokens
    /// fetched again), when the stored row is at exactly `user`'s version: what a reconcile does
    /// for a user whose profile is current but whose connections drifted. Returns whether it
    /// changed anything (`false`: the row moved on meanwhile, or is gone).
    pub async fn resync_connections(&self, user: &UserSnapshot) -> Result<bool, ApplyError> {
        let disconnects = disconnects_of_clerk_user(&self.db, &user.clerk_user_id).await?;
        let accounts = not_disconnected(&calendar_accounts(&user.external_accounts), &disconnects);
        let clerk = self.clerk.as_ref().filter(|_| self.cipher.is_some());
        let fetched = fetch_tokens(clerk, &user.clerk_user_id, &accounts).await?;
        let txn = self.db.begin().await?;
        txn.execute_raw(stmt(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            vec![user.clerk_user_id.as_str().into()],
        ))
        .await?;
        let row = txn
            .query_one_raw(stmt(
                "SELECT id FROM users WHERE clerk_user_id = $1 AND clerk_updated_at = $2",
                vec![user.clerk_user_id.as_str().into(), user.updated_at.into()],
            ))
            .await?;
        let Some(row) = row else {
            txn.rollback().await?;
            return Ok(false);
        };
        let user_id: Uuid = row.try_get("", "id")?;
        sync_connections(
            &txn,
            self.cipher.as_ref(),
            user_id,
            &fetched,
            SyncScope::All,
        )
        .await?;
        txn.commit().await?;
        Ok(true)
    }

    /// One attempt.
    async fn try_apply(
        &self,
        svix_id: Option<&str>,
        event_type: &str,
        event: &ClerkEvent,
    ) -> Result<Outcome, ApplyError> {
        crate::faults::reached(crate::faults::Point::Apply, svix_id);
        let mut fetched = Vec::new();
        if let ClerkEvent::UserUpserted(user) = event {
            let accounts = calendar_accounts(&user.external_accounts);
            // Accounts the user disconnected are not asked for tokens (the transaction checks
            // again under the user's lock).
            let accounts = if accounts.is_empty() {
                accounts
            } else {
                let disconnects = disconnects_of_clerk_user(&self.db, &user.clerk_user_id).await?;
                not_disconnected(&accounts, &disconnects)
            };
            if !accounts.is_empty() && upsert_may_apply(&self.db, svix_id, user).await? {
                let clerk = self.clerk.as_ref().filter(|_| self.cipher.is_some());
                fetched = fetch_tokens(clerk, &user.clerk_user_id, &accounts).await?;
            }
        }
        let calendar = CalendarUpdate {
            fetched: &fetched,
            cipher: self.cipher.as_ref(),
        };
        try_apply_event(&self.db, svix_id, event_type, event, calendar).await
    }
}

/// The calendar connections an upsert should leave behind (fetched from Clerk beforehand).
#[derive(Clone, Copy, Default)]
pub struct CalendarUpdate<'a> {
    pub fetched: &'a [Fetched],
    pub cipher: Option<&'a TokenCipher>,
}

/// Whether an upsert would change anything right now: not a duplicate, not deleted, newer than
/// the stored version. Used to skip Clerk API calls for events that will be skipped anyway
/// (the transaction decides again; versions only grow, so a "no" stays a "no").
pub async fn upsert_may_apply(
    db: &Pool,
    svix_id: Option<&str>,
    user: &UserSnapshot,
) -> Result<bool, DbErr> {
    let row = db
        .query_one_raw(stmt(
            "SELECT \
               EXISTS (SELECT 1 FROM processed_events WHERE svix_id = $1) AS duplicate, \
               EXISTS (SELECT 1 FROM deleted_users WHERE clerk_user_id_sha256 = $2) AS deleted, \
               EXISTS (SELECT 1 FROM users WHERE clerk_user_id = $3 \
                       AND (clerk_updated_at, clerk_version_tiebreak) >= ($4, $5)) AS stale",
            vec![
                svix_id.unwrap_or_default().into(),
                tombstone_key(&user.clerk_user_id).into(),
                user.clerk_user_id.as_str().into(),
                user.updated_at.into(),
                version_tiebreak(user.event_timestamp, svix_id).into(),
            ],
        ))
        .await?;
    let Some(row) = row else { return Ok(true) };
    let duplicate: bool = row.try_get("", "duplicate")?;
    let deleted: bool = row.try_get("", "deleted")?;
    let stale: bool = row.try_get("", "stale")?;
    Ok(!(duplicate || deleted || stale))
}

/// Applies `event` (delivered as Svix message `svix_id`, if known) in one transaction.
pub async fn try_apply_event(
    db: &Pool,
    svix_id: Option<&str>,
    event_type: &str,
    event: &ClerkEvent,
    calendar: CalendarUpdate<'_>,
) -> Result<Outcome, ApplyError> {
    let span = telemetry::traces::db_span("apply event", "transaction", None);
    let applied = async {
        if let ClerkEvent::Organization(org_event) = event {
            return organizations::apply(db, svix_id, event_type, org_event).await;
        }
        let Some(clerk_user_id) = event.clerk_user_id() else {
            return Ok(Outcome::Ignored);
        };
        let txn = db.begin().await?;
        let outcome = apply_in(&txn, svix_id, event_type, clerk_user_id, event, calendar).await;
        finish(txn, outcome).await
    }
    .instrument(span.clone())
    .await;
    telemetry::traces::record_result(&span, &applied);
    applied
}

async fn apply_in(
    txn: &DatabaseTransaction,
    svix_id: Option<&str>,
    event_type: &str,
    clerk_user_id: &str,
    event: &ClerkEvent,
    calendar: CalendarUpdate<'_>,
) -> Result<Outcome, ApplyError> {
    txn.execute_raw(stmt(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        vec![clerk_user_id.into()],
    ))
    .await?;
    if !record_svix_id(txn, svix_id, event_type).await? {
        return Ok(Outcome::Duplicate);
    }
    let tombstone = tombstone_key(clerk_user_id);
    match event {
        ClerkEvent::UserDeleted { .. } => {
            txn.execute_raw(stmt(
                "INSERT INTO deleted_users (clerk_user_id_sha256) VALUES ($1) \
                 ON CONFLICT DO NOTHING",
                vec![tombstone.into()],
            ))
            .await?;
            // Calendar connections go with the row (ON DELETE CASCADE).
            let deleted = txn
                .execute_raw(stmt(
                    "DELETE FROM users WHERE clerk_user_id = $1",
                    vec![clerk_user_id.into()],
                ))
                .await?;
            // Memberships waiting for a user whose row never came (the `users` trigger takes
            // the others).
            txn.execute_raw(stmt(
                "DELETE FROM organization_memberships WHERE clerk_user_id = $1",
                vec![clerk_user_id.into()],
            ))
            .await?;
            tracing::debug!(rows = deleted.rows_affected(), "user deleted");
            Ok(Outcome::Applied)
        }
        ClerkEvent::UserUpserted(user) => {
            let deleted = txn
                .query_one_raw(stmt(
                    "SELECT 1 AS one FROM deleted_users WHERE clerk_user_id_sha256 = $1",
                    vec![tombstone.into()],
                ))
                .await?;
            if deleted.is_some() {
                return Ok(Outcome::SkippedDeleted);
            }
            let outcome = upsert_user(txn, user, svix_id).await?;
            if outcome == Outcome::Applied {
                let row = txn
                    .query_one_raw(stmt(
                        "SELECT id FROM users WHERE clerk_user_id = $1",
                        vec![user.clerk_user_id.as_str().into()],
                    ))
                    .await?
                    .ok_or(DbErr::RecordNotFound("the user row just written".into()))?;
                let user_id: Uuid = row.try_get("", "id")?;
                sync_connections(
                    txn,
                    calendar.cipher,
                    user_id,
                    calendar.fetched,
                    SyncScope::All,
                )
                .await?;
            }
            Ok(outcome)
        }
        ClerkEvent::Organization(_) | ClerkEvent::Ignored { .. } => Ok(Outcome::Ignored),
    }
}

/// The `SET` list and version guard of an upsert of `users` that takes the incoming row
/// (`EXCLUDED`) only when its (version, tiebreak) is newer than the stored one: shared by
/// [`UPSERT_USER`] and the batch's upsert (`crate::batch`), so that both write the same columns.
macro_rules! newer_user_state {
    () => {
        "email = EXCLUDED.email, first_name = EXCLUDED.first_name, \
         last_name = EXCLUDED.last_name, clerk_updated_at = EXCLUDED.clerk_updated_at, \
         clerk_version_tiebreak = EXCLUDED.clerk_version_tiebreak, \
         clerk_created_at = COALESCE(EXCLUDED.clerk_created_at, users.clerk_created_at), \
         username = EXCLUDED.username, image_url = EXCLUDED.image_url, \
         external_id = EXCLUDED.external_id, \
         primary_phone_number = EXCLUDED.primary_phone_number, \
         public_metadata = EXCLUDED.public_metadata, \
         private_metadata = EXCLUDED.private_metadata, \
         unsafe_metadata = EXCLUDED.unsafe_metadata, \
         banned = EXCLUDED.banned, locked = EXCLUDED.locked, \
         last_sign_in_at = EXCLUDED.last_sign_in_at, \
         updated_at = now() \
         WHERE (users.clerk_updated_at, users.clerk_version_tiebreak) \
         < (EXCLUDED.clerk_updated_at, EXCLUDED.clerk_version_tiebreak)"
    };
}
pub(crate) use newer_user_state;

/// The version-guarded upsert of one user: `$1` id, `$2` Clerk id, `$3` email, `$4` first name,
/// `$5` last name, `$6` Clerk `updated_at`, `$7` Clerk `created_at`, `$8` tiebreak, `$9`
/// username, `$10` image URL, `$11` external id, `$12` primary phone number, `$13` public
/// metadata (jsonb), `$14` private metadata and `$15` unsafe metadata (jsonb; none unless
/// `SYNC_PRIVATE_METADATA=true`, see [`Applier::store_private_metadata`]), `$16` banned, `$17` locked,
/// `$18` last sign-in (timestamptz). Changes nothing unless (`$6`, `$8`) is newer than the stored
/// version. Public so that the benchmark measures this very statement.
pub const UPSERT_USER: &str = concat!(
    "INSERT INTO users (id, clerk_user_id, email, first_name, last_name, \
         clerk_updated_at, clerk_created_at, clerk_version_tiebreak, username, image_url, \
         external_id, primary_phone_number, public_metadata, private_metadata, unsafe_metadata, \
         banned, locked, last_sign_in_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, coalesce($13::jsonb, '{}'), \
         $14::jsonb, $15::jsonb, $16, $17, $18) \
     ON CONFLICT (clerk_user_id) DO UPDATE SET ",
    newer_user_state!()
);

/// The parameters of [`UPSERT_USER`] for `user` under a fresh row id, `tiebreak` its version's
/// tiebreak. Public so that the benchmark binds them as the worker does.
pub fn upsert_user_values(user: &UserSnapshot, tiebreak: &str) -> Vec<Value> {
    let at = |ms: Option<i64>| ms.and_then(DateTime::<Utc>::from_timestamp_millis);
    vec![
        Uuid::new_v4().into(),
        user.clerk_user_id.as_str().into(),
        user.email.clone().into(),
        user.first_name.clone().into(),
        user.last_name.clone().into(),
        user.updated_at.into(),
        at(user.created_at).into(),
        tiebreak.into(),
        user.username.clone().into(),
        user.image_url.clone().into(),
        user.external_id.clone().into(),
        user.primary_phone_number.clone().into(),
        user.public_metadata.clone().into(),
        user.private_metadata.clone().into(),
        user.unsafe_metadata.clone().into(),
        user.banned.into(),
        user.locked.into(),
        at(user.last_sign_in_at).into(),
    ]
}

async fn upsert_user(
    txn: &DatabaseTransaction,
    user: &UserSnapshot,
    svix_id: Option<&str>,
) -> Result<Outcome, ApplyError> {
    let tiebreak = version_tiebreak(user.event_timestamp, svix_id);
    let current = txn
        .query_one_raw(stmt(
            "SELECT clerk_updated_at, clerk_version_tiebreak FROM users WHERE clerk_user_id = $1",
            vec![user.clerk_user_id.as_str().into()],
        ))
        .await?;
    if let Some(row) = current {
        let version: i64 = row.try_get("", "clerk_updated_at")?;
        let stored_tiebreak: String = row.try_get("", "clerk_version_tiebreak")?;
        if (version, stored_tiebreak.as_str()) >= (user.updated_at, tiebreak.as_str()) {
            return Ok(Outcome::SkippedStale);
        }
    }
    if let Some(email) = &user.email {
        // Clerk keeps emails unique at every instant. If an older row still holds this address,
        // that user gave it up before our version: free it now (their newer event will set their
        // own address). If a newer row holds it, our event is the stale one for this address:
        // wait for this user's newer event (transient).
        txn.execute_raw(stmt(
            "UPDATE users SET email = NULL, updated_at = now() \
             WHERE email = $1 AND clerk_user_id <> $2 AND clerk_updated_at < $3",
            vec![
                email.as_str().into(),
                user.clerk_user_id.as_str().into(),
                user.updated_at.into(),
            ],
        ))
        .await?;
    }
    let result = txn
        .execute_raw(stmt(UPSERT_USER, upsert_user_values(user, &tiebreak)))
        .await;
    match result.map_err(upsert_error)? {
        done if done.rows_affected() == 0 => Ok(Outcome::SkippedStale),
        _ => Ok(Outcome::Applied),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn in_process_retries_wait_at_least_clerk_s_retry_after_and_give_up_on_a_long_one() {
        let limited = |secs| {
            ApplyError::Clerk(ClerkError::RateLimited {
                retry_after: Some(Duration::from_secs(secs)),
            })
        };
        let backoff = Some(Duration::from_millis(50));
        assert_eq!(
            honour_retry_after(&limited(2), backoff),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            honour_retry_after(&limited(0), backoff),
            backoff,
            "a shorter Retry-After keeps the backoff's delay"
        );
        assert_eq!(honour_retry_after(&limited(30), backoff), None);
        assert_eq!(
            honour_retry_after(&limited(2), None),
            None,
            "out of retries"
        );
        let unsaid = ApplyError::Clerk(ClerkError::RateLimited { retry_after: None });
        assert_eq!(honour_retry_after(&unsaid, backoff), backoff);
    }
    use super::*;

    #[test]
    fn tombstones_hold_a_hash_not_the_id() {
        let key = tombstone_key("user_2abcSYNTHuser01");
        assert_eq!(key.len(), 64);
        assert!(!key.contains("user_"));
        assert_eq!(key, tombstone_key("user_2abcSYNTHuser01"));
        // Lowercase hex of SHA-256: tombstones already stored must keep matching.
        assert_eq!(
            tombstone_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn the_upsert_binds_one_value_per_parameter() {
        let user = crate::event::parse_user(&serde_json::json!({"id": "user_x", "updated_at": 1}))
            .expect("parses");
        assert_eq!(
            upsert_user_values(&user, "").len(),
            UPSERT_USER.matches('$').count(),
            "one value per parameter"
        );
    }

    #[test]
    fn a_held_email_is_transient_and_logic_errors_are_not() {
        assert!(ApplyError::EmailHeld.is_transient());
        assert!(!ApplyError::Db(DbErr::Type("bad".into())).is_transient());
    }
}
