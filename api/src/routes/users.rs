//! Users: `GET /me`, `GET /users/{id}`, `GET /users/by-clerk-id/{clerk_user_id}`,
//! `GET /users?email=` (service keys only) and `PATCH /users/{id}/calendar-status`.

use std::sync::Arc;
use store::pool::Pool;

use axum::{
    Json,
    extract::{
        Path, Query, State,
        rejection::{JsonRejection, PathRejection, QueryRejection},
    },
};
use chrono::{DateTime, Utc};
use entity::{user_calendar_connections as connections, users};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, PaginatorTrait, QueryFilter,
    TransactionTrait,
};
use serde::{Deserialize, Serialize};
use store::{Provider, accounts::calendar_accounts, connections as saved, connections::TokenError};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    auth::{Caller, Scope},
    error::ApiError,
    error::ErrorBody,
    state::AppState,
};

/// A user as the frontend reads it.
#[derive(Debug, Serialize, ToSchema)]
pub struct User {
    /// This service's id of the user.
    pub id: Uuid,
    /// Clerk's id (`user_…`).
    #[schema(example = "user_2abc")]
    pub clerk_user_id: String,
    /// The primary email address (Clerk allows users without one).
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// Whether a Microsoft calendar is connected (usable by the backend): true only when
    /// `microsoft_calendar_status` is `connected`.
    pub microsoft_calendar_connected: bool,
    /// Whether a Google calendar is connected (usable by the backend): true only when
    /// `google_calendar_status` is `connected`.
    pub google_calendar_connected: bool,
    /// `connected`, `needs_reconnect` (the grant ended: only the user can fix it, by
    /// reconnecting the account) or `not_connected`.
    pub google_calendar_status: CalendarStatus,
    /// `connected`, `needs_reconnect` or `not_connected`, as for Google.
    pub microsoft_calendar_status: CalendarStatus,
    pub username: Option<String>,
    /// The profile image's URL.
    pub image_url: Option<String>,
    /// The id the product gave the user in Clerk (`external_id`).
    pub external_id: Option<String>,
    /// The primary phone number (E.164, as Clerk holds it); the user's own profile, like the
    /// email.
    pub primary_phone_number: Option<String>,
    /// Clerk's `public_metadata` (`{}` when none). Private and unsafe metadata are never
    /// returned.
    #[schema(value_type = std::collections::HashMap<String, serde_json::Value>)]
    pub public_metadata: serde_json::Value,
    /// Whether Clerk bans the user from signing in.
    pub banned: bool,
    /// Whether Clerk has locked the user out (too many failed sign-ins).
    pub locked: bool,
    /// The user's last sign-in, as Clerk recorded it.
    pub last_sign_in_at: Option<DateTime<Utc>>,
    /// When the user was created in Clerk.
    pub clerk_created_at: Option<DateTime<Utc>>,
    /// When the row was created here.
    pub created_at: DateTime<Utc>,
    /// When the row last changed here.
    pub updated_at: DateTime<Utc>,
}

impl From<users::Model> for User {
    fn from(m: users::Model) -> Self {
        store::users::UserRow::from(m).into()
    }
}

impl From<store::users::UserRow> for User {
    fn from(r: store::users::UserRow) -> Self {
        Self {
            id: r.id,
            clerk_user_id: r.clerk_user_id,
            email: r.email,
            first_name: r.first_name,
            last_name: r.last_name,
            microsoft_calendar_connected: r.microsoft_calendar_connected,
            google_calendar_connected: r.google_calendar_connected,
            google_calendar_status: CalendarStatus::of(&r.google_calendar_status),
            microsoft_calendar_status: CalendarStatus::of(&r.microsoft_calendar_status),
            username: r.username,
            image_url: r.image_url,
            external_id: r.external_id,
            primary_phone_number: r.primary_phone_number,
            public_metadata: r.public_metadata,
            banned: r.banned,
            locked: r.locked,
            last_sign_in_at: r.last_sign_in_at,
            clerk_created_at: r.clerk_created_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// How a user's calendar of one provider stands, as the frontend shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CalendarStatus {
    Connected,
    NeedsReconnect,
    NotConnected,
}

impl CalendarStatus {
    fn of(stored: &str) -> Self {
        match stored {
            "connected" => Self::Connected,
            "needs_reconnect" => Self::NeedsReconnect,
            _ => Self::NotConnected,
        }
    }
}

/// A calendar provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderName {
    Google,
    Microsoft,
}

impl From<ProviderName> for Provider {
    fn from(p: ProviderName) -> Self {
        match p {
            ProviderName::Google => Self::Google,
            ProviderName::Microsoft => Self::Microsoft,
        }
    }
}

/// The body of `PATCH /users/{id}/calendar-status`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CalendarStatusUpdate {
    /// `google` or `microsoft`.
    pub provider: ProviderName,
    /// `false` disconnects: the provider's connections and their tokens are deleted, and later
    /// updates from Clerk that still list the account do not connect it again. `true` connects
    /// again: the accounts Clerk lists for the provider are stored with fresh tokens (`409` when
    /// there is none).
    pub connected: bool,
}

