//! Lazy sync: the first read of a signed-in user whose row does not exist yet (Svix has not
//! delivered `user.created`, or Clerk never sent it: clerk/javascript#4126) fetches the user from
//! Clerk's Backend API and applies it through exactly the worker's path for a `user.updated`
//! (advisory lock, version guard, tombstone, email rules, calendar connections), so a webhook that
//! arrives later is a no-op or a newer version, as always.
//!
//! Concurrent first reads of one user share one Clerk call per process (single flight); the
//! advisory lock keeps this process and the workers from racing. A tombstoned user is not looked
//! up at all.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};
use store::pool::Pool;

use clerk_api::client::{ClerkClient, ClerkError};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use store::{
    Applier, ApplierSettings,
    apply::{ApplyError, Outcome, tombstone_key},
    event::{ClerkEvent, parse_user},
};
use tokio::sync::OnceCell;

/// What a lazy sync came to (the label of `clerk_sync_api_lazy_syncs_total`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LazyLabels {
    pub outcome: &'static str,
}

/// How one lazy sync ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LazyOutcome {
    /// Fetched from Clerk and stored.
    Applied,
    /// A webhook stored the user (as new or newer) while Clerk answered.
    AlreadySynced,
    /// Clerk does not know the user.
    NotFound,
    /// The user was deleted (tombstone): Clerk was not asked.
    Deleted,
    /// Clerk or the database is unavailable (rate limit, timeout, outage): `503`.
    Unavailable,
    /// Clerk's answer could not be used: `502`.
    Failed,
}

impl LazyOutcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::AlreadySynced => "already_synced",
            Self::NotFound => "not_found",
            Self::Deleted => "deleted",
            Self::Unavailable => "unavailable",
            Self::Failed => "failed",
        }
    }
}

/// Why a lazy sync gave no user.
#[derive(Debug, thiserror::Error)]
pub enum LazyError {
    #[error("the user is not known to Clerk, or was deleted")]
    NotFound,
    #[error("Clerk or the database is unavailable: {0}")]
    Unavailable(String),
    #[error("Clerk's answer could not be used: {0}")]
    Failed(String),
}

type Flight = Arc<OnceCell<Result<(), Arc<LazyError>>>>;

/// Lazy sync of one API process.
#[derive(Debug)]
pub struct LazySync {
    applier: Applier,
    clerk: ClerkClient,
    /// Syncs under way, by Clerk user id: later callers await the first one's result.
    in_flight: Mutex<HashMap<String, Flight>>,
    outcomes: Family<LazyLabels, Counter>,
}

impl LazySync {
    /// Lazy sync through Clerk's API, storing into `db` as `settings` say (tokens sealed with
    /// their cipher when set, private metadata only with `SYNC_PRIVATE_METADATA`), and its
    /// metric registered in `registry`.
    pub fn new(db: Pool, settings: crate::config::LazySettings, registry: &mut Registry) -> Self {
        let crate::config::LazySettings {
            clerk,
            cipher,
            sync_private_metadata,
        } = settings;
        let outcomes = Family::<LazyLabels, Counter>::default();
        registry.register(
            "clerk_sync_api_lazy_syncs",
            "First reads of users not synced yet, fetched from Clerk, by outcome",
            outcomes.clone(),
        );
        Self {
            applier: Applier::new(
                db,
                &ApplierSettings {
                    clerk: Some(clerk.clone()),
                    cipher,
                    // On the request path: two quick retries, then the caller gets a 503.
                    in_process_retries: 2,
                    store_private_metadata: sync_private_metadata,
                },
            ),
            clerk,
            in_flight: Mutex::default(),
            outcomes,
        }
    }

