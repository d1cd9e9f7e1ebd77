//! Traces: one webhook followed from the ingress through RabbitMQ to the database, in both
//! services' spans and JSON log lines; every delivery of an event that failed, was dead-lettered
//! and replayed linked to its first publish; a collector that is down costs only counted drops;
//! and nothing secret or personal is exported. The ingress and the worker run as processes of
//! their own (each its own tracing settings), exporting to the test kit's OTLP receiver.

use std::{collections::HashMap, time::Duration};

use testkit::{
    SECRET, TestBroker, TestDb,
    events::{UserState, google_calendar_account, user_event, user_event_with_accounts},
    eventually,
    fake_clerk::{FakeClerk, SECRET_KEY},
    now_secs,
    otlp::{OtlpReceiver, RecordedSpan, SpanKind, SpanStatus, assert_nothing_private},
    process::{ServiceProcess, free_port, sibling_binary},
    svix_headers,
};

use crate::helpers::{scalar, worker_cli, worker_settings};

const TOKEN_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// What every traced service gets: JSON logs, the receiver, and a short batch delay.
fn tracing_settings(endpoint: &str) -> Vec<(String, String)> {
    vec![
        ("LOG_FORMAT".into(), "json".into()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
    ]
}

struct Ingress {
    process: ServiceProcess,
    port: u16,
}

/// The ingress binary on a free port; `RUST_LOG` lets it write its line per accepted webhook.
async fn start_ingress(broker: &TestBroker, endpoint: &str) -> Ingress {
    let port = free_port();
    let mut settings = broker.settings();
    settings.extend(tracing_settings(endpoint));
    settings.push(("CLERK_WEBHOOK_SECRET".into(), SECRET.into()));
    settings.push(("INGRESS_ADDR".into(), format!("127.0.0.1:{port}")));
    settings.push(("RUST_LOG".into(), "info,ingress=debug".into()));
    let binary = sibling_binary(env!("CARGO_BIN_EXE_worker"), "ingress");
    let mut process = ServiceProcess::start(&binary, &[], settings);
    process
        .wait_ready(&format!("http://127.0.0.1:{port}/readyz"))
        .await;
    Ingress { process, port }
}

struct Worker {
    process: ServiceProcess,
    port: u16,
}

async fn start_worker(mut settings: HashMap<String, String>, endpoint: &str) -> Worker {
    let port = free_port();
    settings.extend(tracing_settings(endpoint));
    settings.insert("WORKER_ADDR".into(), format!("127.0.0.1:{port}"));
    let mut process =
        ServiceProcess::start(env!("CARGO_BIN_EXE_worker").as_ref(), &["run"], settings);
    process
        .wait_ready(&format!("http://127.0.0.1:{port}/readyz"))
        .await;
    Worker { process, port }
}

async fn post_webhook(port: u16, svix_id: &str, body: &[u8], traceparent: Option<&str>) -> u16 {
    let mut request = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/webhooks/clerk"))
        .headers(svix_headers(SECRET, svix_id, now_secs(), body))
        .body(body.to_vec());
    if let Some(context) = traceparent {
        request = request.header("traceparent", context);
    }
    request.send().await.unwrap().status().as_u16()
}

async fn user_count(db: &TestDb, clerk_user_id: &str) -> i64 {
    scalar(
        &db.conn,
        &format!("SELECT count(*) FROM users WHERE clerk_user_id = '{clerk_user_id}'"),
    )
    .await
}

fn one<'a>(
    spans: &'a [RecordedSpan],
    what: &str,
    test: impl Fn(&RecordedSpan) -> bool,
) -> &'a RecordedSpan {
    let found: Vec<&RecordedSpan> = spans.iter().filter(|s| test(s)).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {what}, found {}: {:#?}",
        found.len(),
        spans.iter().map(RecordedSpan::summary).collect::<Vec<_>>()
    );
    found[0]
}

fn is_worker_consumer(span: &RecordedSpan) -> bool {
    span.service_name == "clerk-sync-worker" && span.kind == SpanKind::Consumer
}

