//! `worker reconcile`: finds and repairs what webhooks missed. Clerk does not promise to deliver
//! a webhook at all (an endpoint disabled after days of failures, events sent while the ingress
//! was misconfigured, `user.created` never sent for some OAuth sign-ups), and only clerk-sync
//! knows both sides.
//!
//! Clerk's user list is read page by page (oldest first, Clerk's largest page), paced under
//! Clerk's documented rate limit and honouring `429` + `Retry-After`. Each user is compared with
//! its row, and repaired through the same apply path as events:
//! - missing here (no row, no tombstone): applied;
//! - older here (Clerk's `updated_at` newer than the row's version): applied;
//! - newer here: left alone (a webhook already brought a newer state);
//! - same version but other calendar connections than the user's accounts: connections synced;
//! - a row whose user Clerk does not list, and answers `404` for when asked by id: deleted with a
//!   tombstone, as a `user.deleted` would. Guarded: when more would go than `--max-deletes`
//!   (default 1 % of the table, at least 10), nothing is deleted and the run fails saying why (a
//!   `CLERK_SECRET_KEY` of another instance must not empty the table).
//!
//! Users created or updated while the scan runs are not misjudged: repairs go through the
//! version guard, and a deletion candidate is asked for by id right before it is deleted. The
//! page offset and the ids read so far are checkpointed, so an interrupted run resumes.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    time::{Duration, Instant},
};

use calendar::{
    accounts::calendar_accounts,
    clerk::{ClerkClient, ClerkError},
    store::{Disconnect, not_disconnected},
};
use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbErr};
use serde::Serialize;

use crate::{
    apply::{Applier, Outcome, stmt, tombstone_key},
    backfill::{checkpoint, save},
    batch::strings,
    event::{self, ClerkEvent, UserSnapshot},
};

const CHECKPOINT: &str = "reconcile";

/// Clerk's documented production limit is 1,000 requests per 10 s; the scan stays under it.
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 80;

/// Why a reconcile stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(
        "Clerk's user list failed at offset {offset}: {source}; run `worker reconcile` again to resume from there"
    )]
    List {
        offset: u64,
        #[source]
        source: ClerkError,
    },
    #[error("asking Clerk for user {id} failed: {source}; run `worker reconcile` again")]
    Lookup {
        id: String,
        #[source]
        source: ClerkError,
    },
    #[error(
        "{candidates} row(s) would be deleted, more than the limit of {limit} (--max-deletes): nothing was deleted. Check that CLERK_SECRET_KEY belongs to this instance; if the deletions are right, run again with a higher --max-deletes"
    )]
    TooManyDeletes {
        candidates: usize,
        limit: usize,
        report: Box<Report>,
    },
    #[error(
        "{candidates} {what} would be deleted, more than the limit of {limit} (--max-deletes): nothing was deleted. Check that CLERK_SECRET_KEY belongs to this instance; if the deletions are right, run again with a higher --max-deletes"
    )]
    TooManyOrganizationDeletes {
        /// `organization(s)` or `membership(s)`.
        what: &'static str,
        candidates: usize,
        limit: usize,
        report: Box<crate::reconcile_orgs::OrgReport>,
    },
    #[error(
        "Clerk's organization list failed at offset {offset}: {source}; run `worker reconcile --organizations` again"
    )]
    ListOrganizations {
        offset: u64,
        #[source]
        source: ClerkError,
    },
    #[error("database: {0}; run `worker reconcile` again to resume")]
    Db(#[from] DbErr),
}

/// How many deletions a run may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxDeletes {
    Count(usize),
    /// Percent of the rows in `users` when the run starts.
    Percent(u32),
}

impl MaxDeletes {
    /// Reads `N` or `P%`.
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        match value.strip_suffix('%') {
            Some(p) => p
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|p| *p <= 100)
                .map(Self::Percent)
                .ok_or_else(|| format!("{value:?} is not a percentage from 0% to 100%")),
            None => value.parse::<usize>().map(Self::Count).map_err(|_| {
                format!("{value:?} is not a count (e.g. 25) or a percentage (e.g. 2%)")
            }),
        }
    }

    /// The limit for a table of `rows` rows. The default (`None`) is 1 %, at least 10.
    pub fn limit(setting: Option<Self>, rows: u64) -> usize {
        let rows = usize::try_from(rows).unwrap_or(usize::MAX);
        match setting {
            Some(Self::Count(n)) => n,
            Some(Self::Percent(p)) => rows.saturating_mul(p as usize) / 100,
            None => (rows / 100).max(10),
        }
    }
}

