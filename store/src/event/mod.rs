//! Clerk's event envelope and user object, parsed leniently (Clerk keeps adding fields), keeping
//! only what clerk-sync stores.

pub mod error;
pub mod organization;

use serde::Deserialize;
use telemetry::json_errors;

pub use error::ParseError;

/// An event the worker knows how to apply, or the type of one it ignores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClerkEvent {
    /// `user.created` or `user.updated`: the user's full state at `updated_at`.
    UserUpserted(UserSnapshot),
    /// `user.deleted`.
    UserDeleted { clerk_user_id: String },
    /// `organization.*` and `organizationMembership.*` ([`organization`]).
    Organization(organization::OrgEvent),
    /// Any other type (`session.created`, `email.created`, …): acknowledged and counted.
    Ignored { event_type: String },
}

impl ClerkEvent {
    /// The event without the user's private and unsafe metadata: what is applied unless
    /// `SYNC_PRIVATE_METADATA=true`.
    #[must_use]
    pub fn without_private_metadata(mut self) -> Self {
        if let Self::UserUpserted(user) = &mut self {
            user.private_metadata = None;
            user.unsafe_metadata = None;
        }
        self
    }

    /// Whether the event carries private or unsafe metadata.
    pub fn has_private_metadata(&self) -> bool {
        matches!(self, Self::UserUpserted(user)
            if user.private_metadata.is_some() || user.unsafe_metadata.is_some())
    }

    /// The Clerk user the event is about, if any.
    pub fn clerk_user_id(&self) -> Option<&str> {
        match self {
            Self::UserUpserted(user) => Some(&user.clerk_user_id),
            Self::UserDeleted { clerk_user_id } => Some(clerk_user_id),
            Self::Organization(_) | Self::Ignored { .. } => None,
        }
    }
}

/// What clerk-sync keeps of a Clerk user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSnapshot {
    pub clerk_user_id: String,
    /// The address whose id is `primary_email_address_id`; none is a valid state.
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// Clerk's `created_at`, ms since the epoch.
    pub created_at: Option<i64>,
    /// Clerk's `updated_at`, ms since the epoch: the row's version.
    pub updated_at: i64,
    /// The event envelope's `timestamp` (none for a user read from Clerk's API): with the Svix
    /// id, it orders two different states of the same `updated_at` (see [`version_tiebreak`]).
    pub event_timestamp: Option<i64>,
    /// The user's external accounts, as sent (calendar connections are derived from them).
    pub external_accounts: Vec<serde_json::Value>,
    pub username: Option<String>,
    pub image_url: Option<String>,
    /// The id the product gave the user in Clerk.
    pub external_id: Option<String>,
    /// The number whose id is `primary_phone_number_id`; none is a valid state.
    pub primary_phone_number: Option<String>,
    /// Clerk's `public_metadata` (`{}` when missing or null).
    pub public_metadata: serde_json::Value,
    /// Clerk's `private_metadata`, as sent: stored only with `SYNC_PRIVATE_METADATA=true`.
    pub private_metadata: Option<serde_json::Value>,
    /// Clerk's `unsafe_metadata`, as sent: stored only with `SYNC_PRIVATE_METADATA=true`.
    pub unsafe_metadata: Option<serde_json::Value>,
    /// Missing or null: `false`.
    pub banned: bool,
    /// Missing or null: `false`.
    pub locked: bool,
    /// Clerk's `last_sign_in_at`, ms since the epoch.
    pub last_sign_in_at: Option<i64>,
}

/// What orders two different states of a user with the same Clerk `updated_at`, so that the
/// same one wins whatever the arrival order: the event's timestamp, zero-padded, then its Svix
/// id, compared as bytes (`users.clerk_version_tiebreak` is `COLLATE "C"`). A state read from
/// Clerk's API (backfill), with neither, has the empty tiebreak: it never replaces a stored
/// state of the same version.
pub fn version_tiebreak(event_timestamp: Option<i64>, svix_id: Option<&str>) -> String {
    if event_timestamp.is_none() && svix_id.is_none() {
        return String::new();
    }
    format!(
        "{:020}/{}",
        event_timestamp.unwrap_or(0).max(0),
        svix_id.unwrap_or_default()
    )
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    event_type: String,
    /// When Clerk created the event (its unit is not documented, but one instance keeps one).
    #[serde(default)]
    timestamp: Option<i64>,
    /// Read later, by type, straight from the body's bytes.
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
}

/// The envelope's shape, owned: only to describe why a body is not an envelope.
#[derive(Deserialize)]
#[allow(dead_code)]
struct EnvelopeShape {
    #[serde(rename = "type")]
    event_type: String,
    data: serde_json::Value,
}

