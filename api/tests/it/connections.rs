//! The connections list never carries tokens: neither the fields nor the stored bytes.

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::json;

use crate::helpers::{Connection, SERVICE_KEY, json_body, session_token, spawn_app};

const SEALED_ACCESS: &[u8] = b"\x01\x02SEALED-ACCESS-TOKEN-BYTES-7f3a9c";
const SEALED_REFRESH: &[u8] = b"\x03\x04SEALED-REFRESH-TOKEN-BYTES-0b1e2d";

fn leaks(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for bytes in [SEALED_ACCESS, SEALED_REFRESH] {
        let printable = String::from_utf8_lossy(&bytes[2..]).into_owned();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        for needle in [
            printable,
            hex,
            STANDARD.encode(bytes),
            "0011223344556677".into(),
        ] {
            if text.contains(&needle) {
                found.push(needle);
            }
        }
    }
    for field in ["access_token", "refresh_token", "token_key_id"] {
        if text.contains(field) {
            found.push(field.to_owned());
        }
    }
    found
}

#[tokio::test]
async fn the_connections_list_has_no_token_fields_and_no_token_bytes() {
    let app = spawn_app().await;
    let id = app.insert_user("user_ada", Some("ada@example.test")).await;
    let google = app
        .insert_connection(Connection {
            refresh_token: Some(SEALED_REFRESH),
            ..Connection::google(id, SEALED_ACCESS)
        })
        .await;
    app.insert_connection(Connection {
        provider: "microsoft",
        provider_user_id: "ms-user-1",
        status: "needs_reconnect",
        access_token: None,
        token_key_id: None,
        ..Connection::google(id, SEALED_ACCESS)
    })
    .await;

    for token in [SERVICE_KEY.to_owned(), session_token("user_ada")] {
        let response = app
            .get(&format!("/users/{id}/calendar-connections"), Some(&token))
            .await;
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        assert_eq!(leaks(&text), Vec::<String>::new(), "{text}");

        let list: serde_json::Value = serde_json::from_str(&text).unwrap();
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), 2);
        let first = list[0].as_object().unwrap();
        let mut keys: Vec<&str> = first.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "created_at",
                "email",
                "expires_at",
                "external_account_id",
                "id",
                "provider",
                "provider_user_id",
                "scopes",
                "status",
                "status_changed_at",
                "status_checked_at",
                "status_reason",
                "updated_at"
            ]
        );
        assert_eq!(first["id"], google.to_string());
        assert_eq!(first["provider"], "google");
        assert_eq!(first["status"], "connected");
        assert_eq!(list[1]["provider"], "microsoft");
        assert_eq!(list[1]["status"], "needs_reconnect");
    }
}

#[tokio::test]
async fn no_user_response_carries_the_stored_token_bytes() {
    let app = spawn_app().await;
    let id = app.insert_user("user_ada", Some("ada@example.test")).await;
    app.insert_connection(Connection {
        refresh_token: Some(SEALED_REFRESH),
        ..Connection::google(id, SEALED_ACCESS)
    })
    .await;
    let session = session_token("user_ada");

    let mut texts = Vec::new();
    for (path, token) in [
        ("/me".to_owned(), session.as_str()),
        (format!("/users/{id}"), SERVICE_KEY),
        ("/users/by-clerk-id/user_ada".to_owned(), session.as_str()),
        ("/users?email=ada@example.test".to_owned(), SERVICE_KEY),
    ] {
        let response = app.get(&path, Some(token)).await;
        assert_eq!(response.status(), 200, "{path}");
        texts.push(response.text().await.unwrap());
    }
    let response = app
        .patch(
            &format!("/users/{id}/calendar-status"),
            Some(SERVICE_KEY),
            &json!({"provider": "google", "connected": true}),
        )
        .await;
    texts.push(response.text().await.unwrap());
    for text in texts {
        assert_eq!(leaks(&text), Vec::<String>::new(), "{text}");
    }
}

#[tokio::test]
async fn a_user_without_connections_gets_an_empty_list() {
    let app = spawn_app().await;
    let id = app.insert_user("user_ada", None).await;
    let body = json_body(
        app.get(
            &format!("/users/{id}/calendar-connections"),
            Some(SERVICE_KEY),
        )
        .await,
    )
    .await;
    assert_eq!(body, json!([]));
}
