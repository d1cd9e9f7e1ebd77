//! `GET /users/{id}/calendar-connections/{provider}/token`: service keys only; the stored token
//! while fresh, else a new one from Clerk (the fake), stored encrypted.

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use store::crypto::{FORMAT_LEGACY, TokenCipher};
use testkit::fake_clerk::{FakeClerk, SECRET_KEY};

use crate::helpers::{
    READ_KEY, SERVICE_KEY, TOKEN_KEY, TOKENS_KEY, TestApp, assert_error, json_body, session_token,
    spawn_app, spawn_app_with,
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
    let connection = app.plant_token(id, "google", token, expires_in_secs).await;
    app.set_external_account_id(connection, "eac_ada_google")
        .await;
    id
}

/// The fake Clerk serves `token` for Ada's planted Google account.
fn serve(clerk: &FakeClerk, token: &str, expires_at_ms: Option<i64>) {
    clerk.set_token(
        "user_ada",
        "oauth_google",
        token,
        expires_at_ms,
        "google-user-1",
        "eac_ada_google",
    );
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
    serve(&clerk, "ya29.brand-new", Some(expires_ms));

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
    serve(&clerk, "ya29.after-outage", None);
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

    // Expired, and Clerk no longer has a token for the account: the grant ended, only the
    // user can fix it.
    let stale = {
        let other = app.insert_user("user_bob", None).await;
        app.plant_token(other, "google", "ya29.bob", -60).await;
        other
    };
    let response = app
        .get(&token_path(stale, "google"), Some(SERVICE_KEY))
        .await;
    assert_eq!(response.status(), 409);
    let body = json_body(response).await;
    assert_eq!(
        (body["error"].as_str(), body["reason"].as_str()),
        (Some("needs_reconnect"), Some("grant_revoked")),
        "{body}"
    );
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

async fn sql(app: &TestApp, statement: &str, values: Vec<sea_orm::Value>) {
    app.db
        .conn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            statement,
            values,
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_token_moved_to_another_users_row_is_refused_never_served() {
    let clerk = FakeClerk::start().await;
    let app = app_with_clerk(&clerk).await;
    let ada = plant(&app, "ya29.ada-secret", 3600).await;
    let bob = app.insert_user("user_bob", Some("bob@example.test")).await;
    app.plant_token(bob, "google", "ya29.bob-secret", 3600)
        .await;

    // Someone with write access to the table swaps the two ciphertexts.
    sql(
        &app,
        "UPDATE user_calendar_connections AS c SET access_token = o.access_token \
         FROM user_calendar_connections AS o WHERE c.id <> o.id",
        vec![],
    )
    .await;

    for (user, other_token) in [(ada, "ya29.bob-secret"), (bob, "ya29.ada-secret")] {
        let response = app
            .get(&token_path(user, "google"), Some(SERVICE_KEY))
            .await;
        assert_eq!(response.status(), 500);
        let text = response.text().await.unwrap();
        assert!(!text.contains(other_token), "{text}");
        assert!(text.contains("stored_token_invalid"), "{text}");
        assert!(text.contains("moved from another row"), "{text}");
    }
    assert!(
        crate::helpers::logs().contains("stored calendar token refused"),
        "no log line"
    );
    assert_eq!(clerk.requests(), 0);
}

#[tokio::test]
async fn a_legacy_unbound_token_is_not_served_but_refreshed_and_stored_bound() {
    let clerk = FakeClerk::start().await;
    let app = app_with_clerk(&clerk).await;
    let id = plant(&app, "ignored", 3600).await;
    let legacy = TokenCipher::from_setting(TOKEN_KEY)
        .unwrap()
        .seal_legacy_for_tests("ya29.legacy")
        .unwrap();
    sql(
        &app,
        "UPDATE user_calendar_connections SET access_token = $1, token_format = $2",
        vec![legacy.blob.into(), FORMAT_LEGACY.into()],
    )
    .await;
    serve(&clerk, "ya29.from-clerk", None);
    let body = json_body(app.get(&token_path(id, "google"), Some(SERVICE_KEY)).await).await;
    assert_eq!(body["access_token"], "ya29.from-clerk");
    assert_eq!(clerk.requests(), 1);
}

#[tokio::test]
async fn a_token_without_expiry_is_refreshed_not_served_forever() {
    let clerk = FakeClerk::start().await;
    let app = app_with_clerk(&clerk).await;
    let id = plant(&app, "ya29.no-expiry", 3600).await;
    sql(
        &app,
        "UPDATE user_calendar_connections SET expires_at = NULL",
        vec![],
    )
    .await;
    let expires_ms = (chrono::Utc::now().timestamp() + 3600) * 1000;
    serve(&clerk, "ya29.with-expiry", Some(expires_ms));
    let body = json_body(app.get(&token_path(id, "google"), Some(SERVICE_KEY)).await).await;
    assert_eq!(body["access_token"], "ya29.with-expiry");
    assert!(body["expires_at"].is_string());
    assert_eq!(clerk.requests(), 1);
}

#[tokio::test]
async fn a_token_clerk_returns_for_another_account_of_the_user_is_not_used() {
    let clerk = FakeClerk::start().await;
    let app = app_with_clerk(&clerk).await;
    let id = plant(&app, "ya29.stale", -60).await;
    // The user's only Google token in Clerk belongs to another of their Google accounts.
    clerk.set_token(
        "user_ada",
        "oauth_google",
        "ya29.other-account",
        None,
        "google-user-2",
        "eac_ada_google_2",
    );
    let response = app.get(&token_path(id, "google"), Some(SERVICE_KEY)).await;
    assert_eq!(response.status(), 409);
    let text = response.text().await.unwrap();
    assert!(!text.contains("ya29.other-account"), "{text}");
    assert!(text.contains("needs_reconnect"), "{text}");
}

#[tokio::test]
async fn a_slow_clerk_is_503_not_408() {
    let clerk = FakeClerk::start().await;
    // CLERK_API_TIMEOUT at its default (10 s); Clerk answers later than that.
    let app = app_with_clerk(&clerk).await;
    let id = plant(&app, "ya29.stale", -60).await;
    clerk.set_delay(std::time::Duration::from_secs(11));
    let response = app.get(&token_path(id, "google"), Some(SERVICE_KEY)).await;
    assert_error(response, 503, "token_temporarily_unavailable").await;
}

#[tokio::test]
async fn a_disconnect_while_clerk_answers_wins_over_the_refresh() {
    let clerk = FakeClerk::start().await;
    let app = app_with_clerk(&clerk).await;
    let id = plant(&app, "ya29.stale", -60).await;
    serve(&clerk, "ya29.too-late", None);
    clerk.set_delay(std::time::Duration::from_secs(2));
    let path = token_path(id, "google");
    let refresh = app.get(&path, Some(SERVICE_KEY));
    let disconnect = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let response = app
            .patch(
                &format!("/users/{id}/calendar-status"),
                Some(SERVICE_KEY),
                &serde_json::json!({"provider": "google", "connected": false}),
            )
            .await;
        assert_eq!(response.status(), 200);
    };
    let (response, ()) = tokio::join!(refresh, disconnect);
    let text = response.text().await.unwrap();
    assert!(!text.contains("ya29.too-late"), "{text}");
    assert!(text.contains("not_found"), "{text}");
    assert_eq!(app.count_connections(id, "google").await, 0);
}
