//! The OTLP receiver decodes what an OTLP/HTTP exporter sends, refuses anything else without
//! recording it, says what it received when a wait times out, and stops when dropped.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value::Value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status},
};
use prost::Message;
use testkit::otlp::{OtlpReceiver, SpanKind, SpanStatus};

const TRACE: [u8; 16] = [
    0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36,
];
const TRACE_HEX: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const OTHER_TRACE: [u8; 16] = [0xab; 16];

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn text(value: &str) -> Value {
    Value::StringValue(value.into())
}

/// A trace of two spans of `service`: the ingress's server span and, below it, a consumer
/// span linked to a span of another trace, with attributes of every kind, an event and an error.
fn two_spans(service: &str) -> ExportTraceServiceRequest {
    let root = Span {
        trace_id: TRACE.to_vec(),
        span_id: vec![0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
        name: "POST /webhooks/clerk".into(),
        kind: span::SpanKind::Server as i32,
        attributes: vec![kv("http.response.status_code", Value::IntValue(202))],
        ..Span::default()
    };
    let child = Span {
        trace_id: TRACE.to_vec(),
        span_id: vec![1, 2, 3, 4, 5, 6, 7, 8],
        parent_span_id: root.span_id.clone(),
        trace_state: "vendor=x".into(),
        name: "clerk_sync.events process".into(),
        kind: span::SpanKind::Consumer as i32,
        start_time_unix_nano: 1_000,
        end_time_unix_nano: 2_000,
        attributes: vec![
            kv("messaging.message.id", text("msg_1")),
            kv("messaging.batch.message_count", Value::IntValue(3)),
            kv("retry", Value::BoolValue(true)),
            kv("ratio", Value::DoubleValue(0.5)),
            kv(
                "ids",
                Value::ArrayValue(ArrayValue {
                    values: vec![
                        AnyValue {
                            value: Some(text("a")),
                        },
                        AnyValue {
                            value: Some(Value::IntValue(2)),
                        },
                    ],
                }),
            ),
        ],
        links: vec![span::Link {
            trace_id: OTHER_TRACE.to_vec(),
            span_id: vec![0xcd; 8],
            attributes: vec![kv("messaging.message.id", text("msg_0"))],
            ..span::Link::default()
        }],
        events: vec![span::Event {
            name: "exception".into(),
            attributes: vec![kv("exception.message", text("database: timeout"))],
            ..span::Event::default()
        }],
        status: Some(Status {
            code: status::StatusCode::Error as i32,
            message: "database: timeout".into(),
        }),
        ..Span::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", text(service)),
                    kv("service.version", text("0.1.0")),
                ],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "clerk-sync".into(),
                    ..InstrumentationScope::default()
                }),
                spans: vec![root, child],
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

/// Posts `body` to `url`'s path as an exporter would: the status, content type and body.
async fn post(
    endpoint: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, String, Bytes) {
    let authority = endpoint.strip_prefix("http://").unwrap();
    let stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, content_type, body)
}

