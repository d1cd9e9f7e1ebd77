//! Calendar connection health at the token endpoint: what Clerk's answer says is recorded and
//! told (`409 needs_reconnect` with the reason), Clerk's own trouble is `503` and never makes a
//! connection need the user, and a reconnect brings it back.

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use testkit::fake_clerk::{FakeClerk, SECRET_KEY};

use crate::helpers::{SERVICE_KEY, TOKEN_KEY, TestApp, json_body, spawn_app_with};

async fn app_with_clerk(clerk: &FakeClerk) -> TestApp {
    let url = clerk.url();
    spawn_app_with(&[
        ("TOKEN_ENCRYPTION_KEY", TOKEN_KEY),
        ("CLERK_SECRET_KEY", SECRET_KEY),
        ("CLERK_API_URL", &url),
        ("CLERK_API_TIMEOUT", "1s"),
    ])
    .await
}

/// Ada with an expired Google token (so the endpoint asks Clerk).
async fn ada(app: &TestApp) -> uuid::Uuid {
    let id = app.insert_user("user_ada", Some("ada@example.test")).await;
    let connection = app.plant_token(id, "google", "ya29.expired", -60).await;
    app.set_external_account_id(connection, "eac_ada_google")
        .await;
    id
}

fn serve(clerk: &FakeClerk) {
    clerk.set_token(
        "user_ada",
        "oauth_google",
        "ya29.fresh",
        None,
        "google-user-1",
        "eac_ada_google",
    );
}

fn path(id: uuid::Uuid) -> String {
    format!("/users/{id}/calendar-connections/google/token")
}

/// `(status, status_reason)` of Ada's Google connection.
async fn stored(app: &TestApp) -> (String, Option<String>) {
    let row = app
        .db
        .conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT status, status_reason FROM user_calendar_connections WHERE provider = 'google'",
        ))
        .await
        .unwrap()
        .unwrap();
    (
        row.try_get("", "status").unwrap(),
        row.try_get("", "status_reason").unwrap(),
    )
}

async fn user_body(app: &TestApp, id: uuid::Uuid) -> serde_json::Value {
    json_body(app.get(&format!("/users/{id}"), Some(SERVICE_KEY)).await).await
}

#[tokio::test]
async fn each_clerk_error_code_is_a_409_with_its_reason_and_the_user_body_says_needs_reconnect() {
    for (status, code, reason) in [
        (400, "oauth_token_retrieval_error", "grant_revoked"),
        (422, "oauth_missing_refresh_token", "missing_refresh_token"),
        (
            422,
            "external_account_missing_refresh_token",
            "missing_refresh_token",
        ),
        (422, "oauth_missing_access_token", "grant_revoked"),
        (404, "oauth_token_provider_not_enabled", "provider_disabled"),
    ] {
        let clerk = FakeClerk::start().await;
        let app = app_with_clerk(&clerk).await;
        let id = ada(&app).await;
        serve(&clerk);
        clerk.fail_tokens("user_ada", "oauth_google", status, code, 1);

        let response = app.get(&path(id), Some(SERVICE_KEY)).await;
        assert_eq!(response.status(), 409, "{code}");
        let body = json_body(response).await;
        assert_eq!(body["error"], "needs_reconnect", "{body}");
        assert_eq!(body["reason"], reason, "{body}");
        assert_eq!(
            stored(&app).await,
            ("needs_reconnect".into(), Some(reason.into())),
            "{code}"
        );
        let user = user_body(&app, id).await;
        assert_eq!(user["google_calendar_status"], "needs_reconnect", "{user}");
        assert_eq!(user["google_calendar_connected"], false, "{user}");
        // Recorded: the next call does not ask Clerk again.
        let asked = clerk.requests();
        let again = app.get(&path(id), Some(SERVICE_KEY)).await;
        assert_eq!(again.status(), 409);
        assert_eq!(clerk.requests(), asked, "{code}: Clerk asked again");
    }
}

