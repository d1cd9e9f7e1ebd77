//! Organizations and memberships: Clerk's `organization.*` and `organizationMembership.*`
//! events (parsed by [`crate::event::organization`]) applied with the same guarantees as users (dedupe by Svix id,
//! last writer wins by Clerk's `updated_at`, deletes final with PII-free tombstones, any order).
//!
//! Any order, without retries: every membership event carries its organization, which is
//! upserted with it (version-guarded like any organization event), so the organization's row is
//! always there. The member is named by Clerk user id; the membership points at the user's row
//! as soon as that row exists (now, or when the user's own event inserts it: a trigger on
//! `users` links waiting memberships and removes those of a deleted user). A membership of a
//! deleted organization, user or membership changes nothing.
//!
//! Locks: an organization's events take its advisory lock; a membership's take the
//! organization's, then the user's (the lock user events take), always in that order.

use crate::pool::Pool;
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr, TransactionTrait};
use uuid::Uuid;

use crate::{
    apply::txn::{
        ApplyError, Outcome, finish, record_svix_id, stmt, tombstone_key, unique_violation_as,
    },
    event::organization::{MembershipSnapshot, OrgEvent, OrgSnapshot},
};

/// Applies `event` (delivered as Svix message `svix_id`, if known) in one transaction.
pub async fn apply(
    db: &Pool,
    svix_id: Option<&str>,
    event_type: &str,
    event: &OrgEvent,
) -> Result<Outcome, ApplyError> {
    let txn = db.begin().await?;
    let outcome = apply_in(&txn, svix_id, event_type, event).await;
    finish(txn, outcome).await
}

async fn apply_in(
    txn: &DatabaseTransaction,
    svix_id: Option<&str>,
    event_type: &str,
    event: &OrgEvent,
) -> Result<Outcome, ApplyError> {
    let (org_id, user_id) = match event {
        OrgEvent::Upserted(org) => (org.clerk_organization_id.as_str(), None),
        OrgEvent::Deleted {
            clerk_organization_id,
        } => (clerk_organization_id.as_str(), None),
        OrgEvent::MembershipUpserted(m) | OrgEvent::MembershipDeleted(m) => (
            m.organization.clerk_organization_id.as_str(),
            Some(m.clerk_user_id.as_str()),
        ),
    };
    lock(txn, &format!("org:{org_id}")).await?;
    if let Some(user_id) = user_id {
        lock(txn, user_id).await?;
    }
    if !record_svix_id(txn, svix_id, event_type).await? {
        return Ok(Outcome::Duplicate);
    }
    match event {
        OrgEvent::Upserted(org) => upsert_organization(txn, org).await,
        OrgEvent::Deleted {
            clerk_organization_id,
        } => delete_organization(txn, clerk_organization_id).await,
        OrgEvent::MembershipUpserted(m) => upsert_membership(txn, m).await,
        OrgEvent::MembershipDeleted(m) => delete_membership(txn, m).await,
    }
}

/// The transaction-scoped advisory lock of `key` (user events lock their Clerk user id).
async fn lock(txn: &DatabaseTransaction, key: &str) -> Result<(), DbErr> {
    txn.execute_raw(stmt(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        vec![key.into()],
    ))
    .await?;
    Ok(())
}

async fn tombstoned(txn: &DatabaseTransaction, sql: &str, id: &str) -> Result<bool, DbErr> {
    Ok(txn
        .query_one_raw(stmt(sql, vec![tombstone_key(id).into()]))
        .await?
        .is_some())
}

async fn organization_deleted(txn: &DatabaseTransaction, clerk_id: &str) -> Result<bool, DbErr> {
    tombstoned(
        txn,
        "SELECT 1 AS one FROM deleted_organizations WHERE clerk_organization_id_sha256 = $1",
        clerk_id,
    )
    .await
}