#[tokio::test]
async fn an_export_is_answered_as_a_collector_does_and_every_span_is_recorded_flattened() {
    let receiver = OtlpReceiver::start().await;

    let (status, content_type, body) = post(
        &receiver.endpoint(),
        "POST",
        "/v1/traces",
        "application/x-protobuf",
        two_spans("clerk-sync-worker").encode_to_vec(),
    )
    .await;

    assert_eq!(status, 200);
    assert_eq!(content_type, "application/x-protobuf");
    assert_eq!(
        ExportTraceServiceResponse::decode(body).unwrap(),
        ExportTraceServiceResponse::default()
    );
    let spans = receiver
        .wait_for(|spans| spans.len() == 2, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(receiver.requests(), 1);
    let (root, child) = (&spans[0], &spans[1]);
    assert_eq!(root.service_name, "clerk-sync-worker");
    assert_eq!(root.scope_name, "clerk-sync");
    assert_eq!(root.name, "POST /webhooks/clerk");
    assert_eq!(root.kind, SpanKind::Server);
    assert_eq!(root.trace_id, TRACE_HEX);
    assert_eq!(root.span_id, "00f067aa0ba902b7");
    assert_eq!(root.parent_span_id, None);
    assert_eq!(root.status, SpanStatus::Unset);
    assert_eq!(root.attribute("http.response.status_code"), Some("202"));
    assert_eq!(root.resource_attribute("service.version"), Some("0.1.0"));

    assert_eq!(child.kind, SpanKind::Consumer);
    assert!(child.is_child_of(root));
    assert_eq!(child.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
    assert_eq!(child.span_id, "0102030405060708");
    assert_eq!(child.trace_state, "vendor=x");
    assert_eq!(
        (child.start_time_unix_nano, child.end_time_unix_nano),
        (1_000, 2_000)
    );
    assert_eq!(
        child.attributes,
        [
            ("messaging.message.id", "msg_1"),
            ("messaging.batch.message_count", "3"),
            ("retry", "true"),
            ("ratio", "0.5"),
            ("ids", "a,2"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
    assert_eq!(child.links.len(), 1);
    assert_eq!(child.links[0].trace_id, "ab".repeat(16));
    assert_eq!(child.links[0].span_id, "cd".repeat(8));
    assert_eq!(
        child.links[0].attribute("messaging.message.id"),
        Some("msg_0")
    );
    assert_eq!(
        child
            .event("exception")
            .and_then(|e| e.attribute("exception.message")),
        Some("database: timeout")
    );
    assert_eq!(child.status, SpanStatus::Error);
    assert_eq!(child.status_message, "database: timeout");
}

#[tokio::test]
async fn anything_but_a_protobuf_export_is_refused_and_recorded_nowhere() {
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let export = two_spans("clerk-sync-worker").encode_to_vec();

    let json = post(
        &endpoint,
        "POST",
        "/v1/traces",
        "application/json",
        export.clone(),
    )
    .await;
    let path = post(
        &endpoint,
        "POST",
        "/v1/metrics",
        "application/x-protobuf",
        export,
    )
    .await;
    let method = post(
        &endpoint,
        "GET",
        "/v1/traces",
        "application/x-protobuf",
        Vec::new(),
    )
    .await;
    let garbage = post(
        &endpoint,
        "POST",
        "/v1/traces",
        "application/x-protobuf",
        b"\xff\xff\xff not protobuf".to_vec(),
    )
    .await;

    assert_eq!(json.0, 415);
    assert_eq!(path.0, 404);
    assert_eq!(method.0, 405);
    assert_eq!(garbage.0, 400);
    assert!(receiver.spans().is_empty());
    assert_eq!(receiver.requests(), 0);
    let rejected = receiver.rejected();
    assert_eq!(rejected.len(), 4, "{rejected:?}");
    assert!(
        rejected[0].starts_with("POST /v1/traces: 415") && rejected[0].contains("application/json"),
        "{rejected:?}"
    );
}

#[tokio::test]
async fn a_wait_that_times_out_lists_what_was_received() {
    let receiver = OtlpReceiver::start().await;
    post(
        &receiver.endpoint(),
        "POST",
        "/v1/traces",
        "application/x-protobuf",
        two_spans("clerk-sync-ingress").encode_to_vec(),
    )
    .await;

    let error = receiver
        .wait_for(
            |spans| spans.iter().any(|s| s.name == "never sent"),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();

    assert!(
        error.contains("received 2 span(s) in 1 export request(s)"),
        "{error}"
    );
    assert!(
        error.contains("clerk-sync-ingress: POST /webhooks/clerk (Server")
            && error.contains("clerk-sync-ingress: clerk_sync.events process (Consumer"),
        "{error}"
    );
}

#[tokio::test]
async fn a_dropped_receiver_stops_listening_and_closes_its_connections() {
    let receiver = OtlpReceiver::start().await;
    let authority = receiver
        .endpoint()
        .strip_prefix("http://")
        .unwrap()
        .to_owned();
    let mut open = tokio::net::TcpStream::connect(&authority).await.unwrap();

    drop(receiver);

    testkit::eventually(Duration::from_secs(5), "the port to close", || async {
        tokio::net::TcpStream::connect(&authority)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let mut buffer = [0_u8; 1];
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut open, &mut buffer),
    )
    .await
    .expect("the open connection is closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}
