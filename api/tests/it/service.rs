//! Service keys read any user, look users up by email, and change calendar status.

use serde_json::json;

use crate::helpers::{
    Connection, READ_KEY, SERVICE_KEY, SERVICE_KEY_2, assert_error, json_body, session_token,
    spawn_app,
};

#[tokio::test]
async fn a_service_key_reads_any_user() {
    let app = spawn_app().await;
    let ada = app.insert_user("user_ada", Some("ada@example.test")).await;
    let bob = app.insert_user("user_bob", None).await;

    for key in [SERVICE_KEY, SERVICE_KEY_2] {
        let body = json_body(app.get(&format!("/users/{bob}"), Some(key)).await).await;
        assert_eq!(body["clerk_user_id"], "user_bob");
        let body = json_body(app.get("/users/by-clerk-id/user_ada", Some(key)).await).await;
        assert_eq!(body["id"], ada.to_string());
    }
    assert_error(
        app.get("/users/by-clerk-id/user_nobody", Some(SERVICE_KEY))
            .await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        app.get(
            &format!("/users/{}", uuid::Uuid::new_v4()),
            Some(SERVICE_KEY),
        )
        .await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        app.get("/users/not-a-uuid", Some(SERVICE_KEY)).await,
        400,
        "invalid_path",
    )
    .await;
}

#[tokio::test]
async fn a_wrong_service_key_is_401() {
    let app = spawn_app().await;
    let id = app.insert_user("user_ada", None).await;
    let almost = &SERVICE_KEY[..SERVICE_KEY.len() - 1];
    for key in [almost, "svc-test-key-0123456789abcdef0123456789X", "nope"] {
        assert_error(
            app.get(&format!("/users/{id}"), Some(key)).await,
            401,
            "unauthenticated",
        )
        .await;
    }
}

#[tokio::test]
async fn a_service_key_looks_a_user_up_by_email() {
    let app = spawn_app().await;
    let id = app.insert_user("user_ada", Some("ada@example.test")).await;

    let body = json_body(
        app.get("/users?email=ada@example.test", Some(SERVICE_KEY))
            .await,
    )
    .await;
    assert_eq!(body["id"], id.to_string());
    let body = json_body(
        app.get("/users?email=Ada@Example.TEST", Some(SERVICE_KEY))
            .await,
    )
    .await;
    assert_eq!(
        body["id"],
        id.to_string(),
        "case-insensitive through lower-case"
    );

    assert_error(
        app.get("/users?email=nobody@example.test", Some(SERVICE_KEY))
            .await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        app.get("/users", Some(SERVICE_KEY)).await,
        400,
        "missing_email",
    )
    .await;
    assert_error(
        app.get("/users?email=", Some(SERVICE_KEY)).await,
        400,
        "missing_email",
    )
    .await;
}

#[tokio::test]
async fn a_session_token_may_not_look_users_up_by_email() {
    let app = spawn_app().await;
    app.insert_user("user_ada", Some("ada@example.test")).await;
    let response = app
        .get(
            "/users?email=ada@example.test",
            Some(&session_token("user_ada")),
        )
        .await;
    assert_error(response, 403, "forbidden").await;
    assert_error(
        app.get("/users?email=ada@example.test", None).await,
        401,
        "unauthenticated",
    )
    .await;
}