/// The JSON log lines of `output` that carry `trace_id`.
fn lines_with_trace(output: &str, trace_id: &str) -> Vec<serde_json::Value> {
    output
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["trace_id"] == trace_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_webhook_is_one_trace_from_the_ingress_through_the_broker_to_the_database() {
    let receiver = OtlpReceiver::start().await;
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let ingress = start_ingress(&broker, &receiver.endpoint()).await;
    let worker = start_worker(worker_settings(&db, &broker, &[]), &receiver.endpoint()).await;

    // The caller (a proxy in front of the ingress, say) sent a trace context: it is continued.
    let caller_trace = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let body = user_event(
        "user.created",
        &UserState {
            id: "user_traced".into(),
            email: Some("ada.traced@example.com".into()),
            first_name: Some("Adatraced".into()),
            last_name: Some("Lovelacetraced".into()),
            updated_at: 1_000,
        },
    );
    let status = post_webhook(
        ingress.port,
        "msg_traced_1",
        &body,
        Some(&format!("00-{caller_trace}-{caller_span}-01")),
    )
    .await;
    assert_eq!(status, 200);
    eventually(Duration::from_secs(30), "the user stored", || async {
        (user_count(&db, "user_traced").await == 1).then_some(())
    })
    .await;

    let spans = receiver
        .wait_for(
            |spans| {
                spans.iter().any(|s| s.kind == SpanKind::Server)
                    && spans.iter().any(is_worker_consumer)
                    && spans
                        .iter()
                        .any(|s| s.attribute("db.system.name") == Some("postgresql"))
            },
            Duration::from_secs(20),
        )
        .await
        .unwrap();

    let server = one(&spans, "ingress server span", |s| {
        s.kind == SpanKind::Server
    });
    assert_eq!(server.service_name, "clerk-sync-ingress");
    assert_eq!(server.name, "POST /webhooks/clerk");
    assert_eq!(server.trace_id, caller_trace);
    assert_eq!(server.parent_span_id.as_deref(), Some(caller_span));
    assert_eq!(server.attribute("http.request.method"), Some("POST"));
    assert_eq!(server.attribute("http.route"), Some("/webhooks/clerk"));
    assert_eq!(server.attribute("http.response.status_code"), Some("200"));
    assert_eq!(server.attribute("clerk_sync.svix_id"), Some("msg_traced_1"));
    assert_eq!(
        server.attribute("clerk_sync.event_type"),
        Some("user.created")
    );
    assert_eq!(server.attribute("clerk_sync.outcome"), Some("accepted"));

    // The worker's span continues the message's context and links to it.
    let consumer = one(&spans, "worker consumer span", is_worker_consumer);
    assert_eq!(consumer.trace_id, caller_trace);
    assert!(consumer.is_child_of(server), "{}", consumer.summary());
    assert!(
        consumer
            .links
            .iter()
            .any(|l| l.trace_id == server.trace_id && l.span_id == server.span_id),
        "no link to the ingress's span: {}",
        consumer.summary()
    );
    assert_eq!(consumer.attribute("messaging.system"), Some("rabbitmq"));
    assert_eq!(
        consumer.attribute("messaging.destination.name"),
        Some(broker.topology.main_queue().as_str())
    );
    assert_eq!(
        consumer.attribute("messaging.message.id"),
        Some("msg_traced_1")
    );
    assert_eq!(
        consumer.attribute("clerk_sync.event_type"),
        Some("user.created")
    );

    let database = one(&spans, "worker database span", |s| {
        s.service_name == "clerk-sync-worker" && s.attribute("db.system.name") == Some("postgresql")
    });
    assert!(database.is_child_of(consumer), "{}", database.summary());
    assert_eq!(database.kind, SpanKind::Client);
    assert_eq!(database.status, SpanStatus::Unset);

    // Both services' log lines of this webhook carry the one trace id.
    let ingress_log = ingress.process.stop();
    let worker_log = worker.process.stop();
    let ingress_lines = lines_with_trace(&ingress_log, caller_trace);
    assert!(
        ingress_lines
            .iter()
            .any(|l| l["message"] == "webhook accepted" && l["svix_id"] == "msg_traced_1"),
        "no ingress line with the trace id:\n{ingress_log}"
    );
    assert!(ingress_lines.iter().all(|l| l["span_id"].is_string()));
    assert!(
        !lines_with_trace(&worker_log, caller_trace).is_empty(),
        "no worker line with the trace id:\n{worker_log}"
    );

    assert_nothing_private(
        &receiver.spans(),
        &[
            SECRET,
            SECRET.trim_start_matches("whsec_"),
            "ada.traced@example.com",
            "Adatraced",
            "Lovelacetraced",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_delivery_of_a_retried_dead_lettered_and_replayed_event_links_to_its_first_publish() {
    let receiver = OtlpReceiver::start().await;
    let clerk = FakeClerk::start().await;
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let user = "user_replayed";
    let token = "ya29.replayed-access-token-never-exported";
    clerk.set_token(
        user,
        "oauth_google",
        token,
        None,
        "g-replayed",
        "eac_replayed",
    );
    // Clerk fails the token fetch twice: the first delivery and its retry.
    clerk.fail_tokens(user, "oauth_google", 503, "service_unavailable", 2);
    let url = clerk.url();
    let settings = worker_settings(
        &db,
        &broker,
        &[
            ("CLERK_SECRET_KEY", SECRET_KEY),
            ("CLERK_API_URL", &url),
            ("TOKEN_ENCRYPTION_KEY", TOKEN_KEY),
            ("MAX_ATTEMPTS", "2"),
            ("IN_PROCESS_RETRIES", "0"),
        ],
    );
    let worker = start_worker(settings.clone(), &receiver.endpoint()).await;

    let first_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let first_span = "00f067aa0ba902b7";
    let body = user_event_with_accounts(
        "user.created",
        &UserState {
            id: user.into(),
            email: Some("grace.replayed@example.com".into()),
            first_name: Some("Gracereplayed".into()),
            last_name: Some("Hopperreplayed".into()),
            updated_at: 2_000,
        },
        vec![google_calendar_account("g-replayed", "eac_replayed")],
    );
    broker
        .publish_event_with_headers(
            "msg_replayed_1",
            &body,
            &[("traceparent", &format!("00-{first_trace}-{first_span}-01"))],
        )
        .await;
    eventually(
        Duration::from_secs(30),
        "the event dead-lettered",
        || async { (broker.count(&broker.topology.dead_queue()).await == 1).then_some(()) },
    )
    .await;
    assert_eq!(user_count(&db, user).await, 0);

    let (ok, out, err) = worker_cli(settings, &["dlq", "replay", "--id", "msg_replayed_1"]);
    assert!(ok, "{out}{err}");
    eventually(
        Duration::from_secs(30),
        "the replayed event applied",
        || async { (user_count(&db, user).await == 1).then_some(()) },
    )
    .await;

    let spans = receiver
        .wait_for(
            |spans| {
                spans
                    .iter()
                    .filter(|s| is_worker_consumer(s))
                    .filter(|s| s.attribute("clerk_sync.outcome").is_some())
                    .count()
                    >= 3
            },
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    let mut deliveries: Vec<&RecordedSpan> =
        spans.iter().filter(|s| is_worker_consumer(s)).collect();
    deliveries.sort_by_key(|s| s.start_time_unix_nano);
    let outcomes: Vec<(Option<&str>, Option<&str>)> = deliveries
        .iter()
        .map(|s| {
            (
                s.attribute("clerk_sync.attempt"),
                s.attribute("clerk_sync.outcome"),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            (Some("1"), Some("retried")),
            (Some("2"), Some("dead_lettered")),
            (Some("1"), Some("applied")),
        ]
    );
    for delivery in &deliveries {
        assert_eq!(delivery.trace_id, first_trace, "{}", delivery.summary());
        assert_eq!(delivery.parent_span_id.as_deref(), Some(first_span));
        assert!(
            delivery
                .links
                .iter()
                .any(|l| l.trace_id == first_trace && l.span_id == first_span),
            "{}",
            delivery.summary()
        );
    }
    assert_eq!(deliveries[0].status, SpanStatus::Error);
    assert_eq!(deliveries[2].status, SpanStatus::Unset);

    // Each call to Clerk is a client span of its delivery and carried its context to Clerk.
    let calls: Vec<&RecordedSpan> = spans
        .iter()
        .filter(|s| {
            s.kind == SpanKind::Client
                && s.attribute("url.template")
                    == Some("/v1/users/{user_id}/oauth_access_tokens/{provider}")
        })
        .collect();
    assert!(calls.len() >= 3, "{calls:#?}");
    for call in &calls {
        assert!(
            deliveries.iter().any(|d| call.is_child_of(d)),
            "{}",
            call.summary()
        );
    }
    assert!(
        calls
            .iter()
            .any(|c| c.attribute("http.response.status_code") == Some("503")
                && c.status == SpanStatus::Error)
    );
    let sent = clerk.traceparents();
    assert!(sent.len() >= 3, "{sent:?}");
    for (_, context) in &sent {
        let span_id = &context[36..52];
        assert!(
            context.starts_with(&format!("00-{first_trace}-")),
            "{context}"
        );
        assert!(calls.iter().any(|c| c.span_id == span_id), "{context}");
    }

    // The dead letter's trace id is the first publish's.
    worker.process.stop();
    assert_nothing_private(
        &receiver.spans(),
        &[
            token,
            SECRET_KEY,
            TOKEN_KEY,
            "grace.replayed@example.com",
            "Gracereplayed",
            "Hopperreplayed",
            "ada@example.com",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_one_span_linked_to_each_of_its_events() {
    let receiver = OtlpReceiver::start().await;
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    // Queued before the worker starts: it takes them in one batch.
    let mut contexts = Vec::new();
    for i in 0..5 {
        let trace = format!("{:032x}", 0xabc0_0000_u64 + i);
        let span = format!("{:016x}", 0x1000 + i);
        let body = user_event(
            "user.created",
            &UserState {
                id: format!("user_batched_{i}"),
                email: None,
                first_name: Some("Batched".into()),
                last_name: None,
                updated_at: 1_000,
            },
        );
        broker
            .publish_event_with_headers(
                &format!("msg_batched_{i}"),
                &body,
                &[("traceparent", &format!("00-{trace}-{span}-01"))],
            )
            .await;
        contexts.push((trace, span));
    }
    let worker = start_worker(worker_settings(&db, &broker, &[]), &receiver.endpoint()).await;
    eventually(Duration::from_secs(30), "the users stored", || async {
        (scalar(&db.conn, "SELECT count(*) FROM users").await == 5).then_some(())
    })
    .await;
    let linked = |spans: &[RecordedSpan], (trace, span): &(String, String)| {
        spans.iter().filter(|s| is_worker_consumer(s)).any(|s| {
            s.links
                .iter()
                .any(|l| &l.trace_id == trace && &l.span_id == span)
        })
    };
    let spans = receiver
        .wait_for(
            |spans| contexts.iter().all(|c| linked(spans, c)),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    let batch = spans
        .iter()
        .filter(|s| is_worker_consumer(s))
        .max_by_key(|s| s.links.len())
        .unwrap();
    assert!(batch.links.len() >= 2, "not batched: {}", batch.summary());
    assert_eq!(
        batch.attribute("messaging.batch.message_count"),
        Some(batch.links.len().to_string().as_str())
    );
    // A span of several events starts a trace of its own: none of them is its parent.
    assert_eq!(batch.parent_span_id, None);
    assert!(contexts.iter().all(|(trace, _)| trace != &batch.trace_id));
    assert!(
        spans
            .iter()
            .any(|s| s.name == "apply batch" && s.is_child_of(batch)),
        "no transaction span under the batch's span"
    );
    worker.process.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_collector_down_webhooks_are_still_stored_and_the_dropped_spans_are_counted() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    // Nothing listens there.
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let ingress = start_ingress(&broker, &endpoint).await;
    let worker = start_worker(worker_settings(&db, &broker, &[]), &endpoint).await;

    for i in 0..3 {
        let body = user_event(
            "user.created",
            &UserState {
                id: format!("user_dark_{i}"),
                email: None,
                first_name: Some("Dark".into()),
                last_name: None,
                updated_at: 1_000,
            },
        );
        assert_eq!(
            post_webhook(ingress.port, &format!("msg_dark_{i}"), &body, None).await,
            200
        );
    }
    eventually(Duration::from_secs(30), "the users stored", || async {
        (scalar(&db.conn, "SELECT count(*) FROM users").await == 3).then_some(())
    })
    .await;

    let dropped = |port: u16, at_least: f64| async move {
        let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let value: f64 = text
            .lines()
            .find(|l| {
                l.starts_with("clerk_sync_trace_spans_dropped_total{reason=\"export_failed\"}")
            })?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()?;
        (value >= at_least).then_some(value)
    };
    // A span a webhook (its server span), all of them dropped.
    eventually(Duration::from_secs(20), "ingress drops counted", || {
        dropped(ingress.port, 3.0)
    })
    .await;
    eventually(Duration::from_secs(20), "worker drops counted", || {
        dropped(worker.port, 1.0)
    })
    .await;

    let ingress_log = ingress.process.stop();
    assert!(
        ingress_log.contains("traces not exported"),
        "no warning about the collector:\n{ingress_log}"
    );
    worker.process.stop();
}