/// Why `data` is not a `T`: the field and the problem, never the value (bodies are personal
/// data, and reasons go to logs and dead-letter headers).
fn shape<T: serde::de::DeserializeOwned>(
    data: &serde_json::value::RawValue,
    error: &serde_json::Error,
) -> String {
    json_errors::describe_error::<T>(data.get().as_bytes(), error).to_string()
}

#[derive(Deserialize)]
struct UserObject {
    id: String,
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    last_name: Option<String>,
    #[serde(default)]
    primary_email_address_id: Option<String>,
    #[serde(default)]
    email_addresses: Vec<EmailAddress>,
    #[serde(default)]
    external_accounts: Vec<serde_json::Value>,
    #[serde(default)]
    created_at: Option<i64>,
    updated_at: i64,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    image_url: Option<String>,
    #[serde(default)]
    external_id: Option<String>,
    #[serde(default)]
    primary_phone_number_id: Option<String>,
    /// `null` is taken as none, like a missing list.
    #[serde(default, deserialize_with = "null_as_empty")]
    phone_numbers: Vec<PhoneNumber>,
    #[serde(default)]
    public_metadata: Option<serde_json::Value>,
    #[serde(default)]
    private_metadata: Option<serde_json::Value>,
    #[serde(default)]
    unsafe_metadata: Option<serde_json::Value>,
    #[serde(default)]
    banned: Option<bool>,
    #[serde(default)]
    locked: Option<bool>,
    #[serde(default)]
    last_sign_in_at: Option<i64>,
}

#[derive(Deserialize)]
struct PhoneNumber {
    id: String,
    phone_number: String,
}

fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

#[derive(Deserialize)]
struct EmailAddress {
    id: String,
    email_address: String,
}

#[derive(Deserialize)]
struct DeletedObject {
    id: String,
}

/// Parses a raw webhook body.
pub fn parse(body: &[u8]) -> Result<ClerkEvent, ParseError> {
    parse_typed(body).1
}

/// Parses a raw webhook body, and returns its event type too (`unparseable` when it has none),
/// reading the body once when it is a well-formed envelope.
pub fn parse_typed(body: &[u8]) -> (String, Result<ClerkEvent, ParseError>) {
    match serde_json::from_slice::<Envelope>(body) {
        Ok(envelope) => (envelope.event_type.clone(), from_envelope(envelope)),
        Err(error) => (
            event_type(body).unwrap_or_else(|| "unparseable".into()),
            Err(ParseError::NotAnEnvelope(
                json_errors::describe_error::<EnvelopeShape>(body, &error).to_string(),
            )),
        ),
    }
}

fn from_envelope(envelope: Envelope<'_>) -> Result<ClerkEvent, ParseError> {
    let bad = |reason: String| ParseError::BadUser {
        event_type: envelope.event_type.clone(),
        reason,
    };
    match envelope.event_type.as_str() {
        "user.created" | "user.updated" => {
            let user: UserObject = serde_json::from_str(envelope.data.get())
                .map_err(|e| bad(shape::<UserObject>(envelope.data, &e)))?;
            let mut snapshot = snapshot(user).ok_or_else(|| bad("empty `id`".into()))?;
            snapshot.event_timestamp = envelope.timestamp;
            Ok(ClerkEvent::UserUpserted(snapshot))
        }
        "user.deleted" => {
            let deleted: DeletedObject = serde_json::from_str(envelope.data.get())
                .map_err(|e| bad(shape::<DeletedObject>(envelope.data, &e)))?;
            if deleted.id.trim().is_empty() {
                return Err(bad("empty `id`".into()));
            }
            Ok(ClerkEvent::UserDeleted {
                clerk_user_id: deleted.id,
            })
        }
        other if organization::handles(other) => {
            organization::parse(other, envelope.data).map(ClerkEvent::Organization)
        }
        _ => Ok(ClerkEvent::Ignored {
            event_type: envelope.event_type,
        }),
    }
}

/// Parses a bare Clerk user object (as the Backend API lists them) into a snapshot.
pub fn parse_user(value: &serde_json::Value) -> Result<UserSnapshot, ParseError> {
    let user: UserObject =
        json_errors::from_value(value.clone()).map_err(|e| ParseError::BadUser {
            event_type: "user".into(),
            reason: e.to_string(),
        })?;
    snapshot(user).ok_or_else(|| ParseError::BadUser {
        event_type: "user".into(),
        reason: "empty `id`".into(),
    })
}

