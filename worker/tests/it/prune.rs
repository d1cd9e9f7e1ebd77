//! Pruning of expired Svix ids: in bounded batches, by one worker at a time, fresh ids kept.

use std::time::Duration;

use sea_orm::ConnectionTrait;
use testkit::TestDb;
use worker::consume::prune::{PruneOptions, prune_expired};

use crate::helpers::scalar;

const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

/// `expired` ids processed ten days ago and `fresh` ones an hour ago.
async fn processed(db: &TestDb, expired: i64, fresh: i64) {
    db.conn
        .execute_unprepared(&format!(
            "INSERT INTO processed_events (svix_id, event_type, processed_at) \
               SELECT 'msg_old_' || n, 'user.updated', now() - interval '10 days' \
               FROM generate_series(1, {expired}) AS n; \
             INSERT INTO processed_events (svix_id, event_type, processed_at) \
               SELECT 'msg_new_' || n, 'user.updated', now() - interval '1 hour' \
               FROM generate_series(1, {fresh}) AS n"
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn expired_ids_go_in_bounded_batches_and_fresh_ones_stay() {
    let db = TestDb::migrated().await;
    processed(&db, 12_345, 100).await;
    let options = PruneOptions {
        batch_size: 5_000,
        pause: Duration::ZERO,
        pause_ratio: 0,
    };
    let report = prune_expired(&db.pool, WEEK, options).await.unwrap();
    assert_eq!(report.deleted, 12_345);
    assert_eq!(report.batches, 3, "5,000 + 5,000 + 2,345");
    assert!(!report.skipped);
    assert_eq!(
        scalar(&db.conn, "SELECT count(*) FROM processed_events").await,
        100
    );
    assert_eq!(
        scalar(
            &db.conn,
            "SELECT count(*) FROM processed_events WHERE svix_id LIKE 'msg_new_%'"
        )
        .await,
        100
    );
    // Nothing left: one empty batch.
    let again = prune_expired(&db.pool, WEEK, options).await.unwrap();
    assert_eq!((again.deleted, again.batches), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_pruning_at_once_delete_each_id_once_and_keep_the_fresh_ones() {
    let db = TestDb::migrated().await;
    processed(&db, 20_000, 50).await;
    let options = PruneOptions {
        batch_size: 1_000,
        pause: Duration::from_millis(1),
        pause_ratio: 0,
    };
    let other = store::pool::connect_database(&db.service_url(), 2, db.pooler())
        .await
        .unwrap();
    let (a, b) = tokio::join!(
        prune_expired(&db.pool, WEEK, options),
        prune_expired(&other, WEEK, options)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.deleted + b.deleted, 20_000, "{a:?} {b:?}");
    assert_eq!(
        scalar(&db.conn, "SELECT count(*) FROM processed_events").await,
        50
    );
}

#[tokio::test]
async fn a_worker_leaves_the_round_to_the_one_holding_the_lock() {
    let db = TestDb::migrated().await;
    processed(&db, 10, 0).await;
    let holder = store::pool::connect_database(&db.service_url(), 1, db.pooler())
        .await
        .unwrap();
    let txn = sea_orm::TransactionTrait::begin(&holder).await.unwrap();
    txn.execute_unprepared(&format!(
        "SELECT pg_advisory_xact_lock({})",
        worker::consume::prune::PRUNE_LOCK_KEY
    ))
    .await
    .unwrap();
    let report = prune_expired(&db.pool, WEEK, PruneOptions::default())
        .await
        .unwrap();
    assert!(report.skipped && report.deleted == 0, "{report:?}");
    txn.rollback().await.unwrap();
    let report = prune_expired(&db.pool, WEEK, PruneOptions::default())
        .await
        .unwrap();
    assert_eq!(report.deleted, 10);
}
