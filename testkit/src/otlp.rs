//! A local stand-in for an OpenTelemetry collector: an OTLP/HTTP receiver of traces that keeps
//! every span it is sent, for tests to check what a service exported. No collector can be
//! installed where the tests run.
//!
//! It accepts what an OTLP/HTTP exporter with the protobuf encoding sends: `POST /v1/traces`
//! with `Content-Type: application/x-protobuf` and an uncompressed
//! `ExportTraceServiceRequest`, answered `200` with an empty `ExportTraceServiceResponse`.
//! Anything else is refused and recorded nowhere but in [`OtlpReceiver::rejected`]: another
//! path `404`, another method `405`, another content type or a content encoding `415`, a body
//! that does not decode `400`, one over 32 MiB `413`.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::{Span, span, status::StatusCode as ProtoStatusCode},
};
use prost::Message;
use tokio::{net::TcpListener, task::JoinSet};

/// The path an OTLP/HTTP exporter posts traces to, below the endpoint.
pub const TRACES_PATH: &str = "/v1/traces";

/// The content type of OTLP/HTTP with the protobuf encoding.
pub const PROTOBUF: &str = "application/x-protobuf";

/// The largest request body read.
const BODY_LIMIT: usize = 32 * 1024 * 1024;

/// What a span is to its trace (OTLP's `Span.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// Not said (or a value this receiver does not know).
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

impl SpanKind {
    fn from_proto(kind: i32) -> Self {
        match span::SpanKind::try_from(kind) {
            Ok(span::SpanKind::Internal) => Self::Internal,
            Ok(span::SpanKind::Server) => Self::Server,
            Ok(span::SpanKind::Client) => Self::Client,
            Ok(span::SpanKind::Producer) => Self::Producer,
            Ok(span::SpanKind::Consumer) => Self::Consumer,
            Ok(span::SpanKind::Unspecified) | Err(_) => Self::Unspecified,
        }
    }
}

/// A span's status code (OTLP's `Status.code`; no status is `Unset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanStatus {
    /// Not said (or a value this receiver does not know).
    Unset,
    Ok,
    Error,
}

impl SpanStatus {
    fn from_proto(code: i32) -> Self {
        match ProtoStatusCode::try_from(code) {
            Ok(ProtoStatusCode::Ok) => Self::Ok,
            Ok(ProtoStatusCode::Error) => Self::Error,
            Ok(ProtoStatusCode::Unset) | Err(_) => Self::Unset,
        }
    }
}

/// Attributes as text: `(key, value)` in the order sent, each value rendered by
/// [`value_text`].
pub type Attributes = Vec<(String, String)>;

/// A link from a span to another span (of its trace or another).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedLink {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    pub attributes: Attributes,
}

impl RecordedLink {
    /// The first attribute named `key`, as text.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        find(&self.attributes, key)
    }
}

/// An event of a span (an exception, a log line recorded on it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub name: String,
    pub attributes: Attributes,
}

impl RecordedEvent {
    /// The first attribute named `key`, as text.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        find(&self.attributes, key)
    }
}

/// One span as received, flattened with its resource's and scope's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedSpan {
    /// The resource attribute `service.name` (empty when the resource has none).
    pub service_name: String,
    /// The instrumentation scope's name (the tracer's).
    pub scope_name: String,
    pub name: String,
    pub kind: SpanKind,
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// The parent's span id; `None` for a root span.
    pub parent_span_id: Option<String>,
    /// The W3C `tracestate` the span was started with (empty when none).
    pub trace_state: String,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub attributes: Attributes,
    /// Every attribute of the resource, `service.name` included.
    pub resource_attributes: Attributes,
    pub links: Vec<RecordedLink>,
    pub events: Vec<RecordedEvent>,
    pub status: SpanStatus,
    /// The status's description (set with `Error` only, by convention).
    pub status_message: String,
}

impl RecordedSpan {
    /// The first attribute named `key`, as text.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        find(&self.attributes, key)
    }

    /// The first resource attribute named `key`, as text.
    pub fn resource_attribute(&self, key: &str) -> Option<&str> {
        find(&self.resource_attributes, key)
    }

    /// The first event named `name`.
    pub fn event(&self, name: &str) -> Option<&RecordedEvent> {
        self.events.iter().find(|e| e.name == name)
    }

    /// Whether `other` is this span's parent.
    pub fn is_child_of(&self, other: &RecordedSpan) -> bool {
        self.trace_id == other.trace_id
            && self.parent_span_id.as_deref() == Some(other.span_id.as_str())
    }

    /// One line for error messages: `service: name (kind, trace …, span …)`.
    pub fn summary(&self) -> String {
        format!(
            "{}: {} ({:?}, trace {}, span {}, parent {})",
            self.service_name,
            self.name,
            self.kind,
            self.trace_id,
            self.span_id,
            self.parent_span_id.as_deref().unwrap_or("-")
        )
    }
}

