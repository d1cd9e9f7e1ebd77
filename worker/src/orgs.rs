//! Organizations and memberships: Clerk's `organization.*` and `organizationMembership.*`
//! events, parsed leniently and applied with the same guarantees as users (dedupe by Svix id,
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

use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, TransactionTrait};
use serde::Deserialize;
use uuid::Uuid;

use crate::{
    apply::{
        ApplyError, Outcome, finish, record_svix_id, stmt, tombstone_key, unique_violation_as,
    },
    event::ParseError,
};

/// An organization or membership event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrgEvent {
    /// `organization.created` / `organization.updated`.
    Upserted(OrgSnapshot),
    /// `organization.deleted`.
    Deleted { clerk_organization_id: String },
    /// `organizationMembership.created` / `organizationMembership.updated`.
    MembershipUpserted(MembershipSnapshot),
    /// `organizationMembership.deleted` (which carries the whole membership).
    MembershipDeleted(MembershipSnapshot),
}

/// What clerk-sync keeps of an organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgSnapshot {
    pub clerk_organization_id: String,
    pub name: String,
    pub slug: Option<String>,
    pub image_url: Option<String>,
    pub public_metadata: serde_json::Value,
    pub members_count: Option<i32>,
    /// Clerk's `created_at`, ms.
    pub created_at: Option<i64>,
    /// Clerk's `updated_at`, ms: the row's version.
    pub updated_at: i64,
}

/// What clerk-sync keeps of a membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipSnapshot {
    pub clerk_membership_id: String,
    /// The member (`public_user_data.user_id`).
    pub clerk_user_id: String,
    /// Clerk's role key, e.g. `org:admin`.
    pub role: String,
    pub created_at: Option<i64>,
    pub updated_at: i64,
    /// The organization as the membership carries it.
    pub organization: OrgSnapshot,
}

#[derive(Deserialize)]
struct OrganizationObject {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    slug: Option<String>,
    #[serde(default)]
    image_url: Option<String>,
    #[serde(default)]
    public_metadata: Option<serde_json::Value>,
    #[serde(default)]
    members_count: Option<i64>,
    #[serde(default)]
    created_at: Option<i64>,
    updated_at: i64,
}

#[derive(Deserialize)]
struct MembershipObject {
    id: String,
    role: String,
    #[serde(default)]
    created_at: Option<i64>,
    updated_at: i64,
    organization: OrganizationObject,
    public_user_data: PublicUserData,
}

#[derive(Deserialize)]
struct PublicUserData {
    user_id: String,
}

#[derive(Deserialize)]
struct DeletedObject {
    id: String,
}

/// Whether `event_type` is one of the organization or membership events applied here.
pub fn handles(event_type: &str) -> bool {
    matches!(
        event_type,
        "organization.created"
            | "organization.updated"
            | "organization.deleted"
            | "organizationMembership.created"
            | "organizationMembership.updated"
            | "organizationMembership.deleted"
    )
}

/// Parses the `data` of an event of a type [`handles`] accepts.
pub fn parse(event_type: &str, data: &serde_json::value::RawValue) -> Result<OrgEvent, ParseError> {
    let bad = |reason: String| ParseError::BadObject {
        event_type: event_type.to_owned(),
        reason,
    };
    let describe = |error: &serde_json::Error, shape: fn(&[u8], &serde_json::Error) -> String| {
        bad(shape(data.get().as_bytes(), error))
    };
    match event_type {
        "organization.deleted" => {
            let deleted: DeletedObject = serde_json::from_str(data.get())
                .map_err(|e| describe(&e, describe_as::<DeletedObject>))?;
            non_empty(&deleted.id).ok_or_else(|| bad("empty `id`".into()))?;
            Ok(OrgEvent::Deleted {
                clerk_organization_id: deleted.id,
            })
        }
        "organization.created" | "organization.updated" => {
            let org: OrganizationObject = serde_json::from_str(data.get())
                .map_err(|e| describe(&e, describe_as::<OrganizationObject>))?;
            Ok(OrgEvent::Upserted(organization(org).map_err(bad)?))
        }
        _ => {
            let membership: MembershipObject = serde_json::from_str(data.get())
                .map_err(|e| describe(&e, describe_as::<MembershipObject>))?;
            let snapshot = self::membership(membership).map_err(bad)?;
            Ok(if event_type == "organizationMembership.deleted" {
                OrgEvent::MembershipDeleted(snapshot)
            } else {
                OrgEvent::MembershipUpserted(snapshot)
            })
        }
    }
}

/// Parses a bare Clerk organization object (as the Backend API lists them).
pub fn parse_organization(value: &serde_json::Value) -> Result<OrgSnapshot, ParseError> {
    let bad = |reason: String| ParseError::BadObject {
        event_type: "organization".into(),
        reason,
    };
    let org: OrganizationObject =
        telemetry::json_errors::from_value(value.clone()).map_err(|e| bad(e.to_string()))?;
    organization(org).map_err(bad)
}

