//! The set-based batch path against the real Postgres: the same rows and outcomes as applying the
//! events one by one, and nothing at all when the batch cannot be decided alone.

use std::collections::BTreeMap;

use sea_orm::{ConnectionTrait, DatabaseConnection};
use store::pool::Pool;
use store::{
    apply::{
        CalendarUpdate, Outcome,
        batch::{BatchItem, batchable, try_apply_batch},
        tombstone_key, try_apply_event,
    },
    event::{self, ClerkEvent},
};
use testkit::{TestDb, events};

use crate::helpers::{Row, row, scalar, state, users};

fn upsert(
    event_type: &str,
    id: &str,
    email: Option<&str>,
    first: &str,
    version: i64,
) -> ClerkEvent {
    event::parse(&events::user_event(
        event_type,
        &state(id, email, first, version),
    ))
    .unwrap()
}

fn deleted(id: &str, at: i64) -> ClerkEvent {
    event::parse(&events::user_deleted(id, at)).unwrap()
}

async fn apply_one(db: &Pool, svix_id: &str, event: &ClerkEvent) -> Outcome {
    try_apply_event(
        db,
        Some(svix_id),
        "user.updated",
        event,
        CalendarUpdate::default(),
    )
    .await
    .unwrap()
}

/// One event of a batch: (svix id, event type, event).
type Item = (&'static str, &'static str, ClerkEvent);

fn upsert_item(
    svix_id: &'static str,
    event_type: &'static str,
    id: &str,
    email: Option<&str>,
    first: &str,
    version: i64,
) -> Item {
    (
        svix_id,
        event_type,
        upsert(event_type, id, email, first, version),
    )
}

/// Rows stored before the batch: a, b (10) and c (50), d deleted at 60, and a calendar
/// connection of user_a that its next event no longer lists.
async fn store_rows_before_the_batch(db: &Pool) {
    let a = upsert("user.created", "user_a", Some("a@x.test"), "A", 10);
    apply_one(db, "pre_a", &a).await;
    let b = upsert("user.created", "user_b", Some("b@x.test"), "B", 10);
    apply_one(db, "pre_b", &b).await;
    let c = upsert("user.created", "user_c", Some("c@x.test"), "C", 50);
    apply_one(db, "pre_c", &c).await;
    apply_one(db, "pre_d", &deleted("user_d", 60)).await;
    db.execute_unprepared(
        "INSERT INTO user_calendar_connections (id, user_id, provider, external_account_id, \
           provider_user_id, scopes, status) \
         SELECT gen_random_uuid(), id, 'google', 'eac_1', 'g1', 'calendar', 'connected' \
         FROM users WHERE clerk_user_id = 'user_a'; \
         UPDATE users SET google_calendar_connected = true WHERE clerk_user_id = 'user_a'",
    )
    .await
    .unwrap();
}

/// Stale, duplicate, deleted, moved-address, ignored and equal-version events, in this order.
fn mixed_batch() -> Vec<Item> {
    let ignored = event::parse(
        &serde_json::to_vec(&events::envelope(
            "session.created",
            serde_json::json!({"id": "sess_1", "object": "session"}),
            1,
        ))
        .unwrap(),
    )
    .unwrap();
    vec![
        upsert_item("m1", "user.created", "user_a", Some("old@x.test"), "A5", 5),
        upsert_item("m2", "user.updated", "user_a", Some("a@x.test"), "A20", 20),
        // Takes b's address: b's row is older, so b has given it up.
        upsert_item("m3", "user.updated", "user_a", Some("b@x.test"), "A30", 30),
        upsert_item("m3", "user.updated", "user_a", Some("b@x.test"), "A30", 30),
        upsert_item("m5", "user.updated", "user_c", Some("c@x.test"), "C40", 40),
        upsert_item("m6", "user.updated", "user_d", None, "D", 99),
        upsert_item("m7", "user.created", "user_e", Some("e@x.test"), "E", 1),
        ("m8", "user.deleted", deleted("user_e", 2)),
        ("m9", "session.created", ignored),
        upsert_item("pre_b", "user.created", "user_b", Some("b@x.test"), "B", 10),
        upsert_item("m11", "user.created", "user_f", Some("f@x.test"), "F", 7),
        // Equal versions: the first one wins, as one by one.
        upsert_item("m12", "user.updated", "user_g", None, "G-first", 9),
        upsert_item("m13", "user.updated", "user_g", None, "G-second", 9),
    ]
}

