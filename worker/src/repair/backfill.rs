//! `worker backfill`: pages through Clerk's user list (oldest first) and applies each user through
//! the same path as a `user.updated` event, so a backfill racing live webhooks keeps the newest
//! state (the version guard) and never brings back a deleted user (the tombstones). The offset of
//! the next page is checkpointed in `backfill_checkpoints` after every page: a backfill that
//! stopped resumes where it was.
//!
//! Every call to Clerk, the calendar-token requests of the users' connected accounts included
//! (one per user and provider: most of the calls), is paced under Clerk's documented rate limit
//! (the reconcile's [`Pace`]), so a backfill neither bursts into `429`s nor starves the live
//! workers' token requests; a `429` that comes anyway is waited out (`Retry-After`) and the call
//! tried again.

use std::time::Duration;

use clerk_api::{
    ClerkClient, ClerkError,
    paced::{self, Pace},
};
use futures_util::StreamExt as _;
use sea_orm::DbErr;
use serde::Serialize;
use tokio::sync::Mutex;

use store::{
    Applier,
    accounts::calendar_accounts,
    apply::{ApplyError, Outcome},
    event::{
        self, ClerkEvent, UserSnapshot,
        organization::{self as orgs, OrgEvent},
    },
};

use super::checkpoint::{checkpoint, save};

const CHECKPOINT: &str = "clerk_users";

/// Clerk's documented production limit is 1,000 requests per 10 s per instance: the backfill
/// makes 90 a second (with [`PACE_BURST`], at most 945 in any 10 s), leaving the rest to the
/// workers' token requests for live events.
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 90;

/// How far ahead of its pace the backfill may call after falling behind (half a second's worth
/// of calls): applying users and calling Clerk then overlap instead of the time spent applying
/// being lost. Under a limit of `L` calls per window `W`, a pace `r` stays under it when
/// `r × (W + PACE_BURST) < L`.
pub const PACE_BURST: Duration = Duration::from_millis(500);

/// Users of a page applied at the same time (each in its own transaction, as events are): the
/// database's round trips and commits overlap, and so do the calls to Clerk and the applying.
const APPLY_CONCURRENCY: usize = 4;

/// Why a backfill stopped.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(
        "Clerk's list failed at offset {offset}: {source}; run `worker backfill` again to resume from there"
    )]
    Clerk {
        offset: u64,
        #[source]
        source: ClerkError,
    },
    #[error("database: {0}; run `worker backfill` again to resume")]
    Db(#[from] DbErr),
}

/// What a backfill did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    /// Offset the run started from (non-zero when it resumed).
    pub resumed_from: u64,
    pub seen: u64,
    pub applied: u64,
    pub unchanged: u64,
    pub deleted: u64,
    /// `(clerk user id, reason)` of users that could not be applied.
    pub failed: Vec<(String, String)>,
}

/// Tuning of a backfill.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// Users per page (at most 500, Clerk's limit).
    pub page_size: u32,
    /// Start from the beginning even if an earlier run left a checkpoint.
    pub restart: bool,
    /// Attempts per page before giving up (transient Clerk errors, 429s); also how often a
    /// user whose token requests were rate-limited is tried again.
    pub page_attempts: u32,
    /// Calls to Clerk per second at most (pages and calendar-token requests).
    pub requests_per_second: u32,
}

impl Default for BackfillOptions {
    fn default() -> Self {
        Self {
            page_size: 100,
            restart: false,
            page_attempts: 5,
            requests_per_second: DEFAULT_REQUESTS_PER_SECOND,
        }
    }
}

/// The pace of a backfill's calls to Clerk.
fn pace(options: &BackfillOptions) -> Pace {
    Pace::with_burst(options.requests_per_second, PACE_BURST)
}