fn snapshot(user: UserObject) -> Option<UserSnapshot> {
    if user.id.trim().is_empty() {
        return None;
    }
    let email = user
        .primary_email_address_id
        .as_deref()
        .and_then(|primary| {
            user.email_addresses
                .iter()
                .find(|address| address.id == primary)
                .map(|address| address.email_address.clone())
        });
    let primary_phone_number = user.primary_phone_number_id.as_deref().and_then(|primary| {
        user.phone_numbers
            .iter()
            .find(|number| number.id == primary)
            .map(|number| number.phone_number.clone())
    });
    Some(UserSnapshot {
        clerk_user_id: user.id,
        email,
        first_name: user.first_name,
        last_name: user.last_name,
        created_at: user.created_at,
        updated_at: user.updated_at,
        event_timestamp: None,
        external_accounts: user.external_accounts,
        username: user.username,
        image_url: user.image_url,
        external_id: user.external_id,
        primary_phone_number,
        public_metadata: user
            .public_metadata
            .filter(|metadata| !metadata.is_null())
            .unwrap_or_else(|| serde_json::json!({})),
        private_metadata: user.private_metadata,
        unsafe_metadata: user.unsafe_metadata,
        banned: user.banned.unwrap_or(false),
        locked: user.locked.unwrap_or(false),
        last_sign_in_at: user.last_sign_in_at,
    })
}

/// The event type of a body, if it has one (for logs and the DLQ listing).
pub fn event_type(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct TypeOnly {
        #[serde(rename = "type")]
        event_type: String,
    }
    serde_json::from_slice::<TypeOnly>(body)
        .ok()
        .map(|t| t.event_type)
}