#[tokio::test]
async fn disconnecting_clears_the_flag_and_deletes_that_providers_connections() {
    let app = spawn_app().await;
    let id = app.insert_user("user_ada", None).await;
    app.insert_connection(Connection::google(id, b"sealed-google-1"))
        .await;
    app.insert_connection(Connection {
        provider_user_id: "google-user-2",
        ..Connection::google(id, b"sealed-google-2")
    })
    .await;
    app.insert_connection(Connection {
        provider: "microsoft",
        provider_user_id: "ms-user-1",
        ..Connection::google(id, b"sealed-ms")
    })
    .await;
    sea_orm::ConnectionTrait::execute_unprepared(
        &app.db.conn,
        "UPDATE users SET google_calendar_connected = true, microsoft_calendar_connected = true",
    )
    .await
    .unwrap();

    let response = app
        .patch(
            &format!("/users/{id}/calendar-status"),
            Some(SERVICE_KEY),
            &json!({"provider": "google", "connected": false}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body = json_body(response).await;
    assert_eq!(body["id"], id.to_string());
    assert_eq!(body["google_calendar_connected"], false);
    assert_eq!(body["microsoft_calendar_connected"], true);
    assert_eq!(app.count_connections(id, "google").await, 0);
    assert_eq!(app.count_connections(id, "microsoft").await, 1);

    let body = json_body(app.get(&format!("/users/{id}"), Some(SERVICE_KEY)).await).await;
    assert_eq!(body["google_calendar_connected"], false);
}

#[tokio::test]
async fn connecting_without_a_connected_account_is_409() {
    let app = spawn_app().await;
    let id = app.insert_user("user_ada", None).await;
    // A Microsoft account exists but its token is unavailable: not usable.
    app.insert_connection(Connection {
        provider: "microsoft",
        provider_user_id: "ms-user-1",
        status: "needs_reconnect",
        ..Connection::google(id, b"sealed")
    })
    .await;

    for provider in ["google", "microsoft"] {
        let response = app
            .patch(
                &format!("/users/{id}/calendar-status"),
                Some(SERVICE_KEY),
                &json!({"provider": provider, "connected": true}),
            )
            .await;
        let message = assert_error(response, 409, "conflict").await;
        assert!(message.contains(provider), "{message}");
    }
    let body = json_body(app.get(&format!("/users/{id}"), Some(SERVICE_KEY)).await).await;
    assert_eq!(body["microsoft_calendar_connected"], false);
}

#[tokio::test]
async fn connecting_with_a_connected_account_sets_the_flag() {
    let app = spawn_app().await;
    let id = app.insert_user("user_ada", None).await;
    app.insert_connection(Connection::google(id, b"sealed"))
        .await;
    let response = app
        .patch(
            &format!("/users/{id}/calendar-status"),
            Some(&session_token("user_ada")),
            &json!({"provider": "google", "connected": true}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body = json_body(response).await;
    assert_eq!(body["google_calendar_connected"], true);
    assert_eq!(body["microsoft_calendar_connected"], false);
}

#[tokio::test]
async fn a_bad_calendar_status_body_is_rejected_with_a_clear_message() {
    let app = spawn_app().await;
    let id = app.insert_user("user_ada", None).await;
    let path = format!("/users/{id}/calendar-status");

    let message = assert_error(
        app.patch(
            &path,
            Some(SERVICE_KEY),
            &json!({"provider": "yahoo", "connected": false}),
        )
        .await,
        422,
        "invalid_body",
    )
    .await;
    assert!(
        message.contains("google") && message.contains("microsoft"),
        "{message}"
    );

    let message = assert_error(
        app.patch(&path, Some(SERVICE_KEY), &json!({"provider": "google"}))
            .await,
        422,
        "invalid_body",
    )
    .await;
    assert!(message.contains("connected"), "{message}");

    let response = app
        .client
        .patch(format!("{}{path}", app.address))
        .bearer_auth(SERVICE_KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "invalid_body").await;

    let response = app
        .client
        .patch(format!("{}{path}", app.address))
        .bearer_auth(SERVICE_KEY)
        .body(r#"{"provider":"google","connected":false}"#)
        .send()
        .await
        .unwrap();
    assert_error(response, 415, "invalid_body").await;

    // Unauthenticated callers learn nothing about the body.
    assert_error(
        app.patch(&path, None, &json!({"provider": "yahoo"})).await,
        401,
        "unauthenticated",
    )
    .await;
}

#[tokio::test]
async fn a_read_scoped_key_reads_users_but_cannot_change_calendar_status() {
    let app = spawn_app().await;
    let ada = app.insert_user("user_ada", Some("ada@example.test")).await;
    for path in [
        format!("/users/{ada}"),
        "/users/by-clerk-id/user_ada".to_owned(),
        "/users?email=ada@example.test".to_owned(),
        format!("/users/{ada}/calendar-connections"),
    ] {
        assert_eq!(app.get(&path, Some(READ_KEY)).await.status(), 200, "{path}");
    }
    let message = assert_error(
        app.patch(
            &format!("/users/{ada}/calendar-status"),
            Some(READ_KEY),
            &json!({"provider": "google", "connected": false}),
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    assert!(message.contains("scope"), "{message}");
    let response = app
        .patch(
            &format!("/users/{ada}/calendar-status"),
            Some(SERVICE_KEY),
            &json!({"provider": "google", "connected": false}),
        )
        .await;
    assert_eq!(response.status(), 200);
}
