//! `worker reconcile` against a fake Clerk Backend API: drift found and repaired through the
//! apply path, the deletion guard, rate limits and resuming, webhooks during a scan, and the
//! scheduled reconcile in one worker at a time.

use std::{collections::BTreeMap, time::Duration};

use serde_json::Value;
use store::{
    Applier,
    event::{ClerkEvent, parse_user},
};
use testkit::{
    TestBroker, TestDb,
    events::{UserState, user_object},
    fake_clerk::{FakeClerk, SECRET_KEY},
};
use worker::repair::{ReconcileError, ReconcileOptions, users::run};

use crate::helpers::{Row, scalar, spawn_worker, users};

fn id(n: usize) -> String {
    format!("user_rc_{n}")
}

/// User `n` as Clerk serves it at `version`.
fn clerk_user(n: usize, first: &str, version: i64) -> Value {
    user_object(&UserState {
        id: id(n),
        email: Some(format!("rc{n}@example.test")),
        first_name: Some(first.into()),
        last_name: Some("Synth".into()),
        updated_at: version,
    })
}

fn row(n: usize, first: &str, version: i64) -> Row {
    Row {
        email: Some(format!("rc{n}@example.test")),
        first_name: Some(first.into()),
        last_name: Some("Synth".into()),
        version,
    }
}

fn applier(db: &TestDb) -> Applier {
    Applier {
        db: db.pool.clone(),
        clerk: None,
        cipher: None,
        in_process_retries: 1,
        store_private_metadata: false,
    }
}

/// What a webhook for `value` would have stored.
async fn webhook(applier: &Applier, value: &Value) {
    let user = parse_user(value).unwrap();
    applier
        .apply(None, "user.updated", &ClerkEvent::UserUpserted(user))
        .await
        .unwrap();
}

async fn webhook_delete(applier: &Applier, n: usize) {
    applier
        .apply(
            None,
            "user.deleted",
            &ClerkEvent::UserDeleted {
                clerk_user_id: id(n),
            },
        )
        .await
        .unwrap();
}

fn reconcile_cli(
    db: &TestDb,
    broker: &TestBroker,
    clerk: &FakeClerk,
    args: &[&str],
) -> (bool, String, String) {
    let settings = crate::helpers::settings_with_clerk(db, broker, clerk);
    let args: Vec<&str> = std::iter::once("reconcile")
        .chain(args.iter().copied())
        .collect();
    crate::helpers::worker_cli(settings, &args)
}

fn count(report: &Value, kind: &str) -> u64 {
    report[kind]["count"].as_u64().unwrap()
}

// The CLI blocks this thread while the fake Clerk answers it from another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reconcile_makes_the_table_equal_clerk_and_a_second_finds_no_drift() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let clerk = FakeClerk::start().await;
    let applier = applier(&db);
    // Webhooks were delivered for 200 of Clerk's 300 users.
    for n in 0..200 {
        webhook(&applier, &clerk_user(n, "First", 1_000)).await;
    }
    // Then, without webhooks: 20 updated in Clerk, 10 deleted in Clerk; and 5 rows are newer
    // here than Clerk's list (a webhook beat the listing).
    let mut in_clerk: Vec<Value> = Vec::new();
    let mut expected = BTreeMap::new();
    for n in 0..300 {
        match n {
            0..20 => {
                in_clerk.push(clerk_user(n, "Updated", 2_000));
                expected.insert(id(n), row(n, "Updated", 2_000));
            }
            20..30 => {}
            30..35 => {
                in_clerk.push(clerk_user(n, "First", 1_000));
                webhook(&applier, &clerk_user(n, "Local", 3_000)).await;
                expected.insert(id(n), row(n, "Local", 3_000));
            }
            _ => {
                in_clerk.push(clerk_user(n, "First", 1_000));
                expected.insert(id(n), row(n, "First", 1_000));
            }
        }
    }
    clerk.set_users(in_clerk);

    let (ok, stdout, stderr) = reconcile_cli(&db, &broker, &clerk, &["--json"]);
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(count(&report, "missing"), 100, "{stdout}");
    assert_eq!(count(&report, "older"), 20);
    assert_eq!(count(&report, "gone"), 10);
    assert_eq!(count(&report, "newer_here"), 5);
    assert_eq!(count(&report, "connections"), 0);
    assert!(
        report["gone"]["ids"]
            .as_array()
            .unwrap()
            .contains(&Value::from(id(25)))
    );
    assert_eq!(users(&db.conn).await, expected);
    // Deleted as a user.deleted would be: with a tombstone.
    assert_eq!(
        scalar(&db.conn, "SELECT count(*) FROM deleted_users").await,
        10
    );

    let (ok, stdout, stderr) = reconcile_cli(&db, &broker, &clerk, &[]);
    assert!(ok, "{stderr}");
    for line in [
        "missing here:        0",
        "older here:          0",
        "gone from Clerk:     0",
        "calendar connections: 0",
        "newer here:          5 (left alone)",
    ] {
        assert!(stdout.contains(line), "{line} in {stdout}");
    }
    assert_eq!(users(&db.conn).await, expected);
}

