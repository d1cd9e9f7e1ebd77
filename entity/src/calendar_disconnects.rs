//! `calendar_disconnects`: a user's choice to disconnect a provider's calendar. Events from
//! Clerk that still list an account of that provider created before the choice do not connect it
//! again; the user connecting again, or an account added in Clerk after the choice, ends it.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "calendar_disconnects")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: Uuid,
    /// `google` or `microsoft`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub provider: String,
    pub disconnected_at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::users::Entity",
        from = "Column::UserId",
        to = "super::users::Column::Id",
        on_delete = "Cascade"
    )]
    User,
}

impl Related<super::users::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::User.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
