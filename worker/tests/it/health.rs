//! Calendar connection health in the worker: what a webhook's account and Clerk's answer at
//! event time say is recorded; the scheduled check finds a grant ended without a webhook,
//! within one interval, one worker at a time; `worker check-connections` keeps to its budget;
//! a disconnected connection is never asked about; an older answer never overwrites a newer.

use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde_json::Value;
use testkit::{
    TestBroker, TestDb,
    events::{google_calendar_account, microsoft_calendar_account, user_event_with_accounts},
    eventually,
    fake_clerk::{FakeClerk, RateLimit, SECRET_KEY},
};

use crate::helpers::{TestWorker, scalar, spawn_worker, state, worker_cli, worker_settings};

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn clerk_settings(clerk: &FakeClerk) -> Vec<(&'static str, String)> {
    vec![
        ("CLERK_SECRET_KEY", SECRET_KEY.to_owned()),
        ("CLERK_API_URL", clerk.url()),
        ("TOKEN_ENCRYPTION_KEY", KEY.to_owned()),
    ]
}

async fn worker_with(
    db: &TestDb,
    broker: &TestBroker,
    clerk: &FakeClerk,
    extra: &[(&str, &str)],
) -> TestWorker {
    let settings = clerk_settings(clerk);
    let mut all: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend_from_slice(extra);
    spawn_worker(db, broker, &all).await
}

/// The user `id` with a Google and a Microsoft calendar account, both served a token.
fn serve_both(clerk: &FakeClerk, id: &str) {
    for (provider, token, provider_user_id, eac) in [
        (
            "oauth_google",
            "ya29.g",
            format!("g-{id}"),
            format!("eac_g_{id}"),
        ),
        (
            "oauth_microsoft",
            "EwB.m",
            format!("m-{id}"),
            format!("eac_m_{id}"),
        ),
    ] {
        clerk.set_token(id, provider, token, None, &provider_user_id, &eac);
    }
}

fn accounts(id: &str) -> Vec<Value> {
    vec![
        google_calendar_account(&format!("g-{id}"), &format!("eac_g_{id}")),
        microsoft_calendar_account(&format!("m-{id}"), &format!("eac_m_{id}")),
    ]
}

async fn send(
    broker: &TestBroker,
    db: &DatabaseConnection,
    id: &str,
    svix: &str,
    version: i64,
    accounts: Vec<Value>,
) {
    let before = scalar(db, "SELECT count(*) FROM processed_events").await;
    let body = user_event_with_accounts(
        "user.updated",
        &state(id, Some(&format!("{id}@example.com")), "Cal", version),
        accounts,
    );
    broker.publish_event(svix, &body).await;
    eventually(Duration::from_secs(30), "the event settled", || async {
        (scalar(db, "SELECT count(*) FROM processed_events").await > before).then_some(())
    })
    .await;
}

/// `(status, reason)` of the user's connection of `provider`.
async fn health(db: &DatabaseConnection, id: &str, provider: &str) -> (String, Option<String>) {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT c.status, c.status_reason FROM user_calendar_connections c \
             JOIN users u ON u.id = c.user_id WHERE u.clerk_user_id = $1 AND c.provider = $2",
            [id.into(), provider.into()],
        ))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no {provider} connection of {id}"));
    (
        row.try_get("", "status").unwrap(),
        row.try_get("", "status_reason").unwrap(),
    )
}

/// `(google_calendar_status, google_calendar_connected)` of the user.
async fn shown(db: &DatabaseConnection, id: &str, provider: &str) -> (String, bool) {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            format!(
                "SELECT {provider}_calendar_status AS s, {provider}_calendar_connected AS c \
                 FROM users WHERE clerk_user_id = '{id}'"
            ),
        ))
        .await
        .unwrap()
        .unwrap();
    (row.try_get("", "s").unwrap(), row.try_get("", "c").unwrap())
}

