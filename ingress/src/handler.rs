//! Routing and the webhook handler.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use broker::{
    EVENTS_ROUTING_KEY, Publisher, headers,
    lapin::{
        BasicProperties,
        types::{AMQPValue, FieldTable, LongString, ShortString},
    },
};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use prometheus_client::registry::Registry;
use serde_json::json;
use telemetry::{
    SharedRegistry,
    ops::{FullResponse, Readiness},
    traces::{self, DirectSpan, KeyValue},
};

use crate::{
    error::IngressError,
    metrics::{Metrics, Outcome},
    verify::{self, Secrets},
};

/// Shared by every request.
pub(crate) struct State {
    secrets: Secrets,
    pub(crate) publisher: Publisher,
    body_limit: usize,
    body_timeout: Duration,
    metrics: Metrics,
    registry: SharedRegistry,
    readiness: Readiness,
}

impl State {
    pub(crate) fn new(
        secrets: Secrets,
        publisher: Publisher,
        body_limit: usize,
        body_timeout: Duration,
    ) -> Self {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        traces::register_metrics(&mut registry);
        let ready = publisher.clone();
        Self {
            secrets,
            publisher,
            body_limit,
            body_timeout,
            metrics,
            registry: Arc::new(Mutex::new(registry)),
            readiness: Arc::new(move || ready.is_ready()),
        }
    }
}

