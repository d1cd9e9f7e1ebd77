//! `deleted_memberships`: tombstones of ended memberships, without their data.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "deleted_memberships")]
pub struct Model {
    /// Hex SHA-256 of the Clerk membership id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub clerk_membership_id_sha256: String,
    pub deleted_at: DateTimeWithTimeZone,
    /// Clerk's `updated_at` (ms) of the membership it ended: a newer event of it is applied.
    /// Null on tombstones older than the column: final for every version.
    pub clerk_updated_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