/// Applies every item (each of them batchable) in one batch.
async fn apply_as_one_batch(db: &Pool, batch: &[Item]) -> Vec<Outcome> {
    let items: Vec<BatchItem<'_>> = batch
        .iter()
        .map(|(svix_id, event_type, event)| {
            assert!(batchable(Some(svix_id), event));
            BatchItem {
                svix_id,
                event_type,
                event,
            }
        })
        .collect();
    try_apply_batch(db, &items).await.unwrap()
}

/// Every fresh event is recorded once; the ignored type is not; user_e's deletion left a
/// tombstone.
async fn assert_events_recorded_once_and_the_tombstone_kept(db: &DatabaseConnection) {
    assert_eq!(
        scalar(db, "SELECT count(*) FROM processed_events").await,
        4 + 10
    );
    assert_eq!(
        scalar(
            db,
            "SELECT count(*) FROM processed_events WHERE svix_id = 'm9'"
        )
        .await,
        0
    );
    assert_eq!(
        scalar(
            db,
            &format!(
                "SELECT count(*) FROM deleted_users WHERE clerk_user_id_sha256 = '{}'",
                tombstone_key("user_e")
            )
        )
        .await,
        1
    );
}

/// The connection user_a's newest state no longer lists is gone, with its flag.
async fn assert_the_unlisted_calendar_connection_removed(db: &DatabaseConnection) {
    assert_eq!(
        scalar(db, "SELECT count(*) FROM user_calendar_connections").await,
        0
    );
    assert_eq!(
        scalar(
            db,
            "SELECT count(*) FROM users WHERE google_calendar_connected"
        )
        .await,
        0
    );
}

/// created_at kept to the millisecond (testkit's users were created at 2025-01-01).
async fn assert_created_at_kept_to_the_millisecond(db: &DatabaseConnection) {
    assert_eq!(
        scalar(
            db,
            "SELECT (extract(epoch FROM clerk_created_at) * 1000)::bigint FROM users \
             WHERE clerk_user_id = 'user_f'"
        )
        .await,
        1_735_689_600_000
    );
}

#[tokio::test]
async fn a_batch_applies_like_one_by_one_duplicates_stale_deleted_and_moved_addresses_included() {
    let db = TestDb::migrated().await;
    store_rows_before_the_batch(&db.pool).await;

    let outcomes = apply_as_one_batch(&db.pool, &mixed_batch()).await;

    use Outcome::*;
    assert_eq!(
        outcomes,
        vec![
            SkippedStale,
            SkippedStale,
            Applied,
            Duplicate,
            SkippedStale,
            SkippedDeleted,
            SkippedDeleted,
            Applied,
            Ignored,
            Duplicate,
            Applied,
            // Two states of user_g with the same version: the later event (same timestamp,
            // greater Svix id) wins, as it would one by one in any order.
            SkippedStale,
            Applied,
        ]
    );
    let expected = BTreeMap::from([
        ("user_a".to_string(), row(Some("b@x.test"), "A30", 30)),
        ("user_b".to_string(), row(None, "B", 10)),
        ("user_c".to_string(), row(Some("c@x.test"), "C", 50)),
        ("user_f".to_string(), row(Some("f@x.test"), "F", 7)),
        ("user_g".to_string(), row(None, "G-second", 9)),
    ]);
    assert_eq!(users(&db.conn).await, expected);
    assert_events_recorded_once_and_the_tombstone_kept(&db.conn).await;
    assert_the_unlisted_calendar_connection_removed(&db.conn).await;
    assert_created_at_kept_to_the_millisecond(&db.conn).await;
}

#[tokio::test]
async fn a_batch_it_cannot_decide_alone_commits_nothing() {
    let db = TestDb::migrated().await;
    apply_one(
        &db.pool,
        "pre",
        &upsert("user.created", "user_k", None, "K", 1),
    )
    .await;
    // x held the address at 20 and gave it up before y took it at 30; x's release is not in
    // this batch. One by one, y takes it from x; together the statement sees two holders.
    let batch = [
        (
            "n1",
            upsert("user.updated", "user_x", Some("e@x.test"), "X", 20),
        ),
        (
            "n2",
            upsert("user.updated", "user_y", Some("e@x.test"), "Y", 30),
        ),
        ("n3", upsert("user.updated", "user_k", None, "K2", 2)),
    ];
    let items: Vec<BatchItem<'_>> = batch
        .iter()
        .map(|(svix_id, event)| BatchItem {
            svix_id,
            event_type: "user.updated",
            event,
        })
        .collect();
    let error = try_apply_batch(&db.pool, &items).await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert_eq!(
        users(&db.conn).await,
        BTreeMap::from([("user_k".to_string(), row(None, "K", 1))])
    );
    assert_eq!(
        scalar(&db.conn, "SELECT count(*) FROM processed_events").await,
        1
    );
}

