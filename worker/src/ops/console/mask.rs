//! Masking personal fields in a dead letter's body before the console shows it. A field is
//! masked by what it is, wherever it sits: IP addresses and user agents (Clerk puts the end
//! user's in `event_attributes.http_request`), emails, phone numbers, names, usernames,
//! identifiers, birthdays, genders, addresses, images, provider user ids and every metadata
//! value. What is not personal stays readable: ids of Clerk objects, timestamps, verification
//! status and strategy, scopes, types. Only an operator's "reveal" (a POST, audited) shows the
//! body as received.

use serde_json::Value;

/// What a masked value shows.
pub const MASK: &str = "••• masked •••";

/// Keys that are personal whatever their shape (checked before the id rule: these ids name a
/// person, not a Clerk object).
const PERSONAL_KEYS: &[&str] = &[
    "name",
    "username",
    "identifier",
    "birthday",
    "gender",
    "provider_user_id",
    "google_id",
    "external_id",
    "web3_wallet",
    "picture",
    "ip",
];

/// Parts of a key that make its value personal (unless the key names a Clerk object's id).
const PERSONAL_PARTS: &[&str] = &[
    "email",
    "phone",
    "address",
    "ip_address",
    "client_ip",
    "user_agent",
    "image_url",
    "first_name",
    "last_name",
    "given_name",
    "family_name",
    "full_name",
    "birth",
];

/// Keys whose whole value, however deep, is personal.
fn personal_below(key: &str) -> bool {
    key.ends_with("metadata")
}

/// Whether a scalar under `key` is personal.
fn personal_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    if PERSONAL_KEYS.contains(&key.as_str()) || key.ends_with("_ip") || key.starts_with("ip_") {
        return true;
    }
    // `id`, `primary_email_address_id`, `external_account_id`: ids of Clerk objects.
    if key == "id" || key.ends_with("_id") || key.ends_with("_ids") {
        return false;
    }
    PERSONAL_PARTS.iter().any(|part| key.contains(part))
}

/// The body pretty-printed with personal fields masked; a body that is not JSON is hidden as a
/// whole (it may hold anything).
pub fn masked_body(body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(mut value) => {
            mask(&mut value, false, false);
            serde_json::to_string_pretty(&value).unwrap_or_default()
        }
        Err(_) => format!(
            "(not JSON, {} bytes: hidden until revealed, it may hold anything)",
            body.len()
        ),
    }
}

/// The body pretty-printed as received (what "reveal" shows).
pub fn pretty_body(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| body.to_owned())
}

/// Masks `value`. `leaf`: scalars here (and in arrays right here) are personal, objects are
/// looked into key by key (`email_addresses: [{id, email_address, verification}]` keeps its
/// ids and status). `all`: everything below is personal (metadata).
fn mask(value: &mut Value, leaf: bool, all: bool) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                mask(inner, personal_key(key), all || personal_below(key));
            }
        }
        Value::Array(items) => {
            for item in items {
                mask(item, leaf, all);
            }
        }
        Value::String(s) => {
            // Belt and braces: anything shaped like an email address is masked wherever it is.
            if leaf || all || s.contains('@') {
                *s = MASK.into();
            }
        }
        Value::Number(_) | Value::Bool(_) => {
            if leaf || all {
                *value = Value::String(MASK.into());
            }
        }
        Value::Null => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_names_phones_and_metadata_are_masked_ids_and_types_stay() {
        let body = r#"{"type":"user.created","data":{"id":"user_1","first_name":"Ada","last_name":"Lovelace",
            "email_addresses":[{"id":"idn_1","email_address":"ada@example.com"}],
            "phone_numbers":[{"phone_number":"+15551234567"}],
            "public_metadata":{"plan":"pro","seats":3},"private_metadata":{"ssn":"123"},
            "notes":"reach me at ada@example.com","updated_at":5}}"#;
        let masked = masked_body(body);
        for secret in [
            "Ada",
            "Lovelace",
            "ada@example.com",
            "5551234567",
            "pro",
            "123",
        ] {
            assert!(!masked.contains(secret), "{secret} shows in {masked}");
        }
        for kept in ["user.created", "user_1", "\"updated_at\": 5"] {
            assert!(masked.contains(kept), "{kept} is missing from {masked}");
        }
        assert!(pretty_body(body).contains("ada@example.com"));
    }

    #[test]
    fn the_end_user_s_ip_and_agent_birthday_gender_and_provider_ids_are_masked() {
        let body = r#"{"type":"user.updated","timestamp":1735776000456,
            "event_attributes":{"http_request":{"client_ip":"203.0.113.7","user_agent":"Mozilla/5.0 Synth"}},
            "data":{"id":"user_1","birthday":"1990-01-02","gender":"female","username":"ada",
              "external_id":"crm-4411","web3_wallets":[{"id":"idn_w","web3_wallet":"0xabc123"}],
              "external_accounts":[{"id":"idn_g","provider":"oauth_google","provider_user_id":"100000000000000000001",
                "given_name":"Ada","picture":"https://img.example/ada","approved_scopes":"openid email"}],
              "sessions":[{"latest_activity":{"ip_address":"198.51.100.9","city":"Lisbon"}}]}}"#;
        let masked = masked_body(body);
        for secret in [
            "203.0.113.7",
            "Mozilla",
            "1990-01-02",
            "female",
            "\"ada\"",
            "crm-4411",
            "0xabc123",
            "100000000000000000001",
            "https://img.example/ada",
            "198.51.100.9",
        ] {
            assert!(!masked.contains(secret), "{secret} shows in {masked}");
        }
        for kept in [
            "oauth_google",
            "openid email",
            "idn_g",
            "idn_w",
            "1735776000456",
        ] {
            assert!(masked.contains(kept), "{kept} is missing from {masked}");
        }
    }

    #[test]
    fn what_is_not_personal_inside_personal_lists_stays_readable() {
        let body = r#"{"data":{"id":"user_1","primary_email_address_id":"idn_1","primary_phone_number_id":"idn_p",
            "email_addresses":[{"id":"idn_1","object":"email_address","email_address":"ada@example.com",
              "verification":{"status":"verified","strategy":"email_code"},
              "linked_to":[{"type":"oauth_google","id":"idn_g"}],"created_at":1735689599000}],
            "phone_numbers":[{"id":"idn_p","phone_number":"+15551234567","verification":{"status":"unverified"}}],
            "has_image":true,"last_sign_in_at":1735775000000}}"#;
        let masked = masked_body(body);
        assert!(!masked.contains("ada@example.com") && !masked.contains("5551234567"));
        for kept in [
            "\"primary_email_address_id\": \"idn_1\"",
            "\"primary_phone_number_id\": \"idn_p\"",
            "\"id\": \"idn_1\"",
            "\"id\": \"idn_p\"",
            "\"status\": \"verified\"",
            "\"status\": \"unverified\"",
            "\"strategy\": \"email_code\"",
            "\"id\": \"idn_g\"",
            "1735689599000",
            "1735775000000",
            "\"has_image\": true",
        ] {
            assert!(masked.contains(kept), "{kept} is missing from {masked}");
        }
    }

    #[test]
    fn a_body_that_is_not_json_is_hidden_whole() {
        let masked = masked_body("{not json ada@example.com");
        assert!(!masked.contains("ada"), "{masked}");
        assert!(masked.contains("not JSON"), "{masked}");
    }
}
