//! Calendar connections: `GET /users/{id}/calendar-connections` (never any token) and
//! `GET /users/{id}/calendar-connections/{provider}/token` (service keys only).

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State, rejection::PathRejection},
};
use chrono::{DateTime, Utc};
use entity::user_calendar_connections as connections;
use sea_orm::{ColumnTrait, EntityTrait, FromQueryResult, QueryFilter, QueryOrder, QuerySelect};
use serde::Serialize;
use store::pool::Pool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    auth::{Caller, Scope},
    error::{ApiError, ErrorBody},
    routes::users::{ProviderName, visible_user},
    state::AppState,
};

/// A connected (or formerly connected) calendar account. Tokens are never part of it.
#[derive(Debug, Serialize, ToSchema, FromQueryResult)]
pub struct CalendarConnection {
    pub id: Uuid,
    /// `google` or `microsoft`.
    #[schema(example = "google")]
    pub provider: String,
    /// Clerk's external account id (`eac_…`).
    pub external_account_id: String,
    /// The account's id at the provider.
    pub provider_user_id: String,
    /// The account's email address at the provider.
    pub email: Option<String>,
    /// Approved scopes, space separated.
    pub scopes: String,
    /// `connected`, `needs_reconnect` (only the user can fix it: reconnect the account in
    /// Clerk) or `unavailable` (Clerk could not be asked lately; a stored token is still
    /// served while fresh).
    #[schema(example = "needs_reconnect")]
    pub status: String,
    /// A stable code for a status other than `connected`: `grant_revoked`,
    /// `missing_refresh_token`, `missing_scopes`, `account_unverified`, `provider_disabled`,
    /// `clerk_unavailable`.
    #[schema(example = "grant_revoked")]
    pub status_reason: Option<String>,
    /// When Clerk was last asked about this connection.
    pub status_checked_at: Option<DateTime<Utc>>,
    /// Since when the status (and reason) hold.
    pub status_changed_at: DateTime<Utc>,
    /// When the stored access token expires.
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A usable access token for a trusted backend.
#[derive(Serialize, ToSchema)]
pub struct AccessToken {
    /// The provider's OAuth access token.
    pub access_token: String,
    /// When it expires (unknown for some providers).
    pub expires_at: Option<DateTime<Utc>>,
    pub provider: ProviderName,
    /// The account's id at the provider.
    pub provider_user_id: String,
    /// Approved scopes, space separated.
    pub scopes: String,
}

/// The user's calendar connections.
#[utoipa::path(
    get, path = "/users/{id}/calendar-connections", tag = "calendar",
    params(("id" = Uuid, Path, description = "The user's id")),
    security(("session_jwt" = []), ("session_cookie" = []), ("service_key" = [])),
    responses(
        (status = 200, description = "The connections (no tokens)", body = Vec<CalendarConnection>),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 401, description = "No or invalid credentials", body = ErrorBody),
        (status = 404, description = "No such user, or another user's id with a session token", body = ErrorBody),
    )
)]
pub async fn list_connections(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    id: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<Vec<CalendarConnection>>, ApiError> {
    let Path(id) = id?;
    let caller = &caller;
    let list = state
        .reads
        .read(|db| async move { connections_of(&db, caller, id).await })
        .await?;
    Ok(Json(list))
}

/// The user's connections, if the caller may see the user.
async fn connections_of(
    db: &Pool,
    caller: &Caller,
    id: Uuid,
) -> Result<Vec<CalendarConnection>, ApiError> {
    visible_user(db, caller, id).await?;
    // Only the listed columns are read: the token columns never leave the database here.
    let list = connections::Entity::find()
        .select_only()
        .columns([
            connections::Column::Id,
            connections::Column::Provider,
            connections::Column::ExternalAccountId,
            connections::Column::ProviderUserId,
            connections::Column::Email,
            connections::Column::Scopes,
            connections::Column::Status,
            connections::Column::StatusReason,
            connections::Column::StatusCheckedAt,
            connections::Column::StatusChangedAt,
            connections::Column::ExpiresAt,
            connections::Column::CreatedAt,
            connections::Column::UpdatedAt,
        ])
        .filter(connections::Column::UserId.eq(id))
        .order_by_asc(connections::Column::Provider)
        .order_by_asc(connections::Column::CreatedAt)
        .into_model::<CalendarConnection>()
        .all(db)
        .await?;
    Ok(list)
}

/// A fresh access token of the user's calendar account (service keys only). Refreshed through
/// Clerk when the stored one has expired or is about to.
#[utoipa::path(
    get, path = "/users/{id}/calendar-connections/{provider}/token", tag = "calendar",
    params(
        ("id" = Uuid, Path, description = "The user's id"),
        ("provider" = ProviderName, Path, description = "`google` or `microsoft`"),
    ),
    security(("service_key" = [])),
    responses(
        (status = 200, description = "A usable access token", body = AccessToken),
        (status = 400, description = "Bad id or unknown provider", body = ErrorBody),
        (status = 401, description = "No or invalid credentials", body = ErrorBody),
        (status = 403, description = "Session tokens and `read`-scoped service keys may not read tokens", body = ErrorBody),
        (status = 404, description = "No such user, or no usable connection of that provider (none connected, or the user disconnected it)", body = ErrorBody),
        (status = 500, description = "`stored_token_invalid`: the stored token does not decrypt for this connection (moved or altered in the database); it is never served", body = ErrorBody),
        (status = 502, description = "Clerk refused to hand out a token", body = ErrorBody),
        (status = 503, description = "Clerk or the database is unavailable, or the endpoint is not configured; retry later", body = ErrorBody),
    )
)]
pub async fn access_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    path: Result<Path<(Uuid, ProviderName)>, PathRejection>,
) -> Result<Json<AccessToken>, ApiError> {
    caller.require_service(
        Scope::Tokens,
        "reading access tokens needs a service key with the `tokens` scope (or an unscoped key)",
    )
    .map_err(ApiError::Forbidden)?;
    let Path((id, provider)) = path?;
    let calendar = state
        .calendar
        .as_ref()
        .ok_or(ApiError::TokensNotConfigured)?;
    visible_user(&state.db, &caller, id).await?;
    let fresh = store::connections::fresh_access_token(
        &state.db,
        &calendar.cipher,
        &calendar.clerk,
        id,
        provider.into(),
    )
    .await?
    .ok_or(ApiError::NotFound(
        "no usable connection of this provider (none connected, or Clerk has no token for it)",
    ))?;
    Ok(Json(AccessToken {
        // The one place a token leaves its secret type: the answer to a trusted backend.
        access_token: secrecy::ExposeSecret::expose_secret(&fresh.access_token).to_owned(),
        expires_at: fresh.expires_at,
        provider,
        provider_user_id: fresh.provider_user_id,
        scopes: fresh.scopes,
    }))
}