#[tokio::test]
async fn clerk_s_answers_and_lapsed_accounts_at_event_time_are_recorded_and_a_reconnect_clears_them()
 {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let clerk = FakeClerk::start().await;
    let worker = worker_with(&db, &broker, &clerk, &[]).await;
    for (n, (status, code, reason)) in [
        (400, "oauth_token_retrieval_error", "grant_revoked"),
        (422, "oauth_missing_refresh_token", "missing_refresh_token"),
        (404, "oauth_token_provider_not_enabled", "provider_disabled"),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("user_ev{n}");
        serve_both(&clerk, &id);
        clerk.fail_tokens(&id, "oauth_microsoft", status, code, 1);
        send(
            &broker,
            &db.conn,
            &id,
            &format!("msg_ev{n}"),
            10,
            accounts(&id),
        )
        .await;
        assert_eq!(
            health(&db.conn, &id, "microsoft").await,
            ("needs_reconnect".into(), Some(reason.into())),
            "{code}"
        );
        assert_eq!(
            health(&db.conn, &id, "google").await,
            ("connected".into(), None)
        );
        assert_eq!(
            shown(&db.conn, &id, "microsoft").await,
            ("needs_reconnect".into(), false)
        );
        assert_eq!(
            shown(&db.conn, &id, "google").await,
            ("connected".into(), true)
        );
    }
    // An account whose verification expired in Clerk: needs the user, Clerk not asked.
    let id = "user_ev_lapsed";
    serve_both(&clerk, id);
    let mut lapsed = accounts(id);
    lapsed[1]["verification"] =
        serde_json::json!({"status": "expired", "strategy": "oauth_microsoft"});
    send(&broker, &db.conn, id, "msg_lapsed_1", 10, lapsed).await;
    assert_eq!(
        health(&db.conn, id, "microsoft").await,
        ("needs_reconnect".into(), Some("account_unverified".into()))
    );
    assert_eq!(clerk.token_requests(id, "oauth_microsoft"), 0);
    // Reconnected in Clerk (`user.updated`, the account verified again): checked, connected.
    send(&broker, &db.conn, id, "msg_lapsed_2", 20, accounts(id)).await;
    assert_eq!(
        health(&db.conn, id, "microsoft").await,
        ("connected".into(), None)
    );
    assert_eq!(
        shown(&db.conn, id, "microsoft").await,
        ("connected".into(), true)
    );
    // Clerk's trouble at event time is retried (never recorded as needing the user).
    clerk.fail_tokens(id, "oauth_google", 503, "down", 2);
    send(&broker, &db.conn, id, "msg_lapsed_3", 30, accounts(id)).await;
    assert_eq!(
        health(&db.conn, id, "google").await,
        ("connected".into(), None)
    );
    assert_eq!(broker.count(&broker.topology.dead_queue()).await, 0);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduled_check_finds_a_grant_ended_without_a_webhook_one_worker_at_a_time() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let clerk = FakeClerk::start().await;
    let first = worker_with(&db, &broker, &clerk, &[]).await;
    for n in 0..4 {
        let id = format!("user_sc{n}");
        serve_both(&clerk, &id);
        send(
            &broker,
            &db.conn,
            &id,
            &format!("msg_sc{n}"),
            10,
            accounts(&id),
        )
        .await;
    }
    first.stop().await;
    // Google ends user_sc2's grant: no webhook.
    clerk.fail_tokens(
        "user_sc2",
        "oauth_google",
        400,
        "oauth_token_retrieval_error",
        1_000,
    );
    clerk.set_delay(Duration::from_millis(100));
    let asked_before = clerk.max_in_flight_per_path();
    let checks = [("CALENDAR_HEALTH_INTERVAL", "1s")];
    let a = worker_with(&db, &broker, &clerk, &checks).await;
    let b = worker_with(&db, &broker, &clerk, &checks).await;
    eventually(
        Duration::from_secs(20),
        "the revoked grant found",
        || async {
            (health(&db.conn, "user_sc2", "google").await.0 == "needs_reconnect").then_some(())
        },
    )
    .await;
    // A few more intervals, both workers on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = a.metrics().await + &b.metrics().await;
    a.stop().await;
    b.stop().await;
    assert!(asked_before <= 1);
    assert_eq!(
        clerk.max_in_flight_per_path(),
        1,
        "two workers asked Clerk about the same connection at once"
    );
    assert_eq!(
        health(&db.conn, "user_sc2", "google").await,
        ("needs_reconnect".into(), Some("grant_revoked".into()))
    );
    for n in [0, 1, 3] {
        assert_eq!(
            health(&db.conn, &format!("user_sc{n}"), "google").await.0,
            "connected"
        );
    }
    assert!(
        metrics.contains(
            "clerk_sync_calendar_checks_total{provider=\"google\",outcome=\"needs_reconnect\"}"
        ),
        "{metrics}"
    );
    // Counted at start (then every minute): every provider and status, zeros included.
    assert!(
        metrics.contains(
            "clerk_sync_calendar_connections{provider=\"google\",status=\"needs_reconnect\"}"
        ),
        "{metrics}"
    );
}

