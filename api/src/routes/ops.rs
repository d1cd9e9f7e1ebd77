//! `GET /healthz`, `GET /readyz`, `GET /metrics` and `GET /openapi.json`: no credentials needed.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::State,
    response::{IntoResponse, Response},
};
use http::{StatusCode, header};
use sea_orm::ConnectionTrait;

use crate::state::AppState;

/// How long the readiness probe waits for `SELECT 1`.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "Alive", body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the database answers `SELECT 1`.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "The database is reachable", body = String, content_type = "text/plain"),
        (status = 503, description = "The database is not reachable", body = String, content_type = "text/plain"),
    ))]
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, &'static str) {
    match tokio::time::timeout(READY_TIMEOUT, state.db.execute_unprepared("SELECT 1")).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n"),
        Ok(Err(error)) => {
            tracing::warn!(error.message = %error, "readiness: database not reachable");
            (StatusCode::SERVICE_UNAVAILABLE, "database not reachable\n")
        }
        Err(_) => {
            tracing::warn!("readiness: database did not answer within {READY_TIMEOUT:?}");
            (StatusCode::SERVICE_UNAVAILABLE, "database not reachable\n")
        }
    }
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Metrics in OpenMetrics text format", body = String,
        content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let body = state
        .registry
        .lock()
        .map(|r| telemetry::encode_metrics(&r))
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// This document: the OpenAPI description of every route, generated from the code.
#[utoipa::path(get, path = "/openapi.json", tag = "ops",
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
pub async fn openapi_json(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.clone(),
    )
        .into_response()
}
