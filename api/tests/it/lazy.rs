//! Lazy sync: a signed-in user who exists only in Clerk (no webhook yet) is fetched from Clerk's
//! Backend API on their first read and stored through the worker's apply path.

use std::time::Duration;

use store::event::{ClerkEvent, parse};
use testkit::{
    events::{UserState, user_object},
    fake_clerk::{FakeClerk, SECRET_KEY},
};

use crate::helpers::{
    SERVICE_KEY, TestApp, assert_error, json_body, session_token, spawn_app_with,
};

fn clerk_user(id: &str, first: &str, version: i64) -> serde_json::Value {
    user_object(&UserState {
        id: id.into(),
        email: Some(format!("{id}@example.test")),
        first_name: Some(first.into()),
        last_name: Some("Synth".into()),
        updated_at: version,
    })
}

async fn app_with(clerk: &FakeClerk, extra: &[(&str, &str)]) -> TestApp {
    let url = clerk.url();
    let mut settings = vec![
        ("CLERK_SECRET_KEY", SECRET_KEY),
        ("CLERK_API_URL", url.as_str()),
    ];
    settings.extend_from_slice(extra);
    spawn_app_with(&settings).await
}

async fn first_name_stored(app: &TestApp, id: &str) -> Option<String> {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    app.db
        .conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT first_name FROM users WHERE clerk_user_id = $1",
            [id.into()],
        ))
        .await
        .unwrap()
        .map(|row| row.try_get("", "first_name").unwrap())
}

