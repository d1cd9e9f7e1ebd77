//! `organizations`: one row per live Clerk organization.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "organizations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(unique)]
    pub clerk_organization_id: String,
    pub name: String,
    #[sea_orm(unique)]
    pub slug: Option<String>,
    pub image_url: Option<String>,
    /// Clerk's `public_metadata` (`{}` when none).
    pub public_metadata: Json,
    /// Clerk's member count as of `clerk_updated_at`, when the payload carried one.
    pub members_count: Option<i32>,
    /// Clerk's `updated_at` in ms: the version that makes stale events change nothing.
    pub clerk_updated_at: i64,
    pub clerk_created_at: Option<DateTimeWithTimeZone>,
    pub created_at: DateTimeWithTimeZone,
    pub updated_at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::organization_memberships::Entity")]
    OrganizationMemberships,
}

impl Related<super::organization_memberships::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::OrganizationMemberships.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