/// The version-guarded upsert of an organization. A slug still held by an organization whose
/// stored version is older than this one was given up (Clerk keeps slugs unique): freed here.
async fn upsert_organization(
    txn: &DatabaseTransaction,
    org: &OrgSnapshot,
) -> Result<Outcome, ApplyError> {
    if organization_deleted(txn, &org.clerk_organization_id).await? {
        return Ok(Outcome::SkippedDeleted);
    }
    if let Some(slug) = &org.slug {
        txn.execute_raw(stmt(
            "UPDATE organizations SET slug = NULL, updated_at = now() \
             WHERE slug = $1 AND clerk_organization_id <> $2 AND clerk_updated_at < $3",
            vec![
                slug.as_str().into(),
                org.clerk_organization_id.as_str().into(),
                org.updated_at.into(),
            ],
        ))
        .await?;
    }
    let result = txn
        .execute_raw(stmt(
            "INSERT INTO organizations (id, clerk_organization_id, name, slug, image_url, \
               public_metadata, members_count, clerk_updated_at, clerk_created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, to_timestamp($9::bigint / 1000.0)) \
             ON CONFLICT (clerk_organization_id) DO UPDATE SET \
               name = EXCLUDED.name, slug = EXCLUDED.slug, image_url = EXCLUDED.image_url, \
               public_metadata = EXCLUDED.public_metadata, \
               members_count = COALESCE(EXCLUDED.members_count, organizations.members_count), \
               clerk_updated_at = EXCLUDED.clerk_updated_at, \
               clerk_created_at = COALESCE(EXCLUDED.clerk_created_at, organizations.clerk_created_at), \
               updated_at = now() \
             WHERE organizations.clerk_updated_at < EXCLUDED.clerk_updated_at",
            vec![
                Uuid::new_v4().into(),
                org.clerk_organization_id.as_str().into(),
                org.name.as_str().into(),
                org.slug.clone().into(),
                org.image_url.clone().into(),
                org.public_metadata.clone().into(),
                org.members_count.into(),
                org.updated_at.into(),
                org.created_at.into(),
            ],
        ))
        .await
        .map_err(|error| unique_violation_as(error, ApplyError::SlugHeld))?;
    Ok(if result.rows_affected() == 0 {
        Outcome::SkippedStale
    } else {
        Outcome::Applied
    })
}

/// Deletes an organization for good: a tombstone, and the row (its memberships go with it).
async fn delete_organization(
    txn: &DatabaseTransaction,
    clerk_organization_id: &str,
) -> Result<Outcome, ApplyError> {
    txn.execute_raw(stmt(
        "INSERT INTO deleted_organizations (clerk_organization_id_sha256) VALUES ($1) \
         ON CONFLICT DO NOTHING",
        vec![tombstone_key(clerk_organization_id).into()],
    ))
    .await?;
    txn.execute_raw(stmt(
        "DELETE FROM organizations WHERE clerk_organization_id = $1",
        vec![clerk_organization_id.into()],
    ))
    .await?;
    Ok(Outcome::Applied)
}

/// Why a membership event changes nothing, if it does not: its organization, user or the
/// membership itself was deleted.
async fn membership_gone(txn: &DatabaseTransaction, m: &MembershipSnapshot) -> Result<bool, DbErr> {
    Ok(
        organization_deleted(txn, &m.organization.clerk_organization_id).await?
            || tombstoned(
                txn,
                "SELECT 1 AS one FROM deleted_users WHERE clerk_user_id_sha256 = $1",
                &m.clerk_user_id,
            )
            .await?
            || membership_tombstoned(txn, &m.clerk_membership_id, m.updated_at).await?,
    )
}

/// Whether a tombstone ends this membership at `version`: one written at that version or
/// later, or one that predates versioned tombstones (final). A newer event of a membership
/// whose tombstone is older is the member still in Clerk: it is applied.
pub async fn membership_tombstoned<C: ConnectionTrait>(
    db: &C,
    clerk_membership_id: &str,
    version: i64,
) -> Result<bool, DbErr> {
    Ok(db
        .query_one_raw(stmt(
            "SELECT 1 AS one FROM deleted_memberships WHERE clerk_membership_id_sha256 = $1 \
               AND (clerk_updated_at IS NULL OR clerk_updated_at >= $2)",
            vec![tombstone_key(clerk_membership_id).into(), version.into()],
        ))
        .await?
        .is_some())
}

