//! A panic while handling an event neither stalls the consumer nor loses events: inside the
//! apply path it is a failure like any other (retried, then dead-lettered); anywhere else the
//! handler's unsettled deliveries go back to the queue and the consumer session restarts.

use std::{collections::BTreeMap, time::Duration};

use store::faults::{Point, panic_at};
use testkit::{TestBroker, TestDb, eventually};

use crate::helpers::{Row, row, scalar, spawn_worker, user_created, wait_for_users};

fn user(n: usize) -> (String, Vec<u8>, Row) {
    let id = format!("user_panic_{n}");
    let body = user_created(&id, None, "Healthy", 5).body();
    (id, body, row(None, "Healthy", 5))
}

#[tokio::test]
async fn an_event_whose_apply_always_panics_is_dead_lettered_and_the_rest_flows() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::with_delays(vec![Duration::from_millis(100)]).await;
    let poison = testkit::unique("msg_apply_panic");
    panic_at(Point::Apply, &poison, usize::MAX);
    let worker = spawn_worker(
        &db,
        &broker,
        &[
            ("MAX_ATTEMPTS", "3"),
            ("IN_PROCESS_RETRIES", "1"),
            ("WORKER_PREFETCH", "8"),
            ("WORKER_BATCH_SIZE", "4"),
        ],
    )
    .await;

    user_created("user_poisoned", None, "P", 1)
        .publish(&broker, &poison)
        .await;
    let mut expected = BTreeMap::new();
    for n in 0..30 {
        let (id, body, row) = user(n);
        broker
            .publish_event(&format!("{poison}_ok_{n}"), &body)
            .await;
        expected.insert(id, row);
    }

    wait_for_users(&db.conn, &expected, Duration::from_secs(60)).await;
    eventually(
        Duration::from_secs(30),
        "the panicking event dead-lettered",
        || async { (broker.count(&broker.topology.dead_queue()).await == 1).then_some(()) },
    )
    .await;
    let letters = broker.drain(&broker.topology.dead_queue()).await;
    let headers = letters[0].delivery.properties.headers().as_ref();
    let reason = broker::headers::get_str(headers, broker::headers::REASON).unwrap_or_default();
    assert!(reason.contains("worker_panicked"), "{reason}");
    assert_eq!(
        broker::headers::get_i64(headers, broker::headers::ATTEMPTS),
        Some(3)
    );
    let ready = reqwest::get(format!("http://127.0.0.1:{}/readyz", worker.port))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    worker.stop().await;
}

#[tokio::test]
async fn a_handler_that_dies_gives_its_deliveries_back_and_the_consumer_goes_on() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let dying = testkit::unique("msg_settle_panic");
    // The first time its batch commits, the task settling it dies (outside the apply path).
    panic_at(Point::Settle, &dying, 1);
    // A small prefetch: deliveries a dead handler kept unsettled would hold all of it, and
    // nothing after them would ever be delivered.
    let worker = spawn_worker(
        &db,
        &broker,
        &[
            ("WORKER_PREFETCH", "4"),
            ("WORKER_BATCH_SIZE", "4"),
            ("WORKER_CONCURRENCY", "1"),
        ],
    )
    .await;

    let mut expected = BTreeMap::new();
    let (id, body, row) = user(1000);
    broker.publish_event(&dying, &body).await;
    expected.insert(id, row);
    for n in 0..40 {
        let (id, body, row) = user(n);
        broker
            .publish_event(&format!("{dying}_ok_{n}"), &body)
            .await;
        expected.insert(id, row);
    }

    wait_for_users(&db.conn, &expected, Duration::from_secs(60)).await;
    eventually(
        Duration::from_secs(30),
        "every event settled and acked",
        || async {
            let processed = scalar(&db.conn, "SELECT count(*) FROM processed_events").await;
            (processed == 41 && broker.count(&broker.topology.main_queue()).await == 0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(broker.count(&broker.topology.dead_queue()).await, 0);
    // The session came back: the worker is ready and consuming.
    eventually(Duration::from_secs(15), "ready again", || async {
        let ready = reqwest::get(format!("http://127.0.0.1:{}/readyz", worker.port))
            .await
            .ok()?;
        (ready.status() == 200).then_some(())
    })
    .await;
    worker.stop().await;
}
