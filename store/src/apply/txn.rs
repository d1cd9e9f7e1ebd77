//! What every apply path shares: the outcome and error of applying an event, the Svix-id
//! record that makes a redelivery a no-op, tombstone keys, and committing or rolling back.

use clerk_api::ClerkError;
use entity::db_errors::is_transient as is_transient_db;
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, Statement, Value};
use sha2::{Digest, Sha256};

use crate::connections::StoreError;

/// What applying an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The database changed.
    Applied,
    /// An equal or newer version was already stored.
    SkippedStale,
    /// The user was deleted; the event cannot bring them back.
    SkippedDeleted,
    /// The same Svix message was applied before.
    Duplicate,
    /// An event type clerk-sync does not handle.
    Ignored,
}

impl Outcome {
    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::SkippedStale => "skipped_stale",
            Self::SkippedDeleted => "skipped_deleted",
            Self::Duplicate => "duplicate",
            Self::Ignored => "ignored",
        }
    }
}

/// Why an event could not be applied this time.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The email is held by another user whose row is at least as new: that user's newer event,
    /// which frees the address, is on its way. Transient.
    #[error(
        "email address is held by another user with a newer or equal version; waiting for that user's update"
    )]
    EmailHeld,
    /// The organization's slug is held by another organization whose row is at least as new:
    /// that organization's newer event, which frees it, is on its way. Transient.
    #[error(
        "organization slug is held by another organization with a newer or equal version; waiting for that organization's update"
    )]
    SlugHeld,
    /// A database failure.
    #[error("database: {0}")]
    Db(#[from] DbErr),
    /// Clerk's Backend API failed while fetching calendar tokens.
    #[error("Clerk API: {0}")]
    Clerk(#[from] ClerkError),
    /// Writing calendar connections failed.
    #[error("calendar connections: {0}")]
    Store(#[from] StoreError),
    /// Applying panicked (a bug, or a payload it cannot handle): retried like a transient
    /// failure, so that a one-off is healed and a poison event ends in the dead-letter queue
    /// after `MAX_ATTEMPTS` without stalling anything else. The message is for the log only.
    #[error("the worker panicked while applying the event")]
    Panicked(String),
}

impl ApplyError {
    /// Whether trying again later can succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::EmailHeld | Self::SlugHeld | Self::Panicked(_) => true,
            Self::Db(error) => is_transient_db(error),
            Self::Clerk(error) => error.is_transient(),
            Self::Store(StoreError::Db(error)) => is_transient_db(error),
            Self::Store(StoreError::Crypto(_)) => false,
        }
    }

    /// A short reason for the dead-letter headers and metrics.
    pub fn reason(&self) -> String {
        match self {
            Self::EmailHeld => "email_held_by_other_user".into(),
            Self::SlugHeld => "slug_held_by_other_organization".into(),
            Self::Panicked(_) => "worker_panicked (see the worker's log)".into(),
            other => other.to_string(),
        }
    }
}

/// The tombstone key: SHA-256 of the Clerk user id, so that no personal data outlives the user.
pub fn tombstone_key(clerk_user_id: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(clerk_user_id.as_bytes());
    let mut key = String::with_capacity(64);
    for byte in digest {
        key.push(char::from(HEX[usize::from(byte >> 4)]));
        key.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    key
}

/// A Postgres statement with its parameters (shared with [`super::batch`]).
pub fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// Ends the transaction of one event: commits what it applied, rolls back a duplicate (it
/// changed nothing worth keeping) and a failure.
pub(crate) async fn finish<T: Applied>(
    txn: DatabaseTransaction,
    result: Result<T, ApplyError>,
) -> Result<T, ApplyError> {
    match result {
        Ok(outcome) if outcome.duplicate() => {
            txn.rollback().await?;
            Ok(outcome)
        }
        Ok(outcome) => {
            txn.commit().await?;
            Ok(outcome)
        }
        Err(error) => {
            // Dropping the transaction rolls it back; an explicit rollback may fail if the
            // connection is gone, which changes nothing.
            let _ = txn.rollback().await;
            Err(error)
        }
    }
}

/// What a transaction applied: whether it was only a duplicate.
pub(crate) trait Applied {
    fn duplicate(&self) -> bool;
}

impl Applied for Outcome {
    fn duplicate(&self) -> bool {
        *self == Outcome::Duplicate
    }
}

/// A batch: its outcomes are kept by the caller; it is committed whatever they are.
impl Applied for () {
    fn duplicate(&self) -> bool {
        false
    }
}

/// Records the Svix id of the event being applied; `false` when it was applied before (the
/// caller then changes nothing).
pub(crate) async fn record_svix_id(
    txn: &DatabaseTransaction,
    svix_id: Option<&str>,
    event_type: &str,
) -> Result<bool, DbErr> {
    let Some(svix_id) = svix_id else {
        return Ok(true);
    };
    let recorded = txn
        .execute_raw(stmt(
            "INSERT INTO processed_events (svix_id, event_type) VALUES ($1, $2) \
             ON CONFLICT (svix_id) DO NOTHING",
            vec![svix_id.into(), event_type.into()],
        ))
        .await?;
    Ok(recorded.rows_affected() > 0)
}

/// What a failed upsert of `users` means: a unique violation there can only be the email (the
/// Clerk id conflict is the upsert's own), held by another user ([`ApplyError::EmailHeld`]).
pub(crate) fn upsert_error(error: DbErr) -> ApplyError {
    unique_violation_as(error, ApplyError::EmailHeld)
}

/// `held` when `error` is a unique violation (a value another row holds), else the database
/// error itself.
pub(crate) fn unique_violation_as(error: DbErr, held: ApplyError) -> ApplyError {
    if matches!(
        error.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    ) {
        held
    } else {
        error.into()
    }
}