/// `GET /users?email=`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct EmailQuery {
    /// The email address to look up.
    pub email: Option<String>,
}

pub(crate) const NO_SUCH_USER: &str = "no such user";

/// The user with this id, if the caller may see it (another user's id is simply not found).
pub(crate) async fn visible_user<C: ConnectionTrait>(
    db: &C,
    caller: &Caller,
    id: Uuid,
) -> Result<users::Model, ApiError> {
    let mut query = users::Entity::find_by_id(id);
    if let Caller::User { clerk_user_id } = caller {
        query = query.filter(users::Column::ClerkUserId.eq(clerk_user_id.as_str()));
    }
    query.one(db).await?.ok_or(ApiError::NotFound(NO_SUCH_USER))
}

/// The user with this Clerk id: the busiest read (`/me`), one statement of fixed text decoded
/// by column index ([`store::users`]) rather than a query built and decoded by name per request.
async fn by_clerk_id(db: &Pool, clerk_user_id: &str) -> Result<User, ApiError> {
    store::users::by_clerk_id(db, clerk_user_id)
        .await?
        .map(User::from)
        .ok_or(ApiError::NotFound(NO_SUCH_USER))
}

/// The signed-in user's own row; when it does not exist yet (the webhook is late or never came)
/// and lazy sync is on, fetched from Clerk and stored first.
async fn own_user(state: &AppState, clerk_user_id: &str) -> Result<User, ApiError> {
    let read = |db: Pool| async move { by_clerk_id(&db, clerk_user_id).await };
    match (state.reads.read(read).await, &state.lazy) {
        (Err(ApiError::NotFound(_)), Some(lazy)) => {
            lazy.sync(clerk_user_id).await.map_err(ApiError::LazySync)?;
            state.reads.after_write(read).await
        }
        (found, _) => found,
    }
}

/// The signed-in user. A user not synced yet is fetched from Clerk and stored (lazy sync,
/// `API_LAZY_SYNC`), so the first read after sign-up finds them.
#[utoipa::path(
    get, path = "/me", tag = "users",
    security(("session_jwt" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "The caller's own user (synced from Clerk first if no webhook brought it yet)", body = User),
        (status = 401, description = "No or invalid credentials", body = ErrorBody),
        (status = 403, description = "A service key has no user of its own", body = ErrorBody),
        (status = 404, description = "The user does not exist in Clerk, was deleted, or is not synced (lazy sync off)", body = ErrorBody),
        (status = 502, description = "Not synced yet, and Clerk's answer could not be used", body = ErrorBody),
        (status = 503, description = "Not synced yet, and Clerk or the database is unavailable; retry (`Retry-After`)", body = ErrorBody),
    )
)]
pub async fn me(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<User>, ApiError> {
    match caller {
        Caller::User { clerk_user_id } => Ok(Json(own_user(&state, &clerk_user_id).await?)),
        Caller::Service { .. } => Err(ApiError::Forbidden(
            "a service key has no user of its own: use /users/{id} or /users/by-clerk-id/{clerk_user_id}",
        )),
    }
}

/// A user by id.
#[utoipa::path(
    get, path = "/users/{id}", tag = "users",
    params(("id" = Uuid, Path, description = "The user's id")),
    security(("session_jwt" = []), ("session_cookie" = []), ("service_key" = [])),
    responses(
        (status = 200, description = "The user", body = User),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 401, description = "No or invalid credentials", body = ErrorBody),
        (status = 404, description = "No such user, or another user's id with a session token", body = ErrorBody),
    )
)]
pub async fn get_user(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    id: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<User>, ApiError> {
    let Path(id) = id?;
    let caller = &caller;
    let user = state
        .reads
        .read(|db| async move { visible_user(&db, caller, id).await })
        .await?;
    Ok(Json(user.into()))
}

/// A user by Clerk user id (the caller's own id is synced lazily, as `/me`).
#[utoipa::path(
    get, path = "/users/by-clerk-id/{clerk_user_id}", tag = "users",
    params(("clerk_user_id" = String, Path, description = "Clerk's user id (`user_…`)")),
    security(("session_jwt" = []), ("session_cookie" = []), ("service_key" = [])),
    responses(
        (status = 200, description = "The user", body = User),
        (status = 401, description = "No or invalid credentials", body = ErrorBody),
        (status = 404, description = "No such user, or another user's id with a session token", body = ErrorBody),
        (status = 502, description = "The caller's own user, not synced yet, and Clerk's answer could not be used", body = ErrorBody),
        (status = 503, description = "The caller's own user, not synced yet, and Clerk or the database is unavailable; retry", body = ErrorBody),
    )
)]
pub async fn get_user_by_clerk_id(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    clerk_user_id: Result<Path<String>, PathRejection>,
) -> Result<Json<User>, ApiError> {
    let Path(clerk_user_id) = clerk_user_id?;
    match caller {
        // A user's own id is synced lazily, like `/me`; service keys may ask for any id, so
        // their reads never call Clerk.
        Caller::User { clerk_user_id: own } if own == clerk_user_id => {
            Ok(Json(own_user(&state, &clerk_user_id).await?))
        }
        Caller::User { .. } => Err(ApiError::NotFound(NO_SUCH_USER)),
        Caller::Service { .. } => {
            let clerk_user_id = clerk_user_id.as_str();
            let user = state
                .reads
                .read(|db| async move { by_clerk_id(&db, clerk_user_id).await })
                .await?;
            Ok(Json(user))
        }
    }
}

