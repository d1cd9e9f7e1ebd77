//! Realistic Clerk events, shaped like the payloads in the reference (synthetic ids).

use serde_json::{Value, json};

/// A user's state at one version, as Clerk would send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserState {
    pub id: String,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// Clerk's `updated_at`, ms.
    pub updated_at: i64,
}

/// The `data` of a `user.created` / `user.updated` event.
pub fn user_object(state: &UserState) -> Value {
    let (emails, primary) = match &state.email {
        Some(email) => (
            json!([
                {"id": "idn_other0000", "object": "email_address", "email_address": format!("old-{email}"),
                 "verification": null, "linked_to": []},
                {"id": "idn_primary000", "object": "email_address", "email_address": email,
                 "verification": {"status": "verified", "strategy": "email_code"}, "linked_to": []}
            ]),
            json!("idn_primary000"),
        ),
        None => (json!([]), Value::Null),
    };
    json!({
        "id": state.id, "object": "user", "external_id": null, "username": null,
        "first_name": state.first_name, "last_name": state.last_name,
        "image_url": "https://img.clerk.com/synth", "has_image": false,
        "primary_email_address_id": primary, "primary_phone_number_id": null,
        "email_addresses": emails, "phone_numbers": [], "web3_wallets": [], "passkeys": [],
        "external_accounts": [], "saml_accounts": [], "enterprise_accounts": [],
        "public_metadata": {}, "private_metadata": {}, "unsafe_metadata": {},
        "password_enabled": true, "two_factor_enabled": false, "banned": false, "locked": false,
        "last_sign_in_at": null, "last_active_at": null,
        "created_at": 1_735_689_600_000_i64, "updated_at": state.updated_at
    })
}

/// A full event envelope.
pub fn envelope(event_type: &str, data: Value, timestamp: i64) -> Value {
    json!({
        "data": data, "object": "event", "type": event_type, "timestamp": timestamp,
        "instance_id": "ins_2abcSYNTHinst01",
        "event_attributes": {"http_request": {"client_ip": "192.0.2.1", "user_agent": "synthetic"}}
    })
}

/// A `user.created` or `user.updated` event body.
pub fn user_event(event_type: &str, state: &UserState) -> Vec<u8> {
    serde_json::to_vec(&envelope(event_type, user_object(state), state.updated_at)).unwrap()
}

/// A `user.deleted` event body.
pub fn user_deleted(id: &str, timestamp: i64) -> Vec<u8> {
    serde_json::to_vec(&envelope(
        "user.deleted",
        json!({"deleted": true, "id": id, "object": "user"}),
        timestamp,
    ))
    .unwrap()
}

/// A `user.created` / `user.updated` body whose user has these external accounts.
pub fn user_event_with_accounts(
    event_type: &str,
    state: &UserState,
    accounts: Vec<Value>,
) -> Vec<u8> {
    let mut user = user_object(state);
    user["external_accounts"] = Value::Array(accounts);
    serde_json::to_vec(&envelope(event_type, user, state.updated_at)).unwrap()
}

/// A verified Google account with the calendar scope (current shape).
pub fn google_calendar_account(provider_user_id: &str, external_account_id: &str) -> Value {
    json!({
        "object": "external_account", "id": format!("idn_{external_account_id}"),
        "external_account_id": external_account_id, "identification_id": format!("idn_{external_account_id}"),
        "provider": "oauth_google", "provider_user_id": provider_user_id,
        "approved_scopes": "email https://www.googleapis.com/auth/calendar.events https://www.googleapis.com/auth/userinfo.email openid profile",
        "email_address": "ada@example.com", "first_name": "Ada", "last_name": "Synth",
        "verification": {"status": "verified", "strategy": "oauth_google"},
        "created_at": 1_735_770_000_000_i64, "updated_at": 1_735_776_000_200_i64
    })
}

/// A verified Microsoft account with the calendar scope.
pub fn microsoft_calendar_account(provider_user_id: &str, external_account_id: &str) -> Value {
    json!({
        "object": "external_account", "id": format!("idn_{external_account_id}"),
        "external_account_id": external_account_id, "provider": "oauth_microsoft",
        "provider_user_id": provider_user_id,
        "approved_scopes": "Calendars.ReadWrite email offline_access openid profile User.Read",
        "email_address": "ada@contoso.example",
        "verification": {"status": "verified", "strategy": "oauth_microsoft"}
    })
}

/// An organization's state at one version, as Clerk would send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgState {
    pub id: String,
    pub name: String,
    pub slug: String,
    /// Clerk's `updated_at`, ms.
    pub updated_at: i64,
}

/// The `data` of an `organization.created` / `organization.updated` event (without
/// `members_count`, as instances send it there).
pub fn organization_object(org: &OrgState) -> Value {
    json!({
        "id": org.id, "object": "organization", "name": org.name, "slug": org.slug,
        "image_url": "https://img.clerk.com/org", "logo_url": null, "has_image": false,
        "created_at": 1_735_689_600_000_i64, "updated_at": org.updated_at, "created_by": "user_synthcreator",
        "public_metadata": {"plan": "team"}, "private_metadata": {"billing": "internal"},
        "admin_delete_enabled": true, "max_allowed_memberships": 20
    })
}

/// An `organization.created` / `organization.updated` body.
pub fn organization_event(event_type: &str, org: &OrgState) -> Vec<u8> {
    serde_json::to_vec(&envelope(
        event_type,
        organization_object(org),
        org.updated_at,
    ))
    .unwrap()
}

/// An `organization.deleted` body.
pub fn organization_deleted(id: &str, timestamp: i64) -> Vec<u8> {
    serde_json::to_vec(&envelope(
        "organization.deleted",
        json!({"deleted": true, "id": id, "object": "organization"}),
        timestamp,
    ))
    .unwrap()
}

/// A membership's state at one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipState {
    pub id: String,
    pub user_id: String,
    pub role: String,
    /// Clerk's `updated_at`, ms.
    pub updated_at: i64,
    /// The organization as the membership carries it.
    pub organization: OrgState,
}

/// An `organizationMembership.created|updated|deleted` body (a delete carries the whole
/// membership).
pub fn membership_event(event_type: &str, membership: &MembershipState) -> Vec<u8> {
    let data = membership_object(membership);
    serde_json::to_vec(&envelope(event_type, data, membership.updated_at)).unwrap()
}

/// A membership object, as events carry it and Clerk's API lists it.
pub fn membership_object(membership: &MembershipState) -> Value {
    let mut organization = organization_object(&membership.organization);
    organization["members_count"] = json!(3);
    json!({
        "id": membership.id, "object": "organization_membership", "role": membership.role,
        "role_name": "Member", "permissions": ["org:sys_profile:read"],
        "created_at": 1_735_689_600_000_i64, "updated_at": membership.updated_at,
        "public_metadata": {}, "organization": organization,
        "public_user_data": {"user_id": membership.user_id, "first_name": "Ada", "last_name": null,
            "identifier": "ada@example.com", "image_url": "https://img.clerk.com/u", "has_image": false}
    })
}
