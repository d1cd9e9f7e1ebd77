//! `organization_memberships`: who belongs to which organization, with what role.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "organization_memberships")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(unique)]
    pub clerk_membership_id: String,
    pub organization_id: Uuid,
    /// The member's Clerk user id, known from the membership itself.
    pub clerk_user_id: String,
    /// The member's row; none until the user's own event (or backfill) has stored them.
    pub user_id: Option<Uuid>,
    /// Clerk's role key, e.g. `org:admin`, `org:member` or a custom `org:…`.
    pub role: String,
    /// Clerk's `updated_at` in ms: the version that makes stale events change nothing.
    pub clerk_updated_at: i64,
    pub clerk_created_at: Option<DateTimeWithTimeZone>,
    pub created_at: DateTimeWithTimeZone,
    pub updated_at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::organizations::Entity",
        from = "Column::OrganizationId",
        to = "super::organizations::Column::Id",
        on_delete = "Cascade"
    )]
    Organizations,
    #[sea_orm(
        belongs_to = "super::users::Entity",
        from = "Column::UserId",
        to = "super::users::Column::Id",
        on_delete = "Cascade"
    )]
    Users,
}

impl Related<super::organizations::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Organizations.def()
    }
}

impl Related<super::users::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Users.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
