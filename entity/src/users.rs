//! `users`: one row per live Clerk user.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
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
    /// Clerk's `updated_at` in ms: the version that makes stale events change nothing.
    pub clerk_updated_at: i64,
    /// Orders two states with the same `clerk_updated_at`: the event's timestamp (zero-padded),
    /// then its Svix id; empty for states read from Clerk's API.
    pub clerk_version_tiebreak: String,
    pub clerk_created_at: Option<DateTimeWithTimeZone>,
    pub created_at: DateTimeWithTimeZone,
    pub updated_at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::user_calendar_connections::Entity")]
    UserCalendarConnections,
}

impl Related<super::user_calendar_connections::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::UserCalendarConnections.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