#[test]
fn events_needing_clerk_or_without_an_id_are_not_batched() {
    let with_calendar = event::parse(&events::user_event_with_accounts(
        "user.updated",
        &state("user_cal", None, "Cal", 1),
        vec![events::google_calendar_account("g1", "eac_1")],
    ))
    .unwrap();
    assert!(!batchable(Some("m1"), &with_calendar));
    let plain = upsert("user.updated", "user_p", None, "P", 1);
    assert!(batchable(Some("m2"), &plain));
    assert!(!batchable(None, &plain));
}

#[tokio::test]
async fn a_batch_larger_than_one_statement_is_applied_in_chunks_within_one_transaction() {
    let db = TestDb::migrated().await;
    let long = "N".repeat(200);
    // user_0 holds an address that the last user of the batch takes over.
    apply_one(
        &db.pool,
        "pre",
        &upsert("user.created", "user_0", Some("moved@x.test"), "Z", 1),
    )
    .await;
    let mut batch: Vec<(String, ClerkEvent)> = (1..=100)
        .map(|i| {
            (
                format!("c{i}"),
                upsert(
                    "user.created",
                    &format!("user_{i}"),
                    Some(&format!("u{i}@x.test")),
                    &long,
                    10,
                ),
            )
        })
        .collect();
    batch.push((
        "c101".into(),
        upsert("user.updated", "user_100", Some("moved@x.test"), &long, 11),
    ));
    let items: Vec<BatchItem<'_>> = batch
        .iter()
        .map(|(svix_id, event)| BatchItem {
            svix_id,
            event_type: "user.created",
            event,
        })
        .collect();
    let outcomes = try_apply_batch(&db.pool, &items).await.unwrap();
    assert_eq!(
        outcomes.iter().filter(|o| **o == Outcome::Applied).count(),
        100
    );
    let rows = users(&db.conn).await;
    assert_eq!(rows.len(), 101);
    assert_eq!(
        rows["user_100"],
        Row {
            email: Some("moved@x.test".into()),
            first_name: Some(long.clone()),
            last_name: Some("Synth".into()),
            version: 11,
        }
    );
    assert_eq!(rows["user_0"].email, None);
    assert_eq!(rows["user_42"].email.as_deref(), Some("u42@x.test"));
}

#[tokio::test]
async fn an_address_release_rechecks_a_holder_row_rewritten_while_it_waited() {
    use sea_orm::TransactionTrait;
    let db = TestDb::migrated().await;
    apply_one(
        &db.pool,
        "pre",
        &upsert("user.created", "user_h", Some("e@x.test"), "H", 10),
    )
    .await;
    // Another transaction rewrites the holder's row (a newer address) and keeps it locked.
    let other = db.conn.begin().await.unwrap();
    other
        .execute_unprepared(
            "UPDATE users SET email = 'other@x.test', clerk_updated_at = 50 \
             WHERE clerk_user_id = 'user_h'",
        )
        .await
        .unwrap();
    let event = upsert("user.updated", "user_c", Some("e@x.test"), "C", 20);
    let batch = {
        let conn = db.pool.clone();
        let event = event.clone();
        tokio::spawn(async move {
            let items = [BatchItem {
                svix_id: "r1",
                event_type: "user.updated",
                event: &event,
            }];
            try_apply_batch(&conn, &items).await
        })
    };
    // The batch finds the old row holding the address and waits for its lock.
    testkit::eventually(
        std::time::Duration::from_secs(10),
        "the batch waiting for the row lock",
        || async {
            (scalar(
                &db.conn,
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .await
                > 0)
            .then_some(())
        },
    )
    .await;
    other.commit().await.unwrap();
    let outcomes = batch.await.unwrap().unwrap();
    assert_eq!(outcomes, vec![Outcome::Applied]);
    let rows = users(&db.conn).await;
    assert_eq!(rows["user_h"].email.as_deref(), Some("other@x.test"));
    assert_eq!(rows["user_h"].version, 50);
    assert_eq!(rows["user_c"].email.as_deref(), Some("e@x.test"));
}
