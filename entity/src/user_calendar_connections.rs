//! `user_calendar_connections`: a Google or Microsoft account a user connected through Clerk.

use sea_orm::entity::prelude::*;

/// Tokens are ciphertext; `Debug` never prints them.
#[derive(Clone, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "user_calendar_connections")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub user_id: Uuid,
    /// `google` or `microsoft`.
    pub provider: String,
    /// Clerk's external account id (`eac_…`, or `idn_…` in older payloads).
    pub external_account_id: String,
    pub provider_user_id: String,
    pub email: Option<String>,
    /// Approved scopes, space separated, as Clerk reports them.
    pub scopes: String,
    /// Nonce + AES-256-GCM ciphertext of the access token.
    pub access_token: Option<Vec<u8>>,
    /// Nonce + ciphertext of the refresh token (Clerk never provides one today).
    pub refresh_token: Option<Vec<u8>>,
    /// Id of the key that encrypted the tokens.
    pub token_key_id: Option<String>,
    /// How the tokens were sealed: 2 bound to this row and column, 1 legacy (never served).
    pub token_format: i16,
    pub expires_at: Option<DateTimeWithTimeZone>,
    /// `connected`, or why the connection is not usable.
    pub status: String,
    pub status_reason: Option<String>,
    pub created_at: DateTimeWithTimeZone,
    pub updated_at: DateTimeWithTimeZone,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserCalendarConnection")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("provider", &self.provider)
            .field("external_account_id", &self.external_account_id)
            .field("status", &self.status)
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "[redacted]"),
            )
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::users::Entity",
        from = "Column::UserId",
        to = "super::users::Column::Id",
        on_update = "Cascade",
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
