//! Organizations and memberships as Clerk's `organization.*` and `organizationMembership.*`
//! events carry them, parsed leniently (applied by [`crate::apply::organizations`]).

use serde::Deserialize;

use crate::event::error::ParseError;

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
