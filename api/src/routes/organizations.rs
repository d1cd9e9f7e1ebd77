//! Organizations: `GET /me/organizations`, `GET /organizations/{id}` and
//! `GET /organizations/{id}/members`.
//!
//! A signed-in user sees an organization only through a membership linked to their own `users`
//! row; a membership whose user is not stored yet (`user_id` null) makes nobody a member. Any
//! other organization answers `404`, exactly like one that does not exist, so that existence does
//! not leak. Service keys (any scope) read every organization.

use std::sync::Arc;
use store::pool::Pool;

use axum::{
    Json,
    extract::{Path, State, rejection::PathRejection},
};
use chrono::{DateTime, Utc};
use entity::{organization_memberships as memberships, organizations, users};
use sea_orm::{
    ColumnTrait, EntityTrait, Order, QueryFilter, QueryOrder, QuerySelect, sea_query::Expr,
};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    auth::Caller,
    error::{ApiError, ErrorBody},
    state::AppState,
};

/// The most members `GET /organizations/{id}/members` returns (the longest-standing first).
pub const MEMBERS_LIMIT: u64 = 500;
/// The most organizations `GET /me/organizations` returns.
pub const MY_ORGANIZATIONS_LIMIT: u64 = 500;

const NO_SUCH_ORGANIZATION: &str = "no such organization";

/// An organization as synced from Clerk.
#[derive(Debug, Serialize, ToSchema)]
pub struct Organization {
    /// This service's id of the organization.
    pub id: Uuid,
    /// Clerk's id (`org_…`).
    #[schema(example = "org_2abc")]
    pub clerk_organization_id: String,
    pub name: String,
    pub slug: Option<String>,
    pub image_url: Option<String>,
    /// Clerk's `public_metadata` (`{}` when none): an object of any JSON values.
    #[schema(value_type = std::collections::HashMap<String, serde_json::Value>)]
    pub public_metadata: serde_json::Value,
    /// Clerk's member count, when the last update from Clerk carried one.
    pub members_count: Option<i32>,
    /// When the row was created here.
    pub created_at: DateTime<Utc>,
    /// When the row last changed here.
    pub updated_at: DateTime<Utc>,
}

impl From<organizations::Model> for Organization {
    fn from(m: organizations::Model) -> Self {
        Self {
            id: m.id,
            clerk_organization_id: m.clerk_organization_id,
            name: m.name,
            slug: m.slug,
            image_url: m.image_url,
            public_metadata: m.public_metadata,
            members_count: m.members_count,
            created_at: m.created_at.with_timezone(&Utc),
            updated_at: m.updated_at.with_timezone(&Utc),
        }
    }
}

/// One of the caller's organizations, with the caller's membership in it.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrganizationMembership {
    pub organization: Organization,
    /// The caller's role in it: Clerk's role key, e.g. `org:admin`, `org:member`.
    #[schema(example = "org:admin")]
    pub role: String,
    /// When the caller joined (Clerk's `created_at` of the membership; when Clerk gave none,
    /// when the membership was stored here).
    pub joined_at: DateTime<Utc>,
    /// When the membership was stored here.
    pub created_at: DateTime<Utc>,
    /// When the membership (e.g. its role) last changed here.
    pub updated_at: DateTime<Utc>,
}

/// A member of an organization.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrganizationMember {
    /// This service's id of the user.
    pub user_id: Uuid,
    /// Clerk's id (`user_…`).
    #[schema(example = "user_2abc")]
    pub clerk_user_id: String,
    /// The primary email address (Clerk allows users without one).
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// Clerk's role key, e.g. `org:admin`, `org:member`.
    #[schema(example = "org:member")]
    pub role: String,
    /// When the user joined (Clerk's `created_at` of the membership; when Clerk gave none, when
    /// the membership was stored here).
    pub joined_at: DateTime<Utc>,
}

fn joined_at(m: &memberships::Model) -> DateTime<Utc> {
    m.clerk_created_at
        .unwrap_or(m.created_at)
        .with_timezone(&Utc)
}

/// The id of the caller's own `users` row, if it is stored.
async fn own_row(db: &Pool, clerk_user_id: &str) -> Result<Option<Uuid>, ApiError> {
    Ok(users::Entity::find()
        .select_only()
        .column(users::Column::Id)
        .filter(users::Column::ClerkUserId.eq(clerk_user_id))
        .into_tuple::<Uuid>()
        .one(db)
        .await?)
}

/// The organization with this id, if the caller may see it: service keys see every one, a
/// signed-in user those they are a (linked) member of. Anything else is not found.
async fn visible_organization(
    db: &Pool,
    caller: &Caller,
    id: Uuid,
) -> Result<organizations::Model, ApiError> {
    let not_found = || ApiError::NotFound(NO_SUCH_ORGANIZATION);
    if let Caller::User { clerk_user_id } = caller {
        let user_id = own_row(db, clerk_user_id).await?.ok_or_else(not_found)?;
        memberships::Entity::find()
            .filter(memberships::Column::OrganizationId.eq(id))
            .filter(memberships::Column::UserId.eq(user_id))
            .one(db)
            .await?
            .ok_or_else(not_found)?;
    }
    organizations::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(not_found)
}

