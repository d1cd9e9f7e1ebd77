use std::{collections::BTreeMap, time::Duration};

use testkit::{TestBroker, TestDb, events};

use crate::helpers::{
    row, scalar, spawn_worker, user_created, user_updated, users, wait_for_users,
};

#[tokio::test]
async fn a_created_arriving_after_a_newer_updated_changes_nothing() {
    let db = TestDb::empty().await;
    let broker = TestBroker::new().await;
    let worker = spawn_worker(&db, &broker, &[]).await;

    user_updated("user_o1", Some("o1@example.com"), "New", 20)
        .publish(&broker, "msg_o1_2")
        .await;
    let expected = BTreeMap::from([(
        "user_o1".to_string(),
        row(Some("o1@example.com"), "New", 20),
    )]);
    wait_for_users(&db.conn, &expected, Duration::from_secs(20)).await;
    let id_before = scalar(
        &db.conn,
        "SELECT count(*) FROM users WHERE clerk_user_id = 'user_o1'",
    )
    .await;
    user_created("user_o1", Some("old@example.com"), "Old", 10)
        .publish(&broker, "msg_o1_1")
        .await;
    // Another state with the same version, from an event that orders before the stored one (same
    // event timestamp, smaller Svix id): it changes nothing either.
    user_updated("user_o1", Some("o1@example.com"), "Same", 20)
        .publish(&broker, "msg_o1_0")
        .await;

    testkit::eventually(Duration::from_secs(20), "both settled", || async {
        (scalar(&db.conn, "SELECT count(*) FROM processed_events").await == 3).then_some(())
    })
    .await;
    assert_eq!(
        users(&db.conn).await,
        expected,
        "older and equal versions change nothing"
    );
    assert_eq!(id_before, 1);
    worker.stop().await;
}

#[tokio::test]
async fn two_users_swapping_emails_in_the_worst_order_converge_without_help() {
    let db = TestDb::empty().await;
    let broker = TestBroker::new().await;
    let worker = spawn_worker(&db, &broker, &[]).await;
    // Clerk timeline: u1 has x, u2 has y; u1 moves to a temporary address, u2 takes x, u1 takes y.
    let t1 = user_created("user_s1", Some("x@example.com"), "One", 1).body();
    let t2 = user_created("user_s2", Some("y@example.com"), "Two", 2).body();
    let t3 = user_updated("user_s1", Some("tmp@example.com"), "One", 3).body();
    let t4 = user_updated("user_s2", Some("x@example.com"), "Two", 4).body();
    let t5 = user_updated("user_s1", Some("y@example.com"), "One", 5).body();
    broker.publish_event("msg_s_1", &t1).await;
    broker.publish_event("msg_s_2", &t2).await;
    wait_for_users(
        &db.conn,
        &BTreeMap::from([
            ("user_s1".to_string(), row(Some("x@example.com"), "One", 1)),
            ("user_s2".to_string(), row(Some("y@example.com"), "Two", 2)),
        ]),
        Duration::from_secs(20),
    )
    .await;

    // Worst order: u1's final event first (y is still held by u2), then u2's (x still held by u1
    // in the old row), the intermediate one last.
    broker.publish_event("msg_s_5", &t5).await;
    broker.publish_event("msg_s_4", &t4).await;
    broker.publish_event("msg_s_3", &t3).await;

    wait_for_users(
        &db.conn,
        &BTreeMap::from([
            ("user_s1".to_string(), row(Some("y@example.com"), "One", 5)),
            ("user_s2".to_string(), row(Some("x@example.com"), "Two", 4)),
        ]),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(broker.count(&broker.topology.dead_queue()).await, 0);
    worker.stop().await;
}

#[tokio::test]
async fn a_stale_event_wanting_an_address_a_newer_row_holds_waits_for_its_own_newer_event() {
    let db = TestDb::empty().await;
    let broker = TestBroker::new().await;
    let worker = spawn_worker(&db, &broker, &[]).await;
    // Clerk timeline: u1 signs up with x (1), moves to w (2); u2 then signs up with x (3).
    user_created("user_h2", Some("x@example.com"), "Two", 3)
        .publish(&broker, "msg_h_3")
        .await;
    wait_for_users(
        &db.conn,
        &BTreeMap::from([("user_h2".to_string(), row(Some("x@example.com"), "Two", 3))]),
        Duration::from_secs(20),
    )
    .await;
    // u1's creation arrives while x belongs to the newer u2 row: it must be retried, not failed.
    user_created("user_h1", Some("x@example.com"), "One", 1)
        .publish(&broker, "msg_h_1")
        .await;
    // It fails for now (x belongs to a newer row) and goes to a retry queue.
    testkit::eventually(Duration::from_secs(20), "the creation retried", || async {
        worker
            .metrics()
            .await
            .contains(r#"clerk_sync_events_total{event_type="user.created",outcome="retried"}"#)
            .then_some(())
    })
    .await;
    user_updated("user_h1", Some("w@example.com"), "One", 2)
        .publish(&broker, "msg_h_2")
        .await;

    wait_for_users(
        &db.conn,
        &BTreeMap::from([
            ("user_h1".to_string(), row(Some("w@example.com"), "One", 2)),
            ("user_h2".to_string(), row(Some("x@example.com"), "Two", 3)),
        ]),
        Duration::from_secs(30),
    )
    .await;
    testkit::eventually(
        Duration::from_secs(20),
        "the retried creation settled",
        || async {
            (scalar(&db.conn, "SELECT count(*) FROM processed_events").await == 3).then_some(())
        },
    )
    .await;
    assert_eq!(broker.count(&broker.topology.dead_queue()).await, 0);
    worker.stop().await;
}

#[tokio::test]
async fn events_after_a_delete_never_resurrect_the_user() {
    let db = TestDb::empty().await;
    let broker = TestBroker::new().await;
    let worker = spawn_worker(&db, &broker, &[]).await;
    let created = user_created("user_d1", Some("d1@example.com"), "Gone", 10).body();
    broker.publish_event("msg_d_1", &created).await;
    wait_for_users(
        &db.conn,
        &BTreeMap::from([(
            "user_d1".to_string(),
            row(Some("d1@example.com"), "Gone", 10),
        )]),
        Duration::from_secs(20),
    )
    .await;

    broker
        .publish_event("msg_d_2", &events::user_deleted("user_d1", 30))
        .await;
    wait_for_users(&db.conn, &BTreeMap::new(), Duration::from_secs(20)).await;
    // A late update (newer version than anything seen) and a replayed creation (new Svix id, as a
    // dashboard replay would have).
    user_updated("user_d1", Some("d1@example.com"), "Back", 99)
        .publish(&broker, "msg_d_3")
        .await;
    broker.publish_event("msg_d_4", &created).await;

    testkit::eventually(Duration::from_secs(20), "all four settled", || async {
        (scalar(&db.conn, "SELECT count(*) FROM processed_events").await == 4).then_some(())
    })
    .await;
    assert!(users(&db.conn).await.is_empty());
    assert_eq!(
        scalar(&db.conn, "SELECT count(*) FROM deleted_users").await,
        1
    );
    let tombstone_has_no_id = scalar(
        &db.conn,
        "SELECT count(*) FROM deleted_users WHERE clerk_user_id_sha256 LIKE '%user_d1%'",
    )
    .await;
    assert_eq!(
        tombstone_has_no_id, 0,
        "the tombstone holds no Clerk id in clear"
    );
    worker.stop().await;
}