/// Tuning of a reconcile.
#[derive(Debug, Clone)]
pub struct ReconcileOptions {
    /// Report only: nothing is written (not even the checkpoint).
    pub dry_run: bool,
    pub max_deletes: Option<MaxDeletes>,
    /// Users per page (Clerk allows 500 at most).
    pub page_size: u32,
    /// Start from the first page even if an earlier run left a checkpoint.
    pub restart: bool,
    /// Calls to Clerk per second at most.
    pub requests_per_second: u32,
    /// Attempts per call before giving up (transient errors, 429s).
    pub attempts: u32,
}

impl Default for ReconcileOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            max_deletes: None,
            page_size: 500,
            restart: false,
            requests_per_second: DEFAULT_REQUESTS_PER_SECOND,
            attempts: 6,
        }
    }
}

/// Drift of one kind: how much, and which users.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub count: u64,
    pub ids: Vec<String>,
}

impl Drift {
    pub(crate) fn add(&mut self, id: &str) {
        self.count += 1;
        self.ids.push(id.to_owned());
    }
}

/// What a reconcile found (and, unless a dry run, repaired).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub dry_run: bool,
    /// Offset the scan resumed from (non-zero when an interrupted run was resumed).
    pub resumed_from: u64,
    /// Users read from Clerk.
    pub scanned: u64,
    /// In Clerk, no row here: applied.
    pub missing: Drift,
    /// Older here than in Clerk: applied.
    pub older: Drift,
    /// Newer here than in Clerk: left alone.
    pub newer_here: Drift,
    /// Same version, other calendar connections: synced.
    pub connections: Drift,
    /// Gone from Clerk: deleted with a tombstone.
    pub gone: Drift,
    /// Users that could not be repaired, with the reason.
    pub failed: Vec<(String, String)>,
}

impl Report {
    /// Whether anything differed (repaired or left alone on purpose is not counted as failure).
    pub fn drift(&self) -> u64 {
        self.missing.count + self.older.count + self.connections.count + self.gone.count
    }
}

/// The report in a few lines, for people.
pub fn summary(report: &Report) -> String {
    let (apply, delete, sync) = if report.dry_run {
        ("would apply", "would delete", "would sync")
    } else {
        ("applied", "deleted", "synced")
    };
    let mut out = format!(
        "reconcile {}: {} Clerk users read{}\n",
        if report.dry_run { "dry run" } else { "done" },
        report.scanned,
        if report.resumed_from > 0 {
            format!(" (resumed at offset {})", report.resumed_from)
        } else {
            String::new()
        }
    );
    out.push_str(&format!(
        "  missing here:        {} ({apply})\n",
        report.missing.count
    ));
    out.push_str(&format!(
        "  older here:          {} ({apply})\n",
        report.older.count
    ));
    out.push_str(&format!(
        "  calendar connections: {} ({sync})\n",
        report.connections.count
    ));
    out.push_str(&format!(
        "  gone from Clerk:     {} ({delete})\n",
        report.gone.count
    ));
    out.push_str(&format!(
        "  newer here:          {} (left alone)\n",
        report.newer_here.count
    ));
    out.push_str(&format!("  failed:              {}", report.failed.len()));
    for (id, reason) in &report.failed {
        out.push_str(&format!("\n    {id}: {reason}"));
    }
    out
}

/// Keeps calls to Clerk under a rate, and waits out `Retry-After`. Shared by the reconcile and
/// the backfill.
///
/// Each call is due one `interval` after the one before (`next`, the theoretical time of the
/// next call); a call may go up to `tolerance` early, so a caller that fell behind (busy between
/// calls) catches up with a short burst instead of losing the time. In any span `T`, at most
/// `T / interval + tolerance / interval + 1` calls start.
pub(crate) struct Pace {
    interval: Duration,
    tolerance: Duration,
    next: Instant,
}

impl Pace {
    /// `per_second` calls a second, evenly spaced (no burst).
    pub(crate) fn new(per_second: u32) -> Self {
        Self::with_burst(per_second, Duration::ZERO)
    }