#[tokio::test]
async fn a_user_only_in_clerk_is_fetched_and_stored_on_their_first_read() {
    let clerk = FakeClerk::start().await;
    clerk.set_users(vec![clerk_user("user_new", "Newcomer", 1_000)]);
    let app = app_with(&clerk, &[]).await;
    let token = session_token("user_new");

    let body = json_body(app.get("/me", Some(&token)).await).await;
    assert_eq!(body["first_name"], "Newcomer");
    assert_eq!(body["email"], "user_new@example.test");
    assert_eq!(
        first_name_stored(&app, "user_new").await.as_deref(),
        Some("Newcomer")
    );
    // Stored: the next read does not ask Clerk.
    let asked = clerk.requests();
    let body = json_body(app.get("/users/by-clerk-id/user_new", Some(&token)).await).await;
    assert_eq!(body["first_name"], "Newcomer");
    assert_eq!(clerk.requests(), asked);
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains(r#"clerk_sync_api_lazy_syncs_total{outcome="applied"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_own_clerk_id_route_syncs_lazily_too_and_webhooks_after_it_follow_the_versions() {
    let clerk = FakeClerk::start().await;
    clerk.set_users(vec![clerk_user("user_late", "Lazy", 2_000)]);
    let app = app_with(&clerk, &[]).await;
    let body = json_body(
        app.get(
            "/users/by-clerk-id/user_late",
            Some(&session_token("user_late")),
        )
        .await,
    )
    .await;
    assert_eq!(body["first_name"], "Lazy");

    // The late webhooks go through the same rules: an older one changes nothing, a newer one
    // applies.
    let applier = store::Applier {
        db: app.db.pool.clone(),
        clerk: None,
        cipher: None,
        in_process_retries: 0,
        store_private_metadata: false,
    };
    let event = |first: &str, version: i64| -> ClerkEvent {
        parse(
            serde_json::json!({"type": "user.updated", "data": clerk_user("user_late", first, version)})
                .to_string()
                .as_bytes(),
        )
        .unwrap()
    };
    let older = applier
        .apply(Some("msg_late_1"), "user.created", &event("Created", 1_000))
        .await
        .unwrap();
    assert_eq!(older, store::apply::Outcome::SkippedStale);
    assert_eq!(
        first_name_stored(&app, "user_late").await.as_deref(),
        Some("Lazy")
    );
    let newer = applier
        .apply(Some("msg_late_2"), "user.updated", &event("Renamed", 3_000))
        .await
        .unwrap();
    assert_eq!(newer, store::apply::Outcome::Applied);
    assert_eq!(
        first_name_stored(&app, "user_late").await.as_deref(),
        Some("Renamed")
    );
}

#[tokio::test]
async fn concurrent_first_reads_make_one_clerk_call() {
    let clerk = FakeClerk::start().await;
    clerk.set_users(vec![clerk_user("user_busy", "Busy", 1_000)]);
    clerk.set_delay(Duration::from_millis(300));
    let app = app_with(&clerk, &[]).await;
    let token = session_token("user_busy");
    let reads = (0..10).map(|_| app.get("/me", Some(&token)));
    for response in futures_util::future::join_all(reads).await {
        assert_eq!(response.status(), 200);
    }
    assert_eq!(clerk.requests(), 1);
}

#[tokio::test]
async fn unknown_deleted_and_unreachable_users_answer_404_and_503() {
    let clerk = FakeClerk::start().await;
    let app = app_with(&clerk, &[("CLERK_API_TIMEOUT", "1s")]).await;

    // Not in Clerk.
    assert_error(
        app.get("/me", Some(&session_token("user_ghost"))).await,
        404,
        "not_found",
    )
    .await;
    assert_eq!(clerk.requests(), 1);

    // Deleted (tombstone): Clerk is not asked.
    let applier = store::Applier {
        db: app.db.pool.clone(),
        clerk: None,
        cipher: None,
        in_process_retries: 0,
        store_private_metadata: false,
    };
    applier
        .apply(
            Some("msg_gone"),
            "user.deleted",
            &ClerkEvent::UserDeleted {
                clerk_user_id: "user_gone".into(),
            },
        )
        .await
        .unwrap();
    clerk.set_users(vec![clerk_user("user_gone", "Gone", 1_000)]);
    let before = clerk.requests();
    assert_error(
        app.get("/me", Some(&session_token("user_gone"))).await,
        404,
        "not_found",
    )
    .await;
    assert_eq!(clerk.requests(), before, "Clerk asked about a deleted user");

    // Clerk down, rate-limited, or slow: 503 with Retry-After, and nothing stored.
    clerk.set_users(vec![clerk_user("user_wait", "Wait", 1_000)]);
    clerk.fail_next(503, 1);
    clerk.fail_next(429, 1);
    for _ in 0..2 {
        let response = app.get("/me", Some(&session_token("user_wait"))).await;
        assert!(response.headers().contains_key("retry-after"));
        assert_error(response, 503, "clerk_unavailable").await;
    }
    clerk.set_delay(Duration::from_secs(2));
    assert_error(
        app.get("/me", Some(&session_token("user_wait"))).await,
        503,
        "clerk_unavailable",
    )
    .await;
    assert_eq!(first_name_stored(&app, "user_wait").await, None);
    clerk.set_delay(Duration::ZERO);
    let body = json_body(app.get("/me", Some(&session_token("user_wait"))).await).await;
    assert_eq!(body["first_name"], "Wait");
}

#[tokio::test]
async fn service_key_reads_and_a_disabled_lazy_sync_never_call_clerk() {
    let clerk = FakeClerk::start().await;
    clerk.set_users(vec![clerk_user("user_only_clerk", "Only", 1_000)]);
    let app = app_with(&clerk, &[]).await;
    assert_error(
        app.get("/users/by-clerk-id/user_only_clerk", Some(SERVICE_KEY))
            .await,
        404,
        "not_found",
    )
    .await;
    assert_eq!(clerk.requests(), 0);

    let off = app_with(&clerk, &[("API_LAZY_SYNC", "false")]).await;
    assert_error(
        off.get("/me", Some(&session_token("user_only_clerk")))
            .await,
        404,
        "not_found",
    )
    .await;
    assert_eq!(clerk.requests(), 0);
}

#[tokio::test]
async fn a_rate_limited_token_call_during_lazy_sync_waits_out_clerk_s_retry_after() {
    let clerk = FakeClerk::start().await;
    let mut user = clerk_user("user_busy", "Busy", 1_000);
    user["external_accounts"] = serde_json::json!([testkit::events::google_calendar_account(
        "100000000000000000077",
        "eac_busy"
    )]);
    clerk.set_users(vec![user]);
    clerk.set_token(
        "user_busy",
        "oauth_google",
        "ya29.busy",
        None,
        "100000000000000000077",
        "eac_busy",
    );
    // The token request answers 429 with `Retry-After: 1` once.
    clerk.fail_tokens("user_busy", "oauth_google", 429, "too_many_requests", 1);
    let app = app_with(
        &clerk,
        &[("TOKEN_ENCRYPTION_KEY", crate::helpers::TOKEN_KEY)],
    )
    .await;

    let started = std::time::Instant::now();
    let body = json_body(app.get("/me", Some(&session_token("user_busy"))).await).await;
    assert_eq!(body["google_calendar_connected"], true, "{body}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "retried after {:?}, before Clerk's Retry-After of 1 s",
        started.elapsed()
    );
}