/// Routes one request.
pub(crate) async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
    request_id: HeaderValue,
) -> FullResponse {
    let path = request.uri().path().to_owned();
    if let Some(response) =
        telemetry::ops::endpoints(request.method(), &path, &state.readiness, &state.registry)
    {
        return response;
    }
    let result = match path.as_str() {
        "/webhooks/clerk" | "/api/webhooks/clerk" if request.method() == Method::POST => {
            // A span per request only when traces are exported, made through OpenTelemetry's
            // API rather than a `tracing` span: at this rate the latter's machinery costs a
            // good part of a request (BENCHMARKS.md, *Tracing cost*). The log lines below carry
            // the ids themselves.
            let svix_id = verify::message_id(request.headers())
                .unwrap_or_default()
                .to_owned();
            let mut span = server_span(&path, &request, &svix_id);
            let result = accept(&state, request, &svix_id, &mut span).await;
            let outcome = match &result {
                Ok(_) => "accepted",
                Err(error) => error.code(),
            };
            let status = result
                .as_ref()
                .map_or_else(|e| e.status(), |()| StatusCode::OK);
            span.set_attributes(|| {
                [
                    KeyValue::new("http.response.status_code", i64::from(status.as_u16())),
                    KeyValue::new("clerk_sync.outcome", outcome),
                ]
            });
            if status.is_server_error() {
                span.set_error();
            }
            state
                .metrics
                .received
                .get_or_create(&Outcome { outcome })
                .inc();
            let request_id = request_id.to_str().unwrap_or_default();
            span.in_scope(|| match &result {
                // Debug: one line per accepted webhook costs a write per request at thousands
                // a second; the count is in the metrics, failures are logged at warn or error.
                Ok(()) => tracing::debug!(request_id, svix_id, "webhook accepted"),
                Err(error @ IngressError::BrokerUnavailable(cause)) => tracing::error!(
                    request_id,
                    svix_id,
                    error.cause_chain = ?cause,
                    error.message = %error,
                    "webhook not stored; answered 503"
                ),
                Err(error) => tracing::warn!(
                    request_id,
                    svix_id,
                    error.message = %error,
                    "webhook rejected"
                ),
            });
            result.map(|()| svix_id)
        }
        "/webhooks/clerk" | "/api/webhooks/clerk" => Err(IngressError::MethodNotAllowed),
        _ => Err(IngressError::NotFound),
    };
    match result {
        Ok(svix_id) => telemetry::ops::json(
            StatusCode::OK,
            &json!({ "status": "accepted", "svix_id": svix_id }),
        ),
        Err(error) => {
            let mut response = telemetry::ops::json(
                error.status(),
                &json!({ "error": error.code(), "message": error.public_message() }),
            );
            if matches!(error, IngressError::MethodNotAllowed) {
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            response
        }
    }
}

/// Verifies, then publishes with `svix_id` (the request's `svix-id`) as message id; `Ok` once
/// the broker confirmed.
async fn accept(
    state: &State,
    request: Request<Incoming>,
    svix_id: &str,
    span: &mut DirectSpan,
) -> Result<(), IngressError> {
    let (parts, body) = request.into_parts();
    // Cheap checks first: nothing is read from a request that is refused anyway.
    verify::check_headers_present(&parts.headers)?;
    if declared_length(&parts.headers).is_some_and(|len| len > state.body_limit as u64) {
        return Err(IngressError::TooLarge(state.body_limit));
    }
    let body = read_body(body, state.body_limit, state.body_timeout).await?;
    state.secrets.verify(&body, &parts.headers)?;

    if span.is_recording()
        && let Some(event_type) = event_type(&body)
    {
        span.set_attributes(|| [KeyValue::new("clerk_sync.event_type", event_type)]);
    }
    let properties = properties(&parts.headers, svix_id, span);
    let started = Instant::now();
    let published = state
        .publisher
        .publish(EVENTS_ROUTING_KEY, &body, properties)
        .await;
    published?;
    state
        .metrics
        .publish_seconds
        .observe(started.elapsed().as_secs_f64());
    Ok(())
}

/// The server span of one delivery (OpenTelemetry HTTP server conventions), continuing the
/// caller's `traceparent` if it sent one; no span when traces are off.
fn server_span(route: &str, request: &Request<Incoming>, svix_id: &str) -> DirectSpan {
    if !traces::enabled() {
        return DirectSpan::NONE;
    }
    let (name, route) = if route == "/api/webhooks/clerk" {
        ("POST /api/webhooks/clerk", "/api/webhooks/clerk")
    } else {
        ("POST /webhooks/clerk", "/webhooks/clerk")
    };
    let mut span = DirectSpan::server(name, &traces::extract_http(request.headers()));
    span.set_attributes(|| {
        [
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("http.route", route),
            KeyValue::new("url.scheme", "http"),
            KeyValue::new("clerk_sync.svix_id", svix_id.to_owned()),
        ]
    });
    span
}

/// The event's `type`, for the span (read only when traces are on).
fn event_type(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Typed<'a> {
        #[serde(borrow, rename = "type")]
        kind: std::borrow::Cow<'a, str>,
    }
    serde_json::from_slice::<Typed<'_>>(body)
        .ok()
        .map(|t| t.kind.into_owned())
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads at most `limit` bytes within `timeout`, stopping as soon as the limit is passed.
async fn read_body(body: Incoming, limit: usize, timeout: Duration) -> Result<Bytes, IngressError> {
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(IngressError::BodyTimeout(timeout)),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) => {
            if error
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(IngressError::TooLarge(limit))
            } else {
                Err(IngressError::BodyRead(error.to_string()))
            }
        }
    }
}

/// AMQP properties: the Svix id as message id, the Svix headers kept as AMQP headers, and the
/// server span's context (`traceparent`, `tracestate`) when traces are on: the worker's span
/// continues it.
fn properties(request_headers: &HeaderMap, svix_id: &str, span: &DirectSpan) -> BasicProperties {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut table = FieldTable::default();
    for (name, value) in verify::svix_headers(request_headers) {
        if let Some(value) = value {
            table.insert(
                ShortString::from(name),
                AMQPValue::LongString(LongString::from(value)),
            );
        }
    }
    table.insert(
        ShortString::from(headers::RECEIVED_AT),
        AMQPValue::LongLongInt(i64::try_from(now.as_millis()).unwrap_or(i64::MAX)),
    );
    span.inject(broker::trace_context::writer(&mut table));
    BasicProperties::default()
        .with_message_id(ShortString::from(svix_id))
        .with_content_type(ShortString::from("application/json"))
        .with_timestamp(now.as_secs())
        .with_headers(table)
}