#[tokio::test]
async fn a_token_without_a_calendar_scope_is_missing_scopes_and_never_served() {
    let clerk = FakeClerk::start().await;
    let app = app_with_clerk(&clerk).await;
    let id = ada(&app).await;
    serve(&clerk);
    clerk.set_token_scopes("user_ada", "oauth_google", &["openid", "email"]);
    let response = app.get(&path(id), Some(SERVICE_KEY)).await;
    assert_eq!(response.status(), 409);
    let text = response.text().await.unwrap();
    assert!(!text.contains("ya29.fresh"), "{text}");
    assert!(text.contains("missing_scopes"), "{text}");
    assert_eq!(
        stored(&app).await,
        ("needs_reconnect".into(), Some("missing_scopes".into()))
    );
}

#[tokio::test]
async fn clerk_s_own_trouble_is_a_503_and_never_needs_reconnect() {
    let clerk = FakeClerk::start().await;
    let app = app_with_clerk(&clerk).await;
    let id = ada(&app).await;
    serve(&clerk);
    for (status, code) in [(429, "too_many_requests"), (500, "internal"), (503, "down")] {
        clerk.fail_tokens("user_ada", "oauth_google", status, code, 1);
        let response = app.get(&path(id), Some(SERVICE_KEY)).await;
        assert_eq!(response.status(), 503, "{status}");
        assert!(response.headers().contains_key("retry-after"));
        assert_eq!(
            stored(&app).await,
            ("unavailable".into(), Some("clerk_unavailable".into())),
            "{status}"
        );
    }
    // A timeout too.
    clerk.set_delay(std::time::Duration::from_millis(1500));
    assert_eq!(app.get(&path(id), Some(SERVICE_KEY)).await.status(), 503);
    clerk.set_delay(std::time::Duration::ZERO);
    // The last token is kept while nobody could check: the user still shows connected.
    let user = user_body(&app, id).await;
    assert_eq!(user["google_calendar_status"], "connected", "{user}");
    // Clerk back: connected, and the token served.
    let response = app.get(&path(id), Some(SERVICE_KEY)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(json_body(response).await["access_token"], "ya29.fresh");
    assert_eq!(stored(&app).await, ("connected".into(), None));
}

#[tokio::test]
async fn clerk_s_trouble_does_not_clear_a_needs_reconnect_and_a_reconnect_does() {
    let clerk = FakeClerk::start().await;
    let app = app_with_clerk(&clerk).await;
    let id = ada(&app).await;
    serve(&clerk);
    clerk.fail_tokens(
        "user_ada",
        "oauth_google",
        400,
        "oauth_token_retrieval_error",
        1,
    );
    assert_eq!(app.get(&path(id), Some(SERVICE_KEY)).await.status(), 409);

    // The worker's check meets Clerk down: the connection still needs the user.
    let cipher = store::crypto::TokenCipher::from_setting(TOKEN_KEY).unwrap();
    let client =
        clerk_api::ClerkClient::new(&clerk.url(), SECRET_KEY, std::time::Duration::from_secs(2))
            .unwrap();
    let due = store::connections::least_recently_checked(&app.db.pool, 10, None)
        .await
        .unwrap();
    clerk.fail_tokens("user_ada", "oauth_google", 503, "down", 1);
    let rechecked = store::connections::recheck(&app.db.pool, &cipher, &client, &due[0])
        .await
        .unwrap();
    assert!(matches!(
        rechecked,
        store::connections::Rechecked::Unavailable(_)
    ));
    assert_eq!(
        stored(&app).await,
        ("needs_reconnect".into(), Some("grant_revoked".into()))
    );

    // The user reconnected in Clerk: the next check finds a token, and it is served.
    let due = store::connections::least_recently_checked(&app.db.pool, 10, None)
        .await
        .unwrap();
    let rechecked = store::connections::recheck(&app.db.pool, &cipher, &client, &due[0])
        .await
        .unwrap();
    assert!(matches!(rechecked, store::connections::Rechecked::Token(_)));
    let response = app.get(&path(id), Some(SERVICE_KEY)).await;
    assert_eq!(response.status(), 200);
    let user = user_body(&app, id).await;
    assert_eq!(user["google_calendar_status"], "connected", "{user}");
    assert_eq!(user["google_calendar_connected"], true, "{user}");
}