fn check_cli(db: &TestDb, broker: &TestBroker, clerk: &FakeClerk, args: &[&str]) -> Value {
    let settings = clerk_settings(clerk);
    let extra: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let settings = worker_settings(db, broker, &extra);
    let args: Vec<&str> = ["check-connections", "--json"]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    let (ok, stdout, stderr) = worker_cli(settings, &args);
    assert!(ok, "{stdout} {stderr}");
    serde_json::from_str(&stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connections_keeps_to_its_budget_under_clerk_s_rate_limit_and_skips_the_disconnected()
{
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let clerk = FakeClerk::start().await;
    let worker = worker_with(&db, &broker, &clerk, &[]).await;
    for n in 0..5 {
        let id = format!("user_bu{n}");
        serve_both(&clerk, &id);
        send(
            &broker,
            &db.conn,
            &id,
            &format!("msg_bu{n}"),
            10,
            accounts(&id),
        )
        .await;
    }
    // user_bu4 disconnects Google: its row goes, and it is never asked about again.
    let api_db = db.conn.clone();
    api_db
        .execute_unprepared(
            "DELETE FROM user_calendar_connections c USING users u \
             WHERE u.id = c.user_id AND u.clerk_user_id = 'user_bu4' AND c.provider = 'google'",
        )
        .await
        .unwrap();
    worker.stop().await;
    let before = clerk.requests();
    let google_bu4 = clerk.token_requests("user_bu4", "oauth_google");

    let report = check_cli(&db, &broker, &clerk, &["--budget", "3"]);
    assert_eq!(report["checked"], 3, "{report}");
    assert_eq!(
        clerk.requests() - before,
        3,
        "one call a connection, within the budget"
    );

    // A rate-limited Clerk: its 429s are unavailable (never needs_reconnect), the budget holds.
    clerk.set_rate_limit(Some(RateLimit {
        requests: 2,
        window: Duration::from_secs(10),
    }));
    let before = clerk.requests();
    let report = check_cli(&db, &broker, &clerk, &["--budget", "6", "--rate", "50"]);
    assert_eq!(report["checked"], 6, "{report}");
    assert!(clerk.requests() - before <= 6, "{report}");
    assert!(clerk.rate_limited() > 0);
    let needs = scalar(
        &db.conn,
        "SELECT count(*) FROM user_calendar_connections WHERE status = 'needs_reconnect'",
    )
    .await;
    assert_eq!(needs, 0, "a 429 made a connection need the user");
    clerk.set_rate_limit(None);

    let report = check_cli(&db, &broker, &clerk, &["--user-id", "user_bu4"]);
    assert_eq!(report["checked"], 1, "{report}");
    assert_eq!(clerk.token_requests("user_bu4", "oauth_google"), google_bu4);
}

#[tokio::test]
async fn an_older_answer_never_overwrites_a_newer_one() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let clerk = FakeClerk::start().await;
    let worker = worker_with(&db, &broker, &clerk, &[]).await;
    let id = "user_fw";
    serve_both(&clerk, id);
    send(&broker, &db.conn, id, "msg_fw1", 10, accounts(id)).await;
    worker.stop().await;
    // A check recorded the grant ended "in the future" of any event fetch now under way.
    db.conn
        .execute_unprepared(
            "UPDATE user_calendar_connections SET status = 'needs_reconnect', \
               status_reason = 'grant_revoked', status_checked_at = now() + interval '1 hour', \
               access_token = NULL WHERE provider = 'google'",
        )
        .await
        .unwrap();
    let worker = worker_with(&db, &broker, &clerk, &[]).await;
    send(&broker, &db.conn, id, "msg_fw2", 20, accounts(id)).await;
    worker.stop().await;
    assert_eq!(
        health(&db.conn, id, "google").await,
        ("needs_reconnect".into(), Some("grant_revoked".into())),
        "an event's older token answer overwrote a newer check"
    );
    assert_eq!(
        health(&db.conn, id, "microsoft").await,
        ("connected".into(), None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_with_token_failures_mixed_in_converge_and_never_go_backwards() {
    use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
    let seed = std::env::var("HEALTH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7_u64);
    let mut rng = StdRng::seed_from_u64(seed);
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let clerk = FakeClerk::start().await;
    let users: Vec<String> = (0..6).map(|n| format!("user_cv{n}")).collect();
    let mut deliveries = Vec::new();
    for id in &users {
        serve_both(&clerk, id);
        // Clerk's trouble at random points of each user's token calls (retried, never recorded
        // as needing the user).
        for provider in ["oauth_google", "oauth_microsoft"] {
            let failures = rng.random_range(0..3);
            clerk.fail_tokens(
                id,
                provider,
                [429, 500, 503][rng.random_range(0..3)],
                "trouble",
                failures,
            );
        }
        for version in 1..=3 {
            let body = user_event_with_accounts(
                "user.updated",
                &state(
                    id,
                    Some(&format!("{id}@example.com")),
                    &format!("V{version}"),
                    version,
                ),
                accounts(id),
            );
            for _ in 0..rng.random_range(1..=2) {
                deliveries.push((format!("msg_{id}_{version}"), body.clone()));
            }
        }
    }
    deliveries.shuffle(&mut rng);
    let a = worker_with(&db, &broker, &clerk, &[]).await;
    let b = worker_with(&db, &broker, &clerk, &[]).await;
    let sampler = {
        let db = db.conn.clone();
        tokio::spawn(async move {
            // Sampled while the histories apply: nothing ever needs the user.
            let mut worst = 0;
            for _ in 0..100 {
                worst = worst.max(
                    scalar(
                        &db,
                        "SELECT count(*) FROM user_calendar_connections WHERE status = 'needs_reconnect'",
                    )
                    .await,
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            worst
        })
    };
    for (svix_id, body) in &deliveries {
        broker.publish_event(svix_id, body).await;
    }
    eventually(Duration::from_secs(60), "every user at version 3, both connected", || async {
        let done = scalar(
            &db.conn,
            "SELECT count(*) FROM users WHERE clerk_updated_at = 3 \
               AND google_calendar_status = 'connected' AND microsoft_calendar_status = 'connected'",
        )
        .await;
        (done == 6).then_some(())
    })
    .await;
    assert_eq!(
        sampler.await.unwrap(),
        0,
        "seed {seed}: a connection needed the user"
    );
    assert_eq!(
        scalar(
            &db.conn,
            "SELECT count(*) FROM user_calendar_connections WHERE status = 'connected' \
               AND access_token IS NOT NULL"
        )
        .await,
        12
    );
    assert_eq!(broker.count(&broker.topology.dead_queue()).await, 0);
    a.stop().await;
    b.stop().await;
}