// The CLI blocks this thread while the fake Clerk answers it from another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_clerk_list_deletes_nothing_and_says_why() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let clerk = FakeClerk::start().await;
    let applier = applier(&db);
    for n in 0..30 {
        webhook(&applier, &clerk_user(n, "First", 1_000)).await;
    }
    // A CLERK_SECRET_KEY of another, empty instance.
    clerk.set_users(vec![]);
    let (ok, _, stderr) = reconcile_cli(&db, &broker, &clerk, &[]);
    assert!(!ok, "the run must fail");
    assert!(stderr.contains("30 row(s) would be deleted"), "{stderr}");
    assert!(stderr.contains("nothing was deleted"), "{stderr}");
    assert!(stderr.contains("--max-deletes"), "{stderr}");
    assert_eq!(users(&db.conn).await.len(), 30);
    // A dry run says the same and changes nothing either.
    let (ok, _, stderr) = reconcile_cli(&db, &broker, &clerk, &["--dry-run"]);
    assert!(!ok && stderr.contains("would be deleted"), "{stderr}");
    assert_eq!(users(&db.conn).await.len(), 30);
}

#[tokio::test]
async fn a_rate_limited_scan_waits_and_an_interrupted_one_resumes_at_its_page() {
    let db = TestDb::migrated().await;
    let clerk = FakeClerk::start().await;
    let applier = applier(&db);
    clerk.set_users((0..120).map(|n| clerk_user(n, "First", 1_000)).collect());
    let client =
        clerk_api::client::ClerkClient::new(&clerk.url(), SECRET_KEY, Duration::from_secs(5))
            .unwrap();
    let options = ReconcileOptions {
        page_size: 50,
        attempts: 2,
        ..ReconcileOptions::default()
    };

    // Clerk's user list fails from the second page on: the run stops there.
    clerk.fail_users_from(Some(50));
    let error = run(&applier, &client, &options, |_, _| {})
        .await
        .unwrap_err();
    assert!(
        matches!(error, ReconcileError::List { offset: 50, .. }),
        "{error}"
    );
    assert_eq!(users(&db.conn).await.len(), 50);

    // Healed, and rate-limited once (429 with Retry-After: 1): the next run waits, resumes at
    // the page it stopped at, and completes.
    clerk.fail_users_from(None);
    clerk.fail_next(429, 1);
    let started = std::time::Instant::now();
    let report = run(&applier, &client, &options, |_, _| {}).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was not waited"
    );
    assert_eq!(report.resumed_from, 50);
    assert_eq!(report.missing.count, 70);
    assert_eq!(
        report.gone.count, 0,
        "users of the first run's pages are remembered"
    );
    let offsets = clerk.user_offsets();
    assert_eq!(&offsets[offsets.len() - 2..], &[50, 100], "{offsets:?}");
    assert_eq!(users(&db.conn).await.len(), 120);
}

#[tokio::test]
async fn webhooks_during_a_scan_win_over_what_the_scan_read() {
    let db = TestDb::migrated().await;
    let clerk = FakeClerk::start().await;
    let applier = applier(&db);
    // Stored: 60 users at 1,000. Clerk lists user 5 at 2,000 (older here) and everyone else as
    // stored.
    for n in 0..60 {
        webhook(&applier, &clerk_user(n, "First", 1_000)).await;
    }
    clerk.set_users(
        (0..60)
            .map(|n| {
                if n == 5 {
                    clerk_user(n, "Listed", 2_000)
                } else {
                    clerk_user(n, "First", 1_000)
                }
            })
            .collect(),
    );
    clerk.set_delay(Duration::from_millis(300));
    let client =
        clerk_api::client::ClerkClient::new(&clerk.url(), SECRET_KEY, Duration::from_secs(5))
            .unwrap();
    let options = ReconcileOptions {
        page_size: 20,
        ..ReconcileOptions::default()
    };
    let scan = run(&applier, &client, &options, |_, _| {});
    let webhooks = async {
        // While the scan reads its pages: user 5 updated past what Clerk listed, user 45
        // deleted.
        tokio::time::sleep(Duration::from_millis(500)).await;
        webhook(&applier, &clerk_user(5, "Webhook", 3_000)).await;
        webhook_delete(&applier, 45).await;
    };
    let (report, ()) = tokio::join!(scan, webhooks);
    report.unwrap();
    let rows = users(&db.conn).await;
    assert_eq!(rows[&id(5)], row(5, "Webhook", 3_000));
    assert!(!rows.contains_key(&id(45)), "a deleted user came back");
    assert_eq!(rows.len(), 59);
}

