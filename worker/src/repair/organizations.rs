//! `worker reconcile --organizations` (and the scheduled reconcile, after the users): compares
//! Clerk's organizations and each one's memberships with the tables and repairs the drift
//! through the same apply path as their events:
//! - missing here (no row, no tombstone) or older here: applied;
//! - newer here: left alone;
//! - an organization Clerk does not list, and answers `404` for when asked by id, is deleted with
//!   a tombstone; a membership its organization's listing no longer has is ended with a
//!   tombstone once Clerk, asked again for that user's membership, does not have it either.
//!   Both under `--max-deletes` (of each table), as for users.
//!
//! Rows written while the scan runs are not misjudged: only rows last written before the scan
//! (organizations) or before their organization's listing was read (memberships) can be
//! deletion candidates. Organizations are far fewer than users: a run is not checkpointed, an
//! interrupted run starts again.

use std::collections::HashSet;
use store::pool::Pool;

use chrono::{DateTime, Utc};
use clerk_api::{
    ClerkClient,
    paced::{self, Pace},
};
use sea_orm::{ConnectionTrait, DbErr};

use store::{
    Applier,
    apply::{Outcome, organizations::membership_tombstoned, tombstone_key, txn::stmt},
    event::{
        ClerkEvent,
        organization::{self as orgs, MembershipSnapshot, OrgEvent, OrgSnapshot},
    },
};

use super::{
    options::{MaxDeletes, ReconcileError, ReconcileOptions},
    report::OrgReport,
};

/// Where a Clerk object stands here.
enum Here {
    /// Deleted here: final.
    Tombstoned,
    Missing,
    At(i64),
}

async fn organization_here(db: &Pool, id: &str) -> Result<Here, DbErr> {
    let tombstone = db
        .query_one_raw(stmt(
            "SELECT 1 AS one FROM deleted_organizations WHERE clerk_organization_id_sha256 = $1",
            vec![tombstone_key(id).into()],
        ))
        .await?;
    if tombstone.is_some() {
        return Ok(Here::Tombstoned);
    }
    stored_version(db, "organizations", "clerk_organization_id", id).await
}

/// Where a membership Clerk lists at `version` stands: a tombstone ends it only at that
/// version or newer (see [`orgs::membership_tombstoned`]).
async fn membership_here(db: &Pool, id: &str, version: i64) -> Result<Here, DbErr> {
    if membership_tombstoned(db, id, version).await? {
        return Ok(Here::Tombstoned);
    }
    stored_version(db, "organization_memberships", "clerk_membership_id", id).await
}

async fn stored_version(db: &Pool, table: &str, id_column: &str, id: &str) -> Result<Here, DbErr> {
    let row = db
        .query_one_raw(stmt(
            &format!("SELECT clerk_updated_at FROM {table} WHERE {id_column} = $1"),
            vec![id.into()],
        ))
        .await?;
    Ok(match row {
        Some(row) => Here::At(row.try_get("", "clerk_updated_at")?),
        None => Here::Missing,
    })
}

async fn now(db: &Pool) -> Result<DateTime<Utc>, DbErr> {
    db.query_one_raw(stmt("SELECT now() AS now", vec![]))
        .await?
        .ok_or(DbErr::RecordNotFound("now()".into()))?
        .try_get("", "now")
}

/// A stored membership no longer listed by Clerk, as the snapshot its deletion needs.
async fn unlisted_memberships(
    db: &Pool,
    clerk_organization_id: &str,
    listed_at: DateTime<Utc>,
    listed: &HashSet<String>,
) -> Result<Vec<MembershipSnapshot>, DbErr> {
    let rows = db
        .query_all_raw(stmt(
            "SELECT m.clerk_membership_id, m.clerk_user_id, m.role, m.clerk_updated_at, \
               o.name, o.slug, o.clerk_updated_at AS organization_version \
             FROM organization_memberships m JOIN organizations o ON o.id = m.organization_id \
             WHERE o.clerk_organization_id = $1 AND m.updated_at < $2",
            vec![clerk_organization_id.into(), listed_at.into()],
        ))
        .await?;
    let mut out = Vec::new();
    for row in rows {
        let id: String = row.try_get("", "clerk_membership_id")?;
        if listed.contains(&id) {
            continue;
        }
        out.push(MembershipSnapshot {
            clerk_membership_id: id,
            clerk_user_id: row.try_get("", "clerk_user_id")?,
            role: row.try_get("", "role")?,
            created_at: None,
            updated_at: row.try_get("", "clerk_updated_at")?,
            organization: OrgSnapshot {
                clerk_organization_id: clerk_organization_id.to_owned(),
                name: row.try_get("", "name")?,
                slug: row.try_get("", "slug")?,
                image_url: None,
                public_metadata: serde_json::json!({}),
                members_count: None,
                created_at: None,
                // The stored version: the deletion's copy of the organization changes nothing.
                updated_at: row.try_get("", "organization_version")?,
            },
        });
    }
    Ok(out)
}

