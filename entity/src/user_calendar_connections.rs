//! `user_calendar_connections`: a Google or Microsoft account a user connected through Clerk.

use sea_orm::entity::prelude::*;

/// Tokens are ciphertext, whose `Debug` shows only their length.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
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
    pub access_token: Option<crate::Ciphertext>,
    /// Nonce + ciphertext of the refresh token (Clerk never provides one today).
    pub refresh_token: Option<crate::Ciphertext>,
    /// Id of the key that encrypted the tokens.
    pub token_key_id: Option<String>,
    /// How the tokens were sealed: 2 bound to this row and column, 1 legacy (never served).
    pub token_format: i16,
    pub expires_at: Option<DateTimeWithTimeZone>,
    /// `connected`, `needs_reconnect` (only the user can fix it) or `unavailable` (nobody could
    /// tell lately).
    pub status: String,
    /// A stable code: `grant_revoked`, `missing_refresh_token`, `missing_scopes`,
    /// `account_unverified`, `provider_disabled`, `clerk_unavailable`.
    pub status_reason: Option<String>,
    /// The words behind the reason (no token, no personal data).
    pub status_detail: Option<String>,
    /// When Clerk was last asked about this connection.
    pub status_checked_at: Option<DateTimeWithTimeZone>,
    /// Since when the status (and reason) hold.
    pub status_changed_at: DateTimeWithTimeZone,
    pub created_at: DateTimeWithTimeZone,
    pub updated_at: DateTimeWithTimeZone,
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
