//! `deleted_organizations`: tombstones of deleted organizations, without their data.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "deleted_organizations")]
pub struct Model {
    /// Hex SHA-256 of the Clerk organization id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub clerk_organization_id_sha256: String,
    pub deleted_at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