fn find<'a>(attributes: &'a [(String, String)], key: &str) -> Option<&'a str> {
    attributes
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// An attribute value as text: strings as they are, numbers and booleans as Rust prints them,
/// bytes in lowercase hex, arrays' values joined with `,`, key-value lists as `k=v` joined with
/// `,`; no value is empty.
pub fn value_text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BytesValue(b)) => hex(b),
        Some(Value::ArrayValue(array)) => array
            .values
            .iter()
            .map(|v| value_text(Some(v)))
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::KvlistValue(list)) => list
            .values
            .iter()
            .map(|kv| format!("{}={}", kv.key, value_text(kv.value.as_ref())))
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::StringValueStrindex(index)) => index.to_string(),
    }
}

fn attributes_text(attributes: &[KeyValue]) -> Attributes {
    attributes
        .iter()
        .map(|kv| (kv.key.clone(), value_text(kv.value.as_ref())))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every span of an export request, flattened.
pub fn flatten(request: &ExportTraceServiceRequest) -> Vec<RecordedSpan> {
    let mut out = Vec::new();
    for resource_spans in &request.resource_spans {
        let resource_attributes = resource_spans
            .resource
            .as_ref()
            .map(|r| attributes_text(&r.attributes))
            .unwrap_or_default();
        let service_name = find(&resource_attributes, "service.name")
            .unwrap_or_default()
            .to_owned();
        for scope_spans in &resource_spans.scope_spans {
            let scope_name = scope_spans
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for span in &scope_spans.spans {
                out.push(record(
                    span,
                    &service_name,
                    &scope_name,
                    &resource_attributes,
                ));
            }
        }
    }
    out
}

fn record(
    span: &Span,
    service_name: &str,
    scope_name: &str,
    resource_attributes: &Attributes,
) -> RecordedSpan {
    let status = span.status.as_ref();
    RecordedSpan {
        service_name: service_name.to_owned(),
        scope_name: scope_name.to_owned(),
        name: span.name.clone(),
        kind: SpanKind::from_proto(span.kind),
        trace_id: hex(&span.trace_id),
        span_id: hex(&span.span_id),
        parent_span_id: (!span.parent_span_id.is_empty()
            && span.parent_span_id.iter().any(|b| *b != 0))
        .then(|| hex(&span.parent_span_id)),
        trace_state: span.trace_state.clone(),
        start_time_unix_nano: span.start_time_unix_nano,
        end_time_unix_nano: span.end_time_unix_nano,
        attributes: attributes_text(&span.attributes),
        resource_attributes: resource_attributes.clone(),
        links: span
            .links
            .iter()
            .map(|link| RecordedLink {
                trace_id: hex(&link.trace_id),
                span_id: hex(&link.span_id),
                attributes: attributes_text(&link.attributes),
            })
            .collect(),
        events: span
            .events
            .iter()
            .map(|event| RecordedEvent {
                name: event.name.clone(),
                attributes: attributes_text(&event.attributes),
            })
            .collect(),
        status: SpanStatus::from_proto(status.map_or(0, |s| s.code)),
        status_message: status.map(|s| s.message.clone()).unwrap_or_default(),
    }
}

/// What the receiver has been sent.
#[derive(Default)]
struct Received {
    /// Count only (the benchmark's receiver): no span is kept.
    counting: bool,
    /// Spans received per `service.name`.
    counts: std::collections::BTreeMap<String, u64>,
    spans: Vec<RecordedSpan>,
    /// Export requests accepted.
    requests: usize,
    /// Requests refused, described.
    rejected: Vec<String>,
}

type Shared = Arc<Mutex<Received>>;

fn lock(received: &Shared) -> MutexGuard<'_, Received> {
    // A panic elsewhere while holding the lock leaves plain data behind: still readable.
    received.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running receiver on a free port; stops (with every connection) when dropped.
pub struct OtlpReceiver {
    endpoint: String,
    received: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start() -> Self {
        Self::start_with(Received::default()).await
    }

    /// Starts a receiver that decodes every export but keeps only the number of spans per
    /// service ([`Self::counts`]): for loads of many spans (the benchmark).
    pub async fn start_counting() -> Self {
        Self::start_with(Received {
            counting: true,
            ..Received::default()
        })
        .await
    }

    /// Spans received so far per `service.name`.
    pub fn counts(&self) -> std::collections::BTreeMap<String, u64> {
        lock(&self.received).counts.clone()
    }

    async fn start_with(received: Received) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let endpoint = format!(
            "http://{}",
            listener.local_addr().expect("the OTLP receiver's address")
        );
        let received = Arc::new(Mutex::new(received));
        let task = tokio::spawn(accept(listener, received.clone()));
        Self {
            endpoint,
            received,
            task,
        }
    }

    /// The base URL, `http://127.0.0.1:PORT`, for `OTEL_EXPORTER_OTLP_ENDPOINT` (the exporter
    /// appends [`TRACES_PATH`]).
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// Every span received so far, in the order received.
    pub fn spans(&self) -> Vec<RecordedSpan> {
        lock(&self.received).spans.clone()
    }

    /// Export requests accepted so far (an exporter sends a batch of spans in each).
    pub fn requests(&self) -> usize {
        lock(&self.received).requests
    }

    /// Requests refused so far, each as `METHOD path: status (why)`.
    pub fn rejected(&self) -> Vec<String> {
        lock(&self.received).rejected.clone()
    }

    /// Polls every 20 ms until `done` holds for the spans received, and returns them; after
    /// `timeout`, an error that lists what was received (and refused), to say what is missing.
    pub async fn wait_for(
        &self,
        done: impl Fn(&[RecordedSpan]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<RecordedSpan>, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return Ok(spans);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.describe(timeout));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What was received, for a timeout's error.
    fn describe(&self, timeout: Duration) -> String {
        const SHOWN: usize = 100;
        let received = lock(&self.received);
        let mut out = format!(
            "the spans awaited did not arrive within {timeout:?}; received {} span(s) in {} export request(s)",
            received.spans.len(),
            received.requests
        );
        for span in received.spans.iter().take(SHOWN) {
            out.push_str("\n  ");
            out.push_str(&span.summary());
        }
        if received.spans.len() > SHOWN {
            out.push_str(&format!("\n  … and {} more", received.spans.len() - SHOWN));
        }
        if !received.rejected.is_empty() {
            out.push_str(&format!(
                "\nrefused {} request(s):",
                received.rejected.len()
            ));
            for rejected in &received.rejected {
                out.push_str("\n  ");
                out.push_str(rejected);
            }
        }
        out
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        // The connections are tasks of the accept loop's JoinSet: aborted with it.
        self.task.abort();
    }
}

/// Accepts connections until aborted, serving each in a task of its own.
async fn accept(listener: TcpListener, received: Shared) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        let received = received.clone();
        connections.spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let received = received.clone();
                async move { Ok::<_, Infallible>(answer(&received, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Why a request is refused: its status and a description.
type Refusal = (StatusCode, String);

/// Answers one request: records the spans of an export, or the refusal.
async fn answer(received: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let head = format!("{} {}", request.method(), request.uri().path());
    match export(request).await {
        Ok(export) => {
            let spans = flatten(&export);
            let mut received = lock(received);
            received.requests += 1;
            for span in &spans {
                *received
                    .counts
                    .entry(span.service_name.clone())
                    .or_default() += 1;
            }
            if !received.counting {
                received.spans.extend(spans);
            }
            let mut response = Response::new(Full::new(Bytes::from(
                ExportTraceServiceResponse::default().encode_to_vec(),
            )));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
            response
        }
        Err((status, why)) => {
            lock(received)
                .rejected
                .push(format!("{head}: {} ({why})", status.as_u16()));
            let mut response = Response::new(Full::new(Bytes::from(format!("{why}\n"))));
            *response.status_mut() = status;
            response
        }
    }
}

/// The export request a request carries, or why it is refused.
async fn export(request: Request<Incoming>) -> Result<ExportTraceServiceRequest, Refusal> {
    if request.uri().path() != TRACES_PATH {
        return Err((StatusCode::NOT_FOUND, "not an OTLP traces path".into()));
    }
    if request.method() != http::Method::POST {
        return Err((StatusCode::METHOD_NOT_ALLOWED, "traces are POSTed".into()));
    }
    let headers = request.headers();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    if !media_type.eq_ignore_ascii_case(PROTOBUF) {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type {content_type:?}, not {PROTOBUF}"),
        ));
    }
    if let Some(encoding) = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .filter(|e| !e.eq_ignore_ascii_case("identity"))
    {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content encoding {encoding:?}: send uncompressed bodies"),
        ));
    }
    let body = match Limited::new(request.into_body(), BODY_LIMIT)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a body over {BODY_LIMIT} bytes"),
            ));
        }
        Err(error) => {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("reading the body: {error}"),
            ));
        }
    };
    ExportTraceServiceRequest::decode(body).map_err(|error| {
        (
            StatusCode::BAD_REQUEST,
            format!("not an ExportTraceServiceRequest: {error}"),
        )
    })
}

/// Panics if any of `forbidden` (secrets, tokens, emails, names) appears anywhere in what was
/// exported: span names, attributes, resource attributes, links, events and status messages.
pub fn assert_nothing_private(spans: &[RecordedSpan], forbidden: &[&str]) {
    assert!(!spans.is_empty(), "no spans to check");
    for span in spans {
        let mut texts: Vec<(String, &str)> = vec![
            ("name".into(), span.name.as_str()),
            ("status message".into(), span.status_message.as_str()),
            ("trace state".into(), span.trace_state.as_str()),
        ];
        let attributes = span
            .attributes
            .iter()
            .chain(&span.resource_attributes)
            .chain(span.links.iter().flat_map(|l| &l.attributes))
            .chain(span.events.iter().flat_map(|e| &e.attributes));
        for (key, value) in attributes {
            texts.push((key.clone(), key.as_str()));
            texts.push((key.clone(), value.as_str()));
        }
        for event in &span.events {
            texts.push(("event".into(), event.name.as_str()));
        }
        for (what, text) in texts {
            for needle in forbidden {
                assert!(
                    !text.contains(needle),
                    "{needle:?} was exported in {what} of {}",
                    span.summary()
                );
            }
        }
    }
}
