//! `deleted_users`: tombstones of deleted users, without personal data.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "deleted_users")]
pub struct Model {
    /// Hex SHA-256 of the Clerk user id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub clerk_user_id_sha256: String,
    pub deleted_at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
