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

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use clerk_api::{
    ClerkClient,
    paced::{self, Pace},
};
use sea_orm::{ConnectionTrait, DbErr};
use store::{
    Applier,
    accounts::calendar_accounts,
    apply::{Outcome, batch::strings, tombstone_key, txn::stmt},
    connections::{Disconnect, not_disconnected},
    event::{self, ClerkEvent, UserSnapshot},
};

use super::{
    checkpoint::{checkpoint, save},
    options::{MaxDeletes, ReconcileError, ReconcileOptions},
    report::{Drift, Report},
};

const CHECKPOINT: &str = "reconcile";

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
        if let Some(provider) = store::Provider::parse(&provider) {
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
    let total = paced::call(&mut pace, options.attempts, "user count", || {
        clerk.count_users()
    })
    .await
    .ok();

    loop {
        let users = paced::call(&mut pace, options.attempts, "user list", || {
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
        let current = paced::call(pace, options.attempts, "user lookup", || {
            clerk.get_user(&id)
        })
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
