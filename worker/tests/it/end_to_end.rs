use std::time::Duration;

use testkit::{SECRET, TestBroker, TestDb, eventually, now_secs, svix_headers};

use crate::helpers::{scalar, spawn_ingress, spawn_worker, user_created, users};

#[tokio::test]
async fn a_signed_user_created_sent_to_the_ingress_lands_in_users_with_the_right_fields() {
    let db = TestDb::empty().await;
    let broker = TestBroker::new().await;
    let worker = spawn_worker(&db, &broker, &[]).await;
    let ingress = spawn_ingress(broker.settings()).await;
    let body = user_created(
        "user_2abcSYNTHuser01",
        Some("ada@example.com"),
        "Ada",
        1_735_689_600_100,
    )
    .body();

    let response = reqwest::Client::new()
        .post(ingress.webhook_url())
        .headers(svix_headers(SECRET, "msg_e2e_01", now_secs(), &body))
        .body(body)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    let rows = eventually(Duration::from_secs(20), "the user row", || async {
        let rows = users(&db.conn).await;
        (!rows.is_empty()).then_some(rows)
    })
    .await;
    let row = &rows["user_2abcSYNTHuser01"];
    assert_eq!(row.email.as_deref(), Some("ada@example.com"));
    assert_eq!(row.first_name.as_deref(), Some("Ada"));
    assert_eq!(row.last_name.as_deref(), Some("Synth"));
    assert_eq!(row.version, 1_735_689_600_100);
    assert_eq!(
        scalar(
            &db.conn,
            "SELECT count(*) FROM processed_events WHERE svix_id = 'msg_e2e_01'"
        )
        .await,
        1
    );
    ingress.stop().await;
    worker.stop().await;
}

#[tokio::test]
async fn duplicates_are_acked_without_effect_and_unknown_types_are_acked_and_counted() {
    let db = TestDb::empty().await;
    let broker = TestBroker::new().await;
    let worker = spawn_worker(&db, &broker, &[]).await;
    let v1 = user_created("user_dup", Some("dup@example.com"), "Dup", 10).body();
    let session =
        br#"{"type":"session.created","object":"event","data":{"id":"sess_1","object":"session"}}"#;

    broker.publish_event("msg_dup_1", &v1).await;
    broker.publish_event("msg_dup_1", &v1).await;
    broker.publish_event("msg_session_1", session).await;

    let metrics = eventually(Duration::from_secs(20), "three events settled", || async {
        let m = worker.metrics().await;
        (m.contains(r#"clerk_sync_events_total{event_type="user.created",outcome="duplicate"} 1"#)
            && m.contains(
                // Types the worker does not handle share one label value.
                r#"clerk_sync_events_total{event_type="other",outcome="ignored"} 1"#,
            ))
        .then_some(m)
    })
    .await;
    assert!(
        metrics
            .contains(r#"clerk_sync_events_total{event_type="user.created",outcome="applied"} 1"#),
        "{metrics}"
    );
    assert_eq!(users(&db.conn).await.len(), 1);
    assert_eq!(
        broker.total_ready().await,
        0,
        "nothing retried or dead-lettered"
    );
    worker.stop().await;
}
