//! `worker backfill` against the fake Clerk Backend API with 1,000 users, and with generated
//! users (some with calendar accounts) under a rate limit like Clerk's.

use std::time::Duration;

use store::Applier;
use testkit::{
    TestBroker, TestDb, events,
    fake_clerk::{FakeClerk, Population, RateLimit, SECRET_KEY},
};
use worker::repair::backfill::{self, BackfillOptions};

use crate::helpers::{scalar, spawn_worker, state, user_updated, users, wait_for_users};

fn clerk_users(n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            events::user_object(&state(
                &format!("user_bf_{i:04}"),
                Some(&format!("bf{i}@example.com")),
                "Old",
                100,
            ))
        })
        .collect()
}

async fn applier(db: &TestDb, clerk: &FakeClerk) -> (Applier, clerk_api::client::ClerkClient) {
    let client =
        clerk_api::client::ClerkClient::new(&clerk.url(), SECRET_KEY, Duration::from_secs(5))
            .unwrap();
    let applier = Applier {
        db: store::pool::connect_database(&db.service_url(), 4, db.pooler())
            .await
            .unwrap(),
        clerk: Some(client.clone()),
        cipher: None,
        in_process_retries: 3,
        store_private_metadata: false,
    };
    (applier, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_of_1000_users_keeps_newer_webhook_state_and_deleted_users_out() {
    let db = TestDb::empty().await;
    let broker = TestBroker::new().await;
    let clerk = FakeClerk::start().await;
    clerk.set_users(clerk_users(1000));
    // Live webhooks got there first: user 5 has a newer state, user 7 was deleted.
    let worker = spawn_worker(&db, &broker, &[]).await;
    user_updated("user_bf_0005", Some("new5@example.com"), "New", 200)
        .publish(&broker, "msg_bf_new")
        .await;
    broker
        .publish_event("msg_bf_del", &events::user_deleted("user_bf_0007", 1))
        .await;
    testkit::eventually(Duration::from_secs(20), "webhooks applied", || async {
        (scalar(&db.conn, "SELECT count(*) FROM processed_events").await == 2).then_some(())
    })
    .await;

    let settings = crate::helpers::settings_with_clerk(&db, &broker, &clerk);
    let (ok, stdout, stderr) =
        crate::helpers::worker_cli(settings, &["backfill", "--page-size", "100"]);
    assert!(ok, "{stdout} {stderr}");
    assert!(stdout.contains("1000 users seen"), "{stdout}");
    assert!(
        stdout.contains("998 applied, 1 already newer, 1 deleted, 0 failed"),
        "{stdout}"
    );
    let rows = users(&db.conn).await;
    assert_eq!(rows.len(), 999);
    assert_eq!(rows["user_bf_0005"].first_name.as_deref(), Some("New"));
    assert_eq!(rows["user_bf_0005"].version, 200);
    assert!(!rows.contains_key("user_bf_0007"));
    assert_eq!(
        rows["user_bf_0999"].email.as_deref(),
        Some("bf999@example.com")
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_backfill_that_stopped_half_way_resumes_where_it_was() {
    let db = TestDb::migrated().await;
    let clerk = FakeClerk::start().await;
    clerk.set_users(clerk_users(1000));
    clerk.fail_users_from(Some(500));
    let (applier, client) = applier(&db, &clerk).await;
    let options = BackfillOptions {
        page_size: 100,
        page_attempts: 2,
        ..BackfillOptions::default()
    };

    let error = backfill::run(&applier, &client, &options, |_, _| {})
        .await
        .unwrap_err();
    assert!(error.to_string().contains("offset 500"), "{error}");
    assert_eq!(users(&db.conn).await.len(), 500);

    clerk.fail_users_from(None);
    let before = clerk.user_offsets().len();
    let mut last_progress = (0, None);
    let summary = backfill::run(&applier, &client, &options, |done, total| {
        last_progress = (done, total)
    })
    .await
    .unwrap();

    assert_eq!(summary.resumed_from, 500);
    assert_eq!(summary.seen, 500);
    assert!(
        clerk.user_offsets()[before..].iter().all(|o| *o >= 500),
        "{:?}",
        clerk.user_offsets()
    );
    assert_eq!(last_progress, (1000, Some(1000)));
    let expected_rows = users(&db.conn).await;
    assert_eq!(expected_rows.len(), 1000);
    // A finished backfill starts over next time (nothing to resume).
    let again = backfill::run(&applier, &client, &options, |_, _| {})
        .await
        .unwrap();
    assert_eq!(
        (again.resumed_from, again.applied, again.unchanged),
        (0, 0, 1000)
    );
    wait_for_users(&db.conn, &expected_rows, Duration::from_secs(1)).await;
}

/// A token key (base64 of 32 bytes).
const TOKEN_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// A rate limit like Clerk's, in windows short enough for a test: 30 calls per second.
const LIMIT: RateLimit = RateLimit {
    requests: 30,
    window: Duration::from_secs(1),
};

/// Every generated user is a row, and every calendar account a connected connection.
async fn assert_every_user_and_calendar(db: &TestDb, population: &Population) {
    assert_eq!(
        scalar(&db.conn, "SELECT count(*) FROM users").await,
        population.users as i64
    );
    assert_eq!(
        scalar(
            &db.conn,
            "SELECT count(*) FROM user_calendar_connections WHERE status = 'connected'"
        )
        .await,
        population.connections() as i64
    );
    assert_eq!(
        scalar(&db.conn, "SELECT count(*) FROM user_calendar_connections").await,
        population.connections() as i64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_paced_under_clerk_s_rate_limit_syncs_every_user_and_calendar_without_a_429() {
    let db = TestDb::migrated().await;
    let clerk = FakeClerk::start().await;
    let population = clerk.generate_users(300);
    assert!(
        population.google > 0 && population.microsoft > 0,
        "{population:?}"
    );
    clerk.set_rate_limit(Some(LIMIT));
    let (mut applier, client) = applier(&db, &clerk).await;
    applier.cipher = Some(store::crypto::TokenCipher::from_setting(TOKEN_KEY).unwrap());
    // 18 calls a second with half a second's burst: at most 18 × 1.5 + 1 = 28 in any second.
    let options = BackfillOptions {
        requests_per_second: 18,
        ..BackfillOptions::default()
    };

    let summary = backfill::run(&applier, &client, &options, |_, _| {})
        .await
        .unwrap();

    assert_eq!((summary.seen, summary.applied), (300, 300));
    assert!(summary.failed.is_empty(), "{:?}", summary.failed);
    assert_every_user_and_calendar(&db, &population).await;
    assert_eq!(clerk.rate_limited(), 0, "paced under the limit: no 429");
    // The count, 3 full pages and the empty one, one token request per user and provider.
    assert_eq!(clerk.requests(), 1 + 4 + population.token_requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_faster_than_clerk_s_rate_limit_waits_out_the_429s_and_loses_no_user() {
    let db = TestDb::migrated().await;
    let clerk = FakeClerk::start().await;
    let population = clerk.generate_users(300);
    // Reached by any build on any machine: 15 calls in 2 s. The worker's default pace is 90
    // calls a second.
    clerk.set_rate_limit(Some(RateLimit {
        requests: 15,
        window: Duration::from_secs(2),
    }));
    let url = clerk.url();
    let settings = [
        ("CLERK_SECRET_KEY", SECRET_KEY),
        ("CLERK_API_URL", url.as_str()),
        ("TOKEN_ENCRYPTION_KEY", TOKEN_KEY),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .chain(
        db.service_settings()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
    )
    .collect();

    let (ok, stdout, stderr) = crate::helpers::worker_cli(settings, &["backfill"]);

    assert!(ok, "{stdout} {stderr}");
    assert!(
        stdout.contains(
            "300 users seen (from offset 0), 300 applied, 0 already newer, 0 deleted, 0 failed"
        ),
        "{stdout}"
    );
    assert!(clerk.rate_limited() > 0, "the limit was reached: {stderr}");
    assert_every_user_and_calendar(&db, &population).await;
}
