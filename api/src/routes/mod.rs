//! The routes, collected with their OpenAPI descriptions.

pub mod connections;
pub mod ops;
pub mod organizations;
pub mod users;

use std::sync::Arc;

use axum::{Json, response::IntoResponse};
use http::StatusCode;
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

use axum::extract::FromRequestParts;
use http::request::Parts;

use crate::{
    auth::Caller,
    error::{ApiError, ErrorBody},
    openapi::ApiDoc,
    state::AppState,
};

/// Every route, and the OpenAPI document describing them.
pub fn router() -> (axum::Router<Arc<AppState>>, utoipa::openapi::OpenApi) {
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(users::me))
        .routes(routes!(users::find_user_by_email))
        .routes(routes!(users::get_user))
        .routes(routes!(users::get_user_by_clerk_id))
        .routes(routes!(users::update_calendar_status))
        .routes(routes!(connections::list_connections))
        .routes(routes!(connections::access_token))
        .routes(routes!(organizations::my_organizations))
        .routes(routes!(organizations::get_organization))
        .routes(routes!(organizations::list_members))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi_json))
        .split_for_parts();
    let router = router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    (router, doc)
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        Json(ErrorBody {
            error: "not_found".into(),
            message: "no such route; see /openapi.json".into(),
            reason: None,
        }),
    )
}

async fn method_not_allowed() -> impl IntoResponse {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(ErrorBody {
            error: "method_not_allowed".into(),
            message: "this route does not answer this method; see /openapi.json".into(),
            reason: None,
        }),
    )
}

/// Every handler that takes a `Caller` authenticates the request first.
impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        state.auth.authenticate(&parts.headers).map_err(|failure| {
            tracing::info!(reason = %failure, "request not authenticated");
            ApiError::Unauthenticated(failure)
        })
    }
}