    /// Brings the user `clerk_user_id` into the database from Clerk. `Ok` means the row is
    /// there now (stored by this call, or by a webhook meanwhile).
    pub async fn sync(&self, clerk_user_id: &str) -> Result<(), Arc<LazyError>> {
        let flight = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            in_flight
                .entry(clerk_user_id.to_owned())
                .or_default()
                .clone()
        };
        let result = flight
            .get_or_init(|| async {
                let (outcome, result) = self.fetch_and_apply(clerk_user_id).await;
                self.outcomes
                    .get_or_create(&LazyLabels {
                        outcome: outcome.as_str(),
                    })
                    .inc();
                tracing::info!(outcome = outcome.as_str(), "lazy sync");
                result.map_err(Arc::new)
            })
            .await
            .clone();
        // The flight is over: the next read after this one looks at the database again.
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if in_flight
            .get(clerk_user_id)
            .is_some_and(|current| Arc::ptr_eq(current, &flight))
        {
            in_flight.remove(clerk_user_id);
        }
        result
    }

    async fn fetch_and_apply(&self, clerk_user_id: &str) -> (LazyOutcome, Result<(), LazyError>) {
        // A read that missed the row just before an earlier flight stored it starts a flight of
        // its own: it finds the row here and does not ask Clerk again.
        match self.stored(clerk_user_id).await {
            Ok(true) => return (LazyOutcome::AlreadySynced, Ok(())),
            Ok(false) => {}
            Err(error) => return (LazyOutcome::Unavailable, Err(LazyError::Unavailable(error))),
        }
        match self.deleted(clerk_user_id).await {
            Ok(true) => return (LazyOutcome::Deleted, Err(LazyError::NotFound)),
            Ok(false) => {}
            Err(error) => return (LazyOutcome::Unavailable, Err(LazyError::Unavailable(error))),
        }
        let value = match self.clerk.get_user(clerk_user_id).await {
            Ok(Some(value)) => value,
            Ok(None) => return (LazyOutcome::NotFound, Err(LazyError::NotFound)),
            Err(error) => return clerk_failure(&error),
        };
        let snapshot = match parse_user(&value) {
            Ok(snapshot) if snapshot.clerk_user_id == clerk_user_id => snapshot,
            Ok(_) => {
                return (
                    LazyOutcome::Failed,
                    Err(LazyError::Failed("Clerk answered with another user".into())),
                );
            }
            Err(error) => {
                return (
                    LazyOutcome::Failed,
                    Err(LazyError::Failed(error.to_string())),
                );
            }
        };
        let event = ClerkEvent::UserUpserted(snapshot);
        match self.applier.apply(None, "user.updated", &event).await {
            Ok(Outcome::Applied) => (LazyOutcome::Applied, Ok(())),
            Ok(Outcome::SkippedStale) => (LazyOutcome::AlreadySynced, Ok(())),
            Ok(Outcome::SkippedDeleted) => (LazyOutcome::Deleted, Err(LazyError::NotFound)),
            Ok(Outcome::Duplicate | Outcome::Ignored) => (LazyOutcome::AlreadySynced, Ok(())),
            Err(ApplyError::Clerk(error)) => clerk_failure(&error),
            Err(error) if error.is_transient() => (
                LazyOutcome::Unavailable,
                Err(LazyError::Unavailable(error.reason())),
            ),
            Err(error) => (LazyOutcome::Failed, Err(LazyError::Failed(error.reason()))),
        }
    }

    async fn stored(&self, clerk_user_id: &str) -> Result<bool, String> {
        self.applier
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT 1 AS one FROM users WHERE clerk_user_id = $1",
                [clerk_user_id.into()],
            ))
            .await
            .map(|row| row.is_some())
            .map_err(|e| e.to_string())
    }

    async fn deleted(&self, clerk_user_id: &str) -> Result<bool, String> {
        self.applier
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT 1 AS one FROM deleted_users WHERE clerk_user_id_sha256 = $1",
                [tombstone_key(clerk_user_id).into()],
            ))
            .await
            .map(|row| row.is_some())
            .map_err(|e| e.to_string())
    }
}

fn clerk_failure(error: &ClerkError) -> (LazyOutcome, Result<(), LazyError>) {
    if error.is_transient() {
        (
            LazyOutcome::Unavailable,
            Err(LazyError::Unavailable(error.to_string())),
        )
    } else {
        (
            LazyOutcome::Failed,
            Err(LazyError::Failed(error.to_string())),
        )
    }
}