/// The version-guarded upsert of a membership, one per user and organization: a newer
/// membership of the same pair (the user left and joined again) replaces an older one.
async fn upsert_membership(
    txn: &DatabaseTransaction,
    m: &MembershipSnapshot,
) -> Result<Outcome, ApplyError> {
    if membership_gone(txn, m).await? {
        return Ok(Outcome::SkippedDeleted);
    }
    // The organization as the membership carries it: creates the row if the organization's own
    // event has not come yet; a stale copy changes nothing.
    upsert_organization(txn, &m.organization).await?;
    let organization_id: Uuid = txn
        .query_one_raw(stmt(
            "SELECT id FROM organizations WHERE clerk_organization_id = $1",
            vec![m.organization.clerk_organization_id.as_str().into()],
        ))
        .await?
        .ok_or(DbErr::RecordNotFound(
            "the organization row just written".into(),
        ))?
        .try_get("", "id")?;
    let current = txn
        .query_one_raw(stmt(
            "SELECT clerk_updated_at FROM organization_memberships \
             WHERE organization_id = $1 AND clerk_user_id = $2 FOR UPDATE",
            vec![organization_id.into(), m.clerk_user_id.as_str().into()],
        ))
        .await?;
    let created_at = m.created_at.map(|ms| ms as f64 / 1000.0);
    let written = match current {
        Some(row) => {
            let version: i64 = row.try_get("", "clerk_updated_at")?;
            if version >= m.updated_at {
                return Ok(Outcome::SkippedStale);
            }
            txn.execute_raw(stmt(
                "UPDATE organization_memberships SET clerk_membership_id = $3, role = $4, \
                   clerk_updated_at = $5, clerk_created_at = to_timestamp($6), \
                   user_id = (SELECT id FROM users WHERE clerk_user_id = $2), updated_at = now() \
                 WHERE organization_id = $1 AND clerk_user_id = $2",
                vec![
                    organization_id.into(),
                    m.clerk_user_id.as_str().into(),
                    m.clerk_membership_id.as_str().into(),
                    m.role.as_str().into(),
                    m.updated_at.into(),
                    created_at.into(),
                ],
            ))
            .await?
        }
        None => {
            txn.execute_raw(stmt(
                "INSERT INTO organization_memberships (id, clerk_membership_id, organization_id, \
                   clerk_user_id, user_id, role, clerk_updated_at, clerk_created_at) \
                 VALUES ($1, $2, $3, $4, (SELECT id FROM users WHERE clerk_user_id = $4), $5, $6, \
                   to_timestamp($7))",
                vec![
                    Uuid::new_v4().into(),
                    m.clerk_membership_id.as_str().into(),
                    organization_id.into(),
                    m.clerk_user_id.as_str().into(),
                    m.role.as_str().into(),
                    m.updated_at.into(),
                    created_at.into(),
                ],
            ))
            .await?
        }
    };
    Ok(if written.rows_affected() == 0 {
        Outcome::SkippedStale
    } else {
        Outcome::Applied
    })
}

/// Ends a membership for good: a tombstone, and the row if it is still this membership (a
/// newer membership of the same user and organization stays). The organization it carries is
/// upserted too (its member count may be newer).
async fn delete_membership(
    txn: &DatabaseTransaction,
    m: &MembershipSnapshot,
) -> Result<Outcome, ApplyError> {
    // A final (unversioned) tombstone stays final; otherwise the newest version ended wins.
    txn.execute_raw(stmt(
        "INSERT INTO deleted_memberships (clerk_membership_id_sha256, clerk_updated_at) \
         VALUES ($1, $2) ON CONFLICT (clerk_membership_id_sha256) DO UPDATE SET \
           clerk_updated_at = CASE WHEN deleted_memberships.clerk_updated_at IS NULL THEN NULL \
             ELSE GREATEST(deleted_memberships.clerk_updated_at, EXCLUDED.clerk_updated_at) END",
        vec![
            tombstone_key(&m.clerk_membership_id).into(),
            m.updated_at.into(),
        ],
    ))
    .await?;
    // Only the version it ended: a newer one (the member still in Clerk, applied after a
    // deletion made on a stale reading) stays.
    txn.execute_raw(stmt(
        "DELETE FROM organization_memberships \
         WHERE clerk_membership_id = $1 AND clerk_updated_at <= $2",
        vec![m.clerk_membership_id.as_str().into(), m.updated_at.into()],
    ))
    .await?;
    upsert_organization(txn, &m.organization).await?;
    Ok(Outcome::Applied)
}