/// Parses a bare Clerk membership object (as the Backend API lists them).
pub fn parse_membership(value: &serde_json::Value) -> Result<MembershipSnapshot, ParseError> {
    let bad = |reason: String| ParseError::BadObject {
        event_type: "organization_membership".into(),
        reason,
    };
    let membership: MembershipObject =
        telemetry::json_errors::from_value(value.clone()).map_err(|e| bad(e.to_string()))?;
    self::membership(membership).map_err(bad)
}

fn describe_as<T: serde::de::DeserializeOwned>(data: &[u8], error: &serde_json::Error) -> String {
    telemetry::json_errors::describe_error::<T>(data, error).to_string()
}

fn non_empty(value: &str) -> Option<&str> {
    Some(value).filter(|v| !v.trim().is_empty())
}

fn organization(org: OrganizationObject) -> Result<OrgSnapshot, String> {
    non_empty(&org.id).ok_or("empty organization `id`")?;
    Ok(OrgSnapshot {
        name: org.name.unwrap_or_default(),
        slug: org.slug.filter(|s| !s.trim().is_empty()),
        image_url: org.image_url.filter(|s| !s.is_empty()),
        public_metadata: org
            .public_metadata
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| serde_json::json!({})),
        members_count: org.members_count.and_then(|n| i32::try_from(n).ok()),
        created_at: org.created_at,
        updated_at: org.updated_at,
        clerk_organization_id: org.id,
    })
}

fn membership(m: MembershipObject) -> Result<MembershipSnapshot, String> {
    non_empty(&m.id).ok_or("empty membership `id`")?;
    non_empty(&m.public_user_data.user_id).ok_or("empty `public_user_data.user_id`")?;
    non_empty(&m.role).ok_or("empty `role`")?;
    Ok(MembershipSnapshot {
        clerk_membership_id: m.id,
        clerk_user_id: m.public_user_data.user_id,
        role: m.role,
        created_at: m.created_at,
        updated_at: m.updated_at,
        organization: organization(m.organization)?,
    })
}

/// Applies `event` (delivered as Svix message `svix_id`, if known) in one transaction.
pub async fn apply(
    db: &DatabaseConnection,
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
pub(crate) async fn membership_tombstoned<C: ConnectionTrait>(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<serde_json::value::RawValue> {
        serde_json::value::RawValue::from_string(json.to_owned()).expect("json")
    }

    const ORG: &str = r#"{"id":"org_1","object":"organization","name":"Acme Lettings","slug":"acme",
        "image_url":"https://img.clerk.com/x","logo_url":null,"has_image":true,"created_at":1700000000000,
        "updated_at":1700000000500,"created_by":"user_1","public_metadata":{"plan":"pro"},
        "private_metadata":{"secret":"no"},"admin_delete_enabled":true,"max_allowed_memberships":5}"#;

    #[test]
    fn an_organization_is_read_leniently_without_private_metadata() {
        let OrgEvent::Upserted(org) = parse("organization.updated", &raw(ORG)).expect("parses")
        else {
            panic!("an upsert");
        };
        assert_eq!(org.clerk_organization_id, "org_1");
        assert_eq!(org.name, "Acme Lettings");
        assert_eq!(org.slug.as_deref(), Some("acme"));
        assert_eq!(
            org.members_count, None,
            "absent from organization.* payloads"
        );
        assert_eq!(org.public_metadata, serde_json::json!({"plan": "pro"}));
        assert_eq!(org.updated_at, 1_700_000_000_500);
    }

    #[test]
    fn a_membership_names_its_user_and_carries_its_organization() {
        let body = format!(
            r#"{{"id":"orgmem_1","object":"organization_membership","role":"org:admin","role_name":"Admin",
            "permissions":["org:sys_memberships:manage"],"created_at":1,"updated_at":2,"public_metadata":{{}},
            "organization":{ORG},"public_user_data":{{"user_id":"user_9","first_name":"Ada","last_name":null,
            "identifier":"ada@example.com","image_url":"x","has_image":false}}}}"#
        );
        let event = parse("organizationMembership.deleted", &raw(&body)).expect("parses");
        let OrgEvent::MembershipDeleted(m) = event else {
            panic!("a delete");
        };
        assert_eq!(m.clerk_membership_id, "orgmem_1");
        assert_eq!(m.clerk_user_id, "user_9");
        assert_eq!(m.role, "org:admin");
        assert_eq!(m.organization.clerk_organization_id, "org_1");
    }

    #[test]
    fn bad_objects_say_which_field_without_the_value() {
        let err = parse(
            "organizationMembership.created",
            &raw(r#"{"id":"orgmem_1","role":"org:admin","updated_at":2,"organization":{"id":"org_1","updated_at":1},"public_user_data":{"user_id":""}}"#),
        )
        .expect_err("no user");
        assert!(
            err.to_string().contains("public_user_data.user_id"),
            "{err}"
        );
        let err = parse(
            "organization.created",
            &raw(r#"{"id":"org_1","name":"Secret Name"}"#),
        )
        .expect_err("no version");
        assert!(err.to_string().contains("updated_at"), "{err}");
        assert!(!err.to_string().contains("Secret Name"), "{err}");
        assert!(
            parse(
                "organization.deleted",
                &raw(r#"{"id":"org_1","deleted":true}"#)
            )
            .is_ok()
        );
    }
}