/// Reads one page of users.
async fn page(
    clerk: &ClerkClient,
    pace: &mut Pace,
    options: &BackfillOptions,
    offset: u64,
) -> Result<Vec<serde_json::Value>, BackfillError> {
    paced::call(pace, options.page_attempts, "users", || {
        clerk.list_users(options.page_size, offset)
    })
    .await
    .map_err(|source| BackfillError::Clerk { offset, source })
}

/// Applies one user as a `user.updated` would. Its calendar-token requests (one per provider of
/// its calendar accounts, made by the applier) are paced first; when Clerk rate-limits them
/// anyway, `Retry-After` is waited out and the user tried again (up to `page_attempts` times).
async fn apply_user(
    applier: &Applier,
    pace: &Mutex<Pace>,
    options: &BackfillOptions,
    user: UserSnapshot,
) -> Result<Outcome, ApplyError> {
    let mut providers: Vec<_> = calendar_accounts(&user.external_accounts)
        .into_iter()
        .map(|account| account.provider)
        .collect();
    providers.sort();
    providers.dedup();
    let event = ClerkEvent::UserUpserted(user);
    let mut attempt = 1;
    loop {
        if !providers.is_empty() {
            let mut pace = pace.lock().await;
            for _ in &providers {
                pace.wait().await;
            }
        }
        match applier.apply(None, "backfill", &event).await {
            Err(ApplyError::Clerk(ClerkError::RateLimited { retry_after }))
                if attempt < options.page_attempts =>
            {
                let wait = retry_after.unwrap_or(Duration::from_secs(1));
                tracing::warn!(
                    attempt,
                    ?wait,
                    "Clerk rate-limited the calendar tokens; retrying"
                );
                pace.lock().await.defer(wait);
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Runs the backfill. `progress(done, total)` is called after each page; `total` is Clerk's user
/// count when it could be read.
pub async fn run(
    applier: &Applier,
    clerk: &ClerkClient,
    options: &BackfillOptions,
    mut progress: impl FnMut(u64, Option<u64>),
) -> Result<Summary, BackfillError> {
    let (saved, finished) = checkpoint(&applier.db, CHECKPOINT).await?;
    let mut offset = if options.restart || finished {
        0
    } else {
        saved
    };
    let mut pace = pace(options);
    pace.wait().await;
    let total = clerk.count_users().await.ok();
    let mut summary = Summary {
        resumed_from: offset,
        ..Summary::default()
    };
    let pace = Mutex::new(pace);
    loop {
        let users = page(clerk, &mut *pace.lock().await, options, offset).await?;
        let count = users.len() as u64;
        // Applied a few at a time; the results come back in the page's order.
        let mut results = futures_util::stream::iter(users.iter().map(|value| {
            let pace = &pace;
            async move {
                let id = value
                    .get("id")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("?")
                    .to_owned();
                let result = match event::parse_user(value) {
                    Ok(user) => apply_user(applier, pace, options, user)
                        .await
                        .map_err(|error| error.to_string()),
                    Err(error) => Err(error.to_string()),
                };
                (id, result)
            }
        }))
        .buffered(APPLY_CONCURRENCY);
        while let Some((id, result)) = results.next().await {
            summary.seen += 1;
            match result {
                Ok(Outcome::Applied) => summary.applied += 1,
                Ok(Outcome::SkippedDeleted) => summary.deleted += 1,
                Ok(_) => summary.unchanged += 1,
                Err(reason) => summary.failed.push((id, reason)),
            }
        }
        drop(results);
        offset += count;
        let done = count < u64::from(options.page_size.clamp(1, 500));
        save(&applier.db, CHECKPOINT, offset, done).await?;
        progress(offset, total);
        if done {
            return Ok(summary);
        }
    }
}

const ORGANIZATIONS_CHECKPOINT: &str = "clerk_organizations";

/// What a backfill of organizations did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct OrganizationSummary {
    /// Offset the run started from (non-zero when it resumed).
    pub resumed_from: u64,
    pub organizations: Tally,
    pub memberships: Tally,
}

/// Counts of one kind of object.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Tally {
    pub seen: u64,
    pub applied: u64,
    pub unchanged: u64,
    /// Deleted here (a tombstone): not brought back.
    pub deleted: u64,
    /// `(Clerk id, reason)` of objects that could not be applied.
    pub failed: Vec<(String, String)>,
}

impl Tally {
    fn count(&mut self, id: String, result: Result<Outcome, String>) {
        self.seen += 1;
        match result {
            Ok(Outcome::Applied) => self.applied += 1,
            Ok(Outcome::SkippedDeleted) => self.deleted += 1,
            Ok(_) => self.unchanged += 1,
            Err(reason) => self.failed.push((id, reason)),
        }
    }
}

/// Applies one organization or membership as the matching `*.updated` event would.
async fn apply_org(applier: &Applier, event: OrgEvent) -> Result<Outcome, String> {
    applier
        .apply(None, "backfill", &ClerkEvent::Organization(event))
        .await
        .map_err(|error| error.to_string())
}

fn id_of(value: &serde_json::Value) -> String {
    value
        .get("id")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("?")
        .to_owned()
}

/// `worker backfill --organizations`: pages through Clerk's organizations (oldest first) and
/// each one's memberships, applying them through the same path as their `*.updated` events
/// (version guard, tombstones). The offset of the next page of organizations is checkpointed
/// after every page, when its memberships are done too.
pub async fn run_organizations(
    applier: &Applier,
    clerk: &ClerkClient,
    options: &BackfillOptions,
    mut progress: impl FnMut(u64, Option<u64>),
) -> Result<OrganizationSummary, BackfillError> {
    let (saved, finished) = checkpoint(&applier.db, ORGANIZATIONS_CHECKPOINT).await?;
    let mut offset = if options.restart || finished {
        0
    } else {
        saved
    };
    let mut summary = OrganizationSummary {
        resumed_from: offset,
        ..OrganizationSummary::default()
    };
    let page_size = options.page_size.clamp(1, 500);
    let mut pace = pace(options);
    loop {
        let organizations = paced::call(&mut pace, options.page_attempts, "organizations", || {
            clerk.list_organizations(page_size, offset)
        })
        .await
        .map_err(|source| BackfillError::Clerk { offset, source })?;
        for value in &organizations {
            let id = id_of(value);
            let result = match orgs::parse_organization(value) {
                Ok(org) => apply_org(applier, OrgEvent::Upserted(org)).await,
                Err(error) => Err(error.to_string()),
            };
            summary.organizations.count(id.clone(), result);
            memberships(
                applier,
                clerk,
                &mut pace,
                options,
                &id,
                &mut summary.memberships,
            )
            .await?;
        }
        let count = organizations.len() as u64;
        offset += count;
        let done = count < u64::from(page_size);
        save(&applier.db, ORGANIZATIONS_CHECKPOINT, offset, done).await?;
        progress(offset, None);
        if done {
            return Ok(summary);
        }
    }
}

/// Applies every membership of one organization.
async fn memberships(
    applier: &Applier,
    clerk: &ClerkClient,
    pace: &mut Pace,
    options: &BackfillOptions,
    clerk_organization_id: &str,
    tally: &mut Tally,
) -> Result<(), BackfillError> {
    let page_size = options.page_size.clamp(1, 500);
    let mut offset = 0;
    loop {
        let page = paced::call(pace, options.page_attempts, "memberships", || {
            clerk.list_memberships(clerk_organization_id, page_size, offset)
        })
        .await
        .map_err(|source| BackfillError::Clerk { offset, source })?;
        for value in &page {
            let result = match orgs::parse_membership(value) {
                Ok(membership) => {
                    apply_org(applier, OrgEvent::MembershipUpserted(membership)).await
                }
                Err(error) => Err(error.to_string()),
            };
            tally.count(id_of(value), result);
        }
        offset += page.len() as u64;
        if (page.len() as u64) < u64::from(page_size) {
            return Ok(());
        }
    }
}