/// One fuzz case for the event parser (used by `fuzz/` and its corpus regression test): parses
/// the body and, for user events, derives the calendar accounts. Never panics on any input.
#[doc(hidden)]
pub fn fuzz_case(data: &[u8]) {
    let _ = event_type(data);
    if let Ok(ClerkEvent::UserUpserted(user)) = parse(data) {
        let _ = crate::accounts::calendar_accounts(&user.external_accounts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREATED: &str = r#"{"type":"user.created","object":"event","timestamp":1735689600123,"instance_id":"ins_2abcSYNTHinst01",
"data":{"id":"user_2abcSYNTHuser01","object":"user","external_id":null,"username":null,"first_name":"Ada","last_name":"Synth",
"primary_email_address_id":"idn_2abcSYNTHmail01","email_addresses":[
{"id":"idn_other","email_address":"other@example.com"},
{"id":"idn_2abcSYNTHmail01","object":"email_address","email_address":"ada@example.com","reserved":false,
"verification":{"status":"verified","strategy":"email_code","attempts":1,"expire_at":1735690200000},"linked_to":[]}],
"external_accounts":[],"public_metadata":{},"private_metadata":{},"some_new_field":{"x":1},
"last_sign_in_at":null,"created_at":1735689600000,"updated_at":1735689600100}}"#;

    #[test]
    fn the_primary_email_is_the_one_named_by_primary_email_address_id_not_the_first() {
        let ClerkEvent::UserUpserted(user) = parse(CREATED.as_bytes()).expect("parses") else {
            panic!("not an upsert")
        };
        assert_eq!(user.clerk_user_id, "user_2abcSYNTHuser01");
        assert_eq!(user.email.as_deref(), Some("ada@example.com"));
        assert_eq!(user.first_name.as_deref(), Some("Ada"));
        assert_eq!(user.updated_at, 1_735_689_600_100);
        assert_eq!(user.created_at, Some(1_735_689_600_000));
    }

    #[test]
    fn a_user_without_email_has_none() {
        let body = r#"{"type":"user.updated","data":{"id":"user_x","primary_email_address_id":null,
            "email_addresses":[],"updated_at":5}}"#;
        let ClerkEvent::UserUpserted(user) = parse(body.as_bytes()).expect("parses") else {
            panic!("not an upsert")
        };
        assert_eq!(user.email, None);
        assert_eq!(user.first_name, None);
    }

    #[test]
    fn the_profile_is_read_and_the_primary_phone_is_the_one_named_not_the_first() {
        let body = r#"{"type":"user.updated","data":{"id":"user_p","updated_at":7,
            "username":"ada","image_url":"https://img.example/ada.png","external_id":"ext-1",
            "primary_phone_number_id":"idn_phone_2","phone_numbers":[
              {"id":"idn_phone_1","phone_number":"+15550000001","object":"phone_number"},
              {"id":"idn_phone_2","phone_number":"+15550000002","reserved":false}],
            "public_metadata":{"plan":"pro"},"private_metadata":{"ssn":"no"},
            "unsafe_metadata":{"theme":"dark"},"banned":true,"locked":false,
            "last_sign_in_at":1735689600500}}"#;
        let ClerkEvent::UserUpserted(user) = parse(body.as_bytes()).expect("parses") else {
            panic!("not an upsert")
        };
        assert_eq!(user.username.as_deref(), Some("ada"));
        assert_eq!(
            user.image_url.as_deref(),
            Some("https://img.example/ada.png")
        );
        assert_eq!(user.external_id.as_deref(), Some("ext-1"));
        assert_eq!(user.primary_phone_number.as_deref(), Some("+15550000002"));
        assert_eq!(user.public_metadata, serde_json::json!({"plan": "pro"}));
        assert_eq!(
            user.private_metadata,
            Some(serde_json::json!({"ssn": "no"}))
        );
        assert_eq!(
            user.unsafe_metadata,
            Some(serde_json::json!({"theme": "dark"}))
        );
        assert!(user.banned);
        assert!(!user.locked);
        assert_eq!(user.last_sign_in_at, Some(1_735_689_600_500));
    }

    #[test]
    fn a_missing_or_null_profile_is_empty_not_an_error() {
        let cases = [
            r#"{"id":"user_q","updated_at":3}"#,
            r#"{"id":"user_q","updated_at":3,"username":null,"image_url":null,"external_id":null,
               "primary_phone_number_id":null,"phone_numbers":null,"public_metadata":null,
               "private_metadata":null,"unsafe_metadata":null,"banned":null,"locked":null,
               "last_sign_in_at":null}"#,
            // A primary id naming no listed number: no number.
            r#"{"id":"user_q","updated_at":3,"primary_phone_number_id":"idn_gone",
               "phone_numbers":[{"id":"idn_other","phone_number":"+15550000003"}]}"#,
        ];
        for data in cases {
            let value: serde_json::Value = serde_json::from_str(data).expect("json");
            let user = parse_user(&value).expect(data);
            assert_eq!(user.username, None);
            assert_eq!(user.image_url, None);
            assert_eq!(user.external_id, None);
            assert_eq!(user.primary_phone_number, None, "{data}");
            assert_eq!(user.public_metadata, serde_json::json!({}));
            assert_eq!(user.private_metadata, None);
            assert_eq!(user.unsafe_metadata, None);
            assert!(!user.banned && !user.locked);
            assert_eq!(user.last_sign_in_at, None);
        }
    }

    #[test]
    fn a_delete_carries_only_the_id() {
        let body = r#"{"type":"user.deleted","object":"event","timestamp":1735862400789,
            "data":{"deleted":true,"id":"user_2abcSYNTHuser01","object":"user"}}"#;
        assert_eq!(
            parse(body.as_bytes()),
            Ok(ClerkEvent::UserDeleted {
                clerk_user_id: "user_2abcSYNTHuser01".into()
            })
        );
    }

    #[test]
    fn unknown_types_are_ignored_not_errors() {
        let body = r#"{"type":"session.created","data":{"id":"sess_1"}}"#;
        assert_eq!(
            parse(body.as_bytes()),
            Ok(ClerkEvent::Ignored {
                event_type: "session.created".into()
            })
        );
    }

    #[test]
    fn parse_errors_name_the_field_and_never_quote_personal_data() {
        let cases = [
            (
                r#"{"type":"user.updated","data":{"id":"user_x","first_name":"Ada","updated_at":"ada@example.com"}}"#,
                "updated_at",
            ),
            (
                r#"{"type":"user.created","data":{"id":"user_x","updated_at":1,"email_addresses":[{"id":"idn_1","email_address":{"a":"ada@example.com"}}]}}"#,
                "email_addresses[0].email_address",
            ),
            (
                r#"{"type":"user.deleted","data":{"id":["ada@example.com"]}}"#,
                "id",
            ),
            (r#"{"type":["ada@example.com"],"data":{}}"#, "type"),
        ];
        for (body, field) in cases {
            let error = parse(body.as_bytes()).expect_err(body).to_string();
            assert!(error.contains(field), "{error}");
            assert!(!error.contains("ada@"), "{error}");
        }
        let value = serde_json::json!({"id": "user_x", "updated_at": "ada@example.com"});
        let error = parse_user(&value).expect_err("bad").to_string();
        assert!(
            error.contains("updated_at") && !error.contains("ada@"),
            "{error}"
        );
    }

    #[test]
    fn bodies_that_can_never_apply_are_permanent_errors() {
        assert!(matches!(
            parse(b"not json"),
            Err(ParseError::NotAnEnvelope(_))
        ));
        assert!(matches!(
            parse(b"{\"data\":{}}"),
            Err(ParseError::NotAnEnvelope(_))
        ));
        let no_version = r#"{"type":"user.updated","data":{"id":"user_x"}}"#;
        assert!(matches!(
            parse(no_version.as_bytes()),
            Err(ParseError::BadUser { .. })
        ));
        let no_id = r#"{"type":"user.deleted","data":{"deleted":true}}"#;
        assert!(matches!(
            parse(no_id.as_bytes()),
            Err(ParseError::BadUser { .. })
        ));
    }
}
