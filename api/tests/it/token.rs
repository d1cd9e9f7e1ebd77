//! `GET /users/{id}/calendar-connections/{provider}/token`: service keys only; the stored token
//! while fresh, else a new one from Clerk (the fake), stored encrypted.

use calendar::crypto::TokenCipher;
use testkit::fake_clerk::{FakeClerk, SECRET_KEY};

use crate::helpers::{
    Connection, READ_KEY, SERVICE_KEY, TOKEN_KEY, TOKENS_KEY, TestApp, assert_error, json_body,
    session_token, spawn_app, spawn_app_with,
};

async fn app_with_clerk(clerk: &FakeClerk) -> TestApp {
    let url = clerk.url();
    spawn_app_with(&[
        ("TOKEN_ENCRYPTION_KEY", TOKEN_KEY),
        ("CLERK_SECRET_KEY", SECRET_KEY),
        ("CLERK_API_URL", &url),
    ])
    .await
}

/// A connected Google account holding `token`, encrypted, expiring in `expires_in_secs`.
async fn plant(app: &TestApp, token: &str, expires_in_secs: i64) -> uuid::Uuid {
    let id = app.insert_user("user_ada", Some("ada@example.test")).await;
    let sealed = TokenCipher::from_setting(TOKEN_KEY)
        .unwrap()
        .encrypt(token)
        .unwrap();
    let connection = app
        .insert_connection(Connection {
            token_key_id: Some(&sealed.key_id),
            expires_in_secs,
            ..Connection::google(id, &sealed.blob)
        })
        .await;
    app.set_external_account_id(connection, "eac_ada_google")
        .await;
    id
}

fn token_path(id: uuid::Uuid, provider: &str) -> String {
    format!("/users/{id}/calendar-connections/{provider}/token")
}

#[tokio::test]
async fn a_fresh_stored_token_is_decrypted_without_asking_clerk() {
    let clerk = FakeClerk::start().await;
    let app = app_with_clerk(&clerk).await;
    let id = plant(&app, "ya29.stored-fresh-token", 3600).await;

    let response = app.get(&token_path(id, "google"), Some(SERVICE_KEY)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body = json_body(response).await;
    assert_eq!(body["access_token"], "ya29.stored-fresh-token");
    assert_eq!(body["provider"], "google");
    assert_eq!(body["provider_user_id"], "google-user-1");
    assert!(body["scopes"].as_str().unwrap().contains("calendar"));
    assert!(body["expires_at"].is_string());
    assert_eq!(clerk.requests(), 0);
}

#[tokio::test]
async fn an_expired_token_is_refreshed_through_clerk() {
    let clerk = FakeClerk::start().await;
    let app = app_with_clerk(&clerk).await;
    let id = plant(&app, "ya29.stale", -60).await;
    let expires_ms = (chrono::Utc::now().timestamp() + 3600) * 1000;
    clerk.set_token(
        "user_ada",
        "oauth_google",
        "ya29.brand-new",
        Some(expires_ms),
        "google-user-1",
        "eac_ada_google",
    );

    let body = json_body(app.get(&token_path(id, "google"), Some(SERVICE_KEY)).await).await;
    assert_eq!(body["access_token"], "ya29.brand-new");
    assert_eq!(clerk.requests(), 1);

    // Stored (encrypted): the next call needs no Clerk.
    let body = json_body(app.get(&token_path(id, "google"), Some(SERVICE_KEY)).await).await;
    assert_eq!(body["access_token"], "ya29.brand-new");
    assert_eq!(clerk.requests(), 1);
}

#[tokio::test]
async fn clerk_being_down_answers_503_and_a_later_call_succeeds() {
    let clerk = FakeClerk::start().await;
    let app = app_with_clerk(&clerk).await;
    let id = plant(&app, "ya29.stale", -60).await;
    clerk.set_token(
        "user_ada",
        "oauth_google",
        "ya29.after-outage",
        None,
        "google-user-1",
        "eac_ada_google",
    );
    clerk.fail_next(503, 1);

    let response = app.get(&token_path(id, "google"), Some(SERVICE_KEY)).await;
    assert!(response.headers().contains_key("retry-after"));
    let message = assert_error(response, 503, "token_temporarily_unavailable").await;
    assert!(!message.contains("ya29"), "{message}");

    let body = json_body(app.get(&token_path(id, "google"), Some(SERVICE_KEY)).await).await;
    assert_eq!(body["access_token"], "ya29.after-outage");
}

#[tokio::test]
async fn no_usable_connection_answers_404() {
    let clerk = FakeClerk::start().await;
    let app = app_with_clerk(&clerk).await;
    let id = plant(&app, "ya29.stored", 3600).await;
    let message = assert_error(
        app.get(&token_path(id, "microsoft"), Some(SERVICE_KEY))
            .await,
        404,
        "not_found",
    )
    .await;
    assert!(message.contains("no usable connection"), "{message}");

    // Expired, and Clerk no longer has a token for the account.
    let stale = {
        let other = app.insert_user("user_bob", None).await;
        let sealed = TokenCipher::from_setting(TOKEN_KEY)
            .unwrap()
            .encrypt("ya29.bob")
            .unwrap();
        app.insert_connection(Connection {
            token_key_id: Some(&sealed.key_id),
            expires_in_secs: -60,
            ..Connection::google(other, &sealed.blob)
        })
        .await;
        other
    };
    assert_error(
        app.get(&token_path(stale, "google"), Some(SERVICE_KEY))
            .await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        app.get(
            &token_path(uuid::Uuid::new_v4(), "google"),
            Some(SERVICE_KEY),
        )
        .await,
        404,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn a_session_token_gets_403_even_for_its_own_user() {
    let clerk = FakeClerk::start().await;
    let app = app_with_clerk(&clerk).await;
    let id = plant(&app, "ya29.stored", 3600).await;
    let response = app
        .get(&token_path(id, "google"), Some(&session_token("user_ada")))
        .await;
    assert_error(response, 403, "forbidden").await;
    assert_error(
        app.get(&token_path(id, "google"), None).await,
        401,
        "unauthenticated",
    )
    .await;
}

#[tokio::test]
async fn only_tokens_scoped_and_unscoped_keys_read_tokens() {
    let clerk = FakeClerk::start().await;
    let app = app_with_clerk(&clerk).await;
    let id = plant(&app, "ya29.stored", 3600).await;
    let message = assert_error(
        app.get(&token_path(id, "google"), Some(READ_KEY)).await,
        403,
        "forbidden",
    )
    .await;
    assert!(message.contains("tokens"), "{message}");
    for key in [TOKENS_KEY, SERVICE_KEY] {
        let body = json_body(app.get(&token_path(id, "google"), Some(key)).await).await;
        assert_eq!(body["access_token"], "ya29.stored");
    }
}

#[tokio::test]
async fn an_unknown_provider_is_400() {
    let clerk = FakeClerk::start().await;
    let app = app_with_clerk(&clerk).await;
    let id = plant(&app, "ya29.stored", 3600).await;
    assert_error(
        app.get(&token_path(id, "yahoo"), Some(SERVICE_KEY)).await,
        400,
        "invalid_path",
    )
    .await;
}

#[tokio::test]
async fn without_token_settings_the_endpoint_answers_503_with_guidance() {
    let app = spawn_app().await;
    let id = app.insert_user("user_ada", None).await;
    let message = assert_error(
        app.get(&token_path(id, "google"), Some(SERVICE_KEY)).await,
        503,
        "tokens_not_configured",
    )
    .await;
    assert!(message.contains("TOKEN_ENCRYPTION_KEY"), "{message}");
}
