//! Masking personal fields in a dead letter's body before the console shows it: emails, names,
//! phone numbers, usernames, identifiers, images, IP addresses and every metadata value. Only an
//! operator's "reveal" (a POST, audited) shows the body as received.

use serde_json::Value;

/// What a masked value shows.
pub const MASK: &str = "••• masked •••";

/// Keys whose values (every leaf below them) are personal.
const PERSONAL_KEYS: &[&str] = &[
    "email_address",
    "email_addresses",
    "first_name",
    "last_name",
    "username",
    "phone_number",
    "phone_numbers",
    "identifier",
    "image_url",
    "profile_image_url",
    "ip_address",
    "user_agent",
    "web3_wallet",
    "web3_wallets",
    "name",
];

/// The body pretty-printed with personal fields masked; a body that is not JSON is hidden as a
/// whole (it may hold anything).
pub fn masked_body(body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(mut value) => {
            mask(&mut value, false);
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

fn mask(value: &mut Value, personal: bool) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                let below = personal
                    || PERSONAL_KEYS.contains(&key.as_str())
                    || key.ends_with("_metadata")
                    || key.contains("email")
                    || key.contains("phone");
                mask(inner, below);
            }
        }
        Value::Array(items) => {
            for item in items {
                mask(item, personal);
            }
        }
        Value::String(s) => {
            // Belt and braces: anything shaped like an email address is masked wherever it is.
            if personal || s.contains('@') {
                *s = MASK.into();
            }
        }
        Value::Number(_) | Value::Bool(_) => {
            if personal {
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
    fn a_body_that_is_not_json_is_hidden_whole() {
        let masked = masked_body("{not json ada@example.com");
        assert!(!masked.contains("ada"), "{masked}");
        assert!(masked.contains("not JSON"), "{masked}");
    }
}
