//! The rest of a user's profile (username, image, external id, primary phone, metadata, banned,
//! locked, last sign-in) through a running worker, one by one (`WORKER_BATCH_SIZE=1`) and in
//! batches: stored from events, kept from stale ones, cleared when Clerk clears them, and
//! private and unsafe metadata stored only with `SYNC_PRIVATE_METADATA=true`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::users;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use testkit::{TestBroker, TestDb, events};

use crate::helpers::{TestWorker, scalar, spawn_worker};

const ID: &str = "user_profile1";
const CREATED_MS: i64 = 1_735_689_600_000;

/// A user event at `version` whose data is `testkit`'s user object with `profile` on top.
fn event(event_type: &str, version: i64, profile: &Value) -> Vec<u8> {
    let mut data = events::user_object(&events::UserState {
        id: ID.into(),
        email: Some("profile1@example.com".into()),
        first_name: Some("Ada".into()),
        last_name: Some("Synth".into()),
        updated_at: version,
    });
    let fields = data.as_object_mut().unwrap();
    for (key, value) in profile.as_object().unwrap() {
        fields.insert(key.clone(), value.clone());
    }
    serde_json::to_vec(&events::envelope(event_type, data, version)).unwrap()
}

/// A full profile; the primary phone number is the second one listed.
fn full_profile(tag: &str, last_sign_in_ms: i64) -> Value {
    json!({
        "username": format!("ada-{tag}"),
        "image_url": format!("https://img.example/{tag}.png"),
        "external_id": format!("ext-{tag}"),
        "primary_phone_number_id": "idn_phone_primary",
        "phone_numbers": [
            {"id": "idn_phone_other", "object": "phone_number", "phone_number": "+15550000001"},
            {"id": "idn_phone_primary", "object": "phone_number",
             "phone_number": format!("+1555000{tag}"), "reserved": false}
        ],
        "public_metadata": {"plan": tag, "seats": 3},
        "private_metadata": {"stripe": format!("cus_{tag}")},
        "unsafe_metadata": {"theme": tag},
        "banned": true,
        "locked": true,
        "last_sign_in_at": last_sign_in_ms,
    })
}

/// The stored row of the test user, once it is at `version`.
async fn stored_at(db: &DatabaseConnection, version: i64) -> users::Model {
    testkit::eventually(Duration::from_secs(30), "user stored", || async {
        users::Entity::find()
            .filter(users::Column::ClerkUserId.eq(ID))
            .one(db)
            .await
            .unwrap()
            .filter(|user| user.clerk_updated_at == version)
    })
    .await
}

fn at_ms(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

fn assert_full(user: &users::Model, tag: &str, last_sign_in_ms: i64, private: bool) {
    assert_eq!(
        user.username.as_deref(),
        Some(format!("ada-{tag}").as_str())
    );
    assert_eq!(
        user.image_url.as_deref(),
        Some(format!("https://img.example/{tag}.png").as_str())
    );
    assert_eq!(
        user.external_id.as_deref(),
        Some(format!("ext-{tag}").as_str())
    );
    assert_eq!(
        user.primary_phone_number.as_deref(),
        Some(format!("+1555000{tag}").as_str()),
        "the number named by primary_phone_number_id, not the first"
    );
    assert_eq!(user.public_metadata, json!({"plan": tag, "seats": 3}));
    if private {
        assert_eq!(
            user.private_metadata,
            Some(json!({"stripe": format!("cus_{tag}")}))
        );
        assert_eq!(user.unsafe_metadata, Some(json!({"theme": tag})));
    } else {
        assert_eq!(user.private_metadata, None, "not stored unless asked");
        assert_eq!(user.unsafe_metadata, None, "not stored unless asked");
    }
    assert!(user.banned && user.locked);
    assert_eq!(
        user.last_sign_in_at.map(|at| at.with_timezone(&Utc)),
        at_ms(last_sign_in_ms)
    );
    assert_eq!(
        user.clerk_created_at.map(|at| at.with_timezone(&Utc)),
        at_ms(CREATED_MS)
    );
    assert_eq!(user.first_name.as_deref(), Some("Ada"));
    assert_eq!(user.email.as_deref(), Some("profile1@example.com"));
}

/// The value of the metric `name` (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .filter_map(|value| value.trim().parse::<f64>().ok())
        .sum()
}