    /// `per_second` calls a second, and up to `burst`'s worth of calls early to catch up.
    pub(crate) fn with_burst(per_second: u32, burst: Duration) -> Self {
        let interval = Duration::from_secs(1) / per_second.max(1);
        Self {
            interval,
            tolerance: burst,
            next: Instant::now(),
        }
    }

    /// Waits until the next call may start.
    pub(crate) async fn wait(&mut self) {
        let now = Instant::now();
        let earliest = self.next.checked_sub(self.tolerance).unwrap_or(self.next);
        if earliest > now {
            tokio::time::sleep(earliest - now).await;
        }
        self.next = Instant::now().max(self.next) + self.interval;
    }

    /// No call before `wait` from now (Clerk's `Retry-After`), and no burst right after.
    pub(crate) fn defer(&mut self, wait: Duration) {
        self.next = self.next.max(Instant::now() + wait + self.tolerance);
    }
}

/// A call to Clerk, paced and retried while it fails transiently (honouring `Retry-After`).
pub(crate) async fn call<T, F, Fut>(
    pace: &mut Pace,
    attempts: u32,
    mut f: F,
) -> Result<T, ClerkError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClerkError>>,
{
    let mut delay = Duration::from_millis(250);
    let mut attempt = 1;
    loop {
        pace.wait().await;
        match f().await {
            Ok(value) => return Ok(value),
            Err(error) if error.is_transient() && attempt < attempts => {
                let wait = match &error {
                    ClerkError::RateLimited {
                        retry_after: Some(after),
                    } => *after,
                    _ => delay,
                };
                tracing::warn!(attempt, error.message = %error, ?wait, "Clerk call failed; retrying");
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(Duration::from_secs(10));
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

/// The stored side of one page's users.
#[derive(Default)]
struct Stored {
    versions: HashMap<String, i64>,
    tombstones: HashSet<String>,
    connections: HashMap<String, BTreeSet<String>>,
    disconnects: HashMap<String, Vec<Disconnect>>,
}

async fn stored<C: ConnectionTrait>(db: &C, ids: &[&str]) -> Result<Stored, DbErr> {
    let mut out = Stored::default();
    for row in db
        .query_all_raw(stmt(
            "SELECT clerk_user_id, clerk_updated_at FROM users WHERE clerk_user_id = ANY($1)",
            vec![strings(ids.iter().copied())],
        ))
        .await?
    {
        out.versions.insert(
            row.try_get("", "clerk_user_id")?,
            row.try_get("", "clerk_updated_at")?,
        );
    }
    let keys: Vec<String> = ids.iter().map(|id| tombstone_key(id)).collect();
    for row in db
        .query_all_raw(stmt(
            "SELECT clerk_user_id_sha256 FROM deleted_users WHERE clerk_user_id_sha256 = ANY($1)",
            vec![strings(keys.iter().map(String::as_str))],
        ))
        .await?
    {
        out.tombstones
            .insert(row.try_get("", "clerk_user_id_sha256")?);
    }
    for row in db
        .query_all_raw(stmt(
            "SELECT u.clerk_user_id, c.provider, c.provider_user_id \
             FROM user_calendar_connections c JOIN users u ON u.id = c.user_id \
             WHERE u.clerk_user_id = ANY($1)",
            vec![strings(ids.iter().copied())],
        ))
        .await?
    {
        let id: String = row.try_get("", "clerk_user_id")?;
        let provider: String = row.try_get("", "provider")?;
        let provider_user_id: String = row.try_get("", "provider_user_id")?;
        out.connections
            .entry(id)
            .or_default()
            .insert(format!("{provider}:{provider_user_id}"));
    }
    for row in db
        .query_all_raw(stmt(
            "SELECT u.clerk_user_id, d.provider, d.disconnected_at \
             FROM calendar_disconnects d JOIN users u ON u.id = d.user_id \
             WHERE u.clerk_user_id = ANY($1)",
            vec![strings(ids.iter().copied())],
        ))
        .await?
    {
        let id: String = row.try_get("", "clerk_user_id")?;
        let provider: String = row.try_get("", "provider")?;
        let at: DateTime<Utc> = row.try_get("", "disconnected_at")?;
        if let Some(provider) = calendar::Provider::parse(&provider) {
            out.disconnects
                .entry(id)
                .or_default()
                .push(Disconnect { provider, at });
        }
    }
    Ok(out)
}

/// The connections `user`'s accounts call for, as `provider:provider_user_id`.
fn expected_connections(user: &UserSnapshot, disconnects: &[Disconnect]) -> BTreeSet<String> {
    not_disconnected(&calendar_accounts(&user.external_accounts), disconnects)
        .into_iter()
        .map(|a| format!("{}:{}", a.provider.as_str(), a.provider_user_id))
        .collect()
}

/// Runs a reconcile. `progress(done, total)` is called after each page (`total`: Clerk's user
/// count when it could be read).
pub async fn run(
    applier: &Applier,
    clerk: &ClerkClient,
    options: &ReconcileOptions,
    mut progress: impl FnMut(u64, Option<u64>),
) -> Result<Report, ReconcileError> {
    let db = &applier.db;
    let mut pace = Pace::new(options.requests_per_second);
    let page_size = options.page_size.clamp(1, 500);
    let resumed = match checkpoint(db, CHECKPOINT).await? {
        (offset, false) if !options.restart && !options.dry_run && offset > 0 => Some(offset),
        _ => None,
    };
    let mut seen: HashSet<String> = HashSet::new();
    match resumed {
        Some(_) => {
            for row in db
                .query_all_raw(stmt("SELECT clerk_user_id FROM reconcile_seen", vec![]))
                .await?
            {
                seen.insert(row.try_get("", "clerk_user_id")?);
            }
        }
        None if !options.dry_run => {
            db.execute_raw(stmt("DELETE FROM reconcile_seen", vec![]))
                .await?;
        }
        None => {}
    }
    let mut offset = resumed.unwrap_or(0);
    let mut report = Report {
        dry_run: options.dry_run,
        resumed_from: offset,
        ..Report::default()
    };
    let total = call(&mut pace, options.attempts, || clerk.count_users())
        .await
        .ok();

    loop {
        let users = call(&mut pace, options.attempts, || {
            clerk.list_users(page_size, offset)
        })
        .await
        .map_err(|source| ReconcileError::List { offset, source })?;
        let count = users.len() as u64;
        scan_page(applier, &users, options.dry_run, &mut seen, &mut report).await?;
        offset += count;
        let done = count < u64::from(page_size);
        if !options.dry_run {
            save(db, CHECKPOINT, offset, false).await?;
        }
        progress(offset, total);
        if done {
            break;
        }
    }

    delete_gone(applier, clerk, &mut pace, options, &seen, &mut report).await?;
    if !options.dry_run {
        save(db, CHECKPOINT, 0, true).await?;
        db.execute_raw(stmt("DELETE FROM reconcile_seen", vec![]))
            .await?;
    }
    Ok(report)
}

/// Compares one page of Clerk's users with their rows and repairs them; remembers their ids.
async fn scan_page(
    applier: &Applier,
    users: &[serde_json::Value],
    dry_run: bool,
    seen: &mut HashSet<String>,
    report: &mut Report,
) -> Result<(), ReconcileError> {
    let db = &applier.db;
    let mut snapshots = Vec::with_capacity(users.len());
    for value in users {
        let id = value
            .get("id")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("?")
            .to_owned();
        match event::parse_user(value) {
            Ok(user) => snapshots.push(user),
            Err(error) => report.failed.push((id, error.to_string())),
        }
    }
    let ids: Vec<&str> = snapshots.iter().map(|u| u.clerk_user_id.as_str()).collect();
    if !dry_run && !ids.is_empty() {
        db.execute_raw(stmt(
            "INSERT INTO reconcile_seen (clerk_user_id) SELECT unnest($1::text[]) \
             ON CONFLICT DO NOTHING",
            vec![strings(ids.iter().copied())],
        ))
        .await?;
    }
    seen.extend(ids.iter().map(|id| (*id).to_owned()));
    let here = stored(db, &ids).await?;
    for user in &snapshots {
        report.scanned += 1;
        compare_and_repair(applier, user, &here, dry_run, report).await;
    }
    Ok(())
}

/// Compares one Clerk user with its row and repairs the difference.
async fn compare_and_repair(
    applier: &Applier,
    user: &UserSnapshot,
    here: &Stored,
    dry_run: bool,
    report: &mut Report,
) {
    let id = user.clerk_user_id.as_str();
    if here.tombstones.contains(&tombstone_key(id)) {
        // Deleted here: a delete is final, whatever Clerk still lists.
        return;
    }
    let kind = match here.versions.get(id) {
        None => Kind::Missing,
        Some(version) if *version < user.updated_at => Kind::Older,
        Some(version) if *version > user.updated_at => {
            report.newer_here.add(id);
            return;
        }
        Some(_) => {
            let expected = expected_connections(
                user,
                here.disconnects.get(id).map_or(&[][..], Vec::as_slice),
            );
            let actual = here.connections.get(id).cloned().unwrap_or_default();
            if expected == actual {
                return;
            }
            Kind::Connections
        }
    };
    if dry_run {
        kind.drift(report).add(id);
        return;
    }
    let repaired = match kind {
        Kind::Connections => applier.resync_connections(user).await,
        Kind::Missing | Kind::Older => applier
            .apply(None, "reconcile", &ClerkEvent::UserUpserted(user.clone()))
            .await
            .map(|outcome| outcome == Outcome::Applied),
    };
    match repaired {
        Ok(true) => {
            tracing::info!(
                clerk_user_id = id,
                kind = kind.as_str(),
                "reconcile repaired a user"
            );
            kind.drift(report).add(id);
        }
        // A webhook got there first (a newer version, or a delete): nothing to repair.
        Ok(false) => {}
        Err(error) => report.failed.push((id.to_owned(), error.reason())),
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Missing,
    Older,
    Connections,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Older => "older",
            Self::Connections => "connections",
        }
    }

    fn drift(self, report: &mut Report) -> &mut Drift {
        match self {
            Self::Missing => &mut report.missing,
            Self::Older => &mut report.older,
            Self::Connections => &mut report.connections,
        }
    }
}

/// Deletes the rows whose users Clerk no longer has, under the deletion guard.
async fn delete_gone(
    applier: &Applier,
    clerk: &ClerkClient,
    pace: &mut Pace,
    options: &ReconcileOptions,
    seen: &HashSet<String>,
    report: &mut Report,
) -> Result<(), ReconcileError> {
    let db = &applier.db;
    let mut candidates = Vec::new();
    let mut rows = 0_u64;
    for row in db
        .query_all_raw(stmt("SELECT clerk_user_id FROM users", vec![]))
        .await?
    {
        rows += 1;
        let id: String = row.try_get("", "clerk_user_id")?;
        if !seen.contains(&id) {
            candidates.push(id);
        }
    }
    let limit = MaxDeletes::limit(options.max_deletes, rows);
    if candidates.len() > limit {
        return Err(ReconcileError::TooManyDeletes {
            candidates: candidates.len(),
            limit,
            report: Box::new(report.clone()),
        });
    }
    for id in candidates {
        // Asked by id right before deleting: a user created or listed late is not misjudged.
        let current = call(pace, options.attempts, || clerk.get_user(&id))
            .await
            .map_err(|source| ReconcileError::Lookup {
                id: id.clone(),
                source,
            })?;
        match current {
            Some(value) => match event::parse_user(&value) {
                Ok(user) => {
                    let here = stored(db, &[id.as_str()]).await?;
                    report.scanned += 1;
                    compare_and_repair(applier, &user, &here, options.dry_run, report).await;
                }
                Err(error) => report.failed.push((id, error.to_string())),
            },
            None if options.dry_run => report.gone.add(&id),
            None => {
                let deleted = ClerkEvent::UserDeleted {
                    clerk_user_id: id.clone(),
                };
                match applier.apply(None, "reconcile", &deleted).await {
                    Ok(_) => {
                        tracing::info!(clerk_user_id = %id, kind = "gone", "reconcile repaired a user");
                        report.gone.add(&id);
                    }
                    Err(error) => report.failed.push((id, error.reason())),
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_deletes_reads_counts_and_percentages_and_defaults_to_one_percent_at_least_ten() {
        assert_eq!(MaxDeletes::parse("25"), Ok(MaxDeletes::Count(25)));
        assert_eq!(MaxDeletes::parse("2%"), Ok(MaxDeletes::Percent(2)));
        assert!(MaxDeletes::parse("lots").is_err());
        assert!(MaxDeletes::parse("120%").is_err());
        assert_eq!(MaxDeletes::limit(None, 300), 10);
        assert_eq!(MaxDeletes::limit(None, 5_000), 50);
        assert_eq!(MaxDeletes::limit(Some(MaxDeletes::Percent(10)), 300), 30);
        assert_eq!(MaxDeletes::limit(Some(MaxDeletes::Count(0)), 300), 0);
    }
}