/// A user by email address (service keys only).
#[utoipa::path(
    get, path = "/users", tag = "users",
    params(EmailQuery),
    security(("service_key" = [])),
    responses(
        (status = 200, description = "The user with this email address", body = User),
        (status = 400, description = "No `email` given", body = ErrorBody),
        (status = 401, description = "No or invalid credentials", body = ErrorBody),
        (status = 403, description = "Session tokens may not look users up by email", body = ErrorBody),
        (status = 404, description = "No user has this email address", body = ErrorBody),
    )
)]
pub async fn find_user_by_email(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    query: Result<Query<EmailQuery>, QueryRejection>,
) -> Result<Json<User>, ApiError> {
    caller
        .require_service(Scope::Read, "looking users up by email needs a service key")
        .map_err(ApiError::Forbidden)?;
    let Query(query) = query?;
    let email = query
        .email
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request("missing_email", "give the address: /users?email=…")
        })?;
    // Exact match first; Clerk stores addresses lower-cased, so try that too (both use the
    // unique index).
    let lower = email.to_lowercase();
    let lower = lower.as_str();
    let user = state
        .reads
        .read(|db| async move {
            let mut found = users::Entity::find()
                .filter(users::Column::Email.is_in([email, lower]))
                .all(&db)
                .await?;
            found.sort_by_key(|u| u.email.as_deref() != Some(email));
            found
                .into_iter()
                .next()
                .ok_or(ApiError::NotFound(NO_SUCH_USER))
        })
        .await?;
    Ok(Json(user.into()))
}