/// Newest profile stored, a stale one ignored, then a newer event without any profile field
/// (and with nulls) clears it; `private`: whether the worker runs with
/// `SYNC_PRIVATE_METADATA=true`. Returns the worker, still running.
async fn profile_flows(
    db: &TestDb,
    broker: &TestBroker,
    extra: &[(&str, &str)],
    private: bool,
) -> TestWorker {
    let mut settings = extra.to_vec();
    if private {
        settings.push(("SYNC_PRIVATE_METADATA", "true"));
    }
    let worker = spawn_worker(db, broker, &settings).await;

    broker
        .publish_event(
            "msg_profile_2",
            &event("user.updated", 20, &full_profile("22", 1_735_700_000_123)),
        )
        .await;
    let user = stored_at(&db.conn, 20).await;
    assert_full(&user, "22", 1_735_700_000_123, private);

    // An older state, with another profile: changes nothing.
    broker
        .publish_event(
            "msg_profile_1",
            &event("user.created", 10, &full_profile("11", 1_735_690_000_000)),
        )
        .await;
    testkit::eventually(Duration::from_secs(30), "stale event settled", || async {
        (scalar(&db.conn, "SELECT count(*) FROM processed_events").await == 2).then_some(())
    })
    .await;
    assert_full(
        &stored_at(&db.conn, 20).await,
        "22",
        1_735_700_000_123,
        private,
    );

    // A newer state where Clerk cleared everything: nulls and missing fields.
    let cleared = json!({
        "username": null, "image_url": null, "primary_phone_number_id": null,
        "phone_numbers": [], "public_metadata": null, "private_metadata": null,
        "unsafe_metadata": {}, "banned": false, "last_sign_in_at": null,
    });
    let mut body: Value = serde_json::from_slice(&event("user.updated", 30, &cleared)).unwrap();
    let data = body["data"].as_object_mut().unwrap();
    data.remove("external_id");
    data.remove("locked");
    broker
        .publish_event("msg_profile_3", &serde_json::to_vec(&body).unwrap())
        .await;
    let user = stored_at(&db.conn, 30).await;
    assert_eq!(user.username, None);
    assert_eq!(user.image_url, None);
    assert_eq!(user.external_id, None);
    assert_eq!(user.primary_phone_number, None);
    assert_eq!(user.public_metadata, json!({}));
    assert_eq!(user.private_metadata, None);
    assert_eq!(user.unsafe_metadata, private.then(|| json!({})));
    assert!(!user.banned && !user.locked);
    assert_eq!(user.last_sign_in_at, None);
    assert_eq!(
        user.clerk_created_at.map(|at| at.with_timezone(&Utc)),
        at_ms(CREATED_MS)
    );
    assert_eq!(
        scalar(&db.conn, "SELECT count(*) FROM users").await,
        1,
        "one row throughout"
    );
    worker
}

async fn one_by_one(private: bool) {
    let db = TestDb::empty().await;
    let broker = TestBroker::new().await;
    let worker = profile_flows(&db, &broker, &[("WORKER_BATCH_SIZE", "1")], private).await;
    let metrics = worker.metrics().await;
    assert_eq!(
        metric(&metrics, "clerk_sync_batch_size_count"),
        0.0,
        "{metrics}"
    );
    worker.stop().await;
}

async fn batched(private: bool) {
    let db = TestDb::empty().await;
    let broker = TestBroker::new().await;
    let worker = profile_flows(&db, &broker, &[("WORKER_BATCH_SIZE", "16")], private).await;
    let metrics = worker.metrics().await;
    assert!(
        metric(&metrics, "clerk_sync_batch_size_count") >= 3.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "clerk_sync_batch_fallbacks_total"),
        0.0,
        "{metrics}"
    );
    worker.stop().await;
}

#[tokio::test]
async fn one_by_one_the_profile_is_stored_kept_from_stale_events_and_cleared() {
    one_by_one(false).await;
}

#[tokio::test]
async fn in_batches_the_profile_is_stored_kept_from_stale_events_and_cleared() {
    batched(false).await;
}

#[tokio::test]
async fn one_by_one_private_metadata_is_stored_when_asked() {
    one_by_one(true).await;
}

#[tokio::test]
async fn in_batches_private_metadata_is_stored_when_asked() {
    batched(true).await;
}

/// Backfill, reconcile and lazy sync apply Clerk's user objects through the `Applier`: it
/// drops private and unsafe metadata unless told to store them.
#[tokio::test]
async fn the_applier_stores_private_metadata_only_when_asked() {
    for store in [false, true] {
        let db = TestDb::migrated().await;
        let applier = store::Applier {
            db: store::pool::connect_database(&db.service_url(), 2, db.pooler())
                .await
                .unwrap(),
            clerk: None,
            cipher: None,
            in_process_retries: 0,
            store_private_metadata: store,
        };
        let body = event("user.updated", 10, &full_profile("7", 1_735_700_000_000));
        let data = serde_json::from_slice::<Value>(&body).unwrap()["data"].clone();
        let user = store::event::parse_user(&data).unwrap();
        let outcome = applier
            .apply(
                None,
                "backfill",
                &store::event::ClerkEvent::UserUpserted(user),
            )
            .await
            .unwrap();
        assert_eq!(outcome, store::apply::Outcome::Applied);
        let stored = stored_at(&db.conn, 10).await;
        assert_full(&stored, "7", 1_735_700_000_000, store);
    }
}
