//! The API's Prometheus metrics, and the middleware that gives every response its
//! `x-request-id`, logs one line per request (inside a span carrying the request id) and counts
//! requests by route template (never the raw path, which holds user ids) and status.

use std::{sync::Arc, time::Instant};

use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::Response,
};
use http::{HeaderValue, header};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use telemetry::{request_id, traces};
use tracing::{Instrument, field::Empty};

/// Labels of `clerk_sync_api_requests_total`. Every value comes from a fixed set: a label taken
/// from the request as sent (hyper accepts any token as a method) would let anyone grow the
/// series, and the memory and `/metrics` size with them, without limit.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The HTTP method if it is a standard one, else `other` (see [`method_label`]).
    pub method: &'static str,
    /// The route template (`/users/{id}`), or `unmatched`.
    pub route: String,
    /// The response status code.
    pub status: u16,
}

/// Labels of `clerk_sync_api_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route template, or `unmatched`.
    pub route: String,
}

/// Counters and histograms the middleware updates.
pub struct Metrics {
    /// Requests by method, route and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Request durations by route.
    pub durations: Family<RouteLabels, Histogram>,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        telemetry::traces::register_metrics(registry);
        let metrics = Self {
            requests: Family::default(),
            durations: Family::new_with_constructor(|| {
                Histogram::new([
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ])
            }),
        };
        registry.register(
            "clerk_sync_api_requests",
            "API requests, by method, route template and status",
            metrics.requests.clone(),
        );
        registry.register(
            "clerk_sync_api_request_duration_seconds",
            "Time to answer an API request, by route template",
            metrics.durations.clone(),
        );
        metrics
    }
}

/// The `method` label: a standard method's name, or `other` for any other token.
pub fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    const STANDARD: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::HEAD, "HEAD"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::PATCH, "PATCH"),
        (Method::DELETE, "DELETE"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    STANDARD
        .iter()
        .find(|(m, _)| m == method)
        .map_or("other", |(_, name)| name)
}

/// Request id, span, log line, metrics and `Cache-Control: no-store` (the answers are personal
/// data or tokens) for every request.
pub async fn observe(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let id = request_id::from_headers(request.headers());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method());
    let server = server_span(&request, &route);
    let span = server.in_scope(|| {
        tracing::info_span!(
            "request",
            request_id = %id.to_str().unwrap_or_default(),
            method = %method,
            route = %route,
        )
    });
    let started = Instant::now();
    let mut response = next
        .run(request)
        .instrument(span.clone())
        .instrument(server.clone())
        .await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    if !server.is_disabled() {
        server.record("http.response.status_code", status);
        if status >= 500 {
            server.record("otel.status_code", "ERROR");
        }
    }
    span.in_scope(|| {
        tracing::info!(
            status,
            latency_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            "request finished"
        );
    });
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route: route.clone(),
            status,
        })
        .inc();
    metrics
        .durations
        .get_or_create(&RouteLabels { route })
        .observe(elapsed.as_secs_f64());
    let headers = response.headers_mut();
    headers.insert(request_id::REQUEST_ID, id);
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The server span of a request (OpenTelemetry HTTP server conventions: the route template,
/// never the path with its ids), continuing the caller's `traceparent`; only when traces are
/// exported.
fn server_span(request: &Request, route: &str) -> tracing::Span {
    if !traces::enabled() {
        return tracing::Span::none();
    }
    let method = match *request.method() {
        http::Method::GET
        | http::Method::POST
        | http::Method::PUT
        | http::Method::PATCH
        | http::Method::DELETE
        | http::Method::HEAD
        | http::Method::OPTIONS => request.method().as_str(),
        _ => "_OTHER",
    };
    let span = tracing::info_span!(
        "http",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        http.route = route,
        url.scheme = "http",
        http.response.status_code = Empty,
    );
    traces::continue_from(&span, &traces::extract_http(request.headers()), false);
    span
}
