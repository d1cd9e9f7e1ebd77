//! `user_calendar_connections`: one row per Google or Microsoft account a user connected through
//! Clerk, with its access token encrypted at rest.

use sea_orm_migration::prelude::*;

use crate::m20261123_000001_create_users::Users;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Connections::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Connections::Id)
                            .uuid()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Connections::UserId).uuid().not_null())
                    .col(
                        ColumnDef::new(Connections::Provider)
                            .text()
                            .not_null()
                            .check(Expr::col(Connections::Provider).is_in(["google", "microsoft"])),
                    )
                    .col(
                        ColumnDef::new(Connections::ExternalAccountId)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Connections::ProviderUserId)
                            .text()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Connections::Email).text().null())
                    .col(
                        ColumnDef::new(Connections::Scopes)
                            .text()
                            .not_null()
                            .default(""),
                    )
                    // Nonce + AES-256-GCM ciphertext; never the token in clear.
                    .col(ColumnDef::new(Connections::AccessToken).binary().null())
                    // Clerk never hands out the provider's refresh token; stays null until a
                    // source provides one, then encrypted likewise.
                    .col(ColumnDef::new(Connections::RefreshToken).binary().null())
                    // Which TOKEN_ENCRYPTION_KEY encrypted the tokens (for rotation).
                    .col(ColumnDef::new(Connections::TokenKeyId).text().null())
                    .col(
                        ColumnDef::new(Connections::ExpiresAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    // `connected`, or why not (e.g. `token_unavailable`), visible to ops.
                    .col(
                        ColumnDef::new(Connections::Status)
                            .text()
                            .not_null()
                            .default("pending"),
                    )
                    .col(ColumnDef::new(Connections::StatusReason).text().null())
                    .col(
                        ColumnDef::new(Connections::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::current_timestamp()),
                    )
                    .col(
                        ColumnDef::new(Connections::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::current_timestamp()),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_user_calendar_connections_user")
                            .from(Connections::Table, Connections::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade)
                            .on_update(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // One row per external account of a user; also serves lookups by user_id.
        manager
            .create_index(
                Index::create()
                    .name("ux_user_calendar_connections_account")
                    .table(Connections::Table)
                    .col(Connections::UserId)
                    .col(Connections::Provider)
                    .col(Connections::ProviderUserId)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(Connections::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
pub enum Connections {
    #[sea_orm(iden = "user_calendar_connections")]
    Table,
    Id,
    UserId,
    Provider,
    ExternalAccountId,
    ProviderUserId,
    Email,
    Scopes,
    AccessToken,
    RefreshToken,
    TokenKeyId,
    ExpiresAt,
    Status,
    StatusReason,
    CreatedAt,
    UpdatedAt,
}