/// Marks a calendar connected or disconnected.
#[utoipa::path(
    patch, path = "/users/{id}/calendar-status", tag = "users",
    params(("id" = Uuid, Path, description = "The user's id")),
    request_body = CalendarStatusUpdate,
    security(("session_jwt" = []), ("session_cookie" = []), ("service_key" = [])),
    responses(
        (status = 200, description = "The updated user", body = User),
        (status = 400, description = "Malformed JSON or id", body = ErrorBody),
        (status = 401, description = "No or invalid credentials", body = ErrorBody),
        (status = 403, description = "A service key with the `read` or `tokens` scope", body = ErrorBody),
        (status = 404, description = "No such user, or another user's id with a session token", body = ErrorBody),
        (status = 409, description = "`connected: true` but the user has no connected account of that provider in Clerk", body = ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`", body = ErrorBody),
        (status = 422, description = "Unknown provider or missing field", body = ErrorBody),
        (status = 502, description = "Clerk refused to hand out the account's token", body = ErrorBody),
        (status = 503, description = "Clerk or the database is unavailable; retry later", body = ErrorBody),
    )
)]
pub async fn update_calendar_status(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    id: Result<Path<Uuid>, PathRejection>,
    body: Result<Json<CalendarStatusUpdate>, JsonRejection>,
) -> Result<Json<User>, ApiError> {
    if caller.is_service() {
        caller.require_service(
            Scope::Full,
            "changing calendar status needs an unscoped service key (the `read` and `tokens` scopes cannot)",
        )
    .map_err(ApiError::Forbidden)?;
    }
    let Path(id) = id?;
    let Json(update) = body?;
    let provider = Provider::from(update.provider);

    let txn = state.db.begin().await?;
    let user = locked_user(&txn, &caller, id).await?;
    if update.connected {
        // The user connects again: their earlier choice to disconnect ends here.
        saved::forget_disconnect(&txn, id, provider).await?;
        let usable = usable_connections(&txn, id, provider).await?;
        saved::refresh_flags(&txn, id).await?;
        txn.commit().await?;
        if usable == 0 {
            reconnect_from_clerk(&state, &caller, &user, provider).await?;
        }
    } else {
        saved::disconnect(&txn, id, provider).await?;
        txn.commit().await?;
    }
    let updated = visible_user(&state.db, &caller, id).await?;
    tracing::info!(
        user_id = %id,
        provider = provider.as_str(),
        connected = update.connected,
        "calendar status changed"
    );
    Ok(Json(updated.into()))
}

/// The user, under the lock the worker applies that user's events under (so that an event
/// being applied and this change do not interleave), checked again after the wait: the user may
/// have been deleted meanwhile.
async fn locked_user(
    txn: &DatabaseTransaction,
    caller: &Caller,
    id: Uuid,
) -> Result<users::Model, ApiError> {
    let user = visible_user(txn, caller, id).await?;
    saved::lock_user(txn, &user.clerk_user_id).await?;
    visible_user(txn, caller, id).await
}

async fn usable_connections<C: ConnectionTrait>(
    conn: &C,
    user_id: Uuid,
    provider: Provider,
) -> Result<u64, ApiError> {
    Ok(connections::Entity::find()
        .filter(connections::Column::UserId.eq(user_id))
        .filter(connections::Column::Provider.eq(provider.as_str()))
        .filter(connections::Column::Status.eq(saved::CONNECTED))
        .count(conn)
        .await?)
}

/// Connecting again after a disconnect: the provider's accounts are read from Clerk (the user's
/// current state) and their tokens fetched, then stored as an event would store them. `409` when
/// Clerk lists no calendar account of the provider, or when the API cannot ask Clerk (the
/// connection then comes back with the user's next update from Clerk).
async fn reconnect_from_clerk(
    state: &AppState,
    caller: &Caller,
    user: &users::Model,
    provider: Provider,
) -> Result<(), ApiError> {
    let no_account = || {
        ApiError::Conflict(format!(
            "no connected {} account: the user must connect one through Clerk first",
            provider.as_str()
        ))
    };
    let Some(calendar) = state.calendar.as_ref() else {
        return Err(ApiError::Conflict(format!(
            "no connected {} account right now; it is connected again with the user's next update from Clerk",
            provider.as_str()
        )));
    };
    let clerk_user = calendar
        .clerk
        .get_user(&user.clerk_user_id)
        .await
        .map_err(TokenError::from)?
        .ok_or_else(no_account)?;
    let accounts: Vec<_> = clerk_user
        .get("external_accounts")
        .and_then(serde_json::Value::as_array)
        .map(|list| calendar_accounts(list))
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a.provider == provider)
        .collect();
    if accounts.is_empty() {
        return Err(no_account());
    }
    let fetched = saved::fetch_tokens(Some(&calendar.clerk), &user.clerk_user_id, &accounts)
        .await
        .map_err(TokenError::from)?;
    let txn = state.db.begin().await?;
    locked_user(&txn, caller, user.id).await?;
    saved::sync_connections(
        &txn,
        Some(&calendar.cipher),
        user.id,
        &fetched,
        saved::SyncScope::Only(provider),
    )
    .await
    .map_err(|e| match e {
        saved::StoreError::Db(e) => ApiError::Database(e),
        saved::StoreError::Crypto(e) => ApiError::Token(TokenError::Crypto(e)),
    })?;
    let usable = usable_connections(&txn, user.id, provider).await?;
    txn.commit().await?;
    if usable == 0 {
        return Err(ApiError::Conflict(format!(
            "Clerk lists a {} account but hands out no token for it (consent revoked or expired?): the user must connect it again through Clerk",
            provider.as_str()
        )));
    }
    Ok(())
}