/// The signed-in user's organizations, with their role in each.
#[utoipa::path(
    get, path = "/me/organizations", tag = "organizations",
    security(("session_jwt" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "The organizations the caller is a member of, by name (at most 500), each with the caller's role; empty when none", body = Vec<OrganizationMembership>),
        (status = 401, description = "No or invalid credentials", body = ErrorBody),
        (status = 403, description = "A service key has no user of its own", body = ErrorBody),
        (status = 404, description = "The user does not exist in Clerk, was deleted, or is not synced (lazy sync off)", body = ErrorBody),
        (status = 502, description = "Not synced yet, and Clerk's answer could not be used", body = ErrorBody),
        (status = 503, description = "Not synced yet, and Clerk or the database is unavailable; retry (`Retry-After`)", body = ErrorBody),
    )
)]
pub async fn my_organizations(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<OrganizationMembership>>, ApiError> {
    let clerk_user_id = match caller {
        Caller::User { clerk_user_id } => clerk_user_id,
        Caller::Service { .. } => {
            return Err(ApiError::Forbidden(
                "a service key has no user of its own: use /organizations/{id} or /organizations/{id}/members",
            ));
        }
    };
    // As `/me`: a user not stored yet is fetched from Clerk first (lazy sync); storing the row
    // links the memberships that were waiting for it, so they are read from the primary then.
    let clerk_user_id = clerk_user_id.as_str();
    let own = |db: Pool| async move {
        own_row(&db, clerk_user_id)
            .await?
            .ok_or(ApiError::NotFound(crate::routes::users::NO_SUCH_USER))
    };
    let list = match (state.reads.read(own).await, &state.lazy) {
        (Ok(user_id), _) => {
            state
                .reads
                .read(|db| async move { memberships_of(&db, user_id).await })
                .await?
        }
        (Err(ApiError::NotFound(_)), Some(lazy)) => {
            lazy.sync(clerk_user_id).await.map_err(ApiError::LazySync)?;
            state
                .reads
                .after_write(|db| async move { memberships_of(&db, own(db.clone()).await?).await })
                .await?
        }
        (Err(error), _) => return Err(error),
    };
    Ok(Json(list))
}

/// The organizations the user `user_id` (a `users` row) is a member of, with their role.
async fn memberships_of(db: &Pool, user_id: Uuid) -> Result<Vec<OrganizationMembership>, ApiError> {
    let rows = memberships::Entity::find()
        .filter(memberships::Column::UserId.eq(user_id))
        .find_also_related(organizations::Entity)
        .order_by_asc(organizations::Column::Name)
        .order_by_asc(organizations::Column::Id)
        .limit(MY_ORGANIZATIONS_LIMIT)
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(membership, organization)| {
            Some(OrganizationMembership {
                organization: organization?.into(),
                joined_at: joined_at(&membership),
                role: membership.role,
                created_at: membership.created_at.with_timezone(&Utc),
                updated_at: membership.updated_at.with_timezone(&Utc),
            })
        })
        .collect())
}

/// An organization by id.
#[utoipa::path(
    get, path = "/organizations/{id}", tag = "organizations",
    params(("id" = Uuid, Path, description = "The organization's id (this service's, not Clerk's)")),
    security(("session_jwt" = []), ("session_cookie" = []), ("service_key" = [])),
    responses(
        (status = 200, description = "The organization", body = Organization),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 401, description = "No or invalid credentials", body = ErrorBody),
        (status = 404, description = "No such organization, or (session token) one the caller is not a member of", body = ErrorBody),
    )
)]
pub async fn get_organization(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    id: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<Organization>, ApiError> {
    let Path(id) = id?;
    let caller = &caller;
    let organization = state
        .reads
        .read(|db| async move { visible_organization(&db, caller, id).await })
        .await?;
    Ok(Json(organization.into()))
}

/// An organization's members (those whose user is stored here).
#[utoipa::path(
    get, path = "/organizations/{id}/members", tag = "organizations",
    params(("id" = Uuid, Path, description = "The organization's id (this service's, not Clerk's)")),
    security(("session_jwt" = []), ("session_cookie" = []), ("service_key" = [])),
    responses(
        (status = 200, description = "The members, longest-standing first, at most 500 (not paginated). Memberships whose user is not synced yet are not listed", body = Vec<OrganizationMember>),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 401, description = "No or invalid credentials", body = ErrorBody),
        (status = 404, description = "No such organization, or (session token) one the caller is not a member of", body = ErrorBody),
    )
)]
pub async fn list_members(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    id: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<Vec<OrganizationMember>>, ApiError> {
    let Path(id) = id?;
    let caller = &caller;
    let list = state
        .reads
        .read(|db| async move { members_of(&db, caller, id).await })
        .await?;
    Ok(Json(list))
}

/// The members of organization `id`, if the caller may see it.
async fn members_of(
    db: &Pool,
    caller: &Caller,
    id: Uuid,
) -> Result<Vec<OrganizationMember>, ApiError> {
    visible_organization(db, caller, id).await?;
    let rows = memberships::Entity::find()
        .filter(memberships::Column::OrganizationId.eq(id))
        .filter(memberships::Column::UserId.is_not_null())
        .find_also_related(users::Entity)
        .order_by(
            Expr::cust(
                "COALESCE(organization_memberships.clerk_created_at, organization_memberships.created_at)",
            ),
            Order::Asc,
        )
        .order_by_asc(memberships::Column::Id)
        .limit(MEMBERS_LIMIT)
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(membership, user)| {
            let user = user?;
            Some(OrganizationMember {
                joined_at: joined_at(&membership),
                user_id: user.id,
                clerk_user_id: user.clerk_user_id,
                email: user.email,
                first_name: user.first_name,
                last_name: user.last_name,
                role: membership.role,
            })
        })
        .collect())
}
