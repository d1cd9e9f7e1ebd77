use broker::{headers, lapin::types::AMQPValue};
use testkit::{SECRET, SECRET_2, events, now_secs, svix_headers};

use crate::helpers::spawn_app;

fn sample_body() -> Vec<u8> {
    events::user_event(
        "user.created",
        &events::UserState {
            id: "user_2abcSYNTHuser01".into(),
            email: Some("ada@example.com".into()),
            first_name: Some("Ada".into()),
            last_name: Some("Synth".into()),
            updated_at: 1_735_689_600_100,
        },
    )
}

fn header_str(value: Option<&AMQPValue>) -> Option<String> {
    match value? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

#[tokio::test]
async fn a_signed_event_is_published_byte_identical_with_its_id_and_svix_headers() {
    let app = spawn_app(&[]).await;
    app.wait_ready().await;
    // Whitespace and key order must survive: the worker and anyone re-verifying see the raw bytes.
    let mut body = sample_body();
    body.extend_from_slice(b"  \n");
    let ts = now_secs();
    let sent = svix_headers(SECRET, "msg_byteexact01", ts, &body);

    let response = app.post_webhook(sent.clone(), body.clone()).await;

    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["svix_id"], "msg_byteexact01");
    let messages = app.broker.drain(&app.main_queue()).await;
    assert_eq!(messages.len(), 1);
    let delivery = &messages[0].delivery;
    assert_eq!(delivery.data, body);
    assert_eq!(
        delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("msg_byteexact01")
    );
    assert_eq!(delivery.properties.delivery_mode(), &Some(2));
    let table = delivery.properties.headers().clone().unwrap();
    let inner = table.inner();
    assert_eq!(
        header_str(inner.get(headers::SVIX_ID)).as_deref(),
        Some("msg_byteexact01")
    );
    assert_eq!(
        header_str(inner.get(headers::SVIX_TIMESTAMP)),
        Some(ts.to_string())
    );
    assert_eq!(
        header_str(inner.get(headers::SVIX_SIGNATURE)).as_deref(),
        sent.get("svix-signature").unwrap().to_str().ok()
    );
    app.stop().await;
}

#[tokio::test]
async fn a_delivery_signed_with_the_rotated_second_secret_is_accepted_on_both_paths() {
    let app = spawn_app(&[]).await;
    app.wait_ready().await;
    let body = sample_body();

    let first = app
        .post_webhook(
            svix_headers(SECRET_2, "msg_rotated01", now_secs(), &body),
            body.clone(),
        )
        .await;
    let second = app
        .post_to(
            "/api/webhooks/clerk",
            svix_headers(SECRET_2, "msg_rotated02", now_secs(), &body),
            body.clone(),
        )
        .await;

    assert_eq!(first.status(), 200);
    assert_eq!(second.status(), 200);
    assert_eq!(app.broker.drain(&app.main_queue()).await.len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn bad_requests_get_the_contract_status_and_nothing_is_published() {
    let app = spawn_app(&[]).await;
    app.wait_ready().await;
    let body = sample_body();
    let now = now_secs();

    // Missing headers: 400.
    let mut missing = svix_headers(SECRET, "msg_bad1", now, &body);
    missing.remove("svix-signature");
    assert_eq!(app.post_webhook(missing, body.clone()).await.status(), 400);
    // Wrong signature (signed with an unknown secret): 401.
    let wrong = svix_headers(
        "whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldA==",
        "msg_bad2",
        now,
        &body,
    );
    assert_eq!(app.post_webhook(wrong, body.clone()).await.status(), 401);
    // Tampered body: 401.
    let signed = svix_headers(SECRET, "msg_bad3", now, &body);
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    assert_eq!(app.post_webhook(signed, tampered).await.status(), 401);
    // Six minutes old, and six minutes ahead: 401.
    let old = svix_headers(SECRET, "msg_bad4", now - 360, &body);
    assert_eq!(app.post_webhook(old, body.clone()).await.status(), 401);
    let ahead = svix_headers(SECRET, "msg_bad5", now + 360, &body);
    assert_eq!(app.post_webhook(ahead, body.clone()).await.status(), 401);
    // Timestamp that is not a number: 400.
    let mut not_a_number = svix_headers(SECRET, "msg_bad6", now, &body);
    not_a_number.insert("svix-timestamp", "yesterday".parse().unwrap());
    assert_eq!(
        app.post_webhook(not_a_number, body.clone()).await.status(),
        400
    );
    // Oversized body (limit 4096 in tests), declared by Content-Length: 413.
    let big = vec![b' '; 5000];
    let big_headers = svix_headers(SECRET, "msg_bad7", now, &big);
    assert_eq!(
        app.post_webhook(big_headers.clone(), big.clone())
            .await
            .status(),
        413
    );
    // Oversized chunked body (no Content-Length): 413 as soon as the limit is passed.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..10).map(|_| Ok(vec![b' '; 1000])).collect();
    let streamed = app
        .client
        .post(format!("{}/webhooks/clerk", app.address))
        .headers(big_headers)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 413);
    // Wrong method, wrong path.
    assert_eq!(app.get("/webhooks/clerk").await.status(), 405);
    let elsewhere = svix_headers(SECRET, "msg_bad8", now, &body);
    assert_eq!(
        app.post_to("/webhooks/other", elsewhere, body.clone())
            .await
            .status(),
        404
    );

    assert_eq!(app.broker.count(&app.main_queue()).await, 0);
    app.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics_answer_and_request_ids_are_echoed() {
    let app = spawn_app(&[]).await;
    app.wait_ready().await;
    let body = sample_body();
    assert_eq!(app.post_signed("msg_metrics01", &body).await.status(), 200);

    let health = app
        .client
        .get(format!("{}/healthz", app.address))
        .header("x-request-id", "req-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.headers()["x-request-id"], "req-abc-123");
    assert_eq!(app.get("/readyz").await.status(), 200);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("clerk_sync_webhooks_received_total{outcome=\"accepted\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("clerk_sync_publish_duration_seconds_count 1"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected_after_the_header_timeout() {
    let app = spawn_app(&[("INGRESS_HEADER_TIMEOUT", "1s")]).await;
    let (closed, after) =
        testkit::slow_client_is_disconnected(&app.address, std::time::Duration::from_secs(10))
            .await;
    assert!(closed, "the slow client was not disconnected");
    assert!(after < std::time::Duration::from_secs(5), "took {after:?}");
    app.stop().await;
}