#[tokio::test]
async fn with_two_workers_only_one_reconciles_at_a_time() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let clerk = FakeClerk::start().await;
    clerk.set_users((0..10).map(|n| clerk_user(n, "First", 1_000)).collect());
    // Each call to Clerk takes a while: overlapping runs would overlap their calls.
    clerk.set_delay(Duration::from_millis(400));
    let url = clerk.url();
    let settings = [
        ("RECONCILE_INTERVAL", "1s"),
        ("CLERK_SECRET_KEY", SECRET_KEY),
        ("CLERK_API_URL", url.as_str()),
    ];
    let (a, b) = tokio::join!(
        spawn_worker(&db, &broker, &settings),
        spawn_worker(&db, &broker, &settings),
    );
    testkit::eventually(
        Duration::from_secs(30),
        "several reconcile runs",
        || async { (clerk.requests() >= 12).then_some(()) },
    )
    .await;
    tokio::join!(a.stop(), b.stop());
    assert_eq!(clerk.max_in_flight(), 1, "two reconciles ran at once");
    assert_eq!(users(&db.conn).await.len(), 10);
}

#[tokio::test]
async fn the_scheduled_reconcile_reports_its_drift_and_last_success() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let clerk = FakeClerk::start().await;
    clerk.set_users((0..3).map(|n| clerk_user(n, "First", 1_000)).collect());
    let url = clerk.url();
    let worker = spawn_worker(
        &db,
        &broker,
        &[
            ("RECONCILE_INTERVAL", "1s"),
            ("CLERK_SECRET_KEY", SECRET_KEY),
            ("CLERK_API_URL", url.as_str()),
        ],
    )
    .await;
    let metrics = testkit::eventually(Duration::from_secs(20), "a reconcile run", || async {
        let m = worker.metrics().await;
        m.contains("clerk_sync_reconcile_drift_total{kind=\"missing\"} 3")
            .then_some(m)
    })
    .await;
    let last = metrics
        .lines()
        .find_map(|l| l.strip_prefix("clerk_sync_reconcile_last_success_timestamp_seconds "))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(0);
    assert!(last > 1_700_000_000, "{metrics}");
    worker.stop().await;
}

#[tokio::test]
async fn calendar_connections_that_drifted_from_the_accounts_are_synced_again() {
    let db = TestDb::migrated().await;
    let clerk = FakeClerk::start().await;
    let applier = applier(&db);
    let mut user = clerk_user(1, "Cal", 1_000);
    user["external_accounts"] =
        serde_json::json!([testkit::events::microsoft_calendar_account("m-1", "eac_m1")]);
    webhook(&applier, &user).await;
    assert_eq!(
        scalar(&db.conn, "SELECT count(*) FROM user_calendar_connections").await,
        1
    );
    // The connection went missing here (a restore, a manual fix gone wrong): same version.
    use sea_orm::ConnectionTrait;
    db.conn
        .execute_unprepared("DELETE FROM user_calendar_connections")
        .await
        .unwrap();
    clerk.set_users(vec![user]);
    let client =
        clerk_api::client::ClerkClient::new(&clerk.url(), SECRET_KEY, Duration::from_secs(5))
            .unwrap();
    let report = run(&applier, &client, &ReconcileOptions::default(), |_, _| {})
        .await
        .unwrap();
    assert_eq!(report.connections.count, 1);
    assert_eq!(report.connections.ids, vec![id(1)]);
    assert_eq!(
        scalar(
            &db.conn,
            "SELECT count(*) FROM user_calendar_connections WHERE provider = 'microsoft' \
             AND provider_user_id = 'm-1'"
        )
        .await,
        1
    );
    // In step now: a second run finds nothing.
    let again = run(&applier, &client, &ReconcileOptions::default(), |_, _| {})
        .await
        .unwrap();
    assert_eq!(again.drift(), 0);
}
