//! `users`: one row per live Clerk user.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(unique)]
    pub clerk_user_id: String,
    /// The primary email address; none is a valid state.
    #[sea_orm(unique)]
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub microsoft_calendar_connected: bool,
    pub google_calendar_connected: bool,
    /// `connected`, `needs_reconnect` or `not_connected`, kept with the connections.
    pub google_calendar_status: String,
    /// `connected`, `needs_reconnect` or `not_connected`, kept with the connections.
    pub microsoft_calendar_status: String,
    /// Clerk's `updated_at` in ms: the version that makes stale events change nothing.
    pub clerk_updated_at: i64,
    /// Orders two states with the same `clerk_updated_at`: the event's timestamp (zero-padded),
    /// then its Svix id; empty for states read from Clerk's API.
    pub clerk_version_tiebreak: String,
    pub clerk_created_at: Option<DateTimeWithTimeZone>,
    pub username: Option<String>,
    pub image_url: Option<String>,
    /// The id the product gave the user in Clerk (`external_id`).
    pub external_id: Option<String>,
    /// The primary phone number, E.164 as Clerk holds it.
    pub primary_phone_number: Option<String>,
    /// Clerk's `public_metadata` (`{}` when none).
    pub public_metadata: Json,
    /// Clerk's `private_metadata`: stored only with `SYNC_PRIVATE_METADATA=true`, else null.
    pub private_metadata: Option<Json>,
    /// Clerk's `unsafe_metadata`: stored only with `SYNC_PRIVATE_METADATA=true`, else null.
    pub unsafe_metadata: Option<Json>,
    pub banned: bool,
    pub locked: bool,
    pub last_sign_in_at: Option<DateTimeWithTimeZone>,
    pub created_at: DateTimeWithTimeZone,
    pub updated_at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::user_calendar_connections::Entity")]
    UserCalendarConnections,
    #[sea_orm(has_many = "super::organization_memberships::Entity")]
    OrganizationMemberships,
}

impl Related<super::user_calendar_connections::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::UserCalendarConnections.def()
    }
}

impl Related<super::organization_memberships::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::OrganizationMemberships.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