/// The run's state.
struct Scan<'a> {
    applier: &'a Applier,
    clerk: &'a ClerkClient,
    options: &'a ReconcileOptions,
    pace: Pace,
    report: OrgReport,
    seen_organizations: HashSet<String>,
    /// Memberships Clerk no longer lists, found organization by organization.
    unlisted: Vec<MembershipSnapshot>,
}

/// Runs a reconcile of organizations and memberships.
pub async fn run(
    applier: &Applier,
    clerk: &ClerkClient,
    options: &ReconcileOptions,
) -> Result<OrgReport, ReconcileError> {
    let started = now(&applier.db).await?;
    let mut scan = Scan {
        applier,
        clerk,
        options,
        pace: Pace::new(options.requests_per_second),
        report: OrgReport {
            dry_run: options.dry_run,
            ..OrgReport::default()
        },
        seen_organizations: HashSet::new(),
        unlisted: Vec::new(),
    };
    let page_size = options.page_size.clamp(1, 500);
    let mut offset = 0;
    loop {
        let page = paced::call(
            &mut scan.pace,
            options.attempts,
            "organization list",
            || clerk.list_organizations(page_size, offset),
        )
        .await
        .map_err(|source| ReconcileError::ListOrganizations { offset, source })?;
        for value in &page {
            scan.organization(value).await?;
        }
        offset += page.len() as u64;
        if (page.len() as u64) < u64::from(page_size) {
            break;
        }
    }
    scan.delete_gone(started).await?;
    Ok(scan.report)
}

impl Scan<'_> {
    /// One organization from Clerk's list, then its memberships.
    async fn organization(&mut self, value: &serde_json::Value) -> Result<(), ReconcileError> {
        self.report.scanned_organizations += 1;
        let org = match orgs::parse_organization(value) {
            Ok(org) => org,
            Err(error) => {
                let id = value.get("id").and_then(|v| v.as_str()).unwrap_or("?");
                self.report.failed.push((id.to_owned(), error.to_string()));
                return Ok(());
            }
        };
        let id = org.clerk_organization_id.clone();
        self.seen_organizations.insert(id.clone());
        let db = &self.applier.db;
        let stands = organization_here(db, &id).await?;
        if matches!(stands, Here::Tombstoned) {
            return Ok(());
        }
        let version = org.updated_at;
        self.repair(stands, version, OrgEvent::Upserted(org), &id, true)
            .await;
        self.memberships(&id).await
    }

    /// Every membership Clerk lists for one organization.
    async fn memberships(&mut self, clerk_organization_id: &str) -> Result<(), ReconcileError> {
        let db = &self.applier.db;
        let listed_at = now(db).await?;
        let page_size = self.options.page_size.clamp(1, 500);
        let mut listed = HashSet::new();
        let mut offset = 0;
        loop {
            let page = paced::call(
                &mut self.pace,
                self.options.attempts,
                "membership list",
                || {
                    self.clerk
                        .list_memberships(clerk_organization_id, page_size, offset)
                },
            )
            .await
            .map_err(|source| ReconcileError::ListOrganizations { offset, source })?;
            for value in &page {
                self.report.scanned_memberships += 1;
                // Listed is listed, even when it cannot be parsed: never a deletion candidate.
                if let Some(id) = value.get("id").and_then(|v| v.as_str()) {
                    listed.insert(id.to_owned());
                }
                match orgs::parse_membership(value) {
                    Ok(membership) => self.compare_membership(membership).await?,
                    Err(error) => {
                        let id = value.get("id").and_then(|v| v.as_str()).unwrap_or("?");
                        self.report.failed.push((id.to_owned(), error.to_string()));
                    }
                }
            }
            offset += page.len() as u64;
            if (page.len() as u64) < u64::from(page_size) {
                break;
            }
        }
        let unlisted = unlisted_memberships(db, clerk_organization_id, listed_at, &listed).await?;
        self.unlisted.extend(unlisted);
        Ok(())
    }

    /// Deletes what Clerk no longer has, under the deletion guard of each table.
    async fn delete_gone(&mut self, started: DateTime<Utc>) -> Result<(), ReconcileError> {
        let db = &self.applier.db;
        let mut candidates = Vec::new();
        let rows = db
            .query_all_raw(stmt(
                "SELECT clerk_organization_id, updated_at < $1 AS before FROM organizations",
                vec![started.into()],
            ))
            .await?;
        let organizations = rows.len() as u64;
        for row in rows {
            let id: String = row.try_get("", "clerk_organization_id")?;
            let before: bool = row.try_get("", "before")?;
            if before && !self.seen_organizations.contains(&id) {
                candidates.push(id);
            }
        }
        let memberships: i64 = db
            .query_one_raw(stmt(
                "SELECT count(*) AS n FROM organization_memberships",
                vec![],
            ))
            .await?
            .map(|row| row.try_get("", "n"))
            .transpose()?
            .unwrap_or(0);
        for (what, count, rows) in [
            ("organization(s)", candidates.len(), organizations),
            (
                "membership(s)",
                self.unlisted.len(),
                u64::try_from(memberships).unwrap_or(0),
            ),
        ] {
            let limit = MaxDeletes::limit(self.options.max_deletes, rows);
            if count > limit {
                return Err(ReconcileError::TooManyOrganizationDeletes {
                    what,
                    candidates: count,
                    limit,
                    report: Box::new(self.report.clone()),
                });
            }
        }
        for membership in std::mem::take(&mut self.unlisted) {
            self.end_unlisted(membership).await?;
        }
        for id in candidates {
            // Asked by id right before deleting: one created or listed late is not misjudged.
            let current = paced::call(
                &mut self.pace,
                self.options.attempts,
                "organization lookup",
                || self.clerk.get_organization(&id),
            )
            .await
            .map_err(|source| ReconcileError::Lookup {
                id: id.clone(),
                source,
            })?;
            if current.is_none() {
                let event = OrgEvent::Deleted {
                    clerk_organization_id: id.clone(),
                };
                self.delete(event, &id, true).await;
            }
        }
        Ok(())
    }

    /// One membership Clerk has, compared with where it stands here and repaired.
    async fn compare_membership(
        &mut self,
        membership: MembershipSnapshot,
    ) -> Result<(), ReconcileError> {
        let id = membership.clerk_membership_id.clone();
        let version = membership.updated_at;
        let stands = membership_here(&self.applier.db, &id, version).await?;
        let event = OrgEvent::MembershipUpserted(membership);
        self.repair(stands, version, event, &id, false).await;
        Ok(())
    }

    /// A stored membership its organization's listing did not have. Clerk pages by offset: a
    /// member who leaves while the list is read moves everyone after them up a place, and one
    /// of them is never listed (equal `created_at`s in an unstable order do the same). So Clerk
    /// is asked again for this user's membership of the organization before anything is
    /// ended: still there, it is compared like a listed one; another membership of the same
    /// user (they left and joined again) replaces it; none, it is ended with a tombstone.
    async fn end_unlisted(&mut self, membership: MembershipSnapshot) -> Result<(), ReconcileError> {
        let id = membership.clerk_membership_id.clone();
        let (organization, user) = (
            membership.organization.clerk_organization_id.clone(),
            membership.clerk_user_id.clone(),
        );
        let current = paced::call(
            &mut self.pace,
            self.options.attempts,
            "membership lookup",
            || self.clerk.memberships_of_user(&organization, &user),
        )
        .await
        .map_err(|source| ReconcileError::Lookup {
            id: id.clone(),
            source,
        })?;
        let mut still_member = false;
        for value in &current {
            self.report.scanned_memberships += 1;
            still_member |= value.get("id").and_then(|v| v.as_str()) == Some(id.as_str());
            match orgs::parse_membership(value) {
                Ok(listed) => self.compare_membership(listed).await?,
                Err(error) => {
                    let listed_id = value.get("id").and_then(|v| v.as_str()).unwrap_or("?");
                    self.report
                        .failed
                        .push((listed_id.to_owned(), error.to_string()));
                }
            }
        }
        if !still_member {
            self.delete(OrgEvent::MembershipDeleted(membership), &id, false)
                .await;
        }
        Ok(())
    }

    /// Compares one object at Clerk's `version` with where it stands here, and repairs it
    /// through `event`.
    async fn repair(
        &mut self,
        stands: Here,
        version: i64,
        event: OrgEvent,
        id: &str,
        organization: bool,
    ) {
        let kinds = if organization {
            &mut self.report.organizations
        } else {
            &mut self.report.memberships
        };
        let drift = match stands {
            Here::Tombstoned => return,
            Here::Missing => &mut kinds.missing,
            Here::At(stored) if stored < version => &mut kinds.older,
            Here::At(stored) if stored > version => {
                kinds.newer_here.add(id);
                return;
            }
            Here::At(_) => return,
        };
        if self.options.dry_run {
            drift.add(id);
            return;
        }
        match self
            .applier
            .apply(None, "reconcile", &ClerkEvent::Organization(event))
            .await
        {
            Ok(Outcome::Applied) => {
                tracing::info!(id, "reconcile repaired an organization or membership");
                drift.add(id);
            }
            // A webhook got there first, or a deletion: nothing to repair.
            Ok(_) => {}
            Err(error) => self.report.failed.push((id.to_owned(), error.reason())),
        }
    }

    async fn delete(&mut self, event: OrgEvent, id: &str, organization: bool) {
        let kinds = if organization {
            &mut self.report.organizations
        } else {
            &mut self.report.memberships
        };
        if self.options.dry_run {
            kinds.gone.add(id);
            return;
        }
        match self
            .applier
            .apply(None, "reconcile", &ClerkEvent::Organization(event))
            .await
        {
            Ok(_) => {
                tracing::info!(
                    id,
                    kind = "gone",
                    "reconcile repaired an organization or membership"
                );
                kinds.gone.add(id);
            }
            Err(error) => self.report.failed.push((id.to_owned(), error.reason())),
        }
    }
}
